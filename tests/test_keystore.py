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
