"""Keyset records from the network: served by owners and holders, fetched by a
coordinator that never saw the keyset (the checks are ``protocol/_keyset_fetch.py``).

Serving: the owner answers with the record and the receipts its custodians
signed; a holder with the record and a fresh receipt for each index it holds,
signed over the asker's nonce. Anyone else says it holds no record.

Fetching: the admitted custodians are asked, those we are connected to first,
``PARALLEL`` at a time, ``PER_PEER_TIMEOUT`` seconds each and ``MAX_ASKED`` at
most, until one gives a trusted answer. Then the owner and every holder that
record names are asked too (and, once more, those a newer record names), and
the newest revision of all trusted answers is kept (a holder that never got an
amendment serves an older one). With the owner away and only stale holders
answering, an older revision is what the coordinator gets: its round then asks
a displaced custodian for the moved index, and needs t of the others. Every
answer that fails a check is reported with the peer that sent it, and
written to the audit log as a ``forged-record`` entry.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import trio

from shardnet import protocol as p
from shardnet.protocol import epoch_records as er
from shardnet.protocol import keyset_fetch as kf
from shardnet.protocol import wire

from . import _transport as tx
from ._clock import Clock, Rng
from ._epoch_view import current_record
from ._keystore import Keystore
from ._links import Links
from ._members import Members
from ._store import Store

log = logging.getLogger("shardnet.node")

PARALLEL = 8
MAX_ASKED = 64
PER_PEER_TIMEOUT = 5.0
FETCH_TIMEOUT = 20.0
FOLLOW_UP_ROUNDS = 2


class NoRecord(p.ShardnetError):
    """No admitted peer gave a record of the keyset that passes the checks."""


@dataclass
class Fetched:
    keyset: p.Keyset
    source: str
    refused: list[tuple[str, str]] = field(default_factory=list)  # (peer, why) of answers not trusted


class RecordService:
    def __init__(self, store: Store, keystore: Keystore, members: Members, clock: Clock, rng: Rng) -> None:
        self.store = store
        self.keystore = keystore
        self.members = members
        self.clock = clock
        self.rng = rng
        self.key = keystore.signer
        self.peer_id = keystore.peer_id

    def serve(self, remote: str, frame: bytes) -> bytes:
        """Answer one fetch; raises ShardnetError when we hold no record of the keyset."""
        keyset_id, nonce = kf.parse_request(frame)
        row = self.store.keyset(keyset_id.hex())
        if row is None:
            raise p.ShardnetError(f"this node holds no record of keyset {keyset_id.hex()}")
        base = p.Keyset.from_bytes(row["record"])
        keyset = er.at_epoch(base, current_record(self.store, base.id_hex))  # at its current epoch
        base_epoch = base.epoch
        chain = [bytes(r["record"]) for r in self.store.epochs(keyset.id_hex)][-wire.MAX_EPOCH_CHAIN:]
        receipts: list[bytes] = []
        if row["role"] == "owner" and keyset.epoch == base_epoch:
            # Our own shard's receipt is signed afresh below, like any holder's.
            receipts = [o["receipt"] for o in self.store.outbox(keyset.id_hex)
                        if o["receipt"] is not None and o["epoch"] == keyset.epoch and o["custodian"] != self.peer_id]
        for held in self.store.held_shards(keyset.id_hex):
            if held["epoch"] != keyset.epoch:
                continue
            sealed = self.keystore.open_at_rest(held["sealed"])
            receipts.append(p.Receipt.make(
                self.key, keyset_id=keyset.keyset_id, epoch=keyset.epoch, index=held["idx"],
                shard_digest=hashlib.sha256(sealed).digest(), delivery_digest=kf.proof_digest(nonce, remote),
                status="already-held", reason="", time=int(self.clock())).signed)
        if not receipts and not (chain and row["role"] == "owner"):
            raise p.ShardnetError(f"keyset {keyset.id_hex}: no shard of this epoch is delivered yet")
        return kf.reply(keyset.signed, receipts, chain)

    async def fetch(self, links: Links, keyset_id: bytes) -> Fetched:
        """The keyset's record from the network, checked; raises NoRecord."""
        now = int(self.clock())
        connected = set(links.connected())
        peers = [a.peer_id for a in self.members.custodians(now) if a.peer_id != self.peer_id]
        peers.sort(key=lambda peer: peer not in connected)
        trusted: list[tuple[p.Keyset, str]] = []
        refused: list[tuple[str, str]] = []
        asked: set[str] = set()  # those that answered (or failed to)
        unanswered = 0
        limiter = trio.CapacityLimiter(PARALLEL)

        async def ask(peer: str, found: trio.CancelScope | None) -> None:
            nonlocal unanswered
            nonce = self.rng(kf.NONCE_LEN)
            reply = None
            async with limiter:
                with trio.move_on_after(PER_PEER_TIMEOUT):
                    try:
                        reply = await links.reach_and_request(peer, wire.KEYSET_FETCH, kf.request(keyset_id, nonce))
                    except tx.RequestError as exc:
                        log.info("keyset fetch from %s: %s", peer, exc)
            if found is not None and found.cancel_called:
                return  # cut short because another answered first: the follow-up asks it again
            asked.add(peer)
            if reply is None:
                unanswered += 1  # it holds no record, or is away or slow: not a lie
                return
            try:
                trusted.append((kf.check_reply(reply, keyset_id=keyset_id, responder=peer, nonce=nonce,
                                               requester=self.peer_id), peer))
            except p.ShardnetError as exc:
                refused.append((peer, str(exc)[:300]))
                return
            if found is not None:
                found.cancel()  # one is enough to learn the owner and the holders

        with trio.move_on_after(FETCH_TIMEOUT):
            for start in range(0, min(len(peers), MAX_ASKED), PARALLEL):
                async with trio.open_nursery() as nursery:
                    for peer in peers[start:start + PARALLEL]:
                        nursery.start_soon(ask, peer, nursery.cancel_scope)
                if trusted:
                    break
        # Whoever answered first may hold an older revision: ask the owner and the holders
        # the newest record names (and those of a newer one that turns up), and keep the
        # newest of all. Each round has its own time, whatever the first one used.
        for _round in range(FOLLOW_UP_ROUNDS):
            if not trusted:
                break
            best = kf.pick(ks for ks, _ in trusted)[0]
            named = [p.peer_id_of(best.owner), *(h for hs in kf.holders_of(best).values() for h in hs)]
            todo = [peer for peer in dict.fromkeys(named) if peer not in asked and peer != self.peer_id]
            if not todo:
                break
            with trio.move_on_after(PER_PEER_TIMEOUT + 1):
                async with trio.open_nursery() as nursery:
                    for peer in todo:
                        nursery.start_soon(ask, peer, None)
            asked.update(todo)  # asked once, answered or not
        for peer, why in refused:
            log.warning("keyset record from %s refused: %s", peer, why)
            self.store.append_audit("forged-record", {"keyset": keyset_id.hex(), "peer": peer, "reason": why},
                                    int(self.clock()), self.key)
        if not trusted:
            lies = "; ".join(f"{peer}: {why}" for peer, why in refused[:3])
            raise NoRecord(f"no admitted custodian gave a trusted record of keyset {keyset_id.hex()} "
                           f"({len(asked)} asked, {unanswered} without one"
                           f"{', refused: ' + lies if lies else ''})")
        keyset, bad = kf.pick(ks for ks, _ in trusted)
        for b in bad:
            for ks, peer in trusted:
                if ks.signed == b.signed:
                    why = f"revision {b.revision} changes more than the holders of the older records"
                    refused.append((peer, why))
                    log.warning("keyset record from %s refused: %s", peer, why)
                    self.store.append_audit("forged-record", {"keyset": keyset_id.hex(), "peer": peer,
                                                              "reason": why}, int(self.clock()), self.key)
        source = next(peer for ks, peer in trusted if ks.signed == keyset.signed)
        return Fetched(keyset, source, refused)
