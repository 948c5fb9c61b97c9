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
                g.nodes[g.index(holder)].releaser.handle(revoked.peer_id, frame, now, no_shard=True)
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
                g.nodes[g.index(holder)].releaser.handle(asker.peer_id, frame, now, no_shard=True)


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
async def test_shards_pending_past_their_deadline_are_re_placed_and_the_key_comes_back(
        tmp_path: pathlib.Path, autojump_clock: Any) -> None:
    """Two pinned custodians leave before their shards arrive. Past --deliver-within both
    shards move to pinned custodians that hold none (never to one outside the pin); the
    holders that have the old record get the amendment, and refuse one that changes more
    than the holders; and a node that never saw the keyset fetches the newest revision,
    even while the other holders serve the oldest, and gets the key back."""
    from shardnet.protocol import keyset_fetch as kf

    g = Grid(tmp_path, 9, latency=lambda a, b: 0.03, seed=5)
    async with g.running():
        await g.wait_directory(within=120)
        owner, gone = g.nodes[0], {g.nodes[6].peer_id, g.nodes[7].peer_id}
        pinned = [n.peer_id for n in g.nodes[1:8]]
        for i in (6, 7):
            g.nodes[i].stop()
        for _attempt in range(12):  # the solver picks 5 of the 7 pinned: until both gone ones are among them
            keyset = await g.import_key(0, b"r" * 32, 3, 5, custodians=pinned, placement="", deliver_within=120,
                                        all_delivered=False, wait=5, quorum=3)
            if gone <= {s["custodian"] for s in g.shards(0, keyset)}:
                break
        else:
            raise AssertionError("no import placed a shard on both departed custodians")
        slots = {s["custodian"]: s for s in g.shards(0, keyset)}
        assert [slots[peer]["state"] for peer in sorted(gone)] == ["pending", "pending"]
        revision_0 = owner.store.keyset(keyset)["record"]
        reserves = {r["custodian"] for r in owner.store.outbox(keyset) if r["reserve"] is not None}
        assert reserves == gone  # only the undelivered slots keep their share
        await trio.sleep(130)
        shards = g.shards(0, keyset)
        moved = {s["custodian"]: s["last_error"].removeprefix("moved to ") for s in shards if s["state"] == "moved"}
        assert set(moved) == gone
        new = set(moved.values())
        assert len(new) == 2 and new <= set(pinned) - gone
        states = {s["custodian"]: s["state"] for s in shards}
        assert all(states[peer] == "delivered" for peer in new)
        assert all(r["reserve"] is None for r in owner.store.outbox(keyset))  # erased on delivery
        record = p.Keyset.from_bytes(owner.store.keyset(keyset)["record"])
        assert record.revision == 2 and gone.isdisjoint(h for hs in kf.holders_of(record).values() for h in hs)
        # The holders that had revision 0 were told; the new ones got the newest with their shard.
        for peer in {s["custodian"] for s in shards if s["state"] == "delivered"} - {owner.peer_id}:
            held = g.nodes[g.index(peer)].store.keyset(keyset)
            assert held is not None and p.Keyset.from_bytes(held["record"]).revision >= 1
        await trio.sleep(5)
        for peer in {s["custodian"] for s in shards if s["state"] == "delivered"} - {owner.peer_id}:
            assert p.Keyset.from_bytes(g.nodes[g.index(peer)].store.keyset(keyset)["record"]).revision == 2
        # The owner's key may move holders, nothing else: a holder refuses a "revision 3" that
        # names new approvers, and ignores an older revision.
        import dataclasses

        from shardnet.node._services import Rejected
        from shardnet.protocol._keyset import _signed

        holder = g.nodes[g.index(next(iter(new)))]
        keep = {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name not in ("owner", "signed")}
        grab = _signed(owner.key, **{**keep, "attrs": {**record.attrs, "revision": 3, "approvers": [holder.peer_id],
                                                        "quorum": 1}})
        with pytest.raises(Rejected, match="changes more than its holders"):
            holder.approvals.accept_keyset_notice(owner.peer_id, grab.signed, holder.now())
        assert holder.approvals.accept_keyset_notice(owner.peer_id, revision_0, holder.now()) == b"ok"
        assert p.Keyset.from_bytes(holder.store.keyset(keyset)["record"]).revision == 2  # unchanged
        # The holders that were never moved serve revision 0 again (as if every notice had been
        # lost): node 8, which never saw the keyset, still ends with the newest.
        for peer in {s["custodian"] for s in shards if s["state"] == "delivered"} - new - {owner.peer_id}:
            g.nodes[g.index(peer)].store._db.execute("UPDATE keysets SET record = ? WHERE keyset_id = ?",
                                                     [revision_0, keyset])
        assert g.nodes[8].store.keyset(keyset) is None
        assert await g.reconstruct(8, keyset, approve=lambda i: i not in (6, 7)) == b"r" * 32
        fetched = [e.body for e in g.nodes[8].store.audit_entries() if e.kind == "fetched"]
        assert fetched[-1]["revision"] == 2 and fetched[-1]["refused"] == []
        entries = [e.body for e in owner.store.audit_entries() if e.kind == "moved"]
        assert {(e["from"], e["to"]) for e in entries} == set(moved.items())


