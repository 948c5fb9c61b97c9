"""A keyset's policy versions and revocations on the grid: real node services over the
memory transport, proposals co-signed with `sign`, gossip and anti-entropy."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.node._control_server import ControlError
from shardnet.protocol import CoSigned
from shardnet.protocol import keyset_rules as kr
from shardnet.simulations.grid import Grid, _quiet

from .test_grid_epochs import in_virtual_time, shares_held
from .test_grid_reencryption import shares_of

KEY = b"grid master key for keyset rules"
AUDIT_ONLY = ('permit (principal, action, resource) when { context.approvals >= context.quorum && '
              'context.reason == "audit" };')


async def command(grid: Grid, node: int, name: str, **args: Any) -> Any:
    return await grid.nodes[node].commands()[name](args, _quiet)


async def settle(grid: Grid, seconds: float = 2.0) -> None:
    await trio.sleep(seconds)


def versions(grid: Grid, keyset: str, kind: str) -> dict[int, int]:
    out = {}
    for i, n in enumerate(grid.nodes):
        book = n.rules.book(keyset)
        if book is not None:
            out[i] = book.version(kind)
    return out


def test_a_policy_version_signed_by_two_of_three_authorities_applies_everywhere(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 9, seed=21)
        async with grid.running():
            await grid.wait_directory()
            auth = [grid.nodes[i].peer_id for i in (5, 6, 7)]
            keyset = await grid.import_key(0, KEY, 2, 4, authorities=auth, authority_quorum=2)
            with pytest.raises(ControlError, match="not valid, nothing was signed"):
                await command(grid, 5, "policy-publish", keyset=keyset, policy="permit (principal, action, "
                              "resource) when { context.quroum > 0 };")
            with pytest.raises(p.ShardnetError, match="no policy authority"):
                await command(grid, 0, "policy-publish", keyset=keyset, policy=AUDIT_ONLY)
            res = await command(grid, 5, "policy-publish", keyset=keyset, policy=AUDIT_ONLY)
            assert res["state"] == "waiting for signatures" and res["signatures"] == 1
            await settle(grid)
            assert [r["proposal"] for r in grid.nodes[6].rules.proposals()] == [res["proposal"]]
            assert grid.nodes[0].rules.proposals() == []  # only authorities keep proposals
            assert set(versions(grid, keyset, "policy").values()) == {0}
            signed = await command(grid, 6, "sign", proposal=res["proposal"][:12])
            assert signed["state"] == "in effect" and signed["signatures"] == 2
            await settle(grid)
            knows = versions(grid, keyset, "policy")
            assert len(knows) >= 5 and set(knows.values()) == {1}, knows
            with pytest.raises(ControlError, match="policy denies"):
                await grid.reconstruct(1, keyset, within=20)
            assert await grid.reconstruct(1, keyset, reason="audit") == KEY
            shown = await command(grid, 0, "policy-show", keyset=keyset)
            assert shown["version"] == 1 and shown["policy"] == AUDIT_ONLY
            assert shown["signers"] == sorted([grid.nodes[5].peer_id, grid.nodes[6].peer_id])
            # A rewrap binds every holder's shard to the policy in force.
            await command(grid, 5, "rewrap", keyset=keyset)
            digest = p.Policy(AUDIT_ONLY).digest
            for i in shares_held(grid, keyset):
                node = grid.nodes[i]
                for h in node.store.held_shards(keyset):
                    meta = p.peek_shard_meta(node.keystore.open_at_rest(h["sealed"]))
                    assert meta.policy_hash == digest and meta.wrap > 0
            # Version 2 from the other pair; then the old version 1 (a rollback), version 2 again
            # (a replay) and a version 3 one authority signed (short of the quorum) are refused
            # by every node's validator, and version 1 proposed again can never be signed.
            v1 = grid.nodes[0].rules.book(keyset).policy[0]  # type: ignore[union-attr]
            res2 = await command(grid, 6, "policy-publish", keyset=keyset, policy=p.DEFAULT_POLICY,
                                 placement="distinct:country")
            assert res2["version"] == 2
            await settle(grid)
            await command(grid, 7, "sign", proposal=res2["proposal"])
            await settle(grid)
            assert set(versions(grid, keyset, "policy").values()) == {2}
            book = grid.nodes[5].rules.book(keyset)
            assert book is not None and book.policy is not None
            v2 = book.policy[0]
            short = CoSigned.propose(grid.nodes[5].key, kr.next_policy(book, policy=AUDIT_ONLY, placement=None,
                                                                        time=grid.nodes[5].now()))
            for i, n in enumerate(grid.nodes):
                for data in (v1.to_bytes(), v2.to_bytes(), short.to_bytes()):
                    assert not n.rules_loops.validate("someone", data), i
            with pytest.raises(kr.StaleRule, match="rollback"):
                grid.nodes[7].rules.accept(v1.to_bytes(), grid.nodes[7].now())
            assert grid.nodes[7].rules.accept(short.to_bytes(), grid.nodes[7].now()) == "proposal"
            # Node 7 proposes its own version 3: it then signs no other version 3.
            own, outcome = grid.nodes[7].rules.propose_policy(keyset, AUDIT_ONLY, "", grid.nodes[7].now())
            assert outcome == "proposal" and kr.parse_body(own.body).version == 3
            with pytest.raises(p.ShardnetError, match="one per version"):
                grid.nodes[7].rules.sign(short.id.hex(), grid.nodes[7].now())
    in_virtual_time(main)


def test_revoking_a_custodian_reshards_without_it(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 9, seed=22)
        async with grid.running():
            await grid.wait_directory()
            keyset = await grid.import_key(0, KEY, 2, 4)
            victim = next(i for i in shares_held(grid, keyset) if i != 0)
            vid = grid.nodes[victim].peer_id
            old = grid.nodes[victim].store.held_shards(keyset)[0]
            [res] = await command(grid, 0, "revoke", subject="custodian", value=vid, reason="its operator left")
            assert res["state"] == "in effect"  # the owner is the only authority
            await settle(grid)
            assert all(grid.nodes[i].rules.book(keyset).holder_revoked(1, vid, 0)  # type: ignore[union-attr]
                       for i in shares_held(grid, keyset))
            with pytest.raises(ControlError, match="revoked ones hold shares"):
                await command(grid, 0, "refresh", keyset=keyset)
            with pytest.raises(ControlError, match="revoked for this keyset"):
                await command(grid, 0, "reshare", keyset=keyset, custodians=[vid])
            out = await command(grid, 0, "reshare", keyset=keyset)
            assert vid not in {h for hs in out["holders"].values() for h in hs}
            assert await grid.reconstruct(3, keyset) == KEY
            # Its old share does not combine with the new ones.
            node = grid.nodes[victim]
            meta_share = p.open_shard(node.keystore.open_at_rest(old["sealed"]),
                                      node.keystore.opener_for(p.read_shard_meta(node.keystore.open_at_rest(
                                          old["sealed"]))), recipient=vid, now=node.now())[1]
            view = p.epoch_records.at_epoch(*grid.nodes[0].epochs.state(keyset))  # type: ignore[misc]
            with pytest.raises(p.ShardnetError):
                p.verify_share(view, meta_share)
            held = shares_of(grid, keyset, set(range(len(grid.nodes))))[view.epoch]
            current = [s for s in held if s.index != meta_share.index][: view.threshold - 1]
            with pytest.raises(p.MixedShares):  # as it is, its epoch label gives it away
                p.combine_key(view, [meta_share, *current])
            with pytest.raises(p.TooFewShares):  # relabelled, it fails the commitment check
                p.combine_key(view, [dataclasses.replace(meta_share, epoch=view.epoch), *current])
            # A placement the holders break is reported, and the next reshare places by it.
            moved = next(h for hs in out["holders"].values() for h in hs if h != grid.nodes[0].peer_id)
            country = grid.nodes[grid.index(moved)].cfg["country"]
            await command(grid, 0, "policy-publish", keyset=keyset, policy=p.DEFAULT_POLICY,
                          placement=f"exclude:country={country}")
            shown = await command(grid, 0, "policy-show", keyset=keyset)
            assert shown["placement"] == f"exclude:country={country}"
            assert [v.split(":")[0] for v in shown["violations"]] == ["exclude"] and moved in shown["violations"][0]
            out = await command(grid, 0, "reshare", keyset=keyset)
            assert moved not in {h for hs in out["holders"].values() for h in hs}
            assert (await command(grid, 0, "policy-show", keyset=keyset))["violations"] == []
            detail = await command(grid, 0, "key-show", keyset=keyset)
            assert detail["policy_version"] == 1 and detail["placement"] == f"exclude:country={country}"
            assert [(r["subject"], r["peer"]) for r in detail["revoked"]] == [("custodian", vid)]
            assert await grid.reconstruct(3, keyset) == KEY
            again = await command(grid, 0, "revoke", subject="custodian", value=vid, reason="again")
            assert again[0]["changed"] is False
            rows = await command(grid, victim, "revocations")
            assert [(r["subject"], r["peer"]) for r in rows if r["keyset"] == keyset] == [("custodian", vid)]
    in_virtual_time(main)


def test_a_revoked_requester_is_refused_and_its_votes_do_not_count(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 8, seed=23)
        async with grid.running():
            await grid.wait_directory()
            approvers = [grid.nodes[i].peer_id for i in (6, 7)]
            keyset = await grid.import_key(0, KEY, 2, 4, approvers=approvers, quorum=1)
            node6 = grid.nodes[6]
            pending = p.Request.make(grid.nodes[7].key, keyset_id=bytes.fromhex(keyset), mode="unwrap",
                                     reason="before", ephemeral=b"\x09" * 32, nonce=b"\x01" * 16,
                                     created=node6.now(), not_after=node6.now() + 600)
            assert node6.approvals.accept_request(pending.signed, node6.now()) is not None
            await command(grid, 0, "revoke", subject="requester", value=approvers[1], keyset=keyset,
                          reason="left the team")
            await settle(grid)
            row = node6.store.request(pending.id)
            assert row is not None and row["outcome"] == "refused: the requester is revoked"
            # Its requests are refused, and its approval does not make the quorum.
            with pytest.raises(ControlError, match="no quorum"):
                await grid.reconstruct(7, keyset, within=15)
            states = {r["requester"]: r["state"] for r in node6.approvals.listing(node6.now())}
            assert states[approvers[1]] == "refused"
            with pytest.raises(ValueError, match="revoked its requester"):
                node6.approvals.cast(pending.id, "approve", node6.now())
            with pytest.raises(ControlError, match="no quorum"):
                await grid.reconstruct(2, keyset, within=15, approve=lambda i: i == 7)
            assert await grid.reconstruct(3, keyset, approve=lambda i: i == 6) == KEY
    in_virtual_time(main)


def test_a_node_that_was_away_converges_and_bad_records_are_never_applied(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 8, seed=24)
        async with grid.running():
            await grid.wait_directory()
            keyset = await grid.import_key(0, KEY, 2, 4)
            away = next(i for i in shares_held(grid, keyset) if i != 0)
            peer = grid.nodes[away].peer_id
            grid.network.partition({peer}, {n.peer_id for n in grid.nodes} - {peer})
            await command(grid, 0, "policy-publish", keyset=keyset, policy=AUDIT_ONLY)
            await settle(grid)
            assert versions(grid, keyset, "policy")[away] == 0
            grid.network.heal()
            await trio.sleep(130)  # anti-entropy: a pull every RULES_PULL_EVERY s
            assert versions(grid, keyset, "policy")[away] == 1
            # Replayed, rolled back, forged, short of quorum, oversized: refused on every node.
            node = grid.nodes[away]
            book = node.rules.book(keyset)
            assert book is not None and book.policy is not None
            in_force = book.policy[0]
            stranger = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
            now = node.now()
            forged = CoSigned.propose(stranger, kr.next_policy(book, policy=p.DEFAULT_POLICY, placement=None,
                                                               time=now))
            bad = [in_force.to_bytes(), forged.to_bytes(), b"\x00" * (kr.MAX_RULE_RECORD + 1)]
            for i, n in enumerate(grid.nodes):
                for data in bad:
                    assert not n.rules_loops.validate("someone", data), (i, data[:20])
            with pytest.raises(kr.StaleRule):
                node.rules.accept(in_force.to_bytes(), now)
            assert versions(grid, keyset, "policy")[away] == 1
    in_virtual_time(main)


def test_rivals_converge_and_an_authority_that_was_away_gets_the_proposal(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 9, seed=25)
        async with grid.running():
            await grid.wait_directory()
            auth = [grid.nodes[i].peer_id for i in (5, 6, 7)]
            keyset = await grid.import_key(0, KEY, 2, 4, authorities=auth, authority_quorum=2)
            # An authority that signs two bodies of one version (node 6 here) lets two records
            # complete: nodes that got different ones agree on the smaller id after a pull.
            book = grid.nodes[5].rules.book(keyset)
            assert book is not None
            now = grid.nodes[5].now()
            bodies = [kr.PolicyVersion.make_body(keyset_id=bytes.fromhex(keyset), version=1, policy=text,
                                                 placement="", time=now) for text in (AUDIT_ONLY, p.DEFAULT_POLICY)]
            a = CoSigned.propose(grid.nodes[5].key, bodies[0]).signed_by(grid.nodes[6].key)
            b = CoSigned.propose(grid.nodes[7].key, bodies[1]).signed_by(grid.nodes[6].key)
            winner = min((a, b), key=lambda cs: cs.id)
            knowing = [i for i, n in enumerate(grid.nodes) if n.rules.book(keyset) is not None]
            for k, i in enumerate(knowing):  # half get one, half the other, and nobody gossips
                grid.nodes[i].rules.accept((a if k % 2 else b).to_bytes(), now)
            await trio.sleep(130)  # anti-entropy passes
            held = {i: grid.nodes[i].rules.book(keyset).policy[0].id for i in knowing}  # type: ignore[union-attr]
            assert set(held.values()) == {winner.id}, held
            # A proposal handed round while an authority was away reaches it by a pull.
            away = grid.nodes[7].peer_id
            grid.network.partition({away}, {n.peer_id for n in grid.nodes} - {away})
            [res] = await command(grid, 5, "revoke", subject="requester", value=grid.nodes[8].peer_id,
                                  keyset=keyset, reason="left")
            assert res["state"] == "waiting for signatures"
            await settle(grid)
            assert grid.nodes[7].rules.proposals() == []
            grid.network.heal()
            await trio.sleep(130)
            assert [r["proposal"] for r in grid.nodes[7].rules.proposals()] == [res["proposal"]]
            signed = await command(grid, 7, "sign", proposal=res["proposal"])
            assert signed["state"] == "in effect"
            await settle(grid)
            assert set(versions(grid, keyset, "revocations").values()) == {1}
    in_virtual_time(main)


def test_a_revoked_shard_blocks_refresh_and_new_holders_get_the_rules_with_the_commit(
        tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        grid = Grid(tmp_path, 10, seed=26)
        async with grid.running():
            await grid.wait_directory()
            keyset = await grid.import_key(0, KEY, 2, 3)
            await command(grid, 0, "policy-publish", keyset=keyset, policy=AUDIT_ONLY)
            [res] = await command(grid, 0, "revoke", subject="shard", value=f"{keyset}:2", reason="disk stolen")
            assert res["state"] == "in effect"
            with pytest.raises(ControlError, match="reshare instead"):
                await command(grid, 0, "refresh", keyset=keyset)
            with pytest.raises(ControlError, match="indices 1 to 3"):
                await command(grid, 0, "revoke", subject="shard", value=f"{keyset}:9", reason="no such")
            old = set(shares_held(grid, keyset))
            fresh = [n.peer_id for i, n in enumerate(grid.nodes) if i not in old][:3]
            out = await command(grid, 0, "reshare", keyset=keyset, custodians=fresh)
            assert {h for hs in out["holders"].values() for h in hs} == set(fresh)
            for peer in fresh:  # at once, with the commit: no window under the old policy
                node = grid.nodes[grid.index(peer)]
                book = node.rules.book(keyset)
                assert book is not None and book.version("policy") == 1 and book.version("revocations") == 1
                [h] = node.store.held_shards(keyset)  # sealed under the policy in force, known or not
                assert p.peek_shard_meta(node.keystore.open_at_rest(h["sealed"])).policy_hash == \
                    p.Policy(AUDIT_ONLY).digest
            with pytest.raises(ControlError, match="policy denies"):
                await grid.reconstruct(1, keyset, within=20)
            assert await grid.reconstruct(1, keyset, reason="audit") == KEY
            # The revocation named index 2 of epoch 0: the reshare dealt every index anew, so
            # the new epoch refreshes, and index 2 of it can be revoked in turn.
            out = await command(grid, 0, "refresh", keyset=keyset)
            assert out["action"] == "refresh"
            [res] = await command(grid, 0, "revoke", subject="shard", value=f"{keyset}:2", reason="again")
            assert res["changed"] is not False and res["record"]["revoked"][-1]["epoch"] == out["epoch"]
            with pytest.raises(ControlError, match="reshare instead"):
                await command(grid, 0, "refresh", keyset=keyset)
            assert await grid.reconstruct(1, keyset, reason="audit") == KEY
    in_virtual_time(main)
