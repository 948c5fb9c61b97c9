"""The node's SQLite store, on real files (shardnet.node._store)."""

from __future__ import annotations

import pathlib
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any, cast

import pytest
import sqlite_utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardnet.node._store import (
    APPLICATION_ID,
    MIGRATIONS,
    SCHEMA_VERSION,
    AmbiguousKeysetPrefix,
    AuditEvent,
    InvalidOutboxTransition,
    KeysetNotFound,
    NewKeyset,
    NewOutboxItem,
    OutboxItemNotFound,
    SchemaVersionError,
    ShardConflict,
    Store,
    StoreError,
    migrate,
)
from shardnet.protocol._audit import MAX_BODY_BYTES, AuditChainBroken, encode_body

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
PUB = KEY.public_key().public_bytes_raw()
OTHER_PUB = OTHER.public_key().public_bytes_raw()
NOW = 1_700_000_000


@pytest.fixture
def path(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "node.db"


@pytest.fixture
def store(path: pathlib.Path) -> Iterator[Store]:
    with Store(path) as s:
        yield s


def keyset(kid: str = "ks-aaaa", *, shares: int = 3, epoch: int = 0, **kw: Any) -> NewKeyset:
    row = NewKeyset(
        keyset_id=kid, record=b"record:" + kid.encode(), owner="owner-peer", threshold=2,
        shares=shares, epoch=epoch, created=NOW, role="owner",
    )
    row.update(cast(Any, kw))
    return row


def items(kid: str = "ks-aaaa", n: int = 3, epoch: int = 0) -> list[NewOutboxItem]:
    return [
        NewOutboxItem(keyset_id=kid, epoch=epoch, idx=i, custodian=f"peer{i}",
                      envelope=b"env%d" % i)
        for i in range(1, n + 1)
    ]


def event(kind: str = "import", key: Ed25519PrivateKey = KEY, **body: Any) -> AuditEvent:
    return AuditEvent(kind, body, key)


def raw(path: pathlib.Path) -> sqlite3.Connection:
    """A plain sqlite3 connection, as an attacker or an operator would use."""
    return sqlite3.connect(path)


def tamper(path: pathlib.Path, sql: str, args: tuple[Any, ...] = ()) -> None:
    conn = raw(path)
    try:
        # Our append-only triggers guard against bugs; an attacker drops them.
        conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_no_delete")
        conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


def counts(path: pathlib.Path) -> dict[str, int]:
    conn = raw(path)
    try:
        return {
            t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("custodians", "keysets", "held_shards", "outbox", "audit", "kv")
        }
    finally:
        conn.close()


def fill_audit(store: Store, n: int = 50) -> None:
    for i in range(n):
        store.append_audit("deliver", {"i": i, "peer": f"peer{i}"}, NOW + i, KEY)


# -- opening, WAL, migrations ----------------------------------------------------


def test_new_store_is_wal_full_sync_and_current(store: Store, path: pathlib.Path) -> None:
    conn = raw(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    finally:
        conn.close()
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.schema_version == SCHEMA_VERSION == len(MIGRATIONS)


def test_reopen_keeps_data(path: pathlib.Path) -> None:
    with Store(path) as s:
        s.import_keyset(keyset(), items(), event(), now=NOW)
        s.upsert_custodian("peer1", b"desc", {"name": "Acme", "country": "CH"}, 1, now=NOW)
        s.put_kv("peer-key", b"\x01\x02")
        head = s.audit_head()
    with Store(path) as s:
        assert s.schema_version == SCHEMA_VERSION
        assert [k["keyset_id"] for k in s.keysets()] == ["ks-aaaa"]
        assert len(s.pending()) == 3
        assert s.custodian("peer1") is not None
        assert s.get_kv("peer-key") == b"\x01\x02"
        assert s.audit_head() == head
        assert s.verify_audit({PUB}) == 1


def test_newer_schema_is_refused(path: pathlib.Path) -> None:
    Store(path).close()
    conn = raw(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError, match="newer shardnet") as info:
        Store(path)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(info.value)
    assert str(path) in str(info.value)
    # ...and the file was not touched.
    conn = raw(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    conn.close()


def test_foreign_sqlite_file_is_refused(path: pathlib.Path) -> None:
    conn = raw(path)
    conn.execute("CREATE TABLE photos (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError, match="not a shardnet store"):
        Store(path)
    conn = raw(path)
    conn.execute("PRAGMA application_id = 42")
    conn.execute("DROP TABLE photos")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError, match="not a shardnet store"):
        Store(path)


def test_non_database_file_is_refused(path: pathlib.Path) -> None:
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        Store(path)


def _bare(path: pathlib.Path) -> sqlite_utils.Database:
    return sqlite_utils.Database(sqlite3.connect(path), execute_plugins=False)


def test_each_migration_is_one_transaction(path: pathlib.Path) -> None:
    def add_column(db: sqlite_utils.Database) -> None:
        db.execute("ALTER TABLE a ADD COLUMN y INTEGER")

    steps = [
        "CREATE TABLE a (x INTEGER); INSERT INTO a VALUES (1);",
        add_column,
        "CREATE TABLE b (x INTEGER); INSERT INTO nowhere VALUES (1);",  # fails half-way
    ]
    db = _bare(path)
    try:
        with pytest.raises(sqlite3.OperationalError, match="nowhere"):
            migrate(db, steps)
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
        assert "b" not in db.table_names()
        assert db.table("a").columns_dict == {"x": int, "y": int}
        steps[2] = "CREATE TABLE b (x INTEGER);"
        assert migrate(db, steps) == 3
        assert migrate(db, steps) == 3  # idempotent
        assert "b" in db.table_names()
    finally:
        db.close()


def test_migrate_refuses_newer(path: pathlib.Path) -> None:
    db = _bare(path)
    try:
        migrate(db, ["CREATE TABLE a (x INTEGER);", "CREATE TABLE b (x INTEGER);"])
        with pytest.raises(SchemaVersionError, match="only knows versions up to 1"):
            migrate(db, ["CREATE TABLE a (x INTEGER);"])
    finally:
        db.close()


# -- atomicity --------------------------------------------------------------------


class Boom(Exception):
    pass


def test_exception_inside_transaction_leaves_no_rows(path: pathlib.Path) -> None:
    with Store(path) as s:
        with pytest.raises(Boom), s.transaction():
            s.put_keyset(keyset(), now=NOW)
            s.enqueue(items(), now=NOW)
            s.append_audit("import", {"k": "ks-aaaa"}, NOW, KEY)
            s.put_kv("x", b"y")
            raise Boom
        assert s.keysets() == [] and s.audit_head() is None
    assert set(counts(path).values()) == {0}


def test_nested_failure_rolls_back_only_the_inner_block(store: Store) -> None:
    with store.transaction():
        store.put_kv("outer", b"1")
        with pytest.raises(Boom), store.transaction():
            store.put_kv("inner", b"2")
            store.append_audit("import", {}, NOW, KEY)
            raise Boom
        store.append_audit("import", {"after": True}, NOW, KEY)
    assert store.get_kv("outer") == b"1" and store.get_kv("inner") is None
    assert [e.body for e in store.audit_entries()] == [{"after": True}]
    assert store.verify_audit({PUB}) == 1


def test_import_keyset_failing_half_way_writes_nothing(store: Store, path: pathlib.Path) -> None:
    rows = items()
    rows.append(rows[0])  # duplicate: fails on the 4th insert, after 4 rows were written
    with pytest.raises(ValueError, match="already queued"):
        store.import_keyset(keyset(), rows, event(), now=NOW)
    assert set(counts(path).values()) == {0}


def test_import_keyset_with_oversized_audit_body_writes_nothing(
    store: Store, path: pathlib.Path
) -> None:
    big = event(blob=bytes(MAX_BODY_BYTES))
    with pytest.raises(ValueError, match="cap"):
        store.import_keyset(keyset(), items(), big, now=NOW)
    assert set(counts(path).values()) == {0}


def test_import_keyset_validates_items(store: Store, path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="does not belong"):
        store.import_keyset(keyset(), items("ks-other"), event(), now=NOW)
    with pytest.raises(ValueError, match="outside 1..3"):
        store.import_keyset(keyset(), items(n=4), event(), now=NOW)
    with pytest.raises(ValueError, match="role 'owner'"):
        store.import_keyset(keyset(role="custodian"), items(), event(), now=NOW)
    assert set(counts(path).values()) == {0}
    store.import_keyset(keyset(), items(), event(), now=NOW)
    with pytest.raises(ValueError, match="already exists"):
        store.import_keyset(keyset(), [], event(), now=NOW)


def test_business_row_and_audit_entry_fail_together(store: Store) -> None:
    store.import_keyset(keyset(), items(), event(), now=NOW)
    with pytest.raises(ValueError, match="kind"):
        store.mark_delivered("ks-aaaa", 0, 1, "peer1", receipt=b"r", now=NOW,
                             audit=event("Not A Kind"))
    assert store.outbox("ks-aaaa")[0]["state"] == "pending"
    assert store.verify_audit({PUB}) == 1


CRASH = """
import os, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from shardnet.node._store import AuditEvent, NewKeyset, NewOutboxItem, Store
key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
store = Store(sys.argv[1])
ks = NewKeyset(keyset_id="ks-crash", record=b"r", owner="o", threshold=1, shares=2, epoch=0,
               created=1, role="owner")
out = [NewOutboxItem(keyset_id="ks-crash", epoch=0, idx=i, custodian="c", envelope=b"e")
       for i in (1, 2)]
if sys.argv[2] == "commit":
    store.import_keyset(ks, out, AuditEvent("import", {}, key), now=1)
    os._exit(0)
with store.transaction():
    store.put_keyset(ks, now=1)
    store.enqueue(out, now=1)
    store.append_audit("import", {}, 1, key)
    os._exit(1)  # the process dies mid-transaction: no rollback, no close
"""


@pytest.mark.parametrize("mode", ["crash", "commit"])
def test_process_killed_mid_transaction_leaves_no_partial_rows(
    path: pathlib.Path, mode: str
) -> None:
    Store(path).close()
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CRASH), str(path), mode], timeout=60
    )
    assert proc.returncode == (1 if mode == "crash" else 0)
    with Store(path) as s:
        if mode == "crash":
            assert s.keysets() == [] and s.outbox("ks-crash") == [] and s.audit_head() is None
        else:
            assert len(s.outbox("ks-crash")) == 2 and s.verify_audit({PUB}) == 1


