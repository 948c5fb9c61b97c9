"""The libp2p transport layer: hosts, GossipSub, and framed request/response streams.

Everything py-libp2p-specific lives here, so the node's services stay plain classes
and the stream handlers stay thin adapters around them.

Choices made here (see ../shared/LIBP2P_NOTES.md for the measurements):

* Security is Noise only and the muxer is yamux only. The libp2p defaults also offer
  plaintext, secio and TLS; a plaintext dialer could claim any identity.
* ``ConnectionConfig(max_connections_per_peer=1)`` avoids the fixed 250 ms
  happy-eyeballs wait on every dial.
* mDNS, UPnP, bootstrap and identify address discovery are off: a host advertises
  exactly the addresses it listens on.
* A host dials only when we ask it to. py-libp2p's swarm runs an ``AutoConnector``
  that dials every peer in the peerstore that has an address (every 10 s while the
  node has fewer than 50 connections, and after each disconnect); peers put their
  own self-reported addresses there through identify. It is replaced by one that
  never starts. GossipSub peer exchange (PX) is refused too: a PRUNE carrying PX
  records would otherwise make the node dial any address a peer names, whatever
  our own ``do_px`` setting.
* GossipSub keeps ``strict_signing=True`` and a 1 s heartbeat. It sends IDONTWANT
  only for received messages of 1 KiB or more, as go-libp2p does (``_Router``). A
  sender's signed peer record, which py-libp2p checks on every RPC, is checked in
  full only when it changes (``_SenderRecords``).
* Yamux runs with ``PY_YAMUX_RELEASE_ON_READ=0`` (unless the environment says
  otherwise; child processes inherit it): py-libp2p's default sends a WINDOW_UPDATE
  for every read call, three per small gossip RPC (its length, then its body, ...);
  with 0 it sends about one per RPC. py-libp2p then credits a window up to about
  half a window over its 256 KiB, which ``BoundedYamux``'s cap on the bytes
  unread per connection still bounds.
* A host is always closed with ``host.close()`` before its ``run()`` context ends;
  otherwise every outbound socket leaks (py-libp2p issue #1485). Its whole life runs
  in a task shielded from the caller's cancellation, so that a cancelled caller
  does not tear the connections down before ``close()`` gets to them.
* A fixed listen port that is already taken is an error. py-libp2p listens with
  SO_REUSEPORT and would otherwise share the port with the other listener.

Wire format of the custom stream protocols (one request per stream)::

    request  stream:  frame(payload)
    reply    stream:  frame(status:u8 || body)

    frame(x) = len(x):u32 big-endian || x

A reply with status ``OK`` (0) carries the handler's answer as its body. Any other
status is an error (see :class:`ReplyStatus`) and the body is a short UTF-8 reason.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import socket
import weakref
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import libp2p.pubsub.gossipsub as _gossipsub_module
import libp2p.pubsub.pubsub as _pubsub_module
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair as create_ed25519_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import ParseError
from libp2p.io.exceptions import IOException
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import (
    PROTOCOL_ID,
    PROTOCOL_ID_V11,
    PROTOCOL_ID_V12,
    GossipSub,
)
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import ScoreParams
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.varint import encode_uvarint, read_varint_prefixed_bytes_limited

from ._bounds import (
    CLEANUP_TIMEOUT,
    BoundedMuxerMultistream,
    BoundedYamux,
    PeerGuard,
    close_connection,
    retire,
    unread,
)
from ._transport import (
    ConnectError,
    Handler,
    RemoteError,
    RemoteProtocolError,
    ReplyStatus,
    RequestError,
    RequestRejected,
    RequestTimeout,
    StreamOpenError,
)

__all__ = [
    "ConnectError",
    "FrameError",
    "FrameTimeout",
    "FrameTooLarge",
    "FrameTruncated",
    "Handler",
    "ListenError",
    "NetHost",
    "RemoteError",
    "RemoteProtocolError",
    "ReplyStatus",
    "RequestError",
    "RequestRejected",
    "RequestTimeout",
    "StreamOpenError",
    "connect",
    "ed25519_public_from_peer_id",
    "make_host",
    "make_pubsub",
    "peer_id_from_seed",
    "read_frame",
    "request",
    "route_libp2p_logging",
    "running_node_host",
    "serve_protocol",
    "write_frame",
]

# py-libp2p reads this on every yamux read; "1" (its default) sends a WINDOW_UPDATE for
# each read call, "0" only when its hysteresis asks (see the module docstring). An
# operator's own value wins.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")

logger = logging.getLogger(__name__)

SEED_LEN = 32
FRAME_HEADER_LEN = 4
MAX_FRAME_LEN = 0xFFFF_FFFF
# Longest error reason we send or accept in an error reply, in bytes.
MAX_REASON_LEN = 256
# Starting a host (listen, pubsub services) and shutting it down in order.
START_TIMEOUT = 10.0
SHUTDOWN_TIMEOUT = 5.0

GOSSIPSUB_PROTOCOLS = [PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID]



# --------------------------------------------------------------------------- errors


class FrameError(Exception):
    """A length-prefixed frame could not be read."""


class FrameTooLarge(FrameError):
    """The length prefix is above the cap; the body was not read."""

    def __init__(self, length: int, max_len: int) -> None:
        super().__init__(f"frame of {length} bytes exceeds the cap of {max_len} bytes")
        self.length = length
        self.max_len = max_len


class FrameTruncated(FrameError):
    """The stream ended (EOF or reset) before or in the middle of a frame."""


class FrameTimeout(FrameError):
    """The whole frame did not arrive within the timeout."""


class ListenError(OSError):
    """A host could not listen on every requested address, or did not start."""


# --------------------------------------------------------------------------- identity


def _key_pair_from_seed(seed: bytes) -> KeyPair:
    # Ed25519PrivateKey.new() treats a falsy seed as "generate a random key", so an
    # empty seed would silently give a fresh identity: check the length ourselves.
    if not isinstance(seed, bytes | bytearray | memoryview):
        raise TypeError(f"identity seed must be bytes, not {type(seed).__name__}")
    raw = bytes(seed)
    if len(raw) != SEED_LEN:
        raise ValueError(f"identity seed must be {SEED_LEN} bytes, got {len(raw)}")
    return create_ed25519_key_pair(raw)


def peer_id_from_seed(seed: bytes) -> str:
    """Base58 peer id of the Ed25519 identity derived from a 32-byte seed."""
    return ID.from_pubkey(_key_pair_from_seed(seed).public_key).to_base58()


def ed25519_public_from_peer_id(peer_id: str) -> bytes:
    """Raw 32-byte Ed25519 public key embedded in a base58 peer id.

    Raises ``ValueError`` if the string is not a peer id or does not embed an
    Ed25519 key (for example a hashed RSA identity).
    """
    try:
        pid = ID.from_base58(peer_id)
    except Exception as exc:
        raise ValueError(f"not a base58 peer id: {peer_id!r}") from exc
    key = pid.extract_public_key()
    if key is None or key.get_type() != KeyType.Ed25519:
        raise ValueError(f"peer id {peer_id} does not embed an Ed25519 public key")
    raw = key.to_bytes()
    if len(raw) != 32:
        raise ValueError(f"peer id {peer_id} embeds a malformed Ed25519 key")
    return raw


def _parse_peer_id(peer_id: str) -> ID:
    try:
        pid = ID.from_base58(peer_id)
    except Exception as exc:
        raise ValueError(f"not a base58 peer id: {peer_id!r}") from exc
    if not pid.to_bytes():
        raise ValueError(f"not a base58 peer id: {peer_id!r}")
    return pid


# --------------------------------------------------------------------------- hosts


def parse_listen_addr(text: str) -> multiaddr.Multiaddr:
    try:
        maddr = multiaddr.Multiaddr(text)
        names = [p.name for p in maddr.protocols()]
    except Exception as exc:
        raise ValueError(f"not a multiaddr: {text!r}") from exc
    if len(names) != 2 or names[0] not in ("ip4", "ip6") or names[1] != "tcp":
        raise ValueError(f"listen address must be /ip4|ip6/<addr>/tcp/<port>, got {text!r}")
    return maddr


class _NoAutoConnector(AutoConnector):
    """An AutoConnector that never starts, so it never dials on its own."""

    async def start(self) -> None:
        # AutoConnector.maybe_connect() and its periodic task do nothing until started.
        return None


def make_host(
    identity_seed: bytes, listen_addrs: list[str]
) -> tuple[IHost, list[multiaddr.Multiaddr]]:
    """Build (but do not start) a host: Ed25519 identity, TCP, Noise only, yamux only.

    Returns the host and the parsed listen addresses to pass to ``host.run()``.
    Prefer :func:`running_node_host`, which also starts and closes it properly.
    """
    key_pair = _key_pair_from_seed(identity_seed)
    maddrs = [parse_listen_addr(a) for a in listen_addrs]
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    host = new_host(
        key_pair=key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): BoundedYamux},
        listen_addrs=maddrs,
        connection_config=ConnectionConfig(max_connections_per_peer=1),
        enable_mDNS=False,
        enable_upnp=False,
        bootstrap=None,
        enable_quic=False,
        enable_websocket=False,
        disable_identify_address_discovery=True,
    )
    swarm = host.get_network()
    if not isinstance(swarm, Swarm):
        raise TypeError(f"unexpected libp2p network type {type(swarm).__name__}")
    swarm.auto_connector = _NoAutoConnector(swarm)
    # Caps on what one connection may make us buffer (see _bounds).
    negotiate_timeout = swarm.upgrader.muxer_multistream.negotiate_timeout
    swarm.upgrader.muxer_multistream = BoundedMuxerMultistream(
        {TProtocol(YAMUX_PROTOCOL_ID): BoundedYamux}, negotiate_timeout, guard=guard_of(host)
    )
    return host, maddrs


RECORD_RECHECK = 600.0  # seconds: a peer's unchanged signed peer record is taken in again this often
MAX_RECORDS_KEPT = 4096  # peers per host whose last record is remembered


class _SenderRecords:
    """py-libp2p's pubsub takes in the sender's signed peer record carried by every RPC:
    it parses the envelope, checks its Ed25519 signature and updates the peerstore, once
    for the RPC and again for its control part; about a fifth of the CPU a small gossip
    message costs. The record is the same bytes RPC after RPC, and the same bytes check
    the same way: a host remembers each peer's last accepted record and lets identical
    bytes through, taking them in again every ``RECORD_RECHECK`` s (the peerstore keeps
    them for two hours). A new or refused record is checked in full, as before."""

    def __init__(self, consume: Any) -> None:
        self._consume = consume
        self._kept: weakref.WeakKeyDictionary[Any, dict[str, tuple[bytes, float]]] = weakref.WeakKeyDictionary()

    def __call__(self, msg: Any, host: Any, peer_id: Any) -> bool:
        if not msg.HasField("senderRecord"):
            return True
        data, key, now = msg.senderRecord, str(peer_id), trio.current_time()
        kept = self._kept.setdefault(host, {})
        seen = kept.get(key)
        if seen is not None and seen[0] == data and now - seen[1] < RECORD_RECHECK:
            return True
        ok: bool = self._consume(msg, host, peer_id)
        if ok:
            kept.pop(key, None)
            if len(kept) >= MAX_RECORDS_KEPT:
                kept.pop(next(iter(kept)))
            kept[key] = (bytes(data), now)
        return ok


_sender_records = _SenderRecords(_pubsub_module.maybe_consume_signed_record)
_pubsub_module.maybe_consume_signed_record = _sender_records  # both of py-libp2p's callers
_gossipsub_module.maybe_consume_signed_record = _sender_records

IDONTWANT_MIN = 1024  # bytes: go-libp2p's GossipSubIDontWantMessageThreshold
_no_idontwant: contextvars.ContextVar[bool] = contextvars.ContextVar("no_idontwant", default=False)


class _Router(GossipSub):
    """GossipSub that sends IDONTWANT only for a received message of ``IDONTWANT_MIN``
    bytes or more.

    IDONTWANT (v1.2) saves a mesh peer from sending a duplicate of a large message.
    py-libp2p 0.8.1 sends one to every mesh peer for every message, however small,
    our own included: for our records (most under 1 KiB) that doubles the RPCs a
    message costs and saves next to nothing. go-libp2p sends it only for a received
    message of 1 KiB or more; so do we. (py-libp2p's one caller of the hook below is
    ``publish``, in the same task, which is what the context variable relies on.)
    """

    async def publish(self, msg_forwarder: Any, pubsub_msg: Any) -> None:
        ours = self.pubsub is not None and msg_forwarder == self.pubsub.my_id
        token = _no_idontwant.set(ours or len(pubsub_msg.data) < IDONTWANT_MIN)
        try:
            await super().publish(msg_forwarder, pubsub_msg)
        finally:
            _no_idontwant.reset(token)

    async def _emit_idontwant_for_message(self, msg_id: bytes, topic_ids: Any) -> None:
        if not _no_idontwant.get():
            await super()._emit_idontwant_for_message(msg_id, topic_ids)


def make_pubsub(host: IHost) -> tuple[Pubsub, GossipSub]:
    """GossipSub v1.2/v1.1/v1.0 router and a strictly signing Pubsub on ``host``.

    Build it before the host connects to anyone (Pubsub registers a network notifee),
    then run both with ``background_trio_service``.
    """
    router = _Router(
        protocols=list(GOSSIPSUB_PROTOCOLS),
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_interval=1,
        # Refuse peer exchange: no score reaches +inf, so PX records in a PRUNE are
        # never dialed. We only dial peers we chose.
        score_params=ScoreParams(accept_px_threshold=math.inf),
    )
    pubsub = Pubsub(host, router, strict_signing=True)
    return pubsub, router


@dataclass
class NetHost:
    """A running host. ``listen_addrs`` are full multiaddrs ending in ``/p2p/<peer_id>``."""

    host: IHost
    pubsub: Pubsub | None
    router: GossipSub | None
    peer_id: str
    listen_addrs: list[str]


async def _close_host(host: IHost) -> None:
    # Shielded: if we are leaving because of a cancellation, an unshielded close()
    # would be cancelled at its first checkpoint and every socket would leak.
    with trio.move_on_after(CLEANUP_TIMEOUT) as scope:
        scope.shield = True
        try:
            await host.close()
        except Exception:
            logger.exception("error while closing libp2p host %s", host.get_id())
    if scope.cancelled_caught:
        logger.warning("closing libp2p host %s timed out", host.get_id())


def _check_port_free(maddr: multiaddr.Multiaddr) -> None:
    """Fail if something already listens on ``maddr``'s fixed port.

    py-libp2p binds its TCP listeners with SO_REUSEPORT (for hole punching), so a
    second host on a busy port starts without complaint and the kernel then splits
    inbound connections between the two. A plain bind (SO_REUSEADDR only, so our
    own TIME_WAIT leftovers do not count) fails when anyone listens there.
    """
    port = int(maddr.value_for_protocol("tcp"))
    if port == 0:
        return
    ip6 = "ip6" in [p.name for p in maddr.protocols()]
    ip = str(maddr.value_for_protocol("ip6" if ip6 else "ip4"))
    family = socket.AF_INET6 if ip6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError as exc:
            raise ListenError(exc.errno, f"cannot listen on {maddr}: {exc.strerror}") from exc


async def _run_host(
    host: IHost,
    maddrs: list[multiaddr.Multiaddr],
    gossip: tuple[Pubsub, GossipSub] | None,
    stop: trio.Event,
    *,
    # Any, not trio.TaskStatus[NetHost]: the outdated trio-stubs package (from
    # trio-typing, pulled in by a dependency) shadows trio's own annotations for mypy.
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``host`` (and pubsub) until ``stop`` is set, then shut it down in order.

    The whole lifetime is shielded from the caller's cancellation. When a caller's
    cancel scope fires, trio would otherwise cancel the swarm's connection tasks
    at once, and the outbound sockets would leak even though ``host.close()`` runs
    afterwards. Startup and shutdown are bounded by deadlines on that shield.
    """
    for maddr in maddrs:
        _check_port_free(maddr)
    started = False
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + START_TIMEOUT
        async with host.run(maddrs):
            try:
                # host.run() only logs (at debug level) an address it cannot bind.
                bound = host.get_transport_addrs()
                if len(bound) != len(maddrs):
                    wanted = ", ".join(str(m) for m in maddrs)
                    raise ListenError(f"could not listen on all of {wanted} (bound: {bound})")
                pubsub, router = gossip if gossip is not None else (None, None)
                async with AsyncExitStack() as services:
                    if pubsub is not None and router is not None:
                        await services.enter_async_context(background_trio_service(pubsub))
                        await services.enter_async_context(background_trio_service(router))
                        await pubsub.wait_until_ready()
                    scope.deadline = math.inf
                    started = True
                    task_status.started(
                        NetHost(
                            host=host,
                            pubsub=pubsub,
                            router=router,
                            peer_id=host.get_id().to_base58(),
                            listen_addrs=[str(a) for a in host.get_addrs()],
                        )
                    )
                    await stop.wait()
                    scope.deadline = trio.current_time() + SHUTDOWN_TIMEOUT
                    # The connections go before pubsub stops: a message still arriving
                    # would otherwise reach a stopped pubsub, whose stream handler then
                    # raises out of the host ("Nursery is closed to new arrivals").
                    await _close_host(host)
            finally:
                await _close_host(host)  # a second close is a no-op (Swarm.close is idempotent)
    if not started:
        raise ListenError(f"libp2p host did not start within {START_TIMEOUT} s")
    if scope.cancelled_caught:
        logger.warning("libp2p host %s did not shut down in time", host.get_id())


