"""The autopilot on the grid: authority nodes run the epoch action a trigger calls for,
with no operator command (node/_autopilot.py, protocol/_triggers.py)."""

from __future__ import annotations

import pathlib
from typing import Any

import trio

from shardnet import protocol as p
from shardnet.node import _autopilot
from shardnet.simulations.grid import Grid

from .test_grid_epochs import in_virtual_time, shares_held
from .test_grid_rules import command

KEY = b"grid master key for the autopilot"


def holders(grid: Grid, keyset: str) -> set[str]:
    view = grid.nodes[0].epochs.state(keyset)
    assert view is not None
    return {h for hs in p.epoch_records.at_epoch(*view).attrs["holders"].values() for h in hs}


def triggered(grid: Grid, node: int) -> list[dict[str, Any]]:
    return [e.body for e in grid.nodes[node].store.audit_entries() if e.kind == "trigger"]


async def until(check: Any, within: float) -> None:
    """Poll ``check`` once a virtual second (the nodes change the state it reads)."""
    with trio.fail_after(within):
        for _ in range(int(within) + 1):
            if check():
                return
            await trio.sleep(1)


def test_a_revocation_and_a_placement_change_reshard_by_themselves(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 9, seed=41, autopilot=True)
        async with grid.running():
            await grid.wait_directory()
            keyset = await grid.import_key(0, KEY, 2, 4, placement="")
            victim = sorted(holders(grid, keyset) - {grid.nodes[0].peer_id})[0]
            await command(grid, 0, "revoke", subject="custodian", value=victim, keyset=keyset, reason="stolen laptop")
            await until(lambda: len(triggered(grid, 0)) == 1, 2 * _autopilot.EVERY + 60)  # audited once done
            assert victim not in holders(grid, keyset)
            [t] = triggered(grid, 0)
            assert (t["trigger"], t["action"], t["away"]) == ("revocation", "reshare", [victim])
            assert "revoked custodian" in t["defeats"] and t["epoch"] == 1
            assert await grid.reconstruct(3, keyset) == KEY
            # A placement the holders break: they are moved away by the next look.
            moved = sorted(holders(grid, keyset) - {grid.nodes[0].peer_id})[0]
            country = grid.nodes[grid.index(moved)].cfg["country"]
            await command(grid, 0, "policy-publish", keyset=keyset, policy=p.DEFAULT_POLICY,
                          placement=f"exclude:country={country}")
            await until(lambda: len(triggered(grid, 0)) == 2, _autopilot.PAUSE + 2 * _autopilot.EVERY + 60)
            t = triggered(grid, 0)[1]
            assert (t["trigger"], t["action"]) == ("placement", "reshare") and moved in t["away"]
            assert all(grid.nodes[grid.index(h)].cfg["country"] != country for h in holders(grid, keyset))
            assert await grid.reconstruct(3, keyset) == KEY
            # Nothing more is due: no further round.
            await trio.sleep(3 * _autopilot.EVERY)
            assert len(triggered(grid, 0)) == 2
    in_virtual_time(main)


def test_a_membership_revocation_reshards_the_custodians_keysets(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 9, seed=42, autopilot=True)
        async with grid.running():
            await grid.wait_directory()
            keysets = [await grid.import_key(0, KEY, 2, 3, placement="") for _ in range(2)]
            common = set.intersection(*(holders(grid, k) for k in keysets)) - {grid.nodes[0].peer_id}
            victim = sorted(common or holders(grid, keysets[0]) - {grid.nodes[0].peer_id})[0]
            await command(grid, 0, "member-revoke", peer=victim, reason="left the network")
            held = [k for k in keysets if victim in holders(grid, k)]
            await until(lambda: len(triggered(grid, 0)) == len(held), 2 * _autopilot.EVERY + 90)
            assert all(victim not in holders(grid, k) for k in held)
            got = {t["keyset"]: t for t in triggered(grid, 0)}
            assert set(got) == set(held) and all(t["trigger"] == "membership" for t in got.values())
            for k in keysets:
                assert await grid.reconstruct(3, k) == KEY
            assert not shares_held(grid, held[0]).get(grid.index(victim))
    in_virtual_time(main)


def test_scheduled_refresh_and_rewrap_run_on_time(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 6, seed=43, autopilot=True)
        async with grid.running():
            await grid.wait_directory()
            keyset = await grid.import_key(0, KEY, 2, 3, placement="", refresh_every=600, rewrap_every=240)
            start = grid.nodes[0].now()
            await until(lambda: len(triggered(grid, 0)) >= 3, 700 + 2 * _autopilot.EVERY)
            runs = [(t["action"], t["trigger"]) for t in triggered(grid, 0)]
            assert runs[:3] == [("rewrap", "schedule"), ("rewrap", "schedule"), ("refresh", "schedule")], runs
            times = [e.time - start for e in grid.nodes[0].store.audit_entries() if e.kind == "trigger"]
            assert 240 <= times[0] <= 240 + 2 * _autopilot.EVERY and 600 <= times[2] <= 600 + 2 * _autopilot.EVERY
            assert await grid.reconstruct(2, keyset) == KEY
    in_virtual_time(main)


