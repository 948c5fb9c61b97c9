"""`shardnet bench epoch --bulk K`: revoke a custodian that holds shares of K keysets.

One node (node 0) is the owner and sole authority of K 2-of-3 keysets; the
victim holds a share of each, the other two shares are spread over the other
custodians. ``revoke --custodian VICTIM`` (no ``--keyset``: all of them) makes K
new revocation lists, gossiped in as few rules batches as they fit; node 0's
autopilot then reshares every keyset away from the victim, its rounds pipelined
and their asks to each peer batched. The figures are the time from the revoke
to the last commit, the rounds per second, and the requests the rounds took.

The bound is the crypto of those K rounds timed alone in the same run
(``_epoch_crypto.reshare_crypto``: deals, verifications, sealing, signatures).
On the grid every node runs in one thread, so that the wall time to the last
commit can be no shorter than that crypto: the ratio (bound / measured) says
how much of the time is the crypto. With real processes the nodes share the
machine's cores: the bound is the same crypto over ``os.cpu_count()`` cores.
"""

from __future__ import annotations

import base64
import os
import pathlib
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from shardnet import protocol as p

from ._epoch_crypto import Setting, reshare_crypto
from .grid import Grid, run_virtual

T, N = 2, 3
KEY = b"bench bulk epoch key"


def crypto_bound(rounds: int, *, say: Callable[[str], None]) -> dict[str, float]:
    """The crypto of ``rounds`` 2-of-3 reshares, each timed alone."""
    s = Setting(T, N)
    for _ in range(3):
        reshare_crypto(s)  # warm up
    times = [reshare_crypto(s) for _ in range(rounds)]
    total = sum(times)
    say(f"crypto alone: {rounds} reshares in {total:.2f} s ({statistics.median(times) * 1000:.1f} ms each)")
    return {"seconds": round(total, 3), "per_round_ms": round(statistics.median(times) * 1000, 2)}


