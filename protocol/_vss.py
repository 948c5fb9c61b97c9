"""Feldman verifiable secret sharing over edwards25519 (private math layer).

A dealing of secret ``s`` with threshold ``t`` is a random polynomial
``f(x) = a_0 + a_1 x + ... + a_{t-1} x^{t-1}`` with ``a_0 = s``; holder ``i``
gets ``f(i)``; the commitments are ``C_j = a_j·G``. Anyone can compute holder
``i``'s public share ``Y_i = f(i)·G = Σ i^j C_j`` and check a share against it.

Refresh and reshare are written as pure functions over explicit round
messages (:class:`RefreshDeal`, :class:`ReshareDeal`) so the node can run
them over the network; nothing here sends or receives anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from . import _group as g
from ._errors import InvalidPoint, InvalidShare, MalformedEncoding

MAX_SHARES = 1000
Rng = g.Rng


def check_params(t: int, n: int) -> None:
    if not (isinstance(t, int) and isinstance(n, int)):
        raise ValueError("threshold and shares must be integers")
    if not 2 <= t <= n <= MAX_SHARES:
        raise ValueError(
            f"need 2 <= threshold <= shares <= {MAX_SHARES}, got threshold {t}, shares {n}"
        )


def eval_poly(coeffs: Sequence[int], x: int) -> int:
    acc = 0
    for a in reversed(coeffs):
        acc = (acc * x + a) % g.L
    return acc


@dataclass(frozen=True)
class Dealing:
    secret: int
    commitments: tuple[bytes, ...]
    shares: dict[int, int]  # index -> f(index)


def deal(
    t: int, n: int, *, secret: int | None = None, indices: Sequence[int] | None = None,
    rng: Rng = os.urandom,
) -> Dealing:
    """Deal ``secret`` (a fresh random scalar if None) t-of-n to ``indices`` (1..n)."""
    check_params(t, n)
    idx = list(indices) if indices is not None else list(range(1, n + 1))
    if len(idx) != n or len(set(idx)) != n or not all(0 < i <= MAX_SHARES for i in idx):
        raise ValueError(f"need {n} distinct share indices in 1..{MAX_SHARES}")
    s = g.random_scalar(rng) if secret is None else secret % g.L
    coeffs = [s] + [g.random_scalar(rng) for _ in range(t - 1)]
    commitments = tuple(g.base_mult(a) for a in coeffs)
    return Dealing(s, commitments, {i: eval_poly(coeffs, i) for i in idx})


def check_commitments(commitments: Sequence[object], *, zero_sharing: bool = False) -> tuple[bytes, ...]:
    """Validate commitments from outside. A sharing of zero has C_0 = identity."""
    if not 1 <= len(commitments) <= MAX_SHARES:
        raise MalformedEncoding("commitments: wrong length")
    out = []
    for j, c in enumerate(commitments):
        if zero_sharing and j == 0:
            if c != g.IDENTITY:
                raise InvalidPoint("a sharing of zero must commit to the identity")
            out.append(g.IDENTITY)
        else:
            # A random coefficient is zero with negligible probability; allow it
            # only where sums of commitments can legitimately produce it.
            out.append(g.check_point(c, f"commitment {j}", allow_identity=j > 0))
    return tuple(out)


def public_share(commitments: Sequence[bytes], index: int) -> bytes:
    """Y_i = Σ_j i^j C_j, by Horner's rule (t-1 small-scalar multiplications)."""
    acc = g.IDENTITY
    for c in reversed(commitments):
        acc = g.add(g.mult(index, acc), c)
    return acc


def verify_share(commitments: Sequence[bytes], index: int, value: int, source: str | None = None) -> None:
    if not 0 <= value < g.L:
        raise InvalidShare(index, source, "value out of range")
    if g.base_mult(value) != public_share(commitments, index):
        raise InvalidShare(index, source)


def batch_check(
    commitments: Sequence[bytes], shares: Mapping[int, int], *, rng: Rng = os.urandom
) -> bool:
    """True when every share matches, using one random linear combination.

    Checks ``(Σ r_i s_i)·G == Σ_j (Σ_i r_i i^j)·C_j`` with 128-bit random
    ``r_i``: one base and t variable multiplications for any number of shares.
    A False answer says only that some share is bad; use :func:`verify_share`
    to find which.
    """
    if not shares:
        return True
    t = len(commitments)
    lhs = 0
    coeff = [0] * t
    for i, s in shares.items():
        if not 0 <= s < g.L:
            return False
        r = int.from_bytes(rng(16), "little") | 1
        lhs = (lhs + r * s) % g.L
        p = r
        for j in range(t):
            coeff[j] = (coeff[j] + p) % g.L
            p = p * i % g.L
    rhs = g.point_sum([g.mult(coeff[j], commitments[j]) for j in range(t)])
    return g.base_mult(lhs) == rhs


def find_bad_shares(
    commitments: Sequence[bytes], shares: Mapping[int, int], sources: Mapping[int, str] | None = None,
) -> list[InvalidShare]:
    bad = []
    for i, s in shares.items():
        try:
            verify_share(commitments, i, s, (sources or {}).get(i))
        except InvalidShare as exc:
            bad.append(exc)
    return bad


def lagrange_at_zero(indices: Sequence[int]) -> list[int]:
    """λ_i with Σ λ_i f(i) = f(0), for distinct indices in 1..MAX_SHARES."""
    if len(set(indices)) != len(indices) or not all(0 < i <= MAX_SHARES for i in indices):
        raise ValueError("interpolation needs distinct share indices in 1..1000")
    num = 1
    for x in indices:
        num = num * x % g.L
    dens = []
    for xi in indices:
        d = xi
        for xj in indices:
            if xj != xi:
                d = d * (xj - xi) % g.L
        dens.append(d)
    return [num * inv % g.L for inv in g.inverse_all(dens)]


