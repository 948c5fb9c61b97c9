"""Every protocol id, topic, frame tag and cap is defined once, in protocol/_wire.py."""

from __future__ import annotations

import pathlib

from shardnet.protocol import wire

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_ids_and_topics_are_unique_and_versioned() -> None:
    ids = [s.id for s in wire.STREAM_PROTOCOLS]
    names = [t.name for t in wire.TOPICS]
    assert len(set(ids)) == len(ids) and len(set(names)) == len(names)
    assert all(i.startswith("/shardnet/") and i.rsplit("/", 1)[1].isdigit() for i in ids)
    assert all(n.startswith("shardnet/") and n.rsplit("/", 1)[1].isdigit() for n in names)
    for s in wire.STREAM_PROTOCOLS:
        assert 0 < s.max_request and 0 < s.max_reply and 0 < s.max_concurrent_per_peer


def test_no_other_file_spells_a_protocol_id_topic_or_frame_tag() -> None:
    spelled = [s.id for s in wire.STREAM_PROTOCOLS] + [t.name for t in wire.TOPICS]
    spelled += [wire.DELIVER_FRAME_TAG, wire.RELEASE_ASK_TAG]
    offenders = []
    for folder in ("protocol", "node", "simulations"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "_wire.py":
                continue
            text = path.read_text()
            offenders += [f"{path.relative_to(ROOT)}: {s}" for s in spelled if f'"{s}"' in text]
    assert offenders == []
