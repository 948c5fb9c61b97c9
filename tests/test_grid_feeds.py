"""Threat feeds on the grid: what a feed followed by a keyset's authority node makes the
autopilot do, and that the same feed on another custodian changes nothing."""

from __future__ import annotations

import pathlib

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet.node import _autopilot
from shardnet.protocol import feed
from shardnet.simulations.grid import Grid

from .test_grid_autopilot import holders, triggered, until
from .test_grid_epochs import in_virtual_time

KEY = b"grid master key for threat feeds"
SIGNER = Ed25519PrivateKey.from_private_bytes(b"\x44" * 32)


def publish(path: pathlib.Path, now: int, seq: int, **marks: object) -> None:
    path.write_bytes(feed.make(SIGNER, name="intel", seq=seq, issued=now, expires=now + 86400, **marks))  # type: ignore[arg-type]


def test_a_feed_on_the_authority_node_moves_shards_and_one_elsewhere_does_not(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path / "grid", 9, seed=51, autopilot=True)
        async with grid.running():
            await grid.wait_directory()
            keyset = await grid.import_key(0, KEY, 2, 3, placement="")
            owner = grid.nodes[0]
            others = sorted(holders(grid, keyset) - {owner.peer_id})
            # A custodian's own feed marks another holder compromised: nothing moves.
            bystander = grid.nodes[grid.index(others[0])]
            local = tmp_path / "local.json"
            publish(local, bystander.now(), 1, compromised=[others[1]], threat_level=4)
            bystander.feeds.add(str(local), SIGNER.public_key().public_bytes_raw().hex(), 5, bystander.now())
            await trio.sleep(2 * _autopilot.EVERY + 10)
            assert bystander.threat_level() == 4  # its own release decisions see it
            assert others[1] in holders(grid, keyset) and triggered(grid, 0) == []
            # The owner's (the authority's) feed marks a holder's country unsafe: it moves.
            country = grid.nodes[grid.index(others[1])].cfg["country"]
            path = tmp_path / "intel.json"
            publish(path, owner.now(), 1, unsafe=[("country", country)])
            owner.feeds.add(str(path), SIGNER.public_key().public_bytes_raw().hex(), 5, owner.now())
            await until(lambda: len(triggered(grid, 0)) == 1, 2 * _autopilot.EVERY + 60)
            assert others[1] not in holders(grid, keyset)
            [t] = triggered(grid, 0)
            assert (t["trigger"], t["action"]) == ("threat-feed", "reshare") and f"country={country}" in t["reason"]
            assert all(grid.nodes[grid.index(h)].cfg["country"] != country for h in holders(grid, keyset))
            # A replayed (older) issue is refused, and the one taken stays.
            publish(path, owner.now(), 0, compromised=[others[0]])
            await trio.sleep(10)
            [f] = owner.feeds.listing(owner.now())
            assert "replay" in f["error"] and f["issue"]["seq"] == 1
            assert await grid.reconstruct(3, keyset) == KEY
    in_virtual_time(main)
