"""The running node's control commands: the table the control server looks up.

Reads go to ``_api`` (the same shapes as the offline CLI); the commands that
act (import, vote, threat level, stop) are here; ``key-reconstruct`` is its
own module, ``_reconstruct``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from shardnet.protocol import CoSigned, outbox, wire

from . import _api
from . import _audit_log as audit_log
from . import _membership_ops as ops
from . import _rules_ops as rules_ops
from ._control_server import Command, ControlError, Emit
from ._epoch_round import change_epoch, rewrap
from ._reconstruct import reconstruct
from ._services import IMPORT_TOKEN

if TYPE_CHECKING:
    from ._runtime import NodeRuntime


def _prove(node: NodeRuntime, args: dict[str, Any]) -> dict[str, Any]:
    seq = args.get("entry")
    if type(seq) is not int:
        raise ControlError("entry must be an entry number", 2)
    try:
        return {"bundle": audit_log.prove(node.store, node.key, node.peer_id, seq).decode()}
    except LookupError as exc:
        raise ControlError(str(exc), 1) from None


def command_table(node: NodeRuntime) -> dict[str, Command]:
    def reads(fn: Callable[[dict[str, Any]], Any]) -> Command:
        async def command(args: dict[str, Any], emit: Emit) -> Any:
            return fn(args)
        return command

    def stop(args: dict[str, Any]) -> Any:
        node.stop()
        return {"stopping": True}

    own_key = node.key.public_key().public_bytes_raw()

    def member_state(peer: str) -> str:
        return node.members.view.state(peer, node.now())

    return {
        "status": reads(lambda a: _api.status(node.store, node.peer_id, node.cfg, node.live(), member_state,
                                              node.now())),
        "custodians": reads(lambda a: _api.custodians(node.store, node.peer_id, node.now(),
                                                      node.directory.last_heard())),
        "key-list": reads(lambda a: _api.keysets(node.store)),
        "key-show": reads(lambda a: _api.keyset_detail(node.store, str(a["keyset"]), member_state)),
        "audit-verify": reads(lambda a: _api.audit_verify(node.store, own_key)),
        "audit-checkpoint": reads(lambda a: audit_log.checkpoint(node.store, node.key, node.peer_id)),
        "audit-prove": reads(lambda a: _prove(node, a)),
        "requests": reads(lambda a: node.approvals.listing(node.now())),
        "threat-level": reads(lambda a: _threat_level(node, a)),
        "stop": reads(stop),
        "key-import": lambda a, emit: _import(node, a, emit),
        "approve": _vote(node, "approve"),
        "deny": _vote(node, "deny"),
        "key-reconstruct": lambda a, emit: reconstruct(node, a, emit),
        "refresh": lambda a, emit: change_epoch(node, {**a, "action": "refresh"}, emit),
        "reshare": lambda a, emit: change_epoch(node, {**a, "action": "reshare"}, emit),
        "rewrap": lambda a, emit: rewrap(node, a, emit),
        "membership": reads(lambda a: node.members.listing(node.now())),
        "proposals": reads(lambda a: node.members.proposals(node.now()) + node.rules.proposals()),
        "admit": _membership(node, lambda a: ops.admit(node.members, node.store, a, node.now())),
        "sign": _sign(node),
        "policy-publish": lambda a, emit: rules_ops.publish_policy(node, a),
        "policy-show": reads(lambda a: rules_ops.show(node, str(a["keyset"]))),
        "revoke": lambda a, emit: rules_ops.revoke(node, a),
        "revocations": reads(lambda a: node.rules.revocations()),
        "withdraw": reads(lambda a: node.rules.withdraw(str(a["proposal"]))),
        "feed-add": reads(lambda a: node.feeds.add(str(a["source"]), str(a["signer"]), int(a["every"]), node.now())),
        "feed-list": reads(lambda a: node.feeds.listing(node.now())),
        "feed-remove": reads(lambda a: node.feeds.remove(str(a["feed"]), node.now())),
        "member-revoke": _membership(node, lambda a: ops.revoke(node.members, a, node.now())),
    }


def _membership(node: NodeRuntime, act: Callable[[dict[str, Any]], tuple[CoSigned, dict[str, Any]]]) -> Command:
    """A membership change, then its record on the membership topic."""
    async def command(args: dict[str, Any], emit: Emit) -> Any:
        cs, answer = act(args)
        await node.membership.publish(cs)
        return answer
    return command


def _sign(node: NodeRuntime) -> Command:
    """Co-sign a proposal: a keyset rule's, or a membership record's."""
    membership = _membership(node, lambda a: ops.sign(node.members, a, node.now()))

    async def command(args: dict[str, Any], emit: Emit) -> Any:
        ref = str(args["proposal"]).strip().lower()
        if len(ref) < 4 or any(c not in "0123456789abcdef" for c in ref):
            raise ValueError(f"a proposal id is 4 to 32 hex digits, got {ref!r}")
        if node.store.rule_proposal(ref) is not None:
            return await rules_ops.sign(node, ref)
        return await membership(args, emit)
    return command


def _vote(node: NodeRuntime, decision: str) -> Command:
    async def command(args: dict[str, Any], emit: Emit) -> Any:
        vote = node.approvals.cast(str(args["request"]), decision, node.now())
        node.wake_voters()
        await node.links.publish(wire.VOTE_TOPIC, vote.signed)
        return {"request": vote.request_id, "decision": vote.decision, "approver": vote.approver}
    return command


def _threat_level(node: NodeRuntime, args: dict[str, Any]) -> Any:
    if args.get("level") is not None:
        level = int(args["level"])
        if not 0 <= level <= 5:
            raise ValueError("threat level is 0 (low) to 5 (critical)")
        node.store.put_kv("threat_level", str(level).encode())
    return {"threat_level": node.threat_level()}


async def _import(node: NodeRuntime, args: dict[str, Any], emit: Emit) -> Any:
    token = args.get("token")
    if token is not None and not (isinstance(token, str) and IMPORT_TOKEN.fullmatch(token)):
        raise ValueError("--token: 32 to 64 lowercase hex digits, as 'key import' prints them")
    master = base64.b64decode(args["key"])
    asked = _import_digest(args, len(master))
    done_before = node.owner.imported_with(token) if token else None
    if done_before is not None:  # a retry of an import that was cut off: its keyset, never a second one
        keyset_id, digest = done_before
        if digest != asked:
            raise ValueError(f"--token {token} made keyset {keyset_id} with other options or a key of another "
                             "length; a new import takes a new token")
        return await _delivered(node, keyset_id, float(args.get("wait") or 30), emit,
                                note=f"already imported with token {token}: this is that keyset")
    res = node.owner.import_key(
        master, int(args["threshold"]), int(args["shares"]), now=node.now(), token=(token, asked) if token else None,
        placement_expr=args.get("placement"), redundancy=int(args.get("redundancy") or 1),
        expires=args.get("expires"), kem=str(args.get("kem") or "x25519"),
        approvers=args.get("approvers"), quorum=args.get("quorum"), policy_text=args.get("policy"),
        custodians=args.get("custodians"), deliver_within=args.get("deliver_within", outbox.DELIVER_WITHIN),
        authorities=args.get("authorities"), authority_quorum=args.get("authority_quorum"),
        schedule={k: args[k] for k in ("refresh_every", "rewrap_every") if args.get(k)},
        renew=bool(args.get("renew")),
    )
    del master
    ks = res.keyset
    total = sum(len(h) for h in res.holders.values())
    await emit({"kind": "placed", "keyset": ks.id_hex, "total": total,
                "holders": {str(k): v for k, v in res.holders.items()}, "note": res.note})
    return await _delivered(node, ks.id_hex, float(args.get("wait") or 30), emit, note=res.note)


def _import_digest(args: dict[str, Any], key_length: int) -> str:
    """What a retry with the same token must repeat: every option of the import, and the
    key's length (never the key itself: it is not kept, nor anything that could test it)."""
    options = {k: v for k, v in args.items() if k not in ("key", "token", "wait")}
    body = json.dumps({"options": options, "key_length": key_length}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


async def _delivered(node: NodeRuntime, keyset_id: str, wait: float, emit: Emit, *, note: str) -> Any:
    """Wait up to ``wait`` seconds for the keyset's deliveries; its detail."""
    loop = node.outbox
    loop.wake()
    deadline = trio.current_time() + wait
    while True:
        # The event is taken before the rows are read: a delivery that lands after the read
        # (while the progress line goes out, say) sets this one, not the loop's next.
        progressed = loop.progress
        rows = [r for r in node.store.outbox(keyset_id) if r["state"] != "moved"]  # a move queues another
        done = [r for r in rows if r["state"] != "pending"]
        await emit({"kind": "progress", "done": len(done), "total": len(rows)})
        if len(done) == len(rows) or trio.current_time() >= deadline:
            break
        with trio.move_on_at(deadline):
            await progressed.wait()
    detail = _api.keyset_detail(node.store, keyset_id)
    detail["note"] = note
    return detail
