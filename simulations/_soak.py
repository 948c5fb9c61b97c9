"""`shardnet bench soak`: real node processes under a steady load for minutes.

Ten nodes (by default) on loopback. One operation every ``every`` seconds, imports
and reconstructions in turn, each owned by the next node that is up; one node is
stopped and started again every ``restart_every`` seconds, in turn. Every
``sample_every`` seconds each node's resident memory and open file descriptors are
read from /proc. The report gives, per node, the slope of both over its longest
run without a restart (a leak shows as a slope that does not fall to zero), the
errors, and the p50/p99 latencies beside their bounds: one control round trip and
one fsync on this disk.
"""

from __future__ import annotations

import base64
import os
import pathlib
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._local import LocalCluster
from ._netbench import TEN, reconstruct_approved

MAX_ERRORS_KEPT = 10
RESTART_MARGIN = 5.0
WARMUP = 30.0  # seconds of each process left out of the slopes (at most half the restart gap)


@dataclass
class _Load:
    """What the load loop saw; the restarter and the sampler share ``down``."""

    imports_ms: list[float] = field(default_factory=list)
    reconstructs_ms: list[float] = field(default_factory=list)
    pending_at_answer: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)
    keysets: list[tuple[str, str, bytes]] = field(default_factory=list)  # (owner, keyset, key)
    down: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, what: str, exc: BaseException) -> None:
        with self.lock:  # the load loop and the restarter both report
            self.errors[what] = self.errors.get(what, 0) + 1
            if len(self.first_errors) < MAX_ERRORS_KEPT:
                self.first_errors.append(f"{what}: {type(exc).__name__}: {exc}"[:300])

    def up(self, c: LocalCluster) -> list[str]:
        with self.lock:
            return [n for n in c.nodes if n not in self.down and c.nodes[n].running]