def test_a_policy_version_sets_the_schedule_and_an_operator_rewrap_restarts_it(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 6, seed=44, autopilot=True)
        async with grid.running():
            await grid.wait_directory()
            keyset = await grid.import_key(0, KEY, 2, 3, placement="")  # no schedule at import
            start = grid.nodes[0].now()
            res = await command(grid, 0, "policy-publish", keyset=keyset, policy=None,
                                schedule={"rewrap_every": 300})
            assert res["state"] == "in effect"
            await until(lambda: grid.nodes[3].rules.book(keyset).version("policy") == 1, 10)  # type: ignore[union-attr]
            book = grid.nodes[3].rules.book(keyset)
            assert book is not None and book.schedule == p.keyset_rules.Schedule(None, 300)
            assert book.policy_text == p.DEFAULT_POLICY  # kept: only the schedule changed
            await until(lambda: len(triggered(grid, 0)) == 1, 300 + 2 * _autopilot.EVERY + 10)
            first = grid.nodes[0].now()
            assert 300 <= first - start <= 300 + 2 * _autopilot.EVERY + 1
            await trio.sleep(150)
            done = await command(grid, 0, "rewrap", keyset=keyset)  # the operator's, half-way through
            assert done["complete"]
            manual = grid.nodes[0].now()
            await until(lambda: len(triggered(grid, 0)) == 2, 300 + 2 * _autopilot.EVERY + 10)
            assert grid.nodes[0].now() - manual >= 300  # counted from the operator's rewrap, not the first
            # A later version stops the rewraps; its other fields are kept.
            await command(grid, 0, "policy-publish", keyset=keyset, policy=None, schedule={"rewrap_every": None})
            shown = await command(grid, 0, "policy-show", keyset=keyset)
            assert shown["schedule"] == {"refresh_every": None, "rewrap_every": None} and shown["version"] == 2
            await trio.sleep(3 * 300)
            assert len(triggered(grid, 0)) == 2
            assert await grid.reconstruct(2, keyset) == KEY
    in_virtual_time(main)


def test_a_keyset_near_its_expiry_is_warned_about_once_a_day(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 5, seed=44, autopilot=True)
        async with grid.running():
            await grid.wait_directory()
            keyset = await grid.import_key(0, KEY, 2, 3, placement="", expires=3600)

            def warned() -> list[dict[str, Any]]:
                return [e.body for e in grid.nodes[0].store.audit_entries() if e.kind == "expiry-warning"]
            await trio.sleep(3000)
            assert warned() == []
            await trio.sleep(400)  # within the last 10% of the hour
            [w] = warned()
            assert w["keyset"] == keyset and "not renewed" in w["warnings"][0]
            status = await command(grid, 0, "status")  # the owner's status says so too
            assert status["expiry_warnings"] == w["warnings"]
            await trio.sleep(600)
            assert len(warned()) == 1 and triggered(grid, 0) == []
    in_virtual_time(main)


def test_a_custodian_whose_admission_ends_is_resharded_away_before_it_does(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 8, seed=45, autopilot=True)
        async with grid.running():
            await grid.wait_directory()
            keyset = await grid.import_key(0, KEY, 2, 3, placement="")
            victim = sorted(holders(grid, keyset) - {grid.nodes[0].peer_id})[0]
            node = grid.nodes[grid.index(victim)]
            await command(grid, 0, "admit", peer=victim, org=node.cfg["org"] or "org", country=node.cfg["country"],
                          city=node.cfg.get("city", ""), roles=["custodian", "approver"], expires=3000)
            ends = grid.nodes[0].now() + 3000
            await trio.sleep(2600)
            assert victim in holders(grid, keyset)  # not yet within the last 10%
            await until(lambda: len(triggered(grid, 0)) == 1, 300)
            assert victim not in holders(grid, keyset) and grid.nodes[0].now() < ends
            [t] = triggered(grid, 0)
            assert (t["trigger"], t["action"], t["away"]) == ("membership", "reshare", [victim])
            assert await grid.reconstruct(3, keyset) == KEY
    in_virtual_time(main)


def test_a_keyset_that_allows_renewal_is_refreshed_in_time_and_one_that_does_not_expires(
        tmp_path: pathlib.Path) -> None:
    from shardnet.node._control_server import ControlError

    async def main() -> None:
        grid = Grid(tmp_path, 6, seed=46, autopilot=True)
        async with grid.running():
            await grid.wait_directory()
            renewed = await grid.import_key(0, KEY, 2, 3, placement="", expires=3600, renew=True)
            lapsing = await grid.import_key(0, KEY, 2, 3, placement="", expires=3600)
            start = grid.nodes[0].now()
            await trio.sleep(3700)
            [t] = [t for t in triggered(grid, 0) if t["keyset"] == renewed]
            assert (t["trigger"], t["action"]) == ("expiry", "refresh")
            view = p.epoch_records.at_epoch(*grid.nodes[0].epochs.state(renewed))  # type: ignore[misc]
            assert view.epoch == 1 and view.not_after is not None and view.not_after >= start + 3240 + 3600 - 60
            assert await grid.reconstruct(3, renewed) == KEY  # past the first not-after
            assert not [t for t in triggered(grid, 0) if t["keyset"] == lapsing]
            try:
                await grid.reconstruct(3, lapsing, within=20)
            except ControlError as exc:
                assert "expired" in str(exc) or "no quorum" in str(exc) or "shares" in str(exc), exc
            else:
                raise AssertionError("an expired keyset was reconstructed")
    in_virtual_time(main)
