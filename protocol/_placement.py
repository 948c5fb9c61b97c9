"""Placement: which custodians hold which shard index (a pure solver).

Expressions (comma-separated, all must hold):

* ``distinct:country`` / ``distinct:org`` / ``distinct:city`` /
  ``distinct:continent`` — no two chosen custodians share the attribute;
* ``min-distinct:continent=K`` (or country, org) — the chosen custodians
  span at least K different values;
* ``exclude:country=CC`` (or org, continent, city) — never choose these.

Each of the n indices gets R custodians (redundancy); no custodian holds two
indices, and the R holders of one index are always in different countries.
Infeasible placements fail before anything is sent, with a message that names
the constraint and the candidate counts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

ATTRS = ("country", "org", "city", "continent")


class PlacementError(ValueError):
    """The placement cannot be met with the custodians known."""


@dataclass(frozen=True)
class Candidate:
    peer_id: str
    country: str
    continent: str
    org: str = ""
    city: str = ""

    def attr(self, name: str) -> str:
        return str(getattr(self, name))


@dataclass(frozen=True)
class Constraint:
    kind: str  # distinct | min-distinct | exclude
    attr: str
    value: str = ""

    def __str__(self) -> str:
        if self.kind == "distinct":
            return f"distinct:{self.attr}"
        return f"{self.kind}:{self.attr}={self.value}"


def parse(expr: str) -> list[Constraint]:
    out = []
    for part in (p.strip() for p in expr.split(",")):
        if not part:
            continue
        kind, sep, rest = part.partition(":")
        if not sep:
            raise ValueError(f"placement {part!r}: expected KIND:ATTR, e.g. distinct:country")
        attr, _, value = rest.partition("=")
        if attr not in ATTRS:
            raise ValueError(f"placement {part!r}: unknown attribute {attr!r} (one of {', '.join(ATTRS)})")
        if kind == "distinct" and not value:
            out.append(Constraint("distinct", attr))
        elif kind == "min-distinct" and value.isascii() and value.isdigit() and int(value) >= 1:
            out.append(Constraint("min-distinct", attr, value))
        elif kind == "exclude" and value:
            v = value.upper() if attr in ("country", "continent") else value
            out.append(Constraint("exclude", attr, v))
        else:
            raise ValueError(
                f"placement {part!r}: expected distinct:ATTR, min-distinct:ATTR=K or exclude:ATTR=VALUE"
            )
    return out


def violations(holders: Sequence[Candidate], constraints: Sequence[Constraint]) -> list[str]:
    """What the current ``holders`` (one entry per custodian and index) break of
    ``constraints``, one line each; empty if they meet all of them."""
    out = []
    for c in constraints:
        if c.kind == "exclude":
            bad = sorted({h.peer_id for h in holders if h.attr(c.attr) == c.value})
            if bad:
                out.append(f"{c}: held by {', '.join(bad)}")
        elif c.kind == "distinct":
            values = [h.attr(c.attr) for h in holders]
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                out.append(f"{c}: more than one holder in {', '.join(v or '(unknown)' for v in twice)}")
        else:
            span = len({h.attr(c.attr) for h in holders})
            if span < int(c.value):
                out.append(f"{c}: the holders span {span}")
    return out


def solve(
    candidates: Sequence[Candidate], n: int, *, redundancy: int = 1, constraints: Sequence[Constraint] = (),
    seed: int = 0,
) -> dict[int, list[str]]:
    """Assign indices 1..n to ``redundancy`` custodians each, or raise PlacementError."""
    if redundancy < 1:
        raise ValueError("redundancy must be at least 1")
    need = n * redundancy
    excluded = [c for c in constraints if c.kind == "exclude"]
    pool = [c for c in candidates if not any(c.attr(x.attr) == x.value for x in excluded)]
    if len(pool) < need:
        why = f" after {', '.join(map(str, excluded))}" if excluded else ""
        raise PlacementError(
            f"need {need} custodians ({n} shards x {redundancy}), but only {len(pool)} of "
            f"{len(candidates)} known custodians are eligible{why}"
        )
    distinct = [c.attr for c in constraints if c.kind == "distinct"]
    for attr in distinct:
        values = {c.attr(attr) for c in pool}
        if len(values) < need:
            raise PlacementError(
                f"distinct:{attr} needs {need} custodians with different {attr} values, but the "
                f"{len(pool)} eligible candidates span only {len(values)}"
            )
    spans = [(c.attr, int(c.value)) for c in constraints if c.kind == "min-distinct"]
    for attr, k in spans:
        values = {c.attr(attr) for c in pool}
        if len(values) < k or need < k:
            raise PlacementError(
                f"min-distinct:{attr}={k} cannot be met: {need} custodians from {len(pool)} eligible "
                f"candidates spanning {len(values)} {attr} values"
            )
    rng = random.Random(seed)
    for _attempt in range(64):
        chosen = _greedy(pool, need, distinct, spans, rng)
        if chosen is not None:
            assignment = _assign(chosen, n, redundancy)
            if assignment is not None:
                return assignment
    raise PlacementError(
        f"no placement of {need} custodians satisfies {', '.join(map(str, constraints)) or 'the constraints'} "
        f"({len(pool)} eligible candidates)"
    )


def _greedy(
    pool: Sequence[Candidate], need: int, distinct: list[str], spans: list[tuple[str, int]],
    rng: random.Random,
) -> list[Candidate] | None:
    order = list(pool)
    rng.shuffle(order)
    chosen: list[Candidate] = []
    used: dict[str, set[str]] = {a: set() for a in distinct}
    # First cover the span constraints (one new value at a time), then fill.
    for attr, k in spans:
        seen = {c.attr(attr) for c in chosen}
        for c in order:
            if len(seen) >= k or len(chosen) >= need:
                break
            if c in chosen or c.attr(attr) in seen or any(c.attr(a) in used[a] for a in distinct):
                continue
            chosen.append(c)
            seen.add(c.attr(attr))
            for a in distinct:
                used[a].add(c.attr(a))
    for c in order:
        if len(chosen) >= need:
            break
        if c in chosen or any(c.attr(a) in used[a] for a in distinct):
            continue
        chosen.append(c)
        for a in distinct:
            used[a].add(c.attr(a))
    if len(chosen) < need:
        return None
    if any(len({c.attr(a) for c in chosen}) < k for a, k in spans):
        return None
    return chosen


def _assign(chosen: list[Candidate], n: int, redundancy: int) -> dict[int, list[str]] | None:
    """Deal chosen custodians to indices so no index has two holders in one country."""
    by_country: dict[str, list[Candidate]] = {}
    for c in chosen:
        by_country.setdefault(c.country, []).append(c)
    # Largest country groups first, round-robin over indices.
    ordered = [c for group in sorted(by_country.values(), key=len, reverse=True) for c in group]
    out: dict[int, list[str]] = {i: [] for i in range(1, n + 1)}
    countries: dict[int, set[str]] = {i: set() for i in out}
    for k, c in enumerate(ordered):
        i = k % n + 1
        if c.country in countries[i]:
            return None
        out[i].append(c.peer_id)
        countries[i].add(c.country)
    return out


def replace(
    candidates: Sequence[Candidate], holders: dict[int, list[Candidate]], index: int, leaving: str, *,
    constraints: Sequence[Constraint] = (), avoid: frozenset[str] = frozenset(), seed: int = 0,
) -> Candidate:
    """One custodian to hold ``index`` instead of ``leaving``, keeping the constraints with
    every other holder: never one that holds (or held, ``avoid``) a shard of the keyset,
    never an excluded one, a new value of each ``distinct`` attribute, enough values for
    each ``min-distinct`` span, and another country than the index's other holders."""
    others = [c for hs in holders.values() for c in hs if c.peer_id != leaving]
    taken = {c.peer_id for hs in holders.values() for c in hs} | set(avoid) | {leaving}
    same_index = {c.country for c in holders.get(index, []) if c.peer_id != leaving}
    excluded = [c for c in constraints if c.kind == "exclude"]
    distinct = [c.attr for c in constraints if c.kind == "distinct"]
    spans = [(c.attr, int(c.value)) for c in constraints if c.kind == "min-distinct"]
    used = {a: {o.attr(a) for o in others} for a in distinct}
    fresh = [c for c in candidates if c.peer_id not in taken]
    pool = [c for c in fresh
            if not any(c.attr(x.attr) == x.value for x in excluded)
            and not any(c.attr(a) in used[a] for a in distinct)
            and c.country not in same_index
            and all(len({o.attr(a) for o in others} | {c.attr(a)}) >= k for a, k in spans)]
    if not pool:
        rules = ", ".join(map(str, constraints)) or "no constraints"
        raise PlacementError(
            f"no custodian can take shard #{index} from {leaving}: {len(fresh)} admitted candidates hold no shard "
            f"of the keyset, and none of them keeps {rules} with the {len(others)} other holders")
    return random.Random(seed).choice(sorted(pool, key=lambda c: c.peer_id))
