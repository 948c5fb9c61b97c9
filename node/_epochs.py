"""A node's part in epoch changes: which epoch is current, and the answers it gives
on ``/shardnet/epoch/1`` (a deal, an echo, a co-signature, a commit applied).

The round itself is the coordinator's (``_epoch_round`` drives
``shardnet.protocol.epoch.EpochRound``). Every node answers the same way:

* **deal**: a current holder of an old index deals its share (refresh: a
  sharing of zero) to the plan's new holders, sealed to the HPKE keys their
  admissions certify;
* **echo**: a new holder checks every sub-share it was dealt, computes its new
  share and checks it against the new commitments, keeps it sealed to itself
  (under metadata it signs, citing the epoch record) and echoes that record;
* **sign**: an authority checks the evidence (the plan, the deals, t_new
  echoes) and co-signs the epoch record;
* **commit**: every participant checks the record (K authority signatures, the
  chain back to the keyset record) and applies it in one transaction: the record,
  the new share held, every older share erased and overwritten, the WAL
  truncated, the audit entry. Old holders answer with signed deletion receipts.

A node that missed epochs catches up from the chain a commit carries, and a new
holder that missed the echo computes its share from the deals the commit carries.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import trio

from shardnet import protocol as p
from shardnet.protocol import batches, wire
from shardnet.protocol import epoch_records as er

from ._clock import Rng
from ._epoch_view import base_keyset, current_record, parsed
from ._keystore import Keystore
from ._members import Members
from ._rewrap import Resealed, rewrap_all
from ._rewrap import receipts as rewrap_receipts
from ._rules import Rules
from ._services import Rejected, _keyset_row
from ._store import AuditEvent, Store

log = logging.getLogger("shardnet.node")

#: Shares of rounds not committed yet that one coordinator, and all of them, may make
#: this node keep (each until its round's deadline).
MAX_PENDING_PER_COORDINATOR = 64
MAX_PENDING = 1024
CATCH_UP_EVERY = 60  # seconds between tries to compute a missed share from deals
#: The refusal of an echo past those limits (a coordinator may take it as "busy, try soon").
TOO_MANY_PENDING = "this node keeps too many shares of rounds not committed yet"


def _frame_parts(extra: Any) -> dict[str, Any]:
    p.want(extra, dict, "epoch frame")
    out: dict[str, Any] = {}
    for key in ("keyset",):
        if key in extra:
            out[key] = p.want_bytes(extra[key], key)
    for key, cap in (("chain", wire.MAX_EPOCH_CHAIN), ("deals", p.MAX_SHARES), ("echoes", 16 * p.MAX_SHARES),
                     ("rules", len(p.keyset_rules.KINDS))):
        items = p.want(extra.get(key, []), list, key)
        if len(items) > cap:
            raise p.MalformedEncoding(f"epoch frame: more than {cap} {key}")
        out[key] = [p.want_bytes(x, key) for x in items]
    return out


def frame(ask: str, head: bytes, **extra: Any) -> bytes:
    return p.encode([wire.EPOCH_FRAME_TAG, 1, ask, head, extra])


class EpochService:
    """The epoch asks this node answers, and the commits it applies."""

    def __init__(self, store: Store, keystore: Keystore, members: Members, rng: Rng, rules: Rules) -> None:
        self.store = store
        self.rules = rules
        self._handed: list[bytes] = []  # the rule records of the commit being applied
        self.keystore = keystore
        self.key = keystore.signer
        self.me = keystore.peer_id
        self.members = members
        self.rng = rng
        self._tried: dict[tuple[str, int], int] = {}  # (keyset, epoch) -> last catch-up try
        self._last_rewrap = -wire.REWRAP_MIN_INTERVAL

    # -- what is current -------------------------------------------------------------

    def state(self, keyset_id: str) -> tuple[p.Keyset, er.EpochRecord | None] | None:
        base = base_keyset(self.store, keyset_id)
        return None if base is None else (base, current_record(self.store, keyset_id))

    def chain(self, keyset_id: str) -> list[bytes]:
        return [bytes(r["record"]) for r in self.store.epochs(keyset_id)][-wire.MAX_EPOCH_CHAIN:]

    def _learn(self, keyset_id: bytes, parts: dict[str, Any], now: int, *,
               named: bool) -> tuple[p.Keyset, er.EpochRecord | None, list[er.EpochRecord]]:
        """The keyset and its current epoch, with the records of ``parts['chain']`` this
        node has not applied yet (verified, in order). A keyset this node does not
        know is taken from the frame only when the node is ``named`` in the round."""
        got = self.state(keyset_id.hex())
        if got is None:
            if not named or "keyset" not in parts:
                raise Rejected("this node does not know that keyset")
            base = parsed(self.store, parts["keyset"], p.Keyset.from_bytes)  # each frame of a round has it
            if base.keyset_id != keyset_id:
                raise Rejected("the frame carries another keyset's record")
            current = None
        else:
            base, current = got
        newer: list[er.EpochRecord] = []
        here = base.epoch if current is None else current.epoch
        for data in parts.get("chain", []):
            try:
                seen = er.EpochRecord.parse(data)  # what it names; verified below if it is news
            except p.ShardnetError as exc:
                raise Rejected(f"epoch chain: {exc}") from None
            if seen.epoch <= here:  # one this node has applied: not used, so not verified again
                continue
            try:
                rec = er.successor(base, current, data)
            except p.ShardnetError as exc:
                raise Rejected(f"epoch chain: {exc}") from None
            newer.append(rec)
            current, here = rec, rec.epoch
        return base, current, newer

    # -- the stream handler ------------------------------------------------------------

    def handle(self, remote: str, data: bytes, now: int) -> bytes:
        try:
            ask, head, extra = p.decode_record(data, wire.EPOCH_FRAME_TAG, 1, 3, max_size=wire.EPOCH.max_request)
            if ask not in wire.EPOCH_ASKS:
                raise p.MalformedEncoding(f"unknown epoch ask {str(ask)[:20]!r}")
            head = p.want_bytes(head, "epoch frame head")
            parts = _frame_parts(extra)
        except p.ShardnetError as exc:
            raise Rejected(f"malformed epoch frame: {exc}") from None
        # The rules in force that come with an echo or a commit: a new holder seals its share
        # under their policy even before it knows the keyset (a commit stores them after).
        self._handed = parts["rules"]
        try:
            if ask == "commit":
                receipts = self.accept_commit(head, parts, now)
                self._take_rules(parts["rules"], now)
                return p.encode(receipts)
            if ask == "rewrap":
                return p.encode(self.rewrap(er.RewrapOrder.from_bytes(head), remote, now))
            plan = er.Plan.from_bytes(head)
            if p.peer_id_of(plan.coordinator) != remote:
                raise Rejected("the plan is not signed by the peer asking")
            if not plan.created - wire.MAX_CLOCK_SKEW <= now <= plan.deadline + wire.MAX_CLOCK_SKEW \
                    or plan.deadline - plan.created > wire.MAX_EPOCH_TIMEOUT:
                raise Rejected("the plan is stale, or its deadline is out of range")
            if ask == "deal":
                return self.deal(plan, now)
            if ask == "echo":
                return self.echo(plan, parts, now)
            return self.cosign(plan, parts, now)
        except er.BadDeal as exc:
            raise Rejected(f"bad-deal {exc.dealer}: {exc}") from None
        except (p.ShardnetError, ValueError, OverflowError) as exc:  # the VSS math or SQLite refusing input
            raise Rejected(str(exc)[:300]) from None
        finally:
            self._handed = []

    async def handle_batch(self, remote: str, data: bytes, now: Callable[[], int]) -> bytes:
        """Many epoch frames at once (``protocol/_batches.py``): each answered as :meth:`handle`
        answers it alone, with a checkpoint between two (the node serves others meanwhile),
        until the work took ``BATCH_SECONDS`` or the next reply would not fit the reply cap:
        the rest are answered LATER (sent again; every ask may be asked again)."""
        try:
            frames = batches.parse_epoch_batch(data)
        except p.ShardnetError as exc:
            raise Rejected(f"malformed epoch batch: {exc}") from None
        out: list[tuple[batches.Status, bytes]] = []
        size = 0
        start = trio.current_time()
        for item in frames:
            if out and (trio.current_time() - start > batches.BATCH_SECONDS or size > batches.REPLY_ROOM):
                out.append((batches.Status.LATER, b""))
                continue
            try:
                answer = (batches.Status.OK, self.handle(remote, item, now()))
            except Rejected as exc:
                answer = (batches.Status.REFUSED, str(exc).encode()[:300])
            if out and size + len(answer[1]) > batches.REPLY_ROOM:
                answer = (batches.Status.LATER, b"")  # it does not fit: done again when sent again
            out.append(answer)
            size += len(answer[1]) + 8
            await trio.lowlevel.checkpoint()
        return batches.epoch_batch_reply(out)

    def _take_rules(self, records: list[bytes], now: int) -> None:
        """The keyset's rules in force, as the coordinator holds them: a new holder has them
        before it can release (checked like any other: only K authority signatures count)."""
        for data in records:
            try:
                self.rules.accept(data, now)
            except p.ShardnetError as exc:
                if not isinstance(exc, p.keyset_rules.StaleRule):
                    log.info("a rule record with a commit was refused: %s", exc)

    def _my_old_share(self, view: p.Keyset, now: int) -> p.Share:
        mine = [i for i, hs in er.holders_of(view).items() if self.me in hs]
        for i in mine:
            row = self.store.held_shard(view.id_hex, view.epoch, i)
            if row is None:
                continue
            sealed = self.keystore.open_at_rest(row["sealed"])
            meta = p.read_shard_meta(sealed)
            _, share = p.open_shard(sealed, self.keystore.opener_for(meta), recipient=self.me, now=now,
                                    commitments=view.commitments)
            return share
        raise Rejected(f"this node holds no share of keyset {view.id_hex[:12]}… at epoch {view.epoch}")

    def deal(self, plan: er.Plan, now: int) -> bytes:
        base, current, _ = self._learn(plan.keyset_id, {}, now, named=False)
        plan.check_against(base, current)
        view = er.at_epoch(base, current)
        share = self._my_old_share(view, now)
        keys = {}
        for hs in plan.holders.values():
            for peer in hs:
                a = self.members.admission(peer, now)
                key = a.hpke_key(base.kem) if a is not None and "custodian" in a.roles else None
                if not key:
                    raise Rejected(f"new holder {peer} is not an admitted custodian with a {base.kem} key")
                keys[peer] = key
        deal = er.Deal.make(self.key, plan, share, keys, base.kem, self.rng)
        self.store.append_audit("epoch-deal", {"keyset": base.id_hex, "to_epoch": plan.to_epoch,
                                               "action": plan.action, "index": share.index,
                                               "coordinator": p.peer_id_of(plan.coordinator)}, now, self.key)
        return deal.signed

    def _seal_own(self, base: p.Keyset, record: er.EpochRecord, share: p.Share, now: int) -> tuple[bytes, bytes]:
        """The new share sealed to this node, under metadata it signs that cites ``record``."""
        wrap = self.store.rest_wrap()  # the at-rest key the node's shards are sealed to now
        public = self.keystore.rest_public(base.kem, wrap)
        meta = p.ShardMeta(base.keyset_id, record.epoch, share.index, record.shares, record.threshold, self.me,
                           now, record.not_after, self.rules.policy_digest(base, self._handed, now), record.commitments_digest, base.kem,
                           epoch_record=record.digest, wrap=wrap)
        sealed = p.seal_shard(meta, share, public, owner=self.key)
        return self.keystore.seal_at_rest(sealed), p.read_shard_meta(sealed).signed

    def _new_share(self, plan: er.Plan, base: p.Keyset, current: er.EpochRecord | None, deals: list[bytes],
                   now: int) -> tuple[p.Share, er.EpochRecord, list[er.Deal]]:
        view = er.at_epoch(base, current)
        index = next((i for i, hs in plan.holders.items() if self.me in hs), None)
        if index is None:
            raise Rejected("this node is no new holder of the plan")
        if base.kem not in self.keystore.openers():
            raise Rejected(f"this node has no {base.kem} key")
        parsed = [er.Deal.from_bytes(d) for d in deals]
        old = self._my_old_share(view, now) if plan.action == "refresh" else None
        share, record = er.new_share(plan, view, parsed, index=index, peer=self.me,
                                     opener=self.keystore.openers()[base.kem], old=old)
        return share, record, parsed

    def echo(self, plan: er.Plan, parts: dict[str, Any], now: int) -> bytes:
        named = any(self.me in hs for hs in plan.holders.values())
        coordinator = p.peer_id_of(plan.coordinator)
        if (self.store.pending_count(coordinator) >= MAX_PENDING_PER_COORDINATOR
                or self.store.pending_count() >= MAX_PENDING):
            self.store.drop_pending_shares(deadline_before=now - wire.MAX_CLOCK_SKEW)
            if (self.store.pending_count(coordinator) >= MAX_PENDING_PER_COORDINATOR
                    or self.store.pending_count() >= MAX_PENDING):
                raise Rejected(TOO_MANY_PENDING)
        known = self.state(plan.keyset_id.hex()) is not None
        base, current, newer = self._learn(plan.keyset_id, parts, now, named=named)
        plan.check_against(base, current)
        share, record, parsed = self._new_share(plan, base, current, parts["deals"], now)
        # One round per epoch at a time (taken once the deals checked out): a second round
        # for the same epoch waits until the first one's deadline, so that two rounds
        # cannot both collect this node's echo.
        locked = self.store.take_epoch_lock(base.id_hex, plan.to_epoch, "echo", plan.round_id,
                                            until=plan.deadline, now=now)
        if locked != plan.round_id:
            raise Rejected(f"this node echoes another round of epoch {plan.to_epoch} until its deadline")
        if newer and known:  # a keyset this node knows catches up; one it does not stays in memory
            self._apply_chain(base, newer, now)
        sealed, meta = self._seal_own(base, record, share, now)
        # Kept as long as the record may still be handed over as a commit.
        self.store.put_pending_share(base.id_hex, record.epoch, share.index, record=record.digest, sealed=sealed,
                                     meta=meta, deadline=plan.deadline + er.COMMIT_WINDOW, coordinator=coordinator)
        return er.Echo.make(self.key, record, share.index, er.qualified_digest(parsed)).signed

    def lock_sign(self, record: er.EpochRecord, now: int) -> None:
        """Promise to sign no other record of ``record``'s epoch while it may still be
        committed (its deadline and COMMIT_WINDOW); raises ShardnetError if this authority
        signed another one that still may."""
        held = self.store.take_epoch_lock(record.keyset_id.hex(), record.epoch, "sign", record.digest,
                                          until=record.deadline + er.COMMIT_WINDOW, now=now)
        if held != record.digest:
            raise p.ShardnetError(f"this authority signed another record of epoch {record.epoch} "
                                  f"({held.hex()[:16]}…)")

    def cosign(self, plan: er.Plan, parts: dict[str, Any], now: int) -> bytes:
        known = self.state(plan.keyset_id.hex())
        named = known is not None or ("keyset" in parts and er.AuthorityRule.of(
            parsed(self.store, parts["keyset"], p.Keyset.from_bytes)).is_authority(self.me))
        base, current, newer = self._learn(plan.keyset_id, parts, now, named=named)
        if not er.AuthorityRule.of(base).is_authority(self.me):
            raise Rejected("this node is no policy authority of that keyset")
        plan.check_against(base, current)
        er.check_not_after(base, current, plan.not_after, now)  # a renewal only if the keyset allows it
        if newer and known is not None:
            self._apply_chain(base, newer, now)
        book = self.rules.book(base.id_hex)
        for i, hs in plan.holders.items():  # a reshare goes to admitted custodians only, none revoked
            for peer in hs:
                a = self.members.admission(peer, now)
                if a is None or "custodian" not in a.roles or not a.hpke_key(base.kem):
                    raise Rejected(f"new holder {peer} is not an admitted custodian with a {base.kem} key")
                if book is not None and peer in book.revoked.peers("custodian"):
                    raise Rejected(f"new holder {peer} is revoked for this keyset")
                if book is not None and plan.action == "refresh" and book.holder_revoked(i, peer, plan.from_epoch):
                    raise Rejected(f"a refresh would keep index {i} with {peer}, which is revoked")
        record = er.check_evidence(plan, base, current, parts["deals"], parts["echoes"])
        self.lock_sign(record, now)
        self.store.append_audit("epoch-cosign", {"keyset": base.id_hex, "epoch": record.epoch,
                                                 "action": record.action,
                                                 "record": record.digest.hex(),
                                                 "coordinator": p.peer_id_of(plan.coordinator)}, now, self.key)
        return p.CoSigned(record.body(), ()).signed_by(self.key).to_bytes()

    # -- rewrap ----------------------------------------------------------------------

    def rewrap(self, order: er.RewrapOrder, remote: str, now: int) -> list[bytes]:
        """Reseal everything this node holds to a new at-rest key (``_rewrap``), on the order
        of an authority of a keyset it holds a share of; answer with a signed receipt per
        share of that keyset. Within REWRAP_MIN_INTERVAL of the last rewrap, which covered
        every keyset, the receipts describe that one."""
        if p.peer_id_of(order.coordinator) != remote:
            raise Rejected("the rewrap order is not signed by the peer asking")
        if not order.created - wire.MAX_CLOCK_SKEW <= now <= order.deadline + wire.MAX_CLOCK_SKEW \
                or order.deadline - order.created > wire.MAX_EPOCH_TIMEOUT:
            raise Rejected("the rewrap order is stale, or its deadline is out of range")
        got = self.state(order.keyset_id.hex())
        if got is None:
            raise Rejected("this node does not know that keyset")
        base, current = got
        order.check_against(base, current)
        view = er.at_epoch(base, current)
        mine = [h for h in self.store.held_shards(base.id_hex) if h["epoch"] == view.epoch]
        if not mine:
            raise Rejected(f"this node holds no share of keyset {base.id_hex[:12]}… at epoch {view.epoch}")
        if now - self._last_rewrap < wire.REWRAP_MIN_INTERVAL:  # one rewrap a minute, whoever asks
            metas = [p.peek_shard_meta(self.keystore.open_at_rest(h["sealed"])) for h in mine]
            if not all(m.wrap > 0 for m in metas):
                raise Rejected(f"this node rewrapped less than {wire.REWRAP_MIN_INTERVAL} s ago; ask again later")
            done = [Resealed(h["keyset_id"], h["epoch"], h["idx"], m.wrap, bytes(h["sealed"]))
                    for h, m in zip(mine, metas, strict=True)]
        else:
            self._last_rewrap = now  # a rewrap that fails counts too
            done = rewrap_all(self.store, self.keystore, self.rng, now, policy_of=self.rules.policy_digest_of,
                              reason={"keyset": base.id_hex, "coordinator": remote})
        return rewrap_receipts(self.key, done, base.id_hex, order, now)

    # -- commits ---------------------------------------------------------------------

    def accept_commit(self, data: bytes, parts: dict[str, Any], now: int) -> list[bytes]:
        """Apply the epoch record ``data`` (catching up from the chain first); return this
        node's deletion receipts for it (the same ones again for a commit already applied,
        after computing this holder's share from the deals if it still lacks it)."""
        try:
            head = er.EpochRecord.parse(data)
        except p.ShardnetError as exc:
            raise Rejected(f"malformed epoch record: {exc}") from None
        kid = head.keyset_id.hex()
        known = self.state(kid)
        # A keyset this node never saw is taken from the frame only for a round it echoed
        # in, or whose deals give it its share: nobody else can make it keep records.
        named = known is not None or (
            "keyset" in parts and self.me in head.holder_peers()
            and (self.store.pending_share(kid, head.epoch) is not None or bool(parts.get("deals"))))
        base, current, newer = self._learn(head.keyset_id, parts, now, named=named)
        here = base.epoch if current is None else current.epoch
        if head.epoch <= here:  # applied already (a retry), or a conflicting record
            if known is None:  # the frame's own chain holds it: nothing of this node's to apply
                raise Rejected("this node does not know that keyset, and the commit is not news")
            stored = next((r for r in self._records(base) if r.epoch == head.epoch), None)
            same = stored is not None and stored.digest == head.digest
            if not same:
                raise Rejected(f"epoch {head.epoch} is not after this node's epoch {here}, and differs from it")
            self._apply_chain(base, newer, now)
            if current is not None and current.epoch == head.epoch and parts.get("deals"):
                self._catch_up(base, current, parts["deals"], now)
            return [bytes(r["receipt"]) for r in self.store.erasures(base.id_hex)
                    if r["holder"] == self.me and bytes(r["record"]) == head.digest]
        try:
            rec = er.successor(base, current, data)
        except p.ShardnetError as exc:
            raise Rejected(str(exc)) from None
        if not rec.fresh(now):  # a record withheld past its window is never applied
            raise Rejected(f"epoch record {rec.epoch}: its round ended more than {er.COMMIT_WINDOW} s ago")
        if known is None:  # learn the keyset only with this node's share of the new epoch
            return self._apply(base, current, rec, parts.get("deals", []), now, chain=newer)
        self._apply_chain(base, newer, now)
        return self._apply(base, current, rec, parts.get("deals", []), now)

    def _apply_chain(self, base: p.Keyset, records: list[er.EpochRecord], now: int) -> None:
        """Apply epochs this node missed (no share of them: it catches up)."""
        prev = current_record(self.store, base.id_hex)
        for rec in records:
            if prev is not None and rec.epoch <= prev.epoch:
                continue
            self._apply(base, prev, rec, [], now)
            prev = rec

    def _share_from_deals(self, base: p.Keyset, current: er.EpochRecord | None, rec: er.EpochRecord, index: int,
                          deals: list[bytes], now: int) -> tuple[int, bytes, bytes] | None:
        """This holder's share of ``rec`` computed from the deals a commit carries (it missed
        the echo), sealed to itself; None (and an audit entry) if they do not give it."""
        view = er.at_epoch(base, current)
        plan = er.Plan(keyset_id=rec.keyset_id, from_epoch=view.epoch, prev=rec.prev, action=rec.action,
                       threshold=rec.threshold, shares=rec.shares, holders=rec.holders,
                       not_after=rec.not_after, round_id=rec.round_id, created=rec.created, deadline=rec.deadline)
        try:
            share, made, _ = self._new_share(plan, base, current, deals, now)
            if made.digest != rec.digest:
                raise p.MalformedEncoding("the deals make another record than the one committed")
        except (p.ShardnetError, Rejected, ValueError) as exc:
            self.store.append_audit("epoch-missed", {"keyset": base.id_hex, "epoch": rec.epoch, "index": index,
                                                     "reason": str(exc)[:300]}, now, self.key)
            return None
        return (index, *self._seal_own(base, rec, share, now))

    def _catch_up(self, base: p.Keyset, current: er.EpochRecord, deals: list[bytes], now: int) -> None:
        """A holder of the current epoch that applied its record without its share (a commit
        without deals) computes it now; a refresh holder kept its old share for this."""
        index = next((i for i, hs in current.holders.items() if self.me in hs), None)
        if index is None or self.store.held_shard(base.id_hex, current.epoch, index) is not None:
            return
        key = (base.id_hex, current.epoch)
        if now - self._tried.get(key, -CATCH_UP_EVERY) < CATCH_UP_EVERY:
            return  # one try a minute, whoever hands this node deals
        self._tried[key] = now
        if len(self._tried) > 4096:
            self._tried.clear()
        prev = next((r for r in self._records(base) if r.epoch == current.epoch - 1), None)
        promote = self._share_from_deals(base, prev, current, index, deals, now)
        if promote is None:
            return
        receipts = self._erasures(base, current, now)
        with self.store.transaction():
            self.store.put_held_shard(base.id_hex, current.epoch, index, sealed=promote[1], meta=promote[2], now=now,
                                      audit=AuditEvent("epoch-caught-up", {"keyset": base.id_hex,
                                                                           "epoch": current.epoch, "index": index},
                                                       self.key))
            self.store.erase_older(base.id_hex, current.epoch, receipts, now=now)
        self.store.truncate_wal()

    def _records(self, base: p.Keyset) -> list[er.EpochRecord]:
        return [er.EpochRecord.parse(bytes(r["record"])) for r in self.store.epochs(base.id_hex)]

    def _erasures(self, base: p.Keyset, rec: er.EpochRecord, now: int,
                  keep: int | None = None) -> list[tuple[int, int, str, bytes, bytes]]:
        out = []
        for held in self.store.held_shards(base.id_hex):
            if held["epoch"] < rec.epoch and held["epoch"] != keep:
                r = er.Erased.make(self.key, keyset_id=base.keyset_id, epoch=held["epoch"], index=held["idx"],
                                   record=rec.digest, time=now)
                out.append((held["epoch"], held["idx"], self.me, rec.digest, r.signed))
        return out

    def _apply(self, base: p.Keyset, current: er.EpochRecord | None, rec: er.EpochRecord, deals: list[bytes],
               now: int, chain: list[er.EpochRecord] | None = None) -> list[bytes]:
        """Apply ``rec`` after ``current``. ``chain``: for a keyset this node did not know,
        the records before ``rec`` it learnt from the frame, kept only along with its share."""
        kid = base.id_hex
        view = er.at_epoch(base, current)
        promote = None
        keep = None
        index = next((i for i, hs in rec.holders.items() if self.me in hs), None)
        if index is not None:
            pending = self.store.pending_share(kid, rec.epoch)
            if pending is not None and bytes(pending["record"]) == rec.digest and pending["idx"] == index:
                promote = (index, bytes(pending["sealed"]), bytes(pending["meta"]))
            elif deals:  # missed the echo: compute the share from the deals the commit carries
                promote = self._share_from_deals(base, current, rec, index, deals, now)
            if promote is None and rec.action == "refresh" and self.store.held_shard(kid, view.epoch, index):
                keep = view.epoch  # its new share needs the old one: kept until the deals come
        if chain is not None:
            if promote is None:
                raise Rejected("this node does not know that keyset, and holds no share of this epoch of it")
            prev: er.EpochRecord | None = None  # this node held nothing of the keyset
            for earlier in chain:  # learnt from the frame: now kept, with the share
                self._apply(base, prev, earlier, [], now)
                prev = earlier
        receipts = self._erasures(base, rec, now, keep)
        body = {"keyset": kid, "epoch": rec.epoch, "action": rec.action, "threshold": rec.threshold,
                "shares": rec.shares, "record": rec.digest.hex(),
                "record_sha256": hashlib.sha256(rec.signed).hexdigest(),
                "holds": index if promote is not None else None, "erased": [r[1] for r in receipts]}
        if keep is not None:
            body["kept_for_deals"] = keep
        with self.store.transaction():
            if self.store.keyset(kid) is None:
                if promote is not None:  # a new holder: the releaser reads its keyset row
                    self.store.put_keyset(_keyset_row(base, "custodian"), now=now)
                elif self.store.known_keyset(kid) is None:
                    self.store.put_known_keyset(kid, base.signed, p.peer_id_of(base.owner), now=now)
            self.store.commit_epoch(kid, rec.epoch, rec.action, rec.signed, now=now, promote=promote,
                                    erased=receipts, audit=AuditEvent("epoch", body, self.key), keep_epoch=keep)
        self.store.truncate_wal()  # the erased shares leave no copy in the log
        return [r[4] for r in receipts]
