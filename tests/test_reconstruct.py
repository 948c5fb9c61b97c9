"""Reconstruction over the network with real node processes: quorum, policy,
cheater identification, and custodians that refuse to release without quorum."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from shardnet import protocol as p
from shardnet.node import _net
from shardnet.protocol import wire
from shardnet.protocol._requests import Request, Vote
from shardnet.simulations._local import CLI, FIVE_CONTINENTS, LocalCluster, run_cli

pytestmark = pytest.mark.slow
LIAR = [sys.executable, str(pathlib.Path(__file__).with_name("liar_node.py"))]
RECEIPT_LIAR = [sys.executable, str(pathlib.Path(__file__).with_name("receipt_liar_node.py"))]
V1_NODE = [sys.executable, str(pathlib.Path(__file__).with_name("v1_release_node.py"))]
FORGER = [sys.executable, str(pathlib.Path(__file__).with_name("forger_node.py"))]
KEY = os.urandom(48)
DENY_POLICY = '''
permit (principal, action == Action::"reconstruct", resource)
when { context.approvals >= context.quorum };
forbid (principal, action, resource) when { principal.country == "DE" };
'''


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, pathlib.Path]]:
    root = tmp_path_factory.mktemp("recon")
    with LocalCluster(root, FIVE_CONTINENTS) as c:
        c.init_all()
        c.start_all()
        c.wait_directory(timeout=30)
        yield c, root


def home(c: LocalCluster, name: str) -> str:
    return str(c.nodes[name].home.path)


def ids(c: LocalCluster, *names: str) -> str:
    return ",".join(c.nodes[n].peer_id for n in names)


def import_keyset(c: LocalCluster, root: pathlib.Path, *extra: str) -> str:
    (root / "master.key").write_bytes(KEY)
    r = run_cli("key", "import", "--home", home(c, "frankfurt"), "--in", str(root / "master.key"), "-t", "3",
                "-n", "5", "--approvers", ids(c, "frankfurt", "tokyo", "new-york"), "--quorum", "2", "--json", *extra)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert [s["state"] for s in d["shards"]] == ["delivered"] * 5
    return str(d["keyset"])


@pytest.fixture(scope="module")
def keyset(net: tuple[LocalCluster, pathlib.Path]) -> str:
    return import_keyset(*net)


def reconstruct(c: LocalCluster, root: pathlib.Path, keyset: str, *, mode: str = "unwrap",
                approvers: tuple[str, ...] = ("tokyo", "frankfurt"), timeout: int = 30,
                as_json: bool = True, coordinator: str = "frankfurt", reason: str = "test") -> tuple[int, dict, str, float]:
    """Run `key reconstruct` as a user would; ``res`` is its JSON, or ``{"text": stdout}``."""
    out = root / f"out-{time.monotonic_ns()}"
    t0 = time.monotonic()
    proc = subprocess.Popen([*CLI, "key", "reconstruct", "--home", home(c, coordinator), keyset, "--out", str(out),
                             "--mode", mode, "--reason", reason, "--timeout", str(timeout),
                             *(["--json"] if as_json else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        rid = wait_request(c, approvers[0] if approvers else "tokyo", keyset, since=t0)
        for a in approvers:
            assert wait_request(c, a, keyset, since=t0) == rid  # gossip reached this approver too
            c.control(a, "approve", {"request": rid})
        stdout, stderr = proc.communicate(timeout=timeout + 30)
    finally:
        proc.kill()
        proc.communicate()  # reaped, its pipes closed, whatever happened above
    took = time.monotonic() - t0
    res = (json.loads(stdout) if stdout.strip() else {}) if as_json else {"text": stdout}
    if proc.returncode == 0:
        assert out.read_bytes() == KEY
        assert oct(out.stat().st_mode & 0o777) == "0o600"
    return proc.returncode, res, stderr, took


def wait_request(c: LocalCluster, name: str, keyset: str, since: float, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    seen = {r["request"] for r in c.control(name, "requests") if r["outcome"]}
    while time.monotonic() < deadline:
        for r in c.control(name, "requests"):
            if r["keyset"] == keyset and r["state"] == "pending" and r["request"] not in seen and r["my_vote"] is None:
                return str(r["request"])
        time.sleep(0.05)
    raise AssertionError("the request never reached the approver")


def admit_everywhere(c: LocalCluster, key: Any, *, country: str, timeout: float = 30) -> None:
    """Admit a test's own identity (a rogue member) and wait until every node has applied it."""
    c.admit_key(key, name="rogue", country=country)
    peer = p.peer_id_of(key.public_key().public_bytes_raw())
    deadline = time.monotonic() + timeout
    for name in c.nodes:
        while not any(m["peer_id"] == peer and m["state"] == "admitted" for m in c.control(name, "membership")):
            assert time.monotonic() < deadline, f"{name} did not apply the admission of {peer}"
            time.sleep(0.1)


