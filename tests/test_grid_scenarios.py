"""Multi-node scenarios on the grid: real nodes over the memory network, in virtual time.

These are the cheap tier of the integration tests (house style: tahoe-lafs's
no_network grid). Each feature keeps one test over real libp2p with real node
processes as well: test_cluster.py and test_reconstruct.py.
"""

from __future__ import annotations

import dataclasses
import pathlib
import random
import types
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from shardnet import protocol as p
from shardnet.node._control_server import ControlError
from shardnet.node._services import Releaser
from shardnet.protocol import Request, Vote, hazmat, wire
from shardnet.simulations.grid import Grid

KEY = b"the grid's master key, 32 bytes!"
LATENCY = 0.030


def on_grid(root: pathlib.Path, n: int, scenario: Callable[[Grid], Awaitable[Any]], *, seed: int = 1,
            **grid: Any) -> Any:
    out: dict[str, Any] = {}

    async def main() -> None:
        g = Grid(root, n, latency=lambda a, b: LATENCY, seed=seed, **grid)
        async with g.running():
            await g.wait_directory(within=120)
            out["result"] = await scenario(g)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return out["result"]


def audit_kinds(g: Grid, i: int) -> list[str]:
    return [e.kind for e in g.nodes[i].store.audit_entries()]


def test_shards_go_to_distinct_countries_and_the_key_comes_back_in_both_modes(tmp_path: pathlib.Path) -> None:
    async def scenario(g: Grid) -> None:
        ks = await g.import_key(0, KEY, 3, 5, placement="distinct:country")
        shards = g.shards(0, ks)
        assert [s["state"] for s in shards] == ["delivered"] * 5
        assert len({s["country"] for s in shards}) == 5
        assert await g.reconstruct(0, ks, mode="unwrap") == KEY
        assert g.nodes[0].store.find_keyset(ks)["status"] == "active"
        assert await g.reconstruct(0, ks, mode="shares") == KEY
        assert g.nodes[0].store.find_keyset(ks)["status"] == "exposed"
        for i in range(5):
            assert "release" in audit_kinds(g, i) or g.nodes[i].peer_id not in {s["custodian"] for s in shards}
        assert {"request", "reconstruct"} <= set(audit_kinds(g, 0))

    on_grid(tmp_path, 7, scenario)


def test_a_cut_off_custodian_gets_its_shard_when_the_partition_heals(tmp_path: pathlib.Path) -> None:
    async def scenario(g: Grid) -> None:
        owner, cut = g.nodes[0].peer_id, g.nodes[3].peer_id
        g.network.partition({owner}, {cut})
        ks = await g.import_key(0, KEY, 3, 5, all_delivered=False, wait=5)
        by_custodian = {s["custodian"]: s for s in g.shards(0, ks)}
        assert by_custodian[cut]["state"] == "pending"
        assert sum(s["state"] == "delivered" for s in by_custodian.values()) == 4
        g.network.heal()
        for _ in range(240):  # the outbox retries with back-off, at most 30 s apart
            if all(s["state"] == "delivered" for s in g.shards(0, ks)):
                break
            await trio.sleep(0.25)
        late = {s["custodian"]: s for s in g.shards(0, ks)}[cut]
        assert late["state"] == "delivered"
        assert await g.reconstruct(0, ks) == KEY

    on_grid(tmp_path, 5, scenario)


def test_with_a_third_of_all_messages_lost_keys_still_go_out_and_come_back(tmp_path: pathlib.Path) -> None:
    rng = random.Random(7)

    async def scenario(g: Grid) -> None:
        # Requests are lost too, so deliveries take retries with back-off.
        ks = await g.import_key(2, KEY, 3, 5, wait=300)
        assert await g.reconstruct(2, ks, within=300) == KEY

    on_grid(tmp_path, 12, scenario, lose=lambda a, b: rng.random() < 0.33)


