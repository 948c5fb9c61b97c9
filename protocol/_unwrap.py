"""Threshold unwrap: partial decryptions with Chaum–Pedersen DLEQ proofs.

Holder ``i`` returns ``P_i = s_i·R`` and a proof that ``log_G(Y_i) =
log_R(P_i)``, where ``Y_i = s_i·G`` is its public share (computable by anyone
from the commitments). The requester checks each proof, combines t partials
to ``s·R = Σ λ_i P_i``, and opens the keyset's unwrap envelope. No share
leaves its holder.

The proof is bound to a ``context`` (the request id), the keyset, the epoch
and the index, so a partial made for one request cannot be replayed as
another's proof.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from . import _group as g
from . import _vss as vss
from ._codec import decode_record, encode, want_bytes, want_int
from ._errors import (
    DecryptionFailed,
    InvalidPartial,
    InvalidPoint,
    MalformedEncoding,
    TooFewPartials,
)
from ._keyset import Keyset, Share, open_with_unwrapped

PARTIAL_TAG = "shardnet/partial"
DLEQ_TAG = b"shardnet/dleq/v1\x00"


@dataclass(frozen=True)
class Partial:
    index: int
    point: bytes  # s_i·R
    c: int
    z: int

    def to_bytes(self) -> bytes:
        return encode([PARTIAL_TAG, 1, self.index, self.point, g.scalar_bytes(self.c),
                       g.scalar_bytes(self.z)])

    @classmethod
    def from_bytes(cls, data: bytes) -> Partial:
        f = decode_record(data, PARTIAL_TAG, 1, 4, max_size=512)
        return cls(want_int(f[0], "index", 1, vss.MAX_SHARES), want_bytes(f[1], "point", 32),
                   g.scalar_from_bytes(f[2], "c"), g.scalar_from_bytes(f[3], "z"))


def _challenge(keyset: Keyset, index: int, context: bytes, y: bytes, p: bytes, a: bytes, b: bytes) -> int:
    h = hashlib.sha512(DLEQ_TAG)
    for part in (keyset.keyset_id, keyset.epoch.to_bytes(4, "big"), index.to_bytes(2, "big"),
                 len(context).to_bytes(4, "big"), context, g.G, y, keyset.unwrap_r, p, a, b):
        h.update(part)
    return int.from_bytes(h.digest(), "little") % g.L


def partial_decrypt(keyset: Keyset, share: Share, context: bytes, *, rng: g.Rng = os.urandom) -> Partial:
    """Holder side: ``s_i·R`` with a proof bound to ``context``."""
    if (share.keyset_id, share.epoch) != (keyset.keyset_id, keyset.epoch):
        raise ValueError("share does not belong to this keyset epoch")
    y = g.base_mult(share.value)
    p = g.mult(share.value, keyset.unwrap_r)
    k = g.random_scalar(rng)
    a, b = g.base_mult(k), g.mult(k, keyset.unwrap_r)
    c = _challenge(keyset, share.index, context, y, p, a, b)
    return Partial(share.index, p, c, (k + c * share.value) % g.L)


def verify_partial(keyset: Keyset, partial: Partial, context: bytes, source: str | None = None) -> None:
    """Requester side: raise :class:`InvalidPartial` unless the proof verifies."""
    i = partial.index
    if not 1 <= i <= keyset.shares:
        raise InvalidPartial(i, source, "index out of range")
    try:
        g.check_point(partial.point, "partial")
    except InvalidPoint as exc:
        raise InvalidPartial(i, source, str(exc)) from None
    y = vss.public_share(keyset.commitments, i)
    a = g.sub(g.base_mult(partial.z), g.mult(partial.c, y))
    b = g.sub(g.mult(partial.z, keyset.unwrap_r), g.mult(partial.c, partial.point))
    if _challenge(keyset, i, context, y, partial.point, a, b) != partial.c:
        raise InvalidPartial(i, source, "DLEQ proof does not verify")


def combine_partials(
    keyset: Keyset, partials: Sequence[Partial], context: bytes,
    sources: Sequence[str] | None = None,
) -> tuple[bytes, list[InvalidPartial]]:
    """Open the master key from partials; return it and every partial found bad.

    Every partial is verified; the valid ones are combined (t of them).
    """
    t = keyset.threshold
    seen: set[int] = set()
    good: dict[int, bytes] = {}
    bad: list[InvalidPartial] = []
    for k, p in enumerate(partials):
        src = sources[k] if sources else None
        if p.index in seen:
            raise ValueError(f"partial index {p.index} was supplied more than once")
        seen.add(p.index)
        try:
            verify_partial(keyset, p, context, src)
        except InvalidPartial as exc:
            bad.append(exc)
            continue
        good[p.index] = p.point
    if len(good) < t:
        raise TooFewPartials(len(good), t, bad)
    use = dict(sorted(good.items())[:t])
    try:
        master = open_with_unwrapped(keyset, vss.interpolate_points(use))
    except DecryptionFailed:
        raise MalformedEncoding("keyset record: unwrap envelope does not match its commitments") from None
    return master, bad
