"""The audit log as a transparency log: leaves, proof bundles (protocol/_audit_log.py),
the tree in the store (schema 11), and the CLI over real node processes."""

from __future__ import annotations

import base64
import json
import pathlib
import sqlite3

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.node._store import MIGRATIONS, Store, migrate
from shardnet.protocol import audit_log, note, tlog
from shardnet.simulations._local import FIVE_CONTINENTS, LocalCluster, run_cli

LOG = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
LOG_PEER = p.peer_id_of(LOG.public_key().public_bytes_raw())
W1 = Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32)
W2 = Ed25519PrivateKey.from_private_bytes(bytes([10]) * 32)


def _peer(key: Ed25519PrivateKey) -> str:
    return p.peer_id_of(key.public_key().public_bytes_raw())


def _log(n: int, key: Ed25519PrivateKey = LOG) -> tuple[list[p.AuditEntry], tlog.MemoryTree]:
    entries: list[p.AuditEntry] = []
    tree = tlog.MemoryTree()
    for i in range(n):
        entries.append(p.make_audit_entry(entries[-1] if entries else None, time=1_800_000_000 + i, kind="store",
                                          body={"i": i}, key=key))
        tree.append(audit_log.leaf_bytes(entries[-1]))
    return entries, tree


def _bundle(seq: int, n: int = 9, cosigners: tuple[Ed25519PrivateKey, ...] = (W1,)) -> bytes:
    entries, tree = _log(n)
    origin = audit_log.origin_of(LOG_PEER)
    cp = note.Checkpoint(origin, tree.size, tree.root())
    signed = note.add_signatures(note.sign_checkpoint(cp, origin, LOG), [
        note.cosign(cp.text(), audit_log.witness_name(_peer(w)), w, 1_800_000_100) for w in cosigners])
    return audit_log.make_bundle(LOG_PEER, entries[seq - 1], tlog.inclusion_proof(seq - 1, n, tree.read), signed)


def _keys(*witnesses: Ed25519PrivateKey) -> tuple[note.Verifier, list[note.Verifier]]:
    return (audit_log.verifier_from(LOG_PEER, cosigner=False),
            [audit_log.verifier_from(_peer(w), cosigner=True) for w in witnesses])


def test_a_bundle_proves_its_entry_with_public_keys_alone() -> None:
    log_key, witnesses = _keys(W1, W2)
    got = audit_log.check_bundle(_bundle(4), log_key, witnesses, 1)
    assert (got.entry.seq, got.entry.body, got.checkpoint.size) == (4, {"i": 3}, 9)
    assert got.witnesses == (audit_log.witness_name(_peer(W1)),)
    with pytest.raises(audit_log.ProofRefused, match="1 of the 2 witness cosignatures"):
        audit_log.check_bundle(_bundle(4), log_key, witnesses, 2)
    assert audit_log.check_bundle(_bundle(4, cosigners=(W1, W2)), log_key, witnesses, 2).witnesses


def _edit(bundle: bytes, **fields: object) -> bytes:
    doc = json.loads(bundle)
    doc.update(fields)
    return json.dumps(doc).encode()


def test_a_bundle_that_lies_is_refused_with_the_reason() -> None:
    log_key, witnesses = _keys(W1)
    good = _bundle(4)
    doc = json.loads(good)
    other_entries, _ = _log(9, W2)  # the same log shape, by another key
    forged = base64.b64encode(audit_log.leaf_bytes(other_entries[3])).decode()
    sibling = base64.b64encode(audit_log.leaf_bytes(_log(9)[0][4])).decode()  # entry 5 with entry 4's proof
    cases = {
        "not JSON": b"\xff",
        "version 1": _edit(good, shardnet_audit_proof=2),
        "not signed by the log's key": _edit(good, entry=forged),
        "not in the checkpoint's tree": _edit(good, entry=sibling),
        "proof hash is not base64": _edit(good, proof=["%%"]),
        "does not verify": _edit(good, checkpoint=doc["checkpoint"].replace("\n9\n", "\n10\n")),
        "another log": _edit(good, log=_peer(W2)),
    }
    for why, data in cases.items():
        with pytest.raises(audit_log.ProofRefused, match=why):
            audit_log.check_bundle(data, log_key, witnesses, 0)
    with pytest.raises(audit_log.ProofRefused, match="not signed by the log's key|no known key"):
        audit_log.check_bundle(good, audit_log.verifier_from(_peer(W2), cosigner=False), witnesses, 0)


