"""The directory's anti-entropy pull: a summary out, only what is new back.

On ``wire.DIRECTORY_DELTA``, a pull request is ``[DIRECTORY_PULL_TAG, 1,
summary]``, where ``summary`` is one byte string of 24-byte entries, one per
custodian the puller holds a descriptor of: 16 bytes of SHA-256 of the
custodian's peer id, then the seq of the descriptor held (8 bytes, big
endian), sorted by key. The reply is a list of signed descriptors: those the
puller does not hold, or holds an older seq of, as many as fit the reply cap.
Two nodes that hold the same descriptors make the same summary, so the
common case, a pull between nodes in step, costs the responder one byte
comparison. On ``wire.DIRECTORY`` (nodes from before the summary) the reply
is every descriptor, whatever the request says.

4,096 entries make 96 KiB, under the 128 KiB request cap. A peer id whose key
equals an honest custodian's would hide that custodian from the pulls of
whoever holds it (gossip still carries it); finding one is a second preimage
of 128 bits.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

from ._codec import decode_record, encode
from ._errors import MalformedEncoding
from ._wire import DIRECTORY_DELTA, DIRECTORY_PULL_MAX, DIRECTORY_PULL_TAG, PULL

KEY_BYTES = 16
ENTRY = struct.Struct(f">{KEY_BYTES}sQ")


def summary_key(peer_id: str) -> bytes:
    return hashlib.sha256(peer_id.encode()).digest()[:KEY_BYTES]


def summary(have: Iterable[tuple[bytes, int]]) -> bytes:
    """The summary of (key, seq) per custodian held: sorted by key, the first
    DIRECTORY_PULL_MAX of them."""
    return b"".join(ENTRY.pack(key, seq) for key, seq in sorted(have)[:DIRECTORY_PULL_MAX])


def encode_pull(summary: bytes) -> bytes:
    return encode([DIRECTORY_PULL_TAG, 1, summary])


def decode_pull(frame: bytes) -> bytes | None:
    """The puller's summary; None for a bare ``PULL`` (it asks for everything)."""
    if frame == PULL:
        return None
    (entries,) = decode_record(frame, DIRECTORY_PULL_TAG, 1, 1, max_size=DIRECTORY_DELTA.max_request)
    if not isinstance(entries, bytes) or len(entries) % ENTRY.size or len(entries) > ENTRY.size * DIRECTORY_PULL_MAX:
        raise MalformedEncoding(f"directory pull: the summary is not up to {DIRECTORY_PULL_MAX} "
                                f"{ENTRY.size}-byte entries")
    return entries


def pull_reply(held: Iterable[tuple[bytes, int, bytes]], theirs: bytes | None, ours: bytes) -> bytes:
    """The reply to a pull: of ``held`` (key, seq, signed descriptor), summarised as
    ``ours``, those newer than the puller's summary ``theirs`` says (every one for
    None), up to the reply cap and DIRECTORY_PULL_MAX descriptors."""
    if theirs == ours:
        return encode([])
    have = dict(ENTRY.iter_unpack(theirs)) if theirs else {}
    out: list[bytes] = []
    room = DIRECTORY_DELTA.max_reply - 16  # the list header
    for key, seq, signed in held:
        if have.get(key, -1) >= seq:
            continue
        room -= len(signed) + 5  # a bin header of at most 5 bytes
        if room < 0 or len(out) == DIRECTORY_PULL_MAX:
            break
        out.append(signed)
    return encode(out)
