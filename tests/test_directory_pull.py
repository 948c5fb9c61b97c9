"""The directory's anti-entropy pull: a summary out, only what the puller lacks back."""

from __future__ import annotations

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.node._services import Directory
from shardnet.node._store import Store
from shardnet.protocol import directory_pull as dp
from shardnet.protocol import wire

NOW = 1_800_000_000
KEYS = [Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i in range(6)]


def descriptor(i: int, seq: int) -> p.Descriptor:
    return p.Descriptor.make(KEYS[i], addrs=[f"/memory/{i}"], hpke={"x25519": bytes(32)}, name=f"n{i}",
                             country="CH", city="", org=f"org{i}", version="0.1.0", seq=seq)


def directory(me: int = 0) -> Directory:
    key = KEYS[me]
    return Directory(Store(":memory:"), p.peer_id_of(key.public_key().public_bytes_raw()))


def test_a_peer_in_step_gets_nothing_and_a_stale_one_gets_only_the_news() -> None:
    a, b = directory(0), directory(1)
    for i in range(5):
        a.accept(descriptor(i, 1000).signed, NOW)
        b.accept(descriptor(i, 1000).signed, NOW)
    assert p.decode(a.pull_reply(b.summary())) == []
    a.accept(descriptor(2, 2000).signed, NOW)  # a newer descriptor of node 2
    a.accept(descriptor(5, 1000).signed, NOW)  # a custodian b has never heard of
    got = sorted(p.decode(a.pull_reply(b.summary())))
    assert got == sorted([descriptor(2, 2000).signed, descriptor(5, 1000).signed])
    for item in got:
        b.accept(item, NOW)
    assert p.decode(a.pull_reply(b.summary())) == []
    # b holding something newer than a does not make a send its older one.
    b.accept(descriptor(3, 3000).signed, NOW)
    assert p.decode(a.pull_reply(b.summary())) == []


def test_a_bare_pull_gets_everything_as_before() -> None:
    a = directory()
    for i in range(4):
        a.accept(descriptor(i, 1000).signed, NOW)
    assert len(p.decode(a.pull_reply(wire.PULL))) == 4


def test_the_index_survives_a_restart_and_stale_or_repeated_descriptors_change_nothing() -> None:
    store = Store(":memory:")
    a = Directory(store, "me")
    assert a.accept(descriptor(1, 2000).signed, NOW) is not None
    assert a.accept(descriptor(1, 2000).signed, NOW) is None  # the same bytes again
    assert a.accept(descriptor(1, 1000).signed, NOW) is None  # older
    again = Directory(store, "me")  # made from the store, as at a node's start
    assert len(again) == 1 and again.all()[0].seq == 2000
    assert again.accept(descriptor(1, 2000).signed, NOW) is None
    assert p.decode(again.pull_reply(a.summary())) == []


def test_the_reply_stays_within_its_cap() -> None:
    held = [(i.to_bytes(dp.KEY_BYTES, "big"), 1, bytes(2000)) for i in range(4000)]
    reply = dp.pull_reply(held, None, b"ours")
    assert len(reply) <= wire.DIRECTORY_DELTA.max_reply
    assert 0 < len(p.decode(reply, max_size=wire.DIRECTORY_DELTA.max_reply)) < 4000


def test_a_full_summary_fits_the_request_cap() -> None:
    summary = dp.summary((i.to_bytes(dp.KEY_BYTES, "big"), 2**64 - 1 - i) for i in range(wire.DIRECTORY_PULL_MAX + 10))
    frame = dp.encode_pull(summary)
    assert len(frame) <= wire.DIRECTORY_DELTA.max_request
    assert dp.decode_pull(frame) == summary and len(summary) == dp.ENTRY.size * wire.DIRECTORY_PULL_MAX


def test_the_same_holdings_in_any_order_make_the_same_summary() -> None:
    have = [(bytes([i]) * dp.KEY_BYTES, i * 7) for i in range(50)]
    assert dp.summary(have) == dp.summary(reversed(have))
    # ... and a responder that holds the same answers at once, with nothing.
    assert p.decode(dp.pull_reply([(k, s, b"d") for k, s in have], dp.summary(have), dp.summary(have))) == []


@pytest.mark.parametrize("entries", [
    "a str", [], bytes(dp.ENTRY.size - 1), bytes(dp.ENTRY.size + 1),
    bytes(dp.ENTRY.size * (wire.DIRECTORY_PULL_MAX + 1)),
])
def test_malformed_summaries_are_refused(entries: object) -> None:
    with pytest.raises(p.MalformedEncoding):
        dp.decode_pull(p.encode([wire.DIRECTORY_PULL_TAG, 1, entries]))