def run_soak(*, minutes: float, nodes: int = 10, every: float = 2.0, restart_every: float = 60.0,
             sample_every: float = 10.0, seed: int = 1, root: pathlib.Path | None = None,
             say: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    if not 5 <= nodes <= len(TEN):
        raise ValueError(f"nodes: from 5 to {len(TEN)}, got {nodes}")
    base = pathlib.Path(root or tempfile.mkdtemp(prefix="shardnet-soak-"))
    load = _Load()
    samples: dict[str, list[tuple[float, int, float, int]]] = {}  # node -> (t, pid, rss MiB, fds)
    restarts: list[dict[str, Any]] = []
    out: dict[str, Any] = {"minutes": minutes, "nodes": nodes, "every_s": every, "restart_every_s": restart_every,
                           "load_before": os.getloadavg()}
    with LocalCluster(base, TEN[:nodes]) as c:
        say(f"starting {nodes} nodes")
        c.init_all()
        c.start_all()
        c.wait_directory(timeout=60)
        out["bounds"] = _bounds(c, base)
        stop = threading.Event()
        t0 = time.monotonic()
        end = t0 + minutes * 60
        threads = [threading.Thread(target=_restarter, args=(c, load, restarts, restart_every, end, stop)),
                   threading.Thread(target=_sampler, args=(c, samples, sample_every, t0, end, stop, load, say))]
        for th in threads:
            th.start()
        try:
            _load_loop(c, load, every, end, random.Random(seed))
        finally:
            stop.set()
            for th in threads:
                th.join()
        out["elapsed_s"] = round(time.monotonic() - t0, 1)
        out["ops_per_min"] = round((len(load.imports_ms) + len(load.reconstructs_ms)) / (out["elapsed_s"] / 60), 1)
        out["audit_ok"] = _audits(c, load)
        out["rss_final_mib"] = {k: round(v, 1) for k, v in c.rss_mib().items()}
    out["load_after"] = os.getloadavg()
    out["imports"] = _latency(load.imports_ms)
    out["reconstructions"] = _latency(load.reconstructs_ms)
    out["pending_at_answer"] = load.pending_at_answer
    out["errors"] = load.errors
    out["first_errors"] = load.first_errors
    out["restarts"] = restarts
    out["warmup_s"] = warmup = min(WARMUP, restart_every / 2)
    out["per_node"] = {name: _slopes(rows, warmup) for name, rows in sorted(samples.items())}
    return out


def _load_loop(c: LocalCluster, load: _Load, every: float, end: float, rng: random.Random) -> None:
    """One operation each ``every`` seconds until ``end``, imports and reconstructions in
    turn. A slot missed while an operation ran long is skipped, not made up in a burst."""
    turn = imports = 0
    next_at = time.monotonic()
    while next_at < end:
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at = max(next_at + every, time.monotonic())
        up = load.up(c)
        if not up:
            continue
        if turn % 2 == 0 or not load.keysets:
            _import(c, load, up[imports % len(up)])  # every node owns keysets in turn
            imports += 1
        else:
            _reconstruct(c, load, up, rng)
        turn += 1


def _import(c: LocalCluster, load: _Load, owner: str) -> None:
    key = os.urandom(32)
    t = time.perf_counter()
    try:
        d = c.control(owner, "key-import", {"key": base64.b64encode(key).decode(), "threshold": 3, "shares": 5,
                                            "approvers": [c.nodes[owner].peer_id], "quorum": 1, "wait": 10},
                      timeout=60)
    except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
        if owner not in load.down:
            load.error("import", exc)
        return
    load.imports_ms.append((time.perf_counter() - t) * 1000)
    load.pending_at_answer += sum(s["state"] != "delivered" for s in d["shards"])
    load.keysets.append((owner, str(d["keyset"]), key))


def _reconstruct(c: LocalCluster, load: _Load, up: list[str], rng: random.Random) -> None:
    """Any keyset whose owner is up (old ones lived through restarts), through its owner
    (its one approver)."""
    mine = [(o, k, key) for o, k, key in load.keysets if o in up]
    if not mine:
        return
    owner, keyset, key = rng.choice(mine)
    try:
        res, wall_ms = reconstruct_approved(c, owner, keyset, [owner], need=1, mode="unwrap", timeout=30)
        if base64.b64decode(res["key"]) != key:
            raise RuntimeError(f"keyset {keyset}: the key that came back differs from the one imported")
    except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
        if owner not in load.down:
            load.error("reconstruct", exc)
        return
    load.reconstructs_ms.append(wall_ms)


def _restarter(c: LocalCluster, load: _Load, restarts: list[dict[str, Any]], every: float, end: float,
               stop: threading.Event) -> None:
    """Restart the nodes in turn at ``every``, ``2·every``, ... from the start, however long
    each restart took; none in the last RESTART_MARGIN seconds (it would not be seen back)."""
    names = list(c.nodes)
    i = 0
    first = time.monotonic()
    while not stop.wait(max(0.0, first + (i + 1) * every - time.monotonic())) \
            and time.monotonic() < end - RESTART_MARGIN:
        name = names[i % len(names)]
        i += 1
        with load.lock:
            load.down.add(name)
        try:
            stopped = c.stop(name)
            t = time.monotonic()
            c.start(name)
            restarts.append({"node": name, "stop_s": round(stopped, 2), "start_s": round(time.monotonic() - t, 2)})
        except Exception as exc:  # noqa: BLE001 - a node that does not come back is an error to report
            load.error("restart", exc)
        finally:
            with load.lock:
                load.down.discard(name)


def _sampler(c: LocalCluster, samples: dict[str, list[tuple[float, int, float, int]]], every: float, t0: float,
             end: float, stop: threading.Event, load: _Load, say: Callable[[str], None]) -> None:
    while True:
        now = time.monotonic()
        for name, n in c.nodes.items():
            proc = n.proc
            with load.lock:
                restarting = name in load.down
            if restarting or proc is None or proc.poll() is not None:
                continue  # a process still starting is not the node's state
            try:
                rss = _rss_mib(proc.pid)
                fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
            except OSError:
                continue  # it is restarting
            samples.setdefault(name, []).append((now - t0, proc.pid, rss, fds))
        say(f"{(now - t0) / 60:.1f} of {(end - t0) / 60:.1f} min: {len(load.imports_ms)} imports, "
            f"{len(load.reconstructs_ms)} reconstructions, {sum(load.errors.values())} errors")
        if stop.wait(every) or time.monotonic() >= end:
            return


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no VmRSS for {pid}")


def _slopes(rows: list[tuple[float, int, float, int]], warmup: float = 0.0) -> dict[str, Any]:
    """RSS and fd slopes per minute over the node's longest run of one process, leaving
    out its first ``warmup`` seconds (a node just started is still connecting)."""
    runs: dict[int, list[tuple[float, int, float, int]]] = {}
    first: dict[int, float] = {}
    for r in rows:
        first.setdefault(r[1], r[0])
        if r[0] - first[r[1]] >= warmup:
            runs.setdefault(r[1], []).append(r)
    if not runs:
        return {"samples": 0, "span_min": 0.0, "processes": len(first)}
    longest = max(runs.values(), key=lambda rs: rs[-1][0] - rs[0][0])
    minutes = [r[0] / 60 for r in longest]
    out: dict[str, Any] = {"samples": len(longest), "span_min": round(minutes[-1] - minutes[0], 2),
                           "rss_mib": [round(longest[0][2], 1), round(longest[-1][2], 1)],
                           "fds": [longest[0][3], longest[-1][3]], "processes": len(first)}
    if len(longest) >= 3:
        out["rss_mib_per_min"] = round(statistics.linear_regression(minutes, [r[2] for r in longest]).slope, 3)
        out["fds_per_min"] = round(statistics.linear_regression(minutes, [float(r[3]) for r in longest]).slope, 3)
    return out


def _latency(ms: list[float]) -> dict[str, Any]:
    if not ms:
        return {"count": 0}
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else [ms[0]] * 99
    return {"count": len(ms), "p50_ms": round(q[49], 1), "p99_ms": round(q[98], 1), "max_ms": round(max(ms), 1)}


def _bounds(c: LocalCluster, base: pathlib.Path) -> dict[str, float]:
    """What no operation can beat here: a control round trip, and one fsync of this disk."""
    first = next(iter(c.nodes))
    t = time.perf_counter()
    for _ in range(20):
        c.control(first, "status")
    control_ms = (time.perf_counter() - t) / 20 * 1000
    fsyncs = []
    path = base / "fsync-probe"
    with open(path, "wb") as f:
        for _ in range(20):
            f.write(os.urandom(4096))
            t = time.perf_counter()
            os.fsync(f.fileno())
            fsyncs.append((time.perf_counter() - t) * 1000)
    path.unlink()
    return {"control_rtt_ms": round(control_ms, 2), "fsync_ms": round(statistics.median(fsyncs), 2)}


def _audits(c: LocalCluster, load: _Load) -> bool:
    ok = True
    for name in c.nodes:
        try:
            c.control(name, "audit-verify")
        except Exception as exc:  # noqa: BLE001 - a broken chain (or a node down) is the soak's finding
            load.error("audit", RuntimeError(f"{name}: {type(exc).__name__}: {exc}"))
            ok = False
    return ok


def format_soak_report(r: dict[str, Any]) -> str:
    b = r["bounds"]
    lines = [f"{r['nodes']} node processes on loopback for {r['elapsed_s'] / 60:.1f} min: one operation every "
             f"{r['every_s']} s ({r['ops_per_min']} a minute done), one node restarted every "
             f"{r['restart_every_s']:.0f} s (load {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f})"]
    for key, label in (("imports", "import (3,5), receipts (10 s cap)"), ("reconstructions", "reconstruct, quorum 1")):
        m = r[key]
        if m["count"]:
            lines.append(f"  {label:<30} {m['count']:>4}  p50 {m['p50_ms']:>7} ms  p99 {m['p99_ms']:>7} ms  "
                         f"max {m['max_ms']} ms")
        else:
            lines.append(f"  {label:<30}    0")
    lines.append(f"  bounds: control round trip {b['control_rtt_ms']} ms; one fsync {b['fsync_ms']} ms")
    lines.append(f"  shards pending at the import's answer (a holder restarting): {r['pending_at_answer']}")
    errors = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "none"
    lines.append(f"  errors: {errors}; audit logs {'verified' if r['audit_ok'] else 'BROKEN'}")
    lines.extend(f"    {e}" for e in r["first_errors"])
    if r["restarts"]:
        lines.append(f"  restarts: {len(r['restarts'])}, stop median "
                     f"{statistics.median(x['stop_s'] for x in r['restarts'])} s, start median "
                     f"{statistics.median(x['start_s'] for x in r['restarts'])} s")
    lines.append(f"  per node, over its longest run without a restart (its first {r['warmup_s']:.0f} s left out):")
    lines.append(f"    {'':<37}RSS MiB/min   fds/min   RSS MiB   fds")
    for name, s in r["per_node"].items():
        if not s["samples"]:
            lines.append(f"    {name:<12} no sample past the warm-up")
            continue
        rss = s.get("rss_mib_per_min", "-")
        fds = s.get("fds_per_min", "-")
        lines.append(f"    {name:<12} {s['span_min']:>5} min, {s['samples']:>3} samples   {rss:>10}   {fds:>7}   "
                     f"{s['rss_mib'][0]}->{s['rss_mib'][1]}   {s['fds'][0]}->{s['fds'][1]}")
    return "\n".join(lines)
