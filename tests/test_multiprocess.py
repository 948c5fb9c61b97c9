"""The multiprocess mode (simulations/_multiprocess.py, _relay.py, _netns.py): one `shardnet run`
process per node, each in a network namespace it alone has, every connection through the
delay relay. Namespaces need root; where this runs without it, these tests say so and skip.

The relay test puts two real processes in two namespaces (an echo server, a client) and times
round trips through the relay: each must measure the configured RTT within 10% (the quickest
of 15, as in test_delay: the relay's delay is a floor that load only adds to), a partition must
hold the bytes until it heals, and a node's address must be out of another namespace's reach.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
import trio

from shardnet.simulations._delay import Links
from shardnet.simulations._netns import Namespaces, unavailable
from shardnet.simulations._relay import Relay
from shardnet.simulations._scenario import run_scenario
from shardnet.simulations._scenarios import SCENARIOS

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"multiprocess mode: {unavailable()}")

PORT = 4001
TRIES = 15

ECHO = textwrap.dedent("""
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(); print("ready", flush=True)
    c, _ = s.accept()
    while data := c.recv(65536):
        c.sendall(data)
""")

CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    addr, port, tries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    s = socket.create_connection((addr, port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    trips = []
    for i in range(tries):
        t = time.perf_counter(); s.sendall(b"ping %d" % i); got = b""
        while len(got) < len(b"ping %d" % i):
            got += s.recv(64)
        trips.append(time.perf_counter() - t)
    print(json.dumps({"trips": trips}), flush=True)
    # then one message, timed alone: across a partition it must wait for the heal
    sys.stdin.readline(); t = time.perf_counter(); s.sendall(b"held"); got = b""
    while len(got) < 4:
        got += s.recv(64)
    print(json.dumps({"held": time.perf_counter() - t}), flush=True)
""")


def _in(ns: Namespaces, i: int, code: str, *args: str) -> list[str]:
    return [*ns.exec_prefix(i), sys.executable, "-c", code, *args]


async def _line(proc: trio.Process, buf: list[bytes]) -> str:
    assert proc.stdout is not None
    while b"\n" not in b"".join(buf):
        chunk = await proc.stdout.receive_some(4096)
        if not chunk:
            raise AssertionError("the process ended without a line")
        buf.append(chunk)
    line, rest = b"".join(buf).split(b"\n", 1)
    buf[:] = [rest]
    return line.decode()


async def _through_relay(one_way: Callable[[str, str], float], *, partition: bool = False) -> dict[str, float]:
    """Round trips from a process in namespace 0 to an echo process in namespace 1, via the relay."""
    ns = Namespaces(2)
    ns.create()
    links = Links(one_way)
    try:
        async with trio.open_nursery() as nursery:
            relay = Relay(ns, PORT, links, lambda i: f"node-{i}", nursery)
            await relay.listen(1)
            echo = await trio.lowlevel.open_process(_in(ns, 1, ECHO, ns.node_addr(1), str(PORT)),
                                                    stdout=subprocess.PIPE)
            client = None
            try:
                with trio.fail_after(30):
                    assert await _line(echo, []) == "ready"
                    client = await trio.lowlevel.open_process(
                        _in(ns, 0, CLIENT, ns.relay_addr(1), str(PORT), str(TRIES)),
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                    buf: list[bytes] = []
                    got = json.loads(await _line(client, buf))
                    assert relay.connections == 1
                    # One more message, across a partition that heals after 1 s, or with none.
                    if partition:
                        links.partition({"node-0"}, {"node-1"})
                    assert client.stdin is not None
                    t_go = trio.current_time()
                    await client.stdin.send_all(b"go\n")
                    cut = 0.0
                    if partition:
                        await trio.sleep(1.0)
                        links.heal()
                        cut = trio.current_time() - t_go  # how long the message could not pass
                    got |= json.loads(await _line(client, buf))
                return {"trip": min(got["trips"]), "first": got["trips"][0], "held": got["held"], "cut": cut}
            finally:
                for proc in (echo, client):
                    if proc is not None:
                        proc.kill()
                        await proc.wait()
                nursery.cancel_scope.cancel()
    finally:
        ns.close()


async def test_the_relay_reproduces_the_configured_rtts_within_10_percent() -> None:
    base = (await _through_relay(lambda a, b: 0.0))["trip"]
    for rtt in (0.06, 0.15):
        got = await _through_relay(lambda a, b, one_way=rtt / 2: one_way)
        assert abs((got["trip"] - base) - rtt) <= 0.1 * rtt, (rtt, got, base)
        # The first trip waits for the TCP handshake's round trip too: the relay forwards nothing before it.
        assert got["first"] - base >= 0.9 * 2 * rtt, (rtt, got, base)


async def test_a_partition_holds_the_bytes_until_it_heals() -> None:
    held = await _through_relay(lambda a, b: 0.01, partition=True)
    free = await _through_relay(lambda a, b: 0.01)  # the same message with no partition: the control
    assert free["held"] < 0.5, free
    # Held for as long as the cut lasted (measured here), then one more trip, as without a cut.
    assert held["cut"] - 0.05 <= held["held"] <= held["cut"] + free["held"] + 0.5, (held, free)


def test_a_node_address_is_out_of_reach_from_another_namespace() -> None:
    ns = Namespaces(2)
    ns.create()
    try:
        probe = "import socket,sys\ntry: socket.create_connection((sys.argv[1], 4001), timeout=3)\n" \
                "except OSError as e: print(e.errno)"
        r = subprocess.run(_in(ns, 0, probe, ns.node_addr(1)), capture_output=True, text=True, timeout=30,
                           check=True)
        assert r.stdout.strip() == "101", r  # ENETUNREACH: no route but the relay's
    finally:
        ns.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert ns.tag not in listed  # closed: nothing left behind


def test_a_scenario_on_node_processes_through_the_relay() -> None:
    """Six `shardnet run` processes: custodians killed up to n-t and one past, then restarted."""
    r = run_scenario(SCENARIOS["loss"], mode="multiprocess", nodes=6, seed=2,
                     params={**SCENARIOS["loss"].params, "t": 2, "n": 4, "wait": 12.0})
    assert r["ok"], r["outcomes"]
    assert len(r["outcomes"]) == 5
    done = [m for m in r["measurements"] if m["seconds"] is not None]
    assert [m["down"] for m in r["measurements"] if m["seconds"] is None] == [3]  # past n-t: no key
    assert done and all(m["seconds"] >= m["bound_s"] for m in done)  # the relay's delays are really there
    assert r["nodes_peak_rss_mib"] > 6 * 40  # six Python processes with libp2p, sampled from /proc
    assert all(m["cpu_s"] > 0.05 for m in done)  # the node processes' CPU, summed


def test_bulk_reencryption_on_node_processes_with_their_autopilot() -> None:
    """The nodes run their autopilot (no --no-autopilot): one revoke reshares every keyset."""
    r = run_scenario(SCENARIOS["bulk"], mode="multiprocess", nodes=6, seed=1,
                     params={**SCENARIOS["bulk"].params, "keysets": 4, "wait": 120.0})
    assert r["ok"], r["outcomes"]
    assert len([m for m in r["measurements"] if m["kind"] == "keyset resharded" and m["seconds"]]) == 4
