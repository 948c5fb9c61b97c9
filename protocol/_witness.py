"""A witness's judgement of one log's checkpoints (sans-IO; c2sp.org/tlog-witness in spirit).

A witness holds, per log, the last checkpoint it accepted (:class:`Seen`: size, root and
the signed note, kept as evidence). Handed a newer signed checkpoint and a consistency
proof from the size it saw, :func:`judge` answers:

=================  =====================================================  ==============
verdict            when                                                   the witness
=================  =====================================================  ==============
``Accepted``       first checkpoint of the log, or it extends the one     cosigns it and
                   seen (the proof verifies)                              keeps it
``Same``           the same size and root as the one seen                 cosigns again
``Older``          a smaller size than the one seen                       ignores it
``SplitView``      the same size with another root, or a proof that       keeps both notes,
                   does not join the two roots                            raises an alarm
=================  =====================================================  ==============

A checkpoint that is not signed by the log's key, or names another origin, raises
:class:`~._errors.InvalidSignature` or :class:`~._errors.MalformedEncoding`: it is
nobody's statement, and no evidence of anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _note as note
from . import _tlog as tlog
from ._errors import MalformedEncoding
from ._sign import Signer


@dataclass(frozen=True)
class Seen:
    size: int
    root: bytes
    note: str


@dataclass(frozen=True)
class Accepted:
    seen: Seen


@dataclass(frozen=True)
class Same:
    seen: Seen


@dataclass(frozen=True)
class Older:
    size: int


@dataclass(frozen=True)
class SplitView:
    """Two checkpoints the log signed that cannot both be true: the evidence."""

    first: str
    second: str
    reason: str


Verdict = Accepted | Same | Older | SplitView


def opened(log_key: note.Verifier, signed: str) -> tuple[note.Checkpoint, str]:
    """The checkpoint in ``signed``, verified against the log's key (other signatures,
    cosignatures among them, are kept in the note but not needed)."""
    got = note.open_note(signed, [log_key])
    cp = note.Checkpoint.from_text(got.text)
    if cp.origin != log_key.name:
        raise MalformedEncoding(f"a checkpoint of {cp.origin[:80]!r}, not of {log_key.name[:80]!r}")
    return cp, signed


def judge(seen: Seen | None, log_key: note.Verifier, signed: str, proof: list[bytes]) -> Verdict:
    cp, text = opened(log_key, signed)
    new = Seen(cp.size, cp.root, text)
    if seen is None:
        return Accepted(new)
    if cp.size < seen.size:
        return Older(cp.size)
    if cp.size == seen.size:
        if cp.root == seen.root:
            return Same(seen)
        return SplitView(seen.note, text, f"two roots for {cp.size} entries")
    if seen.size == 0:  # every tree extends the empty one (whose root the log cannot choose)
        if seen.root != tlog.EMPTY_ROOT:
            return SplitView(seen.note, text, "the empty tree's checkpoint has another root than SHA-256('')")
        return Accepted(new)
    try:
        tlog.verify_consistency(seen.size, cp.size, seen.root, cp.root, proof)
    except tlog.ProofError as exc:
        return SplitView(seen.note, text, f"{cp.size} entries do not extend the {seen.size} seen: {exc}")
    return Accepted(new)


def cosign(seen: Seen, name: str, key: Signer, when: int) -> note.Signature:
    """This witness's cosignature of the checkpoint it holds for a log."""
    return note.cosign(note.parse(seen.note).text, name, key, when)
