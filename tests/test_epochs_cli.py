"""Refresh and reshare with real node processes over real libp2p, through the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.node import _net
from shardnet.node._epoch_view import record_view
from shardnet.node._epochs import frame
from shardnet.node._keystore import FileKeystore
from shardnet.protocol import epoch_records as er
from shardnet.protocol import wire
from shardnet.simulations._local import CLI, FIVE_CONTINENTS, LocalCluster, NodeSpec, run_cli

from .test_reconstruct import KEY, admit_everywhere, reconstruct

pytestmark = pytest.mark.slow
SEVEN = [*FIVE_CONTINENTS, NodeSpec("nairobi", "KE", "Nairobi", "Rift Custody"),
         NodeSpec("mumbai", "IN", "Mumbai", "Konkan Vaults")]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, pathlib.Path]]:
    root = tmp_path_factory.mktemp("epochs")
    with LocalCluster(root, SEVEN) as c:
        c.init_all()
        c.start_all()
        c.wait_directory(timeout=60)
        yield c, root


def home(c: LocalCluster, name: str) -> str:
    return str(c.nodes[name].home.path)


def names(c: LocalCluster) -> dict[str, str]:
    return {n.peer_id: name for name, n in c.nodes.items()}


def import_key(c: LocalCluster, root: pathlib.Path, *extra: str, t: int = 3, n: int = 5) -> dict:
    (root / "master.key").write_bytes(KEY)
    r = run_cli("key", "import", "--home", home(c, "frankfurt"), "--in", str(root / "master.key"), "-t", str(t),
                "-n", str(n), "--json", *extra)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert [s["state"] for s in d["shards"]] == ["delivered"] * n
    return d


def holders(c: LocalCluster, d: dict) -> list[str]:
    who = names(c)
    return [who[s["custodian"]] for s in d["shards"]]


def held(c: LocalCluster, name: str, keyset: str) -> list[tuple[p.Share, bytes]]:
    """The shares ``name`` stores for ``keyset`` (opened with its own key), with the stored bytes."""
    node = c.nodes[name]
    ks = FileKeystore.from_home(node.home)
    out = []
    with node.home.open_store() as store:
        for row in store.held_shards(keyset):
            sealed = ks.open_at_rest(row["sealed"])
            meta = p.read_shard_meta(sealed)
            _, share = p.open_shard(sealed, ks.opener_for(meta), recipient=node.peer_id, now=int(time.time()))
            out.append((share, bytes(row["sealed"])))
    return out


def view(c: LocalCluster, name: str, keyset: str) -> p.Keyset:
    with c.nodes[name].home.open_store() as store:
        row = store.keyset(keyset)
        assert row is not None
        return record_view(store, row["record"])


def epoch_cli(c: LocalCluster, name: str, action: str, keyset: str, *extra: str,
              timeout: float = 120) -> tuple[int, dict, str]:
    r = run_cli(action, "--home", home(c, name), keyset, "--json", *extra, timeout=timeout)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {}), r.stderr


def wait_for(probe: Any, timeout: float = 30.0) -> Any:
    """Poll ``probe`` until it returns something true (gossip and pulls take their time)."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def db_bytes(c: LocalCluster, name: str) -> bytes:
    base = c.nodes[name].home.path / "node.db"
    return b"".join(f.read_bytes() for f in (base, base.with_name("node.db-wal")) if f.exists())


