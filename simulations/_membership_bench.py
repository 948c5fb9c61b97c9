"""`shardnet bench membership`: what closed membership costs, and how fast it acts.

Three parts, each next to its bound:

* **admission on real nodes**: ten node processes on loopback; an eleventh
  joins the network unadmitted (every node cuts it off), then the authority
  admits it (`shardnet admit`). Measured: the seconds from the admission being
  in effect on the authority until the new custodian is in every node's
  directory, which is what makes it a placement candidate. Bound: the
  anti-entropy round (``PULL_EVERY``), since gossip needs the newcomer in the
  mesh first.
* **admission on the grid**: the same on N nodes in virtual time.
* **the cost per candidate**: one import's candidate list with N admitted
  custodians, against the same list built from descriptors alone (what
  placement read before membership); and the directory's memory with N
  admitted custodians and J junk descriptors offered, with the signature
  checks the junk cost (none: the signer is read first).
"""

from __future__ import annotations

import base64
import os
import pathlib
import resource
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.protocol import hazmat, placement

from ._local import LocalCluster, NodeSpec
from ._netbench import TEN
from .grid import EPOCH, Grid

LATENCY = 0.050


def _join_request(grid: Grid, i: int) -> str:
    from shardnet.node._keystore import FileKeystore

    h = grid.homes[i]
    cfg = h.config()
    j = p.JoinRequest.make(h.identity(), network_id=grid.genesis_or_fail().network_id,
                           hpke=FileKeystore.from_home(h).hpke_public(), name=cfg["name"], org="",
                           country=cfg["country"], city="", time=int(grid.now()))
    return base64.b64encode(j.signed).decode()


async def _ignore(event: dict[str, Any]) -> None:
    return None


