"""Where a node's secrets live, and the three things it does with them.

A :class:`Keystore` hands out:

* a :class:`~shardnet.protocol.Signer` (Ed25519): every record the node signs,
  with the public key its peer id comes from;
* an :class:`~shardnet.protocol.HpkeOpener` per KEM: decapsulation of the
  shards sealed to the node, and their public keys for its descriptor;
* the sealing and opening of shards at rest: what the store keeps, and how it
  is read back.

:class:`FileKeystore` is the node's behaviour so far: the Ed25519 seed and the
HPKE keys are files in the home (mode 0600), and a shard is kept at rest
exactly as it was delivered, HPKE-sealed to this node. A PKCS#11 keystore
(keys in a token) implements the same interface.

The libp2p host still needs the identity seed itself (py-libp2p signs the
Noise handshake in software): :meth:`Keystore.transport_seed`.
"""

from __future__ import annotations

from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p

from ._home import Home


class Keystore(Protocol):
    @property
    def signer(self) -> p.Signer: ...

    @property
    def peer_id(self) -> str: ...

    def openers(self) -> dict[str, p.HpkeOpener]:
        """One HPKE opener per KEM this node accepts shards under."""
        ...

    def hpke_public(self) -> dict[str, bytes]:
        """KEM -> the public key peers seal shards to."""
        ...

    def seal_at_rest(self, sealed: bytes) -> bytes:
        """What the store keeps for a delivered (HPKE-sealed) shard."""
        ...

    def open_at_rest(self, stored: bytes) -> bytes:
        """The delivered, HPKE-sealed shard, from what the store kept."""
        ...

    def transport_seed(self) -> bytes:
        """The 32-byte Ed25519 seed the libp2p host is built from."""
        ...


class FileKeystore:
    """Keys held in memory, loaded from files in the node's home (:meth:`from_home`);
    shards at rest as delivered. The grid's nodes and tests build one directly."""

    def __init__(self, seed: bytes, hpke: dict[str, p.HpkePrivateKey]) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 identity seed is 32 bytes")
        self._seed = bytes(seed)
        self._signer = Ed25519PrivateKey.from_private_bytes(self._seed)
        self._hpke = dict(hpke)
        self._peer_id = p.peer_id_of(self._signer.public_key().public_bytes_raw())

    @classmethod
    def from_home(cls, home: Home) -> FileKeystore:
        return cls(home.identity_seed(), home.hpke_keys())

    @property
    def signer(self) -> p.Signer:
        return self._signer

    @property
    def peer_id(self) -> str:
        return self._peer_id

    def openers(self) -> dict[str, p.HpkeOpener]:
        return dict(self._hpke)

    def hpke_public(self) -> dict[str, bytes]:
        return {kem: key.public_bytes() for kem, key in self._hpke.items()}

    def seal_at_rest(self, sealed: bytes) -> bytes:
        return sealed  # already HPKE-sealed to this node's key, which lives beside the database

    def open_at_rest(self, stored: bytes) -> bytes:
        return stored

    def transport_seed(self) -> bytes:
        return self._seed


__all__ = ["FileKeystore", "Keystore"]