@contextlib.contextmanager
def running_as(c: LocalCluster, name: str, command: list[str]) -> Iterator[None]:
    """Node ``name`` runs ``command`` (a test-only entry point) meanwhile, then itself again."""
    c.stop(name)
    c.start(name, command=command)
    try:
        c.wait_directory()
        yield
    finally:
        c.stop(name)
        c.start(name)
        c.wait_directory()


def named_last(c: LocalCluster, name: str = "frankfurt") -> dict[str, Any]:
    """The last cheater entry of ``name``'s audit log."""
    with c.nodes[name].home.open_store() as store:
        return [e.body for e in store.audit_entries() if e.kind == "cheater"][-1]


def releases(c: LocalCluster, name: str) -> list[dict]:
    with c.nodes[name].home.open_store() as store:
        return [e.body for e in store.audit_entries() if e.kind == "release"]


def test_two_approvals_reconstruct_exact_bytes(net: tuple[LocalCluster, pathlib.Path], keyset: str) -> None:
    """Over real libp2p and real processes; both modes, holders cut off and no quorum are
    on the grid (test_grid_scenarios.py)."""
    c, root = net
    mode = "unwrap"
    code, res, err, _ = reconstruct(c, root, keyset, mode=mode)
    assert code == 0, err
    assert res["mode"] == mode and res["bytes"] == len(KEY) and res["invalid"] == []
    assert set(res["timings_ms"]) == {"quorum", "release", "verify", "total"}
    entries = [e for n in c.nodes for e in releases(c, n) if e["request"] == res["request"]]
    assert len(entries) >= 3 and {e["mode"] for e in entries} == {mode}
    # Request, votes, releases and the outcome are in the signed logs, and audit verify shows them.
    for name, kinds in (("frankfurt", {"request", "vote", "release", "reconstruct"}), ("tokyo", {"vote", "release"})):
        r = run_cli("audit", "verify", "--home", home(c, name), "--json")
        assert r.returncode == 0, r.stderr
        assert kinds <= set(json.loads(r.stdout)["kinds"])


def test_shares_mode_marks_the_keyset_exposed_in_what_the_user_reads(net: tuple[LocalCluster, pathlib.Path]) -> None:
    c, root = net
    ks = import_keyset(c, root)
    code, res, err, _ = reconstruct(c, root, ks, mode="shares", as_json=False)
    assert code == 0, err
    assert "treat the key as exposed and rotate it" in res["text"]
    r = run_cli("key", "show", "--home", home(c, "frankfurt"), ks)
    assert "(owner, exposed)" in r.stdout and "treat the key as exposed" in r.stdout


def test_no_quorum_fails_with_one_line_and_exit_1(net: tuple[LocalCluster, pathlib.Path], keyset: str) -> None:
    c, root = net
    before = {n: len(releases(c, n)) for n in c.nodes}
    code, res, err, _ = reconstruct(c, root, keyset, approvers=("tokyo",), timeout=3)
    assert code == 1 and err.strip().count("\n") == 0
    assert "no quorum within 3 s: 1 of 2 approvals" in err
    assert {n: len(releases(c, n)) for n in c.nodes} == before


def test_a_lying_custodian_is_named_and_the_key_still_comes_back(
    net: tuple[LocalCluster, pathlib.Path], keyset: str
) -> None:
    """A liar process over real libp2p (unwrap; both modes are on the grid)."""
    c, root = net
    with running_as(c, "sydney", LIAR):
        code, res, err, _ = reconstruct(c, root, keyset, mode="unwrap")
        assert code == 0, err
        sydney = c.nodes["sydney"].peer_id
        assert [b["custodian"] for b in res["invalid"]] == [sydney]
        assert "custodian sydney" in err and "invalid" in err
        last = named_last(c)
        assert (last["custodian"], last["request"]) == (sydney, res["request"])