def _custodians(ids: list[str], victim: str, i: int) -> list[str]:
    """The victim and two others, every pair of the others in turn."""
    k = len(ids)
    a = i % k
    b = (a + 1 + (i // k) % (k - 1)) % k
    return [victim, ids[a], ids[b]]


def _holders(node: Any, keyset_id: str) -> set[str]:
    got = node.epochs.state(keyset_id)
    assert got is not None
    return {h for hs in p.epoch_records.at_epoch(*got).attrs["holders"].values() for h in hs}


async def _quiet(_: dict[str, Any]) -> None:
    return None


def run_grid_bulk(keysets: int, *, nodes: int = 12, seed: int = 1, rtt: float = 0.150,
                  say: Callable[[str], None]) -> dict[str, Any]:
    async def main(root: str) -> dict[str, Any]:
        grid = Grid(pathlib.Path(root), nodes, latency=lambda a, b: rtt / 2, seed=seed, trace=False, autopilot=True)
        async with grid.running():
            await grid.wait_directory()
            owner = grid.nodes[0]
            victim = grid.nodes[-1].peer_id
            others = [n.peer_id for n in grid.nodes[1:-1]]
            ids: list[str] = []
            limiter = trio.Semaphore(16)

            async def one(i: int) -> None:
                async with limiter:
                    ids.append(await grid.import_key(0, KEY, T, N, placement="", custodians=_custodians(others, victim, i)))
                if len(ids) % 100 == 0:
                    say(f"imported {len(ids)} of {keysets}")
            async with trio.open_nursery() as nursery:
                for i in range(keysets):
                    nursery.start_soon(one, i)
            before = (owner.epoch_batcher.requests, owner.epoch_batcher.frames)
            first: list[float] = []  # when the autopilot began the first round (wall)
            assert owner.autopilot is not None
            act = owner.autopilot.act

            async def timed_act(keyset_id: str, d: Any) -> Any:
                if not first:
                    first.append(time.perf_counter())
                return await act(keyset_id, d)
            owner.autopilot.act = timed_act  # type: ignore[method-assign]
            w0, v0 = time.perf_counter(), trio.current_time()
            out = await owner.commands()["revoke"]({"subject": "custodian", "value": victim, "reason": "bench"},
                                                    _quiet)
            assert len(out) == keysets
            while owner.store.keysets_past_epoch(0) < keysets:  # one query a virtual second
                await trio.sleep(1)
                if trio.current_time() - v0 > 3600:
                    raise AssertionError("keysets still held by the revoked custodian after an hour")
            wall = time.perf_counter() - w0
            last = trio.current_time()
            held = [k for k in ids if victim in _holders(owner, k)]
            assert not held, f"{len(held)} keysets still name the revoked custodian"
            requests = owner.epoch_batcher.requests - before[0]
            frames = owner.epoch_batcher.frames - before[1]
            # "trigger" is audited when a round completes: first to last commit, in virtual time.
            triggers = sorted(e.time for e in owner.store.audit_entries() if e.kind == "trigger")
        return {"wall_s": round(wall, 2), "rounds_wall_s": round(w0 + wall - first[0], 2),
                "virtual_to_last_commit_s": round(last - v0, 1),
                "virtual_first_to_last_commit_s": round(triggers[-1] - triggers[0], 1) if triggers else None,
                "requests": requests, "frames": frames}

    row, wall = run_virtual(main, prefix="shardnet-bulk-")
    row["total_wall_s"] = round(wall, 1)
    crypto = crypto_bound(keysets, say=say)
    row.update({"keysets": keysets, "nodes": nodes, "crypto_s": crypto["seconds"],
                "crypto_per_round_ms": crypto["per_round_ms"],
                "rounds_per_s": round(keysets / row["wall_s"], 1),
                "bound_rounds_per_s": round(keysets / crypto["seconds"], 1),
                # The bound is the rounds' crypto: against the rounds' time (from the first round
                # begun), not the revoke's signing and spreading of K revocation lists before them.
                "ratio": round(crypto["seconds"] / row["rounds_wall_s"], 3)})
    say(f"grid: {keysets} keysets reshared in {row['wall_s']} s wall ({row['rounds_per_s']} rounds/s), "
        f"crypto alone {crypto['seconds']} s: ratio {row['ratio']}")
    return row


def run_processes_bulk(keysets: int, *, nodes: int = 10, say: Callable[[str], None]) -> dict[str, Any]:
    from shardnet.node._control import call

    from ._local import LocalCluster, NodeSpec

    countries = ["CH", "JP", "BR", "AU", "KE", "IN", "CA", "DE", "ZA", "NZ", "AR", "SG"]
    specs = [NodeSpec(f"node-{i:02d}", countries[i % len(countries)], org=f"org-{i}") for i in range(nodes)]
    with tempfile.TemporaryDirectory(prefix="shardnet-bulk-") as root, \
            LocalCluster(pathlib.Path(root), specs, autopilot=True) as c:
        c.init_all()
        c.start_all()
        c.wait_directory(timeout=120)
        owner = c.nodes[specs[0].name].home
        peers = [c.nodes[s.name].peer_id for s in specs]
        victim, others = peers[-1], peers[1:-1]
        key = base64.b64encode(KEY).decode()
        ids = []
        for i in range(keysets):
            res = call(owner, "key-import", {"key": key, "threshold": T, "shares": N, "placement": "",
                                             "custodians": _custodians(others, victim, i)})
            ids.append(res["keyset"])
            if (i + 1) % 50 == 0:
                say(f"imported {i + 1} of {keysets}")
        w0 = time.perf_counter()
        call(owner, "revoke", {"subject": "custodian", "value": victim, "reason": "bench"})
        wanted = set(ids)
        while True:  # one listing a poll, so that the probe costs the owner little
            time.sleep(0.25)
            done = {k["keyset"] for k in call(owner, "key-list", {}) if k["keyset"] in wanted and k["epoch"] >= 1}
            if done == wanted:
                break
            if time.perf_counter() - w0 > 1800:
                raise AssertionError(f"{len(wanted - done)} keysets not reshared after 30 min")
        wall = time.perf_counter() - w0
        for k in ids:
            shown = call(owner, "key-show", {"keyset": k})
            assert victim not in {s["custodian"] for s in shown["shards"] if s["epoch"] == shown["epoch"]}, k
        status = call(owner, "status", {})
    crypto = crypto_bound(keysets, say=say)
    cores = os.cpu_count() or 1
    bound = crypto["seconds"] / min(cores, nodes)
    row = {"keysets": keysets, "nodes": nodes, "wall_s": round(wall, 2), "rounds_per_s": round(keysets / wall, 1),
           "crypto_s": crypto["seconds"], "cores": cores, "bound_s": round(bound, 3),
           "ratio": round(bound / wall, 3), "epoch_asks": status.get("epoch_asks")}
    say(f"processes: {keysets} keysets reshared in {row['wall_s']} s ({row['rounds_per_s']} rounds/s), "
        f"crypto alone over {cores} cores {row['bound_s']} s: ratio {row['ratio']}")
    return row


def run_bulk_bench(*, keysets: int = 1000, process_keysets: int = 0,
                   say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    result: dict[str, Any] = {"grid": run_grid_bulk(keysets, say=say)}
    if process_keysets:
        result["processes"] = run_processes_bulk(process_keysets, say=say)
    return result


def format_bulk_report(r: dict[str, Any]) -> str:
    g = r["grid"]
    lines = ["bulk revocation: one custodian revoked that holds a share of each of K 2-of-3 keysets; the "
             "autopilot reshares them all (bound: their crypto alone, timed in this run)",
             f"  grid, {g['nodes']} nodes in one thread, K={g['keysets']}: last commit {g['wall_s']:.2f} s wall after "
             f"the revoke ({g['virtual_to_last_commit_s']:.0f} s virtual), {g['rounds_wall_s']:.2f} s after the first "
             f"round began, {g['rounds_per_s']:.1f} rounds/s; crypto alone "
             f"{g['crypto_s']:.2f} s ({g['crypto_per_round_ms']:.1f} ms a round, {g['bound_rounds_per_s']:.1f} "
             f"rounds/s): ratio {g['ratio']:.2f} to the rounds' time (target 0.50)",
             f"    the rounds' epoch asks: {g['frames']} frames in {g['requests']} requests"]
    pr = r.get("processes")
    if pr:
        asks = pr.get("epoch_asks") or {}
        lines.append(f"  real processes, {pr['nodes']} on loopback, K={pr['keysets']}: last commit {pr['wall_s']:.2f} s, "
                     f"{pr['rounds_per_s']:.1f} rounds/s; crypto alone {pr['crypto_s']:.2f} s over {pr['cores']} "
                     f"cores = {pr['bound_s']:.2f} s: ratio {pr['ratio']:.2f} (target 0.50); "
                     f"{asks.get('frames', '?')} frames in {asks.get('requests', '?')} requests")
    return "\n".join(lines)
