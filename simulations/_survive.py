"""`shardnet sim survive`: how likely a keyset stays reconstructable under correlated failures.

Pure computation, no network. A keyset's n shards sit on n custodians chosen
by the placement solver the nodes use (``protocol/_placement.py``); it is
reconstructable while at least t of them are up. Each trial draws, with the
given probabilities, which countries, orgs, cities, continents and single
nodes fail; a custodian is down if it or any of those it belongs to failed. A
site with no org (or city) in its topology is its own org: it fails alone.

Vectorised with numpy: up to :data:`MAX_PLACEMENTS` placements are solved
first (each with its own seed), the trials take them in turn (equal shares),
and a chunk of trials draws all of its failures as arrays, so that memory stays
at ``chunk x max(n, values of an attribute)`` whatever the trial count.

The 95% interval is the wider of two: the Wilson score interval of all trials,
and the normal interval of the mean over placements (each placement a
cluster, so that the spread between the placements sampled counts: with few
of them, or a loose placement, the trials are not independent draws).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardnet.protocol import placement

from ._topology import Topology, TopologyError

#: What may fail, besides single nodes: a site's attributes.
LEVELS = ("country", "org", "continent", "city", "node")
MAX_PLACEMENTS = 1000
MAX_TRIALS = 10**9
#: Cells one chunk's arrays hold at most (its random draws are float64: 8 bytes a cell).
CHUNK_CELLS = 8_000_000
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    placement: str
    survived: int
    trials: int
    placements: int
    seconds: float
    #: The standard error of the mean over placements (None with one placement).
    cluster_se: float | None = None

    @property
    def p(self) -> float:
        return self.survived / self.trials

    @property
    def interval(self) -> tuple[float, float]:
        lo, hi = wilson(self.survived, self.trials)
        if self.cluster_se is not None:
            lo, hi = min(lo, max(0.0, self.p - Z95 * self.cluster_se)), max(hi, min(1.0, self.p + Z95 * self.cluster_se))
        return lo, hi

    def to_json(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {"placement": self.placement or "random", "survival": self.p, "ci95": [lo, hi],
                "placement_se": self.cluster_se,
                "survived": self.survived, "trials": self.trials, "placements_sampled": self.placements,
                "seconds": round(self.seconds, 3)}


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion."""
    if trials <= 0:
        raise ValueError("no trials")
    ph = successes / trials
    d = 1 + z * z / trials
    centre = (ph + z * z / (2 * trials)) / d
    half = z * math.sqrt(ph * (1 - ph) / trials + z * z / (4 * trials * trials)) / d
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == trials else min(1.0, centre + half))


def parse_failures(text: str) -> dict[str, float]:
    """``country:0.01,org:0.02,node:0.05`` as a dict; ValueError with one line."""
    out: dict[str, float] = {}
    for part in (x.strip() for x in text.split(",")):
        if not part:
            continue
        level, sep, value = part.partition(":")
        level = level.strip()
        if not sep or level not in LEVELS:
            raise ValueError(f"a failure is LEVEL:PROBABILITY with LEVEL one of {', '.join(LEVELS)}, got {part!r}")
        if level in out:
            raise ValueError(f"{level} is given twice")
        try:
            prob = float(value)
        except ValueError:
            raise ValueError(f"{part!r}: the probability is not a number") from None
        if not 0 <= prob <= 1:
            raise ValueError(f"{part!r}: a probability is 0 to 1")
        out[level] = prob
    if not out:
        raise ValueError("no failure probabilities given (e.g. country:0.01,node:0.05)")
    return out


def sample_placements(topology: Topology, expr: str, shares: int, count: int, seed: int) -> np.ndarray:
    """``count`` placements of ``shares`` custodians (site indices), each by the solver with its own seed."""
    try:
        constraints = placement.parse(expr)
    except ValueError as exc:
        raise TopologyError(f"placement {expr!r}: {exc}") from None
    candidates = [s.candidate() for s in topology.sites]
    at = {s.name: i for i, s in enumerate(topology.sites)}
    rng = np.random.default_rng(seed)
    out = np.empty((count, shares), dtype=np.int64)
    for row in range(count):
        try:
            got = placement.solve(candidates, shares, constraints=constraints, seed=int(rng.integers(2**62)))
        except placement.PlacementError as exc:
            raise TopologyError(f"placement {expr or 'random'!r}: {exc}") from None
        out[row] = [at[got[i][0]] for i in range(1, shares + 1)]
    return out