@asynccontextmanager
async def running_node_host(
    seed: bytes,
    listen_addrs: list[str],
    *,
    enable_pubsub: bool = True,
) -> AsyncIterator[NetHost]:
    """Start a host listening on ``listen_addrs`` (and pubsub), yield it, close it.

    ``/ip4/127.0.0.1/tcp/0`` lets the OS choose the port; the yielded
    ``listen_addrs`` carry the real port. The host is closed properly however the
    block is left, cancellation included.
    """
    host, maddrs = make_host(seed, listen_addrs)
    gossip = make_pubsub(host) if enable_pubsub else None
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            net: NetHost = await nursery.start(_run_host, host, maddrs, gossip, stop)
            try:
                yield net
            finally:
                stop.set()
    except BaseExceptionGroup as group:
        # The nursery is an implementation detail: let a lone exception (from the
        # caller's block or from the host) through as itself.
        if len(group.exceptions) != 1:
            raise
        exc = group.exceptions[0]
        raise exc from exc.__cause__


async def disconnect(host: IHost, peer_id: str) -> None:
    """Close every connection to ``peer_id``: a peer that is not admitted, for example."""
    try:
        pid = _parse_peer_id(peer_id)
    except ValueError:
        return
    if pid in host.get_network().connections:
        await close_connection(host, pid)


