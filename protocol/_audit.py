"""Hash-chained, signed audit log (private; sans-IO).

Every entry commits to the one before it, so editing, deleting or reordering
any entry breaks the chain at that entry. An entry is::

    canonical = msgpack(["shardnet/audit", 1, seq, prev, time, kind, body, signer])
    hash      = SHA-256(canonical)
    sig       = Ed25519(signer, "shardnet/audit/v1\\x00" || hash)

``seq`` counts from 1; ``prev`` is the previous entry's hash (32 zero bytes for
entry 1); ``time`` is integer Unix seconds supplied by the caller (this module
never reads the clock); ``body`` is a map of str to msgpack values, written
with its keys sorted at every level so that its encoding is unique.

The chain proves integrity and authorship of what is present. It cannot prove
that nothing was cut off the *end*: compare the head against a checkpoint that
was published elsewhere (gossip) for that.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from ._codec import decode, encode, strict
from ._errors import InvalidSignature, MalformedEncoding, RemoteProtocolError
from ._sign import Signer, sign_in_domain, verify_in_domain

AUDIT_TAG = "shardnet/audit"
AUDIT_VERSION = 1
SIG_DOMAIN = b"shardnet/audit/v1\x00"
GENESIS_PREV = bytes(32)
HASH_SIZE = 32
KEY_SIZE = 32
SIG_SIZE = 64
MAX_BODY_BYTES = 64 * 1024  # the canonical encoding of one body
MAX_BODY_DEPTH = 16  # nesting of maps and arrays inside a body
MAX_KIND_LEN = 64
_KIND_RE = re.compile(r"[a-z][a-z0-9_.-]*")
_TIME_MAX = (1 << 63) - 1  # fits SQLite INTEGER


class AuditChainBroken(RemoteProtocolError):
    """The audit log fails verification; ``seq`` is the first entry that does.

    ``seq`` is the position in the chain that could not be verified: for a
    missing entry it is the sequence number that was expected there.
    """

    def __init__(self, seq: int, reason: str) -> None:
        self.seq = seq
        self.reason = reason
        super().__init__(f"audit log broken at entry {seq}: {reason}")


@dataclass(frozen=True, repr=False)
class AuditEntry:
    """One entry of the log.

    Constructing an entry checks nothing, so that an entry read back from disk
    or from a peer can always be built and handed to :func:`verify_chain`,
    which reports what is wrong with it. Build new entries with
    :func:`make_entry`. ``body`` is a fresh canonical copy (sorted keys, lists
    for arrays); do not mutate it.
    """

    seq: int
    prev: bytes
    time: int
    kind: str
    body: dict[str, Any]
    signer: bytes
    hash: bytes
    sig: bytes

    def __repr__(self) -> str:
        def short(value: object) -> str:
            return value[:8].hex() if isinstance(value, bytes) else repr(value)

        return (
            f"AuditEntry(seq={self.seq!r}, time={self.time!r}, kind={self.kind!r}, "
            f"hash={short(self.hash)}…, prev={short(self.prev)}…, "
            f"signer={short(self.signer)}…)"
        )


# -- canonical encoding -------------------------------------------------------


def canonical_body(body: Mapping[str, object]) -> dict[str, Any]:
    """The canonical form of ``body``: keys sorted at every level, arrays as lists.

    Raises ValueError if ``body`` is not a map of str to msgpack values
    (None, bool, int, finite float, str, bytes, list, map) or is too deep.
    """
    if not isinstance(body, Mapping):
        raise ValueError(f"audit body must be a map, not {type(body).__name__}")
    canon: dict[str, Any] = strict(body, max_depth=MAX_BODY_DEPTH, what="audit body")
    return canon


def _encode_canonical(canon: dict[str, Any]) -> bytes:
    data = encode(canon)
    if len(data) > MAX_BODY_BYTES:
        raise ValueError(
            f"audit body encodes to {len(data)} bytes, over the {MAX_BODY_BYTES}-byte cap"
        )
    return data


def encode_body(body: Mapping[str, object]) -> bytes:
    """Canonical msgpack of ``body``; ValueError if it exceeds MAX_BODY_BYTES."""
    return _encode_canonical(canonical_body(body))


def decode_body(data: bytes) -> dict[str, Any]:
    """Decode bytes written by :func:`encode_body`.

    Raises MalformedEncoding if ``data`` is oversized, is not msgpack, is not a
    map of allowed values, or is not in canonical form. The size is checked
    before anything is decoded.
    """
    if not isinstance(data, bytes):
        raise MalformedEncoding(f"audit body must be bytes, not {type(data).__name__}")
    if len(data) > MAX_BODY_BYTES:
        raise MalformedEncoding(
            f"audit body is {len(data)} bytes, over the {MAX_BODY_BYTES}-byte cap"
        )
    try:
        value = decode(data, max_size=MAX_BODY_BYTES, max_items=MAX_BODY_BYTES)
    except MalformedEncoding as exc:
        raise MalformedEncoding(f"audit body: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedEncoding("audit body is not a map")
    try:
        return canonical_body(value)  # only the value types an audit body may hold
    except ValueError as exc:
        raise MalformedEncoding(str(exc)) from None


def _entry_digest(
    seq: int, prev: bytes, time: int, kind: str, body: Mapping[str, object], signer: bytes
) -> bytes:
    canonical = encode([AUDIT_TAG, AUDIT_VERSION, seq, prev, time, kind, body, signer])
    return hashlib.sha256(canonical).digest()


# -- making and verifying entries ----------------------------------------------


def make_entry(
    prev: AuditEntry | None,
    *,
    time: int,
    kind: str,
    body: Mapping[str, object],
    key: Signer,
) -> AuditEntry:
    """Sign the entry that follows ``prev`` (or the first entry, if None).

    Raises ValueError for a bad ``time`` (not a non-negative int), ``kind``
    (lower-case ``[a-z][a-z0-9_.-]*``, at most MAX_KIND_LEN) or ``body`` (see
    :func:`encode_body`, including the 64 KiB cap).
    """
    if not isinstance(time, int) or isinstance(time, bool) or not 0 <= time <= _TIME_MAX:
        raise ValueError(f"audit time must be non-negative integer seconds, not {time!r}")
    if (
        not isinstance(kind, str)
        or len(kind) > MAX_KIND_LEN
        or not _KIND_RE.fullmatch(kind)
    ):
        raise ValueError(f"audit kind must match [a-z][a-z0-9_.-]* (max {MAX_KIND_LEN}): {kind!r}")
    canon = canonical_body(body)
    _encode_canonical(canon)  # the 64 KiB cap
    if prev is None:
        seq, prev_hash = 1, GENESIS_PREV
    else:
        seq, prev_hash = prev.seq + 1, prev.hash
    signer = key.public_key().public_bytes_raw()
    digest = _entry_digest(seq, prev_hash, time, kind, canon, signer)
    sig = sign_in_domain(key, SIG_DOMAIN, digest)
    return AuditEntry(seq, prev_hash, time, kind, canon, signer, digest, sig)


def _check_shape(entry: AuditEntry) -> str | None:
    """Why ``entry``'s fields cannot be a valid entry, or None."""
    if not isinstance(entry.time, int) or isinstance(entry.time, bool) or entry.time < 0:
        return "malformed entry: bad time"
    if not isinstance(entry.kind, str) or len(entry.kind) > MAX_KIND_LEN:
        return "malformed entry: bad kind"
    for name, value, size in (
        ("prev", entry.prev, HASH_SIZE),
        ("signer", entry.signer, KEY_SIZE),
        ("hash", entry.hash, HASH_SIZE),
        ("signature", entry.sig, SIG_SIZE),
    ):
        if not isinstance(value, bytes) or len(value) != size:
            return f"malformed entry: {name} is not {size} bytes"
    return None