def test_a_custodian_that_signed_for_a_shard_it_dropped_is_named_by_the_owner(
    net: tuple[LocalCluster, pathlib.Path]
) -> None:
    """A lying receipt over real libp2p: sydney signs "stored" and keeps nothing. Asked for
    its release, it answers (signed) that it holds no share; beside its receipt, which the
    owner keeps, that names it."""
    c, root = net
    with running_as(c, "sydney", RECEIPT_LIAR):
        ks = import_keyset(c, root)
        with c.nodes["sydney"].home.open_store() as store:
            assert store.keyset(ks) is not None and store.held_shards(ks) == []
        code, res, err, _ = reconstruct(c, root, ks)
        assert code == 0, err
        sydney = c.nodes["sydney"].peer_id
        [bad] = res["invalid"]
        assert bad["custodian"] == sydney, res["invalid"]
        assert "signed a receipt for index" in bad["detail"] and "holds none at epoch 0" in bad["detail"], bad
        last = named_last(c)
        assert (last["custodian"], last["request"]) == (sydney, res["request"])


def test_a_custodian_from_before_no_shard_answers_is_asked_on_release_1(
    net: tuple[LocalCluster, pathlib.Path], keyset: str
) -> None:
    """A node of an older release speaks /shardnet/release/1 alone: the requester falls back
    to it, and the old node's release counts like any other."""
    c, root = net
    with running_as(c, "sydney", V1_NODE):
        code, res, err, _ = reconstruct(c, root, keyset)
        assert code == 0, err
        assert res["invalid"] == []
        assert [r["request"] for r in releases(c, "sydney")].count(res["request"]) == 1


