"""`shardnet bench rewrap`: how fast one custodian rewraps, against the crypto alone.

One node's store (a real SQLite file, WAL, synchronous=FULL) holds ``shards``
delivered shards (keysets of up to 1,000 shares each). Each run rewraps them all
(``node/_rewrap.rewrap_all``: open, reseal to a new at-rest key under metadata
the holder signs, one transaction, WAL truncated, old key destroyed), and, in the
same run, the crypto-only bound: for each shard an HPKE open, an HPKE seal and
an Ed25519 signature, timed alone in a loop. Reported: shards per second for
both, their ratio, and the store's part (the transaction and the WAL checkpoint:
the fsync cost).
"""

from __future__ import annotations

import os
import pathlib
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.node._keystore import FileKeystore
from shardnet.node._rewrap import rewrap_all
from shardnet.node._services import _keyset_row
from shardnet.node._store import AuditEvent, Store

NOW = 1_800_000_000
PER_KEYSET = 1000


def _fill(store: Store, ks: FileKeystore, shards: int, say: Callable[[str], None]) -> None:
    owner = Ed25519PrivateKey.generate()
    made = 0
    while made < shards:
        n = min(PER_KEYSET, shards - made)
        keyset, shares = p.split_key(os.urandom(32), 2, max(n, 2), owner=owner, now=NOW)
        with store.transaction():
            store.put_keyset(_keyset_row(keyset, "custodian"), now=NOW)
            for share in shares[:n]:
                meta = p.ShardMeta(keyset.keyset_id, 0, share.index, keyset.shares, 2, ks.peer_id, NOW, None,
                                   keyset.policy_hash, keyset.commitments_digest, "x25519")
                sealed = p.seal_shard(meta, share, ks.hpke_public()["x25519"], owner=owner)
                store.put_held_shard(keyset.id_hex, 0, share.index, sealed=sealed,
                                     meta=p.read_shard_meta(sealed).signed, now=NOW,
                                     audit=AuditEvent("store", {"keyset": keyset.id_hex, "index": share.index},
                                                      ks.signer))
        made += n
        say(f"{made} shards stored")


def _crypto_only(store: Store, ks: FileKeystore) -> float:
    """Seconds for an HPKE open, an HPKE seal and a signature per stored shard, alone."""
    rows = store.held_shards()
    target = p.HpkePrivateKey.generate("x25519", os.urandom).public_bytes()
    items = []
    for row in rows:
        sealed = bytes(row["sealed"])
        meta = p.read_shard_meta(sealed)
        ct = p.decode(sealed)[3]
        items.append((ks.opener_for(meta), ct, b"shardnet/shard/v1\x00" + meta.signed, meta.body()))
    t0 = time.perf_counter()
    for opener, ct, info, body in items:
        payload = opener.open(ct, info)
        ks.signer.sign(body)
        p.hpke_seal("x25519", target, payload, info)
    return time.perf_counter() - t0


def run_rewrap_bench(*, shards: int = 10_000, runs: int = 3, say: Callable[[str], None] = lambda m: None
                     ) -> dict[str, Any]:
    out: dict[str, Any] = {"shards": shards, "runs": []}
    with tempfile.TemporaryDirectory(prefix="shardnet-rewrap-") as root:
        rest = pathlib.Path(root) / "rest.key"
        ks = FileKeystore(os.urandom(32), {"x25519": p.HpkePrivateKey.generate("x25519", os.urandom)},
                          rest_file=rest)
        with Store(pathlib.Path(root) / "node.db") as store:
            _fill(store, ks, shards, say)
            write_s: list[float] = []
            replace = store.replace_sealed

            def timed_replace(*args: Any, **kw: Any) -> None:
                t0 = time.perf_counter()
                replace(*args, **kw)
                write_s.append(time.perf_counter() - t0)

            store.replace_sealed = timed_replace  # type: ignore[method-assign]
            for run in range(runs):
                before = _crypto_only(store, ks)
                t0 = time.perf_counter()
                done = rewrap_all(store, ks, os.urandom, NOW, reason={"bench": "rewrap"})
                took = time.perf_counter() - t0
                after = _crypto_only(store, ks)
                assert len(done) == shards
                bound = (before + after) / 2
                row = {"rewrap_s": round(took, 3), "crypto_only_s": round(bound, 3),
                       "store_write_s": round(write_s[-1], 3), "shards_per_s": round(shards / took),
                       "bound_shards_per_s": round(shards / bound), "ratio": round(bound / took, 3)}
                out["runs"].append(row)
                say(f"run {run + 1}: {row}")
    out["ratio_median"] = statistics.median(r["ratio"] for r in out["runs"])
    out["shards_per_s_median"] = statistics.median(r["shards_per_s"] for r in out["runs"])
    out["bound_shards_per_s_median"] = statistics.median(r["bound_shards_per_s"] for r in out["runs"])
    return out


def format_rewrap_report(r: dict[str, Any]) -> str:
    lines = [f"rewrap of {r['shards']} shards on one custodian (SQLite file, WAL, synchronous=FULL):"]
    for i, row in enumerate(r["runs"], 1):
        lines.append(f"  run {i}: {row['shards_per_s']} shards/s ({row['rewrap_s']} s, of which the store "
                     f"{row['store_write_s']} s); crypto alone {row['bound_shards_per_s']} shards/s "
                     f"({row['crypto_only_s']} s): {row['ratio'] * 100:.0f}% of the bound")
    lines.append(f"median: {r['shards_per_s_median']} shards/s, {r['ratio_median'] * 100:.0f}% of the crypto-only "
                 f"bound ({r['bound_shards_per_s_median']} shards/s: HPKE open + HPKE seal + Ed25519 sign)")
    return "\n".join(lines)
