"""The inprocess mode's delay layer (simulations/_delay.py), on real libp2p hosts on loopback.

It sits beneath Noise, so every byte of a connection, a request's and a GossipSub hop's
alike, takes the pair's latency: a request on an open connection (one round trip, now that
requests negotiate lazily) measures the configured RTT, and a gossip hop half of it, each
within 10% once the same exchange's time without delay is taken off (the quickest of 15
of each, the delays taking turns within each try).
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import trio
import trio.testing

from shardnet.node import _net as net
from shardnet.simulations._delay import CHUNK, QUEUE, DelayedStream, Links, delay_connections
from shardnet.simulations._linkfaults import RTO_MIN, LinkFaults

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
PROTO = "/shardnet-test/echo/1"
TOPIC = "shardnet-test/delay/1"
TRIES = 15


async def _echo(peer: str, data: bytes) -> bytes:
    return data


@asynccontextmanager
async def _pair(one_way: Callable[[str, str], float]) -> AsyncIterator[tuple[net.NetHost, net.NetHost, Links]]:
    links = Links(one_way)
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        a, b = [await stack.enter_async_context(net.running_node_host(os.urandom(32), LOOPBACK)) for _ in range(2)]
        delay_connections(a.host, links, nursery)  # a dials: its side delays both directions
        net.serve_protocol(b.host, PROTO, _echo, max_len=1024, timeout=10, max_concurrent_per_peer=4)
        await net.connect(a.host, b.listen_addrs[0], 20)
        try:
            yield a, b, links
        finally:
            nursery.cancel_scope.cancel()


async def _requests_and_hops(rtts_ms: tuple[float, ...]) -> tuple[dict[float, float], dict[float, float]]:
    """For each RTT, the quickest request round trip and gossip hop (a to b) of TRIES, in ms,
    over one open connection. The RTTs take turns within each try, so a busy spell on a
    shared machine falls on all of them alike rather than on one RTT's whole series; and the
    layer's delay is a floor that load only adds to, so the minimum is the estimate."""
    rtt_now = [0.0]
    async with _pair(lambda x, y: rtt_now[0] / 2000) as (a, b, _):
        trips: dict[float, list[float]] = {rtt: [] for rtt in rtts_ms}
        for _ in range(TRIES):
            for rtt in rtts_ms:
                # What the last exchange left queued (a window update, say) goes out within
                # its latency, in order: the next exchange, on a quicker link, must not queue
                # behind it.
                await trio.sleep(rtt_now[0] / 1000)
                rtt_now[0] = rtt
                t0 = trio.current_time()
                assert await net.request(a.host, b.peer_id, PROTO, b"ping", max_reply=64, timeout=10) == b"ping"
                trips[rtt].append(trio.current_time() - t0)
        rtt_now[0] = 0.0
        assert a.pubsub is not None and b.pubsub is not None
        sub = await b.pubsub.subscribe(TOPIC)
        await a.pubsub.subscribe(TOPIC)
        assert a.router is not None
        for _ in range(400):  # a's mesh takes b in at a heartbeat
            if a.router.mesh.get(TOPIC):
                break
            await trio.sleep(0.05)
        assert a.router.mesh.get(TOPIC), "no mesh within 20 s"
        hops: dict[float, list[float]] = {rtt: [] for rtt in rtts_ms}
        for i in range(TRIES):
            for j, rtt in enumerate(rtts_ms):
                await trio.sleep(0.2)  # under py-libp2p's per-peer rate limit on a topic
                rtt_now[0] = rtt
                data = b"hop %d.%d" % (i, j)
                t0 = trio.current_time()
                await a.pubsub.publish(TOPIC, data)
                with trio.fail_after(10):
                    while bytes((await sub.get()).data) != data:
                        pass
                hops[rtt].append(trio.current_time() - t0)
        return ({rtt: min(t) * 1000 for rtt, t in trips.items()}, {rtt: min(h) * 1000 for rtt, h in hops.items()})


async def test_the_delay_layer_reproduces_the_configured_rtts_within_10_percent() -> None:
    trips, hops = await _requests_and_hops((0.0, 60.0, 150.0))
    for rtt in (60.0, 150.0):
        # The bytes are held at least their latency, whatever the load...
        assert trips[rtt] >= rtt and hops[rtt] >= rtt / 2, (rtt, trips, hops)
        # ...and the layer adds the configured latency, within 10%, to the same exchange.
        assert abs((trips[rtt] - trips[0.0]) - rtt) <= 0.10 * rtt, (rtt, trips)
        assert abs((hops[rtt] - hops[0.0]) - rtt / 2) <= 0.10 * rtt / 2, (rtt, hops)


