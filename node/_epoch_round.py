"""`shardnet refresh` and `shardnet reshare` on the coordinating authority's node.

The round (deals, echoes, co-signatures, commit) is the sans-IO machine
``shardnet.protocol.epoch.EpochRound``. This module picks the new holders,
signs the plan, feeds the machine what peers answer and carries out its
effects. The commit is applied here first, in one transaction, and queued
durably for every participant (``epoch_notices``): a participant that does not
answer now gets it from :func:`notice_loop` when it is back.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from shardnet import protocol as p
from shardnet.protocol import epoch as ep
from shardnet.protocol import epoch_records as er
from shardnet.protocol import placement, wire

from . import _transport as tx
from ._control_server import ControlError
from ._epoch_view import DEFEATS
from ._epochs import frame
from ._services import Rejected
from ._store import KeysetNotFound

if TYPE_CHECKING:
    from ._runtime import NodeRuntime

Emit = Callable[[dict[str, Any]], Awaitable[None]]
#: Seconds between passes over the commits still owed to participants, and passes at most.
NOTICE_EVERY = 30.0
MAX_NOTICE_ATTEMPTS = 2880  # a day of timed passes (the record's COMMIT_WINDOW); on-connect tries don't count
#: The kv key (then the keyset id) of when a keyset's last complete rewrap ended: a
#: ``rewrap_every`` schedule counts from it (the name is from when only the autopilot set it).
LAST_REWRAP = "autopilot-rewrap:"


def _fail(message: str, code: int = 1) -> NoReturn:
    raise ControlError(message, code)


def _find(node: NodeRuntime, ref: str) -> tuple[p.Keyset, er.EpochRecord | None]:
    ref = ref.strip().lower()
    try:
        keyset_id = node.store.find_keyset(ref)["keyset_id"]
    except KeysetNotFound as exc:
        if node.store.known_keyset(ref) is None:
            _fail(f"{exc} (an authority that holds no shard gives the full 32-hex-digit id)", 2)
        keyset_id = ref
    got = node.epochs.state(keyset_id)
    if got is None:  # pragma: no cover - found above
        _fail(f"keyset {ref} is unknown", 2)
    return got


def _holders(node: NodeRuntime, action: str, view: p.Keyset, args: dict[str, Any],
             now: int) -> tuple[dict[int, tuple[str, ...]], int, dict[str, Any]]:
    """The new holders and threshold: the same for a refresh; for a reshare, placed anew
    over the custodians admitted now and not revoked for this keyset (so a revoked one is
    never chosen), under the placement in force unless ``--placement`` says otherwise."""
    book = node.rules.book(view.id_hex)
    if action == "refresh":
        for key in ("threshold", "shares", "placement", "custodians"):
            if args.get(key) is not None:
                _fail(f"refresh keeps the holders and threshold; --{key} is for reshare", 2)
        held = er.holders_of(view)
        bad = sorted({f"{peer} (index {i})" for i, hs in held.items() for peer in hs
                      if book is not None and book.holder_revoked(i, peer, view.epoch)})
        if bad:
            _fail(f"refresh keeps the holders, and revoked ones hold shares of this keyset: {', '.join(bad)}; "
                  "reshare instead", 2)
        return held, view.threshold, {}
    t = int(args.get("threshold") or view.threshold)
    n = int(args.get("shares") or (view.shares if t <= view.shares else t))
    try:
        p.check_params(t, n)
    except ValueError as exc:
        _fail(str(exc), 2)
    redundancy = int(view.attrs.get("redundancy", 1))
    pinned = args.get("custodians")
    try:
        admitted = node.owner.candidates(view.kem, now, pinned)
    except ValueError as exc:
        _fail(str(exc), 2)
    revoked = book.revoked.peers("custodian") if book is not None else frozenset()
    if pinned and revoked & set(pinned):
        _fail(f"revoked for this keyset, so no new holder: {', '.join(sorted(revoked & set(pinned)))}", 2)
    avoid = revoked | frozenset(args.get("avoid") or ())  # the autopilot's: what the trigger moves away from
    cands = [node.owner._candidate(a) for peer, a in admitted.items() if peer not in avoid]
    expr = args.get("placement")
    if expr is None:
        expr = book.placement if book is not None else str(view.attrs.get("placement", ""))
    try:
        constraints = placement.parse(expr)
        chosen = placement.solve(cands, n, redundancy=redundancy, constraints=constraints,
                                 seed=int.from_bytes(node.rng(4), "big"))
    except ValueError as exc:  # PlacementError is one
        _fail(f"cannot place {n} shares x {redundancy} over {len(cands)} admitted custodians: {exc}")
    return {i: tuple(hs) for i, hs in chosen.items()}, t, {"placement": expr}


async def change_epoch(node: NodeRuntime, args: dict[str, Any], emit: Emit) -> dict[str, Any]:
    action = str(args["action"])
    if action not in er.ACTIONS:
        _fail(f"unknown epoch action {action!r}", 2)
    base, current = _find(node, str(args["keyset"]))
    rule = er.AuthorityRule.of(base)
    if not rule.is_authority(node.peer_id):
        _fail(f"this node is no policy authority of keyset {base.id_hex} (its authorities: "
              f"{', '.join(rule.peers)}; {rule.quorum} must sign)")
    timeout = float(args.get("timeout") or wire.EPOCH_TIMEOUT)
    if not 1 <= timeout <= wire.MAX_EPOCH_TIMEOUT:
        _fail(f"--timeout must be 1 to {wire.MAX_EPOCH_TIMEOUT} seconds", 2)
    now = node.now()
    node.store.drop_pending_shares(deadline_before=now - int(wire.MAX_CLOCK_SKEW))
    view = er.at_epoch(base, current)
    holders, t, extra = _holders(node, action, view, args, now)
    not_after = args.get("not_after", view.not_after)  # the autopilot's renewal
    try:
        er.check_not_after(base, current, not_after, now)
    except p.ShardnetError as exc:
        _fail(str(exc), 2)
    plan = er.Plan(
        keyset_id=base.keyset_id, from_epoch=view.epoch, prev=er.digest_of(base, current), action=action,
        threshold=t, shares=len(holders), holders=holders, not_after=not_after,
        round_id=node.rng(er.ROUND_ID_LEN), created=now, deadline=now + int(math.ceil(timeout)),
    ).sign(node.key)
    machine = ep.EpochRound(plan, base, current, node.key, participants=view.approvers,
                            lock=lambda record: node.epochs.lock_sign(record, node.now()))
    if base.id_hex in node.epoch_rounds:
        _fail(f"a round for keyset {base.id_hex[:12]}… is running on this node already")
    await emit({"kind": "plan", "keyset": base.id_hex, "action": action, "from_epoch": view.epoch,
                "to_epoch": plan.to_epoch, "threshold": t, "shares": plan.shares,
                "holders": {str(i): list(hs) for i, hs in holders.items()}})
    node.store.append_audit("epoch-plan", {"keyset": base.id_hex, "action": action, "to_epoch": plan.to_epoch,
                                           "threshold": t, "shares": plan.shares, "round": plan.round_id.hex(),
                                           "holders": {str(i): list(hs) for i, hs in holders.items()}},
                            now, node.key)
    start = trio.current_time()
    node.epoch_rounds.add(base.id_hex)
    try:
        end = await _drive(node, machine, base, emit)
    finally:
        node.epoch_rounds.discard(base.id_hex)
    bad = [{"peer": peer, "detail": why} for peer, why in end.bad]
    if isinstance(end, ep.Aborted):
        node.store.append_audit("epoch-aborted", {"keyset": base.id_hex, "to_epoch": plan.to_epoch,
                                                  "reason": end.message[:400], "bad": [b["peer"] for b in bad]},
                                node.now(), node.key)
        _fail(f"{action} of keyset {base.id_hex[:12]}… aborted, epoch {view.epoch} stays current: {end.message}")
    receipts = [er.Erased.from_bytes(r) for r in end.receipts]
    node.store.put_erasures(base.id_hex, [(r.epoch, r.index, r.holder_id, r.record, r.signed) for r in receipts],
                            now=node.now())
    rec = er.EpochRecord.parse(end.record)
    node.store.append_audit("epoch-done", {"keyset": base.id_hex, "epoch": rec.epoch, "action": action,
                                           "erased": [[r.holder_id, r.index] for r in receipts],
                                           "unacked": list(end.unacked), "bad": [b["peer"] for b in bad]},
                            node.now(), node.key)
    return {
        "keyset": base.id_hex, "action": action, "epoch": rec.epoch, "threshold": rec.threshold,
        "shares": rec.shares, "holders": {str(i): list(hs) for i, hs in sorted(rec.holders.items())},
        "signers": len(p.CoSigned.restore(end.record, max_size=er.MAX_EPOCH_RECORD).signatures),
        "erased": [{"holder": r.holder_id, "epoch": r.epoch, "index": r.index} for r in receipts],
        "unacked": list(end.unacked), "invalid": bad, "defeats": DEFEATS[action],
        **extra, "seconds": round(trio.current_time() - start, 3),
    }


async def rewrap(node: NodeRuntime, args: dict[str, Any], emit: Emit) -> dict[str, Any]:
    """Ask every holder of the keyset's current epoch to rewrap; collect their receipts."""
    base, current = _find(node, str(args["keyset"]))
    rule = er.AuthorityRule.of(base)
    if not rule.is_authority(node.peer_id):
        _fail(f"this node is no policy authority of keyset {base.id_hex} (its authorities: "
              f"{', '.join(rule.peers)})")
    view = er.at_epoch(base, current)
    now = node.now()
    order = er.RewrapOrder.make(node.key, keyset_id=base.keyset_id, epoch=view.epoch,
                                round_id=node.rng(er.ROUND_ID_LEN), created=now, deadline=now + wire.EPOCH_TIMEOUT)
    holders = er.holders_of(view)
    peers = sorted({h for hs in holders.values() for h in hs})
    await emit({"kind": "rewrap", "keyset": base.id_hex, "epoch": view.epoch, "holders": len(peers)})
    done: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    data = frame("rewrap", order.signed)

    async def ask(peer: str) -> None:
        try:
            if peer == node.peer_id:
                reply = node.epochs.handle(peer, data, node.now())
            else:
                reply = await node.epoch_batcher.request(peer, data)
            items = p.decode(reply, max_size=wire.EPOCH.max_reply)
            got: list[dict[str, Any]] = []
            for item in (items if isinstance(items, list) else [])[:16]:
                r = er.Rewrapped.from_bytes(item if isinstance(item, bytes) else b"")
                if (r.holder_id != peer or r.keyset_id != base.keyset_id or r.epoch != view.epoch
                        or r.round_id != order.round_id or peer not in holders.get(r.index, ())):
                    raise p.MalformedEncoding(f"a receipt for another keyset, epoch, round or index ({r.index})")
                if all(g["index"] != r.index for g in got):  # one per index, however often sent
                    got.append({"holder": peer, "index": r.index, "wrap": r.wrap, "receipt": r.signed.hex()})
            missing = sorted(i for i, hs in holders.items() if peer in hs and all(g["index"] != i for g in got))
            if missing:
                raise p.MalformedEncoding(f"no receipt for index {', '.join(map(str, missing))}")
            done.extend(got)
        except (tx.RemoteError, Rejected) as exc:
            failed.append({"peer": peer, "error": exc.reason if isinstance(exc, tx.RemoteError) else str(exc)})
        except (tx.RequestError, p.ShardnetError) as exc:
            failed.append({"peer": peer, "error": str(exc)[:300]})
        await emit({"kind": "rewrapped", "have": len(done), "failed": len(failed), "total": len(peers)})

    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(ask, peer)
    node.store.append_audit("rewrap-done", {"keyset": base.id_hex, "epoch": view.epoch,
                                            "rewrapped": [[d["holder"], d["index"]] for d in done],
                                            "failed": [f["peer"] for f in failed]}, node.now(), node.key)
    if not failed:  # a complete rewrap, the autopilot's or an operator's, starts the schedule anew
        node.store.put_kv(f"{LAST_REWRAP}{base.id_hex}", str(node.now()).encode())
    return {"keyset": base.id_hex, "epoch": view.epoch, "rewrapped": sorted(done, key=lambda d: d["index"]),
            "failed": sorted(failed, key=lambda f: f["peer"]), "complete": not failed, "defeats": DEFEATS["rewrap"]}