# -- audit log ---------------------------------------------------------------------


def test_chain_of_50_verifies(store: Store) -> None:
    fill_audit(store)
    assert store.verify_audit({PUB}) == 50
    assert store.verify_audit(None) == 50
    entries = list(store.audit_entries())
    assert [e.seq for e in entries] == list(range(1, 51))
    assert entries[-1] == store.audit_head()
    assert [e.seq for e in store.audit_entries(start=48)] == [48, 49, 50]


def test_empty_log_verifies(store: Store) -> None:
    assert store.verify_audit({PUB}) == 0 and store.audit_head() is None


COLUMN_EDITS: dict[str, tuple[str, tuple[Any, ...], str]] = {
    "seq": ("UPDATE audit SET seq = 1000 WHERE seq = ?", (), "missing"),
    "prev": ("UPDATE audit SET prev = randomblob(32) WHERE seq = ?", (), "prev link"),
    "time": ("UPDATE audit SET time = time + 1 WHERE seq = ?", (), "hash mismatch"),
    "kind": ("UPDATE audit SET kind = 'refuse' WHERE seq = ?", (), "hash mismatch"),
    "body": ("UPDATE audit SET body = ? WHERE seq = ?", (encode_body({"i": -1}),),
             "hash mismatch"),
    "body_garbage": ("UPDATE audit SET body = x'c1' WHERE seq = ?", (), "unreadable"),
    "body_noncanonical": ("UPDATE audit SET body = x'82a16201a16102' WHERE seq = ?", (),
                          "unreadable"),
    "signer": ("UPDATE audit SET signer = ? WHERE seq = ?", (OTHER_PUB,), "hash mismatch"),
    "hash": ("UPDATE audit SET hash = randomblob(32) WHERE seq = ?", (), "hash mismatch"),
    "sig": ("UPDATE audit SET sig = randomblob(64) WHERE seq = ?", (), "bad signature"),
}


