"""The ``multiprocess`` mode: one OS process per node (``shardnet run``), each in its
own network namespace, with the delay relay between them.

Every node is the real CLI's ``shardnet run`` on a real home, bound to its own
address in its own namespace (``_netns``) and announcing its relay address
(``--announce``), so that every connection it makes or takes crosses the relay
(``_relay``), which holds each byte for the pair's one-way latency and the
link's faults, and holds everything across a partition until it heals. The
scenario asks the nodes what it asks in the other modes, over each node's
control socket (the commands ``shardnet`` sends); a crash is a SIGKILL, and a
restart runs the same home again.

Time is the wall clock, and every node's processing is its own process's: on
a machine with fewer cores than nodes they still share the cores, which the
``cpu s`` column shows (every node process's CPU time, and the relay's).
The homes join one network made here beforehand (``grid.network_of``), as the
other modes' do, issued at the system clock's time.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pathlib
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from shardnet.node._control_server import ControlError
from shardnet.node._directory_loops import MAX_PEERS
from shardnet.node._home import Home, init_home
from shardnet.protocol import wire

from ._cluster import BUSY, Cluster, ClusterFailed
from ._delay import Links
from ._drbg import Drbg
from ._netns import Namespaces
from ._relay import Relay
from ._topology import Topology
from .grid import network_of, seeded

PORT = 4001  # every node's, each in its own namespace
START = 120.0  # seconds a node process may take to answer on its control socket
SETTLE = 300.0
QUIET_CPU = 0.5  # of a core, all the node processes together, and QUIET_CPU_PER_NODE more each
QUIET_CPU_PER_NODE = 0.03  # idle: 10 nodes used 0.2 of a core, the relay's share included
MAX_REPLY = 64 * 1024 * 1024  # bytes of one control answer
TICK = os.sysconf("SC_CLK_TCK")
log = logging.getLogger("shardnet.simulations")


async def control(home: Home, cmd: str, args: dict[str, Any], *, timeout: float = 900.0) -> Any:  # noqa: ASYNC109
    """One control command to a running node (``_control.call``, in trio): its result, or
    ControlError with the node's own message and exit code."""
    with trio.fail_after(timeout):
        try:
            stream = await trio.open_unix_socket(str(home.control_socket))
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                raise  # this process is out of descriptors: not the node's doing
            raise ControlError(f"no node is running in {home.path}") from None
        async with stream:
            await stream.send_all((json.dumps({"cmd": cmd, "args": args}) + "\n").encode())
            buf = b""
            while True:
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = json.loads(line)
                    if "event" in msg:
                        continue
                    if msg.get("ok"):
                        return msg.get("result")
                    raise ControlError(str(msg.get("error")), int(msg.get("exit", 1)))
                try:
                    chunk = await stream.receive_some(1 << 16)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    chunk = b""
                if not chunk:
                    raise ControlError(f"the node in {home.path} closed the control connection without an answer")
                buf += chunk
                if len(buf) > MAX_REPLY:
                    raise ControlError(f"the node in {home.path} answered more than {MAX_REPLY} bytes")


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _enough_descriptors(nodes: int) -> None:
    """Raise this process's open-file limit to what the relay needs: two descriptors per
    relayed connection (every pair connects, up to the nodes' peer cap), and the control
    sockets and pidfds of every node."""
    need = 2 * nodes * min(nodes - 1, MAX_PEERS) + 8 * nodes + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < need:
        raise ClusterFailed(f"{nodes} node processes need {need} open files here; the limit is {hard} "
                           "(ulimit -n)")


