"""Where a node's secrets live, and the three things it does with them.

A :class:`Keystore` hands out:

* a :class:`~shardnet.protocol.Signer` (Ed25519): every record the node signs,
  with the public key its peer id comes from;
* an :class:`~shardnet.protocol.HpkeOpener` per KEM: decapsulation of the
  shards sealed to the node, and their public keys for its descriptor;
* the sealing and opening of shards at rest: what the store keeps, and how it
  is read back;
* **at-rest keys** with an epoch (``shardnet rewrap``): the holder reseals its
  shards to a fresh HPKE key of its own, then destroys the old one, so that a
  stolen database and an old key open nothing. A shard's metadata names the
  at-rest epoch it is sealed to (``wrap``; 0 is the key the node's admission
  certifies, which deliveries are sealed to); :meth:`Keystore.opener_for`
  picks the key.

:class:`FileKeystore` is the node's behaviour so far: the Ed25519 seed and the
HPKE keys are files in the home (mode 0600), at-rest keys too (``rest.key``),
and a delivered shard is kept at rest as it was delivered, HPKE-sealed to this
node, until a rewrap. A PKCS#11 keystore (keys in a token) implements the same
interface.

The libp2p host still needs the identity seed itself (py-libp2p signs the
Noise handshake in software): :meth:`Keystore.transport_seed`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p

from ._clock import Rng
from ._files import write_atomic
from ._home import Home, HomeError

REST_FILE = "rest.key"


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

    def opener_for(self, meta: p.ShardMeta) -> p.HpkeOpener:
        """The key a stored shard opens with: its at-rest epoch's (``meta.wrap``), or for 0
        the node's certified key. Raises DecryptionFailed if this node has no such key."""
        ...

    def rest_public(self, kem: str, epoch: int) -> bytes:
        """The public key of at-rest epoch ``epoch`` (0: the certified key). Which epoch is in
        use is the store's to say (``Store.rest_wrap``), written with the shards sealed to it."""
        ...

    def rotate_rest(self, kems: Iterable[str], rng: Rng) -> int:
        """Make (and keep, durably) keys of a new at-rest epoch, above every one kept; return it."""
        ...

    def forget_rest(self, keep: int) -> None:
        """Destroy every at-rest key but those of epoch ``keep``."""
        ...


class FileKeystore:
    """Keys held in memory, loaded from files in the node's home (:meth:`from_home`);
    shards at rest as delivered. The grid's nodes and tests build one directly."""

    def __init__(self, seed: bytes, hpke: dict[str, p.HpkePrivateKey], *,
                 rest_file: pathlib.Path | None = None) -> None:
        """``rest_file``: where the at-rest keys are kept (none: in memory only, as on the grid)."""
        if len(seed) != 32:
            raise ValueError("an Ed25519 identity seed is 32 bytes")
        self._seed = bytes(seed)
        self._signer = Ed25519PrivateKey.from_private_bytes(self._seed)
        self._hpke = dict(hpke)
        self._peer_id = p.peer_id_of(self._signer.public_key().public_bytes_raw())
        self._rest_file = rest_file
        self._rest: dict[int, dict[str, p.HpkePrivateKey]] = {}
        self._issued = 0  # the highest at-rest epoch ever made: numbers are never reused
        if rest_file is not None and rest_file.exists():
            try:
                raw = p.decode(rest_file.read_bytes())
                self._rest = {int(e): {k: p.HpkePrivateKey(k, bytes(v)) for k, v in keys.items()}
                              for e, keys in raw["epochs"].items()}
                self._issued = int(raw["issued"])
            except (p.ShardnetError, ValueError, TypeError, AttributeError, KeyError) as exc:
                raise HomeError(f"{rest_file}: malformed at-rest keys ({exc})") from None

    @classmethod
    def from_home(cls, home: Home) -> FileKeystore:
        return cls(home.identity_seed(), home.hpke_keys(), rest_file=home.path / REST_FILE)

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

    def opener_for(self, meta: p.ShardMeta) -> p.HpkeOpener:
        keys = self._hpke if meta.wrap == 0 else self._rest.get(meta.wrap, {})
        key = keys.get(meta.kem)
        if key is None:
            raise p.DecryptionFailed(f"this node has no {meta.kem} key of at-rest epoch {meta.wrap}")
        return key

    def rest_public(self, kem: str, epoch: int) -> bytes:
        if epoch == 0:
            return self._hpke[kem].public_bytes()
        key = self._rest.get(epoch, {}).get(kem)
        if key is None:
            raise p.DecryptionFailed(f"this node has no {kem} key of at-rest epoch {epoch}")
        return key.public_bytes()

    def rotate_rest(self, kems: Iterable[str], rng: Rng) -> int:
        epoch = self._issued = max(self._issued, *self._rest, 0) + 1
        self._rest[epoch] = {kem: p.HpkePrivateKey.generate(kem, rng) for kem in sorted(set(kems))}
        self._save()
        return epoch

    def forget_rest(self, keep: int) -> None:
        old = [e for e in self._rest if e != keep]
        for e in old:
            del self._rest[e]
        if old:
            self._save()

    def _save(self) -> None:
        if self._rest_file is None:
            return
        data = p.encode({"issued": self._issued,
                         "epochs": {str(e): {k: key.private_bytes() for k, key in keys.items()}
                                    for e, keys in sorted(self._rest.items())}})
        write_atomic(self._rest_file, data, 0o600, overwrite=True)


__all__ = ["FileKeystore", "Keystore"]
