"""`shardnet sim sweep`: a grid of seeded runs, on a local process pool or a Dask cluster.

A sweep is every combination of the ``--param`` values, each for every seed.
Each run is a plain function call on picklable arguments (:func:`run_one`), so
the same runs go to a local ``multiprocessing`` pool by default, or, with
``--scheduler tcp://HOST:PORT``, to a Dask ``distributed`` cluster: a researcher
who outgrows one machine points it at a cluster. The rows come back in the
order of the grid whatever finished first, and merge into one table.

Runs are deterministic in their seed, so a sweep gives the same table on any
engine. A Dask cluster's workers need this project installed, with the same
shardnet and numpy versions as the machine that sends the runs (checked before
anything is sent). A run whose seed makes it impossible comes back as a row
with its error, and the others go on. Ctrl-C or a lost cluster ends the sweep
at once: the local workers are terminated.

Two kinds of scenario sweep: ``survive`` (``_survive``, pure computation), and
every network scenario of ``_scenarios`` (``sim list``), each run in
``virtual`` mode with the CPU model off, so that a seed gives the same
measurements as ``sim run`` (on the local pool, whose workers run one at a
time, and on Dask workers of one thread each, which is checked); a network
run's row keeps its summary (``_scenario.summarise``) and the outcomes it
failed.
"""

from __future__ import annotations

import concurrent.futures  # its CancelledError: what a cancelled Dask future raises
import importlib.metadata
import itertools
import logging
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

#: The parameters of ``survive`` a sweep may vary, with their types.
SURVIVE_PARAMS: dict[str, Callable[[str], Any]] = {
    "t": int, "n": int, "trials": int, "placement": str, "fail": str, "topology": str,
}
MAX_RUNS = 10_000
MAX_WORKERS = 64  # local processes: a pool starts all of them at once
WORKER_WAIT = 30.0  # seconds a Dask cluster may take to show a worker, at the start or later
LOOK = 5.0  # seconds between two looks at a Dask cluster while runs are out


def parse_seeds(text: str) -> list[int]:
    """``1-50``, ``7`` or ``1,4,9``: whole numbers from 0, each once."""
    out: list[int] = []
    for part in (x.strip() for x in text.split(",")):
        lo, sep, hi = part.partition("-")
        if not _whole(lo) or (sep and not _whole(hi)):
            raise ValueError(f"seeds are like 1-50 or 1,4,9 (whole numbers from 0), got {text!r}")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first or len(out) + last - first + 1 > MAX_RUNS:  # checked before a list is built
            raise ValueError(f"seeds {part!r}: a rising range, at most {MAX_RUNS} seeds in all")
        out.extend(range(first, last + 1))
    twice = sorted({x for x in out if out.count(x) > 1}) if len(set(out)) != len(out) else []
    if twice:
        raise ValueError(f"seed {twice[0]} is given twice")
    return out


def _whole(text: str) -> bool:
    return text.isascii() and text.isdigit()


def parse_params(specs: Sequence[str], known: dict[str, Callable[[str], Any]]) -> dict[str, list[Any]]:
    """``["t=2,3,5", "placement=distinct:country;"]``: each name's values, comma-separated
    (``;`` separates placement expressions, which hold commas themselves), each once."""
    out: dict[str, list[Any]] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise ValueError(f"--param is NAME=V1,V2,... with NAME one of {', '.join(known)}, got {spec!r}")
        if name in out:
            raise ValueError(f"--param {name} is given twice")
        parts = values.split(";") if name in ("placement", "fail") else values.split(",")
        try:
            got = [known[name](v.strip()) for v in parts]
        except ValueError:
            raise ValueError(f"--param {spec!r}: {name} takes {known[name].__name__} values") from None
        if len(set(got)) != len(got):
            raise ValueError(f"--param {spec!r}: a value is given twice")
        out[name] = got
    return out


