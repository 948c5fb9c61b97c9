"""`shardnet bench network`: import latency, RSS and directory convergence on loopback.

Real node processes (one per custodian, ten countries), measured side by side
in one run: key import with all receipts for (3,5) and (5,10), each node's
resident memory, and how long a node that joins late takes to appear in every
other node's directory. Every figure is printed next to its physical bound
where one exists (the loopback round trip).
"""

from __future__ import annotations

import base64
import os
import pathlib
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from ._local import LocalCluster, NodeSpec

TEN = [
    NodeSpec("frankfurt", "DE"), NodeSpec("new-york", "US"), NodeSpec("tokyo", "JP"),
    NodeSpec("sao-paulo", "BR"), NodeSpec("sydney", "AU"), NodeSpec("nairobi", "KE"),
    NodeSpec("toronto", "CA"), NodeSpec("singapore", "SG"), NodeSpec("zurich", "CH"),
    NodeSpec("santiago", "CL"),
]


def run_network_bench(*, runs: int = 5, progress: Callable[[str], None] | None = None,
                      root: pathlib.Path | None = None) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    base = pathlib.Path(root or tempfile.mkdtemp(prefix="shardnet-netbench-"))
    out: dict[str, Any] = {"runs": runs, "nodes": len(TEN), "load_before": os.getloadavg()}
    with LocalCluster(base, TEN) as c:
        say("starting 10 nodes")
        c.init_all()
        t = time.monotonic()
        c.start_all()
        out["start_all_s"] = round(time.monotonic() - t, 2)
        out["directory_converged_s"] = round(c.wait_directory(timeout=60), 3)
        key = base64.b64encode(os.urandom(32)).decode()
        for t_, n in [(3, 5), (5, 10)]:
            samples = []
            for i in range(runs):
                say(f"import ({t_},{n}) run {i + 1}/{runs}")
                t0 = time.perf_counter()
                d = c.control("frankfurt", "key-import", {"key": key, "threshold": t_, "shares": n,
                                                           "wait": 30})
                samples.append(time.perf_counter() - t0)
                if [s["state"] for s in d["shards"]] != ["delivered"] * n:
                    raise RuntimeError(f"import ({t_},{n}) did not deliver every shard: {d['shards']}")
            out[f"import_{t_}_{n}_ms"] = {
                "median": round(statistics.median(samples) * 1000, 1),
                "min": round(min(samples) * 1000, 1), "max": round(max(samples) * 1000, 1),
                "samples": [round(s * 1000, 1) for s in samples],
            }
        out["reconstruct"] = _reconstruct_bench(c, key, runs, say)
        # The physical bound: one request/response round trip on loopback.
        t0 = time.perf_counter()
        for _ in range(20):
            c.control("frankfurt", "status")
        out["control_rtt_ms"] = round((time.perf_counter() - t0) / 20 * 1000, 2)
        out["rss_mib"] = {k: round(v, 1) for k, v in c.rss_mib().items()}
        joins = []
        for i in range(min(runs, 3)):
            say(f"late join {i + 1}")
            spec = NodeSpec(f"late-{i}", ["NZ", "ZA", "IN"][i])
            c.add(spec)
            t0 = time.monotonic()
            c.start(spec.name)
            started = time.monotonic() - t0
            # Stopped late nodes stay in the directories: each join waits for one more.
            seen = c.wait_directory(expect=len(TEN) + 1 + i, timeout=60,
                                    names=[s.name for s in TEN])
            joins.append({"start_s": round(started, 2), "in_every_directory_s": round(seen, 3)})
            c.remove(spec.name)
        out["late_join"] = joins
    out["load_after"] = os.getloadavg()
    return out


