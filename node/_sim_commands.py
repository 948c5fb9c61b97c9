"""The CLI of the simulation harness: `shardnet sim survive`, `sim sweep`, `sim list`.

The harness lives in ``simulations/``; this file only parses arguments, shows
progress and prints. Errors in a topology, placement or failure spec are one
line and exit 2 (``TopologyError`` and the parse errors are ValueErrors).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._cli_base import EXIT_FAIL, EXIT_OK, Parser, emit, positive

SCENARIOS = ("survive",)  # simulations/_sweep.py runs them (imported lazily: node/ needs it only here)
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


def cmd_list(args: argparse.Namespace) -> int:
    from shardnet.simulations import _topology as topo

    about = ("N custodians over K continents, round-robin", "N custodians all in one continent (AF AS EU NA OC SA)",
             "one custodian per G20 member", "K orgs with M sites each, in different cities")
    kinds = [{"spec": g, "about": a} for g, a in zip(topo.GENERATORS, about, strict=True)]
    data = {"topologies": kinds, "cities": len(topo.cities())}
    lines = ["topologies (or a TOML file, see simulations/_topology.py):"]
    lines += [f"  {t['spec']:<16} {t['about']}" for t in kinds]
    lines.append(f"cities in the bundled table: {len(topo.cities())}")
    emit(args, data, "\n".join(lines))
    return EXIT_OK


def register(sub: Any) -> None:
    sp = sub.add_parser("sim", help="the simulation harness: survival Monte Carlo, topologies")
    ssub = sp.add_subparsers(dest="sim", metavar="ACTION", parser_class=Parser)
    ssub.required = True
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
    sw.add_argument("scenario", choices=SCENARIOS, metavar="SCENARIO", help=", ".join(SCENARIOS))
    d = SWEEP_DEFAULTS
    sw.add_argument("--topology", metavar="T", help=f"default {d['topology']}")
    sw.add_argument("--placement", metavar="EXPR", help="default random (vary it with --param placement=A;B)")
    sw.add_argument("--threshold", "-t", type=positive, metavar="T", help=f"default {d['t']}")
    sw.add_argument("--shares", "-n", type=positive, metavar="N", help=f"default {d['n']}")
    sw.add_argument("--trials", type=positive, metavar="N", help=f"default {d['trials']}")
    sw.add_argument("--fail", metavar="LEVEL:P,...", help=f"default {d['fail']}")
    sw.add_argument("--seeds", default="1-10", metavar="SEEDS", help="e.g. 1-50 or 1,4,9")
    sw.add_argument("--param", action="append", metavar="NAME=V1,V2",
                    help="vary one of t, n, trials, topology, placement, fail (placements and fails split "
                         "by ';'); repeat for a grid")
    sw.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="a Dask distributed scheduler (default: "
                                                                   "a local process pool)")
    sw.add_argument("--workers", type=positive, metavar="N", help="local processes (default: the cores)")
    sw.add_argument("--json", action="store_true")
    sw.set_defaults(func=cmd_sweep)
    ls = ssub.add_parser("list", help="the bundled topologies")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
