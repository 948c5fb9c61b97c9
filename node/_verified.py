"""Signed records, verified once per node and kept by the digest of their exact bytes.

A request, a vote or a keyset record is read many times: from the store for
every tally, from every sync reply and every release ask that carries it
again. Its signature is a function of its bytes, so the parse of those bytes
can be kept: the second time costs a SHA-256, not an Ed25519 check. The cache
is bounded by the bytes of the records it holds (least recently used out,
and a record larger than an eighth of the budget is never kept), so a peer
that sends many records, or large ones, costs at most ``max_bytes`` of
records (their parsed forms are of the same order).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Protocol, TypeVar


class _Parses(Protocol):
    @classmethod
    def from_bytes(cls, data: bytes) -> Any: ...


T = TypeVar("T", bound=_Parses)


class VerifiedRecords:
    def __init__(self, max_bytes: int = 8 << 20) -> None:
        self.max_bytes = max_bytes
        self.held_bytes = 0
        self._parsed: OrderedDict[tuple[type, bytes], tuple[Any, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._parsed)

    def parse(self, cls: type[T], data: bytes) -> T:
        """``cls.from_bytes(data)``, from the cache when these exact bytes were parsed before.
        Raises whatever ``from_bytes`` raises (failures are not kept)."""
        key = (cls, hashlib.sha256(data).digest())
        hit = self._parsed.get(key)
        if hit is not None:
            self._parsed.move_to_end(key)
            return hit[0]
        value = cls.from_bytes(data)
        if len(data) <= self.max_bytes // 8:
            self._parsed[key] = (value, len(data))
            self.held_bytes += len(data)
            while self.held_bytes > self.max_bytes:
                _, (_, size) = self._parsed.popitem(last=False)
                self.held_bytes -= size
        return value
