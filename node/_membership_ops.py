"""What `admit`, `sign` and `membership revoke` do, for the control socket and offline alike.

Each takes the command's arguments (a JSON-shaped dict), changes the node's
membership through :class:`Members`, and returns the co-signed record (to
publish, when the node runs) and the answer the CLI prints.
"""

from __future__ import annotations

import base64
from typing import Any

from shardnet import protocol as p
from shardnet.protocol import CoSigned, JoinRequest

from ._members import Members
from ._store import Store

DEFAULT_ROLES = ("custodian", "approver")


def answer(members: Members, cs: CoSigned, outcome: str | None) -> dict[str, Any]:
    rec = p.membership.parse_body(cs.body)
    done = members.view.complete(cs)
    return {"proposal": cs.id.hex(), "kind": "admission" if isinstance(rec, p.Admission) else "revocation",
            "peer_id": rec.peer_id, "signatures": len(cs.signatures), "needed": members.genesis.quorum,
            "state": "in effect" if done else "waiting for signatures", "changed": outcome is not None,
            "record": rec.to_json()}


def admit(members: Members, store: Store, args: dict[str, Any], now: int) -> tuple[CoSigned, dict[str, Any]]:
    roles = list(args.get("roles") or DEFAULT_ROLES)
    hpke = None
    if args.get("join_request"):
        who: JoinRequest | str = JoinRequest.from_bytes(base64.b64decode(args["join_request"]))
    else:
        who = str(args["peer"]).strip()
        p.public_key_of(who)
        row = store.custodian(who)
        if row is not None:  # the keys it announces itself; the authority vouches for them by signing
            hpke = p.Descriptor.from_bytes(row["descriptor"]).hpke
    cs, outcome = members.admit(who, org=str(args["org"]), country=str(args["country"]), city=args.get("city"),
                                roles=roles, name=args.get("name"), hpke=hpke, now=now,
                                expires=int(args["expires"]))
    return cs, answer(members, cs, outcome)


def sign(members: Members, args: dict[str, Any], now: int) -> tuple[CoSigned, dict[str, Any]]:
    cs, outcome = members.sign(str(args["proposal"]), now)
    return cs, answer(members, cs, outcome)


def revoke(members: Members, args: dict[str, Any], now: int) -> tuple[CoSigned, dict[str, Any]]:
    cs, outcome = members.revoke_member(str(args["peer"]).strip(), str(args["reason"]), now)
    return cs, answer(members, cs, outcome)
