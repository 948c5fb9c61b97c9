"""Membership commands: network create|request|join, admit, proposals, sign, membership.

A network file (``network.toml``) carries the signed genesis and, for people,
what is in it. Every node of the network gets the same file; nothing in it is
secret. ``admit``, ``sign`` and ``membership revoke`` go through the running
node when there is one (it gossips the record at once) and work on the
stopped node's database otherwise (its peers pull the record once it runs).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import pathlib
import tomllib
from typing import Any

from shardnet import protocol as p
from shardnet.protocol import Genesis, JoinRequest

from ._cli_base import EXIT_OK, Parser, UsageError, emit, positive, spell_duration
from ._clock import system_clock
from ._home import Home
from ._members import Members, NoNetwork
from ._store import Store

MAX_NETWORK_FILE = 64 * 1024


# -- the network file -----------------------------------------------------------------


def network_file_text(g: Genesis) -> str:
    auth = ", ".join(json.dumps(p.peer_id_of(k)) for k in g.authorities)
    return (
        "# shardnet network file: give it to every node that joins (shardnet network join).\n"
        "# The genesis line is the signed record; the lines above it say what it holds.\n"
        f"name = {json.dumps(g.name)}\n"
        f"id = \"{g.network_id.hex()}\"\n"
        f"authorities = [{auth}]\n"
        f"authority_quorum = {g.quorum}\n"
        f"created = {g.created}\n"
        f"genesis = \"{base64.b64encode(g.signed).decode()}\"\n"
    )


def read_network_file(path: str | os.PathLike[str]) -> Genesis:
    f = pathlib.Path(path)
    if f.is_dir():
        raise ValueError(f"{f}: a directory, not a network file")
    raw = f.read_bytes()
    if len(raw) > MAX_NETWORK_FILE:
        raise ValueError(f"{f}: too large for a network file")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{f}: not a shardnet network file ({exc})") from None
    if not isinstance(doc.get("genesis"), str):
        raise ValueError(f"{f}: not a shardnet network file (it has no genesis line)")
    try:
        g = Genesis.from_bytes(base64.b64decode(doc["genesis"], validate=True))
    except (ValueError, p.ShardnetError) as exc:
        raise ValueError(f"{f}: its genesis record is damaged ({exc})") from None
    if doc.get("id") != g.network_id.hex():
        raise ValueError(f"{f}: its id line does not match its genesis record (the file was edited)")
    return g


def _members(store: Store, home: Home) -> Members:
    try:
        return Members.of(store, home.identity())
    except NoNetwork as exc:
        raise UsageError(str(exc)) from None


def join(home: Home, g: Genesis) -> bool:
    with home.open_store() as store:
        return store.set_network(g.network_id, g.signed, now=int(system_clock()))


# -- commands ------------------------------------------------------------------------


def _home(args: argparse.Namespace) -> Home:
    from ._commands import _home as home_of

    home = home_of(args)
    home.config()
    return home


def cmd_network_create(args: argparse.Namespace) -> int:
    from . import _membership_ops as ops
    from ._keystore import FileKeystore

    home = _home(args)
    key = home.identity()
    authorities = [p.public_key_of(a) for a in args.authorities or []]
    total = len({*authorities, key.public_key().public_bytes_raw()})
    quorum = args.authority_quorum or (1 if total == 1 else total // 2 + 1)
    if not 1 <= quorum <= total:
        raise UsageError(f"--authority-quorum must be 1..{total} for {total} authorities")
    out = pathlib.Path(args.out)
    if out.exists() and not args.force:
        raise UsageError(f"{out} already exists (use --force to overwrite)")
    with home.open_store() as store:
        if store.genesis() is not None:
            raise UsageError(f"this home already belongs to network "
                             f"{Genesis.from_bytes(store.genesis() or b'').prefix}; a home joins one network only")
    now = int(system_clock())
    g = Genesis.make(key, name=args.name, authorities=authorities, quorum=quorum, created=now)
    cfg = home.config()
    own = {"org": cfg.get("org") or cfg["name"], "country": cfg["country"], "city": cfg.get("city", ""),
           "name": cfg["name"], "roles": list(ops.DEFAULT_ROLES), "hpke": FileKeystore.from_home(home).hpke_public()}
    p.Admission.make_body(network_id=g.network_id, peer_id=home.peer_id(), issued=now, not_after=now + args.expires,
                          **own)  # every check before anything is written
    from ._files import write_atomic

    # The file first: a home bound to a network whose file was never written is stuck.
    write_atomic(out, network_file_text(g).encode(), 0o644, overwrite=args.force)
    with home.open_store() as store:
        store.set_network(g.network_id, g.signed, now=now)
        members = Members(store, key, g)
        # The creator's own admission: in effect at once with K = 1, a proposal otherwise.
        cs, outcome = members.admit(home.peer_id(), now=now, expires=args.expires, **own)
        answer = ops.answer(members, cs, outcome)
    info = {"network": g.network_id.hex(), "prefix": g.prefix, "name": g.name, "file": str(out),
            "authorities": [p.peer_id_of(k) for k in g.authorities], "authority_quorum": g.quorum,
            "self_admission": answer}
    emit(args, info, f"created network {g.name} ({g.prefix}), {g.quorum} of {len(g.authorities)} authorities "
              f"admit custodians\nnetwork file {out}: give it to every node that joins\n"
              f"this node's own admission: {answer['state']} (proposal {answer['proposal'][:12]})")
    return EXIT_OK


def cmd_network_join(args: argparse.Namespace) -> int:
    home = _home(args)
    g = read_network_file(args.file)
    fresh = join(home, g)
    info = {"network": g.network_id.hex(), "prefix": g.prefix, "name": g.name, "joined": fresh}
    if g.is_authority(home.peer_id()):
        nxt = ("this node is one of its authorities: run it with --bootstrap at another authority's node, "
               "then co-sign what waits (shardnet proposals, shardnet sign)")
    else:
        nxt = "ask its authorities to admit this node: shardnet network request --home DIR --out join.json"
    emit(args, info, f"{'joined' if fresh else 'already in'} network {g.name} ({g.prefix}); {nxt}")
    return EXIT_OK


def cmd_network_request(args: argparse.Namespace) -> int:
    from ._files import write_atomic
    from ._keystore import FileKeystore

    home = _home(args)
    cfg = home.config()
    with home.open_store() as store:
        raw = store.genesis()
    nid = Genesis.from_bytes(raw).network_id if raw else b""
    j = JoinRequest.make(home.identity(), network_id=nid, hpke=FileKeystore.from_home(home).hpke_public(),
                         name=cfg["name"], org=cfg.get("org", ""), country=cfg["country"], city=cfg.get("city", ""),
                         time=int(system_clock()))
    doc: dict[str, Any] = {"join_request": base64.b64encode(j.signed).decode(), "peer_id": j.peer_id, "name": j.name,
           "org": j.org, "country": j.country, "city": j.city, "kems": sorted(j.hpke),
           "hpke_sha256": p.membership.hpke_fingerprints(j.hpke),
           "network": nid.hex() or None}
    out = pathlib.Path(args.out)
    write_atomic(out, (json.dumps(doc, indent=1) + "\n").encode(), 0o644, overwrite=args.force)
    prints = ", ".join(f"{k} {v}" for k, v in p.membership.hpke_fingerprints(j.hpke).items())
    emit(args, doc, f"join request for {j.name} ({j.peer_id}) written to {out}\n"
              f"HPKE key fingerprints (tell the authorities out of band): {prints}\n"
              "give it to an authority of the network: shardnet admit --home DIR join.json --org ... --country ...")
    return EXIT_OK


def _read_join(path: str) -> str:
    f = pathlib.Path(path)
    raw = f.read_bytes()
    if len(raw) > MAX_NETWORK_FILE:
        raise ValueError(f"{f}: too large for a join request")
    try:
        b64 = str(json.loads(raw)["join_request"])
        JoinRequest.from_bytes(base64.b64decode(b64, validate=True))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{f}: not a shardnet join request ({exc})") from None
    return b64


def _act(args: argparse.Namespace, command: str, cargs: dict[str, Any]) -> dict[str, Any]:
    """Through the running node, or on the stopped node's database."""
    from . import _membership_ops as ops
    from ._commands import _ask

    def offline(home: Home) -> Any:
        with home.open_store() as store:
            members, now = _members(store, home), int(system_clock())
            if command == "admit":
                return ops.admit(members, store, cargs, now)[1]
            if command == "sign":
                if store.proposal(str(cargs["proposal"])) is None and store.rule_proposal(str(cargs["proposal"])):
                    raise UsageError("that is a keyset rule's proposal: start the node to sign it (the running "
                                     "node hands it to the keyset's other authorities)")
                return ops.sign(members, cargs, now)[1]
            return ops.revoke(members, cargs, now)[1]

    result: dict[str, Any] = _ask(args, command, cargs, offline=offline)
    return result


