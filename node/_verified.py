"""Signed records, verified once per node and kept by the digest of their exact bytes.

A request, a vote or a keyset record is read many times: from the store for
every tally, from every sync reply and every release ask that carries it
again. Its signature is a function of its bytes, so the parse of those bytes
can be kept: the second time costs a SHA-256, not an Ed25519 check. The cache
is bounded (least recently used out), so a peer that sends many records costs
memory only up to ``size`` entries.
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
    def __init__(self, size: int = 16384) -> None:
        self.size = size
        self._parsed: OrderedDict[tuple[type, bytes], Any] = OrderedDict()

    def parse(self, cls: type[T], data: bytes) -> T:
        """``cls.from_bytes(data)``, from the cache when these exact bytes were parsed before.
        Raises whatever ``from_bytes`` raises (failures are not kept)."""
        key = (cls, hashlib.sha256(data).digest())
        hit = self._parsed.get(key)
        if hit is not None:
            self._parsed.move_to_end(key)
            return hit
        value = cls.from_bytes(data)
        self._parsed[key] = value
        if len(self._parsed) > self.size:
            self._parsed.popitem(last=False)
        return value
