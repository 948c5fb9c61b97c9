"""The grid (simulations/grid.py): many real nodes in one trio.run, in virtual time."""

from __future__ import annotations

import hashlib
import pathlib
from typing import Any

import trio
import trio.testing

from shardnet.simulations import _memory
from shardnet.simulations.grid import Grid


def latency(a: str, b: str) -> float:
    """30-37 ms one way, fixed per pair (not Python's per-process string hash)."""
    return 0.030 + hashlib.sha256(f"{a}>{b}".encode()).digest()[0] % 8 / 1000


async def scenario(root: pathlib.Path, seed: int) -> tuple[list[tuple[float, str, str, str, int]], bytes]:
    grid = Grid(root, 8, latency=latency, seed=seed)
    async with grid.running():
        await grid.wait_directory()
        keyset = await grid.import_key(0, b"grid master key", 3, 5, placement="distinct:country")
        key = await grid.reconstruct(0, keyset)
    return list(grid.trace), key


def run(root: pathlib.Path, seed: int) -> tuple[list[tuple[float, str, str, str, int]], bytes, float]:
    clock = trio.testing.MockClock(autojump_threshold=0)
    out: dict[str, Any] = {}

    async def main() -> None:
        out["trace"], out["key"] = await scenario(root, seed)
        out["virtual"] = trio.current_time()

    trio.run(main, clock=clock)
    return out["trace"], out["key"], out["virtual"]


def test_eight_nodes_import_and_reconstruct_deterministically(tmp_path: pathlib.Path) -> None:
    trace_a, key_a, t_a = run(tmp_path / "a", seed=5)
    trace_b, key_b, t_b = run(tmp_path / "b", seed=5)
    assert key_a == key_b == b"grid master key"
    assert len(trace_a) > 50
    # Same seed, same event trace: times, nodes, kinds, peers, frame lengths.
    assert trace_a == trace_b and t_a == t_b
    trace_c, key_c, _ = run(tmp_path / "c", seed=6)
    assert key_c == b"grid master key" and trace_c != trace_a


def test_bench_grid_runs_from_the_cli(tmp_path: pathlib.Path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "grid.json"
    r = subprocess.run([sys.executable, "-m", "shardnet.node.cli", "bench", "grid", "--nodes", "6", "--imports",
                        "2", "--reconstructions", "1", "--json", str(out)], capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert set(data["phases"]) == {"directory", "imports", "reconstructions"}
    assert data["virtual_s"] > 0 and data["verifications"] > 0 and data["peak_rss_mib"] > 0
    assert "grid: 6 nodes" in r.stdout


def test_the_gossip_mesh_is_bounded_symmetric_and_repaired(tmp_path: pathlib.Path) -> None:
    """Each node keeps mesh peers among its connections, both ways: 6 of its own grafts (GossipSub's
    D) or all its connections if fewer, grafts of others up to 12 (D_high), past that only those
    of a node with fewer than 4 (D_low); a node that goes away is replaced in its peers' meshes."""
    async def main() -> None:
        grid = Grid(tmp_path, 24, seed=5, trace=False, latency=lambda a, b: 0.02)
        async with grid.running():
            await grid.wait_directory(within=300)
            net = grid.network
            mesh = net.mesh()
            sizes = sorted(len(x) for x in mesh.values())
            assert sizes[len(sizes) // 2] <= 2 * net.degree, sizes  # bounded: most hold D to D_high
            for peer, peers in mesh.items():
                node = net.nodes[peer]
                assert min(_memory.MESH_LOW, len(node.connections)) <= len(peers), (peer, len(peers))
                assert all(q in node.connections and peer in mesh[q] for q in peers)
            gone = grid.nodes[7]
            had = [q for q in mesh[gone.peer_id]]
            gone.stop()
            await trio.sleep(5)
            after = net.mesh()
            assert gone.peer_id not in after
            for q in had:
                assert gone.peer_id not in after[q]
                assert len(after[q]) >= min(_memory.MESH_LOW, len(net.nodes[q].connections)), q
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_an_import_returns_once_its_last_shard_lands_even_while_it_reports(tmp_path: pathlib.Path) -> None:
    # A user's terminal can be slow to take a progress line. The shards delivered meanwhile
    # used to wake an event the import no longer waited on, and it sat out its whole wait
    # (30 s; 120 s in the simulation harness) with every shard delivered.
    import base64

    async def slow_terminal(_: Any) -> None:
        await trio.sleep(2.0)

    async def main() -> float:
        grid = Grid(tmp_path, 6, seed=3)
        async with grid.running():
            await grid.wait_directory()
            t0 = trio.current_time()
            res = await grid.nodes[0].commands()["key-import"](
                {"key": base64.b64encode(b"k" * 32).decode(), "threshold": 2, "shares": 4, "wait": 30}, slow_terminal)
            assert [s["state"] for s in res["shards"]] == ["delivered"] * 4
            return trio.current_time() - t0

    took = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert took < 10, took  # two progress lines and the deliveries' round trips, not the 30 s wait


def test_a_custodian_that_comes_back_gets_its_shard_within_a_second_or_two(tmp_path: pathlib.Path) -> None:
    # Its pending slot had backed off to BACKOFF_MAX (30 s) while it was down; it comes back
    # at the same address (no new descriptor), and its reconnection makes the slot due.
    import base64

    from shardnet.node._api import keyset_detail

    async def quiet(_: Any) -> None:
        pass

    async def main() -> float:
        grid = Grid(tmp_path, 5, seed=4)
        async with grid.running():
            await grid.wait_directory()
            await grid.crash(2)
            peers = [grid.nodes[i].peer_id for i in (1, 2, 3)]
            res = await grid.nodes[0].commands()["key-import"](
                {"key": base64.b64encode(b"b" * 32).decode(), "threshold": 2, "shares": 3, "wait": 5,
                 "custodians": peers, "deliver_within": None}, quiet)
            keyset = res["keyset"]
            await trio.sleep(200)  # long enough for the slot's back-off to reach its cap
            await grid.restart(2)
            t0 = trio.current_time()
            while True:
                states = {s["custodian"]: s["state"] for s in keyset_detail(grid.nodes[0].store, keyset)["shards"]}
                if states[peers[1]] == "delivered":
                    return trio.current_time() - t0
                assert trio.current_time() - t0 < 60, states
                await trio.sleep(0.1)

    took = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert took < 2.5, took
