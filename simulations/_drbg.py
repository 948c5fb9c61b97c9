"""A deterministic byte stream for the grid, tests and vectors (never for real keys)."""

from __future__ import annotations

import hashlib


class Drbg:
    """SHAKE-256(seed || counter) blocks, handed out in order: ``rng(n)``."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.counter = 0
        self.buf = b""

    def __call__(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += hashlib.shake_256(self.seed + self.counter.to_bytes(8, "big")).digest(64)
            self.counter += 1
        out, self.buf = self.buf[:n], self.buf[n:]
        return out
