"""Records that K of M authorities sign: proposals and what they become (private).

A co-signed record is ``[tag "shardnet/cosigned", 1, body, [[key, sig], ...]]``:
one body (a tagged, canonical record such as an admission) and the Ed25519
signatures gathered for it so far, sorted by key, each over
``COSIG_DOMAIN || body``. With fewer than K signatures it is a *proposal*;
each authority that agrees adds its own (``shardnet sign``), and with K it
takes effect. The same body signed by different subsets merges into one.

Who the authorities are and what K is comes from elsewhere (the network
genesis for admissions); this module only checks that every signature
verifies and comes from a distinct authority.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ._codec import decode_record, encode, want, want_bytes
from ._errors import InvalidSignature, MalformedEncoding
from ._sign import Signer, public_bytes, sign_in_domain, verify_in_domain

COSIGNED_TAG = "shardnet/cosigned"
COSIG_DOMAIN = b"shardnet/cosig/v1\x00"
_ID_DOMAIN = b"shardnet/proposal-id/v1\x00"
MAX_SIGNERS = 32


def proposal_id(body: bytes) -> bytes:
    """The 16-byte id of a proposal: the same for every subset of signatures."""
    return hashlib.sha256(_ID_DOMAIN + body).digest()[:16]


@dataclass(frozen=True)
class CoSigned:
    body: bytes
    signatures: tuple[tuple[bytes, bytes], ...]  # (Ed25519 public key, signature), sorted by key

    @property
    def id(self) -> bytes:
        return proposal_id(self.body)

    @property
    def signers(self) -> frozenset[bytes]:
        return frozenset(k for k, _ in self.signatures)

    def complete(self, quorum: int) -> bool:
        return len(self.signatures) >= quorum

    def to_bytes(self) -> bytes:
        return encode([COSIGNED_TAG, 1, self.body, [list(s) for s in self.signatures]])

    @classmethod
    def propose(cls, key: Signer, body: bytes) -> CoSigned:
        return cls(body, ()).signed_by(key)

    def signed_by(self, key: Signer) -> CoSigned:
        """This record with ``key``'s signature added (or as it is, if already there)."""
        pub = public_bytes(key)
        if pub in self.signers:
            return self
        sig = sign_in_domain(key, COSIG_DOMAIN, self.body)
        return CoSigned(self.body, tuple(sorted((*self.signatures, (pub, sig)))))

    def merged(self, other: CoSigned) -> CoSigned:
        """The union of both records' signatures (both already verified)."""
        if other.body != self.body:
            raise ValueError("cannot merge the signatures of two different records")
        sigs = dict(self.signatures)
        for k, s in other.signatures:
            sigs.setdefault(k, s)
        return CoSigned(self.body, tuple(sorted(sigs.items())))

    @classmethod
    def from_bytes(cls, data: bytes, *, authorities: frozenset[bytes], max_size: int) -> CoSigned:
        """Decode and verify: at least one signature, every one from a distinct authority."""
        body, sigs = decode_record(data, COSIGNED_TAG, 1, 2, max_size=max_size)
        return cls.verified(want_bytes(body, "co-signed body"), _pairs(sigs), authorities=authorities)

    @classmethod
    def verified(cls, body: bytes, signatures: list[tuple[bytes, bytes]], *,
                 authorities: frozenset[bytes]) -> CoSigned:
        if not signatures:
            raise MalformedEncoding("co-signed record: no signature")
        if [k for k, _ in signatures] != sorted({k for k, _ in signatures}):
            raise MalformedEncoding("co-signed record: signatures not sorted by key, or a key twice")
        for key, sig in signatures:
            if key not in authorities:
                raise InvalidSignature(f"co-signed record: {key.hex()[:16]}… is not an authority")
            verify_in_domain(key, COSIG_DOMAIN, body, sig)
        return cls(body, tuple(signatures))

    @classmethod
    def restore(cls, data: bytes, *, max_size: int) -> CoSigned:
        """Decode a record this node verified when it stored it; signatures not checked again."""
        body, sigs = decode_record(data, COSIGNED_TAG, 1, 2, max_size=max_size)
        return cls(want_bytes(body, "co-signed body"), tuple(_pairs(sigs)))


def _pairs(value: Any) -> list[tuple[bytes, bytes]]:
    want(value, list, "signatures")
    if len(value) > MAX_SIGNERS:
        raise MalformedEncoding("co-signed record: too many signatures")
    out = []
    for item in value:
        want(item, list, "signature")
        if len(item) != 2:
            raise MalformedEncoding("co-signed record: a signature is [key, sig]")
        out.append((want_bytes(item[0], "signer", 32), want_bytes(item[1], "signature", 64)))
    return out
