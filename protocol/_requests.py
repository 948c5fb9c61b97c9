"""Reconstruction requests, approval votes and releases (signed records).

* :class:`Request` — signed by the requester: keyset, mode, reason, a fresh
  ephemeral HPKE public key, a nonce, created and not-after. Its id is the
  SHA-256 of the signed bytes (first 16 bytes, hex).
* :class:`Vote` — signed by an approver: approve or deny one request id.
* :class:`Release` — signed by a custodian: one share or one partial
  decryption for one request, HPKE-sealed to the request's ephemeral key,
  so only the requester can read it and a wrong one is evidence against
  the custodian that signed it.
* :class:`NoShard` — signed by a custodian asked for a release: it holds no
  share of the keyset, at the newest epoch it knows or knowing no such keyset.
  Beside its own receipt for a share of that epoch, it is evidence that the
  custodian lied in one of the two.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from . import _group as g
from ._codec import decode, decode_record, encode, want, want_bytes, want_int
from ._errors import InvalidSignature, MalformedEncoding
from ._keyset import Share
from ._records import peer_id_of, signed_by
from ._shard import HpkePrivateKey, hpke_seal
from ._sign import SIGNED_TAG, Signer, open_signed, public_bytes, sign_body
from ._unwrap import Partial
from ._wire import REQUEST_TOPIC, VOTE_TOPIC

REQUEST_TAG = "shardnet/request"
VOTE_TAG = "shardnet/vote"
RELEASE_TAG = "shardnet/release"
NO_SHARD_TAG = "shardnet/no-shard"
RELEASE_INFO = b"shardnet/release/v1\x00"
MODES = ("unwrap", "shares")
DECISIONS = ("approve", "deny")
MAX_REASON = 512
MAX_REQUEST = REQUEST_TOPIC.max_message
MAX_VOTE = VOTE_TOPIC.max_message
MAX_LIFETIME = 24 * 3600  # a request (and so every approval of it) is good for a day at most


def _id(signed: bytes) -> str:
    return hashlib.sha256(signed).digest()[:16].hex()


@dataclass(frozen=True)
class Request:
    keyset_id: bytes
    requester: str
    mode: str
    reason: str
    ephemeral: bytes  # X25519 HPKE public key
    nonce: bytes
    created: int
    not_after: int
    signed: bytes = field(default=b"", repr=False, compare=False)

    @property
    def id(self) -> str:
        return _id(self.signed)

    @classmethod
    def make(cls, key: Signer, *, keyset_id: bytes, mode: str, reason: str, ephemeral: bytes,
             nonce: bytes, created: int, not_after: int) -> Request:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose unwrap or shares")
        if len(reason) > MAX_REASON:
            raise ValueError(f"reason is longer than {MAX_REASON} characters")
        if not created < not_after <= created + MAX_LIFETIME:
            raise ValueError(f"a request must expire after it is created, within {MAX_LIFETIME} s")
        body = encode([REQUEST_TAG, 1, keyset_id, peer_id_of(public_bytes(key)), mode, reason, ephemeral,
                       nonce, created, not_after])
        return cls.from_bytes(sign_body(key, body))

    @classmethod
    def from_bytes(cls, data: bytes) -> Request:
        f, signer, _ = open_signed(data, tag=REQUEST_TAG, version=1, fields=8, max_size=MAX_REQUEST)
        requester = signed_by(f[1], signer, "request", "requester")
        mode = want(f[2], str, "mode")
        if mode not in MODES:
            raise MalformedEncoding("request: unknown mode")
        reason = want(f[3], str, "reason")
        if len(reason) > MAX_REASON:
            raise MalformedEncoding("request: reason too long")
        created = want_int(f[6], "created", 0, 2**63)
        return cls(want_bytes(f[0], "keyset id", 16), requester, mode, reason,
                   want_bytes(f[4], "ephemeral key", 32), want_bytes(f[5], "nonce", 16), created,
                   want_int(f[7], "not after", created + 1, created + MAX_LIFETIME), bytes(data))


@dataclass(frozen=True)
class Vote:
    request_id: str
    keyset_id: bytes
    approver: str
    decision: str
    time: int
    signed: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def make(cls, key: Signer, request: Request, decision: str, time: int) -> Vote:
        if decision not in DECISIONS:
            raise ValueError("a vote is approve or deny")
        body = encode([VOTE_TAG, 1, request.id, request.keyset_id, peer_id_of(public_bytes(key)),
                       decision, time])
        return cls.from_bytes(sign_body(key, body))

    @classmethod
    def from_bytes(cls, data: bytes) -> Vote:
        f, signer, _ = open_signed(data, tag=VOTE_TAG, version=1, fields=5, max_size=MAX_VOTE)
        approver = signed_by(f[2], signer, "vote", "approver")
        decision = want(f[3], str, "decision")
        if decision not in DECISIONS:
            raise MalformedEncoding("vote: unknown decision")
        rid = want(f[0], str, "request id")
        if len(rid) != 32:
            raise MalformedEncoding("vote: bad request id")
        return cls(rid, want_bytes(f[1], "keyset id", 16), approver, decision,
                   want_int(f[4], "time", 0, 2**63), bytes(data))


@dataclass(frozen=True)
class Release:
    """One custodian's answer to one request, for one share index."""

    request_id: str
    keyset_id: bytes
    epoch: int
    index: int
    mode: str
    custodian: str
    sealed: bytes
    signed: bytes = field(default=b"", repr=False, compare=False)

    def _info(self) -> bytes:
        return (RELEASE_INFO + self.request_id.encode() + self.keyset_id + self.epoch.to_bytes(4, "big")
                + self.index.to_bytes(2, "big") + self.mode.encode() + self.custodian.encode())

    @classmethod
    def make(cls, key: Signer, request: Request, *, epoch: int, index: int,
             payload: bytes) -> Release:
        me = peer_id_of(public_bytes(key))
        draft = cls(request.id, request.keyset_id, epoch, index, request.mode, me, b"")
        sealed = hpke_seal("x25519", request.ephemeral, payload, draft._info())
        body = encode([RELEASE_TAG, 1, request.id, request.keyset_id, epoch, index, request.mode, me, sealed])
        return cls.from_bytes(sign_body(key, body))

    @classmethod
    def from_bytes(cls, data: bytes, *, custodian: str | None = None) -> Release:
        f, signer, _ = open_signed(data, tag=RELEASE_TAG, version=1, fields=7, max_size=8192)
        who = signed_by(f[5], signer, "release", "custodian")
        if custodian is not None and who != custodian:
            raise InvalidSignature("release is not signed by the custodian that sent it")
        mode = want(f[4], str, "mode")
        if mode not in MODES:
            raise MalformedEncoding("release: unknown mode")
        return cls(want(f[0], str, "request id"), want_bytes(f[1], "keyset id", 16),
                   want_int(f[2], "epoch", 0, 2**32 - 1), want_int(f[3], "index", 1, 1000), mode, who,
                   want_bytes(f[6], "sealed release"), bytes(data))

    def open(self, ephemeral: HpkePrivateKey) -> bytes:
        return ephemeral.open(self.sealed, self._info())


