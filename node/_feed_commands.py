"""The CLI of threat feeds: `shardnet feed add|list|remove` (``_feeds``).

Each works through the running node, or on a stopped node's store: a feed
added offline is polled from the next `shardnet run`.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

from ._cli_base import EXIT_OK, Parser, emit
from ._clock import system_clock
from ._home import Home


def _offline(act: str, args: argparse.Namespace) -> Any:
    from ._feeds import Feeds

    def run(home: Home) -> Any:
        with home.open_store() as store:
            feeds = Feeds(store, home.identity())
            if act == "add":
                return feeds.add(_source(args.source), args.signer, args.every, int(system_clock()))
            if act == "remove":
                return feeds.remove(args.feed, int(system_clock()))
            return feeds.listing(int(system_clock()))
    return run


def _source(text: str) -> str:
    """A feed file's path resolved here, where the operator typed it (not in the node's
    working directory); a URL as it is."""
    if not text or text.startswith(("http://", "https://")):
        return text
    return str(pathlib.Path(text).expanduser().absolute())


def cmd_feed(args: argparse.Namespace) -> int:
    from ._commands import _ask, _table, _ts

    act = args.feed_command
    cargs = {"add": {"source": _source(getattr(args, "source", "")), "signer": getattr(args, "signer", None),
                     "every": getattr(args, "every", None)},
             "remove": {"feed": getattr(args, "feed", None)}, "list": {}}[act]
    res = _ask(args, f"feed-{act}", cargs, offline=_offline(act, args))
    if act == "add":
        emit(args, res, f"following feed {res['id']}: {res['source']} every {res['every']} s, signed by "
                        f"{res['signer'][:16]}…")
    elif act == "remove":
        emit(args, res, f"feed {res['id']} ({res['source']}) removed")
    else:
        rows = [[f["id"], f["source"][:48], f"{f['every']}s", _ts(f["polled"] or None),
                 str(f["issue"]["seq"]) if f["issue"] else "-", "yes" if f["live"] else "no",
                 (f["error"] or "")[:40]] for f in res]
        emit(args, res, _table(rows, ["FEED", "SOURCE", "EVERY", "POLLED", "SEQ", "LIVE", "LAST ERROR"])
             if rows else "no feeds followed")
    return EXIT_OK


def register(sub: Any, home_arg: Any, parse_duration: Any) -> None:
    fp = sub.add_parser("feed", help="signed threat feeds this node follows")
    fsub = fp.add_subparsers(dest="feed_command", metavar="ACTION", parser_class=Parser)
    fsub.required = True
    sp = fsub.add_parser("add", help="follow a signed JSON feed (a file or an http(s) URL)")
    home_arg(sp)
    sp.add_argument("source", metavar="FILE|URL")
    sp.add_argument("--signer", required=True, metavar="PUBKEY", help="its signer: a peer id or 64 hex digits")
    sp.add_argument("--every", type=parse_duration, default=60, metavar="DURATION", help="poll interval (60s)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_feed)
    sp = fsub.add_parser("list", help="the feeds followed, their last issue and error")
    home_arg(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_feed)
    sp = fsub.add_parser("remove", help="stop following a feed")
    home_arg(sp)
    sp.add_argument("feed", metavar="FEED", help="its id (shardnet feed list) or source")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_feed)
