"""What one peer can make a host hold (shardnet.node._bounds), with real hosts on loopback.

Each test plays a peer that breaks one rule, and checks the server's own muxer
state afterwards: how many streams it still tracks, and how many bytes it
still buffers for that connection.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from shardnet.node import _bounds
from shardnet.node import _net as net
from shardnet.node._bounds import PeerGuard

from .test_net import MAX_LEN, PROTO, echo_works, hosts, raw_stream, read_reply, serve_echo

DEADLINE = 20.0
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _collect_leaked_sockets() -> Iterator[None]:
    yield
    gc.collect()


def muxer(host: net.NetHost, peer: str) -> Yamux:
    conns = [c for c in host.host.get_network().get_connections(ID.from_base58(peer)) if not c.is_closed]
    assert len(conns) == 1
    m = conns[0].muxed_conn
    assert isinstance(m, Yamux)
    return m


def held(m: Yamux) -> tuple[int, int]:
    """(streams tracked, bytes buffered) on one connection."""
    return len(m.streams), sum(len(b) for b in m.stream_buffers.values())


async def until(cond: Any, seconds: float = 3.0) -> bool:
    """Poll ``cond`` until it holds or ``seconds`` pass; whether it held."""
    for _ in range(int(seconds / 0.02)):
        if cond():
            return True
        await trio.sleep(0.02)
    return bool(cond())


async def settle(m: Yamux, want_streams: int) -> tuple[int, int]:
    """The muxer's state once the peer's in-flight frames have arrived."""
    await until(lambda: held(m)[0] <= want_streams and not held(m)[1], 2.0)
    await trio.sleep(0.1)
    return held(m)


def connected(a: net.NetHost, b: net.NetHost) -> bool:
    return any(not c.is_closed for c in a.host.get_network().get_connections(ID.from_base58(b.peer_id)))


# -- the guard, sans IO ----------------------------------------------------------------


def test_guard_bans_after_the_limit_within_the_window_then_forgives() -> None:
    g = PeerGuard(violation_limit=3, window=10.0, ban=30.0)
    assert not g.violation("p", 0.0) and not g.violation("p", 1.0)
    assert not g.violation("p", 11.5)  # the first two have left the window
    assert not g.violation("p", 12.0) and not g.banned("p", 12.0)
    assert g.violation("p", 12.5)  # three within 10 s
    assert g.banned("p", 12.5) and g.banned("p", 42.4) and not g.banned("p", 42.5)
    assert not g.banned("q", 12.5)


def test_guard_bounds_requests_in_progress_per_peer() -> None:
    g = PeerGuard(max_inbound=2)
    assert g.begin("p") and g.begin("p") and not g.begin("p") and g.begin("q")
    g.end("p")
    assert g.begin("p")


# -- streams we refuse are reset and forgotten -------------------------------------------


@pytest.mark.parametrize("case", ["too-large", "trailing-bytes", "refused-then-more"])
async def test_a_refused_stream_leaves_nothing_behind(case: str) -> None:
    async def refuse(peer: str, payload: bytes) -> bytes:
        raise net.RequestRejected("no")

    with trio.fail_after(DEADLINE):
        async with hosts(2) as (a, b):
            if case == "refused-then-more":
                net.serve_protocol(a.host, PROTO, refuse, max_len=MAX_LEN, timeout=1.0, max_concurrent_per_peer=4)
            else:
                serve_echo(a)
            m = muxer(a, b.peer_id)
            base = held(m)[0]
            kept = []
            for _ in range(12):  # fewer than it takes to be disconnected
                stream = await raw_stream(b, a)
                kept.append(stream)  # the peer never closes or resets its side
                if case == "too-large":
                    await stream.write((200_000).to_bytes(4, "big") + b"x" * 200_000)
                elif case == "trailing-bytes":
                    await stream.write((5).to_bytes(4, "big") + b"hello" + b"x" * 200_000)
                else:
                    await stream.write((5).to_bytes(4, "big") + b"hello")
                status, _ = await read_reply(stream)
                if case == "refused-then-more":
                    assert status is net.ReplyStatus.REJECTED
                    with contextlib.suppress(Exception):  # its side may already have seen the RST
                        await stream.write(b"x" * 200_000)  # keeps sending on a stream it was refused on
                elif case == "too-large":
                    assert status is net.ReplyStatus.TOO_LARGE
                else:
                    assert status is net.ReplyStatus.OK
            streams, buffered = await settle(m, base)
            assert streams <= base and buffered == 0, (streams, buffered)
            assert connected(a, b)  # under the violation limit, and a refusal is no violation
            if case == "refused-then-more":
                with pytest.raises(net.RemoteError, match="REJECTED"):
                    await net.request(b.host, a.peer_id, PROTO, b"hi", max_reply=MAX_LEN, timeout=2.0)
            else:
                await echo_works(b, a)


async def test_an_honest_request_ends_cleanly_on_both_sides() -> None:
    with trio.fail_after(DEADLINE):
        async with hosts(2) as (a, b):
            serve_echo(a)
            ma, mb = muxer(a, b.peer_id), muxer(b, a.peer_id)
            assert type(ma) is type(mb) is _bounds.BoundedYamux
            base_a, base_b = held(ma)[0], held(mb)[0]
            for _ in range(50):
                await echo_works(b, a)
            for m, base in ((ma, base_a), (mb, base_b)):
                streams, buffered = await settle(m, base)
                assert streams <= base and buffered == 0
            assert not net.guard_of(a.host)._violations  # an honest client breaks no rule


# -- a peer that keeps breaking the rules loses its connection ---------------------------


async def test_a_repeat_offender_is_disconnected_and_refused_for_a_while() -> None:
    with trio.fail_after(DEADLINE):
        async with hosts(3) as (a, b, c):
            serve_echo(a)
            for _ in range(_bounds.VIOLATION_LIMIT):
                if not connected(b, a):
                    break
                stream = await raw_stream(b, a)
                await stream.write((MAX_LEN + 1).to_bytes(4, "big"))
                with contextlib.suppress(Exception):  # the last one may lose its reply with the connection
                    await read_reply(stream)
            assert await until(lambda: not connected(a, b))
            # It may dial again, but its next stream is refused and the connection closed.
            await net.connect(b.host, a.listen_addrs[0], timeout=2.0)
            with pytest.raises(net.RequestError):
                await net.request(b.host, a.peer_id, PROTO, b"hi", max_reply=MAX_LEN, timeout=2.0)
            # Everyone else is served as before.
            await echo_works(c, a)


# -- caps per connection -------------------------------------------------------------------


async def test_a_peer_that_ignores_the_receive_window_is_cut_off_at_the_unread_cap() -> None:
    started = trio.Event()

    async def slow(peer: str, payload: bytes) -> bytes:
        started.set()
        await trio.sleep(10)
        return b""

    with trio.fail_after(DEADLINE):
        async with hosts(3) as (a, b, c):
            net.serve_protocol(a.host, PROTO, slow, max_len=MAX_LEN, timeout=15.0, max_concurrent_per_peer=4)
            stream = await raw_stream(b, a)
            await stream.write((1).to_bytes(4, "big") + b"x")
            await started.wait()
            # Our own py-libp2p would respect the window; a hostile peer need not.
            muxed: Any = stream.muxed_stream
            muxed.send_window = 1 << 30
            with contextlib.suppress(Exception):  # the write fails once the connection is gone
                for _ in range(40):  # 10 MiB, above the 8 MiB cap
                    await stream.write(b"y" * 256 * 1024)
            assert await until(lambda: not connected(a, b))
            serve_echo(a)
            await echo_works(c, a)


async def test_too_many_streams_on_one_connection_close_it() -> None:
    with trio.fail_after(DEADLINE):
        async with hosts(3) as (a, b, c):
            serve_echo(a)
            m: Any = muxer(b, a.peer_id)
            m.stream_backlog_semaphore = trio.Semaphore(1 << 16)  # the attacker lifts its own cap
            opened = []
            with contextlib.suppress(Exception):  # opening fails once the connection is gone
                for _ in range(_bounds.MAX_STREAMS_PER_CONNECTION + 10):
                    # A bare SYN: a raw muxer stream that sends no data and never negotiates.
                    opened.append(await m.open_stream())
                    await trio.sleep(0.005)
            assert await until(lambda: not connected(a, b))
            assert b.peer_id in net.guard_of(a.host)._violations  # going over a cap counts
            await echo_works(c, a)


async def test_requests_in_progress_are_bounded_per_peer_across_protocols() -> None:
    release = trio.Event()

    async def blocking(peer: str, payload: bytes) -> bytes:
        await release.wait()
        return b"done"

    cap = _bounds.MAX_INBOUND_PER_PEER
    protocols = [f"/shardnet/test-block-{i}/1" for i in range(4)]
    with trio.fail_after(DEADLINE):
        async with hosts(2) as (a, b):
            for proto in protocols:  # room for cap + 8 in all, but the peer's limit is cap
                net.serve_protocol(a.host, proto, blocking, max_len=MAX_LEN, timeout=10.0,
                                   max_concurrent_per_peer=cap // 4 + 2)
            outcomes: list[str] = []

            async def call(proto: str) -> None:
                try:
                    await net.request(b.host, a.peer_id, proto, b"", max_reply=64, timeout=8.0)
                    outcomes.append("done")
                except net.RemoteError as exc:
                    outcomes.append(exc.status.name)

            async with trio.open_nursery() as nursery:
                for i in range(cap + 4):  # under each protocol's limit, over the peer's
                    nursery.start_soon(call, protocols[i % 4])
                await until(lambda: len(outcomes) >= 4)
                release.set()
            assert outcomes.count("BUSY") == 4 and outcomes.count("done") == cap
            assert connected(a, b) and not net.guard_of(a.host)._violations  # a burst is no violation
            # The slots are given back.
            assert await net.request(b.host, a.peer_id, protocols[0], b"", max_reply=64, timeout=2.0) == b"done"


async def test_one_byte_after_the_request_is_a_violation() -> None:
    with trio.fail_after(DEADLINE):
        async with hosts(2) as (a, b):
            serve_echo(a)
            stream = await raw_stream(b, a)
            await stream.write((5).to_bytes(4, "big") + b"hello")
            assert (await read_reply(stream))[0] is net.ReplyStatus.OK
            await stream.write(b"!")  # while the server lingers for our FIN
            assert await until(lambda: b.peer_id in net.guard_of(a.host)._violations)
            await stream.reset()


async def test_a_busy_reply_reaches_a_client_still_writing_a_large_request() -> None:
    release = trio.Event()

    async def blocking(peer: str, payload: bytes) -> bytes:
        await release.wait()
        return b"done"

    with trio.fail_after(DEADLINE):
        async with hosts(2) as (a, b):
            net.serve_protocol(a.host, PROTO, blocking, max_len=1 << 20, timeout=10.0, max_concurrent_per_peer=1)
            async def first() -> None:
                await net.request(b.host, a.peer_id, PROTO, b"", max_reply=64, timeout=8.0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(first)
                await trio.sleep(0.3)
                # 400 KB: more than the first receive window, so the server's reset lands mid-write.
                with pytest.raises(net.RemoteError) as info:
                    await net.request(b.host, a.peer_id, PROTO, b"x" * 400_000, max_reply=64, timeout=5.0)
                assert info.value.status is net.ReplyStatus.BUSY
                release.set()