@pytest.mark.parametrize("column", sorted(COLUMN_EDITS))
@pytest.mark.parametrize("seq", [1, 17, 50])
def test_raw_edit_of_any_column_is_reported_at_that_entry(
    path: pathlib.Path, column: str, seq: int
) -> None:
    with Store(path) as s, s.transaction():
        fill_audit(s)
    sql, args, reason = COLUMN_EDITS[column]
    tamper(path, sql, (*args, seq))
    with Store(path) as s:
        with pytest.raises(AuditChainBroken) as info:
            s.verify_audit({PUB})
    assert info.value.seq == seq
    assert reason in info.value.reason
    assert str(info.value).startswith(f"audit log broken at entry {seq}: ")


@pytest.mark.parametrize("seq", [1, 17, 49])
def test_deleted_row_is_reported(path: pathlib.Path, seq: int) -> None:
    with Store(path) as s, s.transaction():
        fill_audit(s)
    tamper(path, "DELETE FROM audit WHERE seq = ?", (seq,))
    with Store(path) as s:
        with pytest.raises(AuditChainBroken, match=f"found entry {seq + 1} where {seq}") as info:
            s.verify_audit({PUB})
    assert info.value.seq == seq


def test_gap_before_unreadable_row_is_reported_at_the_gap(path: pathlib.Path) -> None:
    with Store(path) as s, s.transaction():
        fill_audit(s, 10)
    tamper(path, "DELETE FROM audit WHERE seq = 4")
    tamper(path, "UPDATE audit SET body = x'c1' WHERE seq = 5")
    with Store(path) as s:
        with pytest.raises(AuditChainBroken) as info:
            s.verify_audit({PUB})
    assert info.value.seq == 4