def _say(res: dict[str, Any]) -> str:
    if "keyset" in res:  # a keyset rule's proposal
        from ._rules_commands import say
        return say(res)
    what = f"{res['kind']} of {res['peer_id']}"
    if not res["changed"]:
        return f"{what}: nothing new ({res['signatures']} of {res['needed']} signatures)"
    if res["state"] == "in effect":
        return f"{what}: in effect ({res['signatures']} of {res['needed']} signatures)"
    return (f"proposal {res['proposal']}: {what}, {res['signatures']} of {res['needed']} signatures\n"
            f"the other authorities add theirs with: shardnet sign --home DIR {res['proposal'][:12]}\n"
            "(proposals travel between running nodes: each authority's node must be up and connected "
            "to this one to see it)")


def cmd_admit(args: argparse.Namespace) -> int:
    who = args.who
    cargs: dict[str, Any] = {"org": args.org, "country": args.country.upper(), "city": args.city,
                             "roles": args.roles, "name": args.name, "expires": args.expires}
    if pathlib.Path(who).is_file():
        cargs["join_request"] = _read_join(who)
    else:
        try:
            p.public_key_of(who)
        except p.MalformedEncoding:
            raise UsageError(f"{who}: neither a join request file nor a peer id") from None
        cargs["peer"] = who
    res = _act(args, "admit", cargs)
    emit(args, res, _say(res))
    return EXIT_OK