@pytest.mark.trio
async def test_random_admissions_and_revocations_never_seal_a_shard_to_a_peer_not_admitted(
        tmp_path: pathlib.Path, autojump_clock: Any) -> None:
    """200 nodes, 160 admitted at the start; a seeded random sequence of admissions (of the
    other 40), revocations and imports from random members, at random moments. The
    invariant, checked at every seal: the sealing node's own view admits the recipient as
    a custodian at that moment, and the envelope names it. Sealing is synchronous (no
    await inside import_key or replace), so the view read right after is the view it used."""
    import random

    rnd = random.Random(11)
    g = Grid(tmp_path, 200, latency=lambda a, b: 0.02, seed=11, admitted=lambda i: i < 160)
    seals: list[tuple[int, str, bool]] = []

    def watch(i: int) -> None:
        node = g.nodes[i]
        import_key, replace = node.owner.import_key, node.owner.replace

        def check(keyset_id: str, now: int, only: str | None = None) -> None:
            for row in node.store.outbox(keyset_id):
                if row["state"] == "pending" and only in (None, row["custodian"]):
                    meta = p.read_shard_meta(row["envelope"], owner=node.key.public_key().public_bytes_raw())
                    ok = meta.recipient == row["custodian"] and node.members.admission(
                        row["custodian"], now, "custodian") is not None
                    seals.append((i, row["custodian"], ok))

        def checked_import(*args: Any, **kw: Any) -> Any:
            res = import_key(*args, **kw)
            check(res.keyset.id_hex, kw["now"])
            return res

        def checked_replace(row: Any, now: int) -> str:
            new = replace(row, now)
            check(row["keyset_id"], now, only=new)
            return new

        node.owner.import_key = checked_import  # type: ignore[method-assign]
        node.owner.replace = checked_replace  # type: ignore[method-assign]

    async with g.running():
        await g.wait_directory(within=600)
        for i in range(200):
            watch(i)
        authority = g.nodes[0]
        waiting, revoked, admitted, left = list(range(160, 200)), set(), set(range(160)), set()
        ops = {"admit": 0, "revoke": 0, "leave": 0, "import": 0}
        for _ in range(40):
            op = rnd.choice(["admit", "revoke", "leave", "import", "import"])
            if op == "admit" and waiting:
                i = waiting.pop(rnd.randrange(len(waiting)))
                await authority.commands()["admit"]({"join_request": _join_request(g, i), "org": f"late-{i}",
                                                     "country": "KE", "expires": 86400}, _quiet)
                admitted.add(i)
            elif op == "revoke":
                i = rnd.choice(sorted(admitted - {0}))
                await authority.commands()["member-revoke"]({"peer": g.nodes[i].peer_id, "reason": "random"},
                                                            _quiet)
                admitted.discard(i)
                revoked.add(i)
            elif op == "leave":  # it goes away with its descriptor still live: shards for it wait, then move
                i = rnd.choice(sorted(admitted - {0} - left))
                g.nodes[i].stop()
                left.add(i)
            else:
                op = "import"
                owner = rnd.choice(sorted(i for i in admitted - left if i < 160))  # one that knows the directory
                extra: dict[str, Any] = {}
                known = {i for i in admitted if i < 160}  # in every directory from the start
                if left & known and rnd.random() < 0.6:  # pinned on six, one of them gone: 5 in 6 it is chosen
                    pool = sorted(known - left - {owner})
                    six = [rnd.choice(sorted(left & known)), *rnd.sample(pool, 5)]
                    extra = {"custodians": [g.nodes[i].peer_id for i in six], "placement": ""}
                await g.import_key(owner, rnd.randbytes(32), 2, 5, all_delivered=False, wait=1,
                                   deliver_within=rnd.choice([10, 3600]), **extra)
            ops[op] += 1
            await trio.sleep(rnd.uniform(0, 0.5))
        await trio.sleep(20)  # gossip settles; overdue slots (a custodian gone or revoked) are re-placed
        moves = [e.body for i, n in enumerate(g.nodes) if i not in left for e in n.store.audit_entries()
                 if e.kind == "moved"]
        assert ops["admit"] >= 5 and ops["revoke"] >= 5 and ops["import"] >= 12 and moves, (ops, len(moves))
        assert len(seals) >= 5 * ops["import"] + len(moves)
        assert [s for s in seals if not s[2]] == []
        # And the end state agrees everywhere: the revoked are nobody's candidates, the late ones everyone's.
        for i in sorted(admitted - left)[::10]:
            cands = g.nodes[i].owner.candidates("x25519", g.nodes[i].now())
            assert not {g.nodes[r].peer_id for r in revoked} & set(cands)
            assert {g.nodes[a].peer_id for a in admitted - left if a >= 160} <= set(cands)


