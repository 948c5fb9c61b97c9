"""Signed network records: custodian descriptors, deliveries and receipts.

Every record is a tagged, versioned, canonical msgpack list signed with the
sender's Ed25519 identity key (see ``_sign``). A node's peer id is derived from
that same key exactly as libp2p does it (identity multihash of the protobuf
``PublicKey{Type: Ed25519, Data: key}``), so a record's signer and the peer id
it speaks for can be checked against each other without any network state.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any

from ._codec import decode_record, encode, want, want_bytes, want_int
from ._errors import InvalidSignature, MalformedEncoding
from ._geo import continent_of
from ._sign import SIGNED_TAG, Signer, open_signed, public_bytes, sign_body
from ._wire import DIRECTORY_TOPIC

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
DESCRIPTOR_TAG = "shardnet/descriptor"
DELIVER_TAG = "shardnet/deliver"
RECEIPT_TAG = "shardnet/receipt"
MAX_ADDRS = 16
MAX_DESCRIPTOR = DIRECTORY_TOPIC.max_message
MAX_TEXT = 128


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    pad = len(data) - len(data.lstrip(b"\x00"))
    return "1" * pad + out


def b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        i = _B58.find(ch)
        if i < 0:
            raise MalformedEncoding("peer id: not base58")
        n = n * 58 + i
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    pad = len(text) - len(text.lstrip("1"))
    return b"\x00" * pad + body


@functools.lru_cache(maxsize=1 << 14)  # a pure function, called for every record verified
def peer_id_of(public_key: bytes) -> str:
    """The libp2p peer id (base58 identity multihash) of a raw Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("Ed25519 public keys are 32 bytes")
    proto = b"\x08\x01\x12\x20" + public_key
    return b58encode(b"\x00" + bytes([len(proto)]) + proto)


def public_key_of(peer_id: str) -> bytes:
    """The Ed25519 public key inside a peer id (MalformedEncoding for any other kind)."""
    if not isinstance(peer_id, str) or not 40 <= len(peer_id) <= 64:
        raise MalformedEncoding("peer id: wrong length")
    return _public_key_of(peer_id)


@functools.lru_cache(maxsize=1 << 14)  # pure, and called for every peer a record names
def _public_key_of(peer_id: str) -> bytes:
    raw = b58decode(peer_id)
    if len(raw) != 38 or raw[:6] != b"\x00\x24\x08\x01\x12\x20":
        raise MalformedEncoding("peer id: not an Ed25519 identity peer id")
    return raw[6:]


def signed_by(value: Any, signer: bytes, record: str, role: str) -> str:
    """The peer id a record speaks for (``role``) must be the one that signed it."""
    who = want(value, str, role)
    if who != peer_id_of(signer):
        raise InvalidSignature(f"{record} is signed by another key than its {role}'s")
    return str(who)


def _text(value: Any, what: str, *, empty: bool = True) -> str:
    want(value, str, what)
    if len(value) > MAX_TEXT or (not empty and not value):
        raise MalformedEncoding(f"{what}: must be 1 to {MAX_TEXT} characters")
    return str(value)


@dataclass(frozen=True)
class Descriptor:
    """A custodian's signed self-description, gossiped on the directory topic."""

    peer_id: str
    addrs: tuple[str, ...]
    kems: tuple[str, ...]  # the KEMs it has HPKE public keys for; the keys: :attr:`hpke`
    name: str
    country: str
    city: str
    continent: str
    org: str
    version: str
    seq: int  # strictly increasing per node (milliseconds since the epoch)
    signed: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def make(
        cls, key: Signer, *, addrs: list[str], hpke: dict[str, bytes], name: str,
        country: str, city: str, org: str, version: str, seq: int,
    ) -> Descriptor:
        cc = country.upper()
        body = encode([
            DESCRIPTOR_TAG, 1, peer_id_of(public_bytes(key)), list(addrs), hpke, name, cc, city,
            continent_of(cc), org, version, seq,
        ])
        return cls.from_bytes(sign_body(key, body))

    @classmethod
    def from_bytes(cls, data: bytes) -> Descriptor:
        f, signer, _ = open_signed(data, tag=DESCRIPTOR_TAG, version=1, fields=10, max_size=MAX_DESCRIPTOR)
        peer_id = signed_by(f[0], signer, "descriptor", "peer id")
        addrs = want(f[1], list, "addrs")
        if len(addrs) > MAX_ADDRS:
            raise MalformedEncoding("descriptor: too many addresses")
        hpke = want(f[2], dict, "hpke keys")
        if not hpke or len(hpke) > 4:
            raise MalformedEncoding("descriptor: bad HPKE key list")
        for k, v in hpke.items():
            _text(k, "kem")
            want_bytes(v, "HPKE public key")
        country = _text(f[4], "country", empty=False)
        try:
            continent = continent_of(country)
        except ValueError as exc:
            raise MalformedEncoding(f"descriptor: {exc}") from None
        if f[6] != continent:
            raise MalformedEncoding("descriptor: continent does not match the country")
        return cls(
            peer_id=peer_id, addrs=tuple(_text(a, "addr", empty=False) for a in addrs),
            kems=tuple(sorted(str(k) for k in hpke)), name=_text(f[3], "name", empty=False),
            country=country, city=_text(f[5], "city"), continent=continent, org=_text(f[7], "org"),
            version=_text(f[8], "version"), seq=want_int(f[9], "seq", 0, 2**63), signed=bytes(data),
        )

    @property
    def hpke(self) -> dict[str, bytes]:
        """KEM name -> HPKE public key, read again from the signed bytes (verified when
        this object was made). Not kept: an ML-KEM-768 key is over a kilobyte, a node
        keeps a descriptor of every custodian, and only a delivery needs the keys."""
        body = decode_record(self.signed, SIGNED_TAG, 1, 3, max_size=MAX_DESCRIPTOR)[0]
        fields = decode_record(body, DESCRIPTOR_TAG, 1, 10, max_size=MAX_DESCRIPTOR)
        return {str(k): bytes(v) for k, v in fields[2].items()}