def test_truncating_the_newest_entries_needs_a_checkpoint(path: pathlib.Path) -> None:
    # Documented limit: the chain alone cannot see that its tail was cut off.
    with Store(path) as s:
        fill_audit(s, 5)
    tamper(path, "DELETE FROM audit WHERE seq = 5")
    with Store(path) as s:
        assert s.verify_audit({PUB}) == 4


def test_foreign_signer_is_reported(store: Store) -> None:
    fill_audit(store, 10)
    store.append_audit("import", {"x": 1}, NOW, OTHER)
    fill_audit(store, 2)
    with pytest.raises(AuditChainBroken, match="untrusted key") as info:
        store.verify_audit({PUB})
    assert info.value.seq == 11
    assert store.verify_audit({PUB, OTHER_PUB}) == 13


def test_audit_table_is_append_only(store: Store, path: pathlib.Path) -> None:
    fill_audit(store, 3)
    conn = raw(path)
    try:
        for sql in ("UPDATE audit SET time = 0", "DELETE FROM audit",
                    "INSERT INTO audit SELECT 7, prev, time, kind, body, signer, hash, sig "
                    "FROM audit WHERE seq = 1"):
            with pytest.raises(sqlite3.IntegrityError, match="audit log"):
                conn.execute(sql)
    finally:
        conn.close()
    assert store.verify_audit({PUB}) == 3


def test_append_fails_closed_on_a_damaged_head(path: pathlib.Path) -> None:
    with Store(path) as s:
        fill_audit(s, 3)
    tamper(path, "UPDATE audit SET body = x'c1' WHERE seq = 3")
    with Store(path) as s:
        with pytest.raises(AuditChainBroken):
            s.append_audit("import", {}, NOW, KEY)
        s.put_kv("still", b"works")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(
        st.text(max_size=6),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=10)
            | st.binary(max_size=10),
            lambda inner: st.lists(inner, max_size=3)
            | st.dictionaries(st.text(max_size=4), inner, max_size=3),
            max_leaves=10,
        ),
        max_size=5,
    )
)
def test_bodies_round_trip_through_the_store(store: Store, body: dict[str, Any]) -> None:
    entry = store.append_audit("import", body, NOW, KEY)
    assert entry.body == body
    assert store.audit_head() == entry
    assert list(store.audit_entries(start=entry.seq)) == [entry]


# -- custodians --------------------------------------------------------------------


def test_upsert_custodian_ignores_stale_seq(store: Store) -> None:
    assert store.upsert_custodian("peerA", b"d5", {"name": "A", "country": "CH"}, 5, now=NOW)
    assert not store.upsert_custodian("peerA", b"d4", {"name": "old"}, 4, now=NOW + 1)
    assert not store.upsert_custodian("peerA", b"d5'", {"name": "same"}, 5, now=NOW + 1)
    row = store.custodian("peerA")
    assert row is not None
    assert (row["descriptor"], row["name"], row["seq"], row["updated_at"]) == (b"d5", "A", 5, NOW)
    assert store.upsert_custodian(
        "peerA", b"d6", {"name": "A2", "country": "DE", "city": "Berlin",
                         "continent": "EU", "org": "Org"}, 6, now=NOW + 2)
    assert store.custodians() == [{
        "peer_id": "peerA", "descriptor": b"d6", "name": "A2", "country": "DE",
        "city": "Berlin", "continent": "EU", "org": "Org", "seq": 6, "updated_at": NOW + 2,
    }]
    assert store.custodian("nobody") is None


