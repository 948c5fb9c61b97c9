"""Shards: one custodian's share, HPKE-sealed to it, with owner-signed metadata.

The metadata (index, n, t, keyset id, epoch, recipient peer id, created,
not-after, policy hash, commitments digest, kem) is a canonical tagged record,
Ed25519-signed by the owner. The same bytes are the HPKE ``info`` (RFC 9180
binds ``info`` into the key schedule), so a sealed share opens only under the
metadata it was sealed with: it cannot be moved to another keyset, epoch,
index or recipient, and the metadata cannot be edited without breaking both
the signature and the decryption.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from . import _group as g
from ._codec import decode_own, decode_record, encode, want, want_bytes, want_int
from ._errors import DecryptionFailed, InvalidShare, MalformedEncoding, ShardExpired, WrongRecipient
from ._keyset import KEMS, Share, commitments_digest
from ._sign import SIGNED_TAG, Signer, open_signed_versions, sign_body
from ._vss import MAX_SHARES, verify_share

META_TAG = "shardnet/shard-meta"
SHARD_TAG = "shardnet/shard"
PAYLOAD_TAG = "shardnet/share"
HPKE_INFO = b"shardnet/shard/v1\x00"
MAX_SHARD = 16 * 1024
MAX_PEER_ID = 128

_SUITES = {
    "x25519": hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305),
    "mlkem768-x25519": hpke.Suite(
        hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305
    ),
}
_MLKEM_PUB = 1184
_MLKEM_SEED = 64


class HpkePrivateKey:
    """A custodian's HPKE key for one KEM (``x25519`` or ``mlkem768-x25519``)."""

    def __init__(self, kem: str, raw: bytes) -> None:
        if kem == "x25519":
            if len(raw) != 32:
                raise ValueError("x25519 HPKE key must be 32 bytes")
            self._key: x25519.X25519PrivateKey | hpke.MLKEM768X25519PrivateKey = (
                x25519.X25519PrivateKey.from_private_bytes(raw)
            )
            self._pub = self._key.public_key().public_bytes_raw()
        elif kem == "mlkem768-x25519":
            if len(raw) != _MLKEM_SEED + 32:
                raise ValueError("mlkem768-x25519 HPKE key must be 96 bytes")
            mk = mlkem.MLKEM768PrivateKey.from_seed_bytes(raw[:_MLKEM_SEED])
            xk = x25519.X25519PrivateKey.from_private_bytes(raw[_MLKEM_SEED:])
            self._key = hpke.MLKEM768X25519PrivateKey(mk, xk)
            self._pub = mk.public_key().public_bytes_raw() + xk.public_key().public_bytes_raw()
        else:
            raise ValueError(f"unknown kem {kem!r}; choose one of {', '.join(KEMS)}")
        self.kem = kem
        self._raw = raw

    @classmethod
    def generate(cls, kem: str, rng: g.Rng) -> HpkePrivateKey:
        return cls(kem, rng(32 if kem == "x25519" else _MLKEM_SEED + 32))

    def private_bytes(self) -> bytes:
        return self._raw

    def public_bytes(self) -> bytes:
        return self._pub

    def open(self, ciphertext: bytes, info: bytes) -> bytes:
        try:
            return _SUITES[self.kem].decrypt(ciphertext, self._key, info=info)
        except Exception:
            raise DecryptionFailed("sealed share did not open with this custodian's key") from None


def _public_key(kem: str, raw: bytes) -> x25519.X25519PublicKey | hpke.MLKEM768X25519PublicKey:
    if kem == "x25519":
        if len(raw) != 32:
            raise MalformedEncoding("x25519 HPKE public key must be 32 bytes")
        return x25519.X25519PublicKey.from_public_bytes(raw)
    if kem == "mlkem768-x25519":
        if len(raw) != _MLKEM_PUB + 32:
            raise MalformedEncoding("mlkem768-x25519 HPKE public key has the wrong length")
        return hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM_PUB]),
            x25519.X25519PublicKey.from_public_bytes(raw[_MLKEM_PUB:]),
        )
    raise ValueError(f"unknown kem {kem!r}")


def hpke_seal(kem: str, public: bytes, plaintext: bytes, info: bytes) -> bytes:
    return _SUITES[kem].encrypt(plaintext, _public_key(kem, public), info=info)