def _reconstruct_bench(c: LocalCluster, key: str, runs: int, say: Callable[[str], None]) -> dict[str, Any]:
    """Request -> key, with three approvers (quorum 2) approving as soon as they see it."""
    approvers = ["tokyo", "sydney", "nairobi"]
    out: dict[str, Any] = {}
    for t_, n in [(3, 5), (5, 10)]:
        d = c.control("frankfurt", "key-import", {"key": key, "threshold": t_, "shares": n, "wait": 30,
                                                   "approvers": [c.nodes[a].peer_id for a in approvers],
                                                   "quorum": 2})
        for mode in ("unwrap", "shares"):
            rows = []
            for i in range(runs):
                say(f"reconstruct ({t_},{n}) {mode} run {i + 1}/{runs}")
                res, wall_ms = reconstruct_approved(c, "frankfurt", d["keyset"], approvers, need=2, mode=mode,
                                                    timeout=60)
                if base64.b64decode(res["key"]) != base64.b64decode(key):
                    raise RuntimeError("reconstructed key differs from the imported one")
                rows.append({**res["timings_ms"], "wall": round(wall_ms, 1)})
            out[f"{t_}_{n}_{mode}"] = {
                k: round(statistics.median(r[k] for r in rows), 1)
                for k in ("quorum", "release", "verify", "total", "wall")
            }
    return out


def reconstruct_approved(c: LocalCluster, coordinator: str, keyset: str, approvers: list[str], *, need: int,
                         mode: str, timeout: float) -> tuple[dict[str, Any], float]:
    """`key reconstruct` through ``coordinator``, the first ``need`` approvers approving as
    soon as the request reaches them; the answer and its wall time in ms."""
    result: dict[str, Any] = {}
    # A request cut off earlier stays pending until it expires: never approve one of those.
    before = {a: {r["request"] for r in c.control(a, "requests")} for a in approvers[:need]}

    def run() -> None:
        t0 = time.perf_counter()
        try:
            result["res"] = c.control(coordinator, "key-reconstruct", {"keyset": keyset, "mode": mode,
                                                                       "timeout": timeout}, timeout=timeout + 30)
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc
        result["wall_ms"] = (time.perf_counter() - t0) * 1000

    th = threading.Thread(target=run)
    th.start()
    voted: set[str] = set()
    try:
        while th.is_alive() and len(voted) < need:
            for a in approvers[:need]:
                if a in voted:
                    continue
                pending = [r for r in c.control(a, "requests") if r["keyset"] == keyset and r["state"] == "pending"
                           and not r["my_vote"] and r["request"] not in before[a]]
                if pending:
                    c.control(a, "approve", {"request": pending[-1]["request"]})
                    voted.add(a)
            time.sleep(0.01)
    finally:  # an approver that failed to answer: the request runs out on its own
        th.join(timeout + 60)
    if "error" in result:
        raise result["error"]
    if "res" not in result:
        raise TimeoutError(f"key-reconstruct of {keyset} did not answer within {timeout + 60:.0f} s")
    return result["res"], float(result["wall_ms"])


def format_network_report(r: dict[str, Any]) -> str:
    lines = [
        f"10 node processes on loopback, {r['runs']} runs each (load {r['load_before'][0]:.2f} -> "
        f"{r['load_after'][0]:.2f})",
        f"  start all 10 nodes              {r['start_all_s']} s; directories converged {r['directory_converged_s']} s later",
    ]
    for key, label in [("import_3_5_ms", "(3,5)"), ("import_5_10_ms", "(5,10)")]:
        m = r[key]
        lines.append(f"  import {label:<7} to all receipts  median {m['median']} ms  (min {m['min']}, max {m['max']})")
    lines.append(f"  bound: one control-socket round trip {r['control_rtt_ms']} ms; one libp2p request on loopback ~5 ms")
    rss = r["rss_mib"]
    lines.append(f"  RSS per node                    median {statistics.median(rss.values()):.1f} MiB "
                 f"(min {min(rss.values()):.1f}, max {max(rss.values()):.1f})")
    lines.append("  reconstruct (request -> key file), median ms; quorum = request gossip + approvals + vote gossip")
    for k, v in r["reconstruct"].items():
        lines.append(f"    {k:<16} total {v['total']:>7}  quorum {v['quorum']:>7}  releases {v['release']:>6}  "
                     f"verify {v['verify']:>5}")
    for j in r["late_join"]:
        lines.append(f"  late node: process up {j['start_s']} s, then in every directory {j['in_every_directory_s']} s")
    return "\n".join(lines)