@pytest.mark.trio
async def test_a_shard_that_cannot_be_re_placed_waits_and_its_reserve_is_erased_in_time(
        tmp_path: pathlib.Path, autojump_clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pinned on exactly five, two of them gone: nobody can take their shards, so they stay
    pending (tried again later); `key show` warns that the owner's home keeps t shares; past
    the keep limit the kept shares are erased and the slots only wait for their custodians."""
    from shardnet.node import _api, _commands, _services

    monkeypatch.setattr(_services, "RESERVE_KEEP", 200)
    g = Grid(tmp_path, 6, latency=lambda a, b: 0.03, seed=6)
    async with g.running():
        await g.wait_directory(within=120)
        owner = g.nodes[0]
        for i in (4, 5):
            g.nodes[i].stop()
        pinned = [n.peer_id for n in g.nodes[1:6]]
        keyset = await g.import_key(0, b"w" * 32, 2, 5, custodians=pinned, placement="", deliver_within=60,
                                    all_delivered=False, wait=3)
        detail = _api.keyset_detail(owner.store, keyset)
        assert len(detail["reserves"]) == 2
        assert "this home alone could rebuild the key" in _commands._format_keyset(detail)
        await trio.sleep(70)  # overdue, and no pinned custodian is free: pending, tried again later
        rows = {r["custodian"]: r for r in owner.store.outbox(keyset) if r["state"] == "pending"}
        assert len(rows) == 2 and all(r["reserve"] is not None and r["deliver_by"] >= owner.now() + 200
                                      for r in rows.values()), rows  # postponed by REPLACE_RETRY
        await trio.sleep(330)  # the retry comes after the keep limit: the reserves go
        rows = {r["custodian"]: r for r in owner.store.outbox(keyset) if r["state"] == "pending"}
        assert len(rows) == 2 and all(r["reserve"] is None and r["deliver_by"] is None for r in rows.values())
        erased = [e.body for e in owner.store.audit_entries() if e.kind == "reserve-erased"]
        assert {e["custodian"] for e in erased} == set(rows)
        assert "could rebuild" not in _commands._format_keyset(_api.keyset_detail(owner.store, keyset))