def check(threshold: int, shares: int, trials: int, topology: Topology) -> None:
    """ValueError, in one line, for numbers no run can take."""
    if not 1 <= threshold <= shares:
        raise ValueError(f"the threshold is 1 to the shares ({shares}), got {threshold}")
    if shares > len(topology.sites):
        raise ValueError(f"{shares} shares need {shares} custodians; the topology has {len(topology.sites)}")
    if not 1 <= trials <= MAX_TRIALS:
        raise ValueError(f"trials are 1 to {MAX_TRIALS}")


def survive(topology: Topology, expr: str, *, threshold: int, shares: int, trials: int,
            failures: dict[str, float], seed: int = 0, placements: int = MAX_PLACEMENTS,
            progress: Callable[[int], None] = lambda done: None) -> Estimate:
    check(threshold, shares, trials, topology)
    t0 = time.perf_counter()
    count = max(1, min(placements, trials))
    chosen = sample_placements(topology, expr, shares, count, seed)
    rng = np.random.default_rng([seed, 1])
    # For each level, which value each site has (an index into that level's values).
    levels: list[tuple[np.ndarray, int, float]] = []
    for level, prob in failures.items():
        if level == "node" or prob == 0:
            continue
        # A site without the attribute is a value of its own: it fails alone, not with the others without.
        keys = [str(getattr(s, level)) or f"\0{s.name}" for s in topology.sites]
        index = {v: i for i, v in enumerate(sorted(set(keys)))}
        levels.append((np.array([index[k] for k in keys]), len(index), prob))
    p_node = failures.get("node", 0.0)
    widest = max([shares, *(k for _, k, _ in levels)])
    chunk = max(1, min(trials, CHUNK_CELLS // widest))
    survived = done = 0
    per_placement = np.zeros(count, dtype=np.int64)  # trials survived, by placement
    while done < trials:
        m = min(chunk, trials - done)
        which = np.arange(done, done + m) % count  # in turn: equal shares of the trials
        holders = chosen[which]  # m x shares site indices
        down = rng.random((m, shares)) < p_node if p_node else np.zeros((m, shares), dtype=bool)
        for value_of, k, prob in levels:
            failed = rng.random((m, k)) < prob  # which values of this level fail, per trial
            down |= np.take_along_axis(failed, value_of[holders], axis=1)
        ok = shares - down.sum(axis=1) >= threshold
        per_placement += np.bincount(which[ok], minlength=count)
        survived += int(np.count_nonzero(ok))
        done += m
        progress(done)
    se = None
    if count > 1:
        sizes = trials // count + (np.arange(count) < trials % count)  # trial i took placement i % count
        se = float(np.std(per_placement / sizes, ddof=1) / math.sqrt(count))
    return Estimate(expr, survived, trials, count, time.perf_counter() - t0, se)


def exact_independent(threshold: int, shares: int, p_down: float) -> float:
    """P(at least ``threshold`` of ``shares`` independent holders are up), each down with ``p_down``."""
    q = 1 - p_down
    return sum(math.comb(shares, k) * q**k * p_down ** (shares - k) for k in range(threshold, shares + 1))


def format_table(rows: Sequence[Estimate], *, threshold: int, shares: int, failures: dict[str, float]) -> str:
    fails = ", ".join(f"{k} {v:g}" for k, v in failures.items())
    lines = [f"survival of a {threshold}-of-{shares} keyset, failures: {fails}",
             f"{'PLACEMENT':<32} {'SURVIVAL':>10} {'95% CI':>23} {'TRIALS':>10} {'SECONDS':>8}"]
    for r in rows:
        lo, hi = r.interval
        lines.append(f"{(r.placement or 'random'):<32} {r.p:>10.6f} {f'[{lo:.6f}, {hi:.6f}]':>23} "
                     f"{r.trials:>10} {r.seconds:>8.2f}")
    return "\n".join(lines)
