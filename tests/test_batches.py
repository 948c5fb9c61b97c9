"""Batches of epoch frames and of rule records (protocol/_batches.py)."""

from __future__ import annotations

import pytest

from shardnet import protocol as p
from shardnet.protocol import batches as b
from shardnet.protocol import wire


def test_an_epoch_batch_round_trips_and_is_told_apart_from_a_frame() -> None:
    frames = [p.encode([wire.EPOCH_FRAME_TAG, 1, "deal", bytes([i]) * 40, {}]) for i in range(5)]
    data = b.epoch_batch(frames)
    assert b.is_epoch_batch(data)
    assert not any(b.is_epoch_batch(f) for f in frames)
    assert b.parse_epoch_batch(data) == frames


@pytest.mark.parametrize("count", [0, b.MAX_EPOCH_BATCH + 1])
def test_an_epoch_batch_of_no_frames_or_too_many_is_refused(count: int) -> None:
    with pytest.raises(ValueError):
        b.epoch_batch([b"x"] * count)
    forged = p.encode([b.EPOCH_BATCH_TAG, 1, [b"x"] * count])
    with pytest.raises(p.MalformedEncoding):
        b.parse_epoch_batch(forged)


def test_an_epoch_batch_of_other_things_than_frames_is_refused() -> None:
    for items in ([1, 2], ["text"], "frames", [[b"x"]]):
        with pytest.raises(p.MalformedEncoding):
            b.parse_epoch_batch(p.encode([b.EPOCH_BATCH_TAG, 1, items]))
    with pytest.raises(p.MalformedEncoding):
        b.parse_epoch_batch(p.encode([b.EPOCH_BATCH_TAG, True, [b"x"]]))


def test_a_batch_reply_has_one_answer_per_frame() -> None:
    answers = [(b.Status.OK, b"deal"), (b.Status.REFUSED, b"no share"), (b.Status.LATER, b"")]
    data = b.epoch_batch_reply(answers)
    assert b.parse_epoch_batch_reply(data, 3) == answers
    for count in (2, 4):
        with pytest.raises(p.MalformedEncoding):
            b.parse_epoch_batch_reply(data, count)
    for bad in ([[7, b""]], [[0]], [[True, b""]], [[0, "text"]], [b"x"]):
        with pytest.raises(p.MalformedEncoding):
            b.parse_epoch_batch_reply(p.encode(bad), 1)


def test_batch_fits_stays_within_the_request_cap() -> None:
    sizes: list[int] = []
    while b.batch_fits(sizes, 100_000):
        sizes.append(100_000)
    assert len(b.epoch_batch([b"x" * s for s in sizes])) <= wire.EPOCH.max_request
    assert not b.batch_fits([], wire.EPOCH.max_request)


def test_rule_records_go_in_as_few_gossip_messages_as_fit() -> None:
    records = [bytes([i % 256]) * 900 for i in range(300)]
    messages = b.rules_batches(records)
    assert all(len(m) <= wire.RULES_BATCH_TOPIC.max_message for m in messages)
    assert [r for m in messages for r in b.parse_rules_batch(m)] == records
    assert len(messages) == 3  # about 100 records of 900 bytes fill 96 KiB
    small = b.rules_batches([b"r"] * 600)
    assert [len(b.parse_rules_batch(m)) for m in small] == [b.MAX_RULES_BATCH, b.MAX_RULES_BATCH, 88]
    assert b.rules_batches([]) == []
    with pytest.raises(ValueError):
        b.rules_batches([b"x" * wire.RULES_BATCH_TOPIC.max_message])


def test_a_rules_batch_of_other_things_is_refused() -> None:
    for items in ([], [1], [b"x"] * (b.MAX_RULES_BATCH + 1), "records"):
        with pytest.raises(p.MalformedEncoding):
            b.parse_rules_batch(p.encode([b.RULES_BATCH_TAG, 1, items]))
