"""Where the node's time and randomness come from.

This is the only module in ``node/`` that reads the operating system's clock
or its random source (a test fails if any other does). Everything else takes
a :data:`Clock` and an :data:`Rng` as parameters (house style 3), handed in by
the composition root: the CLI for a real node, the grid for simulated ones,
which runs many nodes under ``trio.testing.MockClock`` with a seeded RNG.

Durations and deadlines inside a running node use ``trio.current_time()``,
trio's own clock, which the grid's MockClock drives as well.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

#: Wall-clock time, in seconds since the UNIX epoch (record times, not-after checks).
Clock = Callable[[], float]
#: ``rng(n)`` returns n random bytes.
Rng = Callable[[int], bytes]
#: The longest duration an expiry or a schedule may be: 100 years, so that every date it
#: makes is one Python's datetime can print.
MAX_DURATION = 100 * 365 * 86400


def system_clock() -> float:
    return time.time()


def system_rng(n: int) -> bytes:
    return os.urandom(n)


__all__ = ["Clock", "Rng", "system_clock", "system_rng"]