def test_upsert_custodian_refuses_unknown_fields(store: Store) -> None:
    with pytest.raises(ValueError, match="naem"):
        store.upsert_custodian("p", b"d", {"naem": "typo"}, 1, now=NOW)


# -- keysets -----------------------------------------------------------------------


def test_find_keyset_by_prefix(store: Store) -> None:
    for kid in ("abc1", "abc2", "abd0", "xyz", "xyz9"):
        store.put_keyset(keyset(kid), now=NOW)
    assert store.find_keyset("abd")["keyset_id"] == "abd0"
    assert store.find_keyset("xyz")["keyset_id"] == "xyz"  # an exact id wins
    assert store.find_keyset("xyz9")["keyset_id"] == "xyz9"
    with pytest.raises(AmbiguousKeysetPrefix, match="'abc' is ambiguous.*abc1, abc2") as info:
        store.find_keyset("abc")
    assert info.value.matches == ["abc1", "abc2"] and info.value.total == 2
    with pytest.raises(AmbiguousKeysetPrefix, match="matches abc1, abc2, abd0; give more"):
        store.find_keyset("a")
    with pytest.raises(KeysetNotFound, match="no keyset id starts with 'q'"):
        store.find_keyset("q")
    with pytest.raises(LookupError):
        store.find_keyset("%")  # SQL wildcards are not special
    with pytest.raises(LookupError):
        store.find_keyset("_")
    with pytest.raises(ValueError, match="empty"):
        store.find_keyset("")


def test_ambiguity_message_is_capped(store: Store) -> None:
    for i in range(8):
        store.put_keyset(keyset(f"k{i}"), now=NOW)
    with pytest.raises(AmbiguousKeysetPrefix, match=r"k4, … \(8 in all\)") as info:
        store.find_keyset("k")
    assert len(info.value.matches) == 5


def test_put_keyset_only_moves_forward(store: Store) -> None:
    assert store.put_keyset(keyset(epoch=1, not_after=NOW + 99), now=NOW)
    row = store.keyset("ks-aaaa")
    assert row is not None and row["status"] == "active" and row["not_after"] == NOW + 99
    store.set_keyset_status("ks-aaaa", "revoked", now=NOW)
    assert not store.put_keyset(keyset(epoch=1, record=b"other"), now=NOW)
    assert not store.put_keyset(keyset(epoch=0), now=NOW)
    assert store.put_keyset(keyset(epoch=2, shares=5, record=b"new"), now=NOW,
                            audit=event("refresh", epoch=2))
    row = store.keyset("ks-aaaa")
    assert row is not None
    assert (row["epoch"], row["shares"], row["record"], row["status"], row["not_after"]) == (
        2, 5, b"new", "revoked", None)
    assert store.verify_audit({PUB}) == 1
    with pytest.raises(ValueError, match="belongs to owner-peer"):
        store.put_keyset(keyset(epoch=3, owner="mallory"), now=NOW)


def test_keyset_listing_and_status(store: Store) -> None:
    store.put_keyset(keyset("a", created=2), now=NOW)
    store.put_keyset(keyset("b", created=1, role="custodian"), now=NOW)
    assert [k["keyset_id"] for k in store.keysets()] == ["b", "a"]
    assert [k["keyset_id"] for k in store.keysets(role="owner")] == ["a"]
    entry = store.set_keyset_status("a", "revoked", now=NOW, audit=event("revoke", keyset="a"))
    assert entry is not None and entry.kind == "revoke"
    assert [k["keyset_id"] for k in store.keysets(status="revoked")] == ["a"]
    with pytest.raises(ValueError, match="unknown keyset status"):
        store.set_keyset_status("a", "bogus", now=NOW)
    with pytest.raises(KeysetNotFound):
        store.set_keyset_status("nope", "revoked", now=NOW, audit=event("revoke"))
    assert store.verify_audit({PUB}) == 1
    assert store.keyset("nope") is None