@dataclass(frozen=True)
class NoShard:
    """A custodian's answer to one request: it holds no share of the keyset, at ``epoch``
    (the newest it knows of that keyset), or ``epoch`` None when it knows no such keyset."""

    request_id: str
    keyset_id: bytes
    custodian: str
    epoch: int | None
    signed: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def make(cls, key: Signer, request: Request, *, epoch: int | None) -> NoShard:
        body = encode([NO_SHARD_TAG, 1, request.id, request.keyset_id, peer_id_of(public_bytes(key)), epoch])
        return cls.from_bytes(sign_body(key, body))

    @classmethod
    def from_bytes(cls, data: bytes, *, custodian: str | None = None) -> NoShard:
        f, signer, _ = open_signed(data, tag=NO_SHARD_TAG, version=1, fields=4, max_size=1024)
        who = signed_by(f[2], signer, "no-shard answer", "custodian")
        if custodian is not None and who != custodian:
            raise InvalidSignature("no-shard answer is not signed by the custodian that sent it")
        epoch = None if f[3] is None else want_int(f[3], "epoch", 0, 2**32 - 1)
        return cls(want(f[0], str, "request id"), want_bytes(f[1], "keyset id", 16), who, epoch, bytes(data))


def is_no_shard(data: bytes) -> bool:
    """Whether ``data`` calls itself a no-shard answer, unverified: which parser to use
    (:meth:`NoShard.from_bytes` verifies), without checking a release's signature twice."""
    try:
        body = decode_record(data, SIGNED_TAG, 1, 3, max_size=8192)[0]
        head = decode(want_bytes(body, "body"), max_size=8192)
    except MalformedEncoding:
        return False
    return isinstance(head, list) and bool(head) and head[0] == NO_SHARD_TAG


SHARE_PAYLOAD = "shardnet/released-share"


def share_payload(share: Share) -> bytes:
    return encode([SHARE_PAYLOAD, 1, share.index, g.scalar_bytes(share.value)])


def share_from_payload(data: bytes, keyset_id: bytes, epoch: int) -> Share:
    index, value = decode_record(data, SHARE_PAYLOAD, 1, 2, max_size=256)
    return Share(keyset_id, epoch, want_int(index, "index", 1, 1000), g.scalar_from_bytes(value, "share"))


def partial_payload(partial: Partial) -> bytes:
    return partial.to_bytes()
