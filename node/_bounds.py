"""What one peer can make a node hold: bytes, streams and patience.

py-libp2p 0.8.1's yamux (``libp2p/stream_muxer/yamux/yamux.py``) keeps every
stream it has seen in ``Yamux.streams`` with a receive buffer in
``Yamux.stream_buffers``, and lets three things pin that memory for the life of
the connection:

* A stream we have half-closed (sent FIN) stays until the *peer* sends FIN or
  RST. Its stale-stream sweeper only reclaims fully closed streams, and those
  only after a 60 s grace when bytes are still buffered.
* Incoming DATA is appended to the buffer whether or not the stream's receive
  window allows it: a peer that overruns the window only gets "peer exceeded
  receive window" in the log. So a stream's buffer has no bound.
* A stream we reset while bytes are buffered keeps its entry, and keeps
  taking the peer's DATA, until that grace has passed.

There is no per-connection cap on buffered bytes or on inbound streams either
(the 256-stream backlog applies to outbound streams only). A peer that opens
streams, sends a request with extra bytes (or one above the protocol's cap),
and never closes them, held +289 MiB of a node after 1,200 streams.

What this module does about it, in our code and without patching py-libp2p:

* :func:`retire` ends every stream we are done with: FIN (so the peer still
  reads what we wrote), then RST, then the stream's buffer and bookkeeping are
  dropped at once, so later DATA for it is discarded by the muxer. A server
  may first *linger* briefly for the peer's FIN, the clean end of a request.
* :class:`BoundedYamux` caps the bytes buffered and the streams open on one
  connection; a peer over either cap loses the connection. (py-libp2p ignores
  a muxer class given to ``new_host``; :class:`BoundedMuxerMultistream` is how
  it gets used.)
* :class:`PeerGuard` bounds the requests in progress per peer across all our
  protocols, counts protocol violations, and closes the connection of a peer
  that keeps violating the protocol, refusing its streams for a while.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID
from libp2p.stream_muxer.muxer_multistream import MuxerMultistream
from libp2p.stream_muxer.yamux.yamux import Yamux

logger = logging.getLogger("shardnet.node._net")

#: Bytes a peer may have buffered, unread, on one connection (all streams). Our
#: largest legitimate message is a 4 MiB directory reply.
MAX_UNREAD_PER_CONNECTION = 8 * 1024 * 1024
#: Streams open on one connection, both directions.
MAX_STREAMS_PER_CONNECTION = 64
#: Requests from one peer in progress at once, across every protocol we serve
#: (above the sum of the protocols' own limits, so that alone never refuses).
MAX_INBOUND_PER_PEER = 32
#: How long a server waits, after its reply, for the peer to close its side.
LINGER = 2.0
#: A peer with this many protocol violations within the window loses its
#: connection, and its streams are refused for BAN_SECONDS.
VIOLATION_LIMIT = 16
VIOLATION_WINDOW = 60.0
BAN_SECONDS = 60.0
#: Best-effort cleanup (FIN, RST, closing a connection) is bounded too.
CLEANUP_TIMEOUT = 2.0
_MAX_TRACKED_PEERS = 10_000


class ConnectionOverLimit(trio.TooSlowError):
    """A peer's connection went over a cap; the muxer closes it.

    A subclass of ``trio.TooSlowError`` on purpose: that is the one exception
    py-libp2p's yamux read loop turns into a clean close of the connection
    from every place it reads a frame body (SYN, ACK and DATA frames alike).
    """


class BoundedYamux(Yamux):
    """Yamux with caps on the bytes buffered and the streams open per connection.

    Every DATA frame body passes through ``_read_data_body`` before it is
    buffered, and every inbound stream through ``new_stream_send_channel``
    (SYN frames with and without data alike) before anyone accepts it, so the
    checks sit there: a frame that would take the connection over
    :data:`MAX_UNREAD_PER_CONNECTION`, or a stream beyond
    :data:`MAX_STREAMS_PER_CONNECTION`, closes the connection. Going over a cap
    counts as a violation in the host's :class:`PeerGuard` too.
    """

    guard: PeerGuard | None = None

    def over_limit(self, what: str) -> ConnectionOverLimit:
        logger.warning("closing the connection of %s: %s", self.peer_id, what)
        if self.guard is not None:
            self.guard.violation(str(self.peer_id), trio.current_time())
        return ConnectionOverLimit(what)

    async def _read_data_body(self, length: int) -> bytes:
        unread = sum(len(b) for b in self.stream_buffers.values())
        if unread + length > MAX_UNREAD_PER_CONNECTION:
            raise self.over_limit(f"{unread + length} bytes unread on it (cap {MAX_UNREAD_PER_CONNECTION})")
        if len(self.streams) > MAX_STREAMS_PER_CONNECTION:
            raise self.over_limit(f"{len(self.streams)} streams open on it (cap {MAX_STREAMS_PER_CONNECTION})")
        data: bytes = await super()._read_data_body(length)
        return data

    def bound(self, guard: PeerGuard | None) -> None:
        """Take effect on a connection that py-libp2p built as a plain Yamux."""
        self.guard = guard
        self.new_stream_send_channel = _CappedChannel(self.new_stream_send_channel, self)  # type: ignore[assignment]


class _CappedChannel:
    """The channel yamux hands new inbound streams through, refusing one too many.

    yamux creates an inbound stream for every SYN, data or not, and sends it
    here for the swarm to accept: the one place every new stream passes.
    """

    def __init__(self, inner: Any, muxer: BoundedYamux) -> None:
        self._inner = inner
        self._muxer = muxer

    async def send(self, value: Any) -> None:
        if len(self._muxer.streams) > MAX_STREAMS_PER_CONNECTION:
            raise self._muxer.over_limit(
                f"{len(self._muxer.streams)} streams open on it (cap {MAX_STREAMS_PER_CONNECTION})")
        await self._inner.send(value)

    def __getattr__(self, name: str) -> Any:  # close(), clone(), statistics() ...
        return getattr(self._inner, name)


class BoundedMuxerMultistream(MuxerMultistream):
    """Muxer negotiation that hands out :class:`BoundedYamux` connections.

    py-libp2p 0.8.1's ``MuxerMultistream.new_conn`` builds a plain ``Yamux``
    whenever ``/yamux/1.0.0`` is negotiated, whatever class the host's muxer
    options name, so a subclass passed to ``new_host(muxer_opt=...)`` is never
    used. The connection is handed over before it starts; ``BoundedYamux``
    adds behaviour only, no state, so giving it that class is safe.
    """

    def __init__(self, *args: Any, guard: PeerGuard | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    async def new_conn(self, conn: Any, peer_id: ID) -> Any:
        muxed = await super().new_conn(conn, peer_id)
        if type(muxed) is Yamux:
            muxed.__class__ = BoundedYamux
            assert isinstance(muxed, BoundedYamux)
            muxed.bound(self.guard)
        return muxed


async def _bounded(what: str, op: Any) -> None:
    """Run one cleanup step, shielded and bounded; never raises."""
    with trio.move_on_after(CLEANUP_TIMEOUT) as scope:
        scope.shield = True
        try:
            await op()
        except Exception as exc:
            logger.debug("%s failed: %r", what, exc)


def _yamux_of(stream: INetStream) -> tuple[Any, Yamux] | None:
    muxed = getattr(stream, "muxed_stream", None)
    conn = getattr(muxed, "conn", None)
    return (muxed, conn) if isinstance(conn, Yamux) else None


def unread(stream: INetStream) -> int:
    """Bytes the peer has sent on ``stream`` that nobody has read yet."""
    found = _yamux_of(stream)
    if found is None:
        return 0
    muxed, conn = found
    return len(conn.stream_buffers.get(muxed.stream_id) or b"")


async def _drop(stream: INetStream) -> None:
    """Forget a reset stream now: its buffer, its entry, its wake-up event."""
    found = _yamux_of(stream)
    if found is None:
        return
    muxed, conn = found
    sid: int = muxed.stream_id
    async with conn.streams_lock:
        if conn.streams.get(sid) is muxed:
            del conn.streams[sid]
            conn.stream_buffers.pop(sid, None)
            conn.stream_events.pop(sid, None)


async def _await_eof(stream: INetStream) -> bool | None:
    """Wait up to LINGER for the peer to close its side.

    True: it closed (or reset) and sent nothing more. False: it sent more
    bytes. None: it did neither in time.
    """
    with trio.move_on_after(LINGER):
        try:
            extra = await stream.read(1)
        except StreamError:  # EOF or reset: either way the peer is done
            return True
        return not extra
    return None


async def retire(stream: INetStream, *, linger: bool = False) -> bool:
    """End a stream we are done with, and free what the muxer holds for it.

    Sends FIN first, so the peer can still read everything we wrote (py-libp2p
    returns buffered data on a reset stream only once it has seen FIN). With
    ``linger``, waits up to :data:`LINGER` for the peer's FIN; a peer that
    closes in time ends the stream cleanly. Otherwise, and always without
    ``linger``, the stream is reset and dropped at once.

    Returns False if the peer sent bytes after its request (a violation).
    """
    await _bounded("closing a stream", stream.close)
    clean = True
    if linger:
        ended = await _await_eof(stream) if unread(stream) == 0 else False
        if ended:
            return True
        clean = ended is None  # slow to close is no violation; more bytes are
    await _bounded("resetting a stream", stream.reset)
    await _drop(stream)
    return clean


async def close_connection(host: IHost, peer: Any) -> None:
    """Close every connection to ``peer`` (a libp2p ID), shielded and bounded."""
    await _bounded(f"closing the connection of {peer}", lambda: host.get_network().close_peer(peer))


@dataclass
class PeerGuard:
    """Per-peer bounds shared by every protocol a host serves (sans-IO: pass ``now``)."""

    max_inbound: int = MAX_INBOUND_PER_PEER
    violation_limit: int = VIOLATION_LIMIT
    window: float = VIOLATION_WINDOW
    ban: float = BAN_SECONDS
    _inbound: dict[str, int] = field(default_factory=dict)
    _violations: dict[str, deque[float]] = field(default_factory=dict)
    _banned: dict[str, float] = field(default_factory=dict)

    def begin(self, peer: str) -> bool:
        """Take an inbound request slot for ``peer``; False if it has none left."""
        n = self._inbound.get(peer, 0)
        if n >= self.max_inbound:
            return False
        self._inbound[peer] = n + 1
        return True

    def end(self, peer: str) -> None:
        n = self._inbound.get(peer, 0) - 1
        if n > 0:
            self._inbound[peer] = n
        else:
            self._inbound.pop(peer, None)

    def banned(self, peer: str, now: float) -> bool:
        until = self._banned.get(peer)
        if until is None:
            return False
        if now >= until:
            del self._banned[peer]
            return False
        return True

    def violation(self, peer: str, now: float) -> bool:
        """Count one violation; True if ``peer`` is now over the limit (and banned)."""
        # Bounded memory: forget the peers whose last violation is oldest.
        seen = self._violations.pop(peer, None) or deque()
        self._violations[peer] = seen  # now the most recent
        while len(self._violations) > _MAX_TRACKED_PEERS:
            del self._violations[next(iter(self._violations))]
        if len(self._banned) > _MAX_TRACKED_PEERS:
            self._banned = {p: t for p, t in self._banned.items() if t > now}
        seen.append(now)
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        if len(seen) < self.violation_limit:
            return False
        del self._violations[peer]
        self._banned[peer] = now + self.ban
        return True
