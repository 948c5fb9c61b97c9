"""Bulk re-encryption on the grid: one revocation of a custodian that holds shares of many
keysets reshards all of them, with rounds pipelined (a bounded number in flight), not one
keyset after another."""

from __future__ import annotations

import pathlib

import pytest
import trio

from shardnet import protocol as p
from shardnet.node import _autopilot
from shardnet.node._services import Rejected
from shardnet.protocol import keyset_rules as kr
from shardnet.protocol import wire
from shardnet.simulations.grid import Grid

from .test_grid_autopilot import holders, triggered, until
from .test_grid_epochs import in_virtual_time
from .test_grid_rules import command

KEY = b"grid master key for bulk reshares"


def test_revoking_a_custodian_of_many_keysets_reshards_them_all_in_pipelined_rounds(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 9, seed=61, autopilot=True, latency=lambda a, b: 0.075)
        async with grid.running():
            await grid.wait_directory(within=120)
            victim = grid.nodes[5].peer_id
            keysets = [await grid.import_key(0, KEY, 2, 3, placement="", custodians=[victim, grid.nodes[1 + i % 4]
                                                                                      .peer_id, grid.nodes[6 + i % 3].peer_id])
                       for i in range(24)]
            assert all(victim in holders(grid, k) for k in keysets)
            start = trio.current_time()
            published: list[str] = []
            links = grid.nodes[0].links
            publish = links.publish

            async def spy(topic: wire.Topic, data: bytes) -> None:
                published.append(topic.name)
                await publish(topic, data)
            links.publish = spy  # type: ignore[method-assign]
            # No --keyset: every keyset this node (their only authority) is an authority of.
            out = await command(grid, 0, "revoke", subject="custodian", value=victim, reason="compromised")
            assert len(out) == len(keysets)
            # The 24 new revocation lists went out as one gossip message, and reached every holder.
            assert published == [wire.RULES_BATCH_TOPIC.name], published
            await trio.sleep(2)
            for k in keysets:
                for peer in holders(grid, k):
                    book = next(n for n in grid.nodes if n.peer_id == peer).rules.book(k)
                    assert book is not None and victim in book.revoked.peers("custodian")
            await until(lambda: len(triggered(grid, 0)) == len(keysets), 3 * _autopilot.EVERY + 120)
            assert all(victim not in holders(grid, k) for k in keysets)
            took = trio.current_time() - start
            done = triggered(grid, 0)
            assert sorted(t["keyset"] for t in done) == sorted(keysets)
            # One round is about 2 RTT (0.3 s) plus the crypto: one after another, 24 rounds and the
            # passes they need would take well over a minute; pipelined, one pass does them all.
            assert took <= _autopilot.EVERY + 30, took
            times = [e.time for e in grid.nodes[0].store.audit_entries() if e.kind == "trigger"]
            assert max(times) - min(times) <= 6, times  # 24 rounds of ~0.5 s each: 12 s one after another
            # The rounds' asks to each peer went batched: far fewer requests than frames.
            batcher = grid.nodes[0].epoch_batcher
            assert batcher.frames >= 4 * len(keysets) and batcher.requests * 3 <= batcher.frames, \
                (batcher.requests, batcher.frames)
            for k in keysets[:3]:
                assert await grid.reconstruct(2, k) == KEY
    in_virtual_time(main)


@pytest.mark.parametrize("peer_side", ["refuses-batches", "answers-one-at-a-time"])
def test_batched_asks_fall_back_when_a_peer_takes_no_batch_or_leaves_frames_for_later(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, peer_side: str) -> None:
    """A peer of an earlier version refuses a batch as a malformed frame: it gets each frame alone.
    A peer whose replies fill its budget answers the rest LATER: they are sent again."""
    async def main() -> None:
        grid = Grid(tmp_path, 6, seed=67, autopilot=True, latency=lambda a, b: 0.05)
        async with grid.running():
            await grid.wait_directory(within=120)
            victim, old = grid.nodes[5].peer_id, grid.nodes[2]
            if peer_side == "refuses-batches":
                def refuse(remote: str, data: bytes, now: int) -> bytes:
                    raise Rejected("malformed epoch frame: expected a shardnet/epoch-frame record, "
                                   "got 'shardnet/epoch-batch'")  # what a node of an earlier version says
                old.epochs.handle_batch = refuse  # type: ignore[method-assign]
            else:
                monkeypatch.setattr(p.batches, "REPLY_ROOM", 0)  # one reply per batch, the rest LATER
            keysets = [await grid.import_key(0, KEY, 2, 3, placement="", custodians=[
                victim, old.peer_id, grid.nodes[3 + i % 2].peer_id]) for i in range(8)]
            await command(grid, 0, "revoke", subject="custodian", value=victim, reason="compromised")
            await until(lambda: len(triggered(grid, 0)) == len(keysets), 120)
            assert all(victim not in holders(grid, k) for k in keysets)
            batcher = grid.nodes[0].epoch_batcher
            assert batcher.frames >= 4 * len(keysets)
            if peer_side == "refuses-batches":
                assert old.peer_id in batcher._alone  # for ALONE_FOR seconds
            else:
                assert batcher.requests >= 4 * len(keysets)  # one frame answered a request (batched: ~15)
            assert await grid.reconstruct(4, keysets[0]) == KEY
    in_virtual_time(main)


def test_a_rules_batch_is_relayed_only_with_news_and_nothing_forged_or_repeated(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 6, seed=71, latency=lambda a, b: 0.05)
        async with grid.running():
            await grid.wait_directory(within=120)
            x, y = grid.nodes[1], grid.nodes[2]
            mine = [await grid.import_key(0, KEY, 2, 3, placement="", custodians=[x.peer_id, y.peer_id,
                                                                                    grid.nodes[3].peer_id])
                    for _ in range(2)]
            other = await grid.import_key(0, KEY, 2, 3, placement="", custodians=[
                grid.nodes[3].peer_id, grid.nodes[4].peer_id, grid.nodes[5].peer_id])  # x does not know it
            owner = grid.nodes[0]
            entry = kr.Revoked("requester", grid.nodes[5].peer_id, 0, "test", int(owner.now()))
            for k in [*mine, other]:  # in force on the owner, not published
                owner.rules.propose_revocation(k, entry, int(owner.now()))

            def record(k: str) -> bytes:
                book = owner.rules.book(k)
                assert book is not None and book.revocations is not None
                return book.revocations[0].to_bytes()
            a, b, c = (record(k) for k in [*mine, other])
            forged = bytearray(b)
            forged[-1] ^= 1  # a signature byte
            ok = x.rules_loops.validate_batch
            author = owner.peer_id + "x"  # not x itself: x's own publications pass unchecked
            assert ok(author, p.batches.rules_batches([a, b])[0])
            assert ok(author, p.batches.rules_batches([a, c])[0])  # c: a keyset x cannot check
            assert not ok(author, p.batches.rules_batches([a, a])[0])
            assert not ok(author, p.batches.rules_batches([a, bytes(forged)])[0])
            assert not ok(author, p.batches.rules_batches([c])[0])  # nothing x can check is news
            x.rules_loops.accept_batch(p.batches.rules_batches([a, b])[0])
            book = x.rules.book(mine[0])
            assert book is not None and grid.nodes[5].peer_id in book.revoked.peers("requester")
            assert not ok(author, p.batches.rules_batches([a, b])[0])  # in force now: no news
    in_virtual_time(main)
