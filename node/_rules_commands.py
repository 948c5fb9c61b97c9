"""The CLI of a keyset's rules: `shardnet policy publish|show`, `shardnet revoke`,
`shardnet revocations`, `shardnet withdraw`. Proposals are co-signed with `shardnet sign` (``_network_commands``).

Publishing and revoking go through the running node (it hands the proposal to
the keyset's other authorities, and gossips the record once it is in force);
`policy show` and `revocations` read a stopped node's database too.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

from shardnet import protocol as p

from ._cli_base import EXIT_OK, Parser, UsageError, emit, parse_within, spell_duration
from ._home import Home


def _rules(home: Home) -> Any:
    from ._rules import Rules

    store = home.open_store()
    return store, Rules(store, home.identity())


def say(res: dict[str, Any]) -> str:
    """One line for a rule proposal or record: what it is and where its signatures stand."""
    what = f"{res['kind']} version {res['version']} of keyset {res['keyset'][:12]}…"
    if not res["changed"]:
        return f"{what}: nothing new ({res['state']}, {res['signatures']} of {res['needed']} signatures)"
    if res["state"] == "in effect":
        return f"{what}: in effect ({res['signatures']} of {res['needed']} signatures), gossiped to the network"
    return (f"proposal {res['proposal']}: {what}, {res['signatures']} of {res['needed']} signatures\n"
            f"the keyset's other authorities add theirs with: shardnet sign --home DIR {res['proposal'][:12]}")


def _policy_file(f: pathlib.Path) -> str:
    if not f.is_file():
        raise UsageError(f"{f}: no such file")
    raw = f.read_bytes()
    if len(raw) > p.keyset_rules.MAX_RULE_RECORD:
        raise UsageError(f"{f}: over {p.keyset_rules.MAX_RULE_RECORD} bytes, too large for a policy")
    try:
        text = raw.decode("utf-8")
        p.Policy(text)
    except UnicodeDecodeError:
        raise UsageError(f"{f}: not UTF-8 text") from None
    except p.PolicyError as exc:
        raise UsageError(f"{f}: not a valid policy, nothing was signed: {exc}") from None
    return text


def cmd_policy(args: argparse.Namespace) -> int:
    from ._commands import _ask

    if args.action == "publish":
        schedule = {k: getattr(args, k) for k in p.keyset_rules.SCHEDULE_KEYS if getattr(args, k) is not False}
        if args.file is None and args.placement is None and not schedule:
            raise UsageError("policy publish needs a FILE, --placement, --refresh-every or --rewrap-every: "
                             "what to change")
        text = None if args.file is None else _policy_file(pathlib.Path(args.file))
        res = _ask(args, "policy-publish", {"keyset": args.keyset, "policy": text, "placement": args.placement,
                                            "schedule": schedule})
        emit(args, res, say(res))
        return EXIT_OK
    ref = args.keyset

    def offline(home: Home) -> Any:
        store, rules = _rules(home)
        with store:
            keyset_id = ref
            try:
                keyset_id = store.find_keyset(ref)["keyset_id"]
            except LookupError:
                pass
            return rules.show(keyset_id)

    res = _ask(args, "policy-show", {"keyset": ref}, offline=offline)
    signers = ", ".join(res["signers"])
    lines = [f"keyset     {res['keyset']}",
             f"version    {res['version']} (signed by {signers})",
             f"policy     sha256 {res['policy_sha256']}",
             f"placement  {res['placement'] or '(none)'}",
             f"schedule   refresh every {spell_duration(res['schedule']['refresh_every'])}, "
             f"rewrap every {spell_duration(res['schedule']['rewrap_every'])}",
             f"authorities {res['authority_quorum']} of {', '.join(res['authorities'])}"]
    if res.get("violations"):
        lines.append(f"violated   by the holders of epoch {res['epoch']}: {'; '.join(res['violations'])} "
                     "(a reshare places by it)")
    for r in res["proposals"]:
        lines.append(f"proposal   {r['proposal'][:12]}: version {r['version']}, {r['signatures']} of {r['needed']}")
    lines += ["", res["policy"].rstrip()]
    emit(args, res, "\n".join(lines))
    return EXIT_OK


def cmd_revoke(args: argparse.Namespace) -> int:
    from ._commands import _ask

    picked = [(k, v) for k, v in (("custodian", args.custodian), ("shard", args.shard),
                                  ("requester", args.requester)) if v]
    if len(picked) != 1:
        raise UsageError("revoke needs exactly one of --custodian PEER, --shard KEYSET:INDEX, --requester PEER")
    subject, value = picked[0]
    if subject == "shard" and args.keyset:
        raise UsageError("--shard names its keyset already (KEYSET:INDEX)")
    res = _ask(args, "revoke", {"subject": subject, "value": value, "keyset": args.keyset, "reason": args.reason})
    emit(args, res, "\n".join(say(r) for r in res))
    return EXIT_OK


def cmd_revocations(args: argparse.Namespace) -> int:
    from ._commands import _ask, _short, _table, _ts

    def offline(home: Home) -> Any:
        store, rules = _rules(home)
        with store:
            return rules.revocations()

    rows = _ask(args, "revocations", offline=offline)
    table = _table([[r["keyset"][:12], str(r["version"]), r["subject"],
                     _short(r["peer"]) if "peer" in r else str(r["index"]), _ts(r["time"]), r["reason"][:40],
                     ",".join(_short(s) for s in r["signers"])] for r in rows],
                   ["KEYSET", "VERSION", "SUBJECT", "WHO", "SINCE", "REASON", "SIGNED BY"])
    emit(args, rows, table if rows else "no revocations in force")
    return EXIT_OK


def cmd_withdraw(args: argparse.Namespace) -> int:
    from ._commands import _ask

    def offline(home: Home) -> Any:
        store, rules = _rules(home)
        with store:
            return rules.withdraw(args.proposal)

    res = _ask(args, "withdraw", {"proposal": args.proposal}, offline=offline)
    emit(args, res, f"proposal {res['proposal']} ({res['kind']} version {res['version']} of keyset "
                    f"{res['keyset'][:12]}…) withdrawn here: it no longer binds what this node signs "
                    "(the other authorities' copies keep its signatures)")
    return EXIT_OK


def register(sub: Any, home_arg: Any) -> None:
    pp = sub.add_parser("policy", help="a keyset's request policy and placement: publish a new version, or show it")
    psub = pp.add_subparsers(dest="policy_command", metavar="ACTION", parser_class=Parser)
    psub.required = True
    sp = psub.add_parser("publish", help="propose a new policy version (then: shardnet sign at the other "
                                         "authorities)")
    home_arg(sp)
    sp.add_argument("file", metavar="FILE", nargs="?", help="the Cedar request policy (default: kept)")
    sp.add_argument("--keyset", required=True, metavar="KEYSET")
    sp.add_argument("--placement", metavar="EXPR", help="a new placement expression (default: kept)")
    for flag, what in (("--refresh-every", "refreshes"), ("--rewrap-every", "rewraps")):
        sp.add_argument(flag, type=parse_within, default=False, metavar="DURATION",
                        help=f"how often its authorities {what} the keyset, or 'never' (default: kept)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_policy, action="publish")
    sp = psub.add_parser("show", help="the policy version in force, its signers, and open proposals")
    home_arg(sp)
    sp.add_argument("keyset", metavar="KEYSET")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_policy, action="show")

    sp = sub.add_parser("revoke", help="propose a revocation: a custodian, one shard, or a requester of a keyset")
    home_arg(sp)
    sp.add_argument("--custodian", metavar="PEER")
    sp.add_argument("--shard", metavar="KEYSET:INDEX")
    sp.add_argument("--requester", metavar="PEER")
    sp.add_argument("--keyset", metavar="KEYSET",
                    help="default: every keyset this node is a policy authority of")
    sp.add_argument("--reason", required=True, metavar="TEXT")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_revoke)

    sp = sub.add_parser("withdraw", help="forget an open keyset rule proposal this node signed, so that it "
                                         "signs lists without its revocations")
    home_arg(sp)
    sp.add_argument("proposal", metavar="PROPOSAL_ID", help="the id, or a unique prefix of it")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_withdraw)

    sp = sub.add_parser("revocations", help="revocations in force, by keyset, with versions and signers")
    home_arg(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_revocations)
