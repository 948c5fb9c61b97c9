"""`key reconstruct` on the requester's node: it drives a release round.

The round itself (wait for the quorum, ask the holders, verify every answer,
name liars, retry, give up at the deadline) is the sans-IO machine
``shardnet.protocol.ReleaseRound``. This module signs the request, feeds the
machine what the node sees (votes, answers, time passing) and carries out its
effects: publish the request, ask a holder, report progress, sleep until a
wake-up. The round's end is written in one transaction: the liars named, the
outcome, and the keyset marked exposed when shares were released.

Timings in the report: ``quorum`` until the approvals were in, ``release``
the round trips to the holders, ``verify`` the time spent checking answers
(inside the machine), ``total`` all of it.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from shardnet import protocol as p
from shardnet.protocol import Request, wire
from shardnet.protocol import epoch_records as er
from shardnet.protocol import release_round as rr

from . import _transport as tx
from ._control_server import ControlError
from ._epoch_view import record_view
from ._keyset_fetch import NoRecord
from ._services import Rejected
from ._store import KeysetNotFound

if TYPE_CHECKING:
    from ._runtime import NodeRuntime

Emit = Callable[[dict[str, Any]], Awaitable[None]]
_VOTES = object()  # "the tally may have changed", on the round's inbox


async def _keyset(node: NodeRuntime, ref: str, emit: Emit) -> tuple[p.Keyset, str | None, dict[str, Any] | None]:
    """The keyset, its local status, and where it came from if fetched: a keyset this node
    holds no record of is fetched from the network by its full id (and checked:
    ``_keyset_fetch``); its status is then None."""
    try:
        row = node.store.find_keyset(ref)
        view = record_view(node.store, row["record"])
        if not _told_of_epochs(node, view):
            return await _newest(node, view, row["status"], emit)
        return view, row["status"], None
    except KeysetNotFound as exc:
        try:
            keyset_id = bytes.fromhex(ref)
        except ValueError:
            keyset_id = b""
        if len(keyset_id) != 16:  # a keyset id is 16 bytes
            raise ControlError(f"{exc}; to fetch a keyset this node never saw from the network, "
                               "give its full 32-hex-digit id", 2) from None
    await emit({"kind": "fetch", "keyset": keyset_id.hex()})
    try:
        fetched = await node.records.fetch(node.links, keyset_id)
    except NoRecord as exc:
        known = node.approvals.keyset(keyset_id)  # an approver's record, from the owner's notice
        if known is None:
            _fail(str(exc))
        return record_view(node.store, known.signed), "active", None
    node.approvals.remember(fetched.keyset)
    node.store.append_audit("fetched", {"keyset": keyset_id.hex(), "from": fetched.source,
                                        "epoch": fetched.keyset.epoch, "revision": fetched.keyset.revision,
                                        "refused": [peer for peer, _ in fetched.refused]}, node.now(), node.key)
    source = {"from": fetched.source, "refused": [{"peer": peer, "why": why} for peer, why in fetched.refused]}
    await emit({"kind": "fetched", "keyset": keyset_id.hex(), **source})
    return fetched.keyset, None, source


def _told_of_epochs(node: NodeRuntime, view: p.Keyset) -> bool:
    """Whether every later epoch's commit comes to this node: it is a holder, an approver,
    an authority or the owner of ``view`` (a round's participants). A former holder is none
    of these, and its record may be epochs behind."""
    me = node.peer_id
    return (me in {h for hs in er.holders_of(view).values() for h in hs} or me in view.approvers
            or er.AuthorityRule.of(view).is_authority(me) or me == p.peer_id_of(view.owner))


async def _newest(node: NodeRuntime, view: p.Keyset, status: str | None,
                  emit: Emit) -> tuple[p.Keyset, str | None, dict[str, Any] | None]:
    """``view``, or the network's record if that is at a later epoch."""
    await emit({"kind": "fetch", "keyset": view.id_hex})
    try:
        fetched = await node.records.fetch(node.links, view.keyset_id)
    except NoRecord:
        return view, status, None
    if fetched.keyset.epoch <= view.epoch:
        return view, status, None
    node.approvals.remember(fetched.keyset)
    node.store.append_audit("fetched", {"keyset": view.id_hex, "from": fetched.source, "epoch": fetched.keyset.epoch,
                                        "revision": fetched.keyset.revision, "stale_epoch": view.epoch,
                                        "refused": [peer for peer, _ in fetched.refused]}, node.now(), node.key)
    source = {"from": fetched.source, "refused": [{"peer": peer, "why": why} for peer, why in fetched.refused]}
    await emit({"kind": "fetched", "keyset": view.id_hex, **source})
    return fetched.keyset, status, source


def _receipts(node: NodeRuntime, keyset: p.Keyset) -> list[p.Receipt]:
    """The holders' receipts this node keeps for the keyset's epoch: an owner's outbox has
    one for each delivery (verified when it came); a holder that says it holds no share
    beside one of these is named."""
    return [p.Receipt.from_bytes(o["receipt"], custodian=o["custodian"]) for o in node.store.outbox(keyset.id_hex)
            if o["receipt"] is not None and o["epoch"] == keyset.epoch]


async def reconstruct(node: NodeRuntime, args: dict[str, Any], emit: Emit) -> dict[str, Any]:
    keyset, status, fetched = await _keyset(node, str(args["keyset"]).strip().lower(), emit)
    mode = str(args.get("mode") or "unwrap")
    timeout = float(args.get("timeout", 60))
    if not 1 <= timeout <= p.MAX_REQUEST_LIFETIME:  # a request lives a day at most
        raise ValueError(f"timeout: from 1 to {p.MAX_REQUEST_LIFETIME} seconds, got {args.get('timeout')!r}")
    now = node.now()
    ephemeral = p.HpkePrivateKey.generate("x25519", node.rng)
    request = Request.make(node.key, keyset_id=keyset.keyset_id, mode=mode, reason=str(args.get("reason") or ""),
                           ephemeral=ephemeral.public_bytes(), nonce=node.rng(16), created=now,
                           not_after=now + max(1, int(timeout)))
    node.approvals.accept_request(request.signed, now)
    node.store.append_audit("request", {"request": request.id, "keyset": keyset.id_hex, "mode": mode,
                                        "reason": request.reason}, now, node.key)
    names = {d.peer_id: d.name for d in node.directory.all()}
    start = trio.current_time()
    await emit({"kind": "request", "request": request.id, "keyset": keyset.id_hex, "mode": mode})
    deadline = start + timeout
    named: dict[str, str] = {}  # custodian -> what it did, the first time it was named
    quorum_at: float | None = None
    verify_s = 0.0
    newest = fetched is not None  # a record fetched just now is the network's newest
    try:
        for _ in range(2):  # a Stale round fetches, and the next is never Stale: see Session
            machine = rr.ReleaseRound(keyset, request, ephemeral, deadline=deadline, timeout=timeout, names=names,
                                      receipts=_receipts(node, keyset), fetched=newest, invalid=named)
            end, verified = await _drive(node, machine, request, emit)
            verify_s += verified
            quorum_at = machine.quorum_at if quorum_at is None else quorum_at
            for peer, detail in end.bad:
                named.setdefault(peer, detail)
            if not isinstance(end, rr.Stale):
                break
            # This node missed a commit (it was down, say): holders answer from a newer epoch.
            # The same request and votes are asked again with the network's newest record, or
            # at this epoch if there is none newer (a holder's claim alone is not believed).
            stale = end
            end = rr.Failed(f"holders answer at epoch {stale.epoch}, newer than this node's record of the keyset "
                            f"(epoch {keyset.epoch}), and fetching the network's record took past the timeout",
                            stale.bad)
            with trio.move_on_at(deadline):
                newer, status, source = await _newest(node, keyset, status, emit)
                keyset, fetched, newest = newer, source or fetched, True
            if not newest:
                break
    except BaseException:
        # The CLI went away (Ctrl-C) or a bug: the request ends failed, on record.
        _finish(node, request, "failed", [], reason="the round was interrupted")
        raise
    if isinstance(end, rr.Stale):  # not reached: a round on the network's newest record is never Stale
        end = rr.Failed(f"holders answer at epoch {end.epoch}, which no record the network showed backs", end.bad)
    finished = trio.current_time()
    bad = [{"custodian": peer, "name": names.get(peer, ""), "detail": detail} for peer, detail in named.items()]
    if isinstance(end, rr.Failed):
        _finish(node, request, "failed", bad, reason=end.message)
        _fail(end.message)
    _finish(node, request, "reconstructed", bad, exposed=mode == "shares" and status == "active")
    # total: until the last answer was verified and the key opened; release: the round
    # trips to the holders, that is everything after the quorum but the verification.
    total_ms = (finished - start) * 1000
    quorum_ms = round((quorum_at - start) * 1000, 1) if quorum_at is not None else end.timings["quorum"]
    timings = {"quorum": quorum_ms, "verify": round(verify_s * 1000, 1),
               "release": round(max(0.0, total_ms - quorum_ms - verify_s * 1000), 1),
               "total": round(total_ms, 1)}
    return {
        "request": request.id, "keyset": keyset.id_hex, "mode": mode, "bytes": len(end.master),
        "key": base64.b64encode(end.master).decode(), "used_indices": list(end.used_indices), "invalid": bad,
        "timings_ms": timings, "exposed": mode == "shares", "fetched_record": fetched,
    }


async def _drive(node: NodeRuntime, machine: rr.ReleaseRound, request: Request,
                 emit: Emit) -> tuple[rr.Succeeded | rr.Failed | rr.Stale, float]:
    """Run the round to its end; return the final effect and the seconds spent verifying."""
    send, inbox = trio.open_memory_channel[Any](math.inf)
    verify_s = 0.0
    wake = trio.current_time()
    end: rr.Succeeded | rr.Failed | rr.Stale | None = None

    async def ask(peer: str, votes: tuple[bytes, ...]) -> None:
        event: rr.Event
        try:
            reply = await node.ask_release(peer, request, list(votes))
            items = p.decode(reply, max_size=wire.RELEASE.max_reply)
        except (tx.RemoteError, Rejected) as exc:
            event = rr.Refused(peer, exc.reason if isinstance(exc, tx.RemoteError) else str(exc))
        except (tx.RequestError, p.ShardnetError) as exc:
            event = rr.Unreachable(peer, str(exc))
        else:
            listed = items if isinstance(items, list) else [b""]
            event = rr.Released(peer, tuple(i if isinstance(i, bytes) else b"" for i in listed))
        send.send_nowait(event)

    async def watch_votes(changed: trio.Event) -> None:
        while True:
            await changed.wait()
            changed = node.votes_changed
            send.send_nowait(_VOTES)

    try:
        async with trio.open_nursery() as nursery:
            # The event is taken before the first tally, so no vote falls in between.
            nursery.start_soon(watch_votes, node.votes_changed)
            pending: list[rr.Event] = [rr.Start(), rr.VotesSeen(node.approvals.tally(request))]
            while end is None:
                for event in pending:
                    t = trio.current_time()
                    effects = machine.handle(event, t)
                    if isinstance(event, rr.Released):
                        verify_s += trio.current_time() - t
                    for effect in effects:
                        if isinstance(effect, rr.Publish):
                            await node.links.publish(wire.REQUEST_TOPIC, effect.data)
                        elif isinstance(effect, rr.Ask):
                            nursery.start_soon(ask, effect.peer, effect.votes)
                        elif isinstance(effect, rr.Progress):
                            await emit(effect.body)
                        elif isinstance(effect, rr.WakeAt):
                            wake = effect.time
                        else:
                            end = effect
                    if end is not None:
                        break
                pending = []
                if end is not None:
                    break
                with trio.move_on_at(wake):
                    item = await inbox.receive()
                    pending.append(rr.VotesSeen(node.approvals.tally(request)) if item is _VOTES else item)
                if not pending:
                    pending.append(rr.Tick())
                    if machine.state is rr.RoundState.WAITING:  # a lost wake-up costs a second, no more
                        pending.insert(0, rr.VotesSeen(node.approvals.tally(request)))
            nursery.cancel_scope.cancel()  # asks still in flight are not needed any more
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:  # the nursery is ours; its one failure is the failure
            raise group.exceptions[0] from None
        raise
    assert end is not None
    return end, verify_s


def _finish(node: NodeRuntime, request: Request, outcome: str, bad: list[dict[str, Any]], *,
            reason: str = "", exposed: bool = False) -> None:
    """The round's end, in one transaction: liars named, outcome, exposure."""
    now = node.now()
    body: dict[str, Any] = {"request": request.id, "keyset": request.keyset_id.hex(), "mode": request.mode,
                            "outcome": "ok" if outcome == "reconstructed" else "failed",
                            "bad": [b["custodian"] for b in bad]}
    if reason:
        body["reason"] = reason[:400]
    with node.store.transaction():
        for b in bad:
            node.store.append_audit("cheater", {"request": request.id, "keyset": request.keyset_id.hex(),
                                                "custodian": b["custodian"], "detail": b["detail"][:400]},
                                    now, node.key)
        if exposed:
            node.store.set_keyset_status(request.keyset_id.hex(), "exposed", now=now)
        node.store.set_request_outcome(request.id, outcome)
        node.store.append_audit("reconstruct", body, now, node.key)


def _fail(message: str) -> NoReturn:
    raise ControlError(message, 1)
