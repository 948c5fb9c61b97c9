"""Keyset rules under pressure, on the grid: an authority that floods proposals, a
revocation list proposed on a stale base, pull summaries over many keysets, and
shards still queued at import when their custodian or index is revoked."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import trio

from shardnet import protocol as p
from shardnet.node import _rules
from shardnet.node._store import Store
from shardnet.protocol import CoSigned
from shardnet.protocol import keyset_rules as kr
from shardnet.simulations.grid import Grid

from .test_grid_epochs import in_virtual_time
from .test_grid_rules import AUDIT_ONLY, KEY, command


def _policy(keyset: str, version: int, now: int, placement: str = "") -> bytes:
    return kr.PolicyVersion.make_body(keyset_id=bytes.fromhex(keyset), version=version, policy=p.DEFAULT_POLICY,
                                      placement=placement, time=now)


def test_one_authority_cannot_fill_a_keysets_room_for_proposals(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 8, seed=31)
        async with grid.running():
            await grid.wait_directory()
            auth = [grid.nodes[i].peer_id for i in (5, 6, 7)]
            keyset = await grid.import_key(0, KEY, 2, 4, authorities=auth, authority_quorum=3)
            honest, other, hostile = grid.nodes[5], grid.nodes[6], grid.nodes[7]
            now = honest.now()
            flood = [CoSigned.propose(hostile.key, _policy(keyset, v, now)) for v in range(1, _rules.MAX_AHEAD + 1)]
            # Each newer one from the same signer alone takes the place of its oldest: it keeps two.
            assert [honest.rules.accept(cs.to_bytes(), now) for cs in flood] == ["proposal"] * len(flood)
            with pytest.raises(_rules.NoRoom):  # an old one replayed takes nobody's place
                honest.rules.accept(flood[0].to_bytes(), now)
            theirs, _ = other.rules.propose_policy(keyset, AUDIT_ONLY, None, now)
            assert honest.rules.accept(theirs.to_bytes(), now) == "proposal"  # the other authority has room
            mine, outcome = honest.rules.propose_policy(keyset, AUDIT_ONLY, "distinct:country", now)
            assert outcome == "proposal"  # and so does this node's own
            held = {r["proposal"] for r in honest.rules.proposals()}
            assert held == {flood[-2].id.hex(), flood[-1].id.hex(), theirs.id.hex(), mine.id.hex()}
            # Past MAX_AHEAD versions is refused outright.
            with pytest.raises(p.MalformedEncoding, match="versions past"):
                honest.rules.accept(CoSigned.propose(other.key, _policy(keyset, _rules.MAX_AHEAD + 1, now))
                                    .to_bytes(), now)
    in_virtual_time(main)


def test_room_for_proposals_is_shared_out_per_signer(tmp_path: pathlib.Path) -> None:
    me, a, b, h = (p.peer_id_of(bytes([i]) * 32) for i in (1, 2, 3, 4))
    with Store(tmp_path / "db.sqlite") as store:
        def put(pid: str, signers: list[str], now: int, keyset: str = "00", owner: str = "o",
                version: int = 1, limits: tuple[int, int, int, int] = (3, 32, 8, 1)) -> str:
            return store.put_rule_proposal(pid * 32, keyset * 16, "policy", version, b"r", signers=signers,
                                           now=now, owner=owner, me=me, limits=limits)

        def held() -> list[str]:
            return sorted(r["proposal_id"][0] for r in store.rules(in_force=False))
        # Own proposals take the place of the oldest of the owner with the most foreign ones.
        assert put("a", [a], 1) == put("b", [b], 2, owner="p") == put("c", [h], 3, keyset="11") == "kept"
        assert put("d", [a, b], 4, keyset="22") == "full"  # all is full
        assert put("e", [me], 5) == "kept" and held() == ["b", "c", "e"]  # owner o had two: a went
        assert put("f", [me, a], 6) == "kept" and held() == ["b", "e", "f"]
        assert put("g", [me], 7) == "kept" and held() == ["e", "f", "g"]
        assert put("8", [me], 8) == "full"  # nothing foreign left to make room
        assert put("e", [me], 9) == "same"
    with Store(tmp_path / "db2.sqlite") as store:
        # One hostile signer on many keysets of one owner takes only its own share of the owner's room.
        limits = (100, 6, 2, 2)
        assert [store.put_rule_proposal(f"{k}" * 32, f"{k}0" * 16, "policy", 1, b"r", signers=[h], now=k, owner="o",
                                        me=me, limits=limits) for k in range(1, 4)] == ["kept", "kept", "full"]
        assert store.put_rule_proposal("a" * 32, "30" * 16, "policy", 1, b"r", signers=[a], now=5, owner="o",
                                       me=me, limits=limits) == "kept"


def test_a_revocation_list_keeps_every_revocation_in_force(tmp_path: pathlib.Path) -> None:
    """Lists signed at different versions race: no authority signs one that drops what it
    signed before, and what a rival overtook is proposed again on top of it."""
    async def main() -> None:
        grid = Grid(tmp_path, 9, seed=32)
        async with grid.running():
            await grid.wait_directory()
            auth = [grid.nodes[i].peer_id for i in (5, 6, 7)]
            keyset = await grid.import_key(0, KEY, 2, 4, authorities=auth, authority_quorum=2)
            a, b, c = grid.nodes[5], grid.nodes[6], grid.nodes[7]
            x, y, z, w, v = (grid.nodes[i].peer_id for i in (1, 2, 3, 4, 8))
            now = a.now()

            def requester(peer: str) -> kr.Revoked:
                return kr.Revoked("requester", peer, 0, "left", now)

            def revoked(node: Any) -> set[str]:
                return set(node.rules.book(keyset).revoked.peers("requester"))
            # x is in force (v1). A proposes v2 {x, y}; B has its own open v2 {x, z}.
            first, _ = a.rules.propose_revocation(keyset, requester(x), now)  # type: ignore[misc]
            c.rules.accept(first.to_bytes(), now)
            done, _ = c.rules.sign(first.id.hex(), now)
            for node in (a, b):
                node.rules.accept(done.to_bytes(), now)
            a2, _ = a.rules.propose_revocation(keyset, requester(y), now)  # type: ignore[misc]
            b2, _ = b.rules.propose_revocation(keyset, requester(z), now)  # type: ignore[misc]
            # B goes on to v3 {x, z, w}, built on its own v2: A, which signed v2 {x, y}, refuses it.
            b3, _ = b.rules.propose_revocation(keyset, requester(w), now)  # type: ignore[misc]
            assert kr.parse_body(b3.body).version == 3
            a.rules.accept(b3.to_bytes(), now)
            with pytest.raises(p.ShardnetError, match=f"drops revocations.*requester {y}"):
                a.rules.sign(b3.id.hex(), now)
            # C signs A's v2: in force. B's open v2 loses to it, so B proposes what it lost (z)
            # again on top of it and of its open v3 (w); that one, signed by A, keeps all four.
            c.rules.accept(a2.to_bytes(), now)
            in_force, outcome = c.rules.sign(a2.id.hex(), now)
            assert outcome == "applied"
            b.rules.accept(in_force.to_bytes(), now)
            assert revoked(b) == {x, y}
            [carried] = [e.body for e in b.store.audit_entries() if e.kind == "revocations-dropped"]
            assert [e["peer"] for e in carried["revoked"]] == [z] and b.rules.outgoing[-1].id.hex() == \
                carried["proposal"]
            again = b.rules.store.rule_proposal(carried["proposal"])
            assert again is not None
            rec = kr.parse_body(CoSigned.restore(bytes(again["record"]), max_size=kr.MAX_RULE_RECORD).body)
            assert isinstance(rec, kr.RevocationList) and rec.version == 4 and rec.peers("requester") == {x, y, z, w}
            a.rules.accept(in_force.to_bytes(), now)
            a.rules.accept(bytes(again["record"]), now)
            _, outcome = a.rules.sign(carried["proposal"], now)
            assert outcome == "applied" and revoked(a) == {x, y, z, w}
            assert b2 is not None
            # A hostile authority completes a stale open list of A's (v6, proposed before B's
            # v5 with u went in force) with its own signature: every node applies it, and B,
            # whose u it drops, says so and proposes u again on top of it.
            u = grid.nodes[0].peer_id
            a5, _ = a.rules.propose_revocation(keyset, requester(v), now)  # type: ignore[misc]
            a6, _ = a.rules.propose_revocation(keyset, requester(b.peer_id), now)  # type: ignore[misc]
            assert [kr.parse_body(cs.body).version for cs in (a5, a6)] == [5, 6]
            b5, _ = b.rules.propose_revocation(keyset, requester(u), now)  # type: ignore[misc]
            v4 = a.rules.book(keyset).revocations[0]  # type: ignore[union-attr]
            for node in (b, c):
                node.rules.accept(v4.to_bytes(), now)
            assert c.rules.accept(b5.to_bytes(), now) == "proposal"
            done5, _ = c.rules.sign(b5.id.hex(), now)
            b.rules.accept(done5.to_bytes(), now)
            assert u in revoked(b)
            hostile = a6.signed_by(c.key)  # C's node would refuse: it signs outside its node
            assert b.rules.accept(hostile.to_bytes(), now) == "applied" and u not in revoked(b)
            dropped = [e.body for e in b.store.audit_entries() if e.kind == "revocations-dropped"][-1]
            assert dropped["over"] == 6 and [e["peer"] for e in dropped["revoked"]] == [u]
            row = b.store.rule_proposal(dropped["proposal"])
            assert row is not None and u in kr.parse_body(CoSigned.restore(
                bytes(row["record"]), max_size=kr.MAX_RULE_RECORD).body).peers("requester")  # type: ignore[union-attr]
            # A signs B's proposal that restores u: in force again.
            a.rules.accept(hostile.to_bytes(), now)
            a.rules.accept(bytes(row["record"]), now)
            a.rules.sign(dropped["proposal"], now)  # complete: in force
            assert u in revoked(a)
            # An authority withdraws an open proposal of its own (then it no longer binds what
            # it signs), never another's.
            own, _ = a.rules.propose_revocation(keyset, requester(grid.nodes[7].peer_id), now)  # type: ignore[misc]
            with pytest.raises(p.ShardnetError, match="did not sign"):
                b.rules.accept(own.to_bytes(), now)
                b.rules.withdraw(own.id.hex())
            assert a.rules.withdraw(own.id.hex()[:12])["withdrawn"] is True
            assert a.rules.store.rule_proposal(own.id.hex()) is None and a.rules._signed_revocations(keyset) == []
    in_virtual_time(main)


def test_pull_summaries_go_round_in_windows_and_replies_stop_at_their_budget(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 6, seed=33)
        async with grid.running():
            await grid.wait_directory()
            keysets = [await grid.import_key(0, KEY, 2, 3) for _ in range(4)]
            owner = grid.nodes[0]
            for k in keysets:
                await command(grid, 0, "policy-publish", keyset=k, policy=AUDIT_ONLY)
            one = len(p.encode(owner.rules.summary()[0]))
            named: list[str] = []
            for _ in range(8):  # a window of two keysets, going round
                window = owner.rules.summary(budget=2 * one + 1)
                assert len(window) == 2
                named += [bytes(e[0]).hex() for e in window]
            assert sorted(set(named)) == sorted(keysets) and len(set(named[:4])) == 4
            stale = [[bytes.fromhex(k), 0, b"", 0, b"", []] for k in keysets]
            full = owner.rules.pull_reply(stale)
            assert len(full) == 4
            budget = len(full[0]) + len(full[1]) + 10 + 5
            assert owner.rules.pull_reply(stale, budget=budget) == full[:2]
    in_virtual_time(main)


@pytest.mark.trio
async def test_queued_shards_never_reach_a_revoked_custodian_or_index(tmp_path: pathlib.Path,
                                                                      autojump_clock: Any) -> None:
    g = Grid(tmp_path, 9, latency=lambda a, b: 0.03, seed=34)
    async with g.running():
        await g.wait_directory(within=120)
        owner = g.nodes[0]
        pinned = [n.peer_id for n in g.nodes[1:8]]
        away = {g.nodes[6].peer_id, g.nodes[7].peer_id}
        g.network.partition({owner.peer_id}, away)
        for _attempt in range(12):  # the solver picks 5 of the 7 pinned: until both cut-off ones are among them
            keyset = await g.import_key(0, b"q" * 32, 3, 5, custodians=pinned, placement="", deliver_within=3600,
                                        all_delivered=False, wait=5)
            if away <= {s["custodian"] for s in g.shards(0, keyset)}:
                break
        else:
            raise AssertionError("no import placed a shard on both cut-off custodians")
        slots = {s["custodian"]: s for s in g.shards(0, keyset)}
        revoked_peer, other = sorted(away)
        index = slots[other]["index"]
        await command(g, 0, "revoke", subject="custodian", value=revoked_peer, keyset=keyset, reason="compromised")
        await command(g, 0, "revoke", subject="shard", value=f"{keyset}:{index}", reason="sealed to a lost disk")
        await trio.sleep(30)  # well inside the hour of --deliver-within
        g.network.heal()
        await trio.sleep(120)
        states = {s["custodian"]: s for s in g.shards(0, keyset)}
        assert states[revoked_peer]["state"] == "moved"
        new = states[revoked_peer]["last_error"].removeprefix("moved to ")
        assert new not in away and states[new]["state"] == "delivered"
        assert states[other]["state"] == "pending" and "revoked" in (states[other]["last_error"] or "")
        assert not g.nodes[g.index(other)].store.held_shards(keyset)
        assert not g.nodes[g.index(revoked_peer)].store.held_shards(keyset)
        assert all(r["reserve"] is None for r in owner.store.outbox(keyset))
        erased = [e.body for e in owner.store.audit_entries() if e.kind == "reserve-erased"]
        assert [(e["index"], e["custodian"]) for e in erased] == [(index, other)]
        assert await g.reconstruct(8, keyset, approve=lambda i: i != g.index(other)) == b"q" * 32



def test_a_node_applies_a_bounded_number_of_versions_per_keyset_and_hour(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 5, seed=35)
        async with grid.running():
            await grid.wait_directory()
            keyset = await grid.import_key(0, KEY, 2, 3)
            owner = grid.nodes[0]
            holder = next(n for n in grid.nodes[1:] if n.store.held_shards(keyset))
            now = owner.now()
            made = [owner.rules.propose_policy(keyset, AUDIT_ONLY, f"exclude:city=c{v}", now)[0]
                    for v in range(_rules.APPLY_BURST + 1)]
            for cs in made[:-1]:
                assert holder.rules.accept(cs.to_bytes(), now) == "applied"
            with pytest.raises(_rules.TooManyVersions):
                holder.rules.accept(made[-1].to_bytes(), now)
            assert not holder.rules_loops.validate("someone", made[-1].to_bytes())  # nor relayed
            assert holder.rules.accept(made[-1].to_bytes(), now + _rules.APPLY_WINDOW + 1) == "applied"
            # A stale record is refused as stale before its (forged) signature is looked at.
            forged = CoSigned(made[0].body, ((owner.key.public_key().public_bytes_raw(), b"\x00" * 64),))
            with pytest.raises(kr.StaleRule, match="rollback"):
                holder.rules.accept(forged.to_bytes(), now + _rules.APPLY_WINDOW + 1)
    in_virtual_time(main)
