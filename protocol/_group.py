"""Scalars and points of the prime-order group of edwards25519 (private).

Scalars are Python ints reduced mod ``L`` (fast for the polynomial work);
points are their 32-byte libsodium encodings. libsodium raises ``RuntimeError``
for results that are the identity and rejects the identity as a point, so the
identity is handled here explicitly and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from nacl import bindings as _sodium

from ._errors import InvalidPoint, MalformedEncoding

L = 2**252 + 27742317777372353535851937790883648493
IDENTITY = b"\x01" + bytes(31)
G = _sodium.crypto_scalarmult_ed25519_base_noclamp((1).to_bytes(32, "little"))

Rng = Callable[[int], bytes]

_base = _sodium.crypto_scalarmult_ed25519_base_noclamp
_mul = _sodium.crypto_scalarmult_ed25519_noclamp
_add = _sodium.crypto_core_ed25519_add
_sub = _sodium.crypto_core_ed25519_sub
_is_valid = _sodium.crypto_core_ed25519_is_valid_point


def random_scalar(rng: Rng) -> int:
    """A uniform non-zero scalar (64 random bytes reduced mod L)."""
    while True:
        k = int.from_bytes(rng(64), "little") % L
        if k:
            return k


def scalar_bytes(k: int) -> bytes:
    return (k % L).to_bytes(32, "little")


def scalar_from_bytes(b: bytes, what: str = "scalar") -> int:
    """Decode a canonical scalar from outside; refuse non-canonical encodings."""
    if not isinstance(b, bytes) or len(b) != 32:
        raise MalformedEncoding(f"{what}: expected 32 bytes")
    k = int.from_bytes(b, "little")
    if k >= L:
        raise MalformedEncoding(f"{what}: not reduced mod the group order")
    return k


def base_mult(k: int) -> bytes:
    k %= L
    if k == 0:
        return IDENTITY
    return _base(k.to_bytes(32, "little"))


def mult(k: int, p: bytes) -> bytes:
    k %= L
    if k == 0 or p == IDENTITY:
        return IDENTITY
    return _mul(k.to_bytes(32, "little"), p)


def add(p: bytes, q: bytes) -> bytes:
    if p == IDENTITY:
        return q
    if q == IDENTITY:
        return p
    return _add(p, q)


def sub(p: bytes, q: bytes) -> bytes:
    if q == IDENTITY:
        return p
    return _sub(p, q)


def point_sum(points: Sequence[bytes]) -> bytes:
    acc = IDENTITY
    for p in points:
        acc = add(acc, p)
    return acc


def check_point(p: object, what: str = "point", *, allow_identity: bool = False) -> bytes:
    """Validate a point from outside: canonical, in the prime-order subgroup.

    The identity is refused unless ``allow_identity`` (a sharing of zero has
    the identity as its constant-term commitment).
    """
    if not isinstance(p, bytes) or len(p) != 32:
        raise InvalidPoint(f"{what}: expected a 32-byte point encoding")
    if p == IDENTITY:
        if allow_identity:
            return p
        raise InvalidPoint(f"{what}: is the identity")
    # libsodium checks canonical form, curve membership, the prime-order
    # subgroup and small order (tests/test_group.py checks a torsioned point).
    if not _is_valid(p):
        raise InvalidPoint(f"{what}: not a point of the prime-order subgroup")
    return p


def inverse_all(values: Sequence[int]) -> list[int]:
    """Invert many non-zero scalars with one modular inversion (Montgomery's trick)."""
    prefix = []
    acc = 1
    for v in values:
        prefix.append(acc)
        acc = acc * v % L
    inv = pow(acc, -1, L)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = prefix[i] * inv % L
        inv = inv * values[i] % L
    return out
