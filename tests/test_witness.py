"""A witness's judgement of a log's checkpoints (protocol/_witness.py), tests first."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from shardnet import protocol as p
from shardnet.protocol import audit_log, note, tlog, witness

LOG = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PEER = p.peer_id_of(LOG.public_key().public_bytes_raw())
KEY = audit_log.log_verifier(PEER)
W = Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32)


def _tree(n: int, rewrite: int | None = None) -> tlog.MemoryTree:
    t = tlog.MemoryTree()
    for i in range(n):
        t.append(b"rewritten" if i == rewrite else b"entry %d" % i)
    return t


def _signed(t: tlog.MemoryTree, size: int, key: Ed25519PrivateKey = LOG) -> str:
    origin = audit_log.origin_of(PEER)
    return note.sign_checkpoint(note.Checkpoint(origin, size, t.root(size)), origin, key)


def test_a_log_that_grows_honestly_is_accepted_step_by_step() -> None:
    t = _tree(40)
    verdict = witness.judge(None, KEY, _signed(t, 0), [])
    assert isinstance(verdict, witness.Accepted)
    seen = verdict.seen
    for size in (1, 2, 7, 8, 33, 40):
        proof = tlog.consistency_proof(seen.size, size, t.read) if seen.size else []
        verdict = witness.judge(seen, KEY, _signed(t, size), proof)
        assert isinstance(verdict, witness.Accepted), (seen.size, size, verdict)
        seen = verdict.seen
    assert isinstance(witness.judge(seen, KEY, _signed(t, 40), []), witness.Same)
    assert witness.judge(seen, KEY, _signed(t, 33), []) == witness.Older(33)
    sig = witness.cosign(seen, audit_log.witness_name("w"), W, 1_800_000_000)
    w_key = note.Verifier(audit_log.witness_name("w"), note.COSIGNATURE_V1, W.public_key().public_bytes_raw())
    assert note.open_note(note.add_signatures(seen.note, [sig]), [w_key]).verified


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 120), st.data())
def test_a_rewritten_entry_is_a_split_view_at_any_sizes(n: int, data: st.DataObject) -> None:
    honest = _tree(n)
    seen_size = data.draw(st.integers(1, n - 1))
    rewritten = data.draw(st.integers(0, seen_size - 1))  # an entry the witness had seen
    forked = _tree(n, rewrite=rewritten)
    seen = witness.Seen(seen_size, honest.root(seen_size), _signed(honest, seen_size))
    # the log shows the fork with the best proof it can make: the fork's own
    verdict = witness.judge(seen, KEY, _signed(forked, n), tlog.consistency_proof(seen_size, n, forked.read))
    assert isinstance(verdict, witness.SplitView)
    assert verdict.first == seen.note and "do not extend" in verdict.reason
    same = witness.judge(seen, KEY, _signed(forked, seen_size), [])
    assert isinstance(same, witness.SplitView) and "two roots" in same.reason


def test_what_the_log_did_not_sign_is_no_evidence() -> None:
    t = _tree(5)
    seen = witness.Seen(3, t.root(3), _signed(t, 3))
    other = Ed25519PrivateKey.from_private_bytes(bytes([4]) * 32)
    with pytest.raises(p.InvalidSignature):
        witness.judge(seen, KEY, _signed(t, 5, other), tlog.consistency_proof(3, 5, t.read))
    alien = note.sign_checkpoint(note.Checkpoint("someone/else", 5, t.root()), KEY.name, LOG)
    with pytest.raises(p.MalformedEncoding, match="not of"):
        witness.judge(seen, KEY, alien, [])


def test_an_empty_first_checkpoint_is_extended_by_anything_but_its_root_is_fixed() -> None:
    t = _tree(3)
    empty = witness.Seen(0, tlog.EMPTY_ROOT, _signed(t, 0))
    assert isinstance(witness.judge(empty, KEY, _signed(t, 3), []), witness.Accepted)
    lie = witness.Seen(0, bytes(32), _signed(t, 0))
    assert isinstance(witness.judge(lie, KEY, _signed(t, 3), []), witness.SplitView)
