"""Read-side queries behind `status`, `custodians`, `key list|show` and `audit verify`.

Plain functions of a :class:`Store` (and, when the node runs, its live network
facts), so the control socket and the offline fallback give the same answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shardnet import protocol as p
from shardnet.protocol import ApprovalRule, AuditChainBroken, Descriptor, wire
from shardnet.protocol import epoch_records as er

from ._epoch_view import DEFEATS, current_record, record_view
from ._rules import read_book
from ._store import KeysetNotFound, Store


def custodians(store: Store, me: str, now: int, heard: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Every descriptor held. Its name, country, city and org are what the custodian says
    of itself (placement reads the vouched ones: ``membership``). ``heard``: when the
    running node last heard each one (offline: when its row last changed)."""
    out = []
    for row in store.custodians():
        d = Descriptor.from_bytes(row["descriptor"])
        last = (heard or {}).get(d.peer_id, row["updated_at"])
        out.append({
            "peer_id": d.peer_id, "name": d.name, "country": d.country, "city": d.city,
            "continent": d.continent, "org": d.org, "addrs": list(d.addrs), "kems": list(d.kems),
            "version": d.version, "seq": d.seq, "updated_at": row["updated_at"], "self": d.peer_id == me,
            "last_heard": last, "stale": d.peer_id != me and now - last > wire.DESCRIPTOR_TTL,
            "self_declared": True,
        })
    return sorted(out, key=lambda c: (not c["self"], c["country"], c["name"]))


def _names(store: Store) -> dict[str, dict[str, str]]:
    return {r["peer_id"]: {"name": r["name"] or "", "country": r["country"] or ""} for r in store.custodians()}


def keysets(store: Store) -> list[dict[str, Any]]:
    out = []
    for ks in store.keysets():
        item: dict[str, Any] = {
            "keyset": ks["keyset_id"], "role": ks["role"], "threshold": ks["threshold"],
            "shares": ks["shares"], "epoch": ks["epoch"], "status": ks["status"], "created": ks["created"],
            "not_after": ks["not_after"], "owner": ks["owner"],
        }
        if ks["role"] == "owner":
            states = [r["state"] for r in store.outbox(ks["keyset_id"])]
            item["deliveries"] = {s: states.count(s) for s in ("delivered", "pending", "refused")}
        view = record_view(store, ks["record"])
        item.update(threshold=view.threshold, shares=view.shares, epoch=view.epoch)
        item["held"] = sorted(h["idx"] for h in store.held_shards(ks["keyset_id"]) if h["epoch"] == view.epoch)
        out.append(item)
    for known in store.known_keysets():
        rec = record_view(store, known["record"])
        out.append({
            "keyset": rec.id_hex, "role": "approver", "threshold": rec.threshold, "shares": rec.shares,
            "epoch": rec.epoch, "status": "active", "created": rec.created, "not_after": rec.not_after,
            "owner": known["owner"], "held": [],
        })
    return sorted(out, key=lambda k: k["created"])


def _find(store: Store, prefix: str) -> dict[str, Any]:
    """A keyset row by id or unique prefix, including keysets this node only approves."""
    try:
        return dict(store.find_keyset(prefix))
    except KeysetNotFound:
        known = [k for k in store.known_keysets() if k["keyset_id"].startswith(prefix.lower())]
        if len(known) != 1:
            raise
        return {"keyset_id": known[0]["keyset_id"], "record": known[0]["record"], "role": "approver",
                "status": "active", "owner": known[0]["owner"]}


MemberState = Callable[[str], str]
"""``state(peer)``: the peer's membership now (``admitted``, ``revoked``, ``expired``, ...)."""


def stored_membership(store: Store, now: int) -> MemberState:
    """Membership as the node's database holds it (for commands on a stopped node); every
    peer is ``unknown`` in a home that has joined no network."""
    raw = store.genesis()
    if raw is None:
        return lambda peer: "unknown"
    view = p.Membership(p.Genesis.from_bytes(raw))
    for data in store.membership_records():
        view.restore(data)
    return lambda peer: view.state(peer, now)


