"""A node's audit log as a transparency log (sans-IO): its leaves, its origin, and the
self-contained proof bundle that an auditor checks with public keys alone.

- Leaf ``seq - 1`` of the tree is entry ``seq``, encoded whole::

      leaf = msgpack(["shardnet/audit-leaf", 1, seq, prev, time, kind, body, signer, sig])

  and hashed the RFC 6962 way (:mod:`._tlog`), so that a proof of inclusion carries
  the signed entry itself.
- The log of node P has origin ``shardnet/audit/<P>``; its checkpoints are C2SP signed
  notes under that key name, by P's Ed25519 identity (:mod:`._note`). A witness W
  cosigns as ``shardnet/witness/<W>`` with its identity key (type 0x04). Knowing a
  peer id is knowing its verifier keys.
- A proof bundle is JSON: ``{"shardnet_audit_proof": 1, "log": P, "entry": base64 leaf,
  "proof": [base64 hash, ...], "checkpoint": signed note text}``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from . import _note as note
from . import _tlog as tlog
from ._audit import SIG_DOMAIN, AuditEntry, _entry_digest, canonical_body
from ._codec import decode_record, encode
from ._errors import InvalidSignature, MalformedEncoding, ShardnetError
from ._records import peer_id_of, public_key_of
from ._sign import verify_in_domain

LEAF_TAG = "shardnet/audit-leaf"
ORIGIN_PREFIX = "shardnet/audit/"
WITNESS_PREFIX = "shardnet/witness/"
BUNDLE_VERSION = 1
MAX_BUNDLE = 256 * 1024
MAX_LEAF = 80 * 1024


class ProofRefused(ShardnetError):
    """A proof bundle that does not prove what it claims (one line: what failed)."""


def origin_of(peer_id: str) -> str:
    return ORIGIN_PREFIX + peer_id


def witness_name(peer_id: str) -> str:
    """The key name of ``peer_id``'s cosignatures (c2sp.org/tlog-cosignature, type 0x04:
    the same identity key as its log's, under another key ID)."""
    return WITNESS_PREFIX + peer_id


def log_verifier(peer_id: str) -> note.Verifier:
    """The verifier key of ``peer_id``'s log checkpoints."""
    return note.Verifier(origin_of(peer_id), note.ED25519, public_key_of(peer_id))


def verifier_from(text: str, *, cosigner: bool) -> note.Verifier:
    """A key given on a command line: a vkey (``name+id+base64``) or a peer id (its
    log's key, or, for a witness, its cosignature key)."""
    if "+" in text:
        v = note.Verifier.parse(text)
        if v.kind != (note.COSIGNATURE_V1 if cosigner else note.ED25519):
            raise MalformedEncoding(f"{text[:40]}: a {'witness' if cosigner else 'log'} key of the wrong type")
        return v
    peer = text.strip()
    if cosigner:
        return note.Verifier(witness_name(peer), note.COSIGNATURE_V1, public_key_of(peer))
    return log_verifier(peer)


def leaf_bytes(entry: AuditEntry) -> bytes:
    return encode([LEAF_TAG, 1, entry.seq, entry.prev, entry.time, entry.kind, entry.body, entry.signer,
                   entry.sig])


def entry_from_leaf(data: bytes) -> AuditEntry:
    """The entry a leaf holds, its hash recomputed and its signature checked against the
    key it names (the caller checks that this key is the log's)."""
    seq, prev, time, kind, body, signer, sig = decode_record(data, LEAF_TAG, 1, 7, max_size=MAX_LEAF)
    if not (isinstance(seq, int) and seq >= 1 and isinstance(time, int) and time >= 0 and isinstance(kind, str)
            and isinstance(body, dict) and all(isinstance(v, bytes) for v in (prev, signer, sig))):
        raise MalformedEncoding("an audit leaf is seq, prev, time, kind, body, signer, sig")
    try:
        digest = _entry_digest(seq, prev, time, kind, canonical_body(body), signer)
        verify_in_domain(signer, SIG_DOMAIN, digest, sig)
    except (ValueError, InvalidSignature) as exc:
        raise MalformedEncoding(f"the audit entry in the leaf does not verify: {exc}") from None
    return AuditEntry(seq, prev, time, kind, body, signer, digest, sig)