@dataclass(frozen=True)
class ShardMeta:
    keyset_id: bytes
    epoch: int
    index: int
    shares: int
    threshold: int
    recipient: str
    created: int
    not_after: int | None
    policy_hash: bytes
    commitments_digest: bytes
    kem: str
    #: Version 2 only, for a share its holder sealed to itself (a new epoch's, or one it
    #: rewrapped) under metadata it signs: the digest of the epoch record the share belongs
    #: to (of the keyset's genesis anchor at epoch 0), and ``wrap``, the holder's at-rest
    #: key epoch it is sealed to (0: the HPKE key its admission certifies).
    epoch_record: bytes = b""
    wrap: int = 0
    owner: bytes = b""  # filled in from the signature when decoded
    signed: bytes = field(default=b"", repr=False, compare=False)

    def body(self) -> bytes:
        fields = [self.keyset_id, self.epoch, self.index, self.shares, self.threshold,
                  self.recipient, self.created, self.not_after, self.policy_hash,
                  self.commitments_digest, self.kem]
        if self.epoch_record:
            return encode([META_TAG, 2, *fields, self.epoch_record, self.wrap])
        return encode([META_TAG, 1, *fields])

    @classmethod
    def from_signed(cls, data: bytes, *, owner: bytes | None = None) -> ShardMeta:
        version, f, signer, _ = open_signed_versions(data, tag=META_TAG, versions={1: 11, 2: (13, 12)}, signer=owner,
                                                     max_size=MAX_SHARD)
        return cls._from_fields(version, f, signer, data)

    @classmethod
    def _from_fields(cls, version: int, f: list[Any], signer: bytes, data: bytes) -> ShardMeta:
        t = want_int(f[4], "threshold", 2, MAX_SHARES)
        n = want_int(f[3], "shares", t, MAX_SHARES)
        not_after = f[7]
        if not_after is not None:
            want_int(not_after, "not after", 0, 2**63)
        kem = want(f[10], str, "kem")
        if kem not in KEMS:
            raise MalformedEncoding(f"shard metadata: unknown kem {kem[:40]!r}")
        recipient = want(f[5], str, "recipient")
        if not 1 <= len(recipient) <= MAX_PEER_ID:
            raise MalformedEncoding("shard metadata: bad recipient")
        return cls(
            keyset_id=want_bytes(f[0], "keyset id", 16), epoch=want_int(f[1], "epoch", 0, 2**32 - 1),
            index=want_int(f[2], "index", 1, MAX_SHARES), shares=n, threshold=t,
            recipient=recipient, created=want_int(f[6], "created", 0, 2**63),
            not_after=not_after, policy_hash=want_bytes(f[8], "policy hash", 32),
            commitments_digest=want_bytes(f[9], "commitments digest", 32), kem=kem,
            epoch_record=want_bytes(f[11], "epoch record digest", 32) if version == 2 else b"",
            # version 2 had no wrap field at first (12 fields): sealed to the certified key
            wrap=want_int(f[12], "wrap epoch", 0, 2**32 - 1) if version == 2 and len(f) > 12 else 0,
            owner=signer, signed=bytes(data),
        )

    def check_time(self, now: int) -> None:
        if self.not_after is not None and now > self.not_after:
            raise ShardExpired(
                f"shard {self.index} of keyset {self.keyset_id.hex()[:12]}… expired at {self.not_after}"
            )


def seal_shard(
    meta: ShardMeta, share: Share, recipient_public: bytes, *, owner: Signer
) -> bytes:
    """Sign ``meta`` and HPKE-seal ``share`` to the recipient under it."""
    if (share.keyset_id, share.epoch, share.index) != (meta.keyset_id, meta.epoch, meta.index):
        raise ValueError("share and metadata disagree on keyset, epoch or index")
    signed_meta = sign_body(owner, meta.body())
    payload = encode([PAYLOAD_TAG, 1, share.index, g.scalar_bytes(share.value)])
    ct = hpke_seal(meta.kem, recipient_public, payload, HPKE_INFO + signed_meta)
    return encode([SHARD_TAG, 1, signed_meta, ct])


def reseal_own(sealed: bytes, key: HpkeOpener, *, signer: Signer, public: bytes, wrap: int,
               epoch_record: bytes, meta: ShardMeta | None = None,
               policy_hash: bytes | None = None) -> tuple[bytes, bytes]:
    """Rewrap a shard this holder keeps: open it with ``key`` and seal it again to its own
    ``public`` key of at-rest epoch ``wrap``, under metadata it signs (version 2); return
    the sealed shard and its signed metadata (``policy_hash``: the policy binding, when a
    policy version replaced the one it was sealed under). The holder checked the shard when it stored
    it, so neither the metadata's signature nor the canonical encoding is checked again
    (``meta``: as already read with :func:`peek_shard_meta`); the HPKE decryption, bound
    to those metadata bytes, still is."""
    signed_meta, ct = _own_envelope(sealed)
    if meta is None or meta.signed != signed_meta:
        meta = _peek(signed_meta)
    if meta.kem != key.kem:
        raise DecryptionFailed(f"shard is sealed with {meta.kem}, this key is {key.kem}")
    payload = key.open(ct, HPKE_INFO + meta.signed)
    body = encode([META_TAG, 2, meta.keyset_id, meta.epoch, meta.index, meta.shares, meta.threshold,
                   meta.recipient, meta.created, meta.not_after, policy_hash or meta.policy_hash,
                   meta.commitments_digest, meta.kem, epoch_record, wrap])
    signed_new = sign_body(signer, body)
    return encode([SHARD_TAG, 1, signed_new, hpke_seal(meta.kem, public, payload, HPKE_INFO + signed_new)]), signed_new