def keyset_detail(store: Store, prefix: str, member_state: MemberState | None = None) -> dict[str, Any]:
    """One keyset. With ``member_state``: each shard's custodian's membership, and
    ``at_risk``, the custodians holding a shard that the network does not admit now."""
    row = _find(store, prefix)
    base = p.Keyset.from_bytes(row["record"])
    ks = er.at_epoch(base, current_record(store, base.id_hex))
    names = _names(store)
    detail: dict[str, Any] = {
        "keyset": ks.id_hex, "role": row["role"], "status": row["status"], "owner": row["owner"],
        "threshold": ks.threshold, "shares": ks.shares, "epoch": ks.epoch, "kem": ks.kem,
        "created": ks.created, "not_after": ks.not_after, "public_key": ks.public_key.hex(),
        "placement": ks.attrs.get("placement", ""), "redundancy": ks.attrs.get("redundancy", 1),
        "policy_sha256": ks.policy_hash.hex(), "revision": ks.revision,
        "deliver_within": ks.attrs.get("deliver_within"),
    }
    try:
        rule = ApprovalRule.of(ks)
        detail["approvers"], detail["quorum"] = sorted(rule.approvers), rule.quorum
    except p.RemoteProtocolError:
        detail["approvers"], detail["quorum"] = [], 0
    authorities = er.AuthorityRule.of(base)
    detail["authorities"], detail["authority_quorum"] = list(authorities.peers), authorities.quorum
    detail["epochs"] = _epoch_history(store, base)
    book = read_book(store, ks.id_hex)
    if book is not None:
        detail["policy_version"], detail["placement"] = book.version("policy"), book.placement
        detail["revoked"] = [e.to_json() for e in book.revoked.entries]
        if book.policy is not None:
            detail["policy_sha256"] = book.policy[1].digest.hex()
    detail["erased"] = [{"holder": e["holder"], "epoch": e["epoch"], "index": e["idx"], "at": e["received_at"],
                         "record": bytes(e["record"]).hex()} for e in store.erasures(ks.id_hex)]
    if detail["epochs"]:
        last = detail["epochs"][-1]["action"]
        detail["last_action"] = {"action": last, "epoch": ks.epoch, "defeats": DEFEATS[last]}
    shards = []
    if row["role"] == "owner" and ks.epoch == base.epoch:
        for r in store.outbox(ks.id_hex):
            n = names.get(r["custodian"], {})
            shards.append({
                "index": r["idx"], "epoch": r["epoch"], "custodian": r["custodian"],
                "name": n.get("name", ""), "country": n.get("country", ""), "state": r["state"],
                "attempts": r["attempts"], "last_error": r["last_error"], "updated_at": r["updated_at"],
                "deliver_by": r["deliver_by"],
            })
    else:
        for i, hs in sorted(ks.attrs.get("holders", {}).items(), key=lambda kv: int(kv[0])):
            for h in hs:
                n = names.get(h, {})
                shards.append({"index": int(i), "epoch": ks.epoch, "custodian": h, "name": n.get("name", ""),
                               "country": n.get("country", ""), "state": "placed"})
    detail["shards"] = sorted(shards, key=lambda s: (s["index"], s["custodian"]))
    if row["role"] == "owner":
        detail["reserves"] = sorted({r["idx"] for r in store.outbox(ks.id_hex) if r["reserve"] is not None})
    detail["held"] = sorted(h["idx"] for h in store.held_shards(ks.id_hex) if h["epoch"] == ks.epoch)
    if member_state is not None:
        for s in detail["shards"]:
            s["membership"] = member_state(s["custodian"])
        detail["at_risk"] = sorted({s["custodian"] for s in detail["shards"] if s["membership"] != "admitted"
                                    and s["state"] in ("pending", "delivered", "placed")})
    return detail


def _epoch_history(store: Store, base: p.Keyset) -> list[dict[str, Any]]:
    out = []
    for row in store.epochs(base.id_hex):
        cs = p.CoSigned.restore(row["record"], max_size=er.MAX_EPOCH_RECORD)
        rec = er.EpochRecord.from_body(cs.body)
        out.append({"epoch": rec.epoch, "action": rec.action, "threshold": rec.threshold, "shares": rec.shares,
                    "holders": {str(i): list(hs) for i, hs in sorted(rec.holders.items())},
                    "signers": sorted(p.peer_id_of(k) for k in cs.signers), "created": rec.created,
                    "applied_at": row["received_at"], "record": rec.digest.hex()})
    return out


def expiry_warnings(store: Store, now: int) -> list[str]:
    """The keysets this node owns or holds a shard of that are within their expiry margin
    and not renewed, renewed late, or expired (``triggers.warnings``)."""
    out = []
    for row in store.keysets():
        base = p.Keyset.from_bytes(row["record"])
        view = record_view(store, row["record"])
        if view.not_after is None:
            continue
        lifetime = base.not_after - base.created if base.not_after is not None else view.not_after - base.created
        out += p.triggers.expiry(base.id_hex, (view.not_after - lifetime, view.not_after),
                                 bool(base.attrs.get("renew")), now)
    return out


def keysets_at_risk(store: Store, member_state: MemberState) -> list[str]:
    """Keysets we own with a shard on a custodian the network does not admit now."""
    return [ks["keyset_id"] for ks in store.keysets(role="owner")
            if any(member_state(r["custodian"]) != "admitted" for r in store.outbox(ks["keyset_id"])
                   if r["state"] in ("pending", "delivered"))]


def audit_verify(store: Store, me_public: bytes) -> dict[str, Any]:
    """Verify the whole chain, then the Merkle tree over it and the latest checkpoint;
    raises AuditChainBroken at the first bad entry."""
    from ._audit_log import verify_tree

    n = store.verify_audit({me_public})
    tree = verify_tree(store, p.peer_id_of(me_public))
    head = store.audit_head()
    kinds: dict[str, int] = {}
    for entry in store.audit_entries():
        kinds[entry.kind] = kinds.get(entry.kind, 0) + 1
    return {"entries": n, "head": head.hash.hex() if head else None, "ok": True, "kinds": kinds, "tree": tree}


def status(store: Store, me: str, cfg: dict[str, Any], live: dict[str, Any] | None,
           member_state: MemberState, now: int) -> dict[str, Any]:
    owned = store.keysets(role="owner")
    raw = store.genesis()
    pending = len(store.pending())
    return {
        "peer_id": me, "name": cfg["name"], "country": cfg["country"], "city": cfg.get("city", ""),
        "org": cfg.get("org", ""), "running": live is not None,
        "addrs": (live or {}).get("addrs", []), "peers": (live or {}).get("peers", []),
        "uptime_s": round(live["uptime_s"], 1) if live else None,
        # Epoch asks this node sent as a coordinator since it started, and the requests they took (batched).
        "epoch_asks": (live or {}).get("epoch_asks"),
        "custodians": len(store.custodians()), "shards_held": len(store.held_shards()),
        "keysets_owned": len(owned), "deliveries_pending": pending,
        "network": p.Genesis.from_bytes(raw).network_id.hex() if raw else None,
        "membership": member_state(me), "keysets_at_risk": keysets_at_risk(store, member_state),
        "expiry_warnings": expiry_warnings(store, now),
    }


__all__ = ["AuditChainBroken", "audit_verify", "custodians", "keyset_detail", "keysets", "keysets_at_risk", "status",
           "stored_membership"]