# The timeouts below are parameters on purpose (ASYNC109): each one turns into a
# named error (ConnectError, FrameTimeout, RequestTimeout), and the cleanup after
# it (stream reset or close) must run outside the caller's cancel scope.
async def connect(host: IHost, multiaddr_str: str, timeout: float) -> str:  # noqa: ASYNC109
    """Dial the peer at a full multiaddr (``.../p2p/<peer_id>``); return its peer id."""
    try:
        info = info_from_p2p_addr(multiaddr.Multiaddr(multiaddr_str))
    except Exception as exc:
        raise ValueError(f"not a multiaddr ending in /p2p/<peer_id>: {multiaddr_str!r}") from exc
    if info.peer_id == host.get_id():
        raise ValueError("refusing to dial ourselves")
    if info.peer_id not in host.get_network().connections:
        # We dial only addresses we chose (from a signed descriptor or the
        # command line). py-libp2p would otherwise also dial every address it
        # ever saw for the peer (stale ones first, after a restart on a new
        # port), and refuse any dial for 60 s after one that failed (its
        # negative peer cache); our callers pace their own retries.
        host.get_peerstore().clear_addrs(info.peer_id)
        swarm = host.get_network()
        if isinstance(swarm, Swarm):
            swarm.unblock_peer(info.peer_id)
    with trio.move_on_after(timeout) as scope:
        try:
            await host.connect(info)
        except Exception as exc:
            raise ConnectError(f"dial {multiaddr_str} failed: {exc}") from exc
    if scope.cancelled_caught:
        raise ConnectError(f"dial {multiaddr_str} timed out after {timeout} s")
    return info.peer_id.to_base58()


