"""Node commands: init, run, status, custodians, key import|list|show, audit verify|checkpoint|prove|check,
demo.

Read-only commands ask the running node over its control socket; when no node
runs they read the node's database directly (SQLite WAL allows it), so
`status`, `custodians`, `key list|show` and `audit verify` work on a stopped
node too. `key import` needs the running node, which delivers the shards.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import functools
import json
import logging
import os
import pathlib
import sys
from collections.abc import Callable
from typing import Any

from shardnet import protocol as p

from ._cli_base import (
    EXIT_FAIL,
    EXIT_OK,
    Failure,
    Parser,
    Unanswered,
    UsageError,
    emit,
    parse_duration,
    parse_within,
    positive,
)
from ._clock import system_clock, system_rng
from ._home import Home, HomeError, init_home


def _home(args: argparse.Namespace) -> Home:
    path = args.home or os.environ.get("SHARDNET_HOME")
    if not path:
        raise UsageError("--home DIR is required (or set SHARDNET_HOME)")
    return Home(pathlib.Path(path).absolute())


def _ask(args: argparse.Namespace, cmd: str, cargs: dict[str, Any] | None = None,
         offline: Callable[[Home], Any] | None = None, **kw: Any) -> Any:
    from ._control import ControlFailed, NotRunning, call

    home = _home(args)
    home.config()  # a clear error for a directory that is not a home
    try:
        return call(home, cmd, cargs, **kw)
    except NotRunning:
        if offline is None:
            raise
        return offline(home)
    except ControlFailed as exc:
        if exc.exit_code == 2:
            raise UsageError(str(exc)) from None
        raise (Failure if exc.answered else Unanswered)(str(exc)) from None


def _offline_store(fn: Callable[[Any, Home], Any]) -> Callable[[Home], Any]:
    def run(home: Home) -> Any:
        with home.open_store() as store:
            return fn(store, home)
    return run


def _ts(t: int | None) -> str:
    if t is None:
        return "never"
    try:
        return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, ValueError, OSError):  # past year 9999: a keyset from before durations were capped
        return f"{t} (unix time)"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*r).rstrip() for r in [header, *[[str(x) for x in r] for r in rows]])


def _short(peer: str) -> str:
    return peer[:8] + "…" + peer[-6:] if len(peer) > 16 else peer


# -- commands ------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    os.umask(0o077)  # the database and its WAL hold sealed shards and the audit log
    for text in args.listen or []:  # before the home exists: a bad address leaves none
        _listen_addr(text)
    genesis = None
    if args.network:
        from ._network_commands import read_network_file

        genesis = read_network_file(args.network)  # before the home exists: a bad file leaves none
    home = init_home(_home(args).path, name=args.name, country=args.country, city=args.city or "",
                     org=args.org or "", listen=args.listen or None, rng=system_rng)
    info = {"home": str(home.path), "peer_id": home.peer_id(), "name": args.name,
            "country": args.country.upper(), "listen": home.config()["listen"], "network": None}
    start = (f"\nthen join a network: shardnet network create ... (a new one) or shardnet network join "
             f"--home {home.path} network.toml; after that, start it: shardnet run --home {home.path}")
    if genesis is not None:
        from ._network_commands import join

        join(home, genesis)
        info["network"] = genesis.network_id.hex()
        start = (f"\njoined network {genesis.name} ({genesis.prefix}); ask its authorities to admit this "
                 f"node (shardnet network request --home {home.path} --out join.json), and start it: "
                 f"shardnet run --home {home.path}")
    emit(args, info, f"initialised node {args.name} ({info['country']}) in {home.path}\n"
              f"peer id {info['peer_id']}{start}")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import trio

    home = _home(args)
    home.config()
    os.umask(0o077)
    handlers: list[logging.Handler] = [logging.FileHandler(home.log_file)]
    if not args.quiet:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.INFO, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from . import _net
    from ._control_server import ControlError
    from ._keystore import FileKeystore
    from ._libp2p_transport import running_libp2p_transport
    from ._members import NoNetwork
    from ._runtime import NodeRuntime

    announce = [_announced(a) for a in args.announce or []]
    _net.route_libp2p_logging(logging.getLogger("shardnet.libp2p"), logging.WARNING)
    # A custodian that is down fails our dials; the node logs that once per
    # attempt itself, so libp2p's per-address errors are noise.
    logging.getLogger("libp2p.transport.tcp.tcp").setLevel(logging.CRITICAL)
    try:
        transport = functools.partial(running_libp2p_transport, announce=announce)
        runtime = NodeRuntime(home, keystore=FileKeystore.from_home(home), transport=transport,
                              bootstrap=args.bootstrap or [], clock=system_clock, rng=system_rng,
                              autopilot=not args.no_autopilot)
        trio.run(runtime.run)
    except (ControlError, NoNetwork) as exc:
        raise Failure(str(exc)) from None
    return EXIT_OK


def _import_token(text: str) -> str:
    from ._services import IMPORT_TOKEN

    if not IMPORT_TOKEN.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"32 to 64 lowercase hex digits, as 'key import' prints them; got {text!r}")
    return text.strip()


def _round_timeout(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 1 <= v <= p.MAX_REQUEST_LIFETIME:  # NaN too
        raise argparse.ArgumentTypeError(f"from 1 to {p.MAX_REQUEST_LIFETIME} seconds (a day, a request's lifetime), got {text}")
    return v


def _listen_addr(text: str) -> None:
    from ._net import parse_listen_addr

    try:
        parse_listen_addr(text)
    except ValueError:
        raise UsageError(f"--listen {text!r}: an address to listen on, /ip4|ip6/<addr>/tcp/<port> "
                         f"(for example /ip4/127.0.0.1/tcp/0)") from None


def _announced(text: str) -> str:
    from ._net import parse_listen_addr

    try:
        maddr = parse_listen_addr(text)
    except ValueError:
        raise Failure(f"--announce {text!r}: an address peers can dial, /ip4|ip6/<addr>/tcp/<port>") from None
    if maddr.value_for_protocol("tcp") == "0":
        raise Failure(f"--announce {text!r}: give the port peers reach, not 0")
    host = maddr.value_for_protocol("ip4" if "/ip4/" in text else "ip6")
    if host in ("0.0.0.0", "::"):
        raise Failure(f"--announce {text!r}: give an address peers can dial, not the unspecified {host}")
    return text


def cmd_status(args: argparse.Namespace) -> int:
    from . import _api

    def offline(home: Home) -> Any:
        with home.open_store() as store:
            return _api.status(store, home.peer_id(), home.config(), None,
                               _api.stored_membership(store, int(system_clock())), int(system_clock()))

    st = _ask(args, "status", offline=offline)
    lines = [
        f"node      {st['name']} ({st['country']}{', ' + st['city'] if st['city'] else ''})"
        f"{' · ' + st['org'] if st['org'] else ''}",
        f"peer id   {st['peer_id']}",
        f"state     {'running' if st['running'] else 'stopped'}"
        + (f", up {st['uptime_s']} s" if st["running"] else ""),
        *[f"address   {a}" for a in st["addrs"]],
        f"peers     {len(st['peers'])} connected",
        f"directory {st['custodians']} custodians known",
        f"shards    {st['shards_held']} held; {st['keysets_owned']} keysets owned, "
        f"{st['deliveries_pending']} deliveries pending",
        f"network   {st['network'][:8] + ', this node ' + st['membership'] if st['network'] else 'none joined'}",
    ]
    if st["keysets_at_risk"]:
        lines.append(f"at risk   {len(st['keysets_at_risk'])} keysets with shards on custodians the network "
                     "does not admit now (see key show)")
    lines += [f"expiry    {w}" for w in st.get("expiry_warnings", [])]
    emit(args, st, "\n".join(lines))
    return EXIT_OK


def cmd_custodians(args: argparse.Namespace) -> int:
    from . import _api

    rows = _ask(args, "custodians", offline=_offline_store(
        lambda s, h: _api.custodians(s, h.peer_id(), int(system_clock()))))
    table = _table(
        [[("* " if c["self"] else "  ") + c["name"], c["country"], c["city"], c["continent"], c["org"],
          "stale" if c["stale"] else "live", c["peer_id"]] for c in rows],
        ["  NAME", "CC", "CITY", "CONT", "ORG", "STATE", "PEER ID"],
    )
    stale = sum(c["stale"] for c in rows)
    emit(args, rows, f"{table}\n{len(rows)} custodians (* = this node), {stale} stale; what they say of "
              "themselves: `shardnet membership` has the vouched attributes")
    return EXIT_OK


def cmd_key_list(args: argparse.Namespace) -> int:
    from . import _api

    if args.keyset:
        return cmd_key_show(args)
    rows = _ask(args, "key-list", offline=_offline_store(lambda s, h: _api.keysets(s)))
    out = []
    for k in rows:
        d = k.get("deliveries")
        deliv = f"{d['delivered']} delivered, {d['pending']} pending, {d['refused']} refused" if d else "-"
        out.append([k["keyset"], k["role"], f"{k['threshold']}-of-{k['shares']}", k["epoch"], k["status"],
                    ",".join(map(str, k["held"])) or "-", deliv])
    emit(args, rows, _table(out, ["KEYSET", "ROLE", "T-OF-N", "EPOCH", "STATUS", "HELD", "DELIVERIES"])
              if rows else "no keysets")
    return EXIT_OK


def cmd_key_show(args: argparse.Namespace) -> int:
    from . import _api

    if not args.keyset:
        raise UsageError("key show needs a KEYSET (id or unique prefix)")
    d = _ask(args, "key-show", {"keyset": args.keyset},
             offline=_offline_store(lambda s, h: _api.keyset_detail(
                 s, args.keyset, _api.stored_membership(s, int(system_clock())))))
    emit(args, d, lambda: _format_keyset(d))
    return EXIT_OK


def _format_keyset(d: dict[str, Any]) -> str:
    head = [
        f"keyset    {d['keyset']} ({d['role']}, {d['status']})",
        f"policy    {d['threshold']}-of-{d['shares']}, epoch {d['epoch']}, {d['kem']}, "
        f"placement {d['placement'] or 'none'}, redundancy {d['redundancy']}",
        f"approval  quorum {d['quorum']} of {len(d['approvers'])} approvers; Cedar policy sha256 "
        f"{d['policy_sha256'][:16]}… (version {d.get('policy_version', 0)})",
        f"created   {_ts(d['created'])}; expires {_ts(d['not_after'])}",
        f"public    {d['public_key']}",
        f"owner     {d['owner']}",
    ]
    rows = [[s["index"], s["name"], s["country"], s["custodian"], s["state"]
             + (f" ({s['last_error']})" if s.get("last_error") and s["state"] != "delivered" else "")
             + (f", custodian {s['membership']}" if s.get("membership", "admitted") != "admitted" else "")]
            for s in d["shards"]]
    text = "\n".join(head) + "\n\n" + _table(rows, ["INDEX", "CUSTODIAN", "CC", "PEER ID", "STATE"])
    if d.get("epochs"):
        text += "\n\nepochs\n" + _table(
            [[e["epoch"], e["action"], f"{e['threshold']}-of-{e['shares']}", _ts(e["created"]),
              ", ".join(_short(s) for s in e["signers"])] for e in d["epochs"]],
            ["EPOCH", "ACTION", "T-OF-N", "CREATED", "SIGNED BY"])
        text += f"\nlast action: {d['last_action']['action']}; it defeats {d['last_action']['defeats']}"
    if d.get("erased"):
        text += f"\n{len(d['erased'])} signed deletion receipts for old shares (see --json)"
    for r in d.get("revoked", []):
        who = f"shard {r['index']}" if r["subject"] == "shard" else f"{r['subject']} {_short(r['peer'])}"
        text += f"\nrevoked   {who}: {r['reason']} (since {_ts(r['time'])})"
    if d.get("at_risk"):
        text += (f"\n\nat risk: {len(d['at_risk'])} custodians holding shards of this keyset are not admitted "
                 "to the network now; move the keyset away from them with `shardnet reshare`")
    here = set(d.get("reserves", [])) | set(d.get("held", []))
    if d.get("reserves") and len(here) >= d["threshold"]:
        text += (f"\n\nthis home keeps {len(here)} shares of this keyset ({len(d['reserves'])} of them sealed to "
                 "itself until they are delivered, to re-place them if need be): with "
                 f"{d['threshold']} or more, this home alone could rebuild the key until then")
    if d["status"] == "exposed":
        text += ("\n\nthis keyset's shares were released in shares mode: treat the key as exposed and "
                 "rotate it (shardnet key import of a new key)")
    return text


class _Bar:
    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()

    def __call__(self, ev: dict[str, Any]) -> None:
        if ev.get("kind") == "placed":
            if ev.get("note"):
                print(f"shardnet: note: {ev['note']}", file=sys.stderr)
            return
        if ev.get("kind") != "progress" or not self.tty:
            return
        done, total = ev["done"], ev["total"]
        width = 30
        fill = int(width * done / total) if total else width
        print(f"\rdelivering [{'#' * fill}{'.' * (width - fill)}] {done}/{total} receipts",
              end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def cmd_key_import(args: argparse.Namespace) -> int:
    from ._files import read_input

    master = read_input(args.input, p.MAX_MASTER)
    if not master:
        raise UsageError(f"{args.input}: the key file is empty")
    policy = None
    if args.policy:
        policy = read_input(args.policy, 64 * 1024).decode("utf-8", "replace")
    token = args.token or system_rng(16).hex()
    retry = f"run the same command with --token {token}: it finishes that import, never a second one"
    if sys.stderr.isatty():  # before the key goes out: the terminal itself may be what closes
        print(f"shardnet: import token {token} (if this is cut off, {retry})", file=sys.stderr)
    bar = _Bar()
    try:
        d = _ask(args, "key-import", {"token": token,
            "approvers": args.approvers, "quorum": args.quorum, "policy": policy,
            "key": base64.b64encode(master).decode(), "threshold": args.threshold, "shares": args.shares,
            "placement": args.placement, "redundancy": args.redundancy, "expires": args.expires,
            "kem": args.kem, "wait": args.wait, "custodians": args.custodians,
            "deliver_within": args.deliver_within, "authorities": args.authorities,
            "authority_quorum": args.authority_quorum, "refresh_every": args.refresh_every,
            "rewrap_every": args.rewrap_every, "renew": args.renew,
        }, on_event=bar)
    except Unanswered as exc:  # it may have committed: the token is how to find out, without a duplicate
        raise Failure(f"{exc}; the import may have been made: {retry}") from None
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"the import may have been made: {retry}") from None
    finally:
        bar.close()
    d["token"] = token
    states = [s["state"] for s in d["shards"]]
    summary = (f"{states.count('delivered')} delivered, {states.count('pending')} pending, "
               f"{states.count('refused')} refused")
    text = _format_keyset(d) + f"\n\n{summary}"
    if d.get("note"):
        text += f"\n{d['note']}"
    if states.count("pending"):
        text += "\npending shards stay in the outbox and are delivered when their custodians come back"
    if args.expires and not args.renew:
        d["expiry_warning"] = (f"this keyset expires at {_ts(d.get('not_after'))}: past it, no custodian releases "
                               "a shard and the key cannot be recovered (--renew has its authorities renew it)")
        text += f"\n{d['expiry_warning']}"
    emit(args, d, text)
    return EXIT_FAIL if states.count("refused") else EXIT_OK


def _peer_list(text: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected PEER,PEER,...")
    return items


def cmd_key_reconstruct(args: argparse.Namespace) -> int:
    from ._files import write_atomic

    out = pathlib.Path(args.out)
    if out.exists() and not args.force:
        raise UsageError(f"{out} already exists (use --force to overwrite)")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent}: no such directory")
    tty = sys.stderr.isatty()

    def progress(ev: dict[str, Any]) -> None:
        if not tty:
            return
        if ev.get("kind") == "fetch":
            print(f"this node holds no record of keyset {ev['keyset']}: asking the network", file=sys.stderr)
        elif ev.get("kind") == "request":
            print(f"request {ev['request']} published; waiting for approvals", file=sys.stderr)
        elif ev.get("kind") == "votes":
            print(f"\rapprovals {ev['approvals']}/{ev['quorum']}", end="", file=sys.stderr, flush=True)
        elif ev.get("kind") == "releases":
            print(f"\rreleases  {ev['have']}/{ev['need']}   ", end="", file=sys.stderr, flush=True)

    try:
        res = _ask(args, "key-reconstruct", {"keyset": args.keyset, "mode": args.mode, "reason": args.reason,
                                             "timeout": args.timeout}, on_event=progress,
                   timeout=args.timeout + 30)
    finally:
        if tty:
            print(file=sys.stderr)
    key = base64.b64decode(res.pop("key"))
    write_atomic(out, key, 0o600, overwrite=args.force)
    res["out"] = str(out)
    for r in (res["fetched_record"] or {}).get("refused", []):
        print(f"shardnet: warning: peer {r['peer']} served a keyset record that failed its checks: {r['why']}",
              file=sys.stderr)
    for b in res["invalid"]:
        print(f"shardnet: warning: custodian {b['name'] or b['custodian']} ({b['custodian']}) sent an invalid "
              f"answer: {b['detail']}", file=sys.stderr)
    tm = res["timings_ms"]
    text = (f"reconstructed {res['bytes']}-byte key into {out} ({res['mode']} mode, indices "
            f"{', '.join(map(str, res['used_indices']))}) in {tm['total']} ms: quorum {tm['quorum']} ms, "
            f"releases {tm['release']} ms, verification {tm['verify']} ms")
    if res["exposed"]:
        text += ("\nthe custodians' shares were released to this node: the keyset is marked exposed; "
                 "treat the key as exposed and rotate it")
    emit(args, res, text)
    return EXIT_OK


def cmd_requests(args: argparse.Namespace) -> int:
    rows = _ask(args, "requests")
    table = _table([[r["request"], r["keyset"][:12] + "…", _short(r["requester"]), r["mode"],
                     f"{r['approvals']}/{r['quorum']}" + (f" ({r['denials']} deny)" if r["denials"] else "")
                     + (f" ({len(r['void'])} void)" if r.get("void") else ""),
                     r["state"] if not r["outcome"] else r["outcome"],
                     (r["my_vote"] or "-") if r["approver"] else "not approver", r["reason"][:40]]
                    for r in rows],
                   ["REQUEST", "KEYSET", "REQUESTER", "MODE", "APPROVALS", "STATE", "YOUR VOTE", "REASON"])
    emit(args, rows, table if rows else "no reconstruction requests")
    return EXIT_OK


def cmd_vote(args: argparse.Namespace) -> int:
    res = _ask(args, args.decision, {"request": args.request})
    emit(args, res, f"voted {res['decision']} on request {res['request']} (signed and published)")
    return EXIT_OK


def cmd_threat(args: argparse.Namespace) -> int:
    res = _ask(args, "threat-level", {"level": args.level})
    emit(args, res, f"threat level {res['threat_level']}")
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from . import _api
    from ._api import AuditChainBroken

    def offline(home: Home) -> Any:
        with home.open_store() as store:
            return _api.audit_verify(store, home.identity().public_key().public_bytes_raw())

    try:
        res = _ask(args, "audit-verify", offline=offline)
    except AuditChainBroken as exc:
        raise Failure(str(exc)) from None
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(res["kinds"].items()))
    tree = res["tree"]
    signed = f"its checkpoint of {tree['checkpoint']} entries verifies" if tree["checkpoint"] is not None \
        else "no checkpoint signed yet"
    emit(args, res, f"audit log OK: {res['entries']} entries ({kinds or 'none'}), chain and signatures "
              f"verified (head {res['head'][:16] if res['head'] else '-'}); the Merkle tree matches, {signed}")
    return EXIT_OK


def cmd_audit_checkpoint(args: argparse.Namespace) -> int:
    from . import _audit_log

    res = _ask(args, "audit-checkpoint", offline=_offline_store(
        lambda store, home: _audit_log.checkpoint(store, home.identity(), home.peer_id())))
    emit(args, res, f"checkpoint of {res['origin']}: {res['size']} entries, root {res['root']}\n"
                    f"log key {res['log_key']}\n\n{res['note']}".rstrip())
    return EXIT_OK


def cmd_audit_prove(args: argparse.Namespace) -> int:
    from . import _audit_log
    from ._files import write_atomic

    out = pathlib.Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"--out {out}: no such directory {out.parent}")
    if out.exists() and not args.force:
        raise UsageError(f"--out {out} exists (--force to replace it)")

    def offline(store: Any, home: Home) -> dict[str, Any]:
        try:
            return {"bundle": _audit_log.prove(store, home.identity(), home.peer_id(), args.entry).decode()}
        except LookupError as exc:
            raise Failure(str(exc)) from None

    res = _ask(args, "audit-prove", {"entry": args.entry}, offline=_offline_store(offline))
    write_atomic(out, res["bundle"].encode(), 0o644, overwrite=True)
    doc = json.loads(res["bundle"])
    emit(args, {"out": str(out), "entry": args.entry, "log": doc["log"]},
         f"proof of entry {args.entry} of {doc['log']}'s audit log written to {out}")
    return EXIT_OK


def cmd_audit_check(args: argparse.Namespace) -> int:
    try:
        data = pathlib.Path(args.file).read_bytes()
    except OSError as exc:
        raise UsageError(f"{args.file}: {exc.strerror or exc}") from None
    try:
        log_key = p.audit_log.verifier_from(args.log_key, cosigner=False)
        witnesses = [p.audit_log.verifier_from(w, cosigner=True) for w in args.witness]
    except p.MalformedEncoding as exc:
        raise UsageError(f"a key: {exc}") from None
    if args.min_witnesses > len(witnesses):
        raise UsageError(f"--min-witnesses {args.min_witnesses} with {len(witnesses)} --witness keys")
    try:
        got = p.audit_log.check_bundle(data, log_key, witnesses, args.min_witnesses)
    except p.audit_log.ProofRefused as exc:
        raise Failure(f"{args.file}: {exc}") from None
    e = got.entry
    emit(args, {"ok": True, "log": log_key.name, "entry": e.seq, "kind": e.kind, "time": e.time,
                "body": _jsonable(e.body), "tree_size": got.checkpoint.size, "witnesses": list(got.witnesses)},
         f"entry {e.seq} ({e.kind}, {_ts(e.time)}) is in {log_key.name}'s log of {got.checkpoint.size} entries: "
         f"signed by the log's key, checkpoint cosigned by {len(got.witnesses)} witnesses")
    return EXIT_OK


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def cmd_demo(args: argparse.Namespace) -> int:
    from shardnet.simulations._demo import run_demo

    return run_demo(args)


# -- parser --------------------------------------------------------------------------


def register(sub: Any) -> None:
    def home_arg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--home", metavar="DIR", help="node home directory (or SHARDNET_HOME)")

    sp = sub.add_parser("init", help="create a node home: identity, keys, config, database")
    home_arg(sp)
    sp.add_argument("--name", required=True)
    sp.add_argument("--country", required=True, metavar="CC", help="ISO 3166-1 alpha-2 code")
    sp.add_argument("--city")
    sp.add_argument("--org")
    sp.add_argument("--listen", action="append", metavar="MULTIADDR",
                    help="listen address (default /ip4/127.0.0.1/tcp/0); repeatable")
    sp.add_argument("--network", metavar="FILE", help="join the network of this network file (network.toml)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_init)

    sp = sub.add_parser("run", help="run the node in the foreground (Ctrl-C stops it)")
    home_arg(sp)
    sp.add_argument("--bootstrap", action="append", metavar="MULTIADDR", help="peer to dial; repeatable")
    sp.add_argument("--quiet", action="store_true", help="log only to DIR/node.log")
    sp.add_argument("--announce", action="append", metavar="MULTIADDR",
                    help="address peers are told to dial instead of the listen addresses (a port forward "
                         "or relay in front of the node); repeatable")
    sp.add_argument("--no-autopilot", action="store_true",
                    help="run no epoch action by itself (triggers: revocations, membership, placement, schedule)")
    sp.set_defaults(func=cmd_run)

    for name, fn, hlp in [("status", cmd_status, "this node: peer id, addresses, peers, shards"),
                          ("custodians", cmd_custodians, "the custodian directory")]:
        sp = sub.add_parser(name, help=hlp)
        home_arg(sp)
        sp.add_argument("--json", action="store_true")
        sp.set_defaults(func=fn)

    kp = sub.add_parser("key", help="import, list and show keysets")
    ksub = kp.add_subparsers(dest="key_command", metavar="ACTION", parser_class=Parser)
    ksub.required = True
    sp = ksub.add_parser("import", help="split a key and deliver its shards to custodians")
    home_arg(sp)
    sp.add_argument("--in", dest="input", required=True, metavar="FILE", help="key file, or - for stdin")
    sp.add_argument("--threshold", "-t", type=positive, required=True, metavar="T")
    sp.add_argument("--shares", "-n", type=positive, required=True, metavar="N")
    sp.add_argument("--placement", metavar="EXPR",
                    help="e.g. distinct:country,min-distinct:continent=3,exclude:country=US "
                    "(default distinct:country when enough countries are known)")
    sp.add_argument("--redundancy", type=positive, default=1, metavar="R",
                    help="custodians per shard index, never two in one country")
    sp.add_argument("--expires", type=parse_duration, metavar="DURATION", help="e.g. 365d")
    sp.add_argument("--kem", choices=p.KEMS, default="x25519")
    sp.add_argument("--refresh-every", type=parse_duration, metavar="DURATION",
                    help="the keyset's authorities refresh it this often (e.g. 30d)")
    sp.add_argument("--rewrap-every", type=parse_duration, metavar="DURATION",
                    help="the keyset's authorities have its holders rewrap this often (e.g. 7d)")
    sp.add_argument("--renew", action="store_true",
                    help="with --expires: the authorities refresh the keyset with a new not-after before it "
                    "expires (without it, the key is gone for good past its expiry)")
    sp.add_argument("--deliver-within", type=parse_within, default=p.outbox.DELIVER_WITHIN, metavar="DURATION",
                    help="re-place a shard still undelivered after this long on another admitted custodian "
                    "that keeps the placement (default 1h; 'never' to wait for its custodian forever)")
    sp.add_argument("--custodians", type=_peer_list, metavar="PEER,...",
                    help="place the shards on exactly these admitted custodians (peer ids)")
    sp.add_argument("--approvers", type=_peer_list, metavar="PEER,...",
                    help="who approves reconstruction (peer ids; default: the custodians it is placed on)")
    sp.add_argument("--quorum", type=positive, metavar="K", help="approvals needed (default: t)")
    sp.add_argument("--authorities", type=_peer_list, metavar="PEER,...",
                    help="the keyset's policy authorities, who sign refreshes and reshares (peer ids; "
                    "default: this node alone)")
    sp.add_argument("--authority-quorum", type=positive, metavar="K",
                    help="authority signatures an epoch change needs (default 1)")
    sp.add_argument("--policy", metavar="FILE", help="Cedar policy for reconstruction (default: allow "
                    "any request that reached quorum, unless the custodian's threat level is critical)")
    sp.add_argument("--wait", type=float, default=30.0, metavar="S", help="seconds to wait for receipts")
    sp.add_argument("--token", type=_import_token, metavar="HEX",
                    help="the token an import that was cut off printed: finish that import, never a second one")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_key_import)
    sp = ksub.add_parser("reconstruct", help="get a key back: request, quorum approvals, releases")
    home_arg(sp)
    sp.add_argument("keyset", metavar="KEYSET", help="keyset id or a unique prefix of one; the full 32 hex digits "
                    "for a keyset this node holds no record of (it is fetched from the network)")
    sp.add_argument("--out", required=True, metavar="FILE", help="where to write the key (mode 0600)")
    sp.add_argument("--mode", choices=("unwrap", "shares"), default="unwrap",
                    help="unwrap: custodians send partial decryptions, shares never leave them (default); "
                    "shares: custodians send their shares (the keyset is then marked exposed)")
    sp.add_argument("--reason", default="", metavar="TEXT")
    sp.add_argument("--timeout", type=_round_timeout, default=120.0, metavar="S",
                    help="how long the round may take, up to a day (a request's lifetime); default 120")
    sp.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_key_reconstruct)
    for name, fn in [("list", cmd_key_list), ("show", cmd_key_show)]:
        sp = ksub.add_parser(name, help=f"{name} keysets")
        home_arg(sp)
        sp.add_argument("keyset", nargs="?", metavar="KEYSET")
        sp.add_argument("--json", action="store_true")
        sp.set_defaults(func=fn)

    sp = sub.add_parser("requests", help="reconstruction requests this node knows, with their votes")
    home_arg(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_requests)
    for name, hlp in [("approve", "approve a reconstruction request (signed vote)"),
                      ("deny", "deny a reconstruction request (signed vote)")]:
        sp = sub.add_parser(name, help=hlp)
        home_arg(sp)
        sp.add_argument("request", metavar="REQUEST_ID", help="request id or a unique prefix")
        sp.add_argument("--json", action="store_true")
        sp.set_defaults(func=cmd_vote, decision=name)
    sp = sub.add_parser("threat", help="show or set this custodian's threat level (0 low .. 5 critical)")
    home_arg(sp)
    sp.add_argument("--level", type=int, choices=range(6), metavar="N")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_threat)

    ap = sub.add_parser("audit", help="the signed delivery log")
    asub = ap.add_subparsers(dest="audit_command", metavar="ACTION", parser_class=Parser)
    asub.required = True
    sp = asub.add_parser("verify", help="check the hash chain and every signature")
    home_arg(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_audit_verify)
    sp = asub.add_parser("checkpoint", help="the latest signed checkpoint of the log (a C2SP signed note)")
    home_arg(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_audit_checkpoint)
    sp = asub.add_parser("prove", help="a self-contained proof bundle of one entry, for an auditor")
    home_arg(sp)
    sp.add_argument("entry", type=positive, metavar="ENTRY", help="the entry's number, from 1")
    sp.add_argument("--out", required=True, metavar="FILE")
    sp.add_argument("--force", action="store_true", help="replace FILE if it exists")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_audit_prove)
    sp = asub.add_parser("check", help="verify a proof bundle offline, with public keys only")
    sp.add_argument("file", metavar="FILE")
    sp.add_argument("--log-key", required=True, metavar="KEY", help="the log's node: its peer id, or a vkey")
    sp.add_argument("--witness", action="append", default=[], metavar="KEY",
                    help="a witness whose cosignature counts: its peer id, or a vkey (repeat)")
    sp.add_argument("--min-witnesses", type=int, default=0, metavar="K",
                    help="refuse a checkpoint with fewer than K of those cosignatures (default 0)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_audit_check)

    from ._epoch_commands import register as register_epoch
    from ._feed_commands import register as register_feeds
    from ._network_commands import register as register_network
    from ._rules_commands import register as register_rules

    register_network(sub, home_arg, parse_duration, _peer_list)
    register_epoch(sub, home_arg, _peer_list)
    register_rules(sub, home_arg)
    register_feeds(sub, home_arg, parse_duration)

    sp = sub.add_parser("demo", help="run a local 5-custodian network on loopback and import a key")
    sp.add_argument("--dir", metavar="DIR", help="where to put the node homes (default: a temp dir)")
    sp.add_argument("--keep", action="store_true", help="keep the node homes afterwards")
    sp.set_defaults(func=cmd_demo)


__all__ = ["HomeError", "parse_duration", "register"]
