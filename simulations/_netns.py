"""Network namespaces for the ``multiprocess`` mode: every node its own address.

Node i runs in the namespace ``shardnet-PID-i``, bound to its node address
``10.K.a.b``. The delay relay (``_relay``) listens for it in the namespace this
process runs in, at its relay address ``10.K.(128+a).b``. A veth pair joins the
two namespaces, and only these routes exist:

* in node i's namespace, the relay range ``10.K.128.0/17`` through its veth, by
  way of its own relay address (so it resolves one neighbour only, whatever this
  host's ARP settings), with its node address as the source: a node reaches
  another only through the relay, and the relay tells who dialed by the source
  address;
* here, node i's address through its veth, so that the relay can reach it.

There is no default route in a node's namespace and forwarding is left as it
is, so nothing a node sends can go anywhere else. ``K`` is a second octet no
address here uses yet. Making namespaces needs root (CAP_NET_ADMIN) and
iproute2's ``ip``; :func:`unavailable` says why not, where it cannot.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

PREFIX = "shardnet-"
PER_BLOCK = 200  # node addresses per third octet (b = 1..200): up to 128 * 200 nodes
MAX_NODES = 128 * PER_BLOCK


class NamespaceError(RuntimeError):
    pass


def unavailable() -> str | None:
    """Why this process cannot make network namespaces, or None if it can."""
    if os.geteuid() != 0:
        return "network namespaces need root (each node gets its own address in one)"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's 'ip' command (Debian package iproute2)"
    return None


def _ip(*args: str, batch: str | None = None) -> str:
    r = subprocess.run(["ip", *args], input=batch, capture_output=True, text=True, timeout=120, check=False)
    if r.returncode != 0:
        raise NamespaceError(f"ip {' '.join(args)} failed: {r.stderr.strip() or r.returncode}")
    return r.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> int:
    """Delete the namespaces a run that died left behind (its process is gone); how many."""
    stale = []
    for line in _ip("netns", "list").splitlines():
        m = re.match(rf"{PREFIX}(\d+)-\d+\b", line)
        if m and not _alive(int(m.group(1))):
            stale.append(line.split()[0])
    for name in stale:  # a process left inside would keep the namespace alive once unnamed
        for pid in _ip("netns", "pids", name).split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    if stale:
        _ip("-force", "-batch", "-", batch="".join(f"netns del {name}\n" for name in stale))
    return len(stale)


def _free_octet() -> int:
    used = {int(m.group(1)) for m in re.finditer(r"inet 10\.(\d+)\.", _ip("-o", "-4", "addr", "show"))}
    for k in range(64, 251):
        if k not in used:
            return k
    raise NamespaceError("no free 10.K.0.0/16 block for the node addresses")


class Namespaces:
    """One namespace per node, made by :meth:`create` and deleted by :meth:`close`."""

    def __init__(self, count: int) -> None:
        if not 0 < count <= MAX_NODES:
            raise NamespaceError(f"1 to {MAX_NODES} nodes, not {count}")
        self.count = count
        self.tag = f"{PREFIX}{os.getpid()}"
        remove_stale()
        self.octet = _free_octet()
        self._made: list[str] = []

    def name(self, i: int) -> str:
        return f"{self.tag}-{i}"

    def _addr(self, i: int, high: int) -> str:
        return f"10.{self.octet}.{high + i // PER_BLOCK}.{i % PER_BLOCK + 1}"

    def node_addr(self, i: int) -> str:
        return self._addr(i, 0)

    def relay_addr(self, i: int) -> str:
        return self._addr(i, 128)

    def index_of(self, node_addr: str) -> int | None:
        """The node whose address this is (a connection's source, at the relay)."""
        parts = node_addr.split(".")
        if len(parts) != 4 or parts[0] != "10" or parts[1] != str(self.octet):
            return None
        high, low = int(parts[2]), int(parts[3])
        i = high * PER_BLOCK + low - 1
        return i if high < 128 and 1 <= low <= PER_BLOCK and i < self.count else None

    def exec_prefix(self, i: int) -> list[str]:
        """What runs a command in node i's namespace."""
        return ["ip", "netns", "exec", self.name(i)]

    def create(self) -> None:
        here = []
        for i in range(self.count):
            ns, outer, inner = self.name(i), f"sn{self.octet}r{i}", f"sn{self.octet}n{i}"
            here += [f"netns add {ns}", f"link add {outer} type veth peer name {inner} netns {ns}",
                     f"addr add {self.relay_addr(i)}/32 dev {outer}", f"link set {outer} up",
                     f"route add {self.node_addr(i)}/32 dev {outer} src {self.relay_addr(i)}"]
        try:
            for i in range(self.count):
                self._made.append(self.name(i))  # before: a half-made one is deleted too
                _ip("-batch", "-", batch="".join(f"{line}\n" for line in here[5 * i:5 * i + 5]))
            for i in range(self.count):
                inner = f"sn{self.octet}n{i}"
                _ip("-n", self.name(i), "-batch", "-", batch=(
                    f"link set lo up\naddr add {self.node_addr(i)}/32 dev {inner}\nlink set {inner} up\n"
                    f"route add 10.{self.octet}.128.0/17 via {self.relay_addr(i)} dev {inner} onlink "
                    f"src {self.node_addr(i)}\n"))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Delete every namespace made (their veths, addresses and routes go with them)."""
        made, self._made = self._made, []
        if made:
            _ip("-force", "-batch", "-", batch="".join(f"netns del {name}\n" for name in made))


__all__ = ["NamespaceError", "Namespaces", "remove_stale", "unavailable"]
