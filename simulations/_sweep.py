"""`shardnet sim sweep`: a grid of seeded runs, on a local process pool or a Dask cluster.

A sweep is every combination of the ``--param`` values, each for every seed.
Each run is a plain function call on picklable arguments (:func:`run_one`), so
the same runs go to a ``concurrent.futures`` process pool by default, or, with
``--scheduler tcp://HOST:PORT``, to a Dask ``distributed`` cluster: a researcher
who outgrows one machine points it at a cluster. The rows come back in the
order of the grid whatever finished first, and merge into one table.

Runs are deterministic in their seed, so a sweep gives the same table on any
engine. Today's sweepable scenario is ``survive`` (``_survive``).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any

#: The parameters of ``survive`` a sweep may vary, with their types.
SURVIVE_PARAMS: dict[str, Callable[[str], Any]] = {
    "t": int, "n": int, "trials": int, "placement": str, "fail": str, "topology": str,
}
MAX_RUNS = 10_000


def parse_seeds(text: str) -> list[int]:
    """``1-50``, ``7`` or ``1,4,9``."""
    out: list[int] = []
    for part in (x.strip() for x in text.split(",")):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"seeds are like 1-50 or 1,4,9 (whole numbers from 0), got {text!r}")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first or len(out) + last - first + 1 > MAX_RUNS:  # checked before a list is built
            raise ValueError(f"seeds {part!r}: a rising range, at most {MAX_RUNS} seeds in all")
        out.extend(range(first, last + 1))
    return out


def parse_params(specs: Sequence[str], known: dict[str, Callable[[str], Any]]) -> dict[str, list[Any]]:
    """``["t=2,3,5", "placement=distinct:country;"]``: each name's values, comma-separated
    (``;`` separates placement expressions, which hold commas themselves)."""
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
            out[name] = [known[name](v.strip()) for v in parts]
        except ValueError:
            raise ValueError(f"--param {spec!r}: {name} takes {known[name].__name__} values") from None
    return out


def grid(fixed: dict[str, Any], varied: dict[str, list[Any]], seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Every combination of the varied values over the fixed ones, for every seed."""
    names = sorted(varied)
    runs = [{**fixed, **dict(zip(names, combo, strict=True)), "seed": seed}
            for combo in itertools.product(*(varied[k] for k in names)) for seed in seeds]
    if len(runs) > MAX_RUNS:
        raise ValueError(f"{len(runs)} runs: at most {MAX_RUNS} in one sweep")
    return runs


def run_one(run: dict[str, Any]) -> dict[str, Any]:
    """One ``survive`` run (a worker's job: it imports what it needs itself)."""
    from . import _survive as sv
    from . import _topology as topo

    t = topo.resolve(run["topology"], seed=run["seed"])
    est = sv.survive(t, run["placement"], threshold=run["t"], shares=run["n"], trials=run["trials"],
                     failures=sv.parse_failures(run["fail"]), seed=run["seed"])
    lo, hi = est.interval
    return {**run, "survival": est.p, "ci95": [lo, hi], "seconds": round(est.seconds, 3)}


def run_sweep(runs: list[dict[str, Any]], *, scheduler: str | None = None, workers: int | None = None,
              progress: Callable[[int, int], None] = lambda done, total: None) -> list[dict[str, Any]]:
    """The rows of ``runs``, in their order: on a process pool, or on the Dask cluster at ``scheduler``."""
    out: list[dict[str, Any] | None] = [None] * len(runs)
    if scheduler is not None:
        try:
            from distributed import Client, as_completed
        except ImportError:
            raise ValueError("--scheduler needs Dask distributed (installed by the project's own set-up)") from None
        try:
            client = Client(scheduler, timeout="10s")
        except OSError as exc:
            raise OSError(f"no Dask scheduler at {scheduler}: {exc}") from None
        with client:
            futures = {client.submit(run_one, r, pure=False): i for i, r in enumerate(runs)}
            for done, fut in enumerate(as_completed(futures), 1):
                out[futures[fut]] = fut.result()
                progress(done, len(runs))
    else:
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            pending = {pool.submit(run_one, r): i for i, r in enumerate(runs)}
            for done, fut in enumerate(concurrent.futures.as_completed(pending), 1):
                out[pending[fut]] = fut.result()
                progress(done, len(runs))
    return [r for r in out if r is not None]


def format_table(rows: Sequence[dict[str, Any]], varied: Sequence[str]) -> str:
    """One row per combination: the mean survival over its seeds, and its range."""
    keys = sorted(varied)
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    head = " ".join(f"{k.upper():<20}" for k in keys)
    lines = [f"{head} {'SEEDS':>5} {'MEAN SURVIVAL':>14} {'MIN':>9} {'MAX':>9}"]
    for combo, rs in groups.items():
        ps = [r["survival"] for r in rs]
        cells = " ".join(f"{(str(v) or 'random'):<20}" for v in combo)
        lines.append(f"{cells} {len(rs):>5} {sum(ps) / len(ps):>14.6f} {min(ps):>9.6f} {max(ps):>9.6f}")
    return "\n".join(lines)
