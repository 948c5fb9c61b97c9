"""The owner's delivery loop: one outbox slot machine (``protocol/_outbox.py``)
per pending shard, and the keyset notices to approvers that hold no shard.

A custodian that is offline gets its shard when it comes back, also after we
restart: the outbox is in SQLite, and the machines are made again from it.
Back-off is per slot; a custodian that answers, or that comes back at new
addresses, makes its other slots due at once.

A slot still pending at its ``deliver_by`` time is re-placed (``Owner.replace``)
on another admitted custodian that keeps the keyset's placement; when none
fits yet, it stays pending for its custodian and the move is tried again
``REPLACE_RETRY`` seconds later.

A slot whose custodian the keyset's authorities revoked since the import is
never sent: it is re-placed at once. One whose index (at its epoch) they
revoked is sent to nobody, and its reserve is erased.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from shardnet import protocol as p
from shardnet.protocol import outbox, wire

from . import _transport as tx
from ._clock import Clock
from ._links import BACKOFF_MAX, Links
from ._possession import Possession
from ._services import Custodian, Owner, Rejected, ReserveExpired
from ._store import Store, StoreError

log = logging.getLogger("shardnet.node")

MAX_PARALLEL_PEERS = 16
IDLE_WAKE = 30.0
REPLACE_RETRY = 300
MAX_NOTICE_ATTEMPTS = 120  # about an hour at the back-off's 30 s cap


def _slot_key(row: Any) -> tuple[str, int, int, str]:
    return (row["keyset_id"], row["epoch"], row["idx"], row["custodian"])


class OutboxLoop:
    def __init__(self, store: Store, owner: Owner, custodian: Custodian, links: Links,
                 clock: Clock, me: str, possession: Possession) -> None:
        self.possession = possession
        self.store = store
        self.owner = owner
        self.custodian = custodian
        self.links = links
        self.clock = clock
        self.me = me
        self.wakeup = trio.Event()
        self.progress = trio.Event()
        self._slots: dict[tuple[str, int, int, str], outbox.OutboxSlot] = {}
        self._notice_backoff: dict[str, tuple[float, float]] = {}  # peer -> (next notice, delay)
        self._moved_early: set[tuple[str, int, int, str]] = set()  # revoked custodians' slots tried

    def now(self) -> int:
        return int(self.clock())

    def wake(self) -> None:
        self.wakeup.set()

    def peer_back(self, peer: str, *, except_slot: outbox.OutboxSlot | None = None) -> None:
        """``peer`` is reachable again: its pending slots (and notices) are due now."""
        due = self._notice_backoff.pop(peer, None) is not None
        for key, slot in self._slots.items():
            if key[3] == peer and slot is not except_slot and slot.state is outbox.OutboxState.PENDING:
                slot.handle(outbox.PeerBack(), trio.current_time())
                due = True
        if due:
            self.wake()

    async def run(self) -> None:
        limiter = trio.CapacityLimiter(MAX_PARALLEL_PEERS)
        while True:
            self.wakeup = trio.Event()
            now = trio.current_time()
            rows = {_slot_key(r): r for r in self.store.pending()}
            for key in set(self._slots) - set(rows):  # delivered, refused or gone meanwhile
                del self._slots[key]
            self._moved_early &= set(rows)
            # Overdue slots first: a move changes the rows (a new slot, a record amended),
            # so it is read again before any slot is sent.
            clock_now = self.now()
            overdue = [row for row in rows.values() if row["deliver_by"] is not None
                       and clock_now >= row["deliver_by"]]
            changed = False
            barred = {key: got for key, row in rows.items() if (got := self.owner.revoked_slot(row))}
            for key, (what, why) in barred.items():  # revoked since the import: never sent
                row = rows[key]
                if row["reserve"] is None or key in self._moved_early or row in overdue:
                    continue
                if what == "index":  # that shard goes to nobody: its reserve is erased
                    log.warning("shard %s:%d for %s: %s; its reserve is erased", row["keyset_id"][:12],
                                row["idx"], row["custodian"], why)
                    self.owner.drop_reserve(row, why, clock_now)
                    changed = True
                else:  # another custodian gets it now, not at the deadline (once; then as overdue)
                    self._moved_early.add(key)
                    self._slots.setdefault(key, outbox.OutboxSlot(now=now))
                    changed = self._replace(row) or changed
            if changed:
                continue
            for row in overdue:
                slot = self._slots.setdefault(_slot_key(row), outbox.OutboxSlot(now=now))
                if any(isinstance(e, outbox.Replace) for e in slot.handle(outbox.Overdue(), now)):
                    changed = self._replace(row) or changed
            if changed:
                continue
            wake = now + IDLE_WAKE
            by_peer: dict[str, list[Any]] = {}
            for key, row in rows.items():
                if key in barred:
                    continue
                slot = self._slots.setdefault(key, outbox.OutboxSlot(now=now))
                if row["deliver_by"] is not None and row["deliver_by"] > clock_now:
                    wake = min(wake, now + row["deliver_by"] - clock_now)
                for effect in slot.handle(outbox.Tick(), now):
                    if isinstance(effect, outbox.Send):
                        by_peer.setdefault(row["custodian"], []).append(row)
                    elif isinstance(effect, outbox.WakeAt):
                        wake = min(wake, effect.time)
            pending_notices = self.store.pending_notices()
            notices = [r for r in pending_notices
                       if self._notice_backoff.get(r["peer"], (0.0, 0.0))[0] <= now]
            for r in pending_notices:  # the next one due
                wake = min(wake, max(now + 0.1, self._notice_backoff.get(r["peer"], (0.0, 0.0))[0]))
            if by_peer or notices:
                async with trio.open_nursery() as n:
                    for peer, peer_rows in by_peer.items():
                        n.start_soon(self._deliver_to, peer, peer_rows, limiter)
                    for notice in notices:
                        n.start_soon(self._notify, notice)
                continue  # outcomes may have made other slots due
            with trio.move_on_at(wake):
                await self.wakeup.wait()

    def _replace(self, row: Any) -> bool:
        """Carry out a Replace effect: the slot is moved, or stays pending for later.
        Whether the store changed (then the rows are read again)."""
        key = _slot_key(row)
        del self._slots[key]  # moved (final), or pending again with a new machine
        now = self.now()
        try:
            new = self.owner.replace(row, now)
        except StoreError as exc:  # it changed under us: the next pass reads it again
            log.warning("shard %s:%d for %s: not re-placed: %s", row["keyset_id"][:12], row["idx"],
                        row["custodian"], exc)
            return False
        except ReserveExpired as exc:
            log.warning("shard %s:%d for %s: %s; its reserve is erased, and it waits for its custodian",
                        row["keyset_id"][:12], row["idx"], row["custodian"], exc)
            self.owner.drop_reserve(row, str(exc), now)
            return True
        except (ValueError, p.ShardnetError) as exc:  # PlacementError is a ValueError
            log.warning("shard %s:%d for %s is overdue and cannot be re-placed: %s", row["keyset_id"][:12],
                        row["idx"], row["custodian"], exc)
            self.store.postpone(*key, deliver_by=now + REPLACE_RETRY, error=f"overdue; not re-placed: {exc}",
                                now=now)
            return True
        log.info("shard %s:%d not delivered to %s in time: re-placed on %s", row["keyset_id"][:12], row["idx"],
                 row["custodian"], new)
        self.progress.set()
        self.progress = trio.Event()
        return True

    async def _deliver_to(self, peer: str, rows: list[Any], limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            for row in rows:
                await self._deliver_one(row)
            self.progress.set()
            self.progress = trio.Event()

    async def _deliver_one(self, row: Any) -> None:
        """Send one slot's shard and feed the outcome to its machine."""
        peer = row["custodian"]
        slot = self._slots[_slot_key(row)]
        receipt = None
        event: outbox.Event
        try:
            frame, cover = self.owner.delivery_frame(row, self.now())
            revoked = self.owner.revoked_slot(row)
            if revoked is not None:
                raise Rejected(f"not sent: {revoked[1]}")
            # Checked at every attempt, not only at import: a custodian revoked (or expired)
            # while its shard waited never gets it. The slot stays pending.
            # Admitted now, and proven to hold its keys (once per admission): otherwise the
            # shard is not sent, and the slot stays pending with the reason.
            why = await self.possession.failure(peer)
            if why is not None:
                raise Rejected(f"not sent: {why}")
            if peer == self.me:
                reply = self.custodian.handle_delivery(self.me, frame, self.now())
            else:
                reply = await self.links.reach_and_request(peer, wire.DELIVER, frame)
            receipt = self.owner.check_receipt(row, cover, reply)
            event = outbox.Receipted(receipt.status, receipt.reason)
            log.info("shard %s:%d -> %s: %s%s", row["keyset_id"][:12], row["idx"], peer, receipt.status,
                     f" ({receipt.reason})" if receipt.reason else "")
        except (tx.RequestError, Rejected, p.ShardnetError) as exc:
            event = outbox.SendFailed(str(exc))
            log.info("delivery of %s:%d to %s failed: %s", row["keyset_id"][:12], row["idx"], peer, exc)
        for effect in slot.handle(event, trio.current_time()):
            if isinstance(effect, outbox.Record):
                self.owner.record(row, effect, receipt, self.now())
        if receipt is not None:  # the custodian answers: its other slots need not wait out a back-off
            self.peer_back(peer, except_slot=slot)

    async def _notify(self, row: Any) -> None:
        """Push a keyset record to an approver that holds no shard of it."""
        peer = row["peer"]
        record = self.store.keyset(row["keyset_id"])
        assert record is not None
        state, error = "delivered", None
        try:
            if not self.links.admits(peer):  # pending, with back-off: it may be admitted again
                raise tx.StreamOpenError(peer, wire.KEYSET.id, "not sent: the network does not admit this peer")
            await self.links.reach_and_request(peer, wire.KEYSET, record["record"])
        except tx.RemoteError as exc:
            # Busy or slow is for later; anything else is the approver's answer.
            busy = exc.status in (tx.ReplyStatus.BUSY, tx.ReplyStatus.TIMEOUT)
            state, error = ("pending" if busy else "refused"), exc.reason
        except tx.RequestError as exc:
            state, error = "pending", str(exc)
        if state == "pending" and row["attempts"] + 1 >= MAX_NOTICE_ATTEMPTS:
            state, error = "refused", f"gave up after {MAX_NOTICE_ATTEMPTS} attempts: {error}"
        self.store.mark_notice(row["keyset_id"], peer, state, error=error, now=self.now())
        if state == "pending":
            _, delay = self._notice_backoff.get(peer, (0.0, 0.25))
            delay = min(BACKOFF_MAX, delay * 2)
            self._notice_backoff[peer] = (trio.current_time() + delay, delay)
        else:
            self._notice_backoff.pop(peer, None)