def test_two_holders_unreachable_still_reconstructs_three_fails_naming_them(tmp_path: pathlib.Path) -> None:
    async def scenario(g: Grid) -> None:
        ks = await g.import_key(0, KEY, 3, 5)
        holders = [s["custodian"] for s in g.shards(0, ks) if s["custodian"] != g.nodes[0].peer_id]
        g.network.partition({g.nodes[0].peer_id}, set(holders[:2]))
        assert await g.reconstruct(0, ks) == KEY
        g.network.partition({g.nodes[0].peer_id}, {holders[2]})
        with pytest.raises(ControlError) as err:
            await g.reconstruct(0, ks, within=20)
        message = str(err.value)
        # A partition leaves the connection up and loses what is sent on it: no answer.
        assert message.startswith("2 of 3 required partial decryptions: no answer from ")
        for peer in holders[:3]:
            assert g.nodes[g.index(peer)].cfg["name"] in message

    on_grid(tmp_path, 5, scenario)


def test_without_quorum_the_round_times_out_and_no_custodian_releases(tmp_path: pathlib.Path) -> None:
    async def scenario(g: Grid) -> None:
        ks = await g.import_key(0, KEY, 3, 5)
        with pytest.raises(ControlError, match="no quorum within 6 s: 2 of 3 approvals"):
            await g.reconstruct(0, ks, within=6, approve=lambda i: i in (1, 2))
        for i in range(5):
            assert "release" not in audit_kinds(g, i)
        assert g.nodes[0].store.find_keyset(ks)["status"] == "active"

    on_grid(tmp_path, 5, scenario)


def _lying_payload(self: Releaser, keyset: p.Keyset, req: Request, share: p.Share) -> bytes:
    wrong = dataclasses.replace(share, value=(share.value + 1) % hazmat.GROUP_ORDER)
    return Releaser._payload(self, keyset, req, wrong)


@pytest.mark.parametrize("mode", ["unwrap", "shares"])
def test_a_lying_custodian_is_named_and_the_key_still_comes_back(tmp_path: pathlib.Path, mode: str) -> None:
    async def scenario(g: Grid) -> None:
        ks = await g.import_key(0, KEY, 3, 5)
        liar = g.nodes[4]
        liar.releaser._payload = types.MethodType(_lying_payload, liar.releaser)  # type: ignore[method-assign]
        # Every holder is asked and every answer heard, so the liar's is among them.
        assert await g.reconstruct(0, ks, mode=mode) == KEY
        named = [e.body for e in g.nodes[0].store.audit_entries() if e.kind == "cheater"]
        assert [n["custodian"] for n in named] == [liar.peer_id]

    on_grid(tmp_path, 5, scenario, seed=3)


def test_an_approver_that_signs_both_ways_is_void_on_every_node(tmp_path: pathlib.Path) -> None:
    """Node 1 approves through its CLI and a deny signed with its key goes out too: every
    node voids it, and the other three approvals still make the quorum of three."""
    async def scenario(g: Grid) -> None:
        ks = await g.import_key(0, KEY, 3, 5)
        two_faced = g.nodes[1]
        sent: list[bytes] = []

        async def deny_too() -> None:
            for _ in range(200):
                for row in two_faced.approvals.listing(two_faced.now()):
                    if row["keyset"] == ks and row["my_vote"] == "approve":
                        req = two_faced.approvals.request(row["request"])
                        deny = Vote.make(two_faced.key, req, "deny", two_faced.now())
                        sent.append(deny.signed)
                        await two_faced.links.publish(wire.VOTE_TOPIC, deny.signed)
                        return
                await trio.sleep(0.1)

        async with trio.open_nursery() as n:
            n.start_soon(deny_too)
            assert await g.reconstruct(0, ks) == KEY
        assert sent, "the approver never voted"
        await trio.sleep(5)  # gossip and sync reach everyone
        request_id = Vote.from_bytes(sent[0]).request_id
        for node in g.nodes:
            rows = {r["request"]: r for r in node.approvals.listing(node.now())}
            assert two_faced.peer_id in rows[request_id]["void"], node.cfg["name"]

    on_grid(tmp_path, 5, scenario)
