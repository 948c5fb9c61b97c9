"""The node's keystore interface and its file implementation (node/_keystore.py)."""

from __future__ import annotations

import os
import pathlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.node._clock import system_rng
from shardnet.node._home import init_home
from shardnet.node._keystore import FileKeystore, Keystore

NOW = 1_800_000_000


def test_file_keystore_is_the_homes_keys(tmp_path: pathlib.Path) -> None:
    home = init_home(tmp_path / "n", name="oslo", country="NO", rng=system_rng)
    ks: Keystore = FileKeystore.from_home(home)
    assert ks.peer_id == home.peer_id()
    assert ks.transport_seed() == home.identity_seed()
    assert ks.hpke_public() == {k: v.public_bytes() for k, v in home.hpke_keys().items()}
    assert set(ks.openers()) == set(p.KEMS)
    # What it signs verifies under the key its peer id carries.
    rec = p.Descriptor.make(ks.signer, addrs=[], hpke=ks.hpke_public(), name="oslo", country="NO", city="",
                            org="", version="t", seq=1)
    assert p.Descriptor.from_bytes(rec.signed).peer_id == ks.peer_id


@pytest.mark.parametrize("kem", p.KEMS)
def test_its_openers_open_shards_sealed_to_it_and_at_rest_round_trips(kem: str) -> None:
    hpke = {k: p.HpkePrivateKey.generate(k, os.urandom) for k in p.KEMS}
    ks = FileKeystore(os.urandom(32), hpke)
    owner = Ed25519PrivateKey.generate()
    keyset, shares = p.split_key(b"k" * 32, 2, 3, owner=owner, now=NOW, kem=kem)
    meta = p.ShardMeta(keyset.keyset_id, 0, 1, 3, 2, ks.peer_id, NOW, None, keyset.policy_hash,
                       keyset.commitments_digest, kem)
    sealed = p.seal_shard(meta, shares[0], ks.hpke_public()[kem], owner=owner)
    stored = ks.seal_at_rest(sealed)
    _, share = p.open_shard(ks.open_at_rest(stored), ks.openers()[kem], recipient=ks.peer_id, now=NOW,
                            commitments=keyset.commitments)
    assert share == shares[0]


def test_a_seed_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        FileKeystore(b"short", {})


@pytest.mark.parametrize("kem", p.KEMS)
def test_at_rest_keys_rotate_reseal_and_are_destroyed(tmp_path: pathlib.Path, kem: str) -> None:
    """A rewrap's key handling: a new at-rest epoch is kept across a restart, a share
    resealed to it opens with it alone, and forgetting the old epoch removes its key."""
    home = init_home(tmp_path / "n", name="oslo", country="NO", rng=system_rng)
    ks = FileKeystore.from_home(home)
    assert ks.rest_public(kem, 0) == ks.hpke_public()[kem]  # epoch 0: the certified key
    owner = Ed25519PrivateKey.generate()
    keyset, shares = p.split_key(b"k" * 32, 2, 3, owner=owner, now=NOW, kem=kem)
    meta = p.ShardMeta(keyset.keyset_id, 0, 1, 3, 2, ks.peer_id, NOW, None, keyset.policy_hash,
                       keyset.commitments_digest, kem)
    delivered = p.seal_shard(meta, shares[0], ks.hpke_public()[kem], owner=owner)
    first = ks.rotate_rest([kem], system_rng)
    assert first == 1
    resealed, new_meta = p.reseal_own(delivered, ks.opener_for(p.read_shard_meta(delivered)), signer=ks.signer,
                                      public=ks.rest_public(kem, 1), wrap=1, epoch_record=bytes(32))
    got = p.read_shard_meta(resealed)
    assert (got.wrap, got.epoch_record, got.owner) == (1, bytes(32), ks.signer.public_key().public_bytes_raw())
    assert got.signed == new_meta
    _, share = p.open_shard(resealed, ks.opener_for(got), recipient=ks.peer_id, now=NOW,
                            commitments=keyset.commitments)
    assert share == shares[0]
    with pytest.raises(p.DecryptionFailed):  # the certified key does not open it
        p.open_shard(resealed, ks.openers()[kem], recipient=ks.peer_id, now=NOW)
    again = FileKeystore.from_home(home)  # written to the home: a restart keeps it
    assert again.rest_public(kem, 1) == ks.rest_public(kem, 1)
    second = again.rotate_rest([kem], system_rng)
    again.forget_rest(keep=second)
    with pytest.raises(p.DecryptionFailed, match="at-rest epoch 1"):
        FileKeystore.from_home(home).opener_for(got)
    assert oct((home.path / "rest.key").stat().st_mode & 0o777) == "0o600"


def test_a_rewrap_that_fails_before_its_commit_leaves_the_key_in_use(tmp_path: pathlib.Path) -> None:
    """The crash case: a new at-rest key was made, the shards were never resealed to it.
    The next rewrap destroys that unused key, never the one the shards are sealed to."""
    from shardnet.node._rewrap import rewrap_all
    from shardnet.node._services import _keyset_row
    from shardnet.node._store import AuditEvent, Store

    home = init_home(tmp_path / "n", name="oslo", country="NO", rng=system_rng)
    ks = FileKeystore.from_home(home)
    owner = Ed25519PrivateKey.generate()
    keyset, shares = p.split_key(b"k" * 32, 2, 3, owner=owner, now=NOW)
    meta = p.ShardMeta(keyset.keyset_id, 0, 1, 3, 2, ks.peer_id, NOW, None, keyset.policy_hash,
                       keyset.commitments_digest, "x25519")
    sealed = p.seal_shard(meta, shares[0], ks.hpke_public()["x25519"], owner=owner)
    with Store(tmp_path / "node.db") as store:
        store.put_keyset(_keyset_row(keyset, "custodian"), now=NOW)
        store.put_held_shard(keyset.id_hex, 0, 1, sealed=sealed, meta=p.read_shard_meta(sealed).signed, now=NOW,
                             audit=AuditEvent("store", {}, ks.signer))
        rewrap_all(store, ks, system_rng, NOW, reason={})
        assert store.rest_wrap() == 1
        ks.rotate_rest(["x25519"], system_rng)  # a rewrap that died after making its key
        ks = FileKeystore.from_home(home)  # ...and the node restarted
        rewrap_all(store, ks, system_rng, NOW, reason={})
        assert store.rest_wrap() == 3
        (row,) = store.held_shards(keyset.id_hex)
        stored = bytes(row["sealed"])
        _, share = p.open_shard(stored, ks.opener_for(p.read_shard_meta(stored)), recipient=ks.peer_id, now=NOW)
        assert share == shares[0]
        assert sorted(p.decode((home.path / "rest.key").read_bytes())["epochs"]) == ["3"]