def test_keyset_constraints(store: Store) -> None:
    with pytest.raises(ValueError, match="threshold 2 must be between 1 and shares 1"):
        store.put_keyset(keyset(shares=1), now=NOW)
    with pytest.raises(ValueError, match="epoch"):
        store.put_keyset(keyset(epoch=-1), now=NOW)
    with pytest.raises(ValueError, match="role"):
        store.put_keyset(keyset(role="boss"), now=NOW)
    assert store.keysets() == []


# -- held shards -------------------------------------------------------------------


def test_put_held_shard_with_audit(store: Store) -> None:
    ks = keyset(role="custodian")
    entry = store.put_held_shard("ks-aaaa", 0, 2, sealed=b"s", meta=b"m", now=NOW,
                                 audit=event("receipt", keyset="ks-aaaa", idx=2), keyset=ks)
    assert entry is not None and entry.seq == 1 and entry.time == NOW
    assert store.held_shard("ks-aaaa", 0, 2) == {
        "keyset_id": "ks-aaaa", "epoch": 0, "idx": 2, "sealed": b"s", "meta": b"m",
        "received_at": NOW,
    }
    row = store.keyset("ks-aaaa")
    assert row is not None and row["role"] == "custodian"
    # Redelivery of the same shard is a no-op; a different one is refused.
    assert store.put_held_shard("ks-aaaa", 0, 2, sealed=b"s", meta=b"m", now=NOW + 5,
                                audit=event("receipt")) is None
    with pytest.raises(ShardConflict):
        store.put_held_shard("ks-aaaa", 0, 2, sealed=b"s2", meta=b"m", now=NOW,
                             audit=event("receipt"))
    store.put_held_shard("ks-bbbb", 1, 1, sealed=b"t", meta=b"n", now=NOW, audit=event("receipt"))
    assert [(r["keyset_id"], r["idx"]) for r in store.held_shards()] == [
        ("ks-aaaa", 2), ("ks-bbbb", 1)]
    assert [r["keyset_id"] for r in store.held_shards("ks-bbbb")] == ["ks-bbbb"]
    assert store.held_shard("ks-aaaa", 1, 2) is None
    assert store.verify_audit({PUB}) == 2


def test_put_held_shard_is_atomic(store: Store, path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="cap"):
        store.put_held_shard("ks-aaaa", 0, 1, sealed=b"s", meta=b"m", now=NOW,
                             audit=event(blob=bytes(MAX_BODY_BYTES)), keyset=keyset())
    with pytest.raises(ValueError, match="index 0 is the secret"):
        store.put_held_shard("ks-aaaa", 0, 0, sealed=b"s", meta=b"m", now=NOW,
                             audit=event(), keyset=keyset())
    assert set(counts(path).values()) == {0}


# -- outbox ------------------------------------------------------------------------


def test_outbox_lifecycle(store: Store) -> None:
    store.import_keyset(keyset(), items(), event(keyset="ks-aaaa"), now=NOW)
    assert [r["custodian"] for r in store.pending()] == ["peer1", "peer2", "peer3"]
    assert [r["idx"] for r in store.pending("peer2")] == [2]

    assert store.record_attempt("ks-aaaa", 0, 1, "peer1", error="timeout", now=NOW + 1) == 1
    assert store.record_attempt("ks-aaaa", 0, 1, "peer1", error="x" * 5000, now=NOW + 2) == 2
    row = store.outbox("ks-aaaa")[0]
    assert row["attempts"] == 2 and row["last_error"] is not None
    assert len(row["last_error"]) == 500 and row["updated_at"] == NOW + 2
    # least recently touched first
    assert [r["custodian"] for r in store.pending()] == ["peer2", "peer3", "peer1"]

    d = store.mark_delivered("ks-aaaa", 0, 1, "peer1", receipt=b"receipt", now=NOW + 3,
                             audit=event("deliver", idx=1))
    r = store.mark_refused("ks-aaaa", 0, 2, "peer2", reason="policy says no", now=NOW + 4,
                           audit=event("refuse", idx=2))
    assert (d.seq, r.seq) == (2, 3)
    rows = {row["custodian"]: row for row in store.outbox("ks-aaaa")}
    assert (rows["peer1"]["state"], rows["peer1"]["receipt"], rows["peer1"]["last_error"]) == (
        "delivered", b"receipt", None)
    assert (rows["peer2"]["state"], rows["peer2"]["last_error"]) == ("refused", "policy says no")
    assert [r["custodian"] for r in store.pending()] == ["peer3"]

    with pytest.raises(InvalidOutboxTransition, match="is delivered; cannot mark refused"):
        store.mark_refused("ks-aaaa", 0, 1, "peer1", reason="x", now=NOW, audit=event("refuse"))
    with pytest.raises(InvalidOutboxTransition, match="is refused"):
        store.record_attempt("ks-aaaa", 0, 2, "peer2", error=None, now=NOW)
    with pytest.raises(OutboxItemNotFound):
        store.mark_delivered("ks-aaaa", 0, 1, "peer9", receipt=b"r", now=NOW,
                             audit=event("deliver"))
    assert store.verify_audit({PUB}) == 3