async def _drive(node: NodeRuntime, machine: ep.EpochRound, base: p.Keyset,
                 emit: Emit) -> ep.Done | ep.Aborted:
    send, inbox = trio.open_memory_channel[ep.Event](math.inf)
    chain = node.epochs.chain(base.id_hex)
    rules = node.rules.in_force(base.id_hex)
    plan = machine.plan
    end: ep.Done | ep.Aborted | None = None
    wake = node.clock()

    async def ask(peer: str, data: bytes, ok: Callable[[bytes], ep.Event], index: int | None = None) -> None:
        event: ep.Event
        try:
            if peer == node.peer_id:
                reply = node.epochs.handle(peer, data, node.now())
            else:
                reply = await node.epoch_batcher.request(peer, data)
            event = ok(reply)
        except (tx.RemoteError, Rejected) as exc:
            reason = exc.reason if isinstance(exc, tx.RemoteError) else str(exc)
            bad_deal = None
            if reason.startswith("bad-deal "):
                head = reason[len("bad-deal "):].split(":", 1)[0]
                bad_deal = int(head) if head.isascii() and head.isdigit() and len(head) <= 4 else None
            event = ep.AskFailed(peer, reason, index=index, bad_deal=bad_deal)
        except (tx.RequestError, p.ShardnetError) as exc:
            event = ep.AskFailed(peer, str(exc), index=index)
        send.send_nowait(event)

    def receipts_of(peer: str) -> Callable[[bytes], ep.Event]:
        def parse(reply: bytes) -> ep.Event:
            items = p.decode(reply, max_size=wire.EPOCH.max_reply)
            listed = items if isinstance(items, list) else []
            return ep.Acked(peer, tuple(i for i in listed if isinstance(i, bytes)))
        return parse

    async with trio.open_nursery() as nursery:
        pending: list[ep.Event] = [ep.Start()]
        while end is None:
            for event in pending:
                for effect in machine.handle(event, node.clock()):
                    if isinstance(effect, ep.AskDeal):
                        nursery.start_soon(ask, effect.peer, frame("deal", plan.signed),
                                           lambda r, i=effect.index, who=effect.peer: ep.DealIn(i, who, r),
                                           effect.index)
                    elif isinstance(effect, ep.AskEcho):
                        data = frame("echo", plan.signed, keyset=base.signed, chain=chain, deals=list(effect.deals),
                                     rules=rules)
                        nursery.start_soon(ask, effect.peer, data, lambda r, who=effect.peer: ep.EchoIn(who, r))
                    elif isinstance(effect, ep.AskSign):
                        data = frame("sign", plan.signed, keyset=base.signed, chain=chain, deals=list(effect.deals),
                                     echoes=list(effect.echoes))
                        nursery.start_soon(ask, effect.peer, data, lambda r, who=effect.peer: ep.SignatureIn(who, r))
                    elif isinstance(effect, ep.Commit):
                        deals = [d.signed for d in machine.qualified]
                        data = frame("commit", effect.record, keyset=base.signed, chain=chain, deals=deals,
                                     rules=rules)
                        try:
                            mine = node.epochs.accept_commit(effect.record, {"keyset": base.signed, "chain": chain,
                                                                             "deals": deals}, node.now())
                        except Rejected as exc:  # this node moved on meanwhile: nothing was sent
                            end = ep.Aborted(f"this node cannot apply its own record: {exc}", tuple(machine.bad))
                            break
                        machine.add_receipts(node.peer_id, mine)
                        node.store.queue_epoch_notices(base.id_hex, plan.to_epoch,
                                                       dict.fromkeys(machine.participants, data), now=node.now())
                        await emit({"kind": "committed", "epoch": plan.to_epoch})
                    elif isinstance(effect, ep.SendCommit):
                        data = frame("commit", effect.record, keyset=base.signed, chain=chain,
                                     deals=list(effect.deals), rules=rules)
                        nursery.start_soon(ask, effect.peer, data, receipts_of(effect.peer))
                    elif isinstance(effect, ep.Progress):
                        await emit(effect.body)
                    elif isinstance(effect, ep.WakeAt):
                        wake = effect.time
                    else:
                        end = effect
                if end is not None:
                    break
            pending = []
            if end is not None:
                break
            with trio.move_on_after(max(0.0, wake - node.clock())):
                event = await inbox.receive()
                pending.append(event)
                if isinstance(event, ep.Acked):
                    node.store.epoch_notice_done(base.id_hex, plan.to_epoch, event.peer)
            if not pending:
                pending.append(ep.Tick())
        nursery.cancel_scope.cancel()
    return end


