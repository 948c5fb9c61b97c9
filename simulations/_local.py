"""A local network of real node processes on loopback (tests, demo, research).

Each node is a separate OS process started through the CLI (``shardnet run``)
with its own home directory; they find each other through a bootstrap address
and the directory protocol. Nothing here listens anywhere but 127.0.0.1.

The nodes form a single-operator network, set up through the CLI as an
operator would: the first node creates it (``network create``, K = 1) and
admits every other node from its join request (``network request``, then
``admit`` with the node's spec as the vouched attributes).
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

    def __init__(self, root: pathlib.Path, specs: list[NodeSpec], *, admit: bool = True,
                 autopilot: bool = False) -> None:
        """``admit``: admit every node to the network as it is initialised (False: the
        test admits, or leaves out, whom it wants with :meth:`admit`). ``autopilot``: the
        nodes run the epoch actions triggers call for (off: the test drives them)."""
        self.root = pathlib.Path(root)
        self.nodes = {s.name: LocalNode(s, Home(self.root / s.name)) for s in specs}
        self.auto_admit = admit
        self.autopilot = autopilot
        self.network_file = self.root / "network.toml"
        self.authority = specs[0].name if specs else ""

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
        """``shardnet init`` every node that has no home yet, all at once; then the network:
        created by the first node if need be, joined and (with ``admit``) admitted by all."""
        todo = [n for n in self.nodes.values() if not n.home.config_file.exists()]
        _parallel([["init", "--home", str(n.home.path), "--name", n.spec.name, "--country", n.spec.country,
                    *(["--city", n.spec.city] if n.spec.city else []), *(["--org", n.spec.org] if n.spec.org else [])]
                   for n in todo])
        for n in self.nodes.values():
            n.peer_id = n.home.peer_id()
        first = self.nodes[self.authority]
        if not self.network_file.exists():
            run_cli("network", "create", "--home", str(first.home.path), "--out", str(self.network_file),
                    "--name", "local", check=True)
        outside = [n for n in self.nodes.values() if not _joined(n.home)]
        _parallel([["network", "join", "--home", str(n.home.path), str(self.network_file)] for n in outside])
        if self.auto_admit:
            self.admit(*[n.spec.name for n in self.nodes.values() if n.spec.name != self.authority])

    def scoped(self, name: str) -> str:
        """A protocol id or topic as this cluster's network spells it (``wire.scoped``)."""
        from shardnet.node._network_commands import read_network_file
        from shardnet.protocol import wire

        return wire.scoped(name, read_network_file(self.network_file).prefix)

    def admit_key(self, key: Any, *, name: str, country: str, org: str = "Outside Org",
                  roles: str = "custodian,approver") -> None:
        """Admit a peer that is no node of the cluster (a test's own host) by its identity key."""
        import base64
        import json

        from shardnet.node._network_commands import read_network_file
        from shardnet.protocol import JoinRequest

        g = read_network_file(self.network_file)
        j = JoinRequest.make(key, network_id=g.network_id, hpke={"x25519": b"\x01" * 32}, name=name, org=org,
                             country=country, city="", time=int(time.time()))
        if self.nodes[self.authority].running:  # what `shardnet admit` asks the running node
            self.control(self.authority, "admit", {
                "join_request": base64.b64encode(j.signed).decode(), "org": org, "country": country,
                "roles": roles.split(","), "expires": 86400})
            return
        f = self.root / f"join-{j.peer_id[-8:]}.json"
        f.write_text(json.dumps({"join_request": base64.b64encode(j.signed).decode()}))
        run_cli("admit", "--home", str(self.nodes[self.authority].home.path), str(f), "--org", org,
                "--country", country, "--roles", roles, check=True)

    def admitted(self) -> set[str]:
        """Peer ids the authority's node has admitted (read from its database)."""
        from shardnet.node._members import Members

        with self.nodes[self.authority].home.open_store() as store:
            members = Members.of(store, self.nodes[self.authority].home.identity())
            return {a.peer_id for a in members.view.admissions()}

    def admit(self, *names: str, roles: str = "custodian,approver") -> None:
        """Admit these nodes (not admitted yet) with their specs' attributes, as an operator
        would: each writes a join request, and the authority admits it."""
        done = self.admitted()
        todo = [self.nodes[name] for name in names if self.nodes[name].peer_id not in done]
        _parallel([["network", "request", "--home", str(n.home.path), "--out", str(n.home.path / "join.json"),
                    "--force"] for n in todo])
        _parallel([["admit", "--home", str(self.nodes[self.authority].home.path), str(n.home.path / "join.json"),
                    "--org", n.spec.org or n.spec.name, "--country", n.spec.country, "--city", n.spec.city,
                    "--roles", roles] for n in todo])

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
        args = [*(command or CLI), "run", "--home", str(n.home.path), "--quiet",
                *([] if self.autopilot else ["--no-autopilot"])]
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


def _joined(home: Home) -> bool:
    with home.open_store() as store:
        return store.genesis() is not None


def _parallel(commands: list[list[str]]) -> None:
    """Run ``shardnet`` commands at once; ClusterError naming every one that failed."""
    procs = [(args, subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
             for args in commands]
    failed = []
    try:
        for args, proc in procs:
            _, err = proc.communicate(timeout=60)
            if proc.returncode != 0:
                failed.append(f"shardnet {' '.join(args[:3])} failed ({proc.returncode}): {err.decode().strip()}")
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if failed:
        raise ClusterError("; ".join(failed))


def peer_names(cluster: LocalCluster) -> dict[str, str]:
    return {n.peer_id: name for name, n in cluster.nodes.items()}


__all__ = ["FIVE_CONTINENTS", "ClusterError", "LocalCluster", "LocalNode", "NodeSpec", "peer_names", "run_cli"]
