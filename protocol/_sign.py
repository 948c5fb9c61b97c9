"""Ed25519-signed records (private).

A signed record is ``[tag "shardnet/signed", 1, body, signer, sig]`` where
``body`` is the canonical encoding of a tagged record and ``sig`` is Ed25519
over ``SIG_DOMAIN || body``. The body's own tag and version make the signature
domain-separated per record kind (house style 7).
"""

from __future__ import annotations

from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ._codec import MAX_RECORD, decode, decode_record, encode, want_bytes
from ._errors import InvalidSignature, MalformedEncoding

SIG_DOMAIN = b"shardnet/sig/v1\x00"
SIGNED_TAG = "shardnet/signed"


class Signer(Protocol):
    """What signs records: an Ed25519 key in memory (``Ed25519PrivateKey`` is one),
    or a key that never leaves a keystore, such as a token's."""

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> Ed25519PublicKey: ...


def public_bytes(key: Signer) -> bytes:
    return key.public_key().public_bytes_raw()


def sign_in_domain(key: Signer, domain: bytes, message: bytes) -> bytes:
    """Ed25519 over ``domain || message``: every signature names what it is for."""
    return key.sign(domain + message)


#: Signatures verified in this process, for benchmarks (hazmat.verifications()).
VERIFIED = [0]


def verify_in_domain(signer: bytes, domain: bytes, message: bytes, sig: bytes) -> None:
    """Raise InvalidSignature unless ``sig`` is ``signer``'s over ``domain || message``."""
    VERIFIED[0] += 1
    try:
        Ed25519PublicKey.from_public_bytes(signer).verify(sig, domain + message)
    except (_CryptoInvalidSignature, ValueError):
        raise InvalidSignature("signature does not verify") from None


def sign_body(key: Signer, body: bytes) -> bytes:
    sig = sign_in_domain(key, SIG_DOMAIN, body)
    return encode([SIGNED_TAG, 1, body, public_bytes(key), sig])


def verify_sig(signer: bytes, body: bytes, sig: bytes) -> None:
    verify_in_domain(signer, SIG_DOMAIN, body, sig)


def signer_of(data: bytes) -> bytes | None:
    """The key a signed record names as its signer, unverified; None if it is not one.
    For a cheap look before the signature check (is this signer one we care about?)."""
    try:
        _, who, _ = decode_record(data, SIGNED_TAG, 1, 3)
    except MalformedEncoding:
        return None
    return bytes(who) if isinstance(who, bytes) and len(who) == 32 else None


def open_signed(
    data: bytes, *, tag: str, version: int, fields: int, signer: bytes | None = None,
    max_size: int = MAX_RECORD,
) -> tuple[list[Any], bytes, bytes]:
    """Verify a signed record; return ``(fields, signer, body)``.

    With ``signer`` given, the record must be signed by that key.
    """
    _, values, who, body = open_signed_versions(data, tag=tag, versions={version: fields}, signer=signer,
                                                max_size=max_size)
    return values, who, body


def open_signed_versions(
    data: bytes, *, tag: str, versions: dict[int, int | tuple[int, ...]], signer: bytes | None = None,
    max_size: int = MAX_RECORD,
) -> tuple[int, list[Any], bytes, bytes]:
    """:func:`open_signed` for a record with several versions (version -> number of fields,
    or the numbers a version may have, newest first); return ``(version, fields, signer, body)``."""
    body, who, sig = decode_record(data, SIGNED_TAG, 1, 3, max_size=max_size)
    body = want_bytes(body, "signed body")
    who = want_bytes(who, "signer", 32)
    sig = want_bytes(sig, "signature", 64)
    if signer is not None and who != signer:
        raise InvalidSignature(f"{tag} is signed by {who.hex()[:16]}…, not the expected key")
    verify_sig(who, body, sig)
    try:
        version, counts = next(iter(versions.items()))  # for any other version: its error, below
        if len(versions) > 1:  # one version (most records): decoded once, below
            head = decode(body, max_size=max_size)
            said = head[1] if isinstance(head, list) and len(head) > 1 else None
            if isinstance(said, int) and not isinstance(said, bool) and said in versions:
                version, counts = said, versions[said]
                if isinstance(counts, tuple):  # the arity this record has, if it is one allowed
                    counts = next((c for c in counts if len(head) == 2 + c), counts[0])
        fields = counts if isinstance(counts, int) else counts[0]
        values = decode_record(body, tag, version, fields, max_size=max_size)
    except MalformedEncoding as exc:
        raise MalformedEncoding(f"signed {tag}: {exc}") from None
    return version, values, who, body