async def test_a_partition_holds_the_bytes_until_it_heals() -> None:
    async with _pair(lambda x, y: 0.02) as (a, b, links):
        links.partition({a.peer_id}, {b.peer_id})
        with trio.move_on_after(1.0) as cut:
            await net.request(a.host, b.peer_id, PROTO, b"held", max_reply=64, timeout=5)
        assert cut.cancelled_caught  # no answer while cut apart
        got: list[bytes] = []

        async def ask() -> None:
            got.append(await net.request(a.host, b.peer_id, PROTO, b"after", max_reply=64, timeout=10))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            await trio.sleep(0.5)
            assert not got
            links.heal()
        assert got == [b"after"]


async def test_slow_and_lossy_links_on_real_hosts() -> None:
    # The inprocess mode's link faults (simulations/_linkfaults.py) through the delay layer:
    # a slow link adds its extra each way; a lossy one costs retransmission timeouts.
    faults = LinkFaults(random.Random(5))
    async with _pair(lambda x, y: 0.01 + faults.penalty(x, y, 0.01)) as (a, b, _):
        async def trip() -> float:
            t0 = trio.current_time()
            assert await net.request(a.host, b.peer_id, PROTO, b"ping", max_reply=64, timeout=30) == b"ping"
            return trio.current_time() - t0

        with trio.fail_after(60):
            base = min([await trip() for _ in range(3)])
            faults.degrade(extra_s=0.04)
            slow = min([await trip() for _ in range(3)])
            faults.degrade(loss=0.3)
            lossy = max([await trip() for _ in range(8)])
        assert slow - base >= 0.08 * 0.95, (base, slow)
        assert lossy - base >= RTO_MIN, (base, lossy)

class _Socket:
    """One end of trio's in-memory stream pair, as py-libp2p's TCP stream looks to the layer."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream

    async def write(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def read(self, n: int | None = None) -> bytes:
        return await self.stream.receive_some(n)

    async def close(self) -> None:
        await self.stream.aclose()

    def get_remote_address(self) -> None:
        return None


async def test_a_read_cancelled_while_its_bytes_are_held_loses_none_of_them() -> None:
    near, far = trio.testing.memory_stream_pair()
    with trio.fail_after(10):  # a lost chunk would leave the second read waiting
        await _cancelled_read(near, far)


async def _cancelled_read(near: trio.abc.Stream, far: trio.abc.Stream) -> None:
    async with trio.open_nursery() as nursery:
        d = DelayedStream(_Socket(near), local="a", remote="b", links=Links(lambda x, y: 0.5), nursery=nursery)
        await far.send_all(b"abc")
        for _ in range(500):  # until the pump has the chunk, held for its 0.5 s
            if d._in_recv.statistics().current_buffer_used:
                break
            await trio.sleep(0.01)
        with trio.move_on_after(0.05) as scope:
            await d.read(10)
        assert scope.cancelled_caught  # the read took the chunk and was cancelled waiting for its time
        assert not d._in_recv.statistics().current_buffer_used
        assert await d.read(10) == b"abc"
        assert await d.read(0) == b""  # at once, as a socket's
        await d.close()
        await d.write(b"after")  # dropped, as py-libp2p's TCP stream drops a write after close
        assert await d.read(10) == b""


async def test_a_large_write_goes_out_whole_and_in_order() -> None:
    near, far = trio.testing.memory_stream_pair()
    data = os.urandom(5 * CHUNK + 7)
    got = bytearray()
    async with trio.open_nursery() as nursery:
        d = DelayedStream(_Socket(near), local="a", remote="b", links=Links(lambda x, y: 0.01), nursery=nursery)
        await d.write(data)
        with trio.fail_after(10):
            while len(got) < len(data):
                got += await far.receive_some()
        assert bytes(got) == data
        await d.close()


async def test_a_writer_far_ahead_of_the_link_waits() -> None:
    # At most QUEUE chunks of CHUNK bytes are held per direction: one write of more waits.
    near, _far = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        d = DelayedStream(_Socket(near), local="a", remote="b", links=Links(lambda x, y: 30.0), nursery=nursery)
        with trio.move_on_after(1.0) as scope:
            await d.write(bytes((QUEUE + 2) * CHUNK))
        assert scope.cancelled_caught
        await d.close()
