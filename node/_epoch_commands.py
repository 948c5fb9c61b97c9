"""The CLI of epoch changes: `shardnet refresh` and `shardnet reshare` (run on a
policy authority's node; the round is ``_epoch_round``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from shardnet.protocol import wire

from ._cli_base import EXIT_FAIL, EXIT_OK, emit, positive


def _progress(ev: dict[str, Any]) -> None:
    if not sys.stderr.isatty():
        return
    kind = ev.get("kind")
    if kind == "plan":
        print(f"{ev['action']} of keyset {ev['keyset'][:12]}…: epoch {ev['from_epoch']} -> {ev['to_epoch']}, "
              f"{ev['threshold']}-of-{ev['shares']}", file=sys.stderr)
    elif kind in ("deals", "echoes", "signatures"):
        print(f"\r{kind:<10} {ev['have']}/{ev['need']}   ", end="", file=sys.stderr, flush=True)
    elif kind == "rewrapped":
        print(f"\rrewrapped  {ev['have']} shares, {ev['failed']} holders failed, of {ev['total']} holders   ", end="",
              file=sys.stderr, flush=True)
    elif kind == "committed":
        print(f"\rcommitted epoch {ev['epoch']}; handing it to the participants", file=sys.stderr)


def cmd_epoch(args: argparse.Namespace) -> int:
    from ._commands import _ask, _short

    cargs: dict[str, Any] = {"keyset": args.keyset, "timeout": args.timeout}
    if args.command == "reshare":
        cargs.update(threshold=args.threshold, shares=args.shares, placement=args.placement,
                     custodians=args.custodians)
    res = _ask(args, args.command, cargs, on_event=_progress, timeout=args.timeout + 60)
    for b in res["invalid"]:
        print(f"shardnet: warning: {b['peer']}: {b['detail']}", file=sys.stderr)
    holders = "; ".join(f"{i}: {', '.join(_short(h) for h in hs)}" for i, hs in res["holders"].items())
    text = (f"{res['action']} of keyset {res['keyset']}: epoch {res['epoch']} is current, "
            f"{res['threshold']}-of-{res['shares']}, signed by {res['signers']} authorities, in {res['seconds']} s\n"
            f"holders   {holders}\n"
            f"erased    {len(res['erased'])} old shares, with signed deletion receipts")
    if res["unacked"]:
        text += (f"\nnot yet told: {', '.join(_short(p) for p in res['unacked'])} (handed the commit when they are "
                 "back; until then they keep their old shares)")
    text += f"\ndefeats   {res['defeats']}"
    emit(args, res, text)
    return EXIT_OK


def cmd_rewrap(args: argparse.Namespace) -> int:
    from ._commands import _ask, _short

    res = _ask(args, "rewrap", {"keyset": args.keyset}, on_event=_progress, timeout=wire.EPOCH_TIMEOUT + 60)
    text = (f"rewrap of keyset {res['keyset']} (epoch {res['epoch']}): {len(res['rewrapped'])} shares resealed "
            "to new at-rest keys, the old keys and ciphertexts destroyed")
    for f in res["failed"]:
        text += f"\nnot rewrapped: {_short(f['peer'])}: {f['error']}"
    text += f"\ndefeats   {res['defeats']}"
    emit(args, res, text)
    return EXIT_OK if res["complete"] else EXIT_FAIL


def register(sub: Any, home_arg: Any, peer_list: Any) -> None:
    sp = sub.add_parser("rewrap", help="every holder reseals its shards to a new at-rest key of its own, and "
                                       "destroys the old key and ciphertext")
    home_arg(sp)
    sp.add_argument("keyset", metavar="KEYSET", help="keyset id or a unique prefix of one")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_rewrap)
    for name, hlp in [("refresh", "proactive refresh: the same holders, secret and public key, a new polynomial"),
                      ("reshare", "reshare to other custodians or another t-of-n, keeping the secret and public "
                                  "key")]:
        sp = sub.add_parser(name, help=hlp)
        home_arg(sp)
        sp.add_argument("keyset", metavar="KEYSET", help="keyset id or a unique prefix of one")
        if name == "reshare":
            sp.add_argument("--threshold", "-t", type=positive, metavar="T", help="default: the current t")
            sp.add_argument("--shares", "-n", type=positive, metavar="N", help="default: the current n")
            sp.add_argument("--placement", metavar="EXPR", help="default: the keyset's placement")
            sp.add_argument("--custodians", type=peer_list, metavar="PEER,...",
                            help="place the new shares on exactly these admitted custodians")
        sp.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="seconds the round may take before it aborts (the old epoch then stays)")
        sp.add_argument("--json", action="store_true")
        sp.set_defaults(func=cmd_epoch)