def _cpu_s(pid: int) -> float:
    """A process's user and system CPU seconds so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


class MultiprocessCluster(Cluster):
    mode = "multiprocess"
    wall_clock = True
    poll = 0.02  # a look is a control command to every node left

    def __init__(self, root: pathlib.Path, topology: Topology, *, seed: int, autopilot: bool = False) -> None:
        super().__init__(topology, seed=seed)
        self.autopilot = autopilot
        self.ns = Namespaces(len(topology.sites))
        rng = Drbg(b"shardnet-multiprocess" + seed.to_bytes(8, "big"))
        self.homes: list[Home] = [
            init_home(root / f"node-{i:04d}", name=s.name, country=s.country, city=s.city, org=s.org,
                      listen=[f"/ip4/{self.ns.node_addr(i)}/tcp/{PORT}"], rng=rng)  # in its namespace
            for i, s in enumerate(topology.sites)]
        at = int(time.time())
        g, records = network_of(self.homes, at=at)
        for h in self.homes:
            with h.open_store() as store:
                seeded(store, g, records, at=at)
        self._named([h.peer_id() for h in self.homes])
        self.links = Links(self.transit)
        self.procs: dict[int, trio.Process] = {}
        self._ready: set[int] = set()  # answered on their control socket since they last started
        self._killed: set[trio.Process] = set()  # stopped by us: any other exit is a failure
        self._exits: dict[str, int] = {}
        self.relay: Relay | None = None
        self._nursery: trio.Nursery | None = None
        self.nodes_peak_rss_mib = 0.0  # the most the node processes held together, sampled each second

    # -- processes ---------------------------------------------------------------------

    def _args(self, i: int) -> list[str]:
        boot = next((j for j in sorted(self.procs) if j != i and self.up(j)), None)
        args = [*self.ns.exec_prefix(i), sys.executable, "-m", "shardnet.node.cli", "run",
                "--home", str(self.homes[i].path), "--quiet", *([] if self.autopilot else ["--no-autopilot"]),
                "--announce", f"/ip4/{self.ns.relay_addr(i)}/tcp/{PORT}"]
        if boot is not None:
            args += ["--bootstrap", f"/ip4/{self.ns.relay_addr(boot)}/tcp/{PORT}/p2p/{self.peers[boot]}"]
        return args

    async def _spawn(self, i: int) -> None:
        assert self.relay is not None
        await self.relay.listen(i)
        err = (self.homes[i].path / "stderr.log").open("ab")  # noqa: ASYNC230 - a local file, opened once per start
        try:
            self.procs[i] = await trio.lowlevel.open_process(self._args(i), stdin=subprocess.DEVNULL, stdout=err,
                                                             stderr=err)
        finally:
            err.close()

    async def _started(self, i: int) -> None:
        with trio.move_on_after(START):
            for _ in range(int(START / 0.1)):
                proc = self.procs[i]
                if proc.poll() is not None:
                    tail = (self.homes[i].path / "stderr.log").read_text(errors="replace").strip().splitlines()[-3:]
                    raise ClusterFailed(f"node {i} exited with {proc.returncode}: {' / '.join(tail)}")
                try:
                    await control(self.homes[i], "status", {}, timeout=10)
                    self._ready.add(i)
                    return
                except (ControlError, trio.TooSlowError):  # its socket is bound before its host runs
                    await trio.sleep(0.1)
        raise ClusterFailed(f"node {i} did not answer on its control socket within {START:.0f} s")

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Cluster]:
        _enough_descriptors(len(self.homes))
        self.ns.create()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.relay = Relay(self.ns, PORT, self.links, lambda i: self.peers[i], nursery)
                nursery.start_soon(self._sample_rss)
                nursery.start_soon(self._stop_on_signals)
                try:
                    await self._spawn(0)
                    await self._started(0)
                    for i in range(1, len(self.homes)):
                        await self._spawn(i)
                    for i in range(1, len(self.homes)):
                        await self._started(i)
                    yield self
                finally:
                    for proc in self.procs.values():  # all at once, before any wait a second Ctrl-C could cut
                        if proc.returncode is None:
                            self._killed.add(proc)
                            proc.kill()
                    with trio.CancelScope(shield=True):
                        for i in list(self.procs):
                            await self._kill(i)
                    nursery.cancel_scope.cancel()
        finally:
            try:
                self.ns.close()
            except Exception as exc:
                if sys.exc_info()[1] is None:
                    raise
                log.warning("while stopping after an error: %s", exc)  # the first error is the one to see

    async def _stop_on_signals(self) -> None:
        """SIGTERM or SIGHUP (a timeout, a closed terminal) stop the run as Ctrl-C does, so that
        the processes and namespaces go with it. After a SIGKILL of this process nothing can:
        the next run's ``_netns.remove_stale`` kills what its namespaces still hold, and deletes
        them. (prctl's parent-death signal would not do: trio forks from a worker thread, and
        the signal comes when that thread ends.)"""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP) as signals:
            async for _ in signals:
                raise KeyboardInterrupt  # through the cleanup, to the CLI's "interrupted"

    async def _sample_rss(self) -> None:
        for _ in range(10**7):  # until the cluster stops (every second: bounded by the run's length)
            total = sum(_rss_mib(p.pid) for p in self.procs.values())
            self.nodes_peak_rss_mib = max(self.nodes_peak_rss_mib or 0.0, total)
            await trio.sleep(1.0)

    async def _kill(self, i: int) -> None:
        proc = self.procs.pop(i, None)
        self._ready.discard(i)
        if self.relay is not None:
            self.relay.refuse(i)
        if proc is None:
            return
        if proc.returncode is None:
            self._killed.add(proc)
            proc.kill()
        await proc.wait()
        if proc not in self._killed:
            key = f"node process exited by itself with {proc.returncode}"
            self._exits[key] = self._exits.get(key, 0) + 1

    # -- what a mode supplies ------------------------------------------------------------

    def now(self) -> float:
        return trio.current_time()

    async def command(self, i: int, name: str, args: dict[str, Any]) -> Any:
        return await control(self.homes[i], name, args)

    def incarnation(self, i: int) -> object:
        proc = self.procs.get(i)
        return None if proc is None else proc.pid

    def cpu_time(self) -> float:
        """Every node process's CPU seconds (those reaped, through the kernel's count of waited-for
        children; those not, from /proc), and this process's (the relay's)."""
        gone = resource.getrusage(resource.RUSAGE_CHILDREN)
        live = sum(_cpu_s(p.pid) for p in self.procs.values() if p.returncode is None)
        return gone.ru_utime + gone.ru_stime + live + time.process_time()

    def up(self, i: int) -> bool:
        """Started (it answers commands) and not exited since."""
        proc = self.procs.get(i)
        return i in self._ready and proc is not None and proc.poll() is None

    async def mesh(self, topic: wire.Topic = wire.MEMBERSHIP_TOPIC) -> dict[str, list[str]]:
        """Each node's connected peers (``status``): a superset of its mesh on any topic, so
        a bound over it is never above one over the mesh (a floor, if a loose one)."""
        out: dict[str, list[str]] = {}

        async def ask(i: int) -> None:
            try:
                out[self.peers[i]] = sorted((await self.command(i, "status", {}))["peers"])
            except (ControlError, trio.TooSlowError):
                pass  # went down meanwhile: no edges of its own

        async with trio.open_nursery() as n:
            for i in range(len(self.peers)):
                if self.up(i):
                    n.start_soon(ask, i)
        return out

    async def knows(self, i: int) -> int:
        return len(await self.command(i, "custodians", {}))

    async def revoked_on(self, i: int, peer: str) -> bool:
        rows = await self.command(i, "membership", {})
        return any(r["peer_id"] == peer and r["state"] == "revoked" for r in rows)

    async def double_vote(self, i: int, request_id: str) -> None:
        raise RuntimeError("a double vote is signed with the node's runtime in this process: not in multiprocess mode")

    async def settle(self) -> float:
        t0 = trio.current_time()
        n = len(self.peers)
        short: dict[int, int] = {}
        counts: dict[int, int] = {}

        async def count(i: int) -> None:
            try:
                counts[i] = await self.knows(i)
            except (ControlError, trio.TooSlowError):
                counts[i] = 0  # gone, or not answering yet: asked again

        for _ in range(int(SETTLE / 0.5)):
            counts.clear()
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    if self.up(i):
                        nursery.start_soon(count, i)
            short = {i: k for i, k in counts.items() if k < n}
            if not short:
                break
            await trio.sleep(0.5)
        took = trio.current_time() - t0
        if short:
            raise ClusterFailed(f"the directory did not converge within {SETTLE:.0f} s: nodes (custodians known) {short}")
        if not await self._meshes_and_quiet():
            self._exits[BUSY] = 1
        return took

    def quiet_cores(self) -> float:
        return QUIET_CPU + QUIET_CPU_PER_NODE * len(self.peers)

    async def crash(self, i: int) -> None:
        """SIGKILL: the kernel closes the process's sockets, and its relay address refuses."""
        await self._kill(i)

    async def restart(self, i: int) -> None:
        if self._nursery is None or self.up(i):
            raise RuntimeError(f"node {i} is running, or the cluster is not")
        await self._kill(i)  # one that exited by itself: reaped and counted first
        await self._spawn(i)
        await self._started(i)

    def partition(self, side_a: set[int], side_b: set[int]) -> None:
        self.links.partition({self.peers[i] for i in side_a}, {self.peers[i] for i in side_b})

    def heal(self) -> None:
        self.links.heal()

    def logged(self) -> dict[str, int]:
        """Warnings and errors in the nodes' logs (``DIR/node.log``), by logger and level;
        and node processes that exited by themselves."""
        counts = dict(self._exits)
        for h in self.homes:
            try:
                lines = h.log_file.read_text(errors="replace").splitlines()
            except OSError:
                continue
            for line in lines:
                parts = line.split(" ", 4)  # date, time, level, logger:, message
                if len(parts) >= 4 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
                    key = f"{parts[3].rstrip(':')} {parts[2]}"
                    counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))


__all__ = ["MultiprocessCluster", "control"]