def test_enqueue(store: Store, path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="unknown keyset"):
        store.enqueue(items(), now=NOW)
    store.put_keyset(keyset(epoch=1), now=NOW)
    entry = store.enqueue(items(epoch=1), now=NOW, audit=event("reshare"))
    assert entry is not None and len(store.pending()) == 3
    with pytest.raises(ValueError, match="already queued"):
        store.enqueue(items(epoch=1)[:1], now=NOW)
    before = counts(path)
    with pytest.raises(ValueError, match="already queued"):  # the first row must roll back too
        store.enqueue(
            [NewOutboxItem(keyset_id="ks-aaaa", epoch=1, idx=1, custodian="new", envelope=b"e"),
             items(epoch=1)[1]],
            now=NOW,
        )
    assert counts(path) == before


# -- kv ----------------------------------------------------------------------------


def test_kv(store: Store) -> None:
    assert store.get_kv("k") is None
    store.put_kv("k", b"1")
    store.put_kv("k", b"2")
    assert store.get_kv("k") == b"2"
    store.delete_kv("k")
    assert store.get_kv("k") is None


def test_close_is_idempotent(path: pathlib.Path) -> None:
    s = Store(path)
    s.close()
    s.close()


def test_memory_store_is_current_private_and_gone_on_close() -> None:
    a, b = Store(":memory:"), Store(":memory:")
    try:
        assert a.schema_version == SCHEMA_VERSION
        a.put_kv("k", b"v")
        assert a.get_kv("k") == b"v" and b.get_kv("k") is None  # each is its own database
        key = Ed25519PrivateKey.generate()
        a.append_audit("test", {"n": 1}, 1, key)
        assert a.verify_audit({key.public_key().public_bytes_raw()}) == 1
    finally:
        a.close()
        b.close()
    with Store(":memory:") as c:
        assert c.get_kv("k") is None


def test_a_reserve_lives_only_in_a_pending_slot_and_a_move_is_one_transaction(store: Store,
                                                                              path: pathlib.Path) -> None:
    rows = [NewOutboxItem(keyset_id="ks-aaaa", epoch=0, idx=i, custodian=f"peer{i}", envelope=b"e",
                          reserve=b"share %d" % i, deliver_by=NOW + 60) for i in (1, 2, 3)]
    store.import_keyset(keyset(), rows, event(), now=NOW)
    store.mark_delivered("ks-aaaa", 0, 1, "peer1", receipt=b"r", now=NOW, audit=event("receipt"))
    store.mark_refused("ks-aaaa", 0, 2, "peer2", reason="no", now=NOW, audit=event("refused"))
    old = next(r for r in store.outbox("ks-aaaa") if r["idx"] == 3)
    new = NewOutboxItem(keyset_id="ks-aaaa", epoch=0, idx=3, custodian="peer9", envelope=b"e9",
                        reserve=old["reserve"], deliver_by=NOW + 120)
    with pytest.raises(ValueError, match="keeps its keyset, epoch and index"):
        store.move_slot(old, {**new, "idx": 2}, record=b"amended", now=NOW, audit=event("moved"))
    # A move that fails half-way (the new slot exists already) writes nothing at all.
    with pytest.raises(ValueError, match="already queued"):
        store.move_slot(old, {**new, "custodian": "peer3"}, record=b"amended", now=NOW, audit=event("moved"))
    assert store.keyset("ks-aaaa")["record"] != b"amended"
    assert next(r for r in store.outbox("ks-aaaa") if r["idx"] == 3)["state"] == "pending"
    store.move_slot(old, new, record=b"amended", now=NOW + 61, audit=event("moved"))
    by = {r["custodian"]: r for r in store.outbox("ks-aaaa")}
    assert [by[f"peer{i}"]["reserve"] for i in (1, 2, 3)] == [None, None, None]
    assert by["peer3"]["state"] == "moved" and by["peer3"]["last_error"] == "moved to peer9"
    assert by["peer9"]["state"] == "pending" and by["peer9"]["reserve"] == b"share 3"
    assert store.keyset("ks-aaaa")["record"] == b"amended"
    with pytest.raises(InvalidOutboxTransition):
        store.move_slot(old, new, record=b"again", now=NOW, audit=event("moved"))
    conn = raw(path)  # the schema itself refuses a reserve outside a pending slot
    try:
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("UPDATE outbox SET reserve = x'00' WHERE custodian = 'peer1'")
    finally:
        conn.close()