def cmd_sign(args: argparse.Namespace) -> int:
    res = _act(args, "sign", {"proposal": args.proposal})
    emit(args, res, _say(res))
    return EXIT_OK


def cmd_proposals(args: argparse.Namespace) -> int:
    from ._commands import _ask, _short, _table

    def offline(home: Home) -> Any:
        from ._rules import Rules

        with home.open_store() as store:
            return _members(store, home).proposals(int(system_clock())) + Rules(store, home.identity()).proposals()

    rows = _ask(args, "proposals", offline=offline)
    table = _table([[r["proposal"][:12], r["kind"], _short(r["peer_id"]) if "peer_id" in r else r["keyset"][:12],
                     f"{r['signatures']}/{r['needed']}", "yes" if r["signed_by_me"] else "no",
                     _describe(r["record"])] for r in rows],
                   ["PROPOSAL", "KIND", "PEER/KEYSET", "SIGNED", "BY YOU", "WHAT"])
    emit(args, rows, table if rows else "no open proposals")
    return EXIT_OK


def _describe(rec: dict[str, Any]) -> str:
    if rec.get("kind") == "policy":
        every = rec.get("schedule")
        return (f"policy version {rec['version']}: sha256 {rec['policy_sha256'][:16]}…, "
                f"placement {rec['placement'] or '(none)'}" + (
                    f", refresh every {spell_duration(every['refresh_every'])}, rewrap every "
                    f"{spell_duration(every['rewrap_every'])}" if every else ""))
    if rec.get("kind") == "revocations":
        return f"revocations version {rec['version']}: " + "; ".join(
            f"{r['subject']} {r.get('peer', r.get('index'))} ({r['reason']})" for r in rec["revoked"])
    if "org" in rec:
        prints = ",".join(f"{k}:{v}" for k, v in rec["hpke_sha256"].items())
        return (f"{rec['name']} · {rec['org']} · {rec['country']}{'/' + rec['city'] if rec['city'] else ''} · "
                f"{','.join(rec['roles'])} · until {_day(rec['not_after'])} · keys {prints}")
    return f"revoke: {rec['reason']}"


def _day(t: int) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d")


