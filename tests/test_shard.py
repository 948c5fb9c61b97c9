"""HPKE shard sealing with owner-signed metadata bound in, for both KEMs."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet.protocol import (
    DecryptionFailed,
    HpkePrivateKey,
    InvalidShare,
    InvalidSignature,
    MalformedEncoding,
    ShardExpired,
    ShardMeta,
    WrongRecipient,
    _codec,
    _sign,
    open_shard,
    read_shard_meta,
    seal_shard,
    split_key,
)

from .drbg import Drbg

OWNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
NOW = 1_700_000_000


@pytest.fixture(params=["x25519", "mlkem768-x25519"])
def kem(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make(kem: str, recipient: str = "peerA", not_after: int | None = NOW + 100):
    keyset, shares = split_key(b"master", 3, 5, owner=OWNER, now=NOW, kem=kem, rng=Drbg(b"k"))
    key = HpkePrivateKey.generate(kem, Drbg(b"hpke" + kem.encode()))
    meta = ShardMeta(keyset.keyset_id, 0, 2, 5, 3, recipient, NOW, not_after, bytes(32),
                     keyset.commitments_digest, kem)
    return keyset, shares, key, meta, seal_shard(meta, shares[1], key.public_bytes(), owner=OWNER)


def test_round_trip(kem: str) -> None:
    keyset, shares, key, meta, sealed = make(kem)
    got_meta, share = open_shard(sealed, key, recipient="peerA", now=NOW, owner=keyset.owner,
                                 commitments=keyset.commitments)
    assert share == shares[1]
    assert got_meta == dataclasses.replace(meta, owner=keyset.owner)
    assert read_shard_meta(sealed).index == 2
    assert HpkePrivateKey(kem, key.private_bytes()).public_bytes() == key.public_bytes()


def test_wrong_recipient_expired_wrong_key(kem: str) -> None:
    keyset, _, key, _, sealed = make(kem)
    with pytest.raises(WrongRecipient, match="sealed for peerA, not peerB"):
        open_shard(sealed, key, recipient="peerB", now=NOW)
    with pytest.raises(ShardExpired, match="expired"):
        open_shard(sealed, key, recipient="peerA", now=NOW + 101)
    other = HpkePrivateKey.generate(kem, Drbg(b"other"))
    with pytest.raises(DecryptionFailed):
        open_shard(sealed, other, recipient="peerA", now=NOW)
    stranger = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(InvalidSignature):
        open_shard(sealed, key, recipient="peerA", now=NOW, owner=stranger)


def test_metadata_cannot_be_moved(kem: str) -> None:
    """Re-signing other metadata (another index/epoch/recipient) breaks the HPKE open."""
    keyset, _, key, meta, sealed = make(kem)
    _, ct = _codec.decode_record(sealed, "shardnet/shard", 1, 2)
    for change in ({"index": 3}, {"epoch": 1}, {"keyset_id": bytes(16)}):
        moved_meta = _sign.sign_body(OWNER, dataclasses.replace(meta, **change).body())
        moved = _codec.encode(["shardnet/shard", 1, moved_meta, ct])
        with pytest.raises(DecryptionFailed):
            open_shard(moved, key, recipient="peerA", now=NOW)


def test_share_checked_against_commitments(kem: str) -> None:
    keyset, shares, key, meta, _ = make(kem)
    bad = dataclasses.replace(shares[1], value=shares[1].value + 1)
    sealed = seal_shard(meta, bad, key.public_bytes(), owner=OWNER)
    with pytest.raises(InvalidShare, match="share 2 from peerA"):
        open_shard(sealed, key, recipient="peerA", now=NOW, commitments=keyset.commitments)
    with pytest.raises(MalformedEncoding, match="other commitments"):
        open_shard(sealed, key, recipient="peerA", now=NOW, commitments=keyset.commitments[:2])


def test_no_expiry_and_mismatch() -> None:
    keyset, shares, key, meta, sealed = make("x25519", not_after=None)
    open_shard(sealed, key, recipient="peerA", now=NOW + 10**9)
    with pytest.raises(ValueError, match="disagree"):
        seal_shard(meta, shares[0], key.public_bytes(), owner=OWNER)
    with pytest.raises(MalformedEncoding):
        open_shard(sealed[:-5], key, recipient="peerA", now=NOW)
