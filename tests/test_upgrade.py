"""Homes written by earlier commits still open, run and reconstruct.

Every folder in ``tests/fixtures/homes/`` was made by ``make_homes.py`` with an
earlier commit's code (its name is that commit). Each is copied, opened with
the current code (the schema migrates), run as real node processes, and its
keyset reconstructed to the exact bytes the old code imported.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import time

import pytest

from shardnet.node._home import Home
from shardnet.node._store import SCHEMA_VERSION
from shardnet.simulations._local import CLI, LocalCluster, NodeSpec, run_cli

pytestmark = pytest.mark.slow
FIXTURES = sorted(p for p in (pathlib.Path(__file__).parent / "fixtures" / "homes").iterdir() if p.is_dir())


def copy_fixture(src: pathlib.Path, dst: pathlib.Path) -> dict:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    for n in manifest["nodes"]:
        home = dst / n["name"]
        home.chmod(0o700)
        for secret in ("identity.key", "hpke.key"):
            (home / secret).chmod(0o600)  # git keeps no modes but the exec bit
    return manifest


def test_there_is_a_fixture_for_the_previous_schema() -> None:
    assert FIXTURES, "no upgrade fixture: make one with tests/fixtures/make_homes.py"


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_an_old_home_opens_runs_and_reconstructs(fixture: pathlib.Path, tmp_path: pathlib.Path) -> None:
    manifest = copy_fixture(fixture, tmp_path / "homes")
    owner = str(tmp_path / "homes" / manifest["owner"])
    # Offline first: the read-only commands migrate and read the old database.
    r = run_cli("key", "list", "--home", owner, "--json")
    assert r.returncode == 0, r.stderr
    assert [k["keyset"] for k in json.loads(r.stdout)] == [manifest["keyset"]]
    for n in manifest["nodes"]:
        r = run_cli("audit", "verify", "--home", str(tmp_path / "homes" / n["name"]), "--json")
        assert r.returncode == 0, r.stderr
        with Home(tmp_path / "homes" / n["name"]).open_store() as store:
            assert store.schema_version == SCHEMA_VERSION
    specs = [NodeSpec(n["name"], n["country"], n["city"], n["org"]) for n in manifest["nodes"]]
    with LocalCluster(tmp_path / "homes", specs) as c:
        c.init_all()  # finds every home initialised: reads the peer ids only
        c.start_all()
        c.wait_directory(timeout=30)
        reconstruct(c, owner, manifest, tmp_path / "master.out")
        if manifest.get("rules"):  # the rules in force then are in force now
            for n in manifest["nodes"]:
                home = str(tmp_path / "homes" / n["name"])
                shown = json.loads(run_cli("policy", "show", "--home", home, manifest["keyset"], "--json").stdout)
                assert (shown["version"], shown["placement"]) == (1, "distinct:country")
                revoked = json.loads(run_cli("revocations", "--home", home, "--json").stdout)
                assert [(r["subject"], r["reason"]) for r in revoked] == [("requester", "fixture")]
        # A keyset imported before epoch changes existed is refreshed, then resharded
        # (over the same three custodians, as 2-of-3 again), and still comes back.
        for action in ("refresh", "reshare"):
            r = run_cli(action, "--home", owner, manifest["keyset"], "--json")
            assert r.returncode == 0, r.stderr
            res = json.loads(r.stdout)
            assert res["action"] == action and len(res["erased"]) == manifest["shares"]
        reconstruct(c, owner, manifest, tmp_path / "master.again")


def reconstruct(c: LocalCluster, owner: str, manifest: dict, out: pathlib.Path) -> None:
    proc = subprocess.Popen([*CLI, "key", "reconstruct", "--home", owner, manifest["keyset"], "--out", str(out),
                             "--reason", "upgrade test", "--timeout", "30", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        approved: set[str] = set()
        deadline = time.monotonic() + 30
        # By default the custodians approve, quorum t.
        while len(approved) < manifest["threshold"] and time.monotonic() < deadline:
            for n in manifest["nodes"][1:]:
                if n["name"] in approved:
                    continue
                for req in c.control(n["name"], "requests"):
                    if req["keyset"] == manifest["keyset"] and req["my_vote"] is None and req["state"] == "pending":
                        c.control(n["name"], "approve", {"request": req["request"]})
                        approved.add(n["name"])
            time.sleep(0.1)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["keyset"] == manifest["keyset"]
    assert out.read_bytes() == bytes.fromhex(manifest["master_hex"])
