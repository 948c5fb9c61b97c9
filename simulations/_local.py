"""A local network of real node processes on loopback (tests, demo, research).

Each node is a separate OS process started through the CLI (``shardnet run``)
with its own home directory; they find each other through a bootstrap address
and the directory protocol. Nothing here listens anywhere but 127.0.0.1.
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from shardnet.node._control import ControlFailed, NotRunning, call
from shardnet.node._home import Home

CLI = [sys.executable, "-m", "shardnet.node.cli"]


@dataclass(frozen=True)
class NodeSpec:
    name: str
    country: str
    city: str = ""
    org: str = ""


#: Five custodians on five continents, each its own organisation.
FIVE_CONTINENTS = [
    NodeSpec("frankfurt", "DE", "Frankfurt", "Helvetia Trust"),
    NodeSpec("new-york", "US", "New York", "Hudson Custody"),
    NodeSpec("tokyo", "JP", "Tokyo", "Kanto Vault"),
    NodeSpec("sao-paulo", "BR", "São Paulo", "Paulista Escrow"),
    NodeSpec("sydney", "AU", "Sydney", "Harbour Keys"),
]


class ClusterError(Exception):
    pass


@dataclass
class LocalNode:
    spec: NodeSpec
    home: Home
    proc: subprocess.Popen[bytes] | None = None
    peer_id: str = ""
    addrs: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def run_cli(*args: str, timeout: float = 120.0, check: bool = False) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and r.returncode != 0:
        raise ClusterError(f"shardnet {' '.join(args[:2])} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class LocalCluster:
    """Start, stop and query a handful of node processes under ``root``."""

    def __init__(self, root: pathlib.Path, specs: list[NodeSpec]) -> None:
        self.root = pathlib.Path(root)
        self.nodes = {s.name: LocalNode(s, Home(self.root / s.name)) for s in specs}

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def add(self, spec: NodeSpec) -> LocalNode:
        """Add (and initialise) one more node; start it with :meth:`start`."""
        self.nodes[spec.name] = LocalNode(spec, Home(self.root / spec.name))
        self.init_all()
        return self.nodes[spec.name]

    def remove(self, name: str) -> None:
        self.stop(name)
        del self.nodes[name]

    def init_all(self) -> None:
        """``shardnet init`` every node that has no home yet, all at once."""
        todo = [n for n in self.nodes.values() if not n.home.config_file.exists()]
        procs = []
        for n in todo:
            args = ["init", "--home", str(n.home.path), "--name", n.spec.name, "--country", n.spec.country]
            args += ["--city", n.spec.city] if n.spec.city else []
            args += ["--org", n.spec.org] if n.spec.org else []
            procs.append((args, subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
        failed = []
        try:
            for args, proc in procs:
                _, err = proc.communicate(timeout=60)
                if proc.returncode != 0:
                    failed.append(f"shardnet init --home {args[2]} failed ({proc.returncode}): {err.decode().strip()}")
        finally:
            for _, proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if failed:
            raise ClusterError("; ".join(failed))
        for n in self.nodes.values():
            n.peer_id = n.home.peer_id()

    def bootstrap_for(self, name: str) -> list[str]:
        return [a for n in self.nodes.values() if n.running and n.spec.name != name for a in n.addrs[:1]][:2]

    def start(self, name: str, *, wait: float = 30.0, command: list[str] | None = None) -> LocalNode:
        """Start a node process (``command`` replaces ``python -m shardnet.node.cli``)."""
        self._spawn(name, command)
        return self._wait_started(name, wait)

    def _spawn(self, name: str, command: list[str] | None = None) -> None:
        n = self.nodes[name]
        if n.running:
            return
        args = [*(command or CLI), "run", "--home", str(n.home.path), "--quiet"]
        for b in self.bootstrap_for(name):
            args += ["--bootstrap", b]
        n.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def _wait_started(self, name: str, wait: float) -> LocalNode:
        n = self.nodes[name]
        assert n.proc is not None
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if n.proc.poll() is not None:
                err = n.proc.stderr.read().decode() if n.proc.stderr else ""
                raise ClusterError(f"node {name} exited with {n.proc.returncode}: {err.strip()}")
            try:
                st = call(n.home, "status", timeout=5)
                n.addrs = list(st["addrs"])
                return n
            except (NotRunning, ControlFailed, OSError, ValueError):
                time.sleep(0.1)
        raise ClusterError(f"node {name} did not start within {wait} s")

    def start_all(self, *, wait: float = 60.0) -> None:
        """Start the first node, then all the others at once, bootstrapping from it."""
        first, *rest = self.nodes
        self.start(first, wait=wait)
        for name in rest:
            self._spawn(name)
        for name in rest:
            self._wait_started(name, wait)

    def stop(self, name: str, *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> float:
        """Stop a node; return how long it took to exit."""
        n = self.nodes[name]
        if n.proc is None:
            return 0.0
        t0 = time.monotonic()
        if n.proc.poll() is None:
            n.proc.send_signal(sig)
            try:
                n.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait(5)
                raise ClusterError(f"node {name} did not stop within {timeout} s") from None
        if n.proc.stderr:
            n.proc.stderr.close()
        n.proc = None
        return time.monotonic() - t0

    def stop_all(self) -> None:
        for n in self.nodes.values():
            if n.proc is not None and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)
        for name in list(self.nodes):
            try:
                self.stop(name)
            except ClusterError:
                pass

    def control(self, name: str, cmd: str, args: dict[str, Any] | None = None, **kw: Any) -> Any:
        return call(self.nodes[name].home, cmd, args, **kw)

    def wait_directory(self, *, expect: int | None = None, timeout: float = 30.0,
                       names: list[str] | None = None) -> float:
        """Wait until every running node (or ``names``) knows ``expect`` custodians; return seconds."""
        want = expect if expect is not None else len(self.nodes)
        t0 = time.monotonic()
        while True:
            pending = [n for n in (names or [k for k, v in self.nodes.items() if v.running])
                       if len(self.control(n, "custodians")) < want]
            if not pending:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise ClusterError(f"nodes {', '.join(pending)} know fewer than {want} custodians after {timeout} s")
            time.sleep(0.1)

    def rss_mib(self) -> dict[str, float]:
        out = {}
        for name, n in self.nodes.items():
            if n.running and n.proc is not None:
                try:
                    with open(f"/proc/{n.proc.pid}/status") as f:
                        for line in f:
                            if line.startswith("VmRSS:"):
                                out[name] = int(line.split()[1]) / 1024
                except OSError:
                    pass
        return out


def peer_names(cluster: LocalCluster) -> dict[str, str]:
    return {n.peer_id: name for name, n in cluster.nodes.items()}


__all__ = ["FIVE_CONTINENTS", "ClusterError", "LocalCluster", "LocalNode", "NodeSpec", "peer_names", "run_cli"]