def test_epoch_locks_an_echo_lock_lapses_at_its_deadline_a_sign_lock_never(tmp_path: pathlib.Path) -> None:
    with Store(tmp_path / "locks.db") as s:
        assert s.take_epoch_lock("k", 1, "echo", b"round-a", until=100, now=10) == b"round-a"
        assert s.take_epoch_lock("k", 1, "echo", b"round-a", until=100, now=20) == b"round-a"  # the same round
        assert s.take_epoch_lock("k", 1, "echo", b"round-b", until=200, now=50) == b"round-a"  # busy
        assert s.take_epoch_lock("k", 1, "echo", b"round-b", until=200, now=101) == b"round-b"  # lapsed
        assert s.take_epoch_lock("k", 1, "sign", b"record-a", until=None, now=10) == b"record-a"
        assert s.take_epoch_lock("k", 1, "sign", b"record-b", until=None, now=10**9) == b"record-a"
        assert s.take_epoch_lock("k", 2, "sign", b"record-b", until=None, now=10) == b"record-b"  # next epoch


def test_expired_requests_are_pruned_with_their_votes_and_live_ones_counted(store: Store) -> None:
    for i, (requester, not_after) in enumerate([("r1", 100), ("r1", 200), ("r1", 300), ("r2", 300)]):
        rid = f"{i:032x}"
        assert store.put_request(rid, "ab" * 16, requester, b"rec", created=1, not_after=not_after, now=1)
        store.put_vote(rid, "approver", "approve", b"vote", now=1)
        store.put_equivocation(rid, "liar", b"yes", b"no", now=1, audit=event("equivocation"))
    store.set_request_outcome(f"{3:032x}", "reconstructed")
    assert store.live_requests("r1", 150) == 2 and store.live_requests("r2", 150) == 0  # r2's is over
    assert store.equivocations(f"{0:032x}") == [(b"yes", b"no")]
    assert store.prune_requests(before=201) == 2  # those that expired before 201
    assert sorted(r["request_id"] for r in store.requests()) == [f"{2:032x}", f"{3:032x}"]
    assert store.votes(f"{0:032x}") == [] and store.votes(f"{2:032x}") == [b"vote"]
    assert store.equivocations(f"{0:032x}") == [] and store.equivocations(f"{2:032x}") == [(b"yes", b"no")]
    assert store.prune_requests(before=201) == 0


def test_an_owners_holdings_count_the_keysets_whose_shards_are_still_here(store: Store) -> None:
    for kid in ("ks-aaaa", "ks-bbbb"):
        store.put_keyset(keyset(kid, role="custodian"), now=NOW)
        store.put_held_shard(kid, 0, 1, sealed=b"s" * 100, meta=b"m" * 10, now=NOW, audit=event("store"))
    count, size = store.owner_holdings("owner-peer")
    assert count == 2 and size == 2 * (100 + 10) + len(b"record:ks-aaaa") + len(b"record:ks-bbbb")
    store.erase_older("ks-aaaa", 1, [], now=NOW)  # its shards erased (a refresh, a reshare away)
    assert store.owner_holdings("owner-peer") == (1, 110 + len(b"record:ks-bbbb"))
    assert store.owner_holdings("someone-else") == (0, 0)