def interpolate(shares: Mapping[int, int]) -> int:
    idx = list(shares)
    lam = lagrange_at_zero(idx)
    return sum(lam_i * shares[i] for lam_i, i in zip(lam, idx, strict=True)) % g.L


def interpolate_points(points: Mapping[int, bytes]) -> bytes:
    """Σ λ_i P_i: the constant term 'in the exponent'."""
    idx = list(points)
    lam = lagrange_at_zero(idx)
    return g.point_sum([g.mult(lam_i, points[i]) for lam_i, i in zip(lam, idx, strict=True)])


# -- refresh: add a sharing of zero ------------------------------------------------


@dataclass(frozen=True)
class RefreshDeal:
    """One participant's round message: a sharing of zero to every index."""

    dealer: int
    commitments: tuple[bytes, ...]  # Z_0 = identity
    subshares: dict[int, int]


def refresh_deal(dealer: int, t: int, indices: Sequence[int], *, rng: Rng = os.urandom) -> RefreshDeal:
    d = deal(t, len(indices), secret=0, indices=indices, rng=rng)
    return RefreshDeal(dealer, d.commitments, d.shares)


def check_refresh_deal(deal_: RefreshDeal, t: int) -> None:
    if len(deal_.commitments) != t:
        raise MalformedEncoding(f"refresh deal from {deal_.dealer}: expected {t} commitments")
    check_commitments(deal_.commitments, zero_sharing=True)


def refresh_share(
    index: int, value: int, deals: Sequence[RefreshDeal], t: int
) -> int:
    """Holder ``index``'s new share: old share plus every verified zero sub-share."""
    _distinct_dealers(deals)
    new = value
    for d in deals:
        check_refresh_deal(d, t)
        if index not in d.subshares:
            raise MalformedEncoding(f"refresh deal from {d.dealer} has nothing for index {index}")
        verify_share(d.commitments, index, d.subshares[index], f"refresh dealer {d.dealer}")
        new = (new + d.subshares[index]) % g.L
    return new


def refresh_commitments(commitments: Sequence[bytes], deals: Sequence[RefreshDeal]) -> tuple[bytes, ...]:
    _distinct_dealers(deals)
    out = list(commitments)
    for d in deals:
        check_refresh_deal(d, len(commitments))
        out = [g.add(c, z) for c, z in zip(out, d.commitments, strict=True)]
    return tuple(out)


# -- reshare: t-of-n to t'-of-n' on a new index set -------------------------------


@dataclass(frozen=True)
class ReshareDeal:
    """An old holder's round message: its share dealt t'-of-n' to the new indices."""

    dealer: int  # the old index
    commitments: tuple[bytes, ...]  # G_{i,j}; G_{i,0} must equal the old Y_i
    subshares: dict[int, int]


def reshare_deal(
    index: int, value: int, new_t: int, new_indices: Sequence[int], *, rng: Rng = os.urandom
) -> ReshareDeal:
    d = deal(new_t, len(new_indices), secret=value, indices=new_indices, rng=rng)
    return ReshareDeal(index, d.commitments, d.shares)


def check_reshare_deal(deal_: ReshareDeal, old_commitments: Sequence[bytes], new_t: int) -> None:
    if len(deal_.commitments) != new_t:
        raise MalformedEncoding(f"reshare deal from {deal_.dealer}: expected {new_t} commitments")
    check_commitments(deal_.commitments)
    if deal_.commitments[0] != public_share(old_commitments, deal_.dealer):
        raise InvalidShare(deal_.dealer, f"reshare dealer {deal_.dealer}", "does not reshare its own share")


def _reshare_set(deals: Sequence[ReshareDeal], old_t: int) -> list[int]:
    dealers = _distinct_dealers(deals)
    if len(dealers) < old_t:
        raise ValueError(f"reshare needs deals from {old_t} old holders, got {len(dealers)}")
    return dealers[:old_t]


def reshare_share(
    new_index: int, deals: Sequence[ReshareDeal], old_commitments: Sequence[bytes], new_t: int
) -> int:
    use = {d.dealer: d for d in deals}
    dealers = _reshare_set(deals, len(old_commitments))
    lam = lagrange_at_zero(dealers)
    acc = 0
    for lam_i, i in zip(lam, dealers, strict=True):
        d = use[i]
        check_reshare_deal(d, old_commitments, new_t)
        if new_index not in d.subshares:
            raise MalformedEncoding(f"reshare deal from {i} has nothing for index {new_index}")
        verify_share(d.commitments, new_index, d.subshares[new_index], f"reshare dealer {i}")
        acc = (acc + lam_i * d.subshares[new_index]) % g.L
    return acc


def reshare_commitments(
    deals: Sequence[ReshareDeal], old_commitments: Sequence[bytes], new_t: int
) -> tuple[bytes, ...]:
    use = {d.dealer: d for d in deals}
    dealers = _reshare_set(deals, len(old_commitments))
    lam = lagrange_at_zero(dealers)
    for i in dealers:
        check_reshare_deal(use[i], old_commitments, new_t)
    return tuple(
        g.point_sum([g.mult(lam_i, use[i].commitments[j]) for lam_i, i in zip(lam, dealers, strict=True)])
        for j in range(new_t)
    )


def _distinct_dealers(deals: Sequence[RefreshDeal] | Sequence[ReshareDeal]) -> list[int]:
    dealers = [d.dealer for d in deals]
    if len(set(dealers)) != len(dealers):
        raise ValueError("two round messages from the same dealer")
    return sorted(dealers)
