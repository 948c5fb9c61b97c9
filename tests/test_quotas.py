"""Quotas against admitted peers that misbehave (issue 13's hostile-peer bounds), on the grid:
an owner that floods a custodian with keysets stops at its quota, and a requester that floods
the network with requests leaves at most its quota of live ones behind. Nothing of a refused
record is stored. The real-process check of the config's quotas is in test_cluster.py."""

from __future__ import annotations

import base64
import pathlib

import trio
import trio.testing

from shardnet import protocol as p
from shardnet.node._limits import Limits
from shardnet.simulations.grid import Grid

from .test_grid_epochs import _quiet


def in_virtual_time(fn):  # type: ignore[no-untyped-def]
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


async def flood(grid: Grid, victim: int, keys: list[bytes], others: tuple[int, int] = (2, 3)) -> list[dict]:
    """Node 0 imports each key onto ``victim`` and two others; the victim's shard of each."""
    custodians = [grid.nodes[i].peer_id for i in (victim, *others)]
    mine = []
    for key in keys:
        res = await grid.nodes[0].commands()["key-import"](
            {"key": base64.b64encode(key).decode(), "threshold": 2, "shares": 3, "custodians": custodians}, _quiet)
        mine.append(next(s for s in res["shards"] if s["custodian"] == custodians[0]))
    return mine


def test_an_owner_flooding_a_custodian_stops_at_its_keyset_quota(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 5, seed=11)
        async with grid.running():
            await grid.wait_directory()
            victim = grid.nodes[1]
            victim.custodian.limits = Limits(keysets_per_owner=4)
            owner = grid.nodes[0].peer_id
            states = [(s["state"], s["last_error"] or "") for s in await flood(grid, 1, [b"flood %d" % i
                                                                                      for i in range(7)])]
            assert [s for s, _ in states] == ["delivered"] * 4 + ["refused"] * 3, states
            assert all("limits.keysets_per_owner" in why for s, why in states if s == "refused")
            count, size = victim.store.owner_holdings(owner)
            assert count == 4 and len(victim.store.held_shards()) == 4  # nothing kept of the refused
            # Another owner is not held to the first one's count.
            await grid.import_key(2, b"someone else", 2, 3,
                                  custodians=[victim.peer_id, grid.nodes[3].peer_id, grid.nodes[4].peer_id])
            assert victim.store.owner_holdings(grid.nodes[2].peer_id)[0] == 1
    in_virtual_time(main)


def test_an_owner_past_its_byte_quota_is_refused_too(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 4, seed=12)
        async with grid.running():
            await grid.wait_directory()
            victim = grid.nodes[1]
            victim.custodian.limits = Limits(bytes_per_owner=6000)
            states = [s["state"] for s in await flood(grid, 1, [b"b" * 32 + bytes([i]) for i in range(6)])]
            assert "refused" in states and states.index("refused") >= 1, states
            assert victim.store.owner_holdings(grid.nodes[0].peer_id)[1] <= 6000
    in_virtual_time(main)


def test_two_thousand_requests_of_one_requester_leave_its_quota_behind(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 4, seed=13)
        async with grid.running():
            await grid.wait_directory()
            keyset = await grid.import_key(0, b"the key", 2, 3)
            flooder, approver = grid.nodes[3], grid.nodes[1]
            now = approver.now()
            refused = 0
            for i in range(2000):
                req = p.Request.make(flooder.key, keyset_id=bytes.fromhex(keyset), mode="unwrap", reason="",
                                     ephemeral=bytes(32), nonce=i.to_bytes(16, "big"), created=now,
                                     not_after=now + 3600)
                try:
                    approver.approvals.accept_request(req.signed, now)
                except p.ShardnetError as exc:
                    assert "limits.live_requests_per_requester" in str(exc)
                    refused += 1
            limit = approver.limits.live_requests_per_requester
            assert approver.store.live_requests(flooder.peer_id, now) == limit and refused == 2000 - limit
            assert len(approver.store.requests()) == limit  # nothing kept of the refused ones
            # Once they expire and are pruned, the table is empty again.
            assert approver.store.prune_requests(now + 3601) == limit and approver.store.requests() == []
    in_virtual_time(main)


def test_an_owner_naming_an_approver_in_many_keysets_stops_at_its_known_keyset_quota(tmp_path: pathlib.Path) -> None:
    """An approver that holds no shard keeps each keyset's record its owner sends: up to
    ``known_keysets_per_owner`` per owner; past it the notice is refused and nothing kept."""
    async def main() -> None:
        grid = Grid(tmp_path, 5, seed=14)
        async with grid.running():
            await grid.wait_directory()
            approver = grid.nodes[4]
            approver.approvals.limits = Limits(known_keysets_per_owner=3)
            owner = grid.nodes[0]
            custodians = [grid.nodes[i].peer_id for i in (1, 2, 3)]
            keysets = []
            for i in range(5):
                res = await owner.commands()["key-import"](
                    {"key": base64.b64encode(b"known %d" % i).decode(), "threshold": 2, "shares": 3,
                     "custodians": custodians, "approvers": [approver.peer_id, custodians[0]], "quorum": 1},
                    _quiet)
                keysets.append(res["keyset"])
            def told() -> list[dict]:
                return [next(n for n in owner.store.notices(k) if n["peer"] == approver.peer_id) for k in keysets]
            for _ in range(600):  # a minute of virtual time, at most
                if all(n["state"] != "pending" for n in told()):
                    break
                await trio.sleep(0.1)
            notices = told()
            assert [n["state"] for n in notices] == ["delivered"] * 3 + ["refused"] * 2, notices
            assert all("limits.known_keysets_per_owner" in (n["last_error"] or "") for n in notices[3:])
            assert approver.store.known_keysets_of(owner.peer_id) == 3
            assert {k["keyset_id"] for k in approver.store.known_keysets()} == set(keysets[:3])
    in_virtual_time(main)


def test_an_approver_forgets_the_records_of_keysets_that_expired(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 5, seed=15)
        async with grid.running():
            await grid.wait_directory()
            owner, approver = grid.nodes[0], grid.nodes[4]
            custodians = [grid.nodes[i].peer_id for i in (1, 2, 3)]
            made = {}
            for expires in (86400, None):
                res = await owner.commands()["key-import"](
                    {"key": base64.b64encode(b"expiring").decode(), "threshold": 2, "shares": 3,
                     "custodians": custodians, "approvers": [approver.peer_id, custodians[0]], "quorum": 1,
                     "expires": expires}, _quiet)
                made[expires] = res["keyset"]
            for _ in range(600):
                if approver.store.known_keysets_of(owner.peer_id) == 2:
                    break
                await trio.sleep(0.1)
            now = approver.now()
            assert approver.approvals.forget_expired(now) == 0  # nothing expired yet
            assert approver.approvals.forget_expired(now + 2 * 86400) == 1
            assert [k["keyset_id"] for k in approver.store.known_keysets()] == [made[None]]
            # A holder never drops its own keyset this way.
            holder = grid.nodes[1]
            assert holder.store.drop_known_keysets([made[86400]]) == 0 and holder.store.keyset(made[86400])
    in_virtual_time(main)
