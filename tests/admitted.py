"""A network in which given keys are admitted, for tests that drive node services directly."""

from __future__ import annotations

from collections.abc import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.node._members import Members
from shardnet.node._store import Store

AUTHORITY = Ed25519PrivateKey.from_private_bytes(b"\x42" * 32)


def admitted(store: Store, key: p.Signer, peers: Iterable[p.Signer], now: int, *, country: str = "DE") -> Members:
    """``store`` joins a test network (sole authority: AUTHORITY); ``peers`` are admitted in it."""
    g = p.Genesis.make(AUTHORITY, name="test", authorities=[], quorum=1, created=now - 100)
    store.set_network(g.network_id, g.signed, now=now)
    members = Members(store, key, g)
    for k in peers:
        body = p.Admission.make_body(
            network_id=g.network_id, peer_id=p.peer_id_of(k.public_key().public_bytes_raw()),
            hpke={"x25519": b"\x01" * 32}, roles=["approver", "custodian"], name="n", org="Org", country=country,
            city="", issued=now - 100, not_after=now + 86400)
        members.accept(p.CoSigned.propose(AUTHORITY, body).to_bytes(), now)
    return members
