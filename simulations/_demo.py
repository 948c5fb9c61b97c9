"""`shardnet demo`: a local five-custodian network on loopback, end to end.

Five node processes (one per continent) start, find each other, and one of
them imports a freshly generated key: it is split 3-of-5, each shard sealed to
one custodian and delivered over Noise-encrypted libp2p streams, and every
custodian answers with a signed receipt. The demo prints where every shard
went and checks every receipt and every node's audit log. Then another node
asks for the key back; two of the three approvers approve with `shardnet
approve`; the custodians release partial decryptions (threshold unwrap), and
the reconstructed key is compared byte for byte with the original. Finally
the nodes are stopped and (unless --keep) their homes removed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import shutil
import subprocess
import tempfile
import time
from typing import Any

from shardnet.protocol import Receipt

from ._local import CLI, FIVE_CONTINENTS, LocalCluster, run_cli


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(args: argparse.Namespace) -> int:
    root = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="shardnet-demo-")).absolute()
    root.mkdir(parents=True, exist_ok=True)
    keep = bool(args.keep or args.dir)
    t_start = time.monotonic()
    try:
        with LocalCluster(root, FIVE_CONTINENTS) as cluster:
            return _demo(cluster, root, t_start)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            _say(f"node homes kept in {root}")


def _demo(cluster: LocalCluster, root: pathlib.Path, t_start: float) -> int:
    _say(f"== shardnet demo: 5 custodians on loopback, homes in {root}")
    cluster.init_all()
    _say(f"== network 'local' created by {cluster.authority} (its sole authority, K = 1); the other four "
         "asked to join and were admitted with their org, country and city vouched for")
    for name, node in cluster.nodes.items():
        t = time.monotonic()
        cluster.start(name)
        s = node.spec
        _say(f"   started {name:<10} {s.country} {s.city:<10} {s.org:<16} {node.peer_id}  ({time.monotonic() - t:.1f} s)")
    took = cluster.wait_directory(timeout=30)
    _say(f"== every node knows all 5 custodians ({took:.1f} s after the last start)")

    key = root / "master.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    owner = cluster.nodes["frankfurt"]
    _say(f"== importing a fresh 32-byte key on {owner.spec.name}: 3-of-5, distinct:country")
    cmd = ["key", "import", "--home", str(owner.home.path), "--in", str(key), "-t", "3", "-n", "5",
           "--placement", "distinct:country,min-distinct:continent=5",
           "--approvers", ",".join(cluster.nodes[n].peer_id for n in ("tokyo", "new-york", "sydney")),
           "--quorum", "2"]
    _say("   $ shardnet " + shlex.join(cmd))
    t = time.monotonic()
    r = run_cli(*cmd)
    took = time.monotonic() - t
    for line in r.stdout.rstrip().splitlines():
        _say("   " + line)
    if r.returncode != 0:
        _say(f"import failed: {r.stderr.strip()}")
        return 1
    _say(f"   (import with all 5 receipts: {took:.2f} s, including CLI start-up)")

    keysets = cluster.control(owner.spec.name, "key-list")
    keyset = keysets[-1]["keyset"]
    _say("== receipts kept by the owner (each signed by its custodian's identity key):")
    names = {n.peer_id: name for name, n in cluster.nodes.items()}
    with owner.home.open_store() as store:
        rows = store.outbox(keyset)
    ok = 0
    for row in sorted(rows, key=lambda r: r["idx"]):
        if row["receipt"] is None:
            _say(f"   shard {row['idx']}: {row['state']} (no receipt)")
            continue
        rc = Receipt.from_bytes(row["receipt"], custodian=row["custodian"])
        ok += rc.status in ("stored", "already-held")
        _say(f"   shard {rc.index} -> {names.get(rc.custodian, rc.custodian):<10} {rc.status:<8} "
             f"signature ok, shard sha256 {rc.shard_digest.hex()[:16]}…")
    _say("== what each custodian holds (from its own node):")
    for name in cluster.nodes:
        held = _held(cluster.control(name, "key-list"), keyset)
        _say(f"   {name:<10} holds shard {', '.join(map(str, held)) or '-'} of keyset {keyset[:16]}…")
    _say("== audit logs (hash chain + signatures):")
    for name, node in cluster.nodes.items():
        rr = run_cli("audit", "verify", "--home", str(node.home.path))
        _say(f"   {name:<10} {(rr.stdout or rr.stderr).strip()}")
        if rr.returncode != 0:
            return 1
    if ok != 5:
        return 1
    same = _reconstruct(cluster, root, keyset, key)
    _say("== stopping the nodes")
    cluster.stop_all()
    _say(f"== done in {time.monotonic() - t_start:.1f} s: {ok} of 5 shards delivered with signed receipts; "
         f"reconstructed key {'matches the original byte for byte' if same else 'DOES NOT MATCH'}")
    return 0 if same else 1


def _reconstruct(cluster: LocalCluster, root: pathlib.Path, keyset: str, key: pathlib.Path) -> bool:
    requester = cluster.nodes["sao-paulo"]
    out = root / "reconstructed.key"
    cmd = ["key", "reconstruct", "--home", str(requester.home.path), keyset, "--out", str(out),
           "--reason", "disaster-recovery drill", "--timeout", "60"]
    _say(f"== {requester.spec.name} asks for the key back (threshold unwrap: no share leaves its custodian)")
    _say("   $ shardnet " + shlex.join(cmd))
    proc = subprocess.Popen([*CLI, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        request = ""
        deadline = time.monotonic() + 30
        while not request and time.monotonic() < deadline:
            pending = [r for r in cluster.control("tokyo", "requests") if r["keyset"] == keyset]
            request = pending[-1]["request"] if pending else ""
            time.sleep(0.05)
        if not request:
            _say("   the request never reached the approvers")
            return False
        _say(f"   request {request} reached the approvers (tokyo, new-york, sydney; quorum 2)")
        for approver in ("tokyo", "new-york"):
            home = str(cluster.nodes[approver].home.path)
            r = run_cli("approve", "--home", home, request[:12])
            _say(f"   $ shardnet approve --home {approver} {request[:12]}   -> {(r.stdout or r.stderr).strip()}")
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        proc.kill()
    for line in (stdout + stderr).strip().splitlines():
        _say("   " + line)
    if proc.returncode != 0:
        return False
    same = out.read_bytes() == key.read_bytes()
    _say(f"== {out.name} == {key.name}: {same} ({len(out.read_bytes())} bytes, mode {oct(out.stat().st_mode & 0o777)})")
    return same


def _held(keysets: list[dict[str, Any]], keyset: str) -> list[int]:
    return next((list(k["held"]) for k in keysets if k["keyset"] == keyset), [])


__all__ = ["run_demo"]
