"""The CLI of the simulation harness: `shardnet sim run`, `sim survive`, `sim sweep`, `sim list`.

The harness lives in ``simulations/``; this file only parses arguments, shows
progress and prints. Errors in a topology, placement or failure spec are one
line and exit 2 (``TopologyError`` and the parse errors are ValueErrors).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ._cli_base import EXIT_FAIL, EXIT_OK, Failure, Parser, emit, positive

SWEEP_DEFAULTS = {"topology": "continents:100:5", "placement": "", "t": 3, "n": 5, "trials": 100_000,
                  "fail": "country:0.01,org:0.02,node:0.05"}


def cmd_survive(args: argparse.Namespace) -> int:
    from shardnet.simulations import _survive as sv
    from shardnet.simulations import _topology as topo

    failures = sv.parse_failures(args.fail)
    t = topo.resolve(args.topology, seed=args.seed)
    rows = []
    for expr in args.placement or [""]:
        def progress(done: int, expr: str = expr) -> None:  # one line, redrawn, on a terminal only
            if sys.stderr.isatty():
                end = "\n" if done == args.trials else ""
                print(f"\r... {expr or 'random'}: {done * 100 // args.trials:3d}% of {args.trials} trials",
                      end=end, file=sys.stderr, flush=True)
        rows.append(sv.survive(t, expr, threshold=args.threshold, shares=args.shares, trials=args.trials,
                               failures=failures, seed=args.seed, progress=progress))
    data: dict[str, Any] = {"topology": topo.summary(t), "threshold": args.threshold, "shares": args.shares,
                            "failures": failures, "seed": args.seed, "results": [r.to_json() for r in rows]}
    emit(args, data, sv.format_table(rows, threshold=args.threshold, shares=args.shares, failures=failures))
    return EXIT_OK


def cmd_sweep(args: argparse.Namespace) -> int:
    from shardnet.simulations import _survive as sv
    from shardnet.simulations import _sweep as sw
    from shardnet.simulations import _topology as topo

    if args.scheduler and args.workers:
        raise ValueError("--workers is for the local pool: a Dask cluster has its own")
    if args.workers and args.workers > sw.MAX_WORKERS:
        raise ValueError(f"--workers: at most {sw.MAX_WORKERS} local processes")
    if args.scenario != "survive":
        return _network_sweep(args)
    varied = sw.parse_params(args.param or [], sw.SURVIVE_PARAMS)
    given = {"topology": args.topology, "t": args.threshold, "n": args.shares, "trials": args.trials,
             "fail": args.fail, "placement": args.placement}
    both = sorted(k for k, v in given.items() if v is not None and k in varied)
    if both:
        raise ValueError(f"{both[0]} is both fixed and in --param: give it once")
    fixed = {k: (SWEEP_DEFAULTS[k] if v is None else v) for k, v in given.items() if k not in varied}
    seeds = sw.parse_seeds(args.seeds)
    runs = sw.grid(fixed, varied, seeds)
    # Values no run can take fail here, in one line, each distinct one checked once; a
    # placement is tried on the first seed's topology (a seed whose topology cannot meet
    # it comes back as a failed run, and the others go on).
    for fail in {r["fail"] for r in runs}:
        sv.parse_failures(fail)
    for ref, expr, t, n, trials in {(r["topology"], r["placement"], r["t"], r["n"], r["trials"]) for r in runs}:
        first = topo.resolve(ref, seed=seeds[0])
        sv.check(t, n, trials, first)
        sv.sample_placements(first, expr, n, 1, seeds[0])

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r... {done} of {total} runs", end="\n" if done == total else "", file=sys.stderr, flush=True)
    rows = sw.run_sweep(runs, scheduler=args.scheduler, workers=args.workers, progress=progress)
    data = {"scenario": args.scenario, "engine": "dask" if args.scheduler else "local",
            "scheduler": args.scheduler, "varied": sorted(varied), "runs": rows,
            "failed": sum("error" in r for r in rows)}
    emit(args, data, sw.format_table(rows, sorted(varied) or ["placement"]))
    return EXIT_FAIL if data["failed"] else EXIT_OK


def _network_sweep(args: argparse.Namespace) -> int:
    """A sweep of a network scenario (``sim list``), each run in virtual mode."""
    from shardnet.simulations import _geo_placement as gp
    from shardnet.simulations import _scenario as sc
    from shardnet.simulations import _sweep as sw
    from shardnet.simulations._scenarios import SCENARIOS as RUNNABLE

    scenario = RUNNABLE.get(args.scenario)
    if scenario is None:
        raise ValueError(f"no scenario {args.scenario!r}: survive, or one of {', '.join(sorted(RUNNABLE))} "
                         "(sim list)")
    extra = [f"--{k}" for k in ("topology", "placement", "threshold", "shares", "trials", "fail")
             if getattr(args, k) is not None]
    if extra:
        raise ValueError(f"{extra[0]} is for survive; vary {args.scenario}'s own parameters with --param")
    known = sw.scenario_params(args.scenario)
    varied = sw.parse_params(args.param or [], known)
    for name, values in varied.items():  # every value checked once, before any run
        for v in values:
            if name == "nodes":
                if not 3 <= v <= 5000:
                    raise ValueError(f"--param nodes: from 3 to 5000, got {v}")
            else:
                sc.parse_params(scenario, [f"{name}={v}"])
            if name == "placement":
                gp.parse(v)
    runs = sw.grid({"scenario": args.scenario}, varied, sw.parse_seeds(args.seeds))
    for run in runs:
        t, n = run.get("t", scenario.params.get("t")), run.get("n", scenario.params.get("n"))
        if t is not None and n is not None and t > n:
            raise ValueError(f"--param: t={t} is more than n={n}; a threshold is at most the shares")

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r... {done} of {total} runs", end="\n" if done == total else "", file=sys.stderr, flush=True)
    rows = sw.run_sweep(runs, scheduler=args.scheduler, workers=args.workers, progress=progress)
    failed = sum("error" in r or not r.get("ok") for r in rows)
    data = {"scenario": args.scenario, "mode": "virtual", "cpu_model": False,
            "engine": "dask" if args.scheduler else "local", "scheduler": args.scheduler, "varied": sorted(varied),
            "runs": rows, "failed": failed}
    emit(args, data, sw.format_network_table(rows, sorted(varied)))
    return EXIT_FAIL if failed else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from shardnet.simulations import _scenario as sc
    from shardnet.simulations._scenarios import SCENARIOS as RUNNABLE

    if not 0 <= args.seed < 2**64:
        raise ValueError("--seed is a whole number from 0 to 2^64-1")
    scenario = RUNNABLE.get(args.scenario)
    if scenario is None:
        raise ValueError(f"no scenario {args.scenario!r}: one of {', '.join(sorted(RUNNABLE))} (sim list)")
    params = sc.parse_params(scenario, args.param or [])
    out = pathlib.Path(args.out) if args.out else None
    if out is not None:
        from shardnet.simulations import _plots

        _plots.check()
        out.mkdir(parents=True, exist_ok=True)
    from shardnet.simulations._cluster import ClusterFailed

    try:
        with _progress(enabled=sys.stderr.isatty()) as progress:
            record = sc.run_scenario(scenario, mode=args.mode, nodes=args.nodes, seed=args.seed,
                                     topology=args.topology, params=params, cpu_model=args.cpu_model == "on",
                                     command=["shardnet", *sys.argv[1:]], progress=progress)
    except ClusterFailed as exc:
        raise Failure(f"the run stopped: {exc}") from None
    text = sc.format_summary(record)
    if out is not None:
        path = out / "run.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        tmp.replace(path)
        plots = _plots.write_plots(record, out)
        record["files"] = [str(path), *map(str, plots)]
        text += "\nwrote " + ", ".join(p.name for p in [path, *plots]) + f" to {out}"
    emit(args, record, text)
    return EXIT_OK if record["ok"] else EXIT_FAIL


@contextmanager
def _progress(*, enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """Rich progress bars on stderr, one per phase of the run, on a terminal only."""
    if not enabled:
        yield lambda phase, done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, Any] = {}
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True)) as bars:
        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=total)
            bars.update(tasks[phase], completed=done, total=total)
        yield update


def cmd_list(args: argparse.Namespace) -> int:
    from shardnet.simulations import _topology as topo
    from shardnet.simulations._scenarios import SCENARIOS as RUNNABLE

    about = ("N custodians over K continents, round-robin", "N custodians all in one continent (AF AS EU NA OC SA)",
             "one custodian per G20 member", "K orgs with M sites each, in different cities")
    kinds = [{"spec": g, "about": a} for g, a in zip(topo.GENERATORS, about, strict=True)]
    scenarios: list[dict[str, Any]] = [{"name": sc.name, "about": sc.about, "nodes": sc.nodes,
                                        "topology": sc.topology, "params": sc.params, "modes": list(sc.modes)}
                                       for sc in RUNNABLE.values()]
    data = {"scenarios": scenarios, "topologies": kinds, "cities": len(topo.cities())}
    lines = ["scenarios (sim run NAME; --param NAME=VALUE overrides a parameter):"]
    for sc in scenarios:
        lines.append(f"  {sc['name']:<16} {sc['about']}")
        lines.append(f"  {'':<16} {sc['nodes']} nodes on {sc['topology']}; "
                     + ", ".join(f"{k}={v}" for k, v in sc["params"].items())
                     + ("" if len(sc["modes"]) == 3 else f"; modes {', '.join(sc['modes'])} only"))
    lines.append("topologies (or a TOML file, see simulations/_topology.py):")
    lines += [f"  {t['spec']:<16} {t['about']}" for t in kinds]
    lines.append(f"  {'...+access=MS':<16} after any generator: every custodian's one-way access delay")
    lines.append(f"cities in the bundled table: {len(topo.cities())}")
    emit(args, data, "\n".join(lines))
    return EXIT_OK


def register(sub: Any) -> None:
    sp = sub.add_parser("sim", help="the simulation harness: scenarios, survival Monte Carlo, sweeps, topologies")
    ssub = sp.add_subparsers(dest="sim", metavar="ACTION", parser_class=Parser)
    ssub.required = True
    rn = ssub.add_parser("run", help="run a scenario on real nodes over a simulated geography")
    rn.add_argument("scenario", metavar="SCENARIO", help="a bundled scenario (sim list shows them)")
    rn.add_argument("--mode", default="virtual", metavar="MODE",
                    help="virtual: the grid in virtual time (default); inprocess: real libp2p hosts on loopback; "
                         "multiprocess: a shardnet run process per node, each in its own network namespace "
                         "(root), through a delay relay")
    rn.add_argument("--nodes", type=positive, metavar="N", help="the scenario's size (default: its own)")
    rn.add_argument("--topology", metavar="T", help="a TOML file or a generator; {nodes} stands for --nodes "
                                                    "(default: the scenario's)")
    rn.add_argument("--seed", type=int, default=1)
    rn.add_argument("--param", action="append", metavar="NAME=VALUE", help="one of the scenario's parameters "
                                                                           "(sim list shows them)")
    rn.add_argument("--cpu-model", choices=("on", "off"), default="on",
                    help="virtual mode: charge each node's measured compute as virtual delay (default on; off "
                         "makes a seed's timings repeat exactly)")
    rn.add_argument("--out", metavar="DIR", help="write run.json (every measurement with its bound) and the "
                                                 "PNG plots there")
    rn.add_argument("--json", action="store_true")
    rn.set_defaults(func=cmd_run)
    sv = ssub.add_parser("survive", help="the probability that a keyset stays reconstructable under correlated "
                                         "failures (no network)")
    sv.add_argument("--topology", required=True, metavar="T", help="a TOML file, or a generator such as "
                                                                 "continents:100:5 (see sim list)")
    sv.add_argument("--placement", action="append", metavar="EXPR",
                    help="a placement expression; repeat to compare (default: random)")
    sv.add_argument("--threshold", "-t", type=positive, required=True, metavar="T")
    sv.add_argument("--shares", "-n", type=positive, required=True, metavar="N")
    sv.add_argument("--trials", type=positive, default=100_000, metavar="N")
    sv.add_argument("--fail", required=True, metavar="LEVEL:P,...",
                    help="failure probabilities, e.g. country:0.01,org:0.02,node:0.05 (also continent, city)")
    sv.add_argument("--seed", type=int, default=1)
    sv.add_argument("--json", action="store_true")
    sv.set_defaults(func=cmd_survive)
    sw = ssub.add_parser("sweep", help="a grid of seeded runs of a scenario, on local processes or a Dask cluster")
    sw.add_argument("scenario", metavar="SCENARIO", help="survive, or a network scenario of `sim list` (run in "
                                                           "virtual mode, CPU model off)")
    d = SWEEP_DEFAULTS
    sw.add_argument("--topology", metavar="T", help=f"default {d['topology']}")
    sw.add_argument("--placement", metavar="EXPR", help="default random (vary it with --param placement=A;B)")
    sw.add_argument("--threshold", "-t", type=positive, metavar="T", help=f"default {d['t']}")
    sw.add_argument("--shares", "-n", type=positive, metavar="N", help=f"default {d['n']}")
    sw.add_argument("--trials", type=positive, metavar="N", help=f"default {d['trials']}")
    sw.add_argument("--fail", metavar="LEVEL:P,...", help=f"default {d['fail']}")
    sw.add_argument("--seeds", default="1-10", metavar="SEEDS", help="e.g. 1-50 or 1,4,9")
    sw.add_argument("--param", action="append", metavar="NAME=V1,V2",
                    help="vary one of t, n, trials, topology, placement, fail for survive (placements and "
                         "fails split by ';'); a network scenario's numeric parameters, placement or nodes; "
                         "repeat for a grid")
    sw.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="a Dask distributed scheduler (default: "
                                                                   "a local process pool)")
    sw.add_argument("--workers", type=positive, metavar="N", help="local processes (default: the cores)")
    sw.add_argument("--json", action="store_true")
    sw.set_defaults(func=cmd_sweep)
    ls = ssub.add_parser("list", help="the bundled scenarios and topologies")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