def test_refresh_erases_the_old_ciphertext_for_real(net: tuple[LocalCluster, pathlib.Path]) -> None:
    c, root = net
    d = import_key(c, root)
    ks = d["keyset"]
    who = holders(c, d)
    before = {name: held(c, name, ks) for name in who}
    code, res, err = epoch_cli(c, "frankfurt", "refresh", ks)
    assert code == 0, err
    assert res["epoch"] == 1 and len(res["erased"]) == 5 and not res["unacked"]
    assert "fewer than t old shares" in res["defeats"]
    for name in who:
        (old, old_bytes), = before[name]
        (new, _), = held(c, name, ks)
        assert new.epoch == 1 and new.index == old.index and new.value != old.value
        # The old stored bytes are nowhere in the database file or its WAL any more.
        data = db_bytes(c, name)
        assert old_bytes not in data and old_bytes[-64:] not in data, name
    # The owner's outbox copies of the old shards are gone too.
    owner = db_bytes(c, "frankfurt")
    assert not any(old_bytes[-64:] in owner for (_, old_bytes), in before.values())
    text = run_cli("key", "show", "--home", home(c, "frankfurt"), ks).stdout
    assert "epochs" in text and "refresh" in text and "deletion receipts" in text, text
    code, _, err, _ = reconstruct(c, root, ks, approvers=tuple(who[:3]))
    assert code == 0, err


