"""Five custodian nodes as separate OS processes on loopback, driven through the CLI."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from shardnet.node._control import ControlFailed, NotRunning, call
from shardnet.simulations._local import CLI, FIVE_CONTINENTS, LocalCluster, NodeSpec, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    root = tmp_path_factory.mktemp("cluster")
    with LocalCluster(root, FIVE_CONTINENTS) as c:
        c.init_all()
        c.start_all()
        c.wait_directory(timeout=30)
        yield c


def key_file(tmp_path: pathlib.Path, data: bytes = b"") -> pathlib.Path:
    f = tmp_path / "master.key"
    f.write_bytes(data or os.urandom(32))
    return f


def import_key(c: LocalCluster, tmp_path: pathlib.Path, *extra: str, node: str = "frankfurt",
               t: int = 3, n: int = 5) -> tuple[int, dict, str]:
    r = run_cli("key", "import", "--home", str(c.nodes[node].home.path), "--in", str(key_file(tmp_path)),
                "-t", str(t), "-n", str(n), "--json", *extra)
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else {}), r.stderr


def held_by(c: LocalCluster, name: str, keyset: str) -> list[int]:
    for k in c.control(name, "key-list"):
        if k["keyset"] == keyset:
            return list(k["held"])
    return []


def test_import_delivers_five_receipts_distinct_countries(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    code, d, err = import_key(cluster, tmp_path, "--placement", "distinct:country")
    assert code == 0, err
    assert [s["state"] for s in d["shards"]] == ["delivered"] * 5
    assert sorted(s["index"] for s in d["shards"]) == [1, 2, 3, 4, 5]
    assert len({s["country"] for s in d["shards"]}) == 5
    names = {n.peer_id: name for name, n in cluster.nodes.items()}
    for s in d["shards"]:
        # Every custodian holds exactly its shard, and has the signed keyset record.
        assert held_by(cluster, names[s["custodian"]], d["keyset"]) == [s["index"]]
    for name in cluster.nodes:
        r = run_cli("audit", "verify", "--home", str(cluster.nodes[name].home.path), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["entries"] >= 1


def test_restarted_custodian_still_holds_its_shard(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    code, d, err = import_key(cluster, tmp_path)
    assert code == 0, err
    before = held_by(cluster, "tokyo", d["keyset"])
    assert len(before) == 1
    took = cluster.stop("tokyo")
    assert took < 5.0
    # Stopped: the database answers directly.
    r = run_cli("key", "list", "--home", str(cluster.nodes["tokyo"].home.path), "--json")
    assert [k["held"] for k in json.loads(r.stdout) if k["keyset"] == d["keyset"]] == [before]
    cluster.start("tokyo")
    assert held_by(cluster, "tokyo", d["keyset"]) == before
    cluster.wait_directory()


def test_offline_custodian_gets_its_shard_later_even_after_owner_restart(
    cluster: LocalCluster, tmp_path: pathlib.Path
) -> None:
    cluster.stop("sydney")
    # Sydney stays in the directory: placement still picks it, delivery waits.
    code, d, err = import_key(cluster, tmp_path, "--wait", "3")
    assert code == 0, err
    states = {s["name"]: s["state"] for s in d["shards"]}
    assert states["sydney"] == "pending"
    assert sorted(states.values()).count("delivered") == 4
    # Crash the owner (no clean shutdown), then bring the custodian back, then the owner.
    cluster.stop("frankfurt", sig=signal.SIGKILL)
    cluster.start("sydney")
    cluster.start("frankfurt")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        shown = cluster.control("frankfurt", "key-show", {"keyset": d["keyset"]})
        if all(s["state"] == "delivered" for s in shown["shards"]):
            break
        time.sleep(0.2)
    assert [s["state"] for s in shown["shards"]] == ["delivered"] * 5
    assert len(held_by(cluster, "sydney", d["keyset"])) == 1
    cluster.wait_directory()


def test_an_import_cut_off_by_a_crash_is_finished_by_its_token_never_made_twice(
    cluster: LocalCluster, tmp_path: pathlib.Path
) -> None:
    key = key_file(tmp_path)
    home = str(cluster.nodes["frankfurt"].home.path)
    before = {k["keyset"] for k in cluster.control("frankfurt", "key-list")}
    cluster.stop("sydney")  # its delivery waits: the import is still waiting when the owner dies
    proc = subprocess.Popen([*CLI, "key", "import", "--home", home, "--in", str(key), "-t", "3", "-n", "5",
                             "--wait", "60", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while {k["keyset"] for k in cluster.control("frankfurt", "key-list")} == before:
            assert time.monotonic() < deadline and proc.poll() is None, "the import never committed"
            time.sleep(0.05)
        cluster.stop("frankfurt", sig=signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1 and err.count("\n") == 1, err  # one line, which says how to finish it
    assert "the import may have been made: run the same command with --token " in err, err
    token = err.split("--token ", 1)[1].split(":")[0]
    cluster.start("sydney")
    cluster.start("frankfurt")
    r = run_cli("key", "import", "--home", home, "--in", str(key), "-t", "3", "-n", "5", "--json", "--token", token)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["token"] == token and "already imported with token" in d["note"]
    assert [s["state"] for s in d["shards"]] == ["delivered"] * 5
    after = {k["keyset"] for k in cluster.control("frankfurt", "key-list")}
    assert after - before == {d["keyset"]}  # one keyset, not two
    r = run_cli("key", "import", "--home", home, "--in", str(key), "-t", "2", "-n", "5", "--token", token)
    assert r.returncode == 2 and f"made keyset {d['keyset']} with other options" in r.stderr, r.stderr
    (tmp_path / "longer.key").write_bytes(key.read_bytes() + b"x")
    r = run_cli("key", "import", "--home", home, "--in", str(tmp_path / "longer.key"), "-t", "3", "-n", "5",
                "--token", token)
    assert r.returncode == 2 and "a key of another length" in r.stderr, r.stderr
    r = run_cli("key", "import", "--home", home, "--in", str(key), "-t", "3", "-n", "5", "--token", token)
    assert r.returncode == 0 and "already imported with token" in r.stdout, r.stdout  # said in the text too
    cluster.wait_directory()


def test_a_custodian_refuses_an_owner_past_the_quota_its_config_sets(
    cluster: LocalCluster, tmp_path: pathlib.Path
) -> None:
    sydney = cluster.nodes["sydney"]
    cluster.stop("sydney")
    with sydney.home.open_store() as store:
        held, _ = store.owner_holdings(cluster.nodes["frankfurt"].peer_id)
    cfg_file = sydney.home.config_file
    original = cfg_file.read_text()
    cfg_file.write_text(json.dumps({**json.loads(original), "limits": {"keysets_per_owner": held + 1}}))
    try:
        cluster.start("sydney")
        cluster.wait_directory()
        custodians = ",".join(cluster.nodes[n].peer_id for n in ("sydney", "tokyo", "new-york"))
        code, first, err = import_key(cluster, tmp_path, "--custodians", custodians, t=2, n=3)
        assert code == 0, err
        code, second, err = import_key(cluster, tmp_path, "--custodians", custodians, t=2, n=3)
        assert code == 1, err
        [mine] = [s for s in second["shards"] if s["name"] == "sydney"]
        assert mine["state"] == "refused" and "limits.keysets_per_owner" in mine["last_error"], mine
        assert held_by(cluster, "sydney", second["keyset"]) == []
        cfg_file.write_text(json.dumps({**json.loads(original), "limits": {"keysets_per_owner": 0}}))
        cluster.stop("sydney")
        r = run_cli("status", "--home", str(sydney.home.path))
        assert r.returncode == 2 and "keysets_per_owner must be a whole number of at least 1" in r.stderr, r.stderr
    finally:
        cfg_file.write_text(original)
        if not sydney.running:
            cluster.start("sydney")
        cluster.wait_directory()


def test_infeasible_placement_fails_before_sending(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    before = cluster.control("frankfurt", "key-list")
    r = run_cli("key", "import", "--home", str(cluster.nodes["frankfurt"].home.path),
                "--in", str(key_file(tmp_path)), "-t", "3", "-n", "5", "--placement", "min-distinct:continent=6")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "shardnet: error: min-distinct:continent=6 cannot be met: 5 custodians from 5 eligible "
        "candidates spanning 5 continent values"
    )
    r = run_cli("key", "import", "--home", str(cluster.nodes["frankfurt"].home.path),
                "--in", str(key_file(tmp_path)), "-t", "3", "-n", "6")
    assert r.returncode == 2 and "need 6 custodians" in r.stderr and "only 5" in r.stderr
    assert cluster.control("frankfurt", "key-list") == before


@pytest.mark.parametrize("argv, expect", [
    (["key", "import", "--home", "H", "--in", "K", "-t", "3"], "required"),
    (["key", "import", "--home", "H", "--in", "K", "-t", "3", "-n", "5", "--expires", "soon"], "duration"),
    (["key", "import", "--home", "H", "--in", "K", "-t", "3", "-n", "5", "--placement", "nearby:moon"],
     "unknown attribute"),
    (["key", "show", "--home", "H", "ffff"], "no keyset"),
    (["status", "--home", "/nonexistent/home"], "not a shardnet home"),
    (["init", "--home", "H", "--name", "x", "--country", "DE"], "already holds a shardnet node"),
    (["init", "--home", "NEW", "--name", "x", "--country", "XX"], "unknown country code"),
])
def test_bad_usage_exits_2_with_one_line(cluster: LocalCluster, tmp_path: pathlib.Path, argv: list[str],
                                         expect: str) -> None:
    home = str(cluster.nodes["frankfurt"].home.path)
    argv = [a.replace("NEW", str(tmp_path / "new")).replace("H", home) if a in ("H", "NEW") else a for a in argv]
    argv = [str(key_file(tmp_path)) if a == "K" else a for a in argv]
    r = run_cli(*argv)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and expect in r.stderr.lower(), r.stderr
    assert "Traceback" not in r.stderr


def test_status_and_custodians_json(cluster: LocalCluster) -> None:
    r = run_cli("status", "--home", str(cluster.nodes["sao-paulo"].home.path), "--json")
    st = json.loads(r.stdout)
    assert st["running"] and st["custodians"] == 5 and st["peer_id"] == cluster.nodes["sao-paulo"].peer_id
    assert all(a.startswith("/ip4/127.0.0.1/tcp/") for a in st["addrs"])
    r = run_cli("custodians", "--home", str(cluster.nodes["sao-paulo"].home.path), "--json")
    rows = json.loads(r.stdout)
    assert {c["country"] for c in rows} == {"DE", "US", "JP", "BR", "AU"}
    assert {c["continent"] for c in rows} == {"EU", "NA", "AS", "SA", "OC"}


def test_second_node_in_same_home_is_refused(cluster: LocalCluster) -> None:
    r = run_cli("run", "--home", str(cluster.nodes["tokyo"].home.path), "--quiet", timeout=60)
    assert r.returncode == 1
    assert "already running" in r.stderr


def test_run_refuses_an_address_peers_cannot_dial(cluster: LocalCluster) -> None:
    home = str(cluster.nodes["tokyo"].home.path)
    for bad, why in (("/ip4/10.0.0.7/tcp/0", "not 0"), ("/dns4/example/tcp/4001", "/ip4|ip6/<addr>/tcp/<port>"),
                     ("10.0.0.7:4001", "/ip4|ip6/<addr>/tcp/<port>")):
        r = run_cli("run", "--home", home, "--quiet", "--announce", bad, timeout=60)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and why in r.stderr, (bad, r.stderr)


def test_a_node_announces_the_address_peers_are_told_to_dial(cluster: LocalCluster) -> None:
    """What a relay or port forward in front of the node needs: the descriptor, status and the
    addrs file carry the announced address, not the bound one."""
    cluster.add(NodeSpec("lima", "PE", "Lima", "Andes Keys"))
    n = cluster.nodes["lima"]
    announced = "/ip4/127.0.0.1/tcp/4999"
    proc = subprocess.Popen([*CLI, "run", "--home", str(n.home.path), "--quiet", "--announce", announced,
                             *[a for b in cluster.bootstrap_for("lima") for a in ("--bootstrap", b)]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                st = call(n.home, "status", timeout=5)
                break
            except (NotRunning, ControlFailed, OSError):
                time.sleep(0.1)
        assert st["addrs"] == [f"{announced}/p2p/{n.peer_id}"]
        assert json.loads(n.home.addrs_file.read_text())["addrs"] == st["addrs"]
        for _ in range(300):  # its descriptor reaches the others with the announced address
            seen = {c["peer_id"]: c["addrs"] for c in cluster.control("frankfurt", "custodians")}
            if n.peer_id in seen:
                break
            time.sleep(0.1)
        assert seen[n.peer_id] == [f"{announced}/p2p/{n.peer_id}"]
    finally:
        proc.terminate()
        proc.wait(20)
        cluster.remove("lima")


def test_new_node_appears_in_every_directory(cluster: LocalCluster) -> None:
    before = len(cluster.control("frankfurt", "custodians"))
    cluster.add(NodeSpec("nairobi", "KE", "Nairobi", "Rift Custody"))
    try:
        cluster.start("nairobi")
        took = cluster.wait_directory(expect=before + 1, timeout=30)
        assert took < 30
    finally:
        cluster.remove("nairobi")
