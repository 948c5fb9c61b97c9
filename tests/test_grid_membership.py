"""Admission and revocation on the grid (real node services, memory network, virtual time)."""

from __future__ import annotations

import base64
import pathlib
from typing import Any

import pytest
import trio

from shardnet import protocol as p
from shardnet.node._keystore import FileKeystore
from shardnet.node._services import Rejected
from shardnet.simulations.grid import Grid


async def _quiet(event: dict[str, Any]) -> None:
    return None


def _join_request(g: Grid, i: int) -> str:
    h = g.homes[i]
    cfg = h.config()
    j = p.JoinRequest.make(h.identity(), network_id=g.genesis_or_fail().network_id,
                           hpke=FileKeystore.from_home(h).hpke_public(), name=cfg["name"], org="", country=cfg["country"],
                           city="", time=int(g.now()))
    return base64.b64encode(j.signed).decode()


async def _until(cond: Any, within: float) -> float:
    t0 = trio.current_time()
    while not cond():
        if trio.current_time() - t0 > within:
            raise AssertionError(f"not within {within} virtual seconds")
        await trio.sleep(0.05)
    return trio.current_time() - t0


@pytest.mark.trio
async def test_admitted_late_becomes_a_candidate_and_revoked_never_is(tmp_path: pathlib.Path,
                                                                       autojump_clock: Any) -> None:
    g = Grid(tmp_path, 10, latency=lambda a, b: 0.03, seed=3, admitted=lambda i: i < 8)
    async with g.running():
        await g.wait_directory(within=120)
        authority, late, revoked = g.nodes[0], g.nodes[8], g.nodes[3]
        members = g.nodes[:8]
        # Not admitted: nobody holds its descriptor, nobody stays connected to it.
        assert all(node.directory.get(late.peer_id) is None for node in members)
        await trio.sleep(5)
        assert late.peer_id not in authority.net.connected()
        # Admitted from its join request through the authority's own command.
        await authority.commands()["admit"]({"join_request": _join_request(g, 8), "org": "Late Org",
                                             "country": "KE", "expires": 86400}, _quiet)

        def candidate_everywhere(peer: str, want: bool) -> bool:
            return all((peer in node.owner.candidates("x25519", node.now())) == want for node in members)

        took = await _until(lambda: candidate_everywhere(late.peer_id, True), 60)
        assert took < 30  # the next anti-entropy round at the latest
        a = authority.members.admission(late.peer_id, authority.now())
        assert a is not None and (a.org, a.country) == ("Late Org", "KE")  # vouched, not self-declared
        # Revoked: no node places on it again, and it is cut off.
        await authority.commands()["member-revoke"]({"peer": revoked.peer_id, "reason": "test"}, _quiet)
        await _until(lambda: candidate_everywhere(revoked.peer_id, False), 10)
        await trio.sleep(2)
        assert all(revoked.peer_id not in node.net.connected() for node in members if node is not revoked)
        for owner in (1, 2, 4):
            keyset = await g.import_key(owner, bytes([owner]) * 32, 2, 6)
            holders = {s["custodian"] for s in g.shards(owner, keyset)}
            assert revoked.peer_id not in holders
            # Every shard was sealed to a peer admitted in the owner's view when it was sealed.
            view = g.nodes[owner].members
            assert all(view.admission(h, g.nodes[owner].now(), "custodian") for h in holders)
        # A release ask from the revoked node is refused by every custodian, with the reason.
        holders = {s["custodian"] for s in g.shards(1, keyset)}
        now = revoked.now()
        req = p.Request.make(revoked.key, keyset_id=bytes.fromhex(keyset), mode="unwrap", reason="",
                             ephemeral=b"\x02" * 32, nonce=b"\x03" * 16, created=now, not_after=now + 300)
        frame = p.encode([p.wire.RELEASE_ASK_TAG, 1, req.signed, []])
        for holder in holders:
            with pytest.raises(Rejected, match=r"the requester is not admitted to network \w+ \(revoked\)"):
                g.nodes[g.index(holder)].releaser.handle(revoked.peer_id, frame, now)
        # A revoked approver's vote counts nowhere, even carried as evidence by a member.
        keyset = await g.import_key(1, b"v" * 32, 2, 5, approvers=[revoked.peer_id, g.nodes[4].peer_id], quorum=2)
        asker = g.nodes[2]
        now = asker.now()
        req = p.Request.make(asker.key, keyset_id=bytes.fromhex(keyset), mode="unwrap", reason="",
                             ephemeral=b"\x02" * 32, nonce=b"\x04" * 16, created=now, not_after=now + 300)
        votes = [p.Vote.make(n.key, req, "approve", now).signed for n in (revoked, g.nodes[4])]
        frame = p.encode([p.wire.RELEASE_ASK_TAG, 1, req.signed, votes])
        for holder in {s["custodian"] for s in g.shards(1, keyset)}:
            with pytest.raises(Rejected, match=r"no quorum: 1 of 2"):
                g.nodes[g.index(holder)].releaser.handle(asker.peer_id, frame, now)


