"""`shardnet bench tlog`: the audit log as a Merkle tree log, against its bounds.

- Appends: signed audit entries with their tree hashes, one transaction (and one fsync)
  each, in a real store file, against the same number of bare commits of a row of the
  same size in another file of the same settings (the fsync bound), measured in turn
  in one run; and a checkpoint signed after each append (the worst case of the node's
  once-a-second batching).
- Proofs: at each tree size, the inclusion and consistency proofs' size in bytes, and
  the time to make and to verify one (a median over many), against one SHA-256 of a
  node (the hashing bound: a proof is about log2(n) of them). The trees are built in
  memory (``MemoryTree``), as a witness's scratch tree is.
"""

from __future__ import annotations

import hashlib
import pathlib
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.node._store import Store

SIZES = (1_000, 100_000, 1_000_000)


def _append_rate(root: pathlib.Path, n: int, checkpoint: bool) -> float:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    peer = p.peer_id_of(key.public_key().public_bytes_raw())
    origin = p.audit_log.origin_of(peer)
    with Store(str(root / f"store-{checkpoint}.db")) as store:
        t0 = time.perf_counter()
        for i in range(n):
            store.append_audit("store", {"keyset": "00" * 16, "index": i % 5 + 1, "peer": peer}, 1_800_000_000 + i,
                               key)
            if checkpoint:
                size = store.tree_size()
                store.put_checkpoint(p.note.sign_checkpoint(p.note.Checkpoint(origin, size, store.tree_root(size)),
                                                            origin, key))
        return n / (time.perf_counter() - t0)


def _fsync_rate(root: pathlib.Path, n: int) -> float:
    """Bare commits, in WAL mode with synchronous=FULL as the store runs: the fsync bound."""
    db = sqlite3.connect(str(root / "bare.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    row = bytes(300)
    t0 = time.perf_counter()
    for i in range(n):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?, ?)", [i, row])
        db.execute("COMMIT")
    rate = n / (time.perf_counter() - t0)
    db.close()
    return rate


def _median_us(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _proofs(size: int, repeat: int, rng: random.Random) -> dict[str, Any]:
    tree = p.tlog.MemoryTree()
    t0 = time.perf_counter()
    for i in range(size):
        tree.append(i.to_bytes(8, "big"))
    build = time.perf_counter() - t0
    root = tree.root()
    index = rng.randrange(size)
    old = rng.randrange(1, size)
    inclusion = p.tlog.inclusion_proof(index, size, tree.read)
    consistency = p.tlog.consistency_proof(old, size, tree.read)
    leaf = p.tlog.leaf_hash(index.to_bytes(8, "big"))
    old_root = tree.root(old)
    node = _median_us(lambda: hashlib.sha256(b"\x01" + root + root).digest(), repeat)
    return {
        "size": size, "build_s": round(build, 2),
        "inclusion_bytes": 32 * len(inclusion), "consistency_bytes": 32 * len(consistency),
        "inclusion_make_us": round(_median_us(lambda: p.tlog.inclusion_proof(index, size, tree.read), repeat), 1),
        "inclusion_verify_us": round(_median_us(
            lambda: p.tlog.verify_inclusion(index, size, leaf, inclusion, root), repeat), 1),
        "consistency_make_us": round(_median_us(lambda: p.tlog.consistency_proof(old, size, tree.read), repeat), 1),
        "consistency_verify_us": round(_median_us(
            lambda: p.tlog.verify_consistency(old, size, old_root, root, consistency), repeat), 1),
        "node_hash_us": round(node, 2),
    }


def run_tlog_bench(*, appends: int = 300, sizes: tuple[int, ...] = SIZES, repeat: int = 200,
                   say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    out: dict[str, Any] = {"appends": appends, "repeat": repeat}
    with tempfile.TemporaryDirectory(prefix="shardnet-tlog-") as tmp:
        root = pathlib.Path(tmp)
        # In turn, so that a busy spell of the machine falls on all three alike.
        fsync, plain, with_cp = [], [], []
        for k in range(3):
            (root / str(k)).mkdir()
            fsync.append(_fsync_rate(root / str(k), appends))
            plain.append(_append_rate(root / str(k), appends, checkpoint=False))
            with_cp.append(_append_rate(root / str(k), appends, checkpoint=True))
            say(f"round {k + 1}: fsync {fsync[-1]:.0f}/s, appends {plain[-1]:.0f}/s, with checkpoints "
                f"{with_cp[-1]:.0f}/s")
    out["fsync_per_s"] = round(statistics.median(fsync))
    out["appends_per_s"] = round(statistics.median(plain))
    out["appends_with_checkpoint_per_s"] = round(statistics.median(with_cp))
    rng = random.Random(1)
    out["proofs"] = []
    for size in sizes:
        out["proofs"].append(_proofs(size, repeat, rng))
        say(f"{size} leaves: {out['proofs'][-1]}")
    return out


def format_tlog_report(r: dict[str, Any]) -> str:
    lines = [f"appends ({r['appends']} a round, median of 3 rounds in turn):",
             f"  bare commits (the fsync bound)   {r['fsync_per_s']:>7} /s",
             f"  audit entries with tree hashes   {r['appends_per_s']:>7} /s  "
             f"({r['appends_per_s'] / r['fsync_per_s']:.2f} of the bound)",
             f"  ... and a checkpoint after each  {r['appends_with_checkpoint_per_s']:>7} /s  "
             f"({r['appends_with_checkpoint_per_s'] / r['fsync_per_s']:.2f} of the bound)",
             f"{'leaves':>10} {'build s':>8} {'incl B':>7} {'make us':>8} {'verify us':>9} {'cons B':>7} "
             f"{'make us':>8} {'verify us':>9} {'1 hash us':>9}"]
    for x in r["proofs"]:
        lines.append(f"{x['size']:>10} {x['build_s']:>8} {x['inclusion_bytes']:>7} {x['inclusion_make_us']:>8} "
                     f"{x['inclusion_verify_us']:>9} {x['consistency_bytes']:>7} {x['consistency_make_us']:>8} "
                     f"{x['consistency_verify_us']:>9} {x['node_hash_us']:>9}")
    return "\n".join(lines)