def test_rewrap_through_the_cli_leaves_old_keys_and_ciphertext_nowhere(net: tuple[LocalCluster, pathlib.Path]) -> None:
    c, root = net
    d = import_key(c, root)
    ks = d["keyset"]
    who = holders(c, d)
    before = {name: [raw for _, raw in held(c, name, ks)] for name in who}
    r = run_cli("rewrap", "--home", home(c, "frankfurt"), ks, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["complete"] and len(res["rewrapped"]) == 5 and {x["wrap"] for x in res["rewrapped"]} == {1}
    for name in who:
        data = db_bytes(c, name)
        for old in before[name]:
            assert old[-64:] not in data, name  # the old ciphertext is overwritten, WAL included
        node = c.nodes[name]
        with node.home.open_store() as store:
            (row,) = store.held_shards(ks)
        sealed = bytes(row["sealed"])
        meta = p.read_shard_meta(sealed)
        assert meta.wrap >= 1 and meta.owner == node.home.identity().public_key().public_bytes_raw()
        with pytest.raises(p.DecryptionFailed):  # the key it was delivered under opens nothing now
            p.open_shard(sealed, FileKeystore.from_home(node.home).openers()["x25519"], recipient=node.peer_id,
                         now=int(time.time()))
        rest = p.decode((node.home.path / "rest.key").read_bytes())
        assert list(rest["epochs"]) == [str(meta.wrap)]  # only the at-rest key in use is kept
    code, _, err, _ = reconstruct(c, root, ks, approvers=tuple(who[:3]))
    assert code == 0, err
    text = run_cli("rewrap", "--home", home(c, next(n for n in who if n != "frankfurt")), ks)
    assert text.returncode == 1 and "no policy authority" in text.stderr and "Traceback" not in text.stderr


def test_shardnet_revoke_reshards_the_keyset_without_the_custodian(net: tuple[LocalCluster, pathlib.Path]) -> None:
    c, root = net
    d = import_key(c, root)
    ks = d["keyset"]
    victim = next(n for n in holders(c, d) if n != "frankfurt")
    (old_share, _), = held(c, victim, ks)
    peer = c.nodes[victim].peer_id
    r = run_cli("revoke", "--home", home(c, "frankfurt"), "--custodian", peer, "--keyset", ks, "--reason",
                "operator left", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["state"] == "in effect"  # the owner is this keyset's one authority
    listed = wait_for(lambda: [x for x in json.loads(run_cli("revocations", "--home", home(c, victim),
                                                            "--json").stdout) if x["keyset"] == ks])
    assert [(x["subject"], x["peer"], x["version"]) for x in listed] == [("custodian", peer, 1)]
    r = run_cli("revoke", "--home", home(c, victim), "--custodian", peer, "--keyset", ks, "--reason", "me")
    assert r.returncode == 1 and "no policy authority" in r.stderr and "Traceback" not in r.stderr, r.stderr
    code, res, err = epoch_cli(c, "frankfurt", "refresh", ks)
    assert code == 2 and "reshare instead" in err and "Traceback" not in err, err
    code, res, err = epoch_cli(c, "frankfurt", "reshare", ks)
    assert code == 0, err
    assert peer not in {h for hs in res["holders"].values() for h in hs}
    v = view(c, "frankfurt", ks)
    new = [s for name in c.nodes if name != victim for s, _ in held(c, name, ks) if s.epoch == v.epoch]
    others = [s for s in new if s.index != old_share.index][:2]
    with pytest.raises(p.MixedShares):  # its label as it is
        p.combine_key(v, [old_share, *others])
    with pytest.raises(p.TooFewShares) as info:  # relabelled to the current epoch: named by the check
        p.combine_key(v, [dataclasses.replace(old_share, epoch=v.epoch), *others])
    assert [b.index for b in info.value.bad] == [old_share.index]
    shown = json.loads(run_cli("key", "show", "--home", home(c, "frankfurt"), ks, "--json").stdout)
    assert [(x["subject"], x["peer"]) for x in shown["revoked"]] == [("custodian", peer)]
    code, _, err, _ = reconstruct(c, root, ks, approvers=tuple(n for n in holders(c, d) if n != victim)[:3])
    assert code == 0, err


def test_a_revoked_custodian_is_resharded_away_and_its_share_is_useless(
        net: tuple[LocalCluster, pathlib.Path]) -> None:
    c, root = net
    d = import_key(c, root, "--approvers", ",".join(c.nodes[n].peer_id for n in ("frankfurt", "tokyo", "new-york")),
                   "--quorum", "2")
    ks = d["keyset"]
    victim = next(n for n in holders(c, d) if n not in ("frankfurt", "tokyo", "new-york"))
    (old_share, _), = held(c, victim, ks)
    peer = c.nodes[victim].peer_id
    r = run_cli("membership", "revoke", peer, "--home", home(c, "frankfurt"), "--reason", "lost laptop", "--json")
    assert r.returncode == 0, r.stderr
    code, res, err = epoch_cli(c, "frankfurt", "reshare", ks)
    assert code == 0, err
    assert res["epoch"] == 1 and peer not in {h for hs in res["holders"].values() for h in hs}
    assert "revoked custodian" in res["defeats"]
    v = view(c, "frankfurt", ks)
    new = [s for name in c.nodes if name != victim for s, _ in held(c, name, ks) if s.epoch == 1]
    assert sorted(s.index for s in new) == [1, 2, 3, 4, 5]
    # The revoked custodian's share, as it is: another epoch, it never combines.
    others = [s for s in new if s.index != old_share.index][:2]
    with pytest.raises(p.MixedShares):
        p.combine_key(v, [old_share, *others])
    # Relabelled as the current epoch: it fails the commitment check, and is named.
    forged = dataclasses.replace(old_share, epoch=v.epoch)
    with pytest.raises(p.TooFewShares) as info:
        p.combine_key(v, [forged, *others])
    assert [b.index for b in info.value.bad] == [old_share.index]
    code, _, err, _ = reconstruct(c, root, ks, approvers=("tokyo", "frankfurt"))
    assert code == 0, err
    c.remove(victim)  # revoked: the later tests place on admitted custodians only


def test_sigkill_of_a_holder_mid_round_leaves_the_key_reconstructable(
        net: tuple[LocalCluster, pathlib.Path]) -> None:
    c, root = net
    admitted = {n for n in c.nodes if c.nodes[n].running}
    d = import_key(c, root, "--custodians", ",".join(c.nodes[n].peer_id for n in sorted(admitted)[:5]))
    ks = d["keyset"]
    who = holders(c, d)
    victim = next(n for n in who if n != "frankfurt")
    proc = subprocess.Popen([*CLI, "refresh", "--home", home(c, "frankfurt"), ks, "--json", "--timeout", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the round has started: the plan is in the owner's log
            with c.nodes["frankfurt"].home.open_store() as store:
                if any(e.kind == "epoch-plan" and e.body["keyset"] == ks for e in store.audit_entries()):
                    break
            time.sleep(0.005)
        c.stop(victim, sig=signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        proc.kill()
        proc.communicate()
    if proc.returncode == 0:
        res = json.loads(stdout)
        assert res["epoch"] == 1
    else:  # aborted cleanly: one line, the old epoch still current
        assert proc.returncode == 1 and "aborted" in stderr and "Traceback" not in stderr, stderr
    voters = tuple(n for n in who if n != victim)[:3]
    code, _, err, _ = reconstruct(c, root, ks, approvers=voters)
    assert code == 0, err
    c.start(victim)


def test_a_holder_that_missed_a_commit_coordinates_a_reconstruction_with_the_newer_record(
        net: tuple[LocalCluster, pathlib.Path]) -> None:
    """A holder away during a refresh still has the old epoch; with the owner (who owes it
    the commit) down too, it asks the holders, hears them answer from the newer epoch, and
    fetches that record instead of naming them cheaters."""
    c, root = net
    running = sorted(n for n in c.nodes if c.nodes[n].running and n != "frankfurt")
    d = import_key(c, root, "--custodians", ",".join(c.nodes[n].peer_id for n in running[:5]))
    ks = d["keyset"]
    victim, *others = holders(c, d)
    c.stop(victim)
    try:
        code, res, err = epoch_cli(c, "frankfurt", "refresh", ks, "--timeout", "20")
        assert code == 0 and res["epoch"] == 1, err
    finally:
        c.stop("frankfurt")  # the commit it owes the victim stays with it
        c.start(victim)
    try:
        with c.nodes[victim].home.open_store() as store:
            assert store.latest_epoch(ks) is None and [h["epoch"] for h in store.held_shards(ks)] == [0]
        code, out, err, _ = reconstruct(c, root, ks, approvers=(victim, *others[:2]), coordinator=victim)
        assert code == 0 and out["invalid"] == [], err
        assert out["fetched_record"] is not None  # the network's record, at epoch 1
        with c.nodes[victim].home.open_store() as store:
            fetched = [e.body for e in store.audit_entries() if e.kind == "fetched" and e.body["keyset"] == ks]
        assert fetched and fetched[-1]["epoch"] == 1 and fetched[-1]["stale_epoch"] == 0
    finally:
        c.start("frankfurt")
        c.wait_directory()


def test_two_of_three_authorities_reshare_with_the_owner_stopped(net: tuple[LocalCluster, pathlib.Path]) -> None:
    c, root = net
    running = sorted(n for n in c.nodes if c.nodes[n].running and n != "frankfurt")
    auth = running[:3]
    d = import_key(c, root, "--authorities", ",".join(c.nodes[n].peer_id for n in auth), "--authority-quorum", "2",
                   "--custodians", ",".join(c.nodes[n].peer_id for n in running[:5]), t=2, n=4)
    ks = d["keyset"]
    c.stop("frankfurt")
    try:
        live = ",".join(c.nodes[n].peer_id for n in running[1:5])  # the owner is stopped: not one of them
        code, res, err = epoch_cli(c, auth[0], "reshare", ks, "--threshold", "2", "--shares", "3", "--custodians", live)
        assert code == 0, err
        assert (res["epoch"], res["threshold"], res["shares"], res["signers"]) == (1, 2, 3, 2)
        # Not an authority: a holder that is none of them cannot start a round.
        other = next(n for n in holders(c, d) if n not in auth)
        code, _, err = epoch_cli(c, other, "refresh", ks)
        assert code == 1 and "no policy authority" in err and "Traceback" not in err
        who = holders(c, d)
        code, _, err, _ = reconstruct(c, root, ks, approvers=tuple(who[:2]), coordinator=auth[0])
        assert code == 0, err
    finally:
        c.start("frankfurt")
        c.wait_directory()


def test_forged_replayed_and_short_epoch_records_are_never_applied(net: tuple[LocalCluster, pathlib.Path]) -> None:
    c, root = net
    running = [n for n in c.nodes if c.nodes[n].running]
    d = import_key(c, root, "--custodians", ",".join(c.nodes[n].peer_id for n in running[:5]))
    ks = d["keyset"]
    code, _, err = epoch_cli(c, "frankfurt", "refresh", ks)
    assert code == 0, err
    with c.nodes["frankfurt"].home.open_store() as store:
        (epoch1,) = [bytes(r["record"]) for r in store.epochs(ks)]
        base = p.Keyset.from_bytes(store.keyset(ks)["record"])
    code, _, err = epoch_cli(c, "frankfurt", "refresh", ks)
    assert code == 0, err
    rogue = Ed25519PrivateKey.from_private_bytes(os.urandom(32))
    admit_everywhere(c, rogue, country="CH")
    cs = p.CoSigned.restore(epoch1, max_size=er.MAX_EPOCH_RECORD)
    rec = er.EpochRecord.from_body(cs.body)
    bigger = dataclasses.replace(rec, epoch=3, prev=bytes(32))
    cases = {
        "replayed epoch 1": epoch1,
        "forged by a member": p.CoSigned(dataclasses.replace(rec, epoch=3).body(), ()).signed_by(rogue).to_bytes(),
        "no signature": p.encode([p.cosign.COSIGNED_TAG, 1, bigger.body(), []]),
        "oversized": epoch1 + bytes(er.MAX_EPOCH_RECORD),
    }
    epoch_id = c.scoped(wire.EPOCH.id)

    async def main() -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        async with _net.running_node_host(rogue.private_bytes_raw(), ["/ip4/127.0.0.1/tcp/0"],
                                          enable_pubsub=False) as h:
            for name in running:
                await _net.connect(h.host, c.nodes[name].addrs[0], 10)
            for case, data in cases.items():
                out[case] = {}
                for name in running:
                    try:
                        await _net.request(h.host, c.nodes[name].peer_id, epoch_id,
                                           frame("commit", data, keyset=base.signed), max_reply=65536, timeout=10)
                        out[case][name] = "APPLIED"
                    except (_net.RemoteError, _net.RequestError) as exc:
                        out[case][name] = str(exc)
        return out

    answers = trio.run(main)
    for case, per_node in answers.items():
        for name, answer in per_node.items():
            assert answer != "APPLIED" or case == "replayed epoch 1", (case, name, answer)
    for name in holders(c, d):  # every holder is at epoch 2, as the two refreshes left it
        with c.nodes[name].home.open_store() as store:
            assert [r["epoch"] for r in store.epochs(ks)] == [1, 2], name
        assert view(c, name, ks).epoch == 2


AUDIT_ONLY = ('permit (principal, action, resource) when { context.approvals >= context.quorum && '
              'context.reason == "audit" };')


def test_a_policy_version_co_signed_through_the_cli_applies_and_bad_records_never_do(
        net: tuple[LocalCluster, pathlib.Path]) -> None:
    c, root = net
    running = sorted(n for n in c.nodes if c.nodes[n].running and n != "frankfurt")
    auth = running[:3]
    d = import_key(c, root, "--authorities", ",".join(c.nodes[n].peer_id for n in auth), "--authority-quorum", "2",
                   t=2, n=4)
    ks = d["keyset"]
    bad = root / "bad.cedar"
    bad.write_text("permit (principal, action, resource) when { context.quroum > 0 };")
    r = run_cli("policy", "publish", "--home", home(c, auth[0]), str(bad), "--keyset", ks)
    assert r.returncode == 2 and "nothing was signed" in r.stderr and "Traceback" not in r.stderr, r.stderr
    good = root / "audit.cedar"
    good.write_text(AUDIT_ONLY)
    r = run_cli("policy", "publish", "--home", home(c, auth[0]), str(good), "--keyset", ks, "--json")
    assert r.returncode == 0, r.stderr
    prop = json.loads(r.stdout)
    assert (prop["state"], prop["signatures"], prop["needed"]) == ("waiting for signatures", 1, 2)
    listed = wait_for(lambda: [x for x in json.loads(run_cli("proposals", "--home", home(c, auth[1]), "--json").stdout)
                               if x.get("keyset") == ks])
    assert [x["proposal"] for x in listed] == [prop["proposal"]]
    r = run_cli("sign", "--home", home(c, auth[1]), prop["proposal"][:12], "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "in effect"

    def show(name: str) -> dict:
        r = run_cli("policy", "show", "--home", home(c, name), ks, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    for name in holders(c, d):
        shown = wait_for(lambda name=name: show(name)["version"] == 1 and show(name))
        assert shown and shown["policy"] == AUDIT_ONLY and len(shown["signers"]) == 2, name
    # An authority withdraws an open proposal of its own; not another's.
    r = run_cli("policy", "publish", "--home", home(c, auth[0]), str(good), "--keyset", ks, "--json")
    assert r.returncode == 0, r.stderr
    mine = json.loads(r.stdout)["proposal"]
    wait_for(lambda: any(x["proposal"] == mine for x in json.loads(run_cli(
        "proposals", "--home", home(c, auth[1]), "--json").stdout)))
    r = run_cli("withdraw", "--home", home(c, auth[1]), mine[:12])
    assert r.returncode != 0 and "did not sign" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("withdraw", "--home", home(c, auth[0]), mine[:12], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["withdrawn"] is True, r.stderr
    assert not [x for x in json.loads(run_cli("proposals", "--home", home(c, auth[0]), "--json").stdout)
                if x["proposal"] == mine]
    # Rollback, replay, forgery and short of the quorum: refused by every node, over the stream.
    with c.nodes[auth[0]].home.open_store() as store:
        in_force = next(bytes(r["record"]) for r in store.rules(ks, in_force=True) if r["kind"] == "policy")
    cs = p.CoSigned.restore(in_force, max_size=p.keyset_rules.MAX_RULE_RECORD)
    rogue = Ed25519PrivateKey.from_private_bytes(os.urandom(32))
    admit_everywhere(c, rogue, country="CH")
    ks_id = bytes.fromhex(ks)
    now = int(time.time())
    older = p.keyset_rules.PolicyVersion.make_body(keyset_id=ks_id, version=1, policy=p.DEFAULT_POLICY,
                                                   placement="", time=now)
    newer = p.keyset_rules.PolicyVersion.make_body(keyset_id=ks_id, version=2, policy=p.DEFAULT_POLICY,
                                                   placement="", time=now)
    revoke = p.keyset_rules.RevocationList.make_body(
        keyset_id=ks_id, version=1, entries=[p.keyset_rules.Revoked("custodian", c.nodes[auth[2]].peer_id, 0,
                                                                    "forged", now)], time=now)
    cases = {
        "replayed": in_force,
        "forged by a member": p.CoSigned.propose(rogue, newer).to_bytes(),
        "forged revocation": p.CoSigned.propose(rogue, revoke).to_bytes(),
        "signatures moved to another body": p.CoSigned(newer, cs.signatures).to_bytes(),
        "rival of version 1 by one authority": p.CoSigned.propose(
            FileKeystore.from_home(c.nodes[auth[2]].home).signer, older).to_bytes(),
        "oversized": in_force + bytes(p.keyset_rules.MAX_RULE_RECORD),
    }
    rules_id = c.scoped(wire.RULES.id)

    async def main() -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        async with _net.running_node_host(rogue.private_bytes_raw(), ["/ip4/127.0.0.1/tcp/0"],
                                          enable_pubsub=False) as h:
            targets = [n for n in c.nodes if c.nodes[n].running]
            for name in targets:
                await _net.connect(h.host, c.nodes[name].addrs[0], 10)
            for case, data in cases.items():
                out[case] = {}
                for name in targets:
                    try:
                        reply = await _net.request(h.host, c.nodes[name].peer_id, rules_id,
                                                   p.encode([wire.RULES_FRAME_TAG, 1, "propose", data]),
                                                   max_reply=65536, timeout=10)
                        out[case][name] = reply.decode(errors="replace")
                    except (_net.RemoteError, _net.RequestError) as exc:
                        out[case][name] = str(exc)
        return out

    answers = trio.run(main)
    for case in ("replayed", "rival of version 1 by one authority"):  # news to no node: answered, not kept
        assert all(a == "ok" or "not known to this node" in a for a in answers[case].values()), answers[case]
    for case in ("forged by a member", "forged revocation", "signatures moved to another body", "oversized"):
        assert all("REJECTED" in a and ("not an authority" in a or "not known to this node" in a or
                                        "signature" in a or "bytes" in a) for a in answers[case].values()), answers
        assert any("not known" not in a for a in answers[case].values()), answers  # some node judged it
    for name in [n for n in c.nodes if c.nodes[n].running]:
        with c.nodes[name].home.open_store() as store:
            rows = store.rules(ks)
        in_force_rows = [(r["kind"], r["version"], bytes(r["record"])) for r in rows if r["in_force"]]
        assert in_force_rows in ([], [("policy", 1, in_force)]), (name, in_force_rows)
        # The one authority's rival stays a proposal where it was kept: never in force.
        assert all(r["kind"] == "policy" and r["signatures"] == 1 for r in rows if not r["in_force"]), name
    for name in holders(c, d):
        assert show(name)["version"] == 1
    voters = tuple(holders(c, d))[:2]  # the quorum is t = 2
    code, _, err, _ = reconstruct(c, root, ks, approvers=voters, timeout=10)
    assert code != 0 and "policy denies" in err, err
    code, _, err, _ = reconstruct(c, root, ks, approvers=voters, reason="audit")
    assert code == 0, err


def test_a_schedule_set_by_a_co_signed_policy_version_through_the_cli(net: tuple[LocalCluster, pathlib.Path]) -> None:
    c, root = net
    running = sorted(n for n in c.nodes if c.nodes[n].running and n != "frankfurt")
    auth = running[:3]
    d = import_key(c, root, "--authorities", ",".join(c.nodes[n].peer_id for n in auth), "--authority-quorum", "2",
                   "--refresh-every", "30d", t=2, n=3)
    ks = d["keyset"]
    r = run_cli("policy", "publish", "--home", home(c, auth[0]), "--keyset", ks)
    assert r.returncode == 2 and "what to change" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("policy", "publish", "--home", home(c, auth[0]), "--keyset", ks, "--rewrap-every", "5x")
    assert r.returncode == 2 and "expected a duration" in r.stderr, r.stderr
    r = run_cli("policy", "publish", "--home", home(c, auth[0]), "--keyset", ks, "--rewrap-every", "30s")
    assert r.returncode == 2 and "nothing was signed" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli("policy", "publish", "--home", home(c, auth[0]), "--keyset", ks, "--rewrap-every", "12h", "--json")
    assert r.returncode == 0, r.stderr
    prop = json.loads(r.stdout)
    assert prop["state"] == "waiting for signatures"
    listed = wait_for(lambda: prop["proposal"][:12] in (out := run_cli("proposals", "--home", home(c, auth[1])).stdout)
                      and out)
    assert listed and "refresh every 30d, rewrap every 12h" in listed, listed  # what the co-signer signs
    r = run_cli("sign", "--home", home(c, auth[1]), prop["proposal"][:12], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "in effect", r.stderr
    for name in holders(c, d):
        shown = wait_for(lambda name=name: (out := run_cli("policy", "show", "--home", home(c, name), ks).stdout)
                         and "version    1" in out and out)
        assert shown and "schedule   refresh every 30d, rewrap every 12h" in shown, (name, shown)
