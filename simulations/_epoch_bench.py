"""`shardnet bench epoch`: refresh and reshare round times, next to their bound.

On the grid, for each n: a t-of-n keyset (t = n // 2 + 1) on 2n + 1 nodes at
RTT_S round trip between any two, one refresh, then one reshare to another
n-node placement. The crypto is charged as virtual time, so that the ratio can
fail: every epoch handler's compute time (deal, echo, co-sign, commit) is
added as delay before its reply (``MemoryNetwork(charge=...)``), and the
coordinator's own (the round machine: checking deals and echoes, combining
commitments, signing) before it goes on (:func:`_charging`).

The bound of the time to the commit is two round trips (deals, then echoes;
with K = 1 no signature round trip) plus the crypto on the critical path: the
slowest deal, the slowest echo, and the coordinator's own compute. ``done`` adds
the commit's round trip (the deletion receipts).

With real processes (``--processes``), the same rounds through the CLI on a
loopback network of n + 2 nodes: the figure only (loopback has no RTT to
speak of, and the nodes share two cores).
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import trio
import trio.testing

from shardnet.protocol import epoch as ep
from shardnet.protocol import wire

from .grid import Grid, run_virtual

RTT_S = 0.150


@contextlib.contextmanager
def _charging(spent: list[float]) -> Iterator[None]:
    """Time every EpochRound.handle call (the coordinator's compute) into ``spent``."""
    original = ep.EpochRound.handle

    def timed(self: ep.EpochRound, event: ep.Event, now: float) -> list[ep.Effect]:
        t0 = time.perf_counter()
        try:
            return original(self, event, now)
        finally:
            spent.append(time.perf_counter() - t0)

    ep.EpochRound.handle = timed  # type: ignore[method-assign]
    try:
        yield
    finally:
        ep.EpochRound.handle = original  # type: ignore[method-assign]


async def _round(grid: Grid, action: str, keyset: str, old_n: int, **args: Any) -> dict[str, Any]:
    """One round from node 0, the coordinator's compute charged as it goes; the virtual
    seconds to the commit and to the end, and what the bound is made of."""
    spent: list[float] = []
    charged_before = {k: len(v) for k, v in grid.network.charged.items()}
    t0 = trio.current_time()
    marks: dict[str, float] = {}

    async def emit(ev: dict[str, Any]) -> None:
        owed = sum(spent) - marks.get("paid", 0.0)
        if owed > 0:
            marks["paid"] = sum(spent)
            await trio.sleep(owed)  # the coordinator's compute, as virtual time
        if ev.get("kind") == "committed":
            marks["commit"] = trio.current_time() - t0

    with _charging(spent):
        res = await grid.nodes[0].commands()[action]({"keyset": keyset, **args}, emit)
    done = trio.current_time() - t0
    epoch_id = next(k for k in grid.network.charged if k.endswith("/epoch/1"))
    new = grid.network.charged[epoch_id][charged_before.get(epoch_id, 0):]
    deals, echoes = new[:old_n], new[old_n:old_n + res["shares"]]  # the phases do not overlap
    bound = 2 * RTT_S + max(deals, default=0) + max(echoes, default=0) + sum(spent)
    return {"epoch": res["epoch"], "commit_s": round(marks.get("commit", done), 4), "done_s": round(done, 4),
            "bound_s": round(bound, 4), "ratio": round(marks.get("commit", done) / bound, 3),
            "crypto_s": {"slowest_deal": round(max(deals, default=0), 4),
                         "slowest_echo": round(max(echoes, default=0), 4),
                         "coordinator": round(sum(spent), 4)}}


def run_grid(ns: tuple[int, ...], *, seed: int = 1, say: Callable[[str], None]) -> list[dict[str, Any]]:
    out = []
    for n in ns:
        t = n // 2 + 1

        async def main(root: str, n: int = n, t: int = t) -> dict[str, Any]:
            grid = Grid(pathlib.Path(root), 2 * n + 1, latency=lambda a, b: RTT_S / 2, seed=seed, trace=False,
                        cpu_clock=time.perf_counter, charge=frozenset({wire.EPOCH.id}))
            async with grid.running():
                await grid.wait_directory()
                # The coordinator (node 0) holds no share, so that every deal and echo crosses
                # the network and is charged: the import goes to nodes 1..n, the reshare to n+1..2n.
                ids = [node.peer_id for node in grid.nodes]
                keyset = await grid.import_key(0, b"bench epoch key", t, n, placement="", custodians=ids[1:n + 1])
                refresh = await _round(grid, "refresh", keyset, n)
                reshare = await _round(grid, "reshare", keyset, n, custodians=ids[n + 1:])
            return {"n": n, "t": t, "nodes": 2 * n + 1, "refresh": refresh, "reshare": reshare}

        row, wall = run_virtual(main, prefix="shardnet-epoch-")
        row["wall_s"] = round(wall, 2)
        say(f"grid n={n}: refresh {row['refresh']['commit_s']} s (bound {row['refresh']['bound_s']}), "
            f"reshare {row['reshare']['commit_s']} s (bound {row['reshare']['bound_s']})")
        out.append(row)
    return out


def run_processes(ns: tuple[int, ...], *, say: Callable[[str], None]) -> list[dict[str, Any]]:
    from ._local import LocalCluster, NodeSpec, run_cli

    countries = ["CH", "JP", "BR", "AU", "KE", "IN", "CA", "DE", "ZA", "NZ", "AR", "SG", "NO", "MX", "EG",
                 "KR", "CL", "FI", "NG", "ID", "PT", "TH"]
    out = []
    for n in ns:
        t = n // 2 + 1
        specs = [NodeSpec(f"node-{i:02d}", countries[i % len(countries)], org=f"org-{i}") for i in range(n + 2)]
        with tempfile.TemporaryDirectory(prefix="shardnet-epoch-") as root, \
                LocalCluster(pathlib.Path(root), specs) as c:
            c.init_all()
            c.start_all()
            c.wait_directory(timeout=120)
            owner = str(c.nodes[specs[0].name].home.path)
            key = pathlib.Path(root) / "master.key"
            key.write_bytes(b"bench epoch key")
            r = run_cli("key", "import", "--home", owner, "--in", str(key), "-t", str(t), "-n", str(n), "--json",
                        timeout=300, check=True)
            keyset = json.loads(r.stdout)["keyset"]
            row: dict[str, Any] = {"n": n, "t": t, "nodes": n + 2}
            for action in ("refresh", "reshare"):
                times = []
                for _ in range(3):
                    w0 = time.perf_counter()
                    r = run_cli(action, "--home", owner, keyset, "--json", timeout=300, check=True)
                    times.append((time.perf_counter() - w0, json.loads(r.stdout)["seconds"]))
                row[action] = {"cli_s": round(statistics.median(x for x, _ in times), 3),
                               "round_s": round(statistics.median(y for _, y in times), 3)}
            say(f"processes n={n}: refresh {row['refresh']['round_s']} s, reshare {row['reshare']['round_s']} s")
            out.append(row)
    return out


def run_epoch_bench(*, ns: tuple[int, ...] = (5, 10, 20), processes: bool = False,
                    say: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    result: dict[str, Any] = {"rtt_s": RTT_S, "grid": run_grid(ns, say=say)}
    if processes:
        result["processes"] = run_processes(ns, say=say)
    return result


def format_epoch_report(r: dict[str, Any]) -> str:
    lines = [f"epoch rounds on the grid, RTT {r['rtt_s'] * 1000:.0f} ms, crypto charged as virtual time "
             "(bound: 2 RTT + slowest deal + slowest echo + coordinator):"]
    for row in r["grid"]:
        for action in ("refresh", "reshare"):
            a = row[action]
            lines.append(f"  n={row['n']:>2} t={row['t']:>2} {action:<7} commit {a['commit_s']:.3f} s, bound "
                         f"{a['bound_s']:.3f} s, ratio {a['ratio']:.2f}; done {a['done_s']:.3f} s "
                         f"(crypto: deal {a['crypto_s']['slowest_deal'] * 1000:.1f} ms, echo "
                         f"{a['crypto_s']['slowest_echo'] * 1000:.1f} ms, coordinator "
                         f"{a['crypto_s']['coordinator'] * 1000:.1f} ms)")
    for row in r.get("processes", []):
        lines.append(f"  real processes, loopback, n={row['n']}: refresh {row['refresh']['round_s']:.3f} s "
                     f"(CLI {row['refresh']['cli_s']:.3f} s), reshare {row['reshare']['round_s']:.3f} s "
                     f"(CLI {row['reshare']['cli_s']:.3f} s)")
    return "\n".join(lines)