def test_custodians_refuse_every_bad_release_request(net: tuple[LocalCluster, pathlib.Path]) -> None:
    """A rogue requester asks every custodian directly, with each kind of bad evidence."""
    c, root = net
    ks_normal = import_keyset(c, root)
    policy_file = root / "deny.cedar"
    policy_file.write_text(DENY_POLICY)
    ks_denied = import_keyset(c, root, "--policy", str(policy_file))
    keys = {n: c.nodes[n].home.identity() for n in c.nodes}
    rogue_seed = os.urandom(32)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    rogue = Ed25519PrivateKey.from_private_bytes(rogue_seed)
    now = int(time.time())

    def request(ks: str, *, created: int = now, ttl: int = 300) -> Request:
        return Request.make(rogue, keyset_id=bytes.fromhex(ks), mode="shares", reason="", ephemeral=os.urandom(32),
                            nonce=os.urandom(16), created=created, not_after=created + ttl)

    def votes(req: Request, *names: str) -> list[bytes]:
        return [Vote.make(keys[n], req, "approve", now).signed for n in names]

    r_ok = request(ks_normal)
    other = request(ks_normal)
    r_old = request(ks_normal, created=now - 1000, ttl=60)
    r_denied = request(ks_denied)
    cases = {
        "no votes": (r_ok, []),
        "one approval": (r_ok, votes(r_ok, "tokyo")),
        "non-approvers": (r_ok, votes(r_ok, "tokyo", "sydney", "sao-paulo")),
        "replayed votes": (r_ok, votes(other, "tokyo", "frankfurt")),
        "expired request": (r_old, votes(r_old, "tokyo", "frankfurt")),
        "denied by policy": (r_denied, votes(r_denied, "tokyo", "frankfurt")),
    }
    before = {n: len(releases(c, n)) for n in c.nodes}
    # The rogue is an admitted member (vouched: Germany): what it asks is judged on the
    # evidence, not refused at the door. An outsider's ask is refused at the door.
    admit_everywhere(c, rogue, country="DE")
    outsider_seed = os.urandom(32)
    release_id = c.scoped(wire.RELEASE.id)

    unknown = request(os.urandom(16).hex())
    no_shard: dict[int, bytes | str] = {}

    async def main() -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        async with _net.running_node_host(rogue_seed, ["/ip4/127.0.0.1/tcp/0"], enable_pubsub=False) as h:
            for node in c.nodes.values():
                await _net.connect(h.host, node.addrs[0], 10)
            for case, (req, vs) in cases.items():
                out[case] = {}
                for name, node in c.nodes.items():
                    try:
                        await _net.request(h.host, node.peer_id, release_id, p.encode([wire.RELEASE_ASK_TAG, 1, req.signed, vs]),
                                           max_reply=65536, timeout=10)
                        out[case][name] = "RELEASED"
                    except _net.RemoteError as exc:
                        out[case][name] = exc.reason
            for version, proto in ((1, wire.RELEASE_V1), (2, wire.RELEASE)):  # 2: a signed no-shard answer
                try:
                    no_shard[version] = await _net.request(
                        h.host, c.nodes["tokyo"].peer_id, c.scoped(proto.id),
                        p.encode([wire.RELEASE_ASK_TAG, 1, unknown.signed, []]), max_reply=65536, timeout=10)
                except _net.RemoteError as exc:
                    no_shard[version] = exc.reason
        async with _net.running_node_host(outsider_seed, ["/ip4/127.0.0.1/tcp/0"], enable_pubsub=False) as h:
            out["outsider"] = {}
            node = c.nodes["tokyo"]
            await _net.connect(h.host, node.addrs[0], 10)
            try:
                await _net.request(h.host, node.peer_id, release_id,
                                   p.encode([wire.RELEASE_ASK_TAG, 1, r_ok.signed, votes(r_ok, "tokyo", "frankfurt")]),
                                   max_reply=65536, timeout=10)
                out["outsider"]["tokyo"] = "RELEASED"
            except _net.RemoteError as exc:
                out["outsider"]["tokyo"] = str(exc)
            except _net.RequestError as exc:  # the gate may cut the outsider off before the refusal is read
                out["outsider"]["tokyo"] = f"cut off: {exc}"
        return out

    answers = trio.run(main)
    expect = {
        "no votes": "no quorum: 0 of 2", "one approval": "no quorum: 1 of 2", "non-approvers": "no quorum: 1 of 2",
        "replayed votes": "no quorum: 0 of 2", "expired request": "the request has expired",
        "denied by policy": "policy denies", "outsider": "not admitted to network",
    }
    for case, per_node in answers.items():
        for name, answer in per_node.items():
            if case == "outsider" and answer.startswith("cut off: "):
                continue  # refused at the door either way: its stream was reset, nothing came back
            assert expect[case] in answer, (case, name, answer)
    assert {n: len(releases(c, n)) for n in c.nodes} == before
    # A keyset the custodian does not know: the refusal to an older asker, a signed answer to a newer.
    assert isinstance(no_shard[1], str) and "does not know that keyset" in no_shard[1]
    assert isinstance(no_shard[2], bytes)
    [answer] = p.decode(no_shard[2])
    denial = p.NoShard.from_bytes(answer, custodian=c.nodes["tokyo"].peer_id)
    assert (denial.request_id, denial.keyset_id, denial.epoch) == (unknown.id, unknown.keyset_id, None)
    with c.nodes["tokyo"].home.open_store() as store:
        refused = [e.body["reason"] for e in store.audit_entries() if e.kind == "release-refused"]
    assert any("policy denies" in r for r in refused) and any("no quorum" in r for r in refused)