def cmd_membership(args: argparse.Namespace) -> int:
    from ._commands import _ask, _table

    if args.action == "revoke":
        if not args.peer or not args.reason:
            raise UsageError("membership revoke needs PEER and --reason TEXT")
        res = _act(args, "member-revoke", {"peer": args.peer, "reason": args.reason})
        emit(args, res, _say(res))
        return EXIT_OK

    def offline(home: Home) -> Any:
        with home.open_store() as store:
            return _members(store, home).listing(int(system_clock()))

    rows = _ask(args, "membership", offline=offline)
    table = _table([[r["name"], r["org"], r["country"], r["city"], ",".join(r["roles"]), r["state"],
                     _day(r["not_after"]), r["peer_id"]] for r in rows],
                   ["NAME", "ORG", "CC", "CITY", "ROLES", "STATE", "EXPIRES", "PEER ID"])
    n = sum(r["state"] == "admitted" for r in rows)
    emit(args, rows, f"{table}\n{n} admitted" if rows else "no admitted members yet")
    return EXIT_OK


# -- parser --------------------------------------------------------------------------


def _roles(text: str) -> list[str]:
    roles = sorted({r.strip() for r in text.split(",") if r.strip()})
    bad = [r for r in roles if r not in p.membership.ROLES]
    if not roles or bad:
        raise argparse.ArgumentTypeError(f"roles are {', '.join(p.membership.ROLES)}, comma-separated")
    return roles


def register(sub: Any, home_arg: Any, duration: Any, peer_list: Any) -> None:
    np_ = sub.add_parser("network", help="create or join a network, or ask to be admitted to one")
    nsub = np_.add_subparsers(dest="network_command", metavar="ACTION", parser_class=Parser)
    nsub.required = True
    sp = nsub.add_parser("create", help="create a network; this node becomes its first authority")
    home_arg(sp)
    sp.add_argument("--out", required=True, metavar="FILE", help="the network file to write (network.toml)")
    sp.add_argument("--name", required=True)
    sp.add_argument("--authorities", type=peer_list, metavar="PEER,...",
                    help="the other admission authorities (peer ids); default: this node alone")
    sp.add_argument("--authority-quorum", type=positive, metavar="K",
                    help="signatures an admission needs (default: 1 alone, else a majority)")
    sp.add_argument("--expires", type=duration, default=365 * 86400, metavar="DURATION",
                    help="of this node's own admission (default 365d)")
    sp.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_network_create)
    sp = nsub.add_parser("join", help="make this home a node of the network in FILE")
    home_arg(sp)
    sp.add_argument("file", metavar="FILE", help="the network file (network.toml)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_network_join)
    sp = nsub.add_parser("request", help="write a signed join request to hand to the authorities")
    home_arg(sp)
    sp.add_argument("--out", required=True, metavar="FILE")
    sp.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_network_request)

    sp = sub.add_parser("admit", help="propose the admission of a node (authorities only)")
    home_arg(sp)
    sp.add_argument("who", metavar="JOIN.json|PEER", help="a join request file, or a peer id in the directory")
    sp.add_argument("--org", required=True)
    sp.add_argument("--country", required=True, metavar="CC")
    sp.add_argument("--city")
    sp.add_argument("--name", help="default: the name in the join request")
    sp.add_argument("--roles", type=_roles, metavar="ROLE,...", help="custodian, approver, observer "
                    "(default custodian,approver)")
    sp.add_argument("--expires", type=duration, default=365 * 86400, metavar="DURATION", help="default 365d")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_admit)

    sp = sub.add_parser("proposals", help="multi-authority records waiting for signatures")
    home_arg(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_proposals)

    sp = sub.add_parser("sign", help="co-sign a proposal (an admission, a membership revocation, or a keyset's "
                                     "policy version or revocation list)")
    home_arg(sp)
    sp.add_argument("proposal", metavar="PROPOSAL_ID", help="the id, or a unique prefix of it")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_sign)

    sp = sub.add_parser("membership", help="admitted members; `membership revoke PEER --reason` to remove one")
    home_arg(sp)
    sp.add_argument("action", nargs="?", choices=("list", "revoke"), default="list")
    sp.add_argument("peer", nargs="?", metavar="PEER")
    sp.add_argument("--reason", metavar="TEXT")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_membership)