# --------------------------------------------------------------------------- framing


async def write_frame(stream: INetStream, data: bytes) -> None:
    """Write ``len(data)`` as 4 bytes big-endian, then ``data``, in one write."""
    if len(data) > MAX_FRAME_LEN:
        raise ValueError(f"frame of {len(data)} bytes does not fit a 4-byte length")
    await stream.write(len(data).to_bytes(FRAME_HEADER_LEN, "big") + bytes(data))


async def _read_exact(stream: INetStream, n: int, what: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = await stream.read(n - len(buf))
        except StreamEOF as exc:
            raise FrameTruncated(f"EOF after {len(buf)} of {n} bytes of {what}") from exc
        except StreamError as exc:
            raise FrameTruncated(
                f"stream failed after {len(buf)} of {n} bytes of {what}: {exc!r}"
            ) from exc
        if not chunk:
            raise FrameTruncated(f"EOF after {len(buf)} of {n} bytes of {what}")
        if len(chunk) > n - len(buf):
            # A stream must not hand back more than asked for; we cannot push it back.
            raise FrameError(f"stream returned {len(chunk)} bytes, asked for {n - len(buf)}")
        buf += chunk
    return bytes(buf)


async def _read_frame_untimed(stream: INetStream, max_len: int) -> bytes:
    header = await _read_exact(stream, FRAME_HEADER_LEN, "frame header")
    length = int.from_bytes(header, "big")
    if length > max_len:
        raise FrameTooLarge(length, max_len)
    if length == 0:
        return b""
    return await _read_exact(stream, length, "frame body")


async def read_frame(stream: INetStream, *, max_len: int, timeout: float) -> bytes:  # noqa: ASYNC109
    """Read one length-prefixed frame.

    The length is checked against ``max_len`` before any of the body is read. The
    timeout covers the whole frame. Raises :class:`FrameTooLarge`,
    :class:`FrameTruncated` or :class:`FrameTimeout`.
    """
    if not 0 <= max_len <= MAX_FRAME_LEN:
        raise ValueError(f"max_len must be in [0, {MAX_FRAME_LEN}], got {max_len}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    with trio.move_on_after(timeout):
        return await _read_frame_untimed(stream, max_len)
    raise FrameTimeout(f"no complete frame within {timeout} s")


# --------------------------------------------------------------------------- client


def _decode_reply(peer_id: str, protocol: str, frame: bytes, max_reply: int) -> bytes:
    if not frame:
        raise RemoteProtocolError(peer_id, protocol, "empty reply frame")
    try:
        status = ReplyStatus(frame[0])
    except ValueError:
        raise RemoteProtocolError(peer_id, protocol, f"unknown reply status {frame[0]}") from None
    body = frame[1:]
    if status is ReplyStatus.OK:
        if len(body) > max_reply:
            raise RemoteProtocolError(
                peer_id, protocol, f"reply of {len(body)} bytes exceeds {max_reply}"
            )
        return body
    if len(body) > MAX_REASON_LEN:
        raise RemoteProtocolError(peer_id, protocol, "error reason too long")
    raise RemoteError(peer_id, protocol, status, body.decode("utf-8", errors="replace"))


async def _early_reply(stream: INetStream, frame_cap: int, peer_id: str, protocol: str, *,
                       lazy: bool) -> bytes | None:
    """The reply frame a server sent before resetting the stream we were writing, if any
    (after its answers to the negotiation, when they were not read yet: ``lazy``)."""
    muxed = getattr(stream, "muxed_stream", None)  # the stream itself now refuses to read
    if muxed is None:
        return None
    with trio.move_on_after(CLEANUP_TIMEOUT):
        try:
            if lazy:
                await _negotiated(muxed, peer_id, protocol)
            return await _read_frame_untimed(muxed, frame_cap)
        except Exception as exc:  # no whole reply arrived: the write error stands
            logger.debug("no reply before the reset: %r", exc)
    return None


MULTISTREAM = "/multistream/1.0.0"
MAX_NEGOTIATION_LINE = 1024
LAZY_MAX = 192 * 1024  # bytes: a request this size fits a new yamux stream's 256 KiB window


def _negotiation(protocol: str) -> bytes:
    """multistream-select's two lines, the header and the protocol, as a client sends them."""
    return b"".join(encode_uvarint(len(line) + 1) + line + b"\n"
                    for line in (MULTISTREAM.encode(), protocol.encode()))


async def _negotiated(stream: Any, peer_id: str, protocol: str) -> None:
    """Read the server's answers to :func:`_negotiation`: the header, then the protocol
    echoed back (``na``: it does not speak it). StreamOpenError otherwise.

    This is multistream-select's lazy client, as go-libp2p's: the protocol and the
    first frame are written without waiting for the answers, which saves the two round
    trips py-libp2p's ``new_stream`` waits for (header, then protocol) on every request."""
    for want in (MULTISTREAM, protocol):
        try:
            line = await read_varint_prefixed_bytes_limited(stream, MAX_NEGOTIATION_LINE)
        except (ParseError, IOException, StreamError, ValueError) as exc:
            raise StreamOpenError(peer_id, protocol, f"cannot open stream: negotiation failed: {exc!r}") from exc
        got = line[:-1].decode("utf-8", errors="replace") if line.endswith(b"\n") else None
        if got == want:
            continue
        if got == "na":
            raise StreamOpenError(peer_id, protocol, f"cannot open stream: the peer does not speak {protocol}")
        raise StreamOpenError(peer_id, protocol, f"cannot open stream: unexpected negotiation answer {line[:64]!r}")


async def request(
    host: IHost,
    peer_id: str,
    protocol: str,
    payload: bytes,
    *,
    max_reply: int,
    timeout: float,  # noqa: ASYNC109
) -> bytes:
    """Send one request on a new stream and return the peer's reply payload.

    Opening the stream (dialing if needed), writing, and reading the reply are all
    bounded by ``timeout``. Raises :class:`RequestTimeout`, :class:`StreamOpenError`,
    :class:`RemoteError` (the peer answered with an error status) or
    :class:`RemoteProtocolError` (malformed reply or broken stream).
    """
    pid = _parse_peer_id(peer_id)
    if not 0 <= max_reply < MAX_FRAME_LEN:
        raise ValueError(f"max_reply must be in [0, {MAX_FRAME_LEN}), got {max_reply}")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    frame_cap = max(max_reply, MAX_REASON_LEN) + 1
    if len(payload) > MAX_FRAME_LEN:
        raise ValueError(f"frame of {len(payload)} bytes does not fit a 4-byte length")
    stream: INetStream | None = None
    try:
        with trio.move_on_after(timeout):
            try:
                stream = await host.get_network().new_stream(pid)
            except Exception as exc:
                raise StreamOpenError(peer_id, protocol, f"cannot open stream: {exc}") from exc
            try:
                # Lazy negotiation: the protocol and the request go out in one write,
                # and the peer's answers to the negotiation are read with the reply. A
                # request larger than a stream's first window waits for the protocol's
                # acceptance first (it waits for window updates anyway): a peer that
                # refuses the protocol resets the stream while such a write is blocked,
                # and py-libp2p drops its "na" with the stream.
                body = len(payload).to_bytes(FRAME_HEADER_LEN, "big") + bytes(payload)
                lazy = len(payload) <= LAZY_MAX
                if not lazy:
                    await stream.write(_negotiation(protocol))
                    await _negotiated(stream, peer_id, protocol)
                try:
                    await stream.write(_negotiation(protocol) + body if lazy else body)
                except StreamError:
                    # A server that refuses before reading (BUSY, TOO_LARGE) answers and
                    # resets while a large request is still being written: its answer
                    # may be waiting in our buffer, and says more than "stream failed".
                    early = await _early_reply(stream, frame_cap, peer_id, protocol, lazy=lazy)
                    if early is None:
                        raise
                    return _decode_reply(peer_id, protocol, early, max_reply)
                if lazy:
                    await _negotiated(stream, peer_id, protocol)
                stream.set_protocol(TProtocol(protocol))
                frame = await _read_frame_untimed(stream, frame_cap)
            except FrameTooLarge as exc:
                raise RemoteProtocolError(peer_id, protocol, str(exc)) from exc
            except FrameError as exc:
                raise RemoteProtocolError(peer_id, protocol, f"bad reply: {exc}") from exc
            except StreamError as exc:
                raise RemoteProtocolError(peer_id, protocol, f"stream failed: {exc!r}") from exc
            return _decode_reply(peer_id, protocol, frame, max_reply)
        raise RequestTimeout(peer_id, protocol, f"no reply within {timeout} s")
    finally:
        if stream is not None:
            # One request, one reply: nothing more is wanted from this stream, and
            # anything a server sends after its reply must not pin our memory.
            await retire(stream)


# --------------------------------------------------------------------------- server


def _error_reply(status: ReplyStatus, reason: str) -> bytes:
    return bytes([status]) + reason.encode("utf-8")[:MAX_REASON_LEN]


class _ProtocolServer:
    """Stream handler for one protocol: one framed request, one framed reply.

    Every stream ends through :func:`retire`, so nothing a peer sent and we did
    not read stays in memory. A request read in full and answered lingers for
    the peer's FIN; every other stream (refused, too large, truncated, too
    slow, or the peer over its limits) is reset at once. Violations of the
    framing count against the peer in the host's :class:`PeerGuard`, which
    closes the connection of a peer that keeps violating it.
    """

    def __init__(
        self,
        host: IHost,
        protocol: str,
        handler: Handler,
        *,
        max_len: int,
        timeout: float,
        max_concurrent_per_peer: int,
    ) -> None:
        self._host = host
        self._guard = guard_of(host)
        self._protocol = protocol
        self._handler = handler
        self._max_len = max_len
        self._timeout = timeout
        self._max_per_peer = max_concurrent_per_peer
        self._active: dict[str, int] = {}

    async def handle_stream(self, stream: INetStream) -> None:
        # Anything escaping this function would take down the whole connection.
        try:
            pid = stream.muxed_conn.peer_id
            peer = pid.to_base58()
        except Exception:
            logger.exception("%s: stream without a peer id", self._protocol)
            await retire(stream)
            return
        if self._guard.banned(peer, trio.current_time()):
            logger.info("%s: refusing a stream from %s: too many protocol violations", self._protocol, peer)
            await retire(stream)
            await close_connection(self._host, pid)
            return
        if self._active.get(peer, 0) >= self._max_per_peer or not self._guard.begin(peer):
            logger.warning("%s: refusing a stream from %s: too many requests in progress", self._protocol, peer)
            # Not a violation: an honest peer's burst gets here too. Its stream is
            # reset and dropped at once, so whatever it sends costs us nothing.
            await self._send_reply(stream, peer, _error_reply(ReplyStatus.BUSY, "busy"))
            await retire(stream)
            return
        self._active[peer] = self._active.get(peer, 0) + 1
        answered = False
        try:
            answered = await self._serve_one(stream, pid, peer)
        except Exception:
            logger.exception("%s: unexpected error serving %s", self._protocol, peer)
        finally:
            left = self._active[peer] - 1
            if left:
                self._active[peer] = left
            else:
                del self._active[peer]
            self._guard.end(peer)
            if not await retire(stream, linger=answered):
                await self._violation(pid, peer, "bytes after its request")

    async def _violation(self, pid: ID, peer: str, what: str) -> None:
        if self._guard.violation(peer, trio.current_time()):
            logger.warning("%s: closing the connection of %s: it keeps violating the protocol (last: %s)",
                           self._protocol, peer, what)
            await close_connection(self._host, pid)

    async def _serve_one(self, stream: INetStream, pid: ID, peer: str) -> bool:
        """Read one request and answer it; True if the request was read in full."""
        try:
            frame = await read_frame(stream, max_len=self._max_len, timeout=self._timeout)
        except FrameError as exc:
            status = {FrameTooLarge: ReplyStatus.TOO_LARGE, FrameTimeout: ReplyStatus.TIMEOUT}.get(
                type(exc), ReplyStatus.BAD_FRAME)
            logger.warning("%s: bad request from %s (%s): %s", self._protocol, peer, status.name, exc)
            await self._send_reply(stream, peer, _error_reply(status, str(exc)))
            await self._violation(pid, peer, str(exc))
            return False
        reply: bytes | None = None
        refused = False
        with trio.move_on_after(self._timeout):
            try:
                reply = bytes([ReplyStatus.OK]) + await self._handler(peer, frame)
            except RequestRejected as exc:
                logger.info("%s: rejected a request from %s: %s", self._protocol, peer, exc)
                reply, refused = _error_reply(ReplyStatus.REJECTED, str(exc)), True
            except Exception:
                logger.exception("%s: handler failed on a request from %s", self._protocol, peer)
                reply = _error_reply(ReplyStatus.INTERNAL, "internal error")
        if reply is None:
            logger.warning(
                "%s: handler took longer than %s s for %s", self._protocol, self._timeout, peer
            )
            reply = _error_reply(ReplyStatus.TIMEOUT, "handler timed out")
        await self._send_reply(stream, peer, reply)
        if unread(stream):
            await self._violation(pid, peer, "bytes after its request")
            return False
        return not refused  # a refused stream is reset at once, not lingered on

    async def _send_reply(self, stream: INetStream, peer: str, reply: bytes) -> None:
        with trio.move_on_after(self._timeout) as scope:
            try:
                await write_frame(stream, reply)
            except StreamError as exc:
                logger.info("%s: cannot reply to %s: %r", self._protocol, peer, exc)
        if scope.cancelled_caught:
            logger.info("%s: reply to %s timed out", self._protocol, peer)


_guards: weakref.WeakKeyDictionary[IHost, PeerGuard] = weakref.WeakKeyDictionary()


def guard_of(host: IHost) -> PeerGuard:
    """The per-peer bounds that every protocol served by ``host`` shares."""
    guard = _guards.get(host)
    if guard is None:
        guard = _guards[host] = PeerGuard()
    return guard


def serve_protocol(
    host: IHost,
    protocol: str,
    handler: Handler,
    *,
    max_len: int,
    timeout: float,
    max_concurrent_per_peer: int,
) -> None:
    """Register ``handler`` for ``protocol`` on ``host``.

    Each inbound stream carries one request frame of at most ``max_len`` bytes, read
    within ``timeout``; ``await handler(remote_peer_id, payload)`` (also bounded by
    ``timeout``) gives the reply. The remote peer id is the one Noise verified.
    Bad frames, handler failures and peers with more than ``max_concurrent_per_peer``
    streams in progress get an error reply; none of them can crash the host.
    """
    if not 0 <= max_len <= MAX_FRAME_LEN:
        raise ValueError(f"max_len must be in [0, {MAX_FRAME_LEN}], got {max_len}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be positive and finite, got {timeout}")
    if max_concurrent_per_peer < 1:
        raise ValueError(f"max_concurrent_per_peer must be >= 1, got {max_concurrent_per_peer}")
    server = _ProtocolServer(
        host,
        protocol,
        handler,
        max_len=max_len,
        timeout=timeout,
        max_concurrent_per_peer=max_concurrent_per_peer,
    )
    host.set_stream_handler(TProtocol(protocol), server.handle_stream)


# --------------------------------------------------------------------------- logging


#: What py-libp2p logs as an ERROR when a peer behaves as peers may: it does not speak a
#: protocol, or its connection went away. The caller gets the failure (StreamOpenError and
#: the like) and says what matters once; these reach our log at debug level only.
_EXPECTED = (
    ("libp2p.host.basic_host", "Failed to open stream to peer"),  # seven lines, on every refused pull
    ("libp2p.protocol_muxer.multiselect_client", "MultiselectClient"),
    ("libp2p.stream_muxer.yamux.yamux", "Error in handle_incoming"),  # only a connection's end, below
)
_ENDED = ("ClosedResourceError", "BrokenResourceError", "IncompleteReadError", "RawConnError", "EOF")


class _ForwardHandler(logging.Handler):
    """Hands libp2p's records to one of our loggers, the expected failures at debug level."""

    def __init__(self, target: logging.Logger, level: int) -> None:
        super().__init__(logging.DEBUG)
        self.target = target
        self.floor = level

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno > logging.DEBUG and any(
                record.name == name and str(record.msg).startswith(head) for name, head in _EXPECTED) and (
                not record.name.endswith(".yamux") or any(e in record.getMessage() for e in _ENDED)):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        if record.levelno >= self.floor and self.target.isEnabledFor(record.levelno):
            self.target.handle(record)


def route_libp2p_logging(logger: logging.Logger, level: int) -> None:
    """Send the ``libp2p`` logger's records at ``level`` and above to ``logger``.

    py-libp2p leaves its logger without a handler and with ``propagate=False``, so
    its warnings reach stderr raw through logging's last-resort handler. Calling this
    again replaces the previous routing.
    """
    lib = logging.getLogger("libp2p")
    for old in [h for h in lib.handlers if isinstance(h, _ForwardHandler)]:
        lib.removeHandler(old)
    lib.addHandler(_ForwardHandler(logger, level))
    lib.setLevel(level)
    lib.propagate = False
