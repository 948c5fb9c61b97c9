"""`key reconstruct` on the requester's node: request, wait for quorum, collect releases.

Phases, timed separately for the report:

1. **gossip**: sign the request (with a fresh ephemeral HPKE key), publish it,
   and wait until this node has seen the quorum of signed approvals (gossip,
   plus the sync pull for anything gossip lost);
2. **release**: ask the holders, redundant replicas included, concurrently;
   each custodian decides on its own and answers with a signed release sealed
   to the ephemeral key, or refuses;
3. **verify**: every release is checked on arrival (DLEQ proof or share
   against the commitments); a bad one names its custodian, and the others
   are asked until t valid answers are in or nobody is left.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from shardnet import protocol as p
from shardnet.protocol import ReconstructionFailed, Request, Session, wire
from shardnet.protocol import TallyState as State

from . import _net
from ._services import Rejected

if TYPE_CHECKING:
    from ._runtime import NodeRuntime

Emit = Callable[[dict[str, Any]], Awaitable[None]]


async def reconstruct(node: NodeRuntime, args: dict[str, Any], emit: Emit) -> dict[str, Any]:

    row = node.store.find_keyset(str(args["keyset"]))
    keyset = p.Keyset.from_bytes(row["record"])
    mode = str(args.get("mode") or "unwrap")
    timeout = float(args.get("timeout") or 60)
    now = node.now()
    ephemeral = p.HpkePrivateKey.generate("x25519", node.rng)
    request = Request.make(node.key, keyset_id=keyset.keyset_id, mode=mode, reason=str(args.get("reason") or ""),
                           ephemeral=ephemeral.public_bytes(), nonce=node.rng(16), created=now,
                           not_after=now + max(1, int(timeout)))
    node.approvals.accept_request(request.signed, now)
    node.store.append_audit("request", {"request": request.id, "keyset": keyset.id_hex, "mode": mode,
                                        "reason": request.reason}, now, node.key)
    names = {d.peer_id: d.name for d in node.directory.all()}
    session = Session(keyset, request, ephemeral, names)
    t0 = trio.current_time()
    deadline = trio.current_time() + timeout
    await node._publish(wire.REQUEST_TOPIC.name, request.signed)
    await emit({"kind": "request", "request": request.id, "keyset": keyset.id_hex, "mode": mode})

    # 1. wait for the quorum (as far as this node can see it)
    last_publish = trio.current_time()
    while True:
        tally = node.approvals.tally(request)
        state = tally.state(node.now())
        void = sorted(tally.equivocations)
        await emit({"kind": "votes", "approvals": tally.approvals, "denials": tally.denials,
                    "void": void, "quorum": tally.rule.quorum})
        if state is State.APPROVED:
            break
        voided = f", {len(void)} void for contradictory votes ({', '.join(void)})" if void else ""
        if state is State.REJECTED:
            _fail(node, request, f"request denied: {tally.denials} approvers voted deny{voided}, quorum "
                  f"{tally.rule.quorum} is out of reach", [])
        if trio.current_time() >= deadline:
            _fail(node, request, f"no quorum within {timeout:.0f} s: {tally.approvals} of "
                  f"{tally.rule.quorum} approvals{voided}", [])
        with trio.move_on_at(min(deadline, trio.current_time() + 1.0)):
            await node.votes_changed.wait()
        if trio.current_time() - last_publish > 3:  # gossip is lossy: say it again
            last_publish = trio.current_time()
            await node._publish(wire.REQUEST_TOPIC.name, request.signed)
    t_quorum = trio.current_time()

    # 2 + 3. ask holders, verify every answer on arrival
    votes = [v.signed for v in tally.votes.values()]
    verify_s = 0.0
    rounds = 0

    async def ask(peer: str) -> None:
        nonlocal verify_s
        session.asked(peer)
        try:
            reply = await node.ask_release(peer, request, votes)
            items = p.decode(reply, max_size=wire.RELEASE.max_reply)
        except _net.RemoteError as exc:
            session.on_refused(peer, exc.reason)
            return
        except Rejected as exc:
            session.on_refused(peer, str(exc))
            return
        except (_net.RequestError, p.ShardnetError) as exc:
            session.on_unreachable(peer, str(exc))
            return
        t = trio.current_time()
        held = len(session.holders[peer].indices)
        for item in (items if isinstance(items, list) else [b""])[:held]:
            session.on_release(peer, item if isinstance(item, bytes) else b"")
        verify_s += trio.current_time() - t

    while not session.complete() and trio.current_time() < deadline:
        targets = session.targets(retry=rounds > 0)
        rounds += 1
        if not targets:
            with trio.move_on_at(min(deadline, trio.current_time() + 1.0)):
                await trio.sleep_forever()
            continue
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:
                for peer in targets:
                    nursery.start_soon(ask, peer)
        await emit({"kind": "releases", "have": session.have(), "need": session.needed})
    t_release = trio.current_time()
    bad = [{"custodian": peer, "name": names.get(peer, ""), "detail": detail} for peer, detail in session.bad]
    for b in bad:
        node.store.append_audit("cheater", {"request": request.id, "keyset": keyset.id_hex,
                                            "custodian": b["custodian"], "detail": b["detail"][:400]},
                                node.now(), node.key)
    try:
        master = session.result()
    except ReconstructionFailed as exc:
        _fail(node, request, str(exc), bad)
    if mode == "shares" and row["status"] == "active":
        node.store.set_keyset_status(keyset.id_hex, "exposed", now=node.now())
    node.store.set_request_outcome(request.id, "reconstructed")
    node.store.append_audit("reconstruct", {"request": request.id, "keyset": keyset.id_hex, "mode": mode,
                                            "outcome": "ok", "bad": [b["custodian"] for b in bad]},
                            node.now(), node.key)
    used = sorted(session.partials)[: keyset.threshold] if mode == "unwrap" else sorted(session.shares)
    result = {
        "request": request.id, "keyset": keyset.id_hex, "mode": mode, "bytes": len(master),
        "key": base64.b64encode(master).decode(), "used_indices": used, "invalid": bad,
        "timings_ms": {
            "quorum": round((t_quorum - t0) * 1000, 1),
            "release": round((t_release - t_quorum - verify_s) * 1000, 1),
            "verify": round(verify_s * 1000, 1),
            "total": round((t_release - t0) * 1000, 1),
        },
        "exposed": mode == "shares",
    }
    del master
    return result


def _fail(node: NodeRuntime, request: Request, message: str, bad: list[dict[str, Any]]) -> NoReturn:
    from ._runtime import ControlError

    node.store.set_request_outcome(request.id, "failed")
    node.store.append_audit("reconstruct", {"request": request.id, "keyset": request.keyset_id.hex(),
                                            "mode": request.mode, "outcome": "failed", "reason": message[:400],
                                            "bad": [b["custodian"] for b in bad]}, node.now(), node.key)
    raise ControlError(message, 1)
