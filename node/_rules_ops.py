"""What `policy publish`, `revoke` and `sign` (of a rule proposal) do on the running node.

Each makes or signs a co-signed rule record through :class:`Rules`, then
spreads it: a record now in force on its topic, a proposal to the keyset's
other authorities. The answers are JSON-shaped, as the CLI prints them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from shardnet import protocol as p
from shardnet.protocol import CoSigned
from shardnet.protocol import keyset_rules as kr

from ._control_server import ControlError
from ._epoch_view import keyset_view
from ._store import KeysetNotFound

if TYPE_CHECKING:
    from ._runtime import NodeRuntime


def answer(node: NodeRuntime, cs: CoSigned, outcome: str) -> dict[str, Any]:
    rec = kr.parse_body(cs.body, trusted=True)
    book = node.rules.book(rec.keyset_id.hex())
    needed = book.rule.quorum if book is not None else 0
    held = book.held(rec.kind) if book is not None else None
    done = held is not None and held[0].body == cs.body
    signatures = len(held[0].signatures) if done and held else len(cs.signatures)
    return {"proposal": cs.id.hex(), "kind": rec.kind, "keyset": rec.keyset_id.hex(), "version": rec.version,
            "signatures": signatures, "needed": needed,
            "state": "in effect" if done else "waiting for signatures",
            "changed": outcome in ("applied", "proposal"), "record": rec.to_json()}


def resolve(node: NodeRuntime, ref: str) -> str:
    """A keyset id from a unique prefix of one this node holds, or a full id it knows."""
    ref = ref.strip().lower()
    try:
        return str(node.store.find_keyset(ref)["keyset_id"])
    except KeysetNotFound as exc:
        if node.rules.book(ref) is None:
            raise ControlError(f"{exc} (an authority that holds no shard gives the full 32-hex-digit id)", 2) from None
        return ref


async def _spread(node: NodeRuntime, cs: CoSigned, outcome: str) -> dict[str, Any]:
    if outcome == "applied":
        cs = node.rules.completed(cs)
    await node.rules_loops.spread(cs, outcome)
    return answer(node, cs, outcome)


def show(node: NodeRuntime, ref: str) -> dict[str, Any]:
    """`policy show`: the version in force, and what the current holders break of its
    placement (by the attributes their admissions vouch for)."""
    keyset_id = resolve(node, ref)
    out = node.rules.show(keyset_id)
    view = keyset_view(node.store, keyset_id)
    if view is not None:
        now = node.now()
        holders = [node.owner._candidate(node.members.admission(peer, now) or node.owner._last_admission(peer))
                   for hs in p.epoch_records.holders_of(view).values() for peer in hs]
        try:
            out["violations"] = p.placement.violations(holders, p.placement.parse(out["placement"]))
        except ValueError:
            out["violations"] = []
        out["epoch"] = view.epoch
    return out


async def publish_policy(node: NodeRuntime, args: dict[str, Any]) -> dict[str, Any]:
    keyset_id = resolve(node, str(args["keyset"]))
    text = None if args.get("policy") is None else str(args["policy"])
    try:
        if text is not None:
            p.Policy(text)  # validated against the schema before anything is signed
    except p.PolicyError as exc:
        raise ControlError(f"the policy is not valid, nothing was signed: {exc}", 2) from None
    schedule = args.get("schedule") or {}
    if not isinstance(schedule, dict) or set(schedule) - set(kr.SCHEDULE_KEYS):
        raise ControlError(f"a schedule names only {', '.join(kr.SCHEDULE_KEYS)}", 2)
    for key, every in schedule.items():
        if every is not None and (type(every) is not int or not kr.MIN_SCHEDULE <= every <= kr.MAX_SCHEDULE):
            raise ControlError(f"{key} is {kr.MIN_SCHEDULE} s to {kr.MAX_SCHEDULE} s, or never; nothing was signed",
                               2)
    placement = args.get("placement")
    if placement is not None:
        try:
            p.placement.parse(str(placement))
        except ValueError as exc:
            raise ControlError(f"the placement is not valid, nothing was signed: {exc}", 2) from None
    cs, outcome = node.rules.propose_policy(keyset_id, text, None if placement is None else str(placement),
                                            node.now(), schedule)
    return await _spread(node, cs, outcome)


async def revoke(node: NodeRuntime, args: dict[str, Any]) -> list[dict[str, Any]]:
    subject = str(args["subject"])
    value = str(args["value"]).strip()
    reason = str(args["reason"]).strip()
    now = node.now()
    if subject == "shard":
        keyset_ref, _, index = value.rpartition(":")
        if not keyset_ref or not index.isdigit():
            raise ControlError("--shard is KEYSET:INDEX", 2)
        keysets = [resolve(node, keyset_ref)]
        entry = kr.Revoked("shard", "", int(index), reason, now)
    else:
        p.public_key_of(value)  # a clear error for what is not a peer id
        keysets = [resolve(node, str(args["keyset"]))] if args.get("keyset") else node.rules.mine()
        entry = kr.Revoked(subject, value, 0, reason, now)
        if not keysets:
            raise ControlError("this node is a policy authority of no keyset it knows: nothing to revoke", 1)
    try:
        kr.Revoked.from_list(entry.to_list())
    except p.MalformedEncoding as exc:
        raise ControlError(str(exc), 2) from None
    out: list[dict[str, Any]] = []
    applied: list[CoSigned] = []
    try:
        await _revoke_each(node, keysets, subject, entry, now, out, applied)
    finally:  # what went in force is published, even if a later keyset failed
        if applied:
            await node.rules_loops.spread_applied(applied)
    return out


async def _revoke_each(node: NodeRuntime, keysets: list[str], subject: str, entry: kr.Revoked, now: int,
                       out: list[dict[str, Any]], applied: list[CoSigned]) -> None:
    for keyset_id in keysets:
        book = node.rules.book(keyset_id)
        view = keyset_view(node.store, keyset_id)
        if subject == "shard" and view is not None:
            if not 1 <= entry.index <= view.shares:
                raise ControlError(f"keyset {keyset_id[:12]}… has shard indices 1 to {view.shares}", 2)
            entry = dataclasses.replace(entry, epoch=view.epoch)  # that index of the epoch in force
        got = node.rules.propose_revocation(keyset_id, entry, now)
        if got is None:
            in_force = book is not None and entry.key in book.revoked.keys
            out.append({"keyset": keyset_id, "kind": "revocations", "changed": False,
                        "state": "in effect" if in_force else "waiting for signatures (in an open proposal)",
                        "version": book.version("revocations") if book else 0, "proposal": "",
                        "signatures": 0, "needed": book.rule.quorum if book else 0,
                        "record": {"revoked": [entry.to_json()]}})
            continue
        cs, outcome = got
        if outcome == "applied":  # published by revoke, many in one gossip message
            cs = node.rules.completed(cs)
            applied.append(cs)
            out.append(answer(node, cs, outcome))
        else:
            out.append(await _spread(node, cs, outcome))


async def sign(node: NodeRuntime, proposal: str) -> dict[str, Any]:
    cs, outcome = node.rules.sign(proposal, node.now())
    return await _spread(node, cs, outcome)
