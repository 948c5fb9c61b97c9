"""Latency-aware placements for scenarios: ``near:CITY`` and ``max-rtt:MS``.

A scenario's placement is the node's placement expression (``distinct:country``,
``exclude:org=X``, ... see ``shardnet.protocol.placement``; ``random`` or empty
for none) with two more terms that need the topology's latencies, which a
node does not know:

* ``near:CITY`` takes the custodians with the lowest RTT from that city (a
  city of the bundled table, or of the topology), nearest first, as long as
  the other constraints hold;
* ``max-rtt:MS`` admits only custodians within MS milliseconds of the
  requester's site.

Both combine with the node's constraints (``near:Tokyo,distinct:country``).
The harness picks the custodians here and the owner's node imports onto
exactly those (``key import --custodians``) under the node's part of the
expression, which it checks again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from shardnet.protocol import placement

from ._topology import Site, Topology, TopologyError, city


@dataclass(frozen=True)
class Placement:
    text: str  # as written
    node_expr: str  # the node's part: protocol placement syntax
    near: str = ""  # a city name
    max_rtt_ms: float | None = None

    @property
    def latency_aware(self) -> bool:
        return bool(self.near) or self.max_rtt_ms is not None


def parse(text: str) -> Placement:
    """A scenario placement, or ValueError with the term that is wrong."""
    rest, near, max_rtt = [], "", None
    for part in (x.strip() for x in text.split(",")):
        if not part or part == "random":
            continue
        kind, _, value = part.partition(":")
        if kind == "near":
            if not value.strip() or near:
                raise ValueError(f"placement {part!r}: expected one near:CITY")
            near = value.strip()
        elif kind == "max-rtt":
            try:
                max_rtt = float(value)
            except ValueError:
                max_rtt = -1.0
            if not 0 < max_rtt < 10_000:
                raise ValueError(f"placement {part!r}: expected max-rtt:MS, 0 < MS < 10000")
        else:
            rest.append(part)
    node_expr = ",".join(rest)
    placement.parse(node_expr)  # ValueError for the node's part
    return Placement(text or "random", node_expr, near, max_rtt)


def _anchor(topology: Topology, name: str) -> Site:
    for s in topology.sites:
        if s.city.lower() == name.lower():
            return dataclasses.replace(s, name=f"city:{s.city}", access_ms=0.0)
    c = city(name)  # TopologyError for an unknown city
    return Site(f"city:{c.name}", c.name, c.country, c.continent, c.lat, c.lon)


def choose(topology: Topology, pl: Placement, shares: int, *, requester: Site,
           candidates: Sequence[Site], seed: int = 0) -> list[str]:
    """The ``shares`` custodians (site names) a latency-aware placement takes from
    ``candidates``; PlacementError when it cannot be met."""
    constraints = placement.parse(pl.node_expr)
    pool = list(candidates)
    if pl.max_rtt_ms is not None:
        pool = [s for s in pool if topology.rtt_ms(requester, s) <= pl.max_rtt_ms]
        if len(pool) < shares:
            raise placement.PlacementError(
                f"max-rtt:{pl.max_rtt_ms:g} leaves {len(pool)} custodians within {pl.max_rtt_ms:g} ms of "
                f"{requester.city}, fewer than the {shares} shares")
    if not pl.near:
        return _solved(pool, shares, constraints, seed)
    try:
        anchor = _anchor(topology, pl.near)
    except TopologyError as exc:
        raise placement.PlacementError(f"near:{pl.near}: {exc}") from None
    pool.sort(key=lambda s: (topology.rtt_ms(anchor, s), s.name))
    greedy = _nearest_first(pool, shares, constraints)
    if greedy is not None:
        return greedy
    # A span constraint (min-distinct) the nearest-first pass missed: the smallest
    # prefix of the nearest custodians, doubling, that the solver can place.
    k = shares
    while True:
        try:
            return _solved(pool[:k], shares, constraints, seed)
        except placement.PlacementError:
            if k >= len(pool):
                raise
            k = min(2 * k, len(pool))


def _nearest_first(pool: Sequence[Site], shares: int, constraints: Sequence[placement.Constraint]) -> list[str] | None:
    distinct = [c.attr for c in constraints if c.kind == "distinct"]
    excluded = [c for c in constraints if c.kind == "exclude"]
    used: dict[str, set[str]] = {a: set() for a in distinct}
    chosen: list[Site] = []
    for s in pool:
        if len(chosen) == shares:
            break
        cand = s.candidate()
        if any(cand.attr(x.attr) == x.value for x in excluded) or any(cand.attr(a) in used[a] for a in distinct):
            continue
        chosen.append(s)
        for a in distinct:
            used[a].add(cand.attr(a))
    if len(chosen) < shares or placement.violations([s.candidate() for s in chosen], constraints):
        return None
    return [s.name for s in chosen]


def _solved(pool: Sequence[Site], shares: int, constraints: Sequence[placement.Constraint], seed: int) -> list[str]:
    got = placement.solve([s.candidate() for s in pool], shares, constraints=constraints, seed=seed)
    return [names[0] for _, names in sorted(got.items())]
