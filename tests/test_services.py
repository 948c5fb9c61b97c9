"""The node's services driven directly (real SQLite, real crypto, no network)."""

from __future__ import annotations

import os
import pathlib
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.node._keystore import FileKeystore
from shardnet.node._services import Custodian, Rejected
from shardnet.node._store import Store
from shardnet.protocol import wire
from shardnet.protocol._records import Delivery, Receipt, peer_id_of

NOW = int(time.time())


@pytest.fixture
def custodian(tmp_path: pathlib.Path):
    store = Store(tmp_path / "node.db")
    hpke = {"x25519": p.HpkePrivateKey.generate("x25519", os.urandom)}
    yield Custodian(store, FileKeystore(os.urandom(32), hpke)), store
    store.close()


def frame(c: Custodian, owner: Ed25519PrivateKey, keyset: p.Keyset, share: p.Share) -> bytes:
    meta = p.ShardMeta(keyset.keyset_id, 0, share.index, keyset.shares, keyset.threshold, c.peer_id, NOW, None,
                       keyset.policy_hash, keyset.commitments_digest, "x25519")
    sealed = p.seal_shard(meta, share, c.keystore.hpke_public()["x25519"], owner=owner)
    cover = Delivery.make(owner, keyset_id=keyset.keyset_id, epoch=0, index=share.index, recipient=c.peer_id,
                          sealed=sealed, sent_at=NOW, nonce=os.urandom(16))
    return p.encode([wire.DELIVER_FRAME_TAG, 1, cover.signed, keyset.signed, sealed])


def deliver(c: Custodian, owner: Ed25519PrivateKey, keyset: p.Keyset, share: p.Share) -> Receipt:
    remote = peer_id_of(owner.public_key().public_bytes_raw())
    return Receipt.from_bytes(c.handle_delivery(remote, frame(c, owner, keyset, share), NOW), custodian=c.peer_id)


def test_store_then_already_held_then_conflict(custodian) -> None:
    c, store = custodian
    owner = Ed25519PrivateKey.generate()
    from shardnet.protocol._policy import DEFAULT_POLICY, Policy

    pol = Policy(DEFAULT_POLICY)
    keyset, shares = p.split_key(b"k", 2, 3, owner=owner, now=NOW, policy_hash=pol.digest,
                                 attrs={"policy": pol.text})
    assert deliver(c, owner, keyset, shares[0]).status == "stored"
    assert len(store.held_shards()) == 1
    # The same slot with other sealed bytes (HPKE re-seals randomly): refused, not a crash.
    r = deliver(c, owner, keyset, shares[0])
    assert r.status == "refused" and "a different shard is already held" in r.reason
    assert len(store.held_shards()) == 1


def test_policy_text_must_match_the_policy_hash(custodian) -> None:
    c, store = custodian
    owner = Ed25519PrivateKey.generate()
    from shardnet.protocol._policy import DEFAULT_POLICY, Policy

    keyset, shares = p.split_key(b"k", 2, 3, owner=owner, now=NOW, policy_hash=Policy(DEFAULT_POLICY).digest,
                                 attrs={"policy": "permit(principal, action, resource);"})
    r = deliver(c, owner, keyset, shares[0])
    assert r.status == "refused" and "policy text does not match" in r.reason
    assert store.held_shards() == []


def test_refusals_from_one_peer_cannot_flood_the_audit_log(custodian) -> None:
    c, store = custodian
    owner = Ed25519PrivateKey.generate()
    keyset, shares = p.split_key(b"k", 2, 3, owner=owner, now=NOW, policy_hash=bytes(32))  # no policy text
    for _ in range(100):
        assert deliver(c, owner, keyset, shares[0]).status == "refused"
    assert len(list(store.audit_entries())) <= 30


def test_a_delivery_not_from_its_owner_is_rejected(custodian) -> None:
    c, _ = custodian
    owner = Ed25519PrivateKey.generate()
    keyset, shares = p.split_key(b"k", 2, 3, owner=owner, now=NOW)
    with pytest.raises(Rejected, match="not signed by the sending peer"):
        c.handle_delivery(peer_id_of(os.urandom(32)), frame(c, owner, keyset, shares[0]), NOW)
