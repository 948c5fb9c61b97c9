"""A running node against bad peers: garbage, truncated, oversized and replayed
frames, and forged descriptors on the directory topic. The node stays up."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from shardnet import protocol as p
from shardnet.node import _net
from shardnet.protocol import wire
from shardnet.protocol._records import Delivery, Descriptor
from shardnet.simulations._local import LocalCluster, NodeSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("pair"), [NodeSpec("oslo", "NO"), NodeSpec("lima", "PE")]) as c:
        c.init_all()
        c.start_all()
        c.wait_directory(timeout=30)
        yield c


async def deliver_raw(host, peer: str, protocol: str, data: bytes, *, prefix: bytes | None = None,
                      close_early: bool = False):
    """Open a deliver stream and send raw bytes; return the reply (status, body) or None."""
    stream = await host.new_stream(ID.from_base58(peer), [TProtocol(protocol)])
    try:
        await stream.write((prefix if prefix is not None else len(data).to_bytes(4, "big")) + data)
        if close_early:
            await stream.close()
        frame = await _net.read_frame(stream, max_len=1 << 16, timeout=15)
        return frame[0], frame[1:]
    finally:
        await stream.reset()


def test_bad_frames_are_rejected_and_node_stays_up(pair: LocalCluster) -> None:
    node = pair.nodes["oslo"]
    desc = Descriptor.from_bytes(_descriptor(pair, "oslo"))
    owner_seed = os.urandom(32)
    owner = Ed25519PrivateKey.from_private_bytes(owner_seed)
    pair.admit_key(owner, name="owner", country="NO")  # an admitted member; outsiders are refused at the door
    deliver = pair.scoped(wire.DELIVER.id)

    # A valid delivery from an owner the node never heard of: it is verified on its own merits.
    from shardnet.protocol._policy import DEFAULT_POLICY, Policy

    policy = Policy(DEFAULT_POLICY)
    keyset, shares = p.split_key(b"k" * 32, 2, 2, owner=owner, now=int(time.time()), policy_hash=policy.digest,
                                 attrs={"policy": policy.text})
    meta = p.ShardMeta(keyset.keyset_id, 0, 1, 2, 2, desc.peer_id, int(time.time()), None, keyset.policy_hash,
                       keyset.commitments_digest, "x25519")
    sealed = p.seal_shard(meta, shares[0], desc.hpke["x25519"], owner=owner)
    cover = Delivery.make(owner, keyset_id=keyset.keyset_id, epoch=0, index=1, recipient=desc.peer_id,
                          sealed=sealed, sent_at=int(time.time()), nonce=os.urandom(16))
    good = p.encode([wire.DELIVER_FRAME_TAG, 1, cover.signed, keyset.signed, sealed])

    async def main() -> dict[str, object]:
        out: dict[str, object] = {}
        async with _net.running_node_host(owner_seed, ["/ip4/127.0.0.1/tcp/0"], enable_pubsub=False) as net:
            await _net.connect(net.host, node.addrs[0], 10)
            out["garbage"] = await deliver_raw(net.host, desc.peer_id, deliver, os.urandom(300))
            out["oversized"] = await deliver_raw(net.host, desc.peer_id, deliver, b"",
                                                 prefix=(64 << 20).to_bytes(4, "big"))
            out["truncated"] = await deliver_raw(net.host, desc.peer_id, deliver, b"x" * 10,
                                                 prefix=(1000).to_bytes(4, "big"), close_early=True)
            out["good"] = await deliver_raw(net.host, desc.peer_id, deliver, good)
            out["replayed"] = await deliver_raw(net.host, desc.peer_id, deliver, good)
        return out

    res = trio.run(main)
    status, body = res["garbage"]
    assert status == _net.ReplyStatus.REJECTED and b"malformed delivery" in body
    assert res["oversized"][0] == _net.ReplyStatus.TOO_LARGE
    assert res["truncated"][0] == _net.ReplyStatus.BAD_FRAME
    status, body = res["good"]
    assert status == _net.ReplyStatus.OK
    receipt = p._records.Receipt.from_bytes(body, custodian=desc.peer_id)
    assert receipt.status == "stored" and receipt.index == 1
    status, body = res["replayed"]
    assert status == _net.ReplyStatus.REJECTED and b"replayed" in body
    st = pair.control("oslo", "status")
    assert st["running"] and st["shards_held"] == 1


def _descriptor(c: LocalCluster, name: str) -> bytes:
    from shardnet.node._home import Home

    home: Home = c.nodes[name].home
    with home.open_store() as store:
        row = store.custodian(c.nodes[name].peer_id)
        assert row is not None
        return row["descriptor"]


def test_forged_descriptors_are_not_accepted(pair: LocalCluster) -> None:
    seed = os.urandom(32)
    key = Ed25519PrivateKey.from_private_bytes(seed)
    hpke = {"x25519": os.urandom(32)}
    honest = Descriptor.make(key, addrs=["/ip4/127.0.0.1/tcp/9"], hpke=hpke, name="mallory-honest",
                             country="NZ", city="", org="", version="t", seq=int(time.time() * 1000))
    # Forgery 1: claims to be oslo (its peer id), signed by our key.
    oslo = Descriptor.from_bytes(_descriptor(pair, "oslo"))
    body = p.encode(["shardnet/descriptor", 1, oslo.peer_id, ["/ip4/127.0.0.1/tcp/9"], hpke, "evil-oslo",
                     "NO", "", "EU", "", "t", int(time.time() * 1000) + 5])
    forged_identity = p.sign_body(key, body)
    # Forgery 2: our own descriptor with a field edited after signing.
    tag, ver, hbody, signer, sig = p.decode(honest.signed)
    edited = p.encode([tag, ver, hbody.replace(b"mallory-honest", b"mallory-edited"), signer, sig])
    pair.admit_key(key, name="mallory", country="NZ")  # admitted: her own descriptor is welcome
    topic = pair.scoped(wire.DIRECTORY_TOPIC.name)
    time.sleep(1.0)  # the admission reaches lima

    async def main() -> None:
        async with _net.running_node_host(seed, ["/ip4/127.0.0.1/tcp/0"]) as net:
            assert net.pubsub is not None
            await net.pubsub.subscribe(topic)
            for n in pair.nodes.values():
                await _net.connect(net.host, n.addrs[0], 10)
            await trio.sleep(2.5)  # a heartbeat or two: join the mesh
            for data in (forged_identity, edited, honest.signed):
                await net.pubsub.publish(topic, data)
                await trio.sleep(0.2)
            await trio.sleep(2)

    trio.run(main)
    for name in pair.nodes:
        rows = {c["name"]: c for c in pair.control(name, "custodians")}
        assert "mallory-honest" in rows, f"{name} did not get the honest descriptor over gossip"
        assert "evil-oslo" not in rows and "mallory-edited" not in rows
        assert rows["oslo"]["peer_id"] == oslo.peer_id