@dataclass(frozen=True)
class Delivery:
    """The owner's signed cover for one shard delivery.

    It names the shard (by the digest of its sealed bytes), the recipient,
    the time it was sent and a nonce, so a custodian can refuse a replayed or
    stale delivery frame while an owner's retry (a fresh frame) still works.
    """

    keyset_id: bytes
    epoch: int
    index: int
    recipient: str
    shard_digest: bytes
    sent_at: int
    nonce: bytes
    owner: bytes = b""
    signed: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def make(cls, key: Signer, *, keyset_id: bytes, epoch: int, index: int, recipient: str,
             sealed: bytes, sent_at: int, nonce: bytes) -> Delivery:
        body = encode([DELIVER_TAG, 1, keyset_id, epoch, index, recipient,
                       hashlib.sha256(sealed).digest(), sent_at, nonce])
        return cls.from_bytes(sign_body(key, body))

    @classmethod
    def from_bytes(cls, data: bytes, *, owner: bytes | None = None) -> Delivery:
        f, signer, _ = open_signed(data, tag=DELIVER_TAG, version=1, fields=7, signer=owner, max_size=1024)
        return cls(
            want_bytes(f[0], "keyset id", 16), want_int(f[1], "epoch", 0, 2**32 - 1),
            want_int(f[2], "index", 1, 1000), _text(f[3], "recipient", empty=False),
            want_bytes(f[4], "shard digest", 32), want_int(f[5], "sent at", 0, 2**63),
            want_bytes(f[6], "nonce", 16), signer, bytes(data),
        )


RECEIPT_STATUSES = ("stored", "already-held", "refused")


@dataclass(frozen=True)
class Receipt:
    """A custodian's signed answer to a delivery: stored, already held, or refused."""

    keyset_id: bytes
    epoch: int
    index: int
    custodian: str
    shard_digest: bytes
    delivery_digest: bytes  # sha256 of the signed delivery cover it answers
    status: str
    reason: str
    time: int
    signed: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def make(cls, key: Signer, *, keyset_id: bytes, epoch: int, index: int,
             shard_digest: bytes, delivery_digest: bytes, status: str, reason: str, time: int) -> Receipt:
        if status not in RECEIPT_STATUSES:
            raise ValueError(f"unknown receipt status {status!r}")
        body = encode([RECEIPT_TAG, 1, keyset_id, epoch, index, peer_id_of(public_bytes(key)),
                       shard_digest, delivery_digest, status, reason[:MAX_TEXT * 4], time])
        return cls.from_bytes(sign_body(key, body))

    @classmethod
    def from_bytes(cls, data: bytes, *, custodian: str | None = None) -> Receipt:
        signer = public_key_of(custodian) if custodian is not None else None
        f, who, _ = open_signed(data, tag=RECEIPT_TAG, version=1, fields=9, signer=signer, max_size=2048)
        cust = signed_by(f[3], who, "receipt", "custodian")
        status = want(f[6], str, "status")
        if status not in RECEIPT_STATUSES:
            raise MalformedEncoding("receipt: unknown status")
        reason = want(f[7], str, "reason")
        if len(reason) > MAX_TEXT * 4:
            raise MalformedEncoding("receipt: reason too long")
        return cls(
            want_bytes(f[0], "keyset id", 16), want_int(f[1], "epoch", 0, 2**32 - 1),
            want_int(f[2], "index", 1, 1000), cust, want_bytes(f[4], "shard digest", 32),
            want_bytes(f[5], "delivery digest", 32), status, reason, want_int(f[8], "time", 0, 2**63),
            bytes(data),
        )