def grid(fixed: dict[str, Any], varied: dict[str, list[Any]], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Every combination of the varied values over the fixed ones, for every seed."""
    count = math.prod(len(v) for v in varied.values()) * len(seeds)
    if count > MAX_RUNS:  # before a list is built
        raise ValueError(f"{count} runs: at most {MAX_RUNS} in one sweep")
    names = sorted(varied)
    return [{**fixed, **dict(zip(names, combo, strict=True)), "seed": seed}
            for combo in itertools.product(*(varied[k] for k in names)) for seed in seeds]


def scenario_params(name: str) -> dict[str, Callable[[str], Any]]:
    """What a sweep of the network scenario ``name`` may vary: its numeric parameters and its
    ``placement`` (values split by ``;``), typed as its defaults are, and ``nodes``. KeyError
    for a name that is no scenario."""
    from ._scenarios import SCENARIOS

    known: dict[str, Callable[[str], Any]] = {k: type(v) for k, v in SCENARIOS[name].params.items()
                                              if type(v) in (int, float) or k == "placement"}
    return {**known, "nodes": int}


def run_one(run: dict[str, Any]) -> dict[str, Any]:
    """One run (a worker's job: it imports what it needs itself). A run its seed makes
    impossible (a placement this seed's topology cannot meet) comes back as a row with its
    ``error``: the other runs go on."""
    if run.get("scenario", "survive") != "survive":
        return _network_run(run)
    from . import _survive as sv
    from . import _topology as topo

    try:
        t = topo.resolve(run["topology"], seed=run["seed"])
        est = sv.survive(t, run["placement"], threshold=run["t"], shares=run["n"], trials=run["trials"],
                         failures=sv.parse_failures(run["fail"]), seed=run["seed"])
    except ValueError as exc:
        return {**run, "error": str(exc)}
    lo, hi = est.interval
    return {**run, "survival": est.p, "ci95": [lo, hi], "seconds": round(est.seconds, 3)}


def _network_run(run: dict[str, Any]) -> dict[str, Any]:
    from ._scenario import ScenarioError, run_scenario
    from ._scenarios import SCENARIOS

    scenario = SCENARIOS[run["scenario"]]
    params = {**scenario.params, **{k: v for k, v in run.items() if k in scenario.params}}
    try:
        record = run_scenario(scenario, mode="virtual", nodes=run.get("nodes"), seed=run["seed"], params=params,
                              cpu_model=False)
    except ScenarioError as exc:
        return {**run, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - one run's failure, whatever it is, is its row's; the others go on
        return {**run, "error": f"{type(exc).__name__}: {exc}"}
    failed = [o["name"] + (f": {o['detail']}" if o["detail"] else "") for o in record["outcomes"] if not o["ok"]]
    return {**run, "ok": record["ok"], "summary": record["summary"], "failed_outcomes": failed,
            "wall_s": record["wall_s"]}


def _indexed(job: tuple[int, dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    return job[0], run_one(job[1])


def _ignore_sigint() -> None:  # a pool worker: Ctrl-C is the parent's to handle, by ending the pool
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_sweep(runs: list[dict[str, Any]], *, scheduler: str | None = None, workers: int | None = None,
              progress: Callable[[int, int], None] = lambda done, total: None) -> list[dict[str, Any]]:
    """The rows of ``runs``, in their order: on a process pool, or on the Dask cluster at
    ``scheduler``. OSError, in one line, when the cluster cannot do it."""
    out: list[dict[str, Any] | None] = [None] * len(runs)
    if scheduler is not None:
        _on_dask(scheduler, runs, out, progress)
    else:
        procs = max(1, min(workers or os.cpu_count() or 1, len(runs), MAX_WORKERS))
        # Pool's exit terminates the workers: on Ctrl-C or an error nothing keeps running.
        with multiprocessing.Pool(procs, initializer=_ignore_sigint) as pool:
            for done, (i, row) in enumerate(pool.imap_unordered(_indexed, enumerate(runs)), 1):
                out[i] = row
                progress(done, len(runs))
    missing = [i for i, r in enumerate(out) if r is None]
    if missing:
        raise RuntimeError(f"runs {missing[:5]} came back empty")
    return [r for r in out if r is not None]


def _on_dask(scheduler: str, runs: list[dict[str, Any]], out: list[dict[str, Any] | None],
             progress: Callable[[int, int], None]) -> None:
    try:
        import distributed
        from distributed.client import FutureCancelledError
        from distributed.comm import CommClosedError
    except ImportError:
        raise ValueError("--scheduler needs Dask distributed (installed by the project's own set-up)") from None
    _quiet_dask()
    try:
        client = distributed.Client(scheduler, timeout="10s")
    except OSError as exc:
        raise OSError(f"no Dask scheduler at {scheduler}: {exc}") from None
    with client:
        done = 0
        try:
            _check_workers(client, scheduler, network=any(r.get("scenario", "survive") != "survive" for r in runs))
            futures = [client.submit(run_one, r, pure=False) for r in runs]
            where = {f.key: i for i, f in enumerate(futures)}
            pending, idle = set(futures), time.monotonic()
            while pending:
                try:
                    finished, pending = distributed.wait(pending, timeout=LOOK, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    finished = set()
                for fut in finished:
                    out[where[fut.key]] = fut.result()
                    done += 1
                    progress(done, len(runs))
                if client.scheduler_info().get("workers"):
                    idle = time.monotonic()
                elif time.monotonic() - idle > WORKER_WAIT:
                    raise OSError(f"the Dask cluster at {scheduler} has had no worker for {WORKER_WAIT:.0f} s, "
                                  f"with {len(pending)} runs left")
        except (CommClosedError, FutureCancelledError, distributed.KilledWorker,
                concurrent.futures.CancelledError) as exc:
            raise OSError(f"the Dask cluster at {scheduler} went away ({type(exc).__name__}) with {done} of "
                          f"{len(runs)} runs done") from None


def _quiet_dask() -> None:
    """Silence Dask's own loggers (its config gives many of them a level of their own): it
    logs tracebacks when a scheduler goes away, and what went wrong is said in one line."""
    for name in list(logging.root.manager.loggerDict):
        if name.split(".")[0] in ("distributed", "tornado", "asyncio"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _check_workers(client: Any, scheduler: str, *, network: bool = False) -> None:
    """At least one worker, each with this machine's shardnet and numpy (and trio, for a
    network scenario): run_one is sent by reference and the same versions give the same
    results. A network scenario also needs one thread a worker: a virtual run seeds trio's
    scheduler for the whole process while it runs (``grid``), so two at once in one worker
    would spoil each other's determinism."""
    try:
        client.wait_for_workers(1, timeout=WORKER_WAIT)
    except TimeoutError:
        raise OSError(f"the Dask scheduler at {scheduler} has no worker (waited {WORKER_WAIT:.0f} s)") from None
    if network:
        threads = sorted({w.get("nthreads", 1) for w in client.scheduler_info().get("workers", {}).values()})
        if threads != [1]:
            raise OSError(f"Dask workers at {scheduler} run {', '.join(map(str, threads))} threads: a network "
                          "scenario needs one thread a worker (dask worker --nthreads 1)")
    for dist in ("shardnet", "numpy", *(("trio",) if network else ())):
        mine = importlib.metadata.version(dist)
        try:
            theirs = client.run(importlib.metadata.version, dist)
        except Exception as exc:  # noqa: BLE001 - whatever a worker raised, said in one line
            raise OSError(f"a Dask worker at {scheduler} cannot load {dist} ({type(exc).__name__}: {exc}): "
                          f"each worker needs this project installed") from None
        other = sorted({v for v in theirs.values() if v != mine})
        if other:
            raise OSError(f"Dask workers at {scheduler} run {dist} {', '.join(other)}, this machine {mine}: "
                          f"install the same versions on every worker")


def format_network_table(rows: Sequence[dict[str, Any]], varied: Sequence[str]) -> str:
    """One row per combination and measurement group (kind and labels): over the seeds,
    the mean of each run's median latency and of its median ratio to the bound, the
    ratio's range, the measurements that never happened (MISSED: the means leave them
    out), and the runs that failed (an error or an outcome; the first below)."""
    from ._scenario import STATISTICS

    keys = sorted(varied)
    groups: dict[tuple[Any, ...], list[tuple[dict[str, Any], dict[str, Any] | None]]] = {}
    for r in rows:
        combo = tuple(r.get(k) for k in keys)
        for m in r.get("summary") or [None]:
            labels = () if m is None else tuple(sorted((k, v) for k, v in m.items() if k not in STATISTICS))
            groups.setdefault((*combo, labels), []).append((r, m))
    head = " ".join(f"{k.upper():<12}" for k in keys)
    lines = [f"{head} {'MEASUREMENT':<36} {'SEEDS':>5} {'FAILED':>6} {'MISSED':>6} {'MEAN S':>9} "
             f"{'MEAN RATIO':>10} {'MIN':>6} {'MAX':>6}"]
    for key, pairs in groups.items():
        combo, labels = key[:-1], key[-1]
        runs = {id(r): r for r, _ in pairs}
        bad = sum(1 for r in runs.values() if "error" in r or not r.get("ok"))
        secs = [m["median_s"] for _, m in pairs if m and m.get("median_s") is not None]
        ratios = [m["median_ratio"] for _, m in pairs if m and m.get("median_ratio") is not None]
        named = dict(labels)
        what = " ".join([str(named.pop("kind", "-")), *(f"{k}={v}" for k, v in named.items())])
        cells = " ".join(f"{str(v):<12}" for v in combo)
        mean_s = f"{sum(secs) / len(secs):>9.3f}" if secs else f"{'-':>9}"
        stats = (f"{sum(ratios) / len(ratios):>10.3f} {min(ratios):>6.2f} {max(ratios):>6.2f}" if ratios
                 else f"{'-':>10} {'-':>6} {'-':>6}")
        missed = sum(m.get("missing", 0) for _, m in pairs if m)
        lines.append(f"{cells} {what[:36]:<36} {len(runs):>5} {bad:>6} {missed:>6} {mean_s} {stats}")
    failed = [r for r in rows if "error" in r or not r.get("ok")]
    if failed:
        first = failed[0]
        why = first.get("error") or "; ".join(first.get("failed_outcomes") or [])
        lines.append(f"{len(failed)} of {len(rows)} runs failed; the first (seed {first['seed']}): {why}")
    return "\n".join(lines)


def format_table(rows: Sequence[dict[str, Any]], varied: Sequence[str]) -> str:
    """One row per combination: the mean survival over the seeds that ran, its range, and
    how many seeds failed (the first failure's reason below the table)."""
    keys = sorted(varied)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    head = " ".join(f"{k.upper():<20}" for k in keys)
    lines = [f"{head} {'SEEDS':>5} {'FAILED':>6} {'MEAN SURVIVAL':>14} {'MIN':>9} {'MAX':>9}"]
    for combo, rs in groups.items():
        ps = [r["survival"] for r in rs if "error" not in r]
        cells = " ".join(f"{(str(v) or 'random'):<20}" for v in combo)
        stats = (f"{sum(ps) / len(ps):>14.6f} {min(ps):>9.6f} {max(ps):>9.6f}" if ps
                 else f"{'-':>14} {'-':>9} {'-':>9}")
        lines.append(f"{cells} {len(rs):>5} {len(rs) - len(ps):>6} {stats}")
    failed = [r for r in rows if "error" in r]
    if failed:
        lines.append(f"{len(failed)} of {len(rows)} runs failed; the first (seed {failed[0]['seed']}): "
                     f"{failed[0]['error']}")
    return "\n".join(lines)