def test_the_store_keeps_the_tree_and_the_migration_builds_it_over_an_old_log(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "node.db"
    with Store(str(path)) as store:
        for i in range(5):
            store.append_audit("store", {"i": i}, 1_800_000_000 + i, LOG)
        want = store.tree_root()
    # The same log written by a schema-10 store, then migrated: the same tree.
    old = tmp_path / "old.db"
    import sqlite_utils

    db = sqlite_utils.Database(str(old))
    migrate(db, MIGRATIONS[:10])
    src = sqlite3.connect(str(path))
    rows = src.execute("SELECT seq, prev, time, kind, body, signer, hash, sig FROM audit ORDER BY seq").fetchall()
    src.close()
    db.conn.executemany("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.conn.commit()
    db.close()
    with Store(str(old)) as store:
        assert store.tree_size() == 5 and store.tree_root() == want
        store.append_audit("store", {"i": 5}, 1_800_000_005, LOG)
        assert store.tree_size() == 6
        proof = store.consistency_proof(5, 6)
        tlog.verify_consistency(5, 6, want, store.tree_root(), proof)
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            store._db.execute("UPDATE audit_tree SET hash = ? WHERE level = 0 AND idx = 0", [bytes(32)])


@pytest.mark.slow
def test_a_node_checkpoints_proves_and_catches_a_rewritten_entry(tmp_path: pathlib.Path) -> None:
    specs = FIVE_CONTINENTS[:3]
    with LocalCluster(tmp_path / "net", specs) as c:
        c.init_all()
        c.start_all()
        c.wait_directory(timeout=30)
        owner = str(c.nodes[specs[0].name].home.path)
        (tmp_path / "k").write_bytes(b"k" * 32)
        r = run_cli("key", "import", "--home", owner, "--in", str(tmp_path / "k"), "-t", "2", "-n", "3", "--json")
        assert r.returncode == 0, r.stderr
        r = run_cli("audit", "checkpoint", "--home", owner, "--json")  # the running node signs it
        assert r.returncode == 0, r.stderr
        cp = json.loads(r.stdout)
        entries = run_cli("audit", "verify", "--home", owner, "--json")
        assert cp["size"] == json.loads(entries.stdout)["entries"] >= 2
        store_entry = next(e for e in range(1, cp["size"] + 1) if _kind(owner, e) == "import")
        r = run_cli("audit", "prove", str(store_entry), "--home", owner, "--out", str(tmp_path / "b.json"))
        assert r.returncode == 0, r.stderr
        r = run_cli("audit", "check", str(tmp_path / "b.json"), "--log-key", cp["log"], "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["kind"] == "import"
        r = run_cli("audit", "check", str(tmp_path / "b.json"), "--log-key", c.nodes[specs[1].name].home.peer_id())
        assert r.returncode == 1 and "no known key" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        c.stop(specs[0].name)
    # Someone with the file edits entry 2: the hash chain breaks there.
    db = sqlite3.connect(str(pathlib.Path(owner) / "node.db"))
    for trigger in ("audit_no_update", "audit_no_delete", "audit_tree_no_update", "audit_tree_no_delete"):
        db.execute(f"DROP TRIGGER {trigger}")
    rows = db.execute("SELECT seq, time, kind, body FROM audit ORDER BY seq").fetchall()
    db.execute("UPDATE audit SET body = ? WHERE seq = 2", [p.encode_audit_body({"rewritten": True})])
    db.commit()
    r = run_cli("audit", "verify", "--home", owner)
    assert r.returncode == 1 and "entry 2" in r.stderr, r.stderr
    # The node itself rewrites its history: the chain signed again with its own key and
    # the tree built again, so both verify; the checkpoint it signed before does not.
    key = c.nodes[specs[0].name].home.identity()
    entries: list[p.AuditEntry] = []
    tree = tlog.MemoryTree()
    db.execute("DELETE FROM audit")
    db.execute("DELETE FROM audit_tree")
    for seq, time, kind, body in rows:
        fields = p.decode_audit_body(body) if seq != 2 else {"rewritten": True}
        entries.append(p.make_audit_entry(entries[-1] if entries else None, time=time, kind=kind, body=fields,
                                          key=key))
        e = entries[-1]
        db.execute("INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   [e.seq, e.prev, e.time, e.kind, p.encode_audit_body(e.body), e.signer, e.hash, e.sig])
        tree.append(audit_log.leaf_bytes(e))
    db.executemany("INSERT INTO audit_tree VALUES (?, ?, ?)", [(lv, i, h) for (lv, i), h in tree.hashes.items()])
    db.commit()
    db.close()
    r = run_cli("audit", "verify", "--home", owner)
    assert r.returncode == 1 and "not the one its checkpoint" in r.stderr, r.stderr


def _kind(home: str, seq: int) -> str:
    db = sqlite3.connect(str(pathlib.Path(home) / "node.db"))
    try:
        return str(db.execute("SELECT kind FROM audit WHERE seq = ?", [seq]).fetchone()[0])
    finally:
        db.close()


def test_bench_tlog_runs_from_the_cli(tmp_path: pathlib.Path) -> None:
    r = run_cli("bench", "tlog", "--appends", "30", "--sizes", "100,1000", "--json", str(tmp_path / "t.json"))
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "t.json").read_text())
    assert got["fsync_per_s"] > 0 and 0 < got["appends_with_checkpoint_per_s"] <= got["appends_per_s"] * 1.5
    assert [x["size"] for x in got["proofs"]] == [100, 1000]
    assert all(x["inclusion_bytes"] % 32 == 0 and x["inclusion_bytes"] <= 32 * 10 for x in got["proofs"])
    assert "of the bound" in r.stdout
