"""`shardnet bench grid`: the grid at size, in virtual time.

N nodes converge on a directory, then K imports (3-of-5) and R
reconstructions (alternating unwrap and shares) run one after another, all
under trio's MockClock. Reported per phase: wall seconds, virtual seconds and
Ed25519 verifications; overall: peak RSS. The physical bound of each virtual
time is the network's: the latency function's one-way delay times the hops
a phase needs.
"""

from __future__ import annotations

import pathlib
import resource
import tempfile
import time
from collections.abc import Callable
from typing import Any

import trio
import trio.testing

from shardnet.protocol import hazmat

from .grid import Grid

LATENCY = 0.050  # one way, between any two nodes: a continental link


def run_grid_bench(*, nodes: int = 100, imports: int = 20, reconstructions: int = 5, republish: float = 60.0,
                   seed: int = 1, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda m: None)
    out: dict[str, Any] = {"nodes": nodes, "imports": imports, "reconstructions": reconstructions,
                           "republish_s": republish, "latency_one_way_s": LATENCY, "seed": seed, "phases": {}}

    async def phase(name: str, work: Any) -> Any:
        w0, v0, s0 = time.perf_counter(), trio.current_time(), hazmat.verifications()
        result = await work
        out["phases"][name] = {"wall_s": round(time.perf_counter() - w0, 2),
                               "virtual_s": round(trio.current_time() - v0, 2),
                               "verifications": hazmat.verifications() - s0}
        say(f"{name}: {out['phases'][name]}")
        return result

    async def main(root: str) -> None:
        grid = Grid(pathlib.Path(root), nodes, latency=lambda a, b: LATENCY, seed=seed,
                    republish=republish, trace=False)
        say(f"{nodes} homes made")
        async with grid.running():
            await phase("directory", grid.wait_directory(within=3600))
            keysets = []

            async def do_imports() -> None:
                for i in range(imports):
                    keysets.append(await grid.import_key(i % nodes, f"key {i}".encode() * 2, 3, 5))

            await phase("imports", do_imports())

            async def do_reconstructions() -> None:
                for i in range(reconstructions):
                    owner = (i % len(keysets)) % nodes  # import j was made by node j % nodes
                    ks = keysets[i % len(keysets)]
                    key = await grid.reconstruct(owner, ks, mode=("unwrap", "shares")[i % 2])
                    assert key == f"key {i % len(keysets)}".encode() * 2

            await phase("reconstructions", do_reconstructions())
        out["trace_events"] = grid.network.events

    w0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shardnet-grid-") as root:
        trio.run(main, root, clock=trio.testing.MockClock(autojump_threshold=0))
    out["wall_s"] = round(time.perf_counter() - w0, 2)
    out["virtual_s"] = round(sum(p["virtual_s"] for p in out["phases"].values()), 2)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["verifications"] = sum(p["verifications"] for p in out["phases"].values())
    return out


def format_grid_report(r: dict[str, Any]) -> str:
    lines = [f"grid: {r['nodes']} nodes, {r['imports']} imports (3-of-5), {r['reconstructions']} reconstructions, "
             f"one-way latency {r['latency_one_way_s'] * 1000:.0f} ms, descriptors every {r['republish_s']:.0f} s"]
    for name, ph in r["phases"].items():
        lines.append(f"  {name:<16} wall {ph['wall_s']:>8.2f} s   virtual {ph['virtual_s']:>8.2f} s   "
                     f"verifications {ph['verifications']:>10}")
    lines.append(f"  total            wall {r['wall_s']:>8.2f} s   virtual {r['virtual_s']:>8.2f} s   "
                 f"peak RSS {r['peak_rss_mib']:.0f} MiB   trace events {r['trace_events']}")
    return "\n".join(lines)
