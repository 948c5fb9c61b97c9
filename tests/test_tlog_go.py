"""Our checkpoints and proofs, checked by tools nobody here wrote: the Go checksum
database's golang.org/x/mod/sumdb/note (Open) and sumdb/tlog (CheckRecord, CheckTree),
from Debian's golang-go and golang-golang-x-mod-dev, which `make test` installs.
tests/tlog_go/main.go is the small driver that calls them."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet.protocol import note, tlog

DRIVER = pathlib.Path(__file__).parent / "tlog_go"


def _gopath() -> str | None:
    """Where Debian's golang-golang-x-mod-dev put golang.org/x/mod (a GOPATH root)."""
    try:
        files = subprocess.run(["dpkg", "-L", "golang-golang-x-mod-dev"], capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    marker = "/src/golang.org/x/mod/sumdb/note"
    return next((f[:-len(marker)] for f in files if f.endswith(marker)), None)


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    go, gopath = shutil.which("go"), _gopath()
    if go is None or gopath is None:
        pytest.skip("needs Debian's golang-go and golang-golang-x-mod-dev (make test installs them as root)")
    out = tmp_path_factory.mktemp("go") / "tlogcheck"
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": gopath, "GOCACHE": str(out.parent / "cache"),
           "GOFLAGS": ""}
    subprocess.run([go, "build", "-o", str(out), "."], cwd=DRIVER, env=env, check=True, capture_output=True)
    return out


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _ask(checker: pathlib.Path, request: dict) -> dict:  # type: ignore[type-arg]
    r = subprocess.run([str(checker)], input=json.dumps(request), capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


LOG = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
WITNESS = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def test_go_opens_our_cosigned_checkpoints(checker: pathlib.Path) -> None:
    t = tlog.MemoryTree()
    for i in range(1000):
        t.append(b"audit entry %d" % i)
    origin = "shardnet/audit/12D3KooWTest"
    log_key = note.Verifier(origin, note.ED25519, LOG.public_key().public_bytes_raw())
    signed = note.sign_checkpoint(note.Checkpoint(origin, t.size, t.root()), origin, LOG)
    cosigned = note.add_signatures(signed, [note.cosign(note.parse(signed).text, "w/1", WITNESS, 1_800_000_000)])
    tampered = signed.replace("\n1000\n", "\n1001\n")
    other = note.Verifier("someone", note.ED25519, WITNESS.public_key().public_bytes_raw())
    got = _ask(checker, {"vkeys": [log_key.vkey(), other.vkey()], "notes": [signed, cosigned, tampered],
                         "records": [], "trees": []})["notes"]
    assert got[0] == [origin] and got[1] == [origin]  # the cosignature is a key Go does not know: ignored
    assert got[2][0].startswith("error:"), got[2]


def test_go_checks_our_inclusion_and_consistency_proofs(checker: pathlib.Path) -> None:
    t = tlog.MemoryTree()
    for i in range(1500):
        t.append(b"entry %d" % i)
    records, want = [], []
    for size in (1, 2, 7, 64, 100, 1023, 1024, 1500):
        for index in sorted({0, size // 2, size - 1}):
            proof = tlog.inclusion_proof(index, size, t.read)
            leaf = tlog.leaf_hash(b"entry %d" % index)
            records.append({"size": size, "root": _b64(t.root(size)), "index": index, "leaf": _b64(leaf),
                            "proof": [_b64(h) for h in proof]})
            want.append("ok")
            if proof:  # and one that must fail: the first hash flipped
                bad = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
                records.append({**records[-1], "proof": [_b64(h) for h in bad]})
                want.append("error")
    trees, want_trees = [], []
    for old, size in ((1, 2), (1, 1500), (3, 7), (64, 100), (1000, 1024), (1024, 1500), (1499, 1500)):
        proof = tlog.consistency_proof(old, size, t.read)
        trees.append({"old": old, "old_root": _b64(t.root(old)), "size": size, "root": _b64(t.root(size)),
                      "proof": [_b64(h) for h in proof]})
        want_trees.append("ok")
        trees.append({**trees[-1], "old_root": _b64(t.root(old - 1) if old > 1 else bytes(32))})
        want_trees.append("error")
    got = _ask(checker, {"vkeys": [], "notes": [], "records": records, "trees": trees})
    assert [("ok" if r == "ok" else "error") for r in got["records"]] == want
    assert [("ok" if r == "ok" else "error") for r in got["trees"]] == want_trees
    assert want.count("ok") >= 20 and want_trees.count("ok") == 7


def test_go_opens_a_node_homes_checkpoint(checker: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """The checkpoint `shardnet audit checkpoint` prints, with the log key it prints."""
    from shardnet.simulations._local import run_cli

    home = str(tmp_path / "h")
    assert run_cli("init", "--home", home, "--name", "x", "--country", "CH").returncode == 0
    r = run_cli("audit", "checkpoint", "--home", home, "--json")
    assert r.returncode == 0, r.stderr
    cp = json.loads(r.stdout)
    got = _ask(checker, {"vkeys": [cp["log_key"]], "notes": [cp["note"]], "records": [], "trees": []})["notes"]
    assert got == [[cp["origin"]]]
