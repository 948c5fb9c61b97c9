"""Threshold unwrap: partial decryptions with DLEQ proofs; no share leaves its holder."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet.protocol import (
    InvalidPartial,
    MalformedEncoding,
    Partial,
    TooFewPartials,
    combine_partials,
    partial_decrypt,
    split_key,
    verify_partial,
)
from shardnet.protocol import _group as g
from shardnet.protocol import _vss as vss

from .drbg import Drbg

OWNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def setup(t: int = 3, n: int = 5):
    keyset, shares = split_key(b"the master key", t, n, owner=OWNER, now=1, rng=Drbg(b"u"))
    rng = Drbg(b"p")
    return keyset, shares, [partial_decrypt(keyset, s, b"req-1", rng=rng) for s in shares]


def test_any_t_partials_open_the_key() -> None:
    keyset, _, partials = setup()
    for p in partials:
        verify_partial(keyset, p, b"req-1")
        assert Partial.from_bytes(p.to_bytes()) == p
    assert combine_partials(keyset, partials[2:], b"req-1") == (b"the master key", [])


def test_bad_partial_is_named_and_others_used() -> None:
    keyset, _, partials = setup()
    wrong = dataclasses.replace(partials[1], point=g.base_mult(7))
    master, bad = combine_partials(keyset, [partials[0], wrong, partials[2], partials[3]], b"req-1",
                                   ["alice", "bob", "carol", "dave"])
    assert master == b"the master key"
    assert [(b.index, b.source) for b in bad] == [(2, "bob")]
    with pytest.raises(TooFewPartials, match="2 of 3 required partial decryptions; invalid: bob"):
        combine_partials(keyset, [partials[0], wrong, partials[2]], b"req-1", ["alice", "bob", "carol"])


def test_proof_is_bound_to_the_request_and_index() -> None:
    keyset, _, partials = setup()
    with pytest.raises(InvalidPartial, match="DLEQ"):
        verify_partial(keyset, partials[0], b"req-2")
    moved = dataclasses.replace(partials[0], index=2)
    with pytest.raises(InvalidPartial):
        verify_partial(keyset, moved, b"req-1")
    ident = dataclasses.replace(partials[0], point=g.IDENTITY)
    with pytest.raises(InvalidPartial, match="identity"):
        verify_partial(keyset, ident, b"req-1")


def test_unwrap_survives_refresh() -> None:
    keyset, shares, _ = setup(2, 3)
    idx = [s.index for s in shares]
    deals = [vss.refresh_deal(i, 2, idx, rng=Drbg(bytes([i]))) for i in idx]
    new = keyset.next_epoch(commitments=vss.refresh_commitments(keyset.commitments, deals),
                            threshold=2, shares=3, signer=OWNER)
    fresh = [dataclasses.replace(s, epoch=1, value=vss.refresh_share(s.index, s.value, deals, 2)) for s in shares]
    ps = [partial_decrypt(new, s, b"r") for s in fresh[:2]]
    assert combine_partials(new, ps, b"r")[0] == b"the master key"
    with pytest.raises(ValueError, match="epoch"):
        partial_decrypt(new, shares[0], b"r")


def test_partial_decoding_is_strict() -> None:
    _, _, partials = setup()
    raw = partials[0].to_bytes()
    with pytest.raises(MalformedEncoding):
        Partial.from_bytes(raw[:-1])
    with pytest.raises(MalformedEncoding):
        Partial.from_bytes(raw + b"\x00")
