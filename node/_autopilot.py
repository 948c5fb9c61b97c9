"""The autopilot: an authority node runs the epoch action a keyset's state calls for.

Every ``EVERY`` seconds, and as soon as a keyset's rules change (``wake``), it
looks at each keyset this node is a policy authority of, builds what it knows
of it (``protocol/_triggers.py``: the holders and their membership, the rules
in force, the schedule of the last policy version or else of the keyset
record, the clock) and asks :func:`~shardnet.protocol.triggers.decide`. A reshare, refresh
or rewrap that is due runs as the operator's command would
(``_epoch_round``), with its trigger, action and what it defeats in the audit
log (``trigger``; ``trigger-failed`` if it did not complete).

A keyset's authorities take turns (``triggers.leader``): the first acts at
once, the next one only if the trigger still holds ``TURN`` seconds later, and
so on, so that one authority that is down stops nothing, and two seldom run a
round for the same epoch (their epoch locks refuse the second one anyway).
A keyset whose action failed waits ``BACKOFF`` seconds before the next try; one
whose action completed waits ``PAUSE`` seconds. A reshare places no share on a
custodian whose admission ends within the margin.

The threat feeds it reads are this node's own (``_feeds``): only feeds configured
on a keyset's authority nodes steer its shards. A keyset imported with
``--renew`` is refreshed within its expiry margin with a new not-after, its first
lifetime from then (``epoch_records.check_not_after``: every co-signing authority
checks it).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from shardnet import protocol as p
from shardnet.protocol import epoch_records as er
from shardnet.protocol import placement
from shardnet.protocol import triggers as tr

from ._control_server import ControlError
from ._epoch_round import LAST_REWRAP, change_epoch, rewrap
from ._epoch_view import base_keyset, keyset_view
from ._epochs import TOO_MANY_PENDING

if TYPE_CHECKING:
    from ._runtime import NodeRuntime

log = logging.getLogger("shardnet.node")

#: Seconds between two looks at every keyset; the wait of each next authority's turn; the
#: wait after an action that failed. Keysets acted on per look at most (a full look is
#: followed by the next at once), and rounds in flight at once: pipelined, and their asks
#: to each peer batched (``_epoch_batcher``), so that a revoked custodian of many keysets
#: is not one round after another. A new holder keeps the shares of at most
#: ``_epochs.MAX_PENDING_PER_COORDINATOR`` rounds of one coordinator not committed yet.
EVERY = 30
TURN = 120
BACKOFF = 600
MAX_PER_PASS = 256
IN_FLIGHT = 32
#: Seconds after an action this node completed before it acts on that keyset again (so that
#: no trigger makes it run a round every pass, and the other authorities learn the new epoch).
PAUSE = 2 * EVERY
#: Seconds between two warnings about one keyset's coming expiry (log and audit).
WARN_EVERY = 86400


class Autopilot:
    def __init__(self, node: NodeRuntime) -> None:
        self.node = node
        self._seen: dict[tuple[str, int, str], int] = {}  # (keyset, epoch, action) -> first seen due
        self._failed: dict[str, int] = {}  # keyset -> when its last action failed
        self._warned: dict[str, int] = {}  # keyset -> when its expiry was last warned about
        self._done: dict[str, int] = {}  # keyset -> when this node last completed an action on it
        self._wake = trio.Event()

    def wake(self) -> None:
        """Look now, not at the end of the period: a keyset's rules changed (a revocation)."""
        self._wake.set()

    def situation(self, keyset_id: str, now: int, threats: tr.Threats) -> tr.Situation | None:
        node = self.node
        base = base_keyset(node.store, keyset_id)
        view = keyset_view(node.store, keyset_id)
        book = node.rules.book(keyset_id)
        if base is None or view is None or book is None:
            return None
        holders = []
        for i, peer in ((i, h) for i, hs in sorted(er.holders_of(view).items()) for h in hs):
            known = node.members.view.admissions_of(peer)
            a = known[-1] if known else None
            holders.append(tr.Holder(peer, i, node.members.view.state(peer, now), a.issued if a else 0,
                                     a.not_after if a else 0, node.owner._candidate(a)))
        latest = node.store.latest_epoch(keyset_id)
        epoch_at = int(latest["received_at"]) if latest else base.created
        rewrapped = node.store.get_kv(f"{LAST_REWRAP}{keyset_id}")
        schedule = book.schedule  # the last policy version's, or the keyset record's
        return tr.Situation(
            keyset_id=keyset_id, epoch=view.epoch, holders=tuple(holders),
            revoked=book.revoked.peers("custodian"), revoked_indices=book.revoked.indices(view.epoch),
            placement=tuple(placement.parse(book.placement)), created=base.created, not_after=view.not_after,
            renew=bool(base.attrs.get("renew")), refresh_every=schedule.refresh_every,
            rewrap_every=schedule.rewrap_every, last_epoch_at=epoch_at,
            last_rewrap_at=int(rewrapped) if rewrapped else epoch_at, threats=threats,
            lifetime=base.not_after - base.created if base.not_after is not None else None)

    def due(self, now: int) -> list[tuple[str, tr.Decision]]:
        """The keysets this node acts on now, with what to run."""
        node = self.node
        out: list[tuple[str, tr.Decision]] = []
        seen: dict[tuple[str, int, str], int] = {}
        threats = node.feeds.threats(now)  # once a pass, for every keyset
        mine = node.rules.mine()
        for at, keyset_id in enumerate(mine):
            if len(out) == MAX_PER_PASS:  # the rest in the next pass, which starts at once
                rest = set(mine[at:])
                seen.update((k, v) for k, v in self._seen.items() if k[0] in rest)
                break
            if keyset_id in node.epoch_rounds or now < self._failed.get(keyset_id, -BACKOFF) + BACKOFF \
                    or now < self._done.get(keyset_id, -PAUSE) + PAUSE:  # the last round's news first
                continue
            s = self.situation(keyset_id, now, threats)
            if s is None:
                continue
            warnings = tr.warnings(s, now)
            if warnings and now >= self._warned.get(keyset_id, -WARN_EVERY) + WARN_EVERY:
                self._warned[keyset_id] = now
                for warning in warnings:
                    log.warning("%s", warning)
                node.store.append_audit("expiry-warning", {"keyset": keyset_id, "warnings": warnings},
                                        now, node.key)
            d = tr.decide(s, now)
            if d is None:
                continue
            book = node.rules.book(keyset_id)
            assert book is not None
            order = tr.leader(book.rule.peers, keyset_id, s.epoch)
            key = (keyset_id, s.epoch, d.action)
            first = seen[key] = self._seen.get(key, now)
            if now >= first + TURN * order.index(node.peer_id):
                out.append((keyset_id, d))
        self._seen = seen  # what is no longer due is forgotten: it starts its turns anew
        return out

    async def act(self, keyset_id: str, d: tr.Decision) -> dict[str, Any] | None:
        node = self.node
        body = {"keyset": keyset_id, "trigger": d.trigger, "action": d.action, "reason": d.reason[:400],
                "defeats": d.defeats, "away": list(d.away)}

        async def quiet(_: dict[str, Any]) -> None:
            return None
        try:
            if d.action == "rewrap":
                res = await rewrap(node, {"keyset": keyset_id}, quiet)
                if not res.get("complete"):
                    raise ControlError(f"rewrap incomplete: {len(res.get('failed', []))} holders failed")
            else:
                args: dict[str, Any] = {"keyset": keyset_id, "action": d.action}
                if d.action == "reshare" and d.trigger != "placement":
                    args["avoid"] = self._avoid(d, node.now())
                if d.renew:
                    base = base_keyset(node.store, keyset_id)
                    assert base is not None and base.not_after is not None
                    args["not_after"] = node.now() + base.not_after - base.created  # its first lifetime again
                res = await change_epoch(node, args, quiet)
        except Exception as exc:  # noqa: BLE001 - one keyset's round never stops the others, or the node
            if not isinstance(exc, (ControlError, p.ShardnetError, ValueError)):
                log.exception("keyset %s: %s (%s) failed unexpectedly", keyset_id, d.action, d.trigger)
            # A holder that keeps the shares of too many rounds of ours already (one of an earlier
            # version keeps 16) is busy, not broken: that keyset tries again after PAUSE, not BACKOFF.
            busy = TOO_MANY_PENDING in str(exc)
            self._failed[keyset_id] = node.now() - (BACKOFF - PAUSE if busy else 0)
            log.warning("keyset %s: %s (%s) did not complete: %s", keyset_id, d.action, d.trigger, exc)
            node.store.append_audit("trigger-failed", {**body, "error": str(exc)[:400]}, node.now(), node.key)
            return None
        self._done[keyset_id] = node.now()
        log.info("keyset %s: %s by %s: %s", keyset_id, d.action, d.trigger, d.reason)
        node.store.append_audit("trigger", {**body, "epoch": res.get("epoch")}, node.now(), node.key)
        return res

    def _avoid(self, d: tr.Decision, now: int) -> list[str]:
        """Who a reshare places no share on: the holders it moves away from, and every
        custodian a feed of this node marks (compromised, or in an unsafe place)."""
        threats = self.node.feeds.threats(now)
        custodians = self.node.members.custodians(now)
        marked = {a.peer_id for a in custodians
                  if any(self.node.owner._candidate(a).attr(k) == v for k, v in threats.unsafe)}
        # Nor on one whose admission ends within the margin: it would be moved away again.
        ending = {a.peer_id for a in custodians if tr.ending(a.issued, a.not_after, now, tr.DEFAULT_MARGIN)}
        return sorted(set(d.away) | threats.compromised | marked | ending)

    async def run(self) -> None:
        limiter = trio.CapacityLimiter(IN_FLIGHT)

        async def one(keyset_id: str, d: tr.Decision) -> None:
            async with limiter:
                await self.act(keyset_id, d)
        full = False
        while True:
            if not full:
                with trio.move_on_after(EVERY):
                    await self._wake.wait()
                self._wake = trio.Event()
            due = self.due(self.node.now())
            full = len(due) == MAX_PER_PASS  # more wait: the next pass starts when this one ends
            async with trio.open_nursery() as nursery:  # the pass ends when its rounds have
                for keyset_id, d in due:
                    nursery.start_soon(one, keyset_id, d)
