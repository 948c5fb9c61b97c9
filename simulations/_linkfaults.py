"""Slow and lossy links, for both modes that carry bytes (``virtual`` and ``inprocess``).

A slow link adds a fixed one-way delay. A lossy link loses sends with a
probability; over TCP (libp2p's transport) nothing is lost for good, but a lost
segment waits a retransmission timeout, and everything behind it on the
connection waits with it (``Cluster.transit`` keeps that order). The loss is
drawn per send, not per segment: a write on the connection (inprocess: one
Noise frame out, one socket read in) or a gossip hop or a request's leg
(virtual). :meth:`LinkFaults.penalty` draws that cost for one send: an RTO
(Linux's floor of 200 ms, or two round trips if longer) per loss, doubling on
each loss in a row as TCP backs off, at most ``MAX_TRIES`` of them.

A scenario's bound counts a slow link's extra delay (it is the physical
delay) and not the losses (their cost is what a lossy scenario measures).
"""

from __future__ import annotations

import random
from collections.abc import Iterable

RTO_MIN = 0.2  # seconds: Linux's minimum retransmission timeout
MAX_TRIES = 6  # losses in a row drawn for one send (TCP would give up later, after ~15)


class LinkFaults:
    """Extra delay and loss rates, for every pair or for chosen pairs (either direction)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._every = (0.0, 0.0)
        self._pairs: dict[frozenset[str], tuple[float, float]] = {}

    def degrade(self, pairs: Iterable[tuple[str, str]] | None = None, *, extra_s: float = 0.0,
                loss: float = 0.0) -> None:
        """From now on the pairs (every pair: None) take ``extra_s`` more each way and lose
        segments at rate ``loss``."""
        if not (extra_s >= 0 and 0 <= loss < 1):
            raise ValueError(f"a link fault needs extra_s >= 0 and 0 <= loss < 1, not {extra_s}, {loss}")
        if pairs is None:
            self._every = (extra_s, loss)
        else:
            self._pairs.update({frozenset(p): (extra_s, loss) for p in pairs})

    def restore(self) -> None:
        self._every = (0.0, 0.0)
        self._pairs.clear()

    def _of(self, a: str, b: str) -> tuple[float, float]:
        return self._pairs.get(frozenset((a, b)), self._every)

    def extra(self, a: str, b: str) -> float:
        return self._of(a, b)[0]

    def active(self, a: str, b: str) -> bool:
        return self._of(a, b) != (0.0, 0.0)

    def penalty(self, a: str, b: str, one_way: float) -> float:
        """The delay one send from a to b takes beyond ``one_way``: the extra, then the
        retransmissions its losses cost."""
        extra, loss = self._of(a, b)
        cost = extra
        if loss:
            rto = max(RTO_MIN, 4 * (one_way + extra))  # two round trips
            for _ in range(MAX_TRIES):
                if self.rng.random() >= loss:
                    break
                cost += rto
                rto *= 2
        return cost


__all__ = ["LinkFaults", "RTO_MIN"]
