"""The directory's anti-entropy pull: a summary out, only what is new back.

On ``wire.DIRECTORY_DELTA``, a pull request is ``[DIRECTORY_PULL_TAG, 1,
[[key, seq], ...]]``: one entry per custodian the puller holds a descriptor
of, where ``key`` is 16 bytes of SHA-256 of the custodian's peer id and
``seq`` the seq of the descriptor held. The reply is a list of signed
descriptors: those the puller does not hold, or holds an older seq of, as
many as fit the reply cap. On ``wire.DIRECTORY`` (nodes from before the
summary) the reply is every descriptor, whatever the request says.

Keys are 16 bytes so that a summary of 4,096 custodians stays under 128 KiB.
A peer id whose key equals an honest custodian's would hide that custodian
from the pulls of whoever holds it (gossip still carries it); finding one is a
second preimage of 128 bits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from ._codec import decode_record, encode
from ._errors import MalformedEncoding
from ._wire import DIRECTORY_DELTA, DIRECTORY_PULL_MAX, DIRECTORY_PULL_TAG, PULL

KEY_BYTES = 16


def summary_key(peer_id: str) -> bytes:
    return hashlib.sha256(peer_id.encode()).digest()[:KEY_BYTES]


def encode_pull(have: Iterable[tuple[bytes, int]]) -> bytes:
    """A pull request from (key, seq) per custodian held; the first DIRECTORY_PULL_MAX count."""
    entries = [[key, seq] for key, seq in have][:DIRECTORY_PULL_MAX]
    return encode([DIRECTORY_PULL_TAG, 1, entries])


def decode_pull(frame: bytes) -> dict[bytes, int]:
    """What the puller holds, key -> seq; empty for a bare ``PULL``."""
    if frame == PULL:
        return {}
    (entries,) = decode_record(frame, DIRECTORY_PULL_TAG, 1, 1, max_size=DIRECTORY_DELTA.max_request)
    if not isinstance(entries, list) or len(entries) > DIRECTORY_PULL_MAX:
        raise MalformedEncoding("directory pull: the summary is not a list of at most "
                                f"{DIRECTORY_PULL_MAX} entries")
    have: dict[bytes, int] = {}
    for e in entries:
        if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], bytes) and len(e[0]) == KEY_BYTES
                and type(e[1]) is int and e[1] >= 0):
            raise MalformedEncoding(f"directory pull: a summary entry is not [{KEY_BYTES}-byte key, seq]")
        have[e[0]] = e[1]
    return have


def pull_reply(held: Iterable[tuple[bytes, int, bytes]], have: dict[bytes, int]) -> bytes:
    """The reply to a pull: of ``held`` (key, seq, signed descriptor), those newer than
    ``have`` says, up to the reply cap and DIRECTORY_PULL_MAX descriptors."""
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