@pytest.mark.trio
async def test_a_departed_custodian_stops_being_a_candidate_after_its_ttl(tmp_path: pathlib.Path,
                                                                         autojump_clock: Any) -> None:
    from shardnet.node import _api
    from shardnet.protocol import wire

    g = Grid(tmp_path, 6, latency=lambda a, b: 0.03, seed=4)
    async with g.running():
        await g.wait_directory(within=120)
        gone = g.nodes[5]
        others = g.nodes[:5]
        assert all(gone.peer_id in n.owner.candidates("x25519", n.now()) for n in others)
        gone.stop()
        await trio.sleep(wire.DESCRIPTOR_TTL - 60)  # still within its TTL: still a candidate
        assert all(gone.peer_id in n.owner.candidates("x25519", n.now()) for n in others)
        await trio.sleep(90)
        for n in others:
            assert gone.peer_id not in n.owner.candidates("x25519", n.now())
            rows = {r["peer_id"]: r for r in _api.custodians(n.store, n.peer_id, n.now(), n.directory.last_heard())}
            assert rows[gone.peer_id]["stale"] and not any(r["stale"] for p_, r in rows.items() if p_ != gone.peer_id)
        with pytest.raises(ValueError, match=r"\(stale\)"):
            g.nodes[0].owner.candidates("x25519", g.nodes[0].now(), [gone.peer_id])
        keyset = await g.import_key(1, b"t" * 32, 2, 5)  # the five that are alive
        assert gone.peer_id not in {s["custodian"] for s in g.shards(1, keyset)}


@pytest.mark.trio
async def test_a_shard_pending_past_its_deadline_is_re_placed_and_the_key_comes_back(
        tmp_path: pathlib.Path, autojump_clock: Any) -> None:
    from shardnet.protocol import keyset_fetch as kf

    g = Grid(tmp_path, 7, latency=lambda a, b: 0.03, seed=5)
    async with g.running():
        await g.wait_directory(within=120)
        gone = g.nodes[6]
        pinned = [n.peer_id for n in g.nodes[2:7]]
        gone.stop()
        keyset = await g.import_key(0, b"r" * 32, 3, 5, custodians=pinned, placement="", deliver_within=120,
                                    all_delivered=False, wait=5)
        owner = g.nodes[0]
        slot = {s["custodian"]: s for s in g.shards(0, keyset)}[gone.peer_id]
        assert slot["state"] == "pending" and slot["deliver_by"] is not None
        reserves = [r["reserve"] for r in owner.store.outbox(keyset)]
        assert sum(r is not None for r in reserves) == 1  # only the undelivered slot keeps its share
        await trio.sleep(130)
        shards = g.shards(0, keyset)
        moved = [s for s in shards if s["custodian"] == gone.peer_id]
        assert moved[0]["state"] == "moved" and moved[0]["last_error"].startswith("moved to ")
        new = moved[0]["last_error"].removeprefix("moved to ")
        assert new in {g.nodes[0].peer_id, g.nodes[1].peer_id} and {s["custodian"]: s["state"] for s in shards}[new] == "delivered"
        assert all(r["reserve"] is None for r in owner.store.outbox(keyset))  # erased on delivery
        record = p.Keyset.from_bytes(owner.store.keyset(keyset)["record"])
        assert record.revision == 1 and kf.holders_of(record)[moved[0]["index"]] == [new]
        assert await g.reconstruct(0, keyset, approve=lambda i: i != 6) == b"r" * 32
        entries = [e.body for e in owner.store.audit_entries() if e.kind == "moved"]
        assert entries == [{"keyset": keyset, "epoch": 0, "index": moved[0]["index"], "from": gone.peer_id,
                            "to": new, "revision": 1, "reason": "not delivered by its deadline"}]
