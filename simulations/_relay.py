"""The ``multiprocess`` mode's delay relay: every connection between two node
processes passes through here and takes the pair's latency, both ways.

This machine's kernel has no netem, so the delay is added in user space. Each
node announces its relay address (``_netns``); a node dialing it reaches this
process, which knows the dialer by the connection's source address and the
dialed node by the address it was reached at. It then connects to the dialed
node and pumps the bytes both ways, each chunk held until ``now +
latency(from, to)`` (``Links``: the topology's latency with its link faults,
and partitions that hold the bytes until they heal), in order, as the
inprocess delay layer does beneath Noise. The TCP handshake takes its round
trip: nothing is forwarded before one RTT has passed (after a partition heals,
for a connection dialed across it). A half-close is passed on as a half-close,
after its delay; a reset or a read error likewise as a reset, behind the bytes
sent before it, and it ends the connection. A write that fails ends only its
own direction: the other side's bytes still arrive, then its close. While a
node is down its relay address refuses connections, as the kernel of a machine
with no process on the port would.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Sequence
from functools import partial

import trio

from ._delay import CHUNK, QUEUE, Links
from ._netns import Namespaces

_RESET = None  # a direction's end by error: the connection goes


class Relay:
    def __init__(self, ns: Namespaces, port: int, links: Links, peer: Callable[[int], str],
                 nursery: trio.Nursery) -> None:
        self.ns, self.port, self.links, self.peer = ns, port, links, peer
        self._nursery = nursery  # the connections live here, past their listener
        self._listening: dict[int, tuple[trio.CancelScope, Sequence[trio.SocketListener]]] = {}
        self.connections = 0  # accepted so far

    async def listen(self, i: int) -> None:
        """Accept connections for node ``i`` (at its relay address) from now on."""
        if i in self._listening:
            return
        listeners = await trio.open_tcp_listeners(self.port, host=self.ns.relay_addr(i))
        scope = trio.CancelScope()
        self._listening[i] = (scope, listeners)
        self._nursery.start_soon(self._serve, scope, listeners, i)

    def refuse(self, i: int) -> None:
        """Stop accepting for node ``i`` (it is down): its listener closes now, so that the port
        is free for the next :meth:`listen`; open connections stay."""
        scope, listeners = self._listening.pop(i, (None, ()))
        if scope is not None:
            scope.cancel()
        for listener in listeners:
            listener.socket.close()

    async def _serve(self, scope: trio.CancelScope, listeners: Sequence[trio.SocketListener], i: int) -> None:
        with scope:
            try:
                await trio.serve_listeners(partial(self._connection, i), listeners, handler_nursery=self._nursery)
            except* trio.ClosedResourceError:
                pass  # refused: closed under the accept (its accept loops raise it grouped)

    async def _connection(self, i: int, client: trio.SocketStream) -> None:
        """One dialed connection; whatever goes wrong with its sockets ends it alone."""
        try:
            async with client:
                await self._relay(i, client)
        except OSError:
            pass  # reset before we looked, or an error closing: the connection is gone either way

    async def _relay(self, i: int, client: trio.SocketStream) -> None:
        source = self.ns.index_of(client.socket.getpeername()[0])
        if source is None:
            return  # not one of the nodes
        self.connections += 1
        a, b = self.peer(source), self.peer(i)
        await self.links.until_linked(a, b)
        t0 = trio.current_time()
        rtt = self.links.latency(a, b) + self.links.latency(b, a)
        try:
            upstream = await trio.open_tcp_stream(self.ns.node_addr(i), self.port)
        except OSError:
            return  # the node is not listening (yet): the dialer sees the connection close
        async with upstream:
            await trio.sleep_until(t0 + rtt)  # SYN there, SYN-ACK back
            with trio.CancelScope() as conn:
                async with trio.open_nursery() as n:
                    n.start_soon(self._pump, client, upstream, a, b, conn)
                    n.start_soon(self._pump, upstream, client, b, a, conn)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, a: str, b: str,
                    conn: trio.CancelScope) -> None:
        """One direction: what ``src`` (node a's side) sends reaches ``dst`` after latency(a, b)."""
        send, recv = trio.open_memory_channel[tuple[float, bytes | None]](QUEUE)

        async def reader() -> None:
            async with send:
                while True:
                    try:
                        data: bytes | None = await src.receive_some(CHUNK)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        data = _RESET
                    await send.send((trio.current_time() + self.links.latency(a, b), data))
                    if not data:
                        return

        async with trio.open_nursery() as n:
            n.start_soon(reader)
            async with recv:
                async for due, data in recv:
                    await self.links.until_linked(a, b)
                    await trio.sleep_until(due)
                    await self.links.until_linked(a, b)
                    try:
                        if data is _RESET:
                            # A reset, passed on as one: closing with a zero linger sends RST.
                            dst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                            conn.cancel()  # both sockets close on the way out
                        elif not data:
                            await dst.send_eof()  # a half-close, passed on
                        else:
                            await dst.send_all(data)
                            continue
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        # dst is gone: this direction ends; the other reads dst's end itself
                        n.cancel_scope.cancel()
                    return


__all__ = ["Relay"]
