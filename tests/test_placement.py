"""Re-placing one shard: the new holder keeps every placement constraint with the others."""

from __future__ import annotations

import pytest

from shardnet.protocol import placement as pl

C = pl.Candidate


def holders() -> dict[int, list[pl.Candidate]]:
    return {1: [C("a", "DE", "EU", "o1", "Berlin")], 2: [C("b", "US", "NA", "o2", "NYC")],
            3: [C("c", "JP", "AS", "o3", "Tokyo")]}


def test_the_new_holder_is_not_a_holder_and_keeps_distinct_country() -> None:
    cands = [*[c for hs in holders().values() for c in hs], C("d", "US", "NA", "o4"), C("e", "BR", "SA", "o5")]
    got = pl.replace(cands, holders(), 3, "c", constraints=pl.parse("distinct:country"))
    assert got.peer_id == "e"  # d is in the US, like b


def test_excluded_avoided_and_same_index_countries_are_never_chosen() -> None:
    cands = [C("d", "FR", "EU"), C("e", "BR", "SA"), C("f", "AU", "OC")]
    h = holders()
    h[3].append(C("g", "AU", "OC"))  # redundancy 2: index 3 also held in AU
    rules = pl.parse("exclude:country=BR")
    with pytest.raises(pl.PlacementError, match="shard #3 from c: 2 admitted candidates"):
        pl.replace(cands, h, 3, "c", constraints=rules, avoid=frozenset({"d"}))
    got = pl.replace([*cands, C("h", "IN", "AS")], h, 3, "c", constraints=rules, avoid=frozenset({"d"}))
    assert got.peer_id == "h"


def test_a_span_that_would_break_is_refused() -> None:
    h = holders()
    # Three continents now; min-distinct:continent=3 forbids replacing Asia with Europe.
    with pytest.raises(pl.PlacementError, match="min-distinct:continent=3"):
        pl.replace([C("d", "FR", "EU")], h, 3, "c", constraints=pl.parse("min-distinct:continent=3"))
    assert pl.replace([C("d", "FR", "EU"), C("e", "IN", "AS")], h, 3, "c",
                      constraints=pl.parse("min-distinct:continent=3")).peer_id == "e"


def test_violations_name_what_the_holders_break() -> None:
    from shardnet.protocol._placement import Candidate, parse, violations

    holders = [Candidate("a", "CH", "EU", "org1"), Candidate("b", "CH", "EU", "org2"),
               Candidate("c", "JP", "AS", "org2")]
    assert violations(holders, parse("")) == []
    got = violations(holders, parse("distinct:country,exclude:country=JP,min-distinct:continent=3,distinct:city"))
    assert got == ["distinct:country: more than one holder in CH", "exclude:country=JP: held by c",
                   "min-distinct:continent=3: the holders span 2",
                   "distinct:city: more than one holder in (unknown)"]
    assert violations(holders[::2], parse("distinct:country,min-distinct:continent=2")) == []