def _own_envelope(sealed: bytes) -> tuple[bytes, bytes]:
    value = decode_own(sealed, max_size=MAX_SHARD)
    if not (isinstance(value, list) and len(value) == 4 and value[:2] == [SHARD_TAG, 1]
            and isinstance(value[2], bytes) and isinstance(value[3], bytes)):
        raise MalformedEncoding("not a sealed shard")
    return value[2], value[3]


def peek_shard_meta(sealed: bytes) -> ShardMeta:
    """A stored shard's metadata without checking its signature: for shards this node
    checked when it stored them (``owner`` is left empty)."""
    return _peek(_own_envelope(sealed)[0])


def _peek(signed_meta: bytes) -> ShardMeta:
    value = decode_own(signed_meta, max_size=MAX_SHARD)
    if not (isinstance(value, list) and len(value) == 5 and value[:2] == [SIGNED_TAG, 1]
            and isinstance(value[2], bytes)):
        raise MalformedEncoding("not signed shard metadata")
    version, fields = _meta_fields(value[2])
    return ShardMeta._from_fields(version, fields, b"", signed_meta)


def _meta_fields(body: bytes) -> tuple[int, list[Any]]:
    value = decode_own(body, max_size=MAX_SHARD)  # once: this runs for every shard a rewrap reseals
    if not isinstance(value, list) or len(value) < 2 or value[0] != META_TAG or value[1] not in (1, 2) \
            or isinstance(value[1], bool) or len(value) - 2 not in {1: (11,), 2: (13, 12)}[value[1]]:
        raise MalformedEncoding("not a shard metadata record of version 1 or 2")
    return value[1], value[2:]


def read_shard_meta(sealed: bytes, *, owner: bytes | None = None) -> ShardMeta:
    """Verify and return a sealed shard's metadata, without opening it."""
    signed_meta, _ = decode_record(sealed, SHARD_TAG, 1, 2, max_size=MAX_SHARD)
    return ShardMeta.from_signed(want_bytes(signed_meta, "shard metadata"), owner=owner)


class HpkeOpener(Protocol):
    """What opens a sealed shard: an HPKE private key in memory (``HpkePrivateKey``
    is one), or a keystore that does the key agreement where the key lives."""

    kem: str

    def open(self, ciphertext: bytes, info: bytes) -> bytes: ...


def open_shard(
    sealed: bytes, key: HpkeOpener, *, recipient: str, now: int, owner: bytes | None = None,
    commitments: Sequence[bytes] | None = None,
) -> tuple[ShardMeta, Share]:
    """Open a sealed shard addressed to ``recipient`` and check everything.

    Checks, in order: encoding and size, the owner's signature (and that it is
    ``owner`` when given), the recipient, the expiry against ``now``, the HPKE
    decryption under the signed metadata, and (with ``commitments``) the
    commitments digest and the share itself.
    """
    signed_meta, ct = decode_record(sealed, SHARD_TAG, 1, 2, max_size=MAX_SHARD)
    meta = ShardMeta.from_signed(want_bytes(signed_meta, "shard metadata"), owner=owner)
    if meta.recipient != recipient:
        raise WrongRecipient(f"shard {meta.index} is sealed for {meta.recipient}, not {recipient}")
    meta.check_time(now)
    if meta.kem != key.kem:
        raise DecryptionFailed(f"shard is sealed with {meta.kem}, this key is {key.kem}")
    payload = key.open(want_bytes(ct, "ciphertext"), HPKE_INFO + meta.signed)
    index, value = decode_record(payload, PAYLOAD_TAG, 1, 2, max_size=256)
    if want_int(index, "share index", 1, MAX_SHARES) != meta.index:
        raise InvalidShare(meta.index, recipient, "sealed index differs from the metadata")
    share = Share(meta.keyset_id, meta.epoch, meta.index, g.scalar_from_bytes(value, "share"))
    if commitments is not None:
        if not hmac.compare_digest(commitments_digest(commitments), meta.commitments_digest):
            raise MalformedEncoding("shard metadata names other commitments than the keyset's")
        verify_share(commitments, share.index, share.value, recipient)
    return meta, share
