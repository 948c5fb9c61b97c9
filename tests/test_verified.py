"""VerifiedRecords: parses kept by digest, bounded by bytes, failures never kept."""

from __future__ import annotations

import pytest

from shardnet.node._verified import VerifiedRecords


class Rec:
    parses = 0

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def from_bytes(cls, data: bytes) -> Rec:
        cls.parses += 1
        if data.startswith(b"bad"):
            raise ValueError("does not verify")
        return cls(data)


def test_the_same_bytes_are_parsed_once_and_other_bytes_again() -> None:
    cache, before = VerifiedRecords(1 << 20), Rec.parses
    a = cache.parse(Rec, b"a" * 100)
    assert cache.parse(Rec, b"a" * 100) is a and Rec.parses == before + 1
    assert cache.parse(Rec, b"b" * 100) is not a and Rec.parses == before + 2


def test_failures_are_not_kept() -> None:
    cache, before = VerifiedRecords(1 << 20), Rec.parses
    for _ in range(3):
        with pytest.raises(ValueError):
            cache.parse(Rec, b"bad record")
    assert Rec.parses == before + 3 and len(cache) == 0


def test_the_budget_is_bytes_and_a_large_record_is_never_kept() -> None:
    cache = VerifiedRecords(8000)
    for i in range(100):
        cache.parse(Rec, bytes([i]) * 500)
    assert cache.held_bytes <= 8000 and len(cache) == 16
    cache.parse(Rec, b"x" * 1001)  # above an eighth of the budget
    assert len(cache) == 16 and cache.held_bytes <= 8000
    before = Rec.parses
    cache.parse(Rec, bytes([99]) * 500)  # the most recent one is still there
    assert Rec.parses == before
