"""The node's audit log as a transparency log: signed checkpoints, proof bundles, and the
tree's check against the entries (``protocol/_audit_log.py``, ``protocol/_tlog.py``).

The same functions serve a running node (through the control socket) and a stopped
home (the CLI opens the store itself): both sign with the node's identity.
"""

from __future__ import annotations

import base64
import logging
import sqlite3
from typing import Any

import trio

from shardnet import protocol as p

from ._store import Store, StoreError

log = logging.getLogger(__name__)

#: How often, at most, a running node signs a checkpoint after appends.
CHECKPOINT_EVERY = 1.0


def _describe(note: str, peer_id: str) -> dict[str, Any]:
    cp = p.note.Checkpoint.from_text(p.note.parse(note).text)
    return {"origin": cp.origin, "size": cp.size, "root": base64.b64encode(cp.root).decode(), "note": note,
            "log_key": p.audit_log.log_verifier(peer_id).vkey(), "log": peer_id}


def checkpoint(store: Store, key: p.Signer, peer_id: str) -> dict[str, Any]:
    """The latest checkpoint, signed anew when the log grew since the last one."""
    return _describe(latest(store, key, peer_id), peer_id)


def latest(store: Store, key: p.Signer, peer_id: str) -> str:
    size = store.tree_size()
    held = store.checkpoint()
    if held is not None and p.note.Checkpoint.from_text(p.note.parse(held).text).size == size:
        return held
    origin = p.audit_log.origin_of(peer_id)
    note = p.note.sign_checkpoint(p.note.Checkpoint(origin, size, store.tree_root(size)), origin, key)
    store.put_checkpoint(note)
    return note


def prove(store: Store, key: p.Signer, peer_id: str, seq: int) -> bytes:
    """A proof bundle for entry ``seq`` (from 1): the entry, its inclusion proof and the
    checkpoint that covers it. Raises LookupError for an entry the log does not have."""
    entry = store.audit_entry(seq) if seq >= 1 else None
    if entry is None:
        raise LookupError(f"the audit log has no entry {seq} (it has {store.tree_size()})")
    note = latest(store, key, peer_id)
    size = p.note.Checkpoint.from_text(p.note.parse(note).text).size
    return p.audit_log.make_bundle(peer_id, entry, store.inclusion_proof(seq, size), note)


def verify_tree(store: Store, peer_id: str) -> dict[str, Any]:
    """The tree built again from the entries must be the stored one, and the latest
    checkpoint must be signed by this node and name the stored tree's root at its size.
    Raises AuditChainBroken naming what differs."""
    tree = p.tlog.MemoryTree()
    for entry in store.audit_entries():
        tree.append(p.audit_log.leaf_bytes(entry))
        if store.tree_hash(0, entry.seq - 1) != tree.read(0, entry.seq - 1):
            raise p.AuditChainBroken(entry.seq, "the audit tree's leaf does not hash this entry (entry or tree "
                                                "was edited)")
    if store.tree_size() != tree.size or store.tree_root() != tree.root():
        raise p.AuditChainBroken(tree.size, f"the audit tree ({store.tree_size()} leaves) is not the tree of "
                                            f"the {tree.size} entries")
    out: dict[str, Any] = {"size": tree.size, "root": base64.b64encode(tree.root()).decode(), "checkpoint": None}
    held = store.checkpoint()
    if held is not None:
        try:
            opened = p.note.open_note(held, [p.audit_log.log_verifier(peer_id)])
            cp = p.note.Checkpoint.from_text(opened.text)
        except (p.InvalidSignature, p.MalformedEncoding) as exc:
            raise p.AuditChainBroken(tree.size, f"the latest checkpoint does not verify: {exc}") from None
        if cp.size > tree.size or tree.root(cp.size) != cp.root:
            raise p.AuditChainBroken(min(cp.size, tree.size), f"the log is not the one its checkpoint of "
                                                              f"{cp.size} entries signed: rewritten or cut")
        out["checkpoint"] = cp.size
    return out


async def checkpoint_loop(store: Store, key: p.Signer, peer_id: str) -> None:
    """Sign a checkpoint after appends, at most once every CHECKPOINT_EVERY seconds (a
    tick with no append reads one index entry)."""
    signed = -1
    while True:
        try:
            size = store.tree_size()
            if size != signed:
                latest(store, key, peer_id)
                signed = size
        except (StoreError, sqlite3.Error) as exc:  # a busy database: the next tick, again
            log.warning("could not sign an audit checkpoint: %s", exc)
        await trio.sleep(CHECKPOINT_EVERY)