def grid_admission(nodes: int, say: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {"nodes": nodes, "latency_one_way_s": LATENCY}

    async def main(root: str) -> None:
        grid = Grid(pathlib.Path(root), nodes + 1, latency=lambda a, b: LATENCY, seed=5, republish=60.0,
                    trace=False, admitted=lambda i: i < nodes)
        async with grid.running():
            w0 = time.perf_counter()
            await grid.wait_directory(within=3600)
            out["directory_wall_s"] = round(time.perf_counter() - w0, 1)
            say(f"grid: {nodes} nodes converged in {out['directory_wall_s']} s wall")
            authority, late = grid.nodes[0], grid.nodes[nodes]
            members = grid.nodes[:nodes]
            await trio.sleep(10)
            w0, v0 = time.perf_counter(), trio.current_time()
            await authority.commands()["admit"]({"join_request": _join_request(grid, nodes), "org": "Late",
                                                 "country": "KE", "expires": 86400}, _ignore)
            pending = list(members)  # a candidate: admitted as a custodian, and its descriptor held
            for _ in range(7200):  # at most an hour of virtual time
                pending = [n for n in pending if not (n.members.admission(late.peer_id, n.now(), "custodian")
                                                      and n.directory.get(late.peer_id) is not None)]
                if not pending:
                    break
                await trio.sleep(0.5)
            if pending:
                raise RuntimeError(f"{len(pending)} nodes never saw the new custodian as a candidate")
            assert all(late.peer_id in n.owner.candidates("x25519", n.now()) for n in members[:10])
            out["candidate_everywhere_virtual_s"] = round(trio.current_time() - v0, 2)
            out["candidate_everywhere_wall_s"] = round(time.perf_counter() - w0, 1)
            owner = grid.nodes[1]
            out["per_candidate"] = candidate_cost(owner, grid)

    with tempfile.TemporaryDirectory(prefix="shardnet-member-bench-") as root:
        trio.run(main, root, clock=trio.testing.MockClock(autojump_threshold=0))
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def candidate_cost(node: Any, grid: Grid, rounds: int = 20) -> dict[str, Any]:
    """µs per candidate: admitted custodians with a descriptor (now) vs descriptors alone (before)."""
    now = int(grid.now())

    def admitted() -> int:
        return len(node.owner.candidates("x25519", now))

    def descriptors_only() -> int:
        return len([placement.Candidate(d.peer_id, d.country, d.continent, d.org, d.city)
                    for d in node.directory.all() if "x25519" in d.kems])

    times: dict[str, list[float]] = {"admitted": [], "descriptors_only": []}
    n = admitted()
    for _ in range(rounds):  # interleaved, so that both see the same machine
        for name, fn in (("admitted", admitted), ("descriptors_only", descriptors_only)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"candidates": n, "us_per_candidate": round(med["admitted"] / n * 1e6, 2),
            "us_per_candidate_descriptors_only": round(med["descriptors_only"] / n * 1e6, 2),
            "ratio": round(med["admitted"] / med["descriptors_only"], 2)}


def directory_memory(admitted: int, junk: int) -> dict[str, Any]:
    """A directory (real store in memory) with ``admitted`` members, then ``junk`` descriptors
    of peers the network does not admit offered to it."""
    from shardnet.node._services import Directory, NotAdmitted
    from shardnet.node._store import Store

    def desc(k: Ed25519PrivateKey, i: int) -> bytes:
        return p.Descriptor.make(k, addrs=[f"/ip4/127.0.0.1/tcp/{1000 + i % 60000}"],
                                 hpke={"x25519": os.urandom(32), "mlkem768-x25519": os.urandom(1216)},
                                 name=f"n{i}", country="CH", city="", org=f"o{i}", version="0.1.0",
                                 seq=EPOCH * 1000).signed

    members = [Ed25519PrivateKey.generate() for _ in range(admitted)]
    ids = {p.peer_id_of(k.public_key().public_bytes_raw()) for k in members}
    good = [desc(k, i) for i, k in enumerate(members)]
    bad = [desc(Ed25519PrivateKey.generate(), i) for i in range(junk)]
    tracemalloc.start()
    d = Directory(Store(":memory:"), "me", admits=lambda peer: peer in ids)
    for data in good:
        d.accept(data, EPOCH)
    with_members = tracemalloc.get_traced_memory()[0]
    v0, t0, refused = hazmat.verifications(), time.perf_counter(), 0
    for data in bad:
        try:
            d.accept(data, EPOCH)
        except NotAdmitted:
            refused += 1
    took = time.perf_counter() - t0
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {"admitted": admitted, "junk_offered": junk, "junk_refused": refused, "rows": len(d),
            "memory_with_members_mib": round(with_members / 2**20, 2),
            "memory_growth_from_junk_kib": round((after - with_members) / 1024, 1),
            "junk_verifications": hazmat.verifications() - v0,
            "us_per_junk_descriptor": round(took / junk * 1e6, 1)}


def real_admission(runs: int, say: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {"nodes": len(TEN), "runs": runs, "load_before": os.getloadavg(), "samples": []}
    with tempfile.TemporaryDirectory(prefix="shardnet-member-bench-") as root, \
            LocalCluster(pathlib.Path(root), TEN) as c:
        c.init_all()
        c.start_all()
        c.wait_directory(timeout=60)
        for i in range(runs):
            spec = NodeSpec(f"late-{i}", ["NZ", "ZA", "IN", "MX", "EG"][i % 5], org=f"Late {i}")
            c.auto_admit = False
            c.add(spec)
            c.start(spec.name)
            time.sleep(3)  # joined, not admitted: connects and is cut off
            t0 = time.monotonic()
            c.admit(spec.name)  # `network request` + `shardnet admit` through the authority's node
            admitted = time.monotonic() - t0
            # Stopped late nodes stay in the directories: each run waits for one more.
            seen = c.wait_directory(expect=len(TEN) + 1 + i, timeout=60, names=[s.name for s in TEN])
            out["samples"].append({"admit_command_s": round(admitted, 2), "in_every_directory_s": round(seen, 2)})
            say(f"real: late node {i + 1}: {out['samples'][-1]}")
            c.remove(spec.name)
    out["load_after"] = os.getloadavg()
    return out


def run_membership_bench(*, runs: int = 3, grid_nodes: int = 1000, junk: int = 10_000,
                         progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda m: None)
    out: dict[str, Any] = {}
    out["directory_memory"] = directory_memory(grid_nodes, junk)
    say(f"directory: {out['directory_memory']}")
    out["real"] = real_admission(runs, say)
    out["grid"] = grid_admission(grid_nodes, say)
    return out


def format_membership_report(r: dict[str, Any]) -> str:
    real, grid, mem = r["real"], r["grid"], r["directory_memory"]
    lines = [f"membership: {real['nodes']} real nodes on loopback; {grid['nodes']} on the grid "
             f"({grid['latency_one_way_s'] * 1000:.0f} ms one way)"]
    for i, s in enumerate(real["samples"], 1):
        lines.append(f"  real, late node {i}: admit command {s['admit_command_s']} s, then in every directory "
                     f"{s['in_every_directory_s']} s (bound: one anti-entropy round, 5 s)")
    lines.append(f"  grid: a new admission is a candidate on all {grid['nodes']} nodes after "
                 f"{grid['candidate_everywhere_virtual_s']} virtual s ({grid['candidate_everywhere_wall_s']} s wall; "
                 f"directory convergence first took {grid['directory_wall_s']} s wall)")
    pc = grid["per_candidate"]
    lines.append(f"  candidate list of {pc['candidates']}: {pc['us_per_candidate']} us per candidate, "
                 f"{pc['us_per_candidate_descriptors_only']} us from descriptors alone (ratio {pc['ratio']})")
    lines.append(f"  directory with {mem['admitted']} members: {mem['memory_with_members_mib']} MiB; "
                 f"{mem['junk_offered']} junk descriptors: {mem['junk_refused']} refused, "
                 f"+{mem['memory_growth_from_junk_kib']} KiB, {mem['junk_verifications']} signature checks, "
                 f"{mem['us_per_junk_descriptor']} us each; rows {mem['rows']}")
    lines.append(f"  peak RSS {grid['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)