class Returning:
    """Peers that connected since :func:`notice_loop` last looked: the commits owed to
    them go out at once, not at the next pass (a holder that missed a commit while it was
    down would answer requests from the old epoch meanwhile)."""

    def __init__(self) -> None:
        self.peers: set[str] = set()
        self.event = trio.Event()

    def back(self, peer: str) -> None:
        self.peers.add(peer)
        self.event.set()

    def take(self) -> set[str]:
        peers, self.peers, self.event = self.peers, set(), trio.Event()
        return peers


async def notice_loop(node: NodeRuntime) -> None:
    """Hand the commits still owed to participants that were away, and keep their receipts:
    a participant's as soon as it connects, every one each NOTICE_EVERY seconds; drop the
    shares kept for rounds that passed their deadline without a commit."""
    full_at = trio.current_time() + NOTICE_EVERY
    while True:
        with trio.move_on_at(full_at):
            await node.returning.event.wait()
        only: set[str] | None = node.returning.take()
        if trio.current_time() >= full_at:
            full_at, only = trio.current_time() + NOTICE_EVERY, None
            node.store.drop_pending_shares(deadline_before=node.now() - wire.MAX_CLOCK_SKEW)
        for row in node.store.epoch_notices():
            peer, kid, epoch = row["peer"], row["keyset_id"], row["epoch"]
            if only is not None and peer not in only:
                continue
            record = next((bytes(r["record"]) for r in node.store.epochs(kid) if r["epoch"] == epoch), b"")
            rec = er.EpochRecord.parse(record) if record else None
            if row["attempts"] >= MAX_NOTICE_ATTEMPTS or rec is None or not rec.fresh(node.now()):
                node.store.epoch_notice_done(kid, epoch, peer)
                node.store.append_audit("epoch-notice-dropped", {"keyset": kid, "epoch": epoch, "peer": peer,
                                                                 "error": row["last_error"] or ""},
                                        node.now(), node.key)
                continue
            try:
                reply = await node.links.reach_and_request(peer, wire.EPOCH, bytes(row["frame"]))
                items = p.decode(reply, max_size=wire.EPOCH.max_reply)
            except (tx.RequestError, p.ShardnetError) as exc:
                if only is None:  # only the timed passes count toward MAX_NOTICE_ATTEMPTS
                    node.store.epoch_notice_failed(kid, epoch, peer, str(exc), now=node.now())
                continue
            digest = rec.digest
            keep = []
            for item in (items if isinstance(items, list) else [])[:16]:
                try:
                    r = er.Erased.from_bytes(item) if isinstance(item, bytes) else None
                except p.ShardnetError:
                    r = None
                if (r is not None and r.holder_id == peer and r.keyset_id.hex() == kid and r.epoch < epoch
                        and r.record == digest):
                    keep.append((r.epoch, r.index, peer, r.record, r.signed))
            node.store.put_erasures(kid, keep, now=node.now())
            node.store.epoch_notice_done(kid, epoch, peer)
