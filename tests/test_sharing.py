"""Split, combine, verify, refresh and reshare: properties and every error."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardnet.protocol import (
    DecryptionFailed,
    DuplicateShare,
    InvalidShare,
    InvalidShares,
    InvalidSignature,
    Keyset,
    MalformedEncoding,
    MixedShares,
    Share,
    TooFewShares,
    batch_verify_shares,
    combine_key,
    split_key,
    verify_share,
)
from shardnet.protocol import _group as g
from shardnet.protocol import _vss as vss

from .drbg import Drbg

OWNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def split(master: bytes = b"k" * 32, t: int = 3, n: int = 5, seed: bytes = b"s") -> tuple[Keyset, list[Share]]:
    return split_key(master, t, n, owner=OWNER, now=1_700_000_000, rng=Drbg(seed))


@FAST
@given(
    t=st.integers(2, 8), extra=st.integers(0, 6), key=st.binary(min_size=1, max_size=300),
    seed=st.binary(min_size=1, max_size=8), data=st.data(),
)
def test_any_t_subset_recovers_and_any_t_minus_1_fails(
    t: int, extra: int, key: bytes, seed: bytes, data: st.DataObject
) -> None:
    n = t + extra
    keyset, shares = split(key, t, n, seed)
    subset = data.draw(st.permutations(shares)).copy()[:t]
    assert combine_key(keyset, subset).master == key
    with pytest.raises(TooFewShares, match=f"{t - 1} of {t} required"):
        combine_key(keyset, subset[: t - 1])


def test_every_subset_small() -> None:
    keyset, shares = split(t=3, n=5)
    for k in (3, 4, 5):
        for subset in itertools.combinations(shares, k):
            assert combine_key(keyset, list(subset)).master == b"k" * 32
    for subset in itertools.combinations(shares, 2):
        with pytest.raises(TooFewShares):
            combine_key(keyset, list(subset))


def test_large_keys_and_limits() -> None:
    big = bytes(random.Random(1).randbytes(64 * 1024))
    keyset, shares = split(big, 2, 3)
    assert combine_key(keyset, shares[1:]).master == big
    with pytest.raises(ValueError, match="1 to 65536 bytes"):
        split(big + b"x")
    with pytest.raises(ValueError, match="1 to 65536 bytes"):
        split(b"")
    for t, n in [(1, 3), (4, 3), (2, 1001)]:
        with pytest.raises(ValueError, match="threshold"):
            split(t=t, n=n)


def test_max_parameters() -> None:
    keyset, shares = split(t=50, n=1000)
    assert combine_key(keyset, shares[-50:]).master == b"k" * 32


def test_bad_share_is_named_and_skipped_when_enough_remain() -> None:
    keyset, shares = split(t=3, n=5)
    bad = dataclasses.replace(shares[1], value=(shares[1].value + 1) % g.L)
    got = combine_key(keyset, [shares[0], bad, shares[2], shares[3]], ["a", "b", "c", "d"])
    assert got.master == b"k" * 32
    assert [(b.index, b.source) for b in got.bad] == [(2, "b")]
    assert got.used == [1, 3, 4]


def test_bad_share_with_too_few_good_ones() -> None:
    keyset, shares = split(t=3, n=5)
    bad = dataclasses.replace(shares[1], value=7)
    with pytest.raises(TooFewShares, match=r"2 of 3 required shares; invalid: b \(index 2\)") as ei:
        combine_key(keyset, [shares[0], bad, shares[2]], ["a", "b", "c"])
    assert ei.value.have == 2 and ei.value.need == 3
    assert [b.index for b in ei.value.bad] == [2]


def test_duplicate_share() -> None:
    keyset, shares = split()
    with pytest.raises(DuplicateShare, match="share index 1 was supplied more than once"):
        combine_key(keyset, [shares[0], shares[0], shares[1]])
    forged = dataclasses.replace(shares[0], value=5)
    with pytest.raises(DuplicateShare, match=r"\(x, y\)"):
        combine_key(keyset, [shares[0], forged, shares[1]], ["x", "y", "z"])


def test_mixed_keysets_fail() -> None:
    k1, s1 = split(seed=b"one")
    _, s2 = split(seed=b"two")
    with pytest.raises(MixedShares, match="belongs to keyset"):
        combine_key(k1, [s1[0], s1[1], s2[2]])


def test_verify_and_batch_verify() -> None:
    keyset, shares = split(t=3, n=5)
    for s in shares:
        verify_share(keyset, s)
    batch_verify_shares(keyset, shares)
    bad1 = dataclasses.replace(shares[1], value=1)
    bad3 = dataclasses.replace(shares[3], value=2)
    with pytest.raises(InvalidShare, match="share 2 from f2"):
        verify_share(keyset, bad1, "f2")
    with pytest.raises(InvalidShares) as ei:
        batch_verify_shares(keyset, [shares[0], bad1, shares[2], bad3])
    assert [b.index for b in ei.value.bad] == [2, 4]


@FAST
@given(t=st.integers(2, 6), extra=st.integers(0, 4), seed=st.binary(max_size=8), rounds=st.integers(1, 3))
def test_refresh_keeps_secret_and_public_key(t: int, extra: int, seed: bytes, rounds: int) -> None:
    n = t + extra
    keyset, shares = split(t=t, n=n, seed=seed)
    rng = Drbg(b"refresh" + seed)
    old = shares
    public = keyset.public_key
    for _ in range(rounds):
        idx = [s.index for s in shares]
        deals = [vss.refresh_deal(i, t, idx, rng=rng) for i in idx]
        new_comm = vss.refresh_commitments(keyset.commitments, deals)
        new_keyset = keyset.next_epoch(commitments=new_comm, threshold=t, shares=n, signer=OWNER)
        shares = [
            Share(s.keyset_id, new_keyset.epoch, s.index, vss.refresh_share(s.index, s.value, deals, t))
            for s in shares
        ]
        keyset = new_keyset
    assert keyset.public_key == public
    assert keyset.epoch == rounds
    assert combine_key(keyset, shares[:t]).master == b"k" * 32
    batch_verify_shares(keyset, shares)
    # Old shares no longer combine with new ones: a mixed set is refused clearly,
    # and an old share relabelled as new is named as invalid.
    with pytest.raises(MixedShares, match="from epoch 0"):
        combine_key(keyset, [old[0], *shares[1:t]])
    relabelled = dataclasses.replace(old[0], epoch=keyset.epoch)
    with pytest.raises(TooFewShares) as ei:
        combine_key(keyset, [relabelled, *shares[1:t]])
    assert [b.index for b in ei.value.bad] == [1]


def test_refresh_keeps_public_key_and_names_a_bad_dealer() -> None:
    keyset, shares = split(t=3, n=5)
    idx = [s.index for s in shares]
    rng = Drbg(b"r")
    deals = [vss.refresh_deal(i, 3, idx, rng=rng) for i in idx]
    new_comm = vss.refresh_commitments(keyset.commitments, deals)
    assert new_comm[0] == keyset.public_key
    assert new_comm != keyset.commitments
    cheat = dataclasses.replace(deals[2], subshares={**deals[2].subshares, 4: 12345})
    with pytest.raises(InvalidShare, match="refresh dealer 3"):
        vss.refresh_share(4, shares[3].value, [deals[0], deals[1], cheat], 3)
    nonzero = vss.deal(3, 5, secret=1, rng=rng)
    with pytest.raises(Exception, match="identity"):
        vss.refresh_commitments(keyset.commitments, [vss.RefreshDeal(1, nonzero.commitments, nonzero.shares)])


@FAST
@given(
    t=st.integers(2, 5), extra=st.integers(0, 3), t2=st.integers(2, 6), extra2=st.integers(0, 4),
    seed=st.binary(max_size=8),
)
def test_reshare_changes_t_n_and_keeps_secret(t: int, extra: int, t2: int, extra2: int, seed: bytes) -> None:
    n, n2 = t + extra, t2 + extra2
    keyset, shares = split(t=t, n=n, seed=seed)
    rng = Drbg(b"reshare" + seed)
    new_idx = list(range(1, n2 + 1))
    dealers = shares[-t:]
    deals = [vss.reshare_deal(s.index, s.value, t2, new_idx, rng=rng) for s in dealers]
    comm = vss.reshare_commitments(deals, keyset.commitments, t2)
    assert comm[0] == keyset.public_key
    new_keyset = keyset.next_epoch(commitments=comm, threshold=t2, shares=n2, signer=OWNER)
    new_shares = [
        Share(keyset.keyset_id, new_keyset.epoch, k, vss.reshare_share(k, deals, keyset.commitments, t2))
        for k in new_idx
    ]
    batch_verify_shares(new_keyset, new_shares)
    assert combine_key(new_keyset, new_shares[-t2:]).master == b"k" * 32
    with pytest.raises(TooFewShares):
        combine_key(new_keyset, new_shares[: t2 - 1])
    with pytest.raises(MixedShares):
        combine_key(new_keyset, [shares[0], *new_shares[1:t2]])


def test_reshare_refuses_a_dealer_that_changes_its_share() -> None:
    keyset, shares = split(t=2, n=3)
    rng = Drbg(b"x")
    honest = vss.reshare_deal(1, shares[0].value, 3, [1, 2, 3, 4], rng=rng)
    liar = vss.reshare_deal(2, shares[1].value + 1, 3, [1, 2, 3, 4], rng=rng)
    with pytest.raises(InvalidShare, match="does not reshare its own share"):
        vss.reshare_commitments([honest, liar], keyset.commitments, 3)
    with pytest.raises(ValueError, match="needs deals from 2"):
        vss.reshare_commitments([honest], keyset.commitments, 3)


def test_keyset_record_is_signed_and_bound() -> None:
    keyset, shares = split()
    assert Keyset.from_bytes(keyset.signed) == keyset
    assert Keyset.from_bytes(keyset.signed, owner=keyset.owner) == keyset
    other = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key().public_bytes_raw()
    with pytest.raises(InvalidSignature, match="not the expected key"):
        Keyset.from_bytes(keyset.signed, owner=other)
    tampered = bytearray(keyset.signed)
    tampered[-70] ^= 1
    with pytest.raises((InvalidSignature, MalformedEncoding)):
        Keyset.from_bytes(bytes(tampered))


def test_sealed_master_is_bound_to_the_genesis_header() -> None:
    from shardnet.protocol import _keyset as ks_mod

    keyset, shares = split()
    s, _, _ = ks_mod.recover_secret(keyset, shares[:3])
    other_header = keyset.genesis[:-1] + bytes([keyset.genesis[-1] ^ 1])
    key = ks_mod._dem_key(keyset.keyset_id, keyset.genesis, s)
    with pytest.raises(DecryptionFailed):
        ks_mod._open(key, keyset.master_ct, other_header, "sealed master key")


def test_keyset_id_is_bound_to_its_owner() -> None:
    """Nobody but the owner can sign a record with a given keyset id (no id squatting)."""
    keyset, _ = split()
    mallory = Ed25519PrivateKey.from_private_bytes(b"m" * 32)
    squat = dataclasses.replace(keyset, owner=b"", signed=b"")
    from shardnet.protocol import _keyset as ks_mod
    from shardnet.protocol import _sign

    forged = _sign.sign_body(mallory, ks_mod.encode(squat._fields()))
    with pytest.raises(InvalidSignature, match="not bound to the key"):
        Keyset.from_bytes(forged)


@pytest.mark.parametrize("attrs", [
    {"quorum": [1]}, {"approvers": 5}, {"holders": {"1": "x"}}, {"holders": {"9": []}},
    {"approvers": ["not-a-peer-id"]}, {"policy": 7},
])
def test_malformed_attrs_are_refused(attrs: dict) -> None:
    keyset, _ = split_key(b"k", 2, 3, owner=OWNER, now=1, attrs=attrs)
    with pytest.raises(MalformedEncoding, match="keyset attrs"):
        Keyset.from_bytes(keyset.signed)


def test_interpolation_refuses_duplicate_or_zero_indices() -> None:
    with pytest.raises(ValueError, match="distinct share indices"):
        vss.lagrange_at_zero([1, 1, 2])
    with pytest.raises(ValueError, match="distinct share indices"):
        vss.lagrange_at_zero([0, 1, 2])


def test_colluding_bad_extra_shares_are_named_not_used() -> None:
    """Two wrong shares whose errors cancel in the interpolation are still caught."""
    keyset, shares = split(t=3, n=5)
    idx = [1, 2, 3, 4, 5]
    lam = vss.lagrange_at_zero(idx)
    d4 = 12345
    d5 = (-lam[3] * d4 * pow(lam[4], -1, g.L)) % g.L  # λ4·δ4 + λ5·δ5 = 0
    bad4 = dataclasses.replace(shares[3], value=(shares[3].value + d4) % g.L)
    bad5 = dataclasses.replace(shares[4], value=(shares[4].value + d5) % g.L)
    got = combine_key(keyset, [*shares[:3], bad4, bad5])
    assert got.master == b"k" * 32
    assert sorted(b.index for b in got.bad) == [4, 5] and got.used == [1, 2, 3]
