"""The one interface the node's services and loops use to reach peers.

A :class:`Transport` connects to peers, serves and makes one-request,
one-reply calls on the stream protocols of ``protocol/_wire.py`` (with their
caps), and publishes to and subscribes from gossip topics through a validator.
It names the authenticated peer of every request and every gossip message.

Two implementations: libp2p (``_libp2p_transport.py``, over ``_net.py``) for
real nodes, and the in-memory transport of ``shardnet.simulations`` for the
grid, which stands in for the network with latency, loss and partitions.

The errors below are the transport's vocabulary, whichever implementation
raises them: a request fails with a :class:`RequestError` that names the peer
and protocol (:class:`RemoteError` when the peer answered with an error
status), and a handler refuses a request by raising :class:`RequestRejected`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from shardnet.protocol import wire

log = logging.getLogger("shardnet.node")

Handler = Callable[[str, bytes], Awaitable[bytes]]
"""``await handler(remote_peer_id, request_payload) -> reply_payload``."""

Validator = Callable[[str, bytes], bool]
"""``validator(author_peer_id, message) -> accept``; runs on every message, our own included."""


class ReplyStatus(enum.IntEnum):
    """First byte of every reply frame."""

    OK = 0
    TOO_LARGE = 1  # the request frame was above the server's cap
    BAD_FRAME = 2  # the request frame was truncated
    TIMEOUT = 3  # the request did not arrive in time, or the handler took too long
    BUSY = 4  # too many concurrent requests from this peer
    REJECTED = 5  # the handler refused the request (RequestRejected)
    INTERNAL = 6  # the handler failed


class RequestRejected(Exception):
    """Raise from a :data:`Handler` to refuse a request; the message goes to the peer.

    Keep the message short and free of secrets: it is sent in clear to the remote
    (inside Noise), truncated to 256 bytes.
    """


class RequestError(Exception):
    """A request to a peer failed. ``peer_id`` and ``protocol`` say to whom and what."""

    def __init__(self, peer_id: str, protocol: str, message: str) -> None:
        super().__init__(f"{protocol} request to {peer_id}: {message}")
        self.peer_id = peer_id
        self.protocol = protocol


class StreamOpenError(RequestError):
    """No stream could be opened (no connection, dial failed, protocol unsupported)."""


class RequestTimeout(RequestError):
    """The request did not complete within its timeout."""


class RemoteError(RequestError):
    """The peer answered with an error status."""

    def __init__(self, peer_id: str, protocol: str, status: ReplyStatus, reason: str) -> None:
        super().__init__(peer_id, protocol, f"remote error {status.name}: {reason}")
        self.status = status
        self.reason = reason


class RemoteProtocolError(RequestError):
    """The peer's reply was malformed: too large, truncated or an unknown status."""


class ConnectError(Exception):
    """Dialing a peer failed or timed out."""



class Subscription(Protocol):
    async def get(self) -> bytes:
        """The next message that passed the topic's validator."""
        ...


class Transport(Protocol):
    @property
    def peer_id(self) -> str: ...

    @property
    def listen_addrs(self) -> list[str]: ...

    def connected(self) -> list[str]:
        """Peer ids with a live connection, sorted."""
        ...

    async def connect(self, addr: str, timeout: float) -> str:  # noqa: ASYNC109
        """Dial a full address (ending in the peer id); return the peer id. Raises ConnectError."""
        ...

    async def request(self, peer: str, protocol: wire.StreamProtocol, payload: bytes,
                      timeout: float) -> bytes:  # noqa: ASYNC109
        """One request, one reply, both within the protocol's caps. Raises RequestError."""
        ...

    def serve(self, protocol: wire.StreamProtocol, handler: Handler, timeout: float) -> None:
        """Answer ``protocol`` with ``handler``, bounded by the protocol's caps and ``timeout``."""
        ...

    async def subscribe(self, topic: wire.Topic, validator: Validator) -> Subscription:
        """Join ``topic``; only messages ``validator`` accepts are delivered or forwarded."""
        ...

    async def publish(self, topic: wire.Topic, data: bytes) -> None: ...

    async def disconnect(self, peer: str) -> None:
        """Close every connection to ``peer`` (nothing if there is none)."""
        ...


TransportFactory = Callable[[bytes, list[str], str], AbstractAsyncContextManager[Transport]]
"""``async with factory(identity_seed, listen_addrs, network_prefix) as transport``:
what the composition root hands the runtime (libp2p for a real node, memory on
the grid). Every protocol id and topic the transport speaks is scoped to the
network (``wire.scoped``); the services name them unscoped."""


async def drain(sub: Subscription, accept: Callable[[bytes], None]) -> None:
    """Feed every message of a topic subscription to ``accept``, forever."""
    while True:
        data = await sub.get()
        try:
            accept(data)
        except Exception:  # one bad record from a peer must never stop the node
            log.exception("dropping a gossip message that could not be processed")