def make_bundle(log: str, entry: AuditEntry, proof: list[bytes], checkpoint: str) -> bytes:
    return json.dumps({"shardnet_audit_proof": BUNDLE_VERSION, "log": log,
                       "entry": base64.b64encode(leaf_bytes(entry)).decode(),
                       "proof": [base64.b64encode(h).decode() for h in proof], "checkpoint": checkpoint},
                      indent=1).encode() + b"\n"


@dataclass(frozen=True)
class Proven:
    entry: AuditEntry
    checkpoint: note.Checkpoint
    witnesses: tuple[str, ...]  # the names of the witnesses whose cosignatures verified


def check_bundle(data: bytes, log_key: note.Verifier, witnesses: list[note.Verifier],
                 min_witnesses: int) -> Proven:
    """Verify a proof bundle knowing only public keys: the checkpoint is signed by the
    log's key and cosigned by at least ``min_witnesses`` of ``witnesses``, and the entry
    is in the tree it names, signed by the log's key. Raises ProofRefused."""
    try:
        return _check(data, log_key, witnesses, min_witnesses)
    except (ShardnetError, ValueError) as exc:
        if isinstance(exc, ProofRefused):
            raise
        raise ProofRefused(str(exc)) from None


def _check(data: bytes, log_key: note.Verifier, witnesses: list[note.Verifier], min_witnesses: int) -> Proven:
    if len(data) > MAX_BUNDLE:
        raise ProofRefused(f"a proof bundle is at most {MAX_BUNDLE} bytes")
    try:
        doc: Any = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProofRefused("not a shardnet audit proof (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("shardnet_audit_proof") != BUNDLE_VERSION:
        raise ProofRefused("not a shardnet audit proof, version 1")
    if not all(isinstance(doc.get(k), str) for k in ("log", "entry", "checkpoint")) or not isinstance(
            doc.get("proof"), list) or not all(isinstance(h, str) for h in doc["proof"]):
        raise ProofRefused("a proof bundle has log, entry, proof and checkpoint")
    try:
        leaf = base64.b64decode(doc["entry"], validate=True)
        proof = [base64.b64decode(h, validate=True) for h in doc["proof"]]
    except binascii.Error:
        raise ProofRefused("the entry or a proof hash is not base64") from None
    try:
        opened = note.open_note(doc["checkpoint"], [log_key, *witnesses])
    except InvalidSignature as exc:
        raise ProofRefused(f"checkpoint: {exc}") from None
    if log_key not in [v for v, _ in opened.verified]:
        raise ProofRefused("the checkpoint is not signed by the log's key")
    cosigners = tuple(v.name for v, _ in opened.verified if v.kind == note.COSIGNATURE_V1)
    if len(cosigners) < min_witnesses:
        raise ProofRefused(f"the checkpoint carries {len(cosigners)} of the {min_witnesses} witness cosignatures "
                           "asked for")
    cp = note.Checkpoint.from_text(opened.text)
    if cp.origin != log_key.name:
        raise ProofRefused(f"the checkpoint is of log {cp.origin[:80]!r}, not {log_key.name[:80]!r}")
    entry = entry_from_leaf(leaf)
    if entry.signer != log_key.key:
        raise ProofRefused("the entry is not signed by the log's key")
    if peer_id_of(entry.signer) != doc["log"]:
        raise ProofRefused("the bundle names another log than the entry's signer")
    try:
        tlog.verify_inclusion(entry.seq - 1, cp.size, tlog.leaf_hash(leaf), proof, cp.root)
    except tlog.ProofError as exc:
        raise ProofRefused(f"entry {entry.seq} is not in the checkpoint's tree of {cp.size}: {exc}") from None
    return Proven(entry, cp, cosigners)
