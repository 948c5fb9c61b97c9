"""Rewrap: a holder reseals every shard it keeps to a fresh at-rest key of its own,
then destroys the old keys and the old ciphertext.

What it defeats (the revocation table): theft of the stored ciphertext and the
old wrapping key. Not a custodian that already read its share.

One rewrap covers everything the node holds (its shards of every keyset, and
the shares of rounds not committed yet), since the old at-rest key is destroyed.
In order, so that a crash anywhere loses nothing:

1. a new at-rest key epoch is made and written to the keystore (the old keys stay);
2. every shard is opened and sealed again to the new key, under metadata the
   holder signs (version 2: the epoch record it belongs to, the at-rest epoch, and
   the digest of its keyset's request policy in force: the new policy binding);
3. one transaction replaces the stored bytes and writes the audit entry; SQLite's
   ``secure_delete`` overwrites the old bytes, and the WAL is truncated after;
4. the old at-rest keys are destroyed. Which epoch is in use is the store's to say
   (``Store.rest_wrap``, written in step 3's transaction): a rewrap that fails or
   crashes before step 3 leaves an unused key, and the next one destroys every key
   but the one in use before it makes its own.

The first rewrap moves shards off the key the node's admission certifies (wrap
0), which stays: deliveries are sealed to it. A copy of the database taken before
the first rewrap therefore stays open to that key; later rewraps destroy the
at-rest keys they replace.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from shardnet import protocol as p
from shardnet.protocol import epoch_records as er

from ._clock import Rng
from ._epoch_view import base_keyset
from ._keystore import Keystore
from ._store import AuditEvent, Store


@dataclass(frozen=True)
class Resealed:
    keyset_id: str
    epoch: int
    index: int
    wrap: int
    sealed: bytes  # what the store keeps now


def _cites(store: Store, keyset_id: str, epoch: int, cache: dict[tuple[str, int], bytes]) -> bytes:
    """The digest a share of ``epoch`` cites: its epoch record's, or the keyset's anchor at
    its first epoch."""
    key = (keyset_id, epoch)
    if key not in cache:
        stored = [r for r in store.epochs(keyset_id) if r["epoch"] == epoch]
        if stored:
            cache[key] = er.EpochRecord.parse(bytes(stored[0]["record"])).digest
        else:  # the keyset record's own epoch
            base = base_keyset(store, keyset_id)
            cache[key] = er.anchor(base) if base is not None else bytes(32)
    return cache[key]


def rewrap_all(store: Store, keystore: Keystore, rng: Rng, now: int, *, reason: dict[str, str],
               policy_of: Callable[[str], bytes | None] = lambda keyset_id: None) -> list[Resealed]:
    """Reseal everything this node holds to a new at-rest key epoch (see the module), each
    shard bound to its keyset's request policy in force (``policy_of``; None: as it is)."""
    policies: dict[str, bytes | None] = {}
    held = store.held_shards()
    pending = store.pending_shares()
    in_use = store.rest_wrap()
    keystore.forget_rest(keep=in_use)  # a rewrap that failed or crashed before its commit left its key
    kems = set(keystore.openers())  # every KEM this node takes shards under: no shard is read twice
    wrap = keystore.rotate_rest(kems, rng)
    publics = {kem: keystore.rest_public(kem, wrap) for kem in kems}
    cache: dict[tuple[str, int], bytes] = {}
    out: list[Resealed] = []
    updates = []
    for row, is_held in [*((r, True) for r in held), *((r, False) for r in pending)]:
        slot = (row["keyset_id"], row["epoch"], row["idx"])
        stored = keystore.open_at_rest(row["sealed"])
        meta = p.peek_shard_meta(stored)  # checked when it was stored
        cites = meta.epoch_record or _cites(store, row["keyset_id"], row["epoch"], cache)
        if row["keyset_id"] not in policies:
            policies[row["keyset_id"]] = policy_of(row["keyset_id"])
        sealed, new_meta = p.reseal_own(stored, keystore.opener_for(meta), signer=keystore.signer,
                                        public=publics[meta.kem], wrap=wrap, epoch_record=cites, meta=meta,
                                        policy_hash=policies[row["keyset_id"]])
        kept = keystore.seal_at_rest(sealed)
        updates.append((*slot, kept, new_meta, is_held))
        if is_held:
            out.append(Resealed(*slot, wrap, kept))
    store.replace_sealed(updates, wrap=wrap, now=now, audit=AuditEvent(
        "rewrap", {"wrap": wrap, "shards": len(out), "pending": len(pending), **reason}, keystore.signer))
    keystore.forget_rest(keep=wrap)
    return out


def receipts(key: p.Signer, resealed: list[Resealed], keyset_id: str, order: er.RewrapOrder,
             now: int) -> list[bytes]:
    return [er.Rewrapped.make(key, keyset_id=bytes.fromhex(r.keyset_id), epoch=r.epoch, index=r.index,
                              wrap=r.wrap, sealed_digest=hashlib.sha256(r.sealed).digest(), round_id=order.round_id,
                              time=now).signed
            for r in resealed if r.keyset_id == keyset_id]
