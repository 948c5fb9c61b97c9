"""Many records in one message: epoch asks to one peer, and rule records on gossip.

A bulk action (a custodian revoked that holds shares of many keysets) runs many
epoch rounds at once. Without batching, each round's deal, echo, co-signature
and commit is its own stream request, and a peer serves only a few of those at
once (``wire.EPOCH.max_concurrent_per_peer``); and each keyset's new revocation
list is its own gossip message, which GossipSub paces (about 10 messages a
second per forwarder and topic, a burst beyond its queue dropped).

* **An epoch batch** ``["shardnet/epoch-batch", 1, [frame, ...]]`` carries up to
  ``MAX_EPOCH_BATCH`` epoch frames (each as ``node/_epochs.frame`` makes it) on
  ``wire.EPOCH``. The reply is ``[[status, bytes], ...]``, one per frame in
  order: ``OK`` and the frame's reply, ``REFUSED`` and the reason (UTF-8), or
  ``LATER``: not answered, because the replies would not fit ``REPLY_ROOM`` or
  the batch took ``BATCH_SECONDS`` already; send it again (every epoch ask may be
  asked again: a deal is made anew, an echo, a co-signature and a commit answer
  as before). A peer that does not know batches refuses the whole request as
  a malformed epoch frame; the sender then sends each frame alone.
* **A rules batch** ``["shardnet/rules-batch", 1, [record, ...]]`` on
  ``wire.RULES_BATCH_TOPIC`` carries up to ``MAX_RULES_BATCH`` complete rule
  records (policy versions and revocation lists, any keysets). A node relays
  it when one record at least is news to it and verified, every other one is
  the record in force there or of a keyset it does not know (which it cannot
  check), and none is there twice.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

from ._codec import decode, decode_record, encode, want, want_bytes
from ._errors import MalformedEncoding
from ._wire import EPOCH, RULES_BATCH_TOPIC

EPOCH_BATCH_TAG = "shardnet/epoch-batch"
RULES_BATCH_TAG = "shardnet/rules-batch"
#: Epoch frames one batch carries at most (a peer handles them one after another).
MAX_EPOCH_BATCH = 32
#: Bytes of replies one batch answers at most (the reply cap, less the framing): a frame whose
#: reply would not fit is answered LATER, unless it is the first.
REPLY_ROOM = EPOCH.max_reply - 1024
#: Seconds of work a peer spends on one batch: the frames after that are answered LATER (so
#: that no batch of costly asks outlasts the request timeout, or holds the peer longer than
#: a few frames would).
BATCH_SECONDS = 2.0
#: Rule records one gossip batch carries at most.
MAX_RULES_BATCH = 256
_ITEM_OVERHEAD = 8  # msgpack's bin header and the list's, per item, at most


class Status(enum.IntEnum):
    OK = 0
    REFUSED = 1
    LATER = 2


_BATCH_HEAD = encode([EPOCH_BATCH_TAG, 1, []])[:-1]  # the array, the tag and the version


def is_epoch_batch(data: bytes) -> bool:
    """Whether ``data`` starts as an epoch batch (a cheap test before the full decode)."""
    return data.startswith(_BATCH_HEAD)


def epoch_batch(frames: Sequence[bytes]) -> bytes:
    if not 1 <= len(frames) <= MAX_EPOCH_BATCH:
        raise ValueError(f"an epoch batch carries 1 to {MAX_EPOCH_BATCH} frames, not {len(frames)}")
    return encode([EPOCH_BATCH_TAG, 1, list(frames)])


def _items(data: bytes, tag: str, cap: int, size: int, what: str) -> list[bytes]:
    """The byte strings of a ``[tag, 1, [item, ...]]`` batch: 1 to ``cap`` of them."""
    (items,) = decode_record(data, tag, 1, 1, max_size=size)
    want(items, list, what)
    if not 1 <= len(items) <= cap:
        raise MalformedEncoding(f"{what}: 1 to {cap} items, not {len(items)}")
    return [want_bytes(x, what) for x in items]


def parse_epoch_batch(data: bytes) -> list[bytes]:
    return _items(data, EPOCH_BATCH_TAG, MAX_EPOCH_BATCH, EPOCH.max_request, "epoch batch")


def batch_fits(sizes: Sequence[int], more: int) -> bool:
    """Whether one more frame of ``more`` bytes fits a batch that holds frames of ``sizes``."""
    return sum(sizes) + more + _ITEM_OVERHEAD * (1 + len(sizes)) + 64 <= EPOCH.max_request


def epoch_batch_reply(results: Sequence[tuple[Status, bytes]]) -> bytes:
    return encode([[int(status), body] for status, body in results])


def parse_epoch_batch_reply(data: bytes, count: int) -> list[tuple[Status, bytes]]:
    """The answers to a batch of ``count`` frames; MalformedEncoding if it is not one each."""
    items = want(decode(data, max_size=EPOCH.max_reply), list, "epoch batch reply")
    if len(items) != count:
        raise MalformedEncoding(f"an epoch batch reply of {len(items)} answers to {count} frames")
    out = []
    for item in items:
        want(item, list, "epoch batch answer")
        if len(item) != 2 or type(item[0]) is not int or item[0] not in set(Status):
            raise MalformedEncoding("an epoch batch answer is [status, bytes]")
        out.append((Status(item[0]), want_bytes(item[1], "epoch batch answer")))
    return out


def fits_rules_batch(record: bytes) -> bool:
    """Whether a rule record fits a rules batch (one near the record cap does not)."""
    return len(record) + 64 + _ITEM_OVERHEAD <= RULES_BATCH_TOPIC.max_message


def rules_batches(records: Sequence[bytes]) -> list[bytes]:
    """Gossip messages carrying ``records``, each within the topic's size and count."""
    out: list[bytes] = []
    group: list[bytes] = []
    size = 64
    for record in records:
        if not fits_rules_batch(record):
            raise ValueError(f"a rule record of {len(record)} bytes does not fit a gossip message")
        if group and (len(group) == MAX_RULES_BATCH
                      or size + len(record) + _ITEM_OVERHEAD > RULES_BATCH_TOPIC.max_message):
            out.append(encode([RULES_BATCH_TAG, 1, group]))
            group, size = [], 64
        group.append(record)
        size += len(record) + _ITEM_OVERHEAD
    if group:
        out.append(encode([RULES_BATCH_TAG, 1, group]))
    return out


def parse_rules_batch(data: bytes) -> list[bytes]:
    return _items(data, RULES_BATCH_TAG, MAX_RULES_BATCH, RULES_BATCH_TOPIC.max_message, "rules batch")


__all__ = [
    "BATCH_SECONDS", "EPOCH_BATCH_TAG", "MAX_EPOCH_BATCH", "MAX_RULES_BATCH", "REPLY_ROOM", "RULES_BATCH_TAG",
    "Status",
    "batch_fits", "epoch_batch", "fits_rules_batch", "epoch_batch_reply", "is_epoch_batch", "parse_epoch_batch",
    "parse_epoch_batch_reply", "parse_rules_batch", "rules_batches",
]