def verify_chain(
    entries: Iterable[AuditEntry],
    *,
    trusted_signers: AbstractSet[bytes] | None = None,
    after: AuditEntry | None = None,
) -> int:
    """Verify a chain of entries in order; return how many were verified.

    The chain starts at entry 1, or right after ``after`` (an entry the caller
    already trusts, e.g. a published checkpoint). Raises AuditChainBroken at the
    first entry that is out of sequence, does not link to its predecessor, does
    not hash to its stored hash, has a bad signature or, when
    ``trusted_signers`` is given, was signed by a key not in that set. Without
    ``trusted_signers`` anyone can forge a whole consistent chain, so pass it
    whenever the signer is known. An empty chain verifies (returns 0).
    """
    expected_seq = 1 if after is None else after.seq + 1
    expected_prev = GENESIS_PREV if after is None else after.hash
    count = 0
    for entry in entries:
        if not isinstance(entry.seq, int) or isinstance(entry.seq, bool):
            raise AuditChainBroken(expected_seq, "malformed entry: bad sequence number")
        if entry.seq != expected_seq:
            how = "missing" if entry.seq > expected_seq else "out of order"
            raise AuditChainBroken(
                expected_seq,
                f"entry {how}: found entry {entry.seq} where {expected_seq} was expected "
                "(entries deleted, renumbered or reordered)",
            )
        seq = expected_seq
        problem = _check_shape(entry)
        if problem is not None:
            raise AuditChainBroken(seq, problem)
        if not hmac.compare_digest(entry.prev, expected_prev):
            what = "is not all zero" if seq == 1 and after is None else (
                f"does not match the hash of entry {seq - 1}"
            )
            raise AuditChainBroken(seq, f"prev link {what} (entry or its predecessor was edited)")
        try:
            canon = canonical_body(entry.body)
            digest = _entry_digest(seq, entry.prev, entry.time, entry.kind, canon, entry.signer)
        except ValueError as exc:
            raise AuditChainBroken(seq, f"malformed entry: {exc}") from None
        if not hmac.compare_digest(digest, entry.hash):
            raise AuditChainBroken(seq, "hash mismatch (entry was edited)")
        try:
            verify_in_domain(entry.signer, SIG_DOMAIN, digest, entry.sig)
        except InvalidSignature:
            raise AuditChainBroken(seq, "bad signature (entry was edited or forged)") from None
        if trusted_signers is not None and entry.signer not in trusted_signers:
            raise AuditChainBroken(
                seq, f"signed by untrusted key {entry.signer.hex()[:16]}… (forged entry)"
            )
        expected_seq += 1
        expected_prev = entry.hash
        count += 1
    return count