def test_an_approver_that_holds_no_shard_can_approve(net: tuple[LocalCluster, pathlib.Path]) -> None:
    from shardnet.simulations._local import NodeSpec

    c, root = net
    c.add(NodeSpec("nairobi", "KE", "Nairobi", "Rift Custody"))
    try:
        c.start("nairobi")
        c.wait_directory(expect=6)
        (root / "master.key").write_bytes(KEY)
        r = run_cli("key", "import", "--home", home(c, "frankfurt"), "--in", str(root / "master.key"), "-t", "3",
                    "-n", "5", "--placement", "distinct:country,exclude:country=KE", "--approvers",
                    ids(c, "nairobi", "tokyo"), "--quorum", "2", "--json")
        assert r.returncode == 0, r.stderr
        ks = json.loads(r.stdout)["keyset"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            roles = {k["keyset"]: k["role"] for k in c.control("nairobi", "key-list")}
            if roles.get(ks) == "approver":
                break
            time.sleep(0.1)
        assert roles.get(ks) == "approver"
        code, res, err, _ = reconstruct(c, root, ks, approvers=("nairobi", "tokyo"))
        assert code == 0, err
    finally:
        c.remove("nairobi")


def test_a_coordinator_that_never_saw_the_keyset_fetches_it_and_refuses_forgeries(
    net: tuple[LocalCluster, pathlib.Path], keyset: str
) -> None:
    """A sixth node, admitted after the import, neither holder nor approver, gets the key back
    by its full id. A holder that serves forged records (another owner key, a broken
    signature, another keyset's record: one per fetch) is named each time, and never trusted."""
    from shardnet.simulations._local import NodeSpec

    c, root = net
    c.add(NodeSpec("nairobi", "KE", "Nairobi", "Rift Custody"))
    c.stop("sydney")
    c.start("sydney", command=FORGER)
    sydney = c.nodes["sydney"].peer_id
    try:
        c.start("nairobi")
        c.wait_directory(expect=6)
        r = run_cli("key", "reconstruct", "--home", home(c, "nairobi"), keyset[:8], "--out", str(root / "x"))
        assert r.returncode == 2 and "full 32-hex-digit id" in r.stderr and "Traceback" not in r.stderr, r.stderr
        # The forger serves the next forgery at each fetch it answers (a coordinator may ask it
        # twice in one round): reconstruct until each kind was seen and refused.
        forgeries = {"not bound": 0, "signature does not verify": 0, "is for keyset": 0}
        runs = 0
        while min(forgeries.values()) == 0 and runs < 8:
            runs += 1
            code, res, err, _ = reconstruct(c, root, keyset, coordinator="nairobi")
            assert code == 0, err
            refused = res["fetched_record"]["refused"]
            assert {r["peer"] for r in refused} <= {sydney}, refused  # honest answers are never refused
            for r in refused:
                kind = next(k for k in forgeries if k in r["why"])
                forgeries[kind] += 1
            assert res["fetched_record"]["from"] != sydney
            assert (f"peer {sydney} served a keyset record that failed its checks" in err) == bool(refused)
        assert min(forgeries.values()) >= 1, (runs, forgeries)
        with c.nodes["nairobi"].home.open_store() as store:
            kinds = [e.kind for e in store.audit_entries()]
            assert store.keyset(keyset) is None  # it coordinated; it holds nothing
        assert kinds.count("forged-record") == sum(forgeries.values()) and kinds.count("fetched") == runs
    finally:
        c.remove("nairobi")
        c.stop("sydney")
        c.start("sydney")
        c.wait_directory()


def test_a_shard_for_a_departed_custodian_is_re_placed_and_the_key_comes_back(
    net: tuple[LocalCluster, pathlib.Path]
) -> None:
    """Sydney leaves. A 3-of-5 import pinned on six custodians, sydney among them (its
    descriptor is still within its TTL), that places a shard on it keeps that shard pending;
    past --deliver-within it goes to the one pinned custodian left over, `key show` says so,
    and the key comes back. Sydney, back again, never gets the shard."""
    from shardnet.simulations._local import NodeSpec

    c, root = net
    c.add(NodeSpec("nairobi", "KE", "Nairobi", "Rift Custody"))
    try:
        c.start("nairobi")
        c.wait_directory(expect=6)
        c.stop("sydney")
        (root / "master.key").write_bytes(KEY)
        pinned = ids(c, "frankfurt", "new-york", "tokyo", "sao-paulo", "sydney", "nairobi")
        sydney = c.nodes["sydney"].peer_id
        for _attempt in range(6):  # 5 of the 6 are chosen: until sydney is one of them
            r = run_cli("key", "import", "--home", home(c, "frankfurt"), "--in", str(root / "master.key"), "-t",
                        "3", "-n", "5", "--custodians", pinned, "--deliver-within", "3s", "--wait", "1", "--json")
            assert r.returncode == 0, r.stderr
            d = json.loads(r.stdout)
            spare = set(pinned.split(",")) - {s["custodian"] for s in d["shards"]}
            if sydney not in spare:
                break
        assert sydney not in spare, "no import placed a shard on sydney"
        ks, (other,) = d["keyset"], spare
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            shards = {s["custodian"]: s for s in c.control("frankfurt", "key-show", {"keyset": ks})["shards"]}
            if shards.get(other, {}).get("state") == "delivered":
                break
            time.sleep(0.2)
        assert shards[sydney]["state"] == "moved" and shards[other]["state"] == "delivered", shards
        assert shards[other]["index"] == shards[sydney]["index"]
        text = run_cli("key", "show", "--home", home(c, "frankfurt"), ks).stdout
        assert f"moved (moved to {other})" in text, text
        # By default the approvers are the holders at import: three of those still here approve.
        names = {n.peer_id: name for name, n in c.nodes.items()}
        voters = sorted(names[s["custodian"]] for s in d["shards"] if s["custodian"] != sydney)[:3]
        code, _, err, _ = reconstruct(c, root, ks, approvers=tuple(voters))
        assert code == 0, err
        c.start("sydney")
        time.sleep(2)
        with c.nodes["sydney"].home.open_store() as store:
            assert store.held_shards(ks) == []
    finally:
        c.remove("nairobi")
        if not c.nodes["sydney"].running:
            c.start("sydney")
        c.wait_directory()


def test_contradictory_votes_void_the_approver_on_every_custodian(
    net: tuple[LocalCluster, pathlib.Path], keyset: str
) -> None:
    """The reported bypass, end to end. tokyo runs `shardnet deny` and the deny is
    stored on every node; a rogue requester holding tokyo's key then asks every
    custodian with evidence that puts an approve signed by tokyo first, together
    with new-york's approve. No custodian releases, and each names tokyo."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    c, root = net
    rogue_seed = os.urandom(32)
    rogue = Ed25519PrivateKey.from_private_bytes(rogue_seed)
    now = int(time.time())
    req = Request.make(rogue, keyset_id=bytes.fromhex(keyset), mode="unwrap", reason="", ephemeral=os.urandom(32),
                       nonce=os.urandom(16), created=now, not_after=now + 300)
    tokyo_key, ny_key = c.nodes["tokyo"].home.identity(), c.nodes["new-york"].home.identity()
    evidence = [Vote.make(tokyo_key, req, "approve", now).signed, Vote.make(ny_key, req, "approve", now).signed]
    before = {n: len(releases(c, n)) for n in c.nodes}
    admit_everywhere(c, rogue, country="FR")

    async def ask_all(votes: list[bytes]) -> dict[str, str]:
        out: dict[str, str] = {}
        async with _net.running_node_host(rogue_seed, ["/ip4/127.0.0.1/tcp/0"], enable_pubsub=False) as h:
            for node in c.nodes.values():
                await _net.connect(h.host, node.addrs[0], 10)
            for name, node in c.nodes.items():
                try:
                    await _net.request(h.host, node.peer_id, c.scoped(wire.RELEASE.id),
                                       p.encode([wire.RELEASE_ASK_TAG, 1, req.signed, votes]), max_reply=65536, timeout=10)
                    out[name] = "RELEASED"
                except _net.RemoteError as exc:
                    out[name] = exc.reason
        return out

    # Every custodian learns the request (and refuses: no votes yet).
    assert all("no quorum: 0 of 2" in a for a in trio.run(ask_all, []).values())
    r = run_cli("deny", "--home", home(c, "tokyo"), req.id)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stored = {}
        for name, node in c.nodes.items():
            with node.home.open_store() as store:
                stored[name] = [Vote.from_bytes(v).decision for v in store.votes(req.id)]
        if all(v == ["deny"] for v in stored.values()):
            break
        time.sleep(0.1)
    assert all(v == ["deny"] for v in stored.values()), stored
    answers = trio.run(ask_all, evidence)
    for name, answer in answers.items():
        assert "no quorum: 1 of 2 approvals; 1 void for contradictory votes" in answer, (name, answer)
    assert {n: len(releases(c, n)) for n in c.nodes} == before
    tokyo = c.nodes["tokyo"].peer_id
    for name, node in c.nodes.items():
        with node.home.open_store() as store:
            named = [e.body for e in store.audit_entries() if e.kind == "equivocation"]
            assert [e["approver"] for e in named if e["request"] == req.id] == [tokyo], name
            assert len(store.equivocations(req.id)) == 1
