"""A delay layer beneath Noise: each pair's one-way latency on every byte of a real
libp2p connection, in both directions (the ``inprocess`` mode).

:func:`delay_connections` hooks a host's upgrader so that an outbound raw TCP
connection is wrapped in a :class:`DelayedStream` before the security
handshake starts. Everything on the connection then takes the pair's latency:
multistream-select, the Noise handshake, yamux, every GossipSub hop. Only the
dialing side wraps (it alone knows the peer before the handshake), and it
delays both directions: what it writes by latency(local, remote), what it reads
by latency(remote, local). One connection per pair (the node's libp2p config)
thus carries each byte's delay once.

A write returns at once and the bytes reach the socket when their time comes,
in order, as a kernel's send buffer and a long link would do; reads are held
likewise. A partition between the two (:class:`Links`) holds the bytes until it
heals, as TCP would keep retrying. Two background tasks per connection, in the
nursery the layer is given, do the holding; a queue of at most ``QUEUE`` chunks
of ``CHUNK`` bytes per direction pushes back on a writer that runs ahead. The
TCP handshake takes its round trip too: the dialer waits one RTT before its
first byte. After a local close, as on py-libp2p's own TCP stream, a write is
dropped and a read sees the end of the stream.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.io.abc import ReadWriteCloser
from libp2p.network.connection.raw_connection import RawConnection

QUEUE = 256  # chunks held per direction before a writer (or the socket reader) waits
CHUNK = 64 * 1024  # so at most 16 MiB held per direction


class Links:
    """Each pair's one-way latency, and the pairs cut apart."""

    def __init__(self, latency: Callable[[str, str], float]) -> None:
        self.latency = latency
        self._cuts: set[frozenset[str]] = set()
        self._healed = trio.Event()
        self._open: set[DelayedStream] = set()  # the delayed connections not closed yet

    async def close_all(self, peer: str) -> None:
        """Close every delayed connection of ``peer``'s, dialed by it or to it, as the kernel
        closes a dead process's sockets: a host that stopped without closing one (py-libp2p
        closes them one by one, within a time limit) would otherwise leave it open to the
        other side, and its pumps running."""
        for stream in [s for s in self._open if peer in (s.local, s.remote)]:
            await stream.close()

    def partition(self, side_a: set[str], side_b: set[str]) -> None:
        self._cuts |= {frozenset((a, b)) for a in side_a for b in side_b}

    def heal(self) -> None:
        self._cuts.clear()
        self._healed.set()
        self._healed = trio.Event()

    def cut(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self._cuts

    async def until_linked(self, a: str, b: str) -> None:
        while self.cut(a, b):
            await self._healed.wait()


class DelayedStream(ReadWriteCloser):
    """A ReadWriteCloser over another, each byte held for its direction's latency."""

    def __init__(self, inner: Any, *, local: str, remote: str, links: Links, nursery: trio.Nursery) -> None:
        self.inner = inner
        self.local, self.remote, self.links = local, remote, links
        self._out_send, self._out_recv = trio.open_memory_channel[tuple[float, bytes]](QUEUE)
        self._in_send, self._in_recv = trio.open_memory_channel[tuple[float, bytes | BaseException]](QUEUE)
        self._pending = b""
        self._held: tuple[float, bytes | BaseException] | None = None  # received, its time not yet come
        self._closed = False
        self._error: BaseException | None = None
        self._scope = trio.CancelScope()
        links._open.add(self)
        nursery.start_soon(self._pumps)

    async def _pumps(self) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as n:
                    n.start_soon(self._pump_out)
                    n.start_soon(self._pump_in)
        finally:
            self._in_send.close()  # a reader waiting for bytes sees the end of the stream
            self.links._open.discard(self)

    async def _until(self, due: float) -> None:
        await self.links.until_linked(self.local, self.remote)
        wait = due - trio.current_time()
        if wait > 0:
            await trio.sleep(wait)
        await self.links.until_linked(self.local, self.remote)

    async def _pump_out(self) -> None:
        try:
            async for due, data in self._out_recv:
                await self._until(due)
                await self.inner.write(data)
        except Exception as exc:  # noqa: BLE001 - handed to the next write, as the socket's own error
            self._error = exc

    async def _pump_in(self) -> None:
        while True:
            try:
                data: bytes | BaseException = await self.inner.read(CHUNK)
            except Exception as exc:  # noqa: BLE001 - handed to the reader, in order, after the delay
                data = exc
            await self._in_send.send((trio.current_time() + self.links.latency(self.remote, self.local), data))
            if not isinstance(data, bytes) or not data:  # an error, or the end of the stream
                return

    async def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            return
        due = trio.current_time() + self.links.latency(self.local, self.remote)
        view = bytes(data)
        try:
            for at in range(0, len(view), CHUNK):
                await self._out_send.send((due, view[at:at + CHUNK]))
        except trio.ClosedResourceError:
            return  # closed while this write waited for room: dropped, as after a close

    async def read(self, n: int | None = None) -> bytes:
        if n == 0 or self._closed:
            return b""
        if not self._pending:
            if self._held is None:
                try:
                    self._held = await self._in_recv.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return b""
            await self._until(self._held[0])  # cancelled here, the chunk stays held for the next read
            data, self._held = self._held[1], None
            if isinstance(data, BaseException):
                raise data
            if not data:
                return b""
            self._pending = data
        cut = len(self._pending) if n is None else max(0, min(n, len(self._pending)))
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out

    async def close(self) -> None:
        """The socket closes at once; bytes still held are dropped, as a reset drops them
        (libp2p closes a connection only when it is done with it, or going away)."""
        self._closed = True
        self.links._open.discard(self)
        self._out_send.close()
        self._scope.cancel()
        await self.inner.close()

    def get_remote_address(self) -> tuple[str, int] | None:
        got: tuple[str, int] | None = self.inner.get_remote_address()
        return got


def delay_connections(host: IHost, links: Links, nursery: trio.Nursery) -> None:
    """From now on, every connection ``host`` dials carries the links' latency."""
    upgrader = host.get_network().upgrader  # type: ignore[attr-defined]  # the Swarm's (node/_net.py builds one)
    original = upgrader.upgrade_security
    local = host.get_id().to_base58()

    async def upgrade_security(raw_conn: Any, is_initiator: bool, peer_id: Any = None) -> Any:
        if is_initiator and peer_id is not None and isinstance(raw_conn, RawConnection):
            remote = peer_id.to_base58()
            await links.until_linked(local, remote)  # the TCP handshake: SYN there, SYN-ACK back
            await trio.sleep(links.latency(local, remote) + links.latency(remote, local))
            raw_conn.stream = DelayedStream(raw_conn.stream, local=local, remote=remote, links=links, nursery=nursery)
        return await original(raw_conn, is_initiator, peer_id)

    upgrader.upgrade_security = upgrade_security


__all__ = ["DelayedStream", "Links", "delay_connections"]
