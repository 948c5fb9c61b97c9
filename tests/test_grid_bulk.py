"""Bulk re-encryption on the grid: one revocation of a custodian that holds shares of many
keysets reshards all of them, with rounds pipelined (a bounded number in flight), not one
keyset after another."""

from __future__ import annotations

import pathlib

import trio

from shardnet.node import _autopilot
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
            # No --keyset: every keyset this node (their only authority) is an authority of.
            out = await command(grid, 0, "revoke", subject="custodian", value=victim, reason="compromised")
            assert len(out) == len(keysets)
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
            for k in keysets[:3]:
                assert await grid.reconstruct(2, k) == KEY
    in_virtual_time(main)
