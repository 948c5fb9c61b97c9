"""The libp2p implementation of :class:`~shardnet.node._transport.Transport`.

A thin adapter over ``_net.py``: a running host (Noise, yamux, GossipSub with
strict signing), the framed request/response protocols with their caps, and
topic validators that see the message's author as a peer id.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from shardnet.protocol import b58encode, wire

from . import _net
from ._transport import Handler, Subscription, Validator

log = logging.getLogger("shardnet.node")


class _Libp2pSubscription:
    def __init__(self, sub: Any) -> None:
        self._sub = sub

    async def get(self) -> bytes:
        msg = await self._sub.get()
        return bytes(msg.data)


class Libp2pTransport:
    def __init__(self, net: _net.NetHost, network: str, announce: list[str] | None = None) -> None:
        self.net = net
        self.network = network  # the prefix every protocol id and topic carries
        # What peers are told to dial instead of the bound addresses (a port forward,
        # a relay in front of the node): each parsed like a listen address.
        self._announce = [f"{_net.parse_listen_addr(a)}/p2p/{net.peer_id}" for a in announce or []]
        if self._announce:
            log.info("bound to %s; announcing %s", ", ".join(net.listen_addrs), ", ".join(self._announce))

    @property
    def peer_id(self) -> str:
        return self.net.peer_id

    @property
    def listen_addrs(self) -> list[str]:
        """The addresses this node tells its peers (descriptor, status): the announced
        ones if any, else those it is bound to."""
        return list(self._announce or self.net.listen_addrs)

    def connected(self) -> list[str]:
        return sorted(str(pid) for pid in self.net.host.get_network().connections)

    async def connect(self, addr: str, timeout: float) -> str:  # noqa: ASYNC109
        return await _net.connect(self.net.host, addr, timeout)

    async def request(self, peer: str, protocol: wire.StreamProtocol, payload: bytes,
                      timeout: float) -> bytes:  # noqa: ASYNC109
        return await _net.request(self.net.host, peer, wire.scoped(protocol.id, self.network), payload, max_reply=protocol.max_reply,
                                  timeout=timeout)

    def serve(self, protocol: wire.StreamProtocol, handler: Handler, timeout: float) -> None:
        _net.serve_protocol(self.net.host, wire.scoped(protocol.id, self.network), handler, max_len=protocol.max_request, timeout=timeout,
                            max_concurrent_per_peer=protocol.max_concurrent_per_peer)

    async def subscribe(self, topic: wire.Topic, validator: Validator) -> Subscription:
        pubsub = self._pubsub()

        def check(forwarder: Any, msg: Any) -> bool:
            data = bytes(msg.data)
            if len(data) > topic.max_message:
                return False
            try:
                author = b58encode(bytes(msg.from_id))
            except ValueError:
                return False
            return validator(author, data)

        name = wire.scoped(topic.name, self.network)
        pubsub.set_topic_validator(name, check, False)
        return _Libp2pSubscription(await pubsub.subscribe(name))

    async def publish(self, topic: wire.Topic, data: bytes) -> None:
        await self._pubsub().publish(wire.scoped(topic.name, self.network), data)

    async def disconnect(self, peer: str) -> None:
        await _net.disconnect(self.net.host, peer)

    def _pubsub(self) -> Any:
        if self.net.pubsub is None:
            raise RuntimeError("this host runs without gossip")
        return self.net.pubsub


@asynccontextmanager
async def running_libp2p_transport(seed: bytes, listen: list[str], network: str, *,
                                   announce: list[str] | None = None) -> AsyncIterator[Libp2pTransport]:
    async with _net.running_node_host(seed, listen) as net:
        yield Libp2pTransport(net, network, announce)