def test_other_frames_are_refused() -> None:
    for frame in (b"", b"\x00", p.encode(["shardnet/other", 1, []]), p.encode([wire.DIRECTORY_PULL_TAG, 2, []])):
        with pytest.raises(p.MalformedEncoding):
            dp.decode_pull(frame)


# -- on the grid: the node's side ------------------------------------------------------


def on_grid(root, scenario) -> None:  # type: ignore[no-untyped-def]
    import trio
    import trio.testing

    from shardnet.simulations.grid import Grid

    async def main() -> None:
        g = Grid(root, 3, latency=lambda a, b: 0.02, seed=2)
        async with g.running():
            await g.wait_directory(within=60)
            await scenario(g)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_peer_from_before_the_summary_is_pulled_whole(tmp_path) -> None:  # type: ignore[no-untyped-def]
    newcomer = descriptor(5, NOW * 1000)

    async def scenario(g) -> None:  # type: ignore[no-untyped-def]
        old, puller = g.nodes[1], g.nodes[0]
        g.admit_key(KEYS[5])
        del g.network.nodes[old.peer_id].handlers[wire.scoped(wire.DIRECTORY_DELTA.id, g.genesis.prefix)]  # serves /1 only
        assert old.directory.accept(newcomer.signed, NOW) is not None  # known to the old node alone
        assert puller.directory.get(newcomer.peer_id) is None
        await puller.peering.pull_from(old.peer_id)
        assert puller.directory.get(newcomer.peer_id) == newcomer

    on_grid(tmp_path, scenario)


def test_held_bytes_pass_the_validator_only_from_their_own_author(tmp_path) -> None:  # type: ignore[no-untyped-def]
    async def scenario(g) -> None:  # type: ignore[no-untyped-def]
        a, b = g.nodes[0], g.nodes[1]
        held = a.directory.get(b.peer_id)
        assert held is not None and a.directory.held_from(held.signed) == b.peer_id
        assert a.peering.validate(b.peer_id, held.signed)
        assert not a.peering.validate(g.nodes[2].peer_id, held.signed)  # relayed as if its own

    on_grid(tmp_path, scenario)


def test_after_a_clock_step_back_our_new_addresses_still_win(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The home holds our descriptor from before, dated 30 s ahead of the clock now (the
    clock was stepped back), with an address we no longer listen on."""
    async def scenario(g) -> None:  # type: ignore[no-untyped-def]
        node = g.nodes[0]
        ahead = int(node.clock() * 1000) + 30_000
        stale = p.Descriptor.make(node.key, addrs=["/memory/gone"], hpke=node.keystore.hpke_public(),
                                  name="node-0000", country="CH", city="", org="", version="0", seq=ahead)
        assert node.directory.accept(stale.signed, node.now()) is not None
        fresh = node.peering.publish_self()
        assert fresh.seq > ahead and fresh.addrs == tuple(node.net.listen_addrs)
        assert node.directory.get(node.peer_id) == fresh
        assert node.peering.publish_self() is fresh  # and it is not signed again each time

    on_grid(tmp_path, scenario)


def test_a_descriptor_of_ours_from_far_in_the_future_does_not_stop_the_node(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Held from a clock that was hours ahead: we cannot outbid it within the skew peers
    accept, so we publish what they do accept, and go on."""
    async def scenario(g) -> None:  # type: ignore[no-untyped-def]
        node = g.nodes[0]
        far = p.Descriptor.make(node.key, addrs=["/memory/gone"], hpke=node.keystore.hpke_public(),
                                name="node-0000", country="CH", city="", org="", version="0",
                                seq=int(node.clock() * 1000) + 7_200_000)
        node.store.upsert_custodian(node.peer_id, far.signed, {}, far.seq, now=node.now())
        node.directory._index(node.peer_id, far.signed, far.seq)  # as if it were in the home at start
        fresh = node.peering.publish_self()
        assert fresh.addrs == tuple(node.net.listen_addrs)
        assert fresh.seq <= (node.now() + wire.MAX_CLOCK_SKEW) * 1000
        await trio.sleep(15)  # the publish loop keeps going
        assert node.peering.publish_self().addrs == fresh.addrs

    on_grid(tmp_path, scenario)
