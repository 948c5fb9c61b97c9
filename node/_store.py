"""The node's SQLite store (private): one file per node, through sqlite-utils.

Durability and atomicity
    The file is in WAL mode with ``synchronous=FULL``. WAL with NORMAL is safe
    against an application crash but may lose the last commits on power loss
    or an OS crash. A custodian signs a receipt ("I hold your shard") and the
    node gossips audit checkpoints right after a commit, so a commit that
    silently vanished would leave an owner counting a shard that is gone, and
    a log that contradicts its own published checkpoint. Writes here are rare
    (deliveries, votes), so one fsync per commit costs nothing that matters.

    Every write runs in one ``BEGIN IMMEDIATE`` transaction: the write lock is
    taken before anything is read, so two processes can never both read the
    same audit head and append after it. A method that writes a business row
    and an audit entry writes both in that one transaction; if anything fails,
    neither is written. :meth:`Store.transaction` lets callers group several
    calls the same way (nested calls become savepoints).

Schema
    ``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1``. The
    version lives in ``PRAGMA user_version``; every migration runs in its own
    transaction together with the version bump, so a failed migration leaves
    the file at the previous version. Opening a file with a newer version than
    this code knows is refused (an old binary must not write to a newer
    schema). ``PRAGMA application_id`` marks the file as a shardnet store, so
    pointing ``--home`` at some other SQLite file is refused too. Tables are
    ``STRICT``, so a value of the wrong type cannot be stored.

Time
    Nothing here reads the clock: every write that stamps a row takes ``now``
    (integer Unix seconds) from the caller, and uses it as the audit entry's
    time too, so the row and its audit entry always agree.

Threads
    A Store wraps one sqlite3 connection, which is bound to the thread that
    opened it. Use it from one thread (the trio thread, or a dedicated worker).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import sqlite3
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, NotRequired, Self, TypeAlias, TypedDict, cast

import sqlite_utils

from shardnet import protocol as p
from shardnet.protocol import (
    AuditChainBroken,
    AuditEntry,
    MalformedEncoding,
    Signer,
    verify_chain,
)
from shardnet.protocol import decode_audit_body as decode_body
from shardnet.protocol import encode_audit_body as encode_body
from shardnet.protocol import make_audit_entry as make_entry

# -- errors ---------------------------------------------------------------------


class StoreError(Exception):
    """Base class of the errors this module raises on purpose."""


class SchemaVersionError(StoreError):
    """The file is not a shardnet store, or was written by a newer shardnet."""


class KeysetLookupError(StoreError, LookupError):
    """A keyset id or prefix does not name exactly one keyset."""


class KeysetNotFound(KeysetLookupError):
    pass


class AmbiguousKeysetPrefix(KeysetLookupError):
    """``matches`` lists (some of) the keyset ids the prefix matches."""

    def __init__(self, prefix: str, matches: list[str], total: int) -> None:
        self.prefix = prefix
        self.matches = matches
        self.total = total
        shown = ", ".join(matches)
        more = f", … ({total} in all)" if total > len(matches) else ""
        super().__init__(
            f"keyset prefix {prefix!r} is ambiguous: it matches {shown}{more}; "
            "give more characters"
        )


class OtherNetwork(StoreError, ValueError):
    """The home belongs to another network already."""


class ShardConflict(StoreError):
    """A different shard is already held for this keyset, epoch and index."""


class OutboxItemNotFound(StoreError, LookupError):
    pass


class InvalidOutboxTransition(StoreError):
    """Only pending items can be attempted, delivered or refused."""


# -- rows -------------------------------------------------------------------------

KeysetRole = Literal["owner", "custodian"]
OutboxState = Literal["pending", "delivered", "refused", "moved"]

#: Allowed keyset statuses. Checked here rather than by a SQL CHECK so that a
#: new status needs no table rebuild.
KEYSET_STATUSES: Final = frozenset(
    {"active", "exposed", "revoked", "expired", "rotated", "destroyed"}
)
#: Custodian descriptor fields kept in their own columns.
CUSTODIAN_FIELDS: Final = ("name", "country", "city", "continent", "org")
#: Errors and refusal reasons may come from peers: keep at most this many chars.
MAX_ERROR_LEN: Final = 500

APPLICATION_ID: Final = 0x73686E74  # "shnt"


class CustodianRow(TypedDict):
    peer_id: str
    descriptor: bytes
    name: str | None
    country: str | None
    city: str | None
    continent: str | None
    org: str | None
    seq: int
    updated_at: int


class NewKeyset(TypedDict):
    """A keyset to store; ``not_after`` defaults to None, ``status`` to active."""

    keyset_id: str
    record: bytes
    owner: str
    threshold: int
    shares: int
    epoch: int
    created: int
    role: KeysetRole
    not_after: NotRequired[int | None]
    status: NotRequired[str]


class KeysetRow(TypedDict):
    keyset_id: str
    record: bytes
    owner: str
    threshold: int
    shares: int
    epoch: int
    created: int
    not_after: int | None
    status: str
    role: KeysetRole


class HeldShardRow(TypedDict):
    keyset_id: str
    epoch: int
    idx: int
    sealed: bytes
    meta: bytes
    received_at: int


class NewOutboxItem(TypedDict):
    keyset_id: str
    epoch: int
    idx: int
    custodian: str
    envelope: bytes
    reserve: NotRequired[bytes | None]
    deliver_by: NotRequired[int | None]


class OutboxRow(TypedDict):
    keyset_id: str
    epoch: int
    idx: int
    custodian: str
    envelope: bytes
    state: OutboxState
    attempts: int
    last_error: str | None
    receipt: bytes | None
    updated_at: int
    reserve: bytes | None
    deliver_by: int | None


@dataclass(frozen=True)
class AuditEvent:
    """What to log alongside a write; the store picks seq, prev and time."""

    kind: str
    body: Mapping[str, object]
    key: Signer = field(repr=False)


# -- schema ------------------------------------------------------------------------

Migration: TypeAlias = str | Callable[[sqlite_utils.Database], None]

_SCHEMA_1 = """
CREATE TABLE custodians (
    peer_id     TEXT PRIMARY KEY,
    descriptor  BLOB NOT NULL,
    name        TEXT,
    country     TEXT,
    city        TEXT,
    continent   TEXT,
    org         TEXT,
    seq         INTEGER NOT NULL CHECK (seq >= 0),
    updated_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE keysets (
    keyset_id   TEXT PRIMARY KEY CHECK (length(keyset_id) > 0),
    record      BLOB NOT NULL,
    owner       TEXT NOT NULL,
    threshold   INTEGER NOT NULL CHECK (threshold >= 1),
    shares      INTEGER NOT NULL CHECK (shares >= threshold),
    epoch       INTEGER NOT NULL CHECK (epoch >= 0),
    created     INTEGER NOT NULL,
    not_after   INTEGER,
    status      TEXT NOT NULL DEFAULT 'active',
    role        TEXT NOT NULL CHECK (role IN ('owner', 'custodian'))
) STRICT;

CREATE TABLE held_shards (
    keyset_id   TEXT NOT NULL,
    epoch       INTEGER NOT NULL CHECK (epoch >= 0),
    idx         INTEGER NOT NULL CHECK (idx >= 1),
    sealed      BLOB NOT NULL,
    meta        BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (keyset_id, epoch, idx)
) STRICT;

CREATE TABLE outbox (
    keyset_id   TEXT NOT NULL REFERENCES keysets (keyset_id),
    epoch       INTEGER NOT NULL CHECK (epoch >= 0),
    idx         INTEGER NOT NULL CHECK (idx >= 1),
    custodian   TEXT NOT NULL,
    envelope    BLOB NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'delivered', 'refused')),
    attempts    INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error  TEXT,
    receipt     BLOB,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (keyset_id, epoch, idx, custodian),
    CHECK ((state = 'delivered') = (receipt IS NOT NULL))
) STRICT;

CREATE INDEX outbox_by_state ON outbox (state, custodian);

CREATE TABLE audit (
    seq     INTEGER PRIMARY KEY CHECK (seq >= 1),
    prev    BLOB NOT NULL,
    time    INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    body    BLOB NOT NULL,
    signer  BLOB NOT NULL,
    hash    BLOB NOT NULL,
    sig     BLOB NOT NULL
) STRICT;

-- Guards against our own bugs, not against an attacker with the file: the
-- hash chain and signatures are what detect tampering.
CREATE TRIGGER audit_append_next BEFORE INSERT ON audit
WHEN NEW.seq != (SELECT coalesce(max(seq), 0) + 1 FROM audit)
BEGIN
    SELECT RAISE(ABORT, 'audit log: entries must be appended in sequence');
END;

CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only');
END;

CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only');
END;

CREATE TABLE kv (
    key     TEXT PRIMARY KEY,
    value   BLOB NOT NULL
) STRICT;
"""

#: ``MIGRATIONS[i]`` upgrades the schema from version ``i`` to ``i + 1``:
#: a SQL script or a function of the database. Append only; never edit one
#: that has shipped.
# Reconstruction requests and approval votes (signed records, as received).
_SCHEMA_2 = """
CREATE TABLE requests (
    request_id  TEXT PRIMARY KEY CHECK (length(request_id) = 32),
    keyset_id   TEXT NOT NULL,
    requester   TEXT NOT NULL,
    record      BLOB NOT NULL,
    created     INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    outcome     TEXT,
    received_at INTEGER NOT NULL
) STRICT;

CREATE INDEX requests_by_expiry ON requests (not_after);

CREATE TABLE votes (
    request_id  TEXT NOT NULL REFERENCES requests (request_id),
    approver    TEXT NOT NULL,
    decision    TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
    record      BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (request_id, approver)
) STRICT;
"""

# Approvers that hold no shard still need the keyset record (approvers, quorum,
# policy): the owner pushes it to them, through a small outbox of its own.
_SCHEMA_3 = """
CREATE TABLE known_keysets (
    keyset_id   TEXT PRIMARY KEY,
    record      BLOB NOT NULL,
    owner       TEXT NOT NULL,
    received_at INTEGER NOT NULL
) STRICT;

CREATE TABLE notices (
    keyset_id   TEXT NOT NULL REFERENCES keysets (keyset_id),
    peer        TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'refused')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (keyset_id, peer)
) STRICT;
"""

# Two different signed votes of one approver on one request: the approver is void
# for that request, and the pair is kept as signed evidence of its equivocation.
_SCHEMA_4 = """
CREATE TABLE equivocations (
    request_id  TEXT NOT NULL REFERENCES requests (request_id),
    approver    TEXT NOT NULL,
    first       BLOB NOT NULL,
    second      BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (request_id, approver)
) STRICT;
"""

# The network this node belongs to (its signed genesis), the co-signed membership
# records in effect (the latest admission and the latest revocation per peer: a
# newer one replaces the row), and proposals that still lack signatures.
_SCHEMA_5 = """
CREATE TABLE network (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    network_id  BLOB NOT NULL CHECK (length(network_id) = 16),
    genesis     BLOB NOT NULL,
    joined_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE membership (
    peer_id     TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('admission', 'revocation')),
    record_id   BLOB NOT NULL CHECK (length(record_id) = 16),
    record      BLOB NOT NULL,
    time        INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (peer_id, kind)
) STRICT;

CREATE TABLE proposals (
    proposal_id TEXT PRIMARY KEY CHECK (length(proposal_id) = 32),
    kind        TEXT NOT NULL CHECK (kind IN ('admission', 'revocation')),
    peer_id     TEXT NOT NULL,
    record      BLOB NOT NULL,
    signatures  INTEGER NOT NULL CHECK (signatures >= 1),
    created     INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;
"""

# Re-placement of shards not delivered in time: each outbox slot may keep, sealed at
# rest to the owner itself, the share it carries (``reserve``) until ``deliver_by``;
# the state 'moved' is a slot whose shard went to another custodian instead. A
# reserve only ever lives in a pending slot (the CHECK): delivering, refusing or
# moving the slot erases it. The table is rebuilt for the new CHECKs.
_SCHEMA_6 = """
CREATE TABLE outbox_v6 (
    keyset_id   TEXT NOT NULL REFERENCES keysets (keyset_id),
    epoch       INTEGER NOT NULL CHECK (epoch >= 0),
    idx         INTEGER NOT NULL CHECK (idx >= 1),
    custodian   TEXT NOT NULL,
    envelope    BLOB NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'delivered', 'refused', 'moved')),
    attempts    INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error  TEXT,
    receipt     BLOB,
    updated_at  INTEGER NOT NULL,
    reserve     BLOB,
    deliver_by  INTEGER,
    PRIMARY KEY (keyset_id, epoch, idx, custodian),
    CHECK ((state = 'delivered') = (receipt IS NOT NULL)),
    CHECK (reserve IS NULL OR state = 'pending')
) STRICT;

INSERT INTO outbox_v6 (keyset_id, epoch, idx, custodian, envelope, state, attempts, last_error, receipt,
                       updated_at)
    SELECT keyset_id, epoch, idx, custodian, envelope, state, attempts, last_error, receipt, updated_at
    FROM outbox;

DROP INDEX outbox_by_state;
DROP TABLE outbox;
ALTER TABLE outbox_v6 RENAME TO outbox;
CREATE INDEX outbox_by_state ON outbox (state, custodian);
"""

# Epoch changes (refresh, reshare). ``epochs``: the co-signed epoch records in force, a
# chain per keyset (the keyset record itself is epoch 0 and stays in ``keysets`` or
# ``known_keysets``). ``pending_shares``: a new holder's share of an epoch not committed
# yet, sealed to itself; dropped when the round's deadline passes. ``epoch_locks``: the
# round a new holder echoes and the record an authority signs, one per epoch. ``erasures``: signed
# receipts of old shares erased (the coordinator keeps everyone's, a holder its own).
# ``epoch_notices``: commits a coordinator still has to hand to a participant.
_SCHEMA_7 = """
CREATE TABLE epochs (
    keyset_id   TEXT NOT NULL,
    epoch       INTEGER NOT NULL CHECK (epoch >= 1),
    action      TEXT NOT NULL CHECK (action IN ('refresh', 'reshare')),
    record      BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (keyset_id, epoch)
) STRICT;

CREATE TABLE pending_shares (
    keyset_id   TEXT NOT NULL,
    epoch       INTEGER NOT NULL CHECK (epoch >= 1),
    idx         INTEGER NOT NULL CHECK (idx >= 1),
    record      BLOB NOT NULL CHECK (length(record) = 32),
    sealed      BLOB NOT NULL,
    meta        BLOB NOT NULL,
    deadline    INTEGER NOT NULL,
    coordinator TEXT NOT NULL,
    PRIMARY KEY (keyset_id, epoch)
) STRICT;

CREATE INDEX pending_shares_by_coordinator ON pending_shares (coordinator);

-- What this node promised for an epoch: 'echo', the round it echoed until that round's
-- deadline; 'sign', the one record of that epoch it signs as an authority (for good).
CREATE TABLE epoch_locks (
    keyset_id   TEXT NOT NULL,
    epoch       INTEGER NOT NULL CHECK (epoch >= 1),
    kind        TEXT NOT NULL CHECK (kind IN ('echo', 'sign')),
    value       BLOB NOT NULL,
    until       INTEGER,
    PRIMARY KEY (keyset_id, epoch, kind)
) STRICT;

CREATE TABLE erasures (
    keyset_id   TEXT NOT NULL,
    epoch       INTEGER NOT NULL CHECK (epoch >= 0),
    idx         INTEGER NOT NULL CHECK (idx >= 1),
    holder      TEXT NOT NULL,
    record      BLOB NOT NULL CHECK (length(record) = 32),
    receipt     BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (keyset_id, epoch, idx, holder)
) STRICT;

CREATE TABLE epoch_notices (
    keyset_id   TEXT NOT NULL,
    epoch       INTEGER NOT NULL,
    peer        TEXT NOT NULL,
    frame       BLOB NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (keyset_id, epoch, peer)
) STRICT;
"""

# A keyset's rules after import (``protocol/_keyset_rules.py``): policy versions and
# revocation lists, co-signed by its authorities. ``in_force``: the one record of each
# kind per keyset that applies; the other rows are proposals still short of the quorum
# (only a keyset's authorities keep those).
_SCHEMA_8 = """
CREATE TABLE keyset_rules (
    proposal_id TEXT PRIMARY KEY CHECK (length(proposal_id) = 32),
    keyset_id   TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('policy', 'revocations')),
    version     INTEGER NOT NULL CHECK (version >= 1),
    record      BLOB NOT NULL,
    signatures  INTEGER NOT NULL CHECK (signatures >= 1),
    in_force    INTEGER NOT NULL CHECK (in_force IN (0, 1)),
    owner       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

CREATE UNIQUE INDEX keyset_rules_in_force ON keyset_rules (keyset_id, kind) WHERE in_force = 1;
CREATE INDEX keyset_rules_by_keyset ON keyset_rules (keyset_id, in_force);
"""

# Who signed each open rule proposal (" id1 id2 ", so that one id is matched whole): room
# is counted per signer, so that one hostile authority cannot fill a keyset's room.
# Proposals kept before this have '' (counted for nobody; they expire within 7 days).
_SCHEMA_9 = """
ALTER TABLE keyset_rules ADD COLUMN signers TEXT NOT NULL DEFAULT '';
"""

# The quotas count per peer on every record a peer sends (``_limits``): without these an
# owner's keysets, a requester's open requests and an owner's known keysets are full scans,
# and a hostile peer's flood makes each next check slower.
_SCHEMA_10 = """
CREATE INDEX keysets_by_owner ON keysets (owner);
CREATE INDEX requests_by_requester ON requests (requester, not_after);
CREATE INDEX known_keysets_by_owner ON known_keysets (owner);
"""

# The audit log as a Merkle tree log (RFC 6962, ``protocol/_tlog.py``): the hash of every
# complete subtree, (level, index), written with the entry that completes it. The
# migration builds the tree over the entries already there.
_AUDIT_TREE = """
CREATE TABLE audit_tree (
    level   INTEGER NOT NULL CHECK (level >= 0),
    idx     INTEGER NOT NULL CHECK (idx >= 0),
    hash    BLOB NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER audit_tree_no_update BEFORE UPDATE ON audit_tree
BEGIN
    SELECT RAISE(ABORT, 'audit tree is append-only');
END;

CREATE TRIGGER audit_tree_no_delete BEFORE DELETE ON audit_tree
BEGIN
    SELECT RAISE(ABORT, 'audit tree is append-only');
END;
"""


def _schema_11(db: sqlite_utils.Database) -> None:
    for statement in _statements(_AUDIT_TREE):
        db.execute(statement)
    tree = p.tlog.MemoryTree()  # the log's hashes, built once (the log is small next to memory)
    for row in db.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY seq"):
        entry = _audit_from_row(row)
        if entry.seq != tree.size + 1:
            raise SchemaVersionError(f"the audit log has no entry {tree.size + 1}: run 'shardnet audit verify'")
        tree.append(p.audit_log.leaf_bytes(entry))
    db.conn.executemany("INSERT INTO audit_tree (level, idx, hash) VALUES (?, ?, ?)",
                        [(level, idx, h) for (level, idx), h in sorted(tree.hashes.items())])


MIGRATIONS: Final[tuple[Migration, ...]] = (_SCHEMA_1, _SCHEMA_2, _SCHEMA_3, _SCHEMA_4, _SCHEMA_5, _SCHEMA_6,
                                            _SCHEMA_7, _SCHEMA_8, _SCHEMA_9, _SCHEMA_10, _schema_11)
SCHEMA_VERSION: Final = len(MIGRATIONS)


log = logging.getLogger("shardnet.store")
_savepoints = itertools.count(1)  # savepoint names: unique, and nothing secret about them


@contextlib.contextmanager
def _immediate(db: sqlite_utils.Database) -> Iterator[None]:
    """A ``BEGIN IMMEDIATE`` transaction, or a savepoint inside an open one."""
    conn = db.conn
    if conn.in_transaction:
        name = f"shardnet_{next(_savepoints)}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            if conn.in_transaction:
                conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                conn.execute(f"RELEASE SAVEPOINT {name}")
            raise
        conn.execute(f"RELEASE SAVEPOINT {name}")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


@functools.lru_cache(maxsize=64)
def _statements(script: str) -> tuple[str, ...]:
    """The statements of a migration script, split once per process. (sqlite-utils'
    executescript splits character by character on every call: most of the cost of
    opening a new store, which the grid does a thousand times.)"""
    out, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\n;"):
                out.append(pending.strip())
            pending = ""
    if pending.strip().rstrip(";").strip():
        raise ValueError(f"incomplete statement in a migration: {pending.strip()[:60]!r}")
    return tuple(out)


def _pragma_int(db: sqlite_utils.Database, name: str) -> int:
    return int(db.execute(f"PRAGMA {name}").fetchone()[0])


def migrate(
    db: sqlite_utils.Database, migrations: Sequence[Migration] = MIGRATIONS, *, where: str = ""
) -> int:
    """Bring ``db`` up to ``len(migrations)``; return the version it is now at.

    Each step runs in its own transaction with its ``user_version`` bump, and
    re-reads the version under the write lock, so concurrent openers are safe.
    Raises SchemaVersionError for a newer or a foreign database.
    """
    known = len(migrations)
    label = where or "database"
    while True:
        with _immediate(db):
            version = _pragma_int(db, "user_version")
            app_id = _pragma_int(db, "application_id")
            if app_id not in (0, APPLICATION_ID) or (version > 0 and app_id != APPLICATION_ID):
                raise SchemaVersionError(f"{label} is not a shardnet store")
            if version > known:
                raise SchemaVersionError(
                    f"{label} has schema version {version}, but this shardnet only knows "
                    f"versions up to {known}: it was written by a newer shardnet; upgrade"
                )
            if version == known:
                return version
            if version == 0:
                tables = db.execute(
                    "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
                ).fetchone()[0]
                if tables:
                    raise SchemaVersionError(
                        f"{label} is not a shardnet store (it already holds other tables); "
                        f"is --home the node's home?"
                    )
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            step = migrations[version]
            if isinstance(step, str):
                for statement in _statements(step):
                    db.execute(statement)
            else:
                step(db)
            db.execute(f"PRAGMA user_version = {version + 1}")


# -- the store -----------------------------------------------------------------


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_LEN else text[: MAX_ERROR_LEN - 1] + "…"


def _check_status(status: str) -> None:
    if status not in KEYSET_STATUSES:
        raise ValueError(
            f"unknown keyset status {status!r}; expected one of {', '.join(sorted(KEYSET_STATUSES))}"
        )


def _check_slot(epoch: int, idx: int | None = None) -> None:
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, not {epoch}")
    if idx is not None and idx < 1:
        raise ValueError(f"share index must be >= 1, not {idx} (index 0 is the secret)")


def _keyset_record(row: NewKeyset) -> dict[str, Any]:
    status = row.get("status", "active")
    _check_status(status)
    if row["role"] not in ("owner", "custodian"):
        raise ValueError(f"keyset role must be 'owner' or 'custodian', not {row['role']!r}")
    if not 1 <= row["threshold"] <= row["shares"]:
        raise ValueError(
            f"keyset threshold {row['threshold']} must be between 1 and shares {row['shares']}"
        )
    _check_slot(row["epoch"])
    return {
        "keyset_id": row["keyset_id"],
        "record": row["record"],
        "owner": row["owner"],
        "threshold": row["threshold"],
        "shares": row["shares"],
        "epoch": row["epoch"],
        "created": row["created"],
        "not_after": row.get("not_after"),
        "status": status,
        "role": row["role"],
    }


def _audit_from_row(row: tuple[Any, ...]) -> AuditEntry:
    seq, prev, time, kind, body, signer, digest, sig = row
    try:
        decoded = decode_body(body)
    except MalformedEncoding as exc:
        raise AuditChainBroken(seq, f"stored body is unreadable ({exc}; entry was edited)") from None
    return AuditEntry(seq, prev, time, kind, decoded, signer, digest, sig)


_AUDIT_COLUMNS = "seq, prev, time, kind, body, signer, hash, sig"
CHECKPOINT_KEY = "audit.checkpoint"
REST_WRAP_KEY = "rest_wrap"  # kv: the at-rest key epoch the stored shards are sealed to
_OUTBOX_ORDER = "keyset_id, epoch, idx, custodian"


class Store:
    """The node's persistent state. Open with ``Store(path)``; close when done.

    Raises StoreError if the file cannot be opened as a shardnet store, and
    SchemaVersionError if it is foreign or newer than this code.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 10.0) -> None:
        """Open (creating and migrating as needed) the store at ``path``;
        ``":memory:"`` gives a private in-memory store that vanishes on close."""
        self.path = os.fspath(path)
        self._closed = True
        conn = sqlite3.connect(self.path, timeout=busy_timeout)
        try:
            # execute_plugins=False: no third-party sqlite-utils plugin gets to
            # touch the connection that holds key shards.
            self._db = sqlite_utils.Database(conn, execute_plugins=False)
            self._configure()
            migrate(self._db, where=self.path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"cannot open {self.path}: {exc} (damaged? restore it from a backup, or move it "
                             f"away and make a new home with 'shardnet init')") from exc
        except BaseException:
            conn.close()
            raise
        self._closed = False

    def _configure(self) -> None:
        db = self._db
        # ":memory:" (the grid's nodes, tests) has no file to journal: SQLite
        # reports "memory" for it, and nothing survives the process anyway.
        want = "memory" if self.path == ":memory:" else "wal"
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != want:
            raise StoreError(f"cannot put {self.path} in WAL mode (got {mode!r})")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA trusted_schema=OFF")
        db.execute("PRAGMA secure_delete=ON")

    def close(self) -> None:
        """Close the file (idempotent). An open transaction is rolled back."""
        if self._closed:
            return
        self._closed = True
        if self._db.conn.in_transaction:
            self._db.conn.execute("ROLLBACK")
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return _pragma_int(self._db, "user_version")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes: all of them commit, or none do.

        The outermost block is ``BEGIN IMMEDIATE``; nested blocks (including the
        store's own methods) are savepoints. An exception rolls back its block.
        """
        with _immediate(self._db):
            yield

    # -- custodians ------------------------------------------------------------

    def upsert_custodian(
        self,
        peer_id: str,
        descriptor: bytes,
        fields: Mapping[str, str | None],
        seq: int,
        *,
        now: int,
    ) -> bool:
        """Store a custodian descriptor unless one with an equal or higher seq is held.

        ``descriptor`` is the signed descriptor, verified by the caller;
        ``fields`` holds any of CUSTODIAN_FIELDS, taken from it. Returns True if
        the row was inserted or replaced, False if it was stale.
        """
        unknown = set(fields) - set(CUSTODIAN_FIELDS)
        if unknown:
            raise ValueError(f"unknown custodian fields: {', '.join(sorted(unknown))}")
        values = {name: fields.get(name) for name in CUSTODIAN_FIELDS}
        with self.transaction():
            cursor = self._db.execute(
                """
                INSERT INTO custodians
                    (peer_id, descriptor, name, country, city, continent, org, seq, updated_at)
                VALUES
                    (:peer_id, :descriptor, :name, :country, :city, :continent, :org, :seq, :now)
                ON CONFLICT (peer_id) DO UPDATE SET
                    descriptor = excluded.descriptor, name = excluded.name,
                    country = excluded.country, city = excluded.city,
                    continent = excluded.continent, org = excluded.org,
                    seq = excluded.seq, updated_at = excluded.updated_at
                WHERE excluded.seq > custodians.seq
                """,
                {"peer_id": peer_id, "descriptor": descriptor, "seq": seq, "now": now, **values},
            )
            return cursor.rowcount == 1

    def custodians(self) -> list[CustodianRow]:
        return [
            cast(CustodianRow, row)
            for row in self._rows("custodians", order_by="peer_id")
        ]

    def custodian(self, peer_id: str) -> CustodianRow | None:
        rows = list(self._rows("custodians", "peer_id = ?", [peer_id]))
        return cast(CustodianRow, rows[0]) if rows else None

    # -- keysets ---------------------------------------------------------------

    def put_keyset(
        self, keyset: NewKeyset, *, now: int, audit: AuditEvent | None = None
    ) -> bool:
        """Insert a keyset, or update it to a newer epoch; return True if written.

        On an epoch update the record, threshold, shares, epoch and not-after
        change; status, role and created stay. An older or equal epoch is
        ignored (False). A different owner for an existing id is a ValueError.
        With ``audit``, an audit entry at time ``now`` is appended if written.
        """
        record = _keyset_record(keyset)
        with self.transaction():
            current = self.keyset(record["keyset_id"])
            if current is not None:
                if current["owner"] != record["owner"]:
                    raise ValueError(
                        f"keyset {record['keyset_id']} belongs to {current['owner']}, "
                        f"not {record['owner']}"
                    )
                if record["epoch"] <= current["epoch"]:
                    return False
                self._db.table("keysets").update(
                    record["keyset_id"],
                    {k: record[k] for k in ("record", "threshold", "shares", "epoch",
                                            "not_after")},
                )
            else:
                self._db.table("keysets").insert(record)
            if audit is not None:
                self._append(audit.kind, audit.body, now, audit.key)
            return True

    def _rows(self, table: str, where: str | None = None, args: Sequence[Any] | dict[str, Any] = (), *,
              order_by: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """``SELECT *`` of one table, as dicts (sqlite-utils' ``rows_where`` asks SQLite for the
        table and view names on every call: the cost of the hot reads twice over)."""
        sql = f"SELECT * FROM [{table}]"
        if where:
            sql += f" WHERE {where}"
        if order_by:
            sql += f" ORDER BY {order_by}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        cur = self._db.execute(sql, args)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def keyset(self, keyset_id: str) -> KeysetRow | None:
        rows = list(self._rows("keysets", "keyset_id = ?", [keyset_id]))
        return cast(KeysetRow, rows[0]) if rows else None

    def keysets(
        self, *, role: KeysetRole | None = None, status: str | None = None
    ) -> list[KeysetRow]:
        clauses: list[str] = []
        args: list[str] = []
        if role is not None:
            clauses.append("role = ?")
            args.append(role)
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        rows = self._rows("keysets", " AND ".join(clauses) or None, args, order_by="created, keyset_id")
        return [cast(KeysetRow, row) for row in rows]

    def find_keyset(self, prefix: str) -> KeysetRow:
        """The one keyset whose id is ``prefix`` or starts with it.

        An exact id always wins. Raises KeysetNotFound or AmbiguousKeysetPrefix
        (both LookupError) with a message fit for the user, and ValueError for
        an empty prefix.
        """
        if not prefix:
            raise ValueError("keyset prefix must not be empty")
        exact = self.keyset(prefix)
        if exact is not None:
            return exact
        where = "substr(keyset_id, 1, length(:p)) = :p"
        total = self._db.execute(
            f"SELECT count(*) FROM keysets WHERE {where}", {"p": prefix}
        ).fetchone()[0]
        if total == 0:
            raise KeysetNotFound(f"no keyset id starts with {prefix!r}")
        rows = list(
            self._rows("keysets", where, {"p": prefix}, order_by="keyset_id", limit=5)
        )
        if total > 1:
            raise AmbiguousKeysetPrefix(prefix, [r["keyset_id"] for r in rows], total)
        return cast(KeysetRow, rows[0])

    def set_keyset_status(
        self, keyset_id: str, status: str, *, now: int, audit: AuditEvent | None = None
    ) -> AuditEntry | None:
        """Change a keyset's status (one of KEYSET_STATUSES).

        With ``audit``, an audit entry at time ``now`` is written in the same
        transaction and returned. Raises KeysetNotFound for an unknown id.
        """
        _check_status(status)
        with self.transaction():
            cursor = self._db.execute(
                "UPDATE keysets SET status = ? WHERE keyset_id = ?", [status, keyset_id]
            )
            if cursor.rowcount != 1:
                raise KeysetNotFound(f"no keyset {keyset_id!r}")
            if audit is None:
                return None
            return self._append(audit.kind, audit.body, now, audit.key)

    # -- held shards (custodian side) -------------------------------------------

    def put_held_shard(
        self,
        keyset_id: str,
        epoch: int,
        idx: int,
        *,
        sealed: bytes,
        meta: bytes,
        now: int,
        audit: AuditEvent,
        keyset: NewKeyset | None = None,
    ) -> AuditEntry | None:
        """Keep a delivered shard, with its audit entry, in one transaction.

        ``now`` is stored as ``received_at`` and is the audit entry's time.
        ``keyset``, if given, is stored too unless that keyset id is already
        known. Redelivery of the identical shard is a no-op that returns None
        (no second audit entry); a different shard for the same slot raises
        ShardConflict. The caller has verified the shard before calling.
        """
        _check_slot(epoch, idx)
        with self.transaction():
            held = self.held_shard(keyset_id, epoch, idx)
            if held is not None:
                if held["sealed"] == sealed and held["meta"] == meta:
                    return None
                raise ShardConflict(
                    f"a different shard is already held for keyset {keyset_id} "
                    f"epoch {epoch} index {idx}"
                )
            if keyset is not None:
                if keyset["keyset_id"] != keyset_id:
                    raise ValueError("keyset row does not match the shard's keyset id")
                record = _keyset_record(keyset)
                if self.keyset(keyset_id) is None:
                    self._db.table("keysets").insert(record)
            self._db.table("held_shards").insert(
                {
                    "keyset_id": keyset_id,
                    "epoch": epoch,
                    "idx": idx,
                    "sealed": sealed,
                    "meta": meta,
                    "received_at": now,
                }
            )
            return self._append(audit.kind, audit.body, now, audit.key)

    def held_shards(self, keyset_id: str | None = None) -> list[HeldShardRow]:
        order = "keyset_id, epoch, idx"
        if keyset_id is None:
            rows = self._rows("held_shards", order_by=order)
        else:
            rows = self._rows("held_shards", "keyset_id = ?", [keyset_id], order_by=order)
        return [cast(HeldShardRow, row) for row in rows]

    def held_shard(self, keyset_id: str, epoch: int, idx: int) -> HeldShardRow | None:
        rows = list(
            self._rows("held_shards", "keyset_id = ? AND epoch = ? AND idx = ?", [keyset_id, epoch, idx])
        )
        return cast(HeldShardRow, rows[0]) if rows else None

    # -- outbox (owner side) ------------------------------------------------------

    def import_keyset(
        self,
        keyset: NewKeyset,
        outbox: Iterable[NewOutboxItem],
        audit: AuditEvent,
        *,
        now: int,
        notices: Iterable[str] = (),
        token: tuple[str, bytes] | None = None,
    ) -> AuditEntry:
        """Store a newly imported keyset, its pending deliveries and its audit
        entry in ONE transaction; return the audit entry. ``token``: a kv key (the
        import's idempotency token) and its value, in the same transaction; the key
        must be new.

        ``keyset`` must have role 'owner' and a new id; every outbox item must
        belong to it (same id and epoch, 1 <= idx <= shares). Raises ValueError
        otherwise, and nothing is written.
        """
        if keyset["role"] != "owner":
            raise ValueError("an imported keyset must have role 'owner'")
        with self.transaction():
            if self.keyset(keyset["keyset_id"]) is not None:
                raise ValueError(f"keyset {keyset['keyset_id']} already exists")
            if token is not None:
                made = self.get_kv(token[0])
                if made is not None:
                    raise ValueError(f"this import token already made keyset {made.decode().split()[0]}")
                self._db.execute("INSERT INTO kv (key, value) VALUES (?, ?)", list(token))
            self._db.table("keysets").insert(_keyset_record(keyset))
            for item in outbox:
                if item["keyset_id"] != keyset["keyset_id"] or item["epoch"] != keyset["epoch"]:
                    raise ValueError(
                        f"outbox item for {item['keyset_id']} epoch {item['epoch']} does not "
                        f"belong to keyset {keyset['keyset_id']} epoch {keyset['epoch']}"
                    )
                if not 1 <= item["idx"] <= keyset["shares"]:
                    raise ValueError(
                        f"outbox index {item['idx']} is outside 1..{keyset['shares']}"
                    )
                self._insert_outbox(item, now)
            for peer in notices:
                self._db.execute(
                    "INSERT INTO notices (keyset_id, peer, updated_at) VALUES (?, ?, ?)",
                    [keyset["keyset_id"], peer, now],
                )
            return self._append(audit.kind, audit.body, now, audit.key)

    # -- keyset notices to approvers (owner side) and known keysets (approver side) ----

    def pending_notices(self) -> list[dict[str, Any]]:
        return list(self._db.query("SELECT * FROM notices WHERE state = 'pending' ORDER BY updated_at"))

    def notices(self, keyset_id: str) -> list[dict[str, Any]]:
        return list(self._db.query("SELECT * FROM notices WHERE keyset_id = ? ORDER BY peer", [keyset_id]))

    def mark_notice(self, keyset_id: str, peer: str, state: str, *, error: str | None, now: int) -> None:
        with self.transaction():
            self._db.execute(
                "UPDATE notices SET state = ?, last_error = ?, attempts = attempts + 1, updated_at = ? "
                "WHERE keyset_id = ? AND peer = ?", [state, _clip(error) if error else None, now, keyset_id, peer],
            )

    def put_known_keyset(self, keyset_id: str, record: bytes, owner: str, *, now: int,
                         audit: AuditEvent | None = None) -> bool:
        with self.transaction():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO known_keysets (keyset_id, record, owner, received_at) VALUES (?, ?, ?, ?)",
                [keyset_id, record, owner, now],
            )
            if cur.rowcount and audit is not None:
                self._append(audit.kind, audit.body, now, audit.key)
            return bool(cur.rowcount)

    def known_keyset(self, keyset_id: str) -> bytes | None:
        row = self._db.execute("SELECT record FROM known_keysets WHERE keyset_id = ?", [keyset_id]).fetchone()
        return None if row is None else bytes(row[0])

    def known_keysets_of(self, owner: str) -> int:
        """How many keyset records of ``owner`` this node keeps as an approver or authority."""
        return int(self._db.execute("SELECT count(*) FROM known_keysets WHERE owner = ?", [owner]).fetchone()[0])

    def known_keysets(self) -> list[dict[str, Any]]:
        return list(self._db.query("SELECT * FROM known_keysets ORDER BY received_at"))

    def drop_known_keysets(self, keyset_ids: Sequence[str]) -> int:
        """Forget the records of these keysets this node kept as an approver or authority,
        with their epoch records and rules; a keyset it owns or holds a shard of is kept
        whole. How many records went."""
        gone = 0
        with self.transaction():
            for kid in keyset_ids:
                if self.keyset(kid) is not None:
                    continue
                gone += self._db.execute("DELETE FROM known_keysets WHERE keyset_id = ?", [kid]).rowcount
                self._db.execute("DELETE FROM epochs WHERE keyset_id = ?", [kid])
                self._db.execute("DELETE FROM keyset_rules WHERE keyset_id = ?", [kid])
        return gone

    def enqueue(
        self, items: Iterable[NewOutboxItem], *, now: int, audit: AuditEvent | None = None
    ) -> AuditEntry | None:
        """Queue deliveries for keysets already stored, all in one transaction.

        Raises ValueError, writing nothing, for an unknown keyset or an item
        that is already queued.
        """
        with self.transaction():
            for item in items:
                self._insert_outbox(item, now)
            if audit is None:
                return None
            return self._append(audit.kind, audit.body, now, audit.key)

    def _insert_outbox(self, item: NewOutboxItem, now: int) -> None:
        try:
            self._db.execute(
                "INSERT INTO outbox (keyset_id, epoch, idx, custodian, envelope, updated_at, reserve, deliver_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [item["keyset_id"], item["epoch"], item["idx"], item["custodian"],
                 item["envelope"], now, item.get("reserve"), item.get("deliver_by")],
            )
        except sqlite3.IntegrityError as exc:
            slot = f"{item['keyset_id']} epoch {item['epoch']} #{item['idx']} → {item['custodian']}"
            if "FOREIGN KEY" in str(exc):
                raise ValueError(f"outbox item {slot}: unknown keyset") from None
            if "UNIQUE" in str(exc):
                raise ValueError(f"outbox item {slot} is already queued") from None
            raise ValueError(f"outbox item {slot} is invalid: {exc}") from None

    def pending(self, custodian: str | None = None) -> list[OutboxRow]:
        """Pending deliveries, least recently touched first."""
        order = f"updated_at, {_OUTBOX_ORDER}"
        if custodian is None:
            rows = self._rows("outbox", "state = 'pending'", order_by=order)
        else:
            rows = self._rows("outbox", "state = 'pending' AND custodian = ?", [custodian], order_by=order)
        return [cast(OutboxRow, row) for row in rows]

    def outbox(self, keyset_id: str) -> list[OutboxRow]:
        rows = self._rows("outbox", "keyset_id = ?", [keyset_id], order_by=_OUTBOX_ORDER)
        return [cast(OutboxRow, row) for row in rows]

    def _pending_item(self, keyset_id: str, epoch: int, idx: int, custodian: str,
                      action: str) -> list[Any]:
        key = [keyset_id, epoch, idx, custodian]
        row = self._db.execute(
            "SELECT state FROM outbox "
            "WHERE keyset_id = ? AND epoch = ? AND idx = ? AND custodian = ?",
            key,
        ).fetchone()
        slot = f"{keyset_id} epoch {epoch} #{idx} → {custodian}"
        if row is None:
            raise OutboxItemNotFound(f"no outbox item {slot}")
        if row[0] != "pending":
            raise InvalidOutboxTransition(f"outbox item {slot} is {row[0]}; cannot {action} it")
        return key

    def mark_delivered(
        self,
        keyset_id: str,
        epoch: int,
        idx: int,
        custodian: str,
        *,
        receipt: bytes,
        now: int,
        audit: AuditEvent,
    ) -> AuditEntry:
        """pending → delivered, storing the custodian's (verified) receipt, with
        its audit entry in the same transaction. The sealed shard sent is not kept."""
        with self.transaction():
            key = self._pending_item(keyset_id, epoch, idx, custodian, "mark delivered")
            self._db.execute(
                "UPDATE outbox SET state = 'delivered', receipt = ?, last_error = NULL, reserve = NULL, "
                "envelope = x'', updated_at = ? WHERE keyset_id = ? AND epoch = ? AND idx = ? AND custodian = ?",
                [receipt, now, *key],
            )
            return self._append(audit.kind, audit.body, now, audit.key)

    def mark_refused(
        self,
        keyset_id: str,
        epoch: int,
        idx: int,
        custodian: str,
        *,
        reason: str,
        now: int,
        audit: AuditEvent,
    ) -> AuditEntry:
        """pending → refused (final), keeping ``reason``, with its audit entry."""
        with self.transaction():
            key = self._pending_item(keyset_id, epoch, idx, custodian, "mark refused")
            self._db.execute(
                "UPDATE outbox SET state = 'refused', last_error = ?, reserve = NULL, updated_at = ? "
                "WHERE keyset_id = ? AND epoch = ? AND idx = ? AND custodian = ?",
                [_clip(reason), now, *key],
            )
            return self._append(audit.kind, audit.body, now, audit.key)

    def move_slot(
        self, old: OutboxRow, new: NewOutboxItem, *, record: bytes, now: int, audit: AuditEvent,
        notices: Iterable[str] = (),
    ) -> AuditEntry:
        """pending → moved (final) for ``old``, whose shard goes to ``new`` instead, in one
        transaction with the owner's amended keyset record (same epoch, the new holder
        named), a pending notice of it to each of ``notices`` (the holders and approvers
        that hold the old one) and the audit entry. The old slot's reserve is erased."""
        with self.transaction():
            key = self._pending_item(old["keyset_id"], old["epoch"], old["idx"], old["custodian"], "move")
            if (new["keyset_id"], new["epoch"], new["idx"]) != (old["keyset_id"], old["epoch"], old["idx"]):
                raise ValueError("a moved shard keeps its keyset, epoch and index")
            self._db.execute(
                "UPDATE outbox SET state = 'moved', last_error = ?, reserve = NULL, updated_at = ? "
                "WHERE keyset_id = ? AND epoch = ? AND idx = ? AND custodian = ?",
                [_clip(f"moved to {new['custodian']}"), now, *key],
            )
            self._insert_outbox(new, now)
            self._db.execute("UPDATE keysets SET record = ? WHERE keyset_id = ? AND role = 'owner'",
                             [record, old["keyset_id"]])
            for peer in notices:
                self._db.execute(
                    "INSERT INTO notices (keyset_id, peer, updated_at) VALUES (?, ?, ?) ON CONFLICT "
                    "(keyset_id, peer) DO UPDATE SET state = 'pending', last_error = NULL, attempts = 0, updated_at = ?",
                    [old["keyset_id"], peer, now, now])
            return self._append(audit.kind, audit.body, now, audit.key)

    def drop_reserve(self, keyset_id: str, epoch: int, idx: int, custodian: str, *, now: int,
                     error: str, audit: AuditEvent) -> None:
        """Erase a pending slot's reserve (it may not be re-placed any more); the slot stays
        pending for its custodian, with ``error`` as its last error."""
        with self.transaction():
            key = self._pending_item(keyset_id, epoch, idx, custodian, "drop the reserve of")
            self._db.execute(
                "UPDATE outbox SET reserve = NULL, deliver_by = NULL, last_error = ?, updated_at = ? "
                "WHERE keyset_id = ? AND epoch = ? AND idx = ? AND custodian = ?", [error[:400], now, *key])
            self._append(audit.kind, audit.body, now, audit.key)

    def amend_keyset(self, keyset_id: str, record: bytes, *, now: int, audit: AuditEvent) -> None:
        """Replace a keyset's record by its owner's amendment of the same epoch (checked by
        the caller: same owner, same epoch, a higher revision), with its audit entry."""
        with self.transaction():
            if self._db.execute("UPDATE keysets SET record = ? WHERE keyset_id = ?",
                                [record, keyset_id]).rowcount != 1:
                raise KeysetNotFound(f"no keyset {keyset_id}")
            self._append(audit.kind, audit.body, now, audit.key)

    def amend_known_keyset(self, keyset_id: str, record: bytes, *, now: int, audit: AuditEvent) -> None:
        """The same, for a keyset this node only approves."""
        with self.transaction():
            if self._db.execute("UPDATE known_keysets SET record = ? WHERE keyset_id = ?",
                                [record, keyset_id]).rowcount != 1:
                raise KeysetNotFound(f"no known keyset {keyset_id}")
            self._append(audit.kind, audit.body, now, audit.key)

    def postpone(self, keyset_id: str, epoch: int, idx: int, custodian: str, *, deliver_by: int,
                 error: str, now: int) -> None:
        """A pending slot that could not be re-placed yet: try again at ``deliver_by``."""
        with self.transaction():
            key = self._pending_item(keyset_id, epoch, idx, custodian, "postpone")
            self._db.execute(
                "UPDATE outbox SET deliver_by = ?, last_error = ?, updated_at = ? "
                "WHERE keyset_id = ? AND epoch = ? AND idx = ? AND custodian = ?",
                [deliver_by, _clip(error), now, *key],
            )

    def record_attempt(
        self, keyset_id: str, epoch: int, idx: int, custodian: str, *, error: str | None,
        now: int,
    ) -> int:
        """Count one more delivery attempt of a pending item; return the count."""
        with self.transaction():
            key = self._pending_item(keyset_id, epoch, idx, custodian, "attempt")
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, updated_at = ? "
                "WHERE keyset_id = ? AND epoch = ? AND idx = ? AND custodian = ?",
                [None if error is None else _clip(error), now, *key],
            )
            return int(self._db.execute(
                "SELECT attempts FROM outbox "
                "WHERE keyset_id = ? AND epoch = ? AND idx = ? AND custodian = ?",
                key,
            ).fetchone()[0])

    # -- audit log ---------------------------------------------------------------

    def append_audit(
        self, kind: str, body: Mapping[str, object], time: int, key: Signer
    ) -> AuditEntry:
        """Sign and append the entry after the current head, in one transaction.

        Fails closed: if the head entry's stored body is unreadable this raises
        AuditChainBroken rather than chaining onto a damaged entry.
        """
        with self.transaction():
            return self._append(kind, body, time, key)

    def _append(
        self, kind: str, body: Mapping[str, object], time: int, key: Signer
    ) -> AuditEntry:
        assert self._db.conn.in_transaction, "audit entries are appended inside a transaction"
        entry = make_entry(self.audit_head(), time=time, kind=kind, body=body, key=key)
        self._db.execute(
            f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [entry.seq, entry.prev, entry.time, entry.kind, encode_body(entry.body),
             entry.signer, entry.hash, entry.sig],
        )
        leaf = p.tlog.leaf_hash(p.audit_log.leaf_bytes(entry))
        self._db.conn.executemany("INSERT INTO audit_tree (level, idx, hash) VALUES (?, ?, ?)",
                                  p.tlog.stored_hashes(entry.seq - 1, leaf, self.tree_hash))
        return entry

    # -- the audit log as a Merkle tree log ------------------------------------------

    def tree_hash(self, level: int, index: int) -> bytes:
        """A stored complete-subtree hash (``protocol/_tlog.py``'s HashReader)."""
        row = self._db.execute("SELECT hash FROM audit_tree WHERE level = ? AND idx = ?", [level, index]).fetchone()
        if row is None:
            raise AuditChainBroken(index + 1, f"the audit tree has no hash at level {level}, index {index}")
        return bytes(row[0])

    def tree_size(self) -> int:
        """The number of leaves in the audit tree (the entries it covers)."""
        row = self._db.execute("SELECT coalesce(max(idx), -1) FROM audit_tree WHERE level = 0").fetchone()
        return int(row[0]) + 1  # the primary key's index: no scan

    def tree_root(self, size: int | None = None) -> bytes:
        return p.tlog.root(self.tree_size() if size is None else size, self.tree_hash)

    def inclusion_proof(self, seq: int, size: int) -> list[bytes]:
        """Entry ``seq`` (from 1) in the tree of the first ``size`` entries."""
        return p.tlog.inclusion_proof(seq - 1, size, self.tree_hash)

    def consistency_proof(self, old: int, size: int) -> list[bytes]:
        return p.tlog.consistency_proof(old, size, self.tree_hash)

    def audit_entry(self, seq: int) -> AuditEntry | None:
        row = self._db.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE seq = ?", [seq]).fetchone()
        return None if row is None else _audit_from_row(row)

    def checkpoint(self) -> str | None:
        """The latest checkpoint this node signed (a C2SP signed note), with the
        cosignatures it has collected."""
        raw = self.get_kv(CHECKPOINT_KEY)
        return None if raw is None else raw.decode()

    def put_checkpoint(self, note: str) -> None:
        self.put_kv(CHECKPOINT_KEY, note.encode())

    def audit_head(self) -> AuditEntry | None:
        """The latest entry, or None for an empty log."""
        row = self._db.execute(
            f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return None if row is None else _audit_from_row(row)

    def audit_entries(self, start: int = 1) -> Iterator[AuditEntry]:
        """Entries with seq >= ``start`` in order, read lazily from one snapshot.

        Raises AuditChainBroken for a row whose stored body cannot be decoded.
        Finish (or close) the iterator before writing through this store.
        """
        cursor = self._db.execute(
            f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE seq >= ? ORDER BY seq", [start]
        )
        try:
            for row in cursor:
                yield _audit_from_row(row)
        finally:
            with contextlib.suppress(sqlite3.ProgrammingError):  # store already closed
                cursor.close()

    def verify_audit(self, trusted_signers: AbstractSet[bytes] | None) -> int:
        """Verify the whole log; return the number of entries.

        Raises AuditChainBroken at the first bad entry. Truncation of the newest
        entries is only visible against a checkpoint published elsewhere.
        """
        with contextlib.closing(self._entries_for_verify()) as entries:
            return verify_chain(entries, trusted_signers=trusted_signers)

    def _entries_for_verify(self) -> Generator[AuditEntry, None, None]:
        # Like audit_entries(), but a row that is out of sequence is handed to
        # verify_chain undecoded, so a gap before an unreadable row is reported
        # at the gap (the first broken entry), not at the unreadable row.
        cursor = self._db.execute(f"SELECT {_AUDIT_COLUMNS} FROM audit ORDER BY seq")
        try:
            expected = 1
            for row in cursor:
                if row[0] != expected:
                    yield AuditEntry(row[0], row[1], row[2], row[3], {}, row[5], row[6], row[7])
                    return
                yield _audit_from_row(row)
                expected += 1
        finally:
            with contextlib.suppress(sqlite3.ProgrammingError):  # store already closed
                cursor.close()

    # -- reconstruction requests and votes --------------------------------------------

    def put_request(self, request_id: str, keyset_id: str, requester: str, record: bytes, *,
                    created: int, not_after: int, now: int) -> bool:
        """Store a verified request; False if we already had it."""
        with self.transaction():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO requests (request_id, keyset_id, requester, record, created, "
                "not_after, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [request_id, keyset_id, requester, record, created, not_after, now],
            )
            return bool(cur.rowcount)

    def request(self, request_id: str) -> dict[str, Any] | None:
        rows = list(self._db.query("SELECT * FROM requests WHERE request_id = ?", [request_id]))
        return rows[0] if rows else None

    def find_request(self, prefix: str) -> dict[str, Any]:
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            raise KeysetNotFound(f"no request {prefix!r} (request ids are hex)")
        rows = list(self._db.query("SELECT * FROM requests WHERE request_id LIKE ? LIMIT 3", [prefix + "%"]))
        if not rows:
            raise KeysetNotFound(f"no request {prefix!r} is known to this node")
        if len(rows) > 1:
            raise KeysetLookupError(f"request prefix {prefix!r} is ambiguous")
        return rows[0]

    def requests(self, *, active_at: int | None = None) -> list[dict[str, Any]]:
        if active_at is None:
            return list(self._db.query("SELECT * FROM requests ORDER BY created"))
        return list(self._db.query(
            "SELECT * FROM requests WHERE not_after >= ? ORDER BY received_at", [active_at]))

    def live_requests(self, requester: str, now: int) -> int:
        """How many of ``requester``'s requests are open at ``now``: not expired, and with no
        outcome recorded here."""
        row = self._db.execute(
            "SELECT count(*) FROM requests WHERE requester = ? AND not_after >= ? AND outcome IS NULL",
            [requester, now]).fetchone()
        return int(row[0])

    def prune_requests(self, before: int) -> int:
        """Delete the requests that expired before ``before``, with their votes and any
        recorded equivocation (its audit entry stays); how many requests went."""
        with self.transaction():
            old = "SELECT request_id FROM requests WHERE not_after < ?"
            self._db.execute(f"DELETE FROM votes WHERE request_id IN ({old})", [before])
            self._db.execute(f"DELETE FROM equivocations WHERE request_id IN ({old})", [before])
            return int(self._db.execute("DELETE FROM requests WHERE not_after < ?", [before]).rowcount)

    def owner_holdings(self, owner: str) -> tuple[int, int]:
        """What a custodian holds for ``owner`` now: the keysets of which it keeps a shard,
        and the bytes of those shards and records. A keyset whose shards were erased (it
        expired, or a reshare moved them) no longer counts."""
        # The owner's keysets by keysets_by_owner, each one's shards by the held_shards key:
        # never a pass over what other owners have this node hold.
        row = self._db.execute(
            "SELECT count(*), coalesce(sum(length(k.record) + (SELECT sum(length(sealed) + length(meta)) "
            "FROM held_shards s WHERE s.keyset_id = k.keyset_id)), 0) FROM keysets k WHERE k.owner = ? "
            "AND EXISTS (SELECT 1 FROM held_shards s WHERE s.keyset_id = k.keyset_id)", [owner]).fetchone()
        return int(row[0]), int(row[1])

    def set_request_outcome(self, request_id: str, outcome: str) -> None:
        with self.transaction():
            self._db.execute("UPDATE requests SET outcome = ? WHERE request_id = ?", [outcome, request_id])

    def put_vote(self, request_id: str, approver: str, decision: str, record: bytes, *, now: int) -> bool:
        """Store a verified vote; False if this approver's vote was already stored."""
        with self.transaction():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO votes (request_id, approver, decision, record, received_at) "
                "VALUES (?, ?, ?, ?, ?)", [request_id, approver, decision, record, now],
            )
            return bool(cur.rowcount)

    def votes(self, request_id: str) -> list[bytes]:
        return [bytes(r["record"]) for r in
                self._db.query("SELECT record FROM votes WHERE request_id = ? ORDER BY received_at", [request_id])]

    def put_equivocation(self, request_id: str, approver: str, first: bytes, second: bytes, *, now: int,
                         audit: AuditEvent) -> bool:
        """Keep two contradicting signed votes, with an audit entry naming the approver.

        False (and no second audit entry) if this approver's equivocation on this
        request is already on record. The caller has verified both votes.
        """
        with self.transaction():
            cur = self._db.execute(
                "INSERT OR IGNORE INTO equivocations (request_id, approver, first, second, received_at) "
                "VALUES (?, ?, ?, ?, ?)", [request_id, approver, first, second, now],
            )
            if not cur.rowcount:
                return False
            self._append(audit.kind, audit.body, now, audit.key)
            return True

    def equivocations(self, request_id: str) -> list[tuple[bytes, bytes]]:
        """The signed vote pairs that void approvers of this request."""
        return [(bytes(r["first"]), bytes(r["second"])) for r in self._db.query(
            "SELECT first, second FROM equivocations WHERE request_id = ? ORDER BY received_at", [request_id])]

    # -- the network and its membership ---------------------------------------------

    def set_network(self, network_id: bytes, genesis: bytes, *, now: int) -> bool:
        """Join a network; False if this home already belongs to it. A home belongs to
        one network for good: StoreError for another one."""
        with self.transaction():
            row = self._db.execute("SELECT network_id FROM network WHERE id = 1").fetchone()
            if row is not None:
                if bytes(row[0]) == network_id:
                    return False
                raise OtherNetwork(f"this home already belongs to network {bytes(row[0]).hex()[:8]}; "
                                 "a home joins one network only (make a new home for another)")
            self._db.execute("INSERT INTO network (id, network_id, genesis, joined_at) VALUES (1, ?, ?, ?)",
                             [network_id, genesis, now])
            return True

    def genesis(self) -> bytes | None:
        row = self._db.execute("SELECT genesis FROM network WHERE id = 1").fetchone()
        return None if row is None else bytes(row[0])

    def put_membership(self, peer_id: str, kind: str, record_id: bytes, record: bytes, *, time: int, now: int,
                       audit: AuditEvent | None = None) -> bool:
        """Keep a complete, verified membership record if it is newer than the one held
        for this peer and kind (by time, then id); False otherwise."""
        with self.transaction():
            row = self._db.execute("SELECT time, record_id FROM membership WHERE peer_id = ? AND kind = ?",
                                   [peer_id, kind]).fetchone()
            if row is not None and (row[0], bytes(row[1])) >= (time, record_id):
                return False
            self._db.execute(
                "INSERT INTO membership (peer_id, kind, record_id, record, time, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (peer_id, kind) DO UPDATE SET "
                "record_id = excluded.record_id, record = excluded.record, time = excluded.time, "
                "received_at = excluded.received_at", [peer_id, kind, record_id, record, time, now])
            self._db.execute("DELETE FROM proposals WHERE proposal_id = ?", [record_id.hex()])
            if audit is not None:
                self._append(audit.kind, audit.body, now, audit.key)
            return True

    def membership_records(self) -> list[bytes]:
        return [bytes(r[0]) for r in self._db.execute("SELECT record FROM membership ORDER BY peer_id, kind")]

    def put_proposal(self, proposal_id: str, kind: str, peer_id: str, record: bytes, *, signatures: int,
                     now: int, limit: int) -> bool:
        """Keep a verified proposal, or its copy with more signatures; False if it adds
        nothing, or if ``limit`` proposals are open already."""
        with self.transaction():
            row = self._db.execute("SELECT signatures FROM proposals WHERE proposal_id = ?",
                                   [proposal_id]).fetchone()
            if row is not None:
                if row[0] >= signatures:
                    return False
                self._db.execute("UPDATE proposals SET record = ?, signatures = ?, updated_at = ? "
                                 "WHERE proposal_id = ?", [record, signatures, now, proposal_id])
                return True
            if self._db.execute("SELECT count(*) FROM proposals").fetchone()[0] >= limit:
                return False
            self._db.execute(
                "INSERT INTO proposals (proposal_id, kind, peer_id, record, signatures, created, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", [proposal_id, kind, peer_id, record, signatures, now, now])
            return True

    def proposals(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.query("SELECT * FROM proposals ORDER BY created, proposal_id")]

    def proposal(self, proposal_id: str) -> dict[str, Any] | None:
        """The open proposal whose id is, or starts with, ``proposal_id`` (LookupError if several)."""
        if not (4 <= len(proposal_id) <= 32 and all(c in "0123456789abcdef" for c in proposal_id.lower())):
            raise ValueError(f"a proposal id is 4 to 32 hex digits, got {proposal_id!r}")
        rows = [dict(r) for r in self._db.query(
            "SELECT * FROM proposals WHERE proposal_id LIKE ? || '%' ORDER BY proposal_id LIMIT 3",
            [proposal_id.lower()])]
        if len(rows) > 1:
            raise LookupError(f"proposal id {proposal_id!r} is ambiguous: give more of it")
        return rows[0] if rows else None

    def drop_proposals(self, *, updated_before: int) -> int:
        """Forget proposals nobody signed since ``updated_before``; how many."""
        with self.transaction():
            return int(self._db.execute("DELETE FROM proposals WHERE updated_at < ?", [updated_before]).rowcount)

    # -- keyset rules: policy versions and revocation lists ------------------------------

    def put_rule(self, proposal_id: str, keyset_id: str, kind: str, version: int, record: bytes, *,
                 signatures: int, now: int, audit: AuditEvent) -> None:
        """Put a complete, verified rule record in force for its keyset and kind: it replaces
        the one in force and every proposal of that kind up to its version."""
        with self.transaction():
            self._db.execute("DELETE FROM keyset_rules WHERE keyset_id = ? AND kind = ? AND "
                             "(in_force = 1 OR version <= ? OR proposal_id = ?)",
                             [keyset_id, kind, version, proposal_id])
            self._db.execute(
                "INSERT INTO keyset_rules (proposal_id, keyset_id, kind, version, record, signatures, in_force, "
                "owner, updated_at) VALUES (?, ?, ?, ?, ?, ?, 1, '', ?)",
                [proposal_id, keyset_id, kind, version, record, signatures, now])
            self._append(audit.kind, audit.body, now, audit.key)

    def put_rule_proposal(self, proposal_id: str, keyset_id: str, kind: str, version: int, record: bytes, *,
                          signers: Sequence[str], now: int, owner: str, me: str,
                          limits: tuple[int, int, int, int]) -> str:
        """Keep a verified rule proposal, or its copy with more signatures: "kept", "same"
        (it adds nothing) or "full". ``limits``: open rule proposals in all; of the keysets
        of ``owner``; of those per signer; and of this keyset and kind per signer. Another
        node's proposal is kept if one of its signers has room, or else in place of a lower
        version that one of its signers alone signed (so nobody but that signer can take its
        room). One that ``me`` signed is kept whenever there is room in all, or else in
        place of the oldest foreign proposal of the owner that has the most."""
        mark = f" {' '.join(sorted(signers))} "
        with self.transaction():
            row = self._db.execute("SELECT signatures FROM keyset_rules WHERE proposal_id = ?",
                                   [proposal_id]).fetchone()
            if row is not None:
                if row[0] >= len(signers):
                    return "same"
                self._db.execute("UPDATE keyset_rules SET record = ?, signatures = ?, signers = ?, updated_at = ? "
                                 "WHERE proposal_id = ? AND in_force = 0",
                                 [record, len(signers), mark, now, proposal_id])
                return "kept"
            foreign = "in_force = 0 AND instr(signers, ?) = 0"
            me_mark = f" {me} "

            def count(where: str, *args: Any) -> int:
                return int(self._db.execute(f"SELECT count(*) FROM keyset_rules WHERE {where}",
                                            [*args]).fetchone()[0])
            total = count("in_force = 0")
            evict = None
            if me in signers:
                if total >= limits[0]:
                    evict = self._db.execute(
                        f"SELECT proposal_id FROM keyset_rules WHERE {foreign} AND owner = (SELECT owner FROM "
                        f"keyset_rules WHERE {foreign} GROUP BY owner ORDER BY count(*) DESC, owner LIMIT 1) "
                        "ORDER BY updated_at, proposal_id LIMIT 1", [me_mark, me_mark]).fetchone()
                    if evict is None:
                        return "full"
            else:
                if total >= limits[0] or count(f"{foreign} AND owner = ?", me_mark, owner) >= limits[1]:
                    return "full"
                room = any(count(f"{foreign} AND owner = ? AND instr(signers, ?) > 0", me_mark, owner, f" {x} ")
                           < limits[2] and
                           count(f"{foreign} AND keyset_id = ? AND kind = ? AND instr(signers, ?) > 0",
                                 me_mark, keyset_id, kind, f" {x} ") < limits[3] for x in signers)
                if not room:
                    evict = self._db.execute(
                        f"SELECT proposal_id FROM keyset_rules WHERE {foreign} AND keyset_id = ? AND kind = ? "
                        f"AND version < ? AND signers IN ({', '.join('?' * len(signers))}) "
                        "ORDER BY version, updated_at LIMIT 1",
                        [me_mark, keyset_id, kind, version, *(f" {x} " for x in signers)]).fetchone()
                    if evict is None:
                        return "full"
            if evict is not None:
                self._db.execute("DELETE FROM keyset_rules WHERE proposal_id = ?", [evict[0]])
            self._db.execute(
                "INSERT INTO keyset_rules (proposal_id, keyset_id, kind, version, record, signatures, in_force, "
                "owner, updated_at, signers) VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                [proposal_id, keyset_id, kind, version, record, len(signers), owner, now, mark])
            return "kept"

    def rules(self, keyset_id: str | None = None, *, in_force: bool | None = None) -> list[dict[str, Any]]:
        """Rule records (of one keyset), in force, proposals, or both; by keyset, kind, version."""
        clauses: list[str] = []
        params: list[Any] = []
        if keyset_id is not None:
            clauses.append("keyset_id = ?")
            params.append(keyset_id)
        if in_force is not None:
            clauses.append("in_force = ?")
            params.append(int(in_force))
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return [dict(r) for r in self._db.query(
            f"SELECT * FROM keyset_rules {where} ORDER BY keyset_id, kind, version, proposal_id", params)]

    def drop_rule_proposal(self, proposal_id: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM keyset_rules WHERE proposal_id = ? AND in_force = 0", [proposal_id])

    def rule_proposal(self, proposal_id: str) -> dict[str, Any] | None:
        """The open rule proposal whose id is, or starts with, ``proposal_id`` (LookupError if several)."""
        if not (4 <= len(proposal_id) <= 32 and all(c in "0123456789abcdef" for c in proposal_id.lower())):
            raise ValueError(f"a proposal id is 4 to 32 hex digits, got {proposal_id!r}")
        rows = [dict(r) for r in self._db.query(
            "SELECT * FROM keyset_rules WHERE in_force = 0 AND proposal_id LIKE ? || '%' "
            "ORDER BY proposal_id LIMIT 3", [proposal_id.lower()])]
        if len(rows) > 1:
            raise LookupError(f"proposal id {proposal_id!r} is ambiguous: give more of it")
        return rows[0] if rows else None

    def drop_rule_proposals(self, *, updated_before: int) -> int:
        with self.transaction():
            return int(self._db.execute("DELETE FROM keyset_rules WHERE in_force = 0 AND updated_at < ?",
                                        [updated_before]).rowcount)

    # -- small node state ----------------------------------------------------------

    # -- epochs ---------------------------------------------------------------------

    def epochs(self, keyset_id: str) -> list[dict[str, Any]]:
        """The epoch records in force for a keyset, oldest first (verified when stored)."""
        return list(self._rows("epochs", "keyset_id = ?", [keyset_id], order_by="epoch"))

    def keysets_past_epoch(self, epoch: int) -> int:
        """How many keysets have an epoch record after ``epoch`` here."""
        return int(self._db.execute("SELECT count(DISTINCT keyset_id) FROM epochs WHERE epoch > ?",
                                    [epoch]).fetchone()[0])

    def latest_epoch(self, keyset_id: str) -> dict[str, Any] | None:
        rows = list(self._db.execute(
            "SELECT keyset_id, epoch, action, record, received_at FROM epochs WHERE keyset_id = ? "
            "ORDER BY epoch DESC LIMIT 1", [keyset_id]).fetchall())
        if not rows:
            return None
        return dict(zip(("keyset_id", "epoch", "action", "record", "received_at"), rows[0], strict=True))

    def put_pending_share(self, keyset_id: str, epoch: int, idx: int, *, record: bytes, sealed: bytes,
                          meta: bytes, deadline: int, coordinator: str) -> None:
        """Keep a new holder's share of an uncommitted epoch (one per keyset and epoch: the
        same round asking again with other deals replaces it)."""
        _check_slot(epoch, idx)
        with self.transaction():
            self._db.execute("DELETE FROM pending_shares WHERE keyset_id = ? AND epoch = ?", [keyset_id, epoch])
            self._db.table("pending_shares").insert({"keyset_id": keyset_id, "epoch": epoch, "idx": idx,
                                                      "record": record, "sealed": sealed, "meta": meta,
                                                      "deadline": deadline, "coordinator": coordinator})

    def pending_count(self, coordinator: str | None = None) -> int:
        if coordinator is None:
            return int(self._db.execute("SELECT count(*) FROM pending_shares").fetchone()[0])
        return int(self._db.execute("SELECT count(*) FROM pending_shares WHERE coordinator = ?",
                                    [coordinator]).fetchone()[0])

    def epoch_lock(self, keyset_id: str, epoch: int, kind: str) -> dict[str, Any] | None:
        rows = list(self._rows("epoch_locks", "keyset_id = ? AND epoch = ? AND kind = ?", [keyset_id, epoch, kind]))
        return rows[0] if rows else None

    def take_epoch_lock(self, keyset_id: str, epoch: int, kind: str, value: bytes, *, until: int | None,
                        now: int) -> bytes:
        """Take the lock, or keep it if it holds ``value`` already; return the value the lock
        holds now (another one: someone else has it). An 'echo' lock past its ``until`` is
        free again; a 'sign' lock never is."""
        with self.transaction():
            held = self.epoch_lock(keyset_id, epoch, kind)
            if held is not None and bytes(held["value"]) != value and (held["until"] is None
                                                                       or held["until"] >= now):
                return bytes(held["value"])
            self._db.execute("INSERT OR REPLACE INTO epoch_locks (keyset_id, epoch, kind, value, until) "
                             "VALUES (?, ?, ?, ?, ?)", [keyset_id, epoch, kind, value, until])
            return value

    def pending_share(self, keyset_id: str, epoch: int) -> dict[str, Any] | None:
        rows = list(self._rows("pending_shares", "keyset_id = ? AND epoch = ?", [keyset_id, epoch]))
        return rows[0] if rows else None

    def pending_shares(self) -> list[dict[str, Any]]:
        return list(self._rows("pending_shares", order_by="keyset_id, epoch"))

    def rest_wrap(self) -> int:
        """The at-rest key epoch every stored shard of this node is sealed to (0: none yet, the
        certified key), written in the same transaction as the shards resealed to it."""
        raw = self.get_kv(REST_WRAP_KEY)
        return int(raw) if raw else 0

    def replace_sealed(self, updates: Sequence[tuple[str, int, int, bytes, bytes, bool]], *, wrap: int, now: int,
                       audit: AuditEvent) -> None:
        """Replace stored shards by their rewrapped form, (keyset, epoch, index, sealed, meta,
        held: else a pending share), record ``wrap`` as the at-rest epoch in use, and write
        the audit entry, in one transaction; the old bytes are overwritten
        (``secure_delete``) and the WAL truncated after."""
        with self.transaction():
            self.put_kv(REST_WRAP_KEY, str(wrap).encode())
            for table, want_held in (("held_shards", True), ("pending_shares", False)):
                rows = [(sealed, meta, kid, epoch, idx) for kid, epoch, idx, sealed, meta, held in updates
                        if held is want_held]
                cur = self._db.conn.executemany(f"UPDATE {table} SET sealed = ?, meta = ? WHERE keyset_id = ? "
                                                "AND epoch = ? AND idx = ?", rows)
                if cur.rowcount != len(rows):
                    raise StoreError(f"rewrap: {len(rows) - cur.rowcount} {table} rows vanished meanwhile")
            # An owner's copies of shards it delivered (homes from before they were emptied
            # on delivery): its own among them would otherwise outlive the rewrap.
            self._db.execute("UPDATE outbox SET envelope = x'' WHERE state != 'pending' AND length(envelope) > 0")
            self._append(audit.kind, audit.body, now, audit.key)
        self.truncate_wal()

    def drop_pending_shares(self, *, deadline_before: int) -> int:
        """Erase the shares kept for rounds whose deadline passed without a commit."""
        with self.transaction():
            n = self._db.execute("DELETE FROM pending_shares WHERE deadline < ?", [deadline_before]).rowcount
            self._db.execute("DELETE FROM epoch_locks WHERE kind = 'echo' AND until < ?", [deadline_before])
        if n:
            self.truncate_wal()
        return int(n)

    def commit_epoch(self, keyset_id: str, epoch: int, action: str, record: bytes, *, now: int,
                     promote: tuple[int, bytes, bytes] | None,
                     erased: Sequence[tuple[int, int, str, bytes, bytes]],
                     audit: AuditEvent, keep_epoch: int | None = None) -> None:
        """Apply an epoch record in one transaction: keep it, hold the new share
        (``promote``: index, sealed, meta), erase every older share of the keyset, keep
        this holder's deletion receipts (``erased``: epoch, index, holder, record
        digest, receipt) and write the audit entry. An owner's outbox copies of older
        shards are emptied too, and their undelivered slots end refused. ``keep_epoch``: a
        refresh holder that could not compute its new share yet keeps its share of that
        epoch, to compute it when the deals come. The erased bytes are overwritten
        (``secure_delete``) and the WAL is truncated after the commit."""
        with self.transaction():
            self._db.table("epochs").insert({"keyset_id": keyset_id, "epoch": epoch, "action": action,
                                             "record": record, "received_at": now})
            if promote is not None:
                idx, sealed, meta = promote
                self._db.table("held_shards").insert({"keyset_id": keyset_id, "epoch": epoch, "idx": idx,
                                                       "sealed": sealed, "meta": meta, "received_at": now})
            self._db.execute("DELETE FROM held_shards WHERE keyset_id = ? AND epoch < ? AND epoch IS NOT ?",
                             [keyset_id, epoch, keep_epoch])
            # The owner's copies of older shards, sealed to their custodians: emptied, and a
            # slot never delivered stops (its shard belongs to an epoch that is over).
            self._db.execute(
                "UPDATE outbox SET state = CASE state WHEN 'pending' THEN 'refused' ELSE state END, "
                "last_error = CASE state WHEN 'pending' THEN ? ELSE last_error END, envelope = x'', "
                "reserve = NULL, deliver_by = NULL, updated_at = ? WHERE keyset_id = ? AND epoch < ?",
                [f"superseded by epoch {epoch}", now, keyset_id, epoch])
            self._db.execute("DELETE FROM pending_shares WHERE keyset_id = ? AND epoch <= ?", [keyset_id, epoch])
            self._db.execute("DELETE FROM epoch_locks WHERE keyset_id = ? AND epoch < ?", [keyset_id, epoch])
            for old_epoch, idx, holder, digest, receipt in erased:
                self._put_erasure(keyset_id, old_epoch, idx, holder, digest, receipt, now)
            self._append(audit.kind, audit.body, now, audit.key)
        self.truncate_wal()

    def erase_older(self, keyset_id: str, epoch: int, erased: Sequence[tuple[int, int, str, bytes, bytes]], *,
                    now: int) -> None:
        """Delete the shares of a keyset older than ``epoch`` and keep their receipts."""
        with self.transaction():
            self._db.execute("DELETE FROM held_shards WHERE keyset_id = ? AND epoch < ?", [keyset_id, epoch])
            for old_epoch, idx, holder, digest, receipt in erased:
                self._put_erasure(keyset_id, old_epoch, idx, holder, digest, receipt, now)
        self.truncate_wal()

    def _put_erasure(self, keyset_id: str, epoch: int, idx: int, holder: str, digest: bytes, receipt: bytes,
                     now: int) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO erasures (keyset_id, epoch, idx, holder, record, receipt, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", [keyset_id, epoch, idx, holder, digest, receipt, now])

    def put_erasures(self, keyset_id: str, receipts: Sequence[tuple[int, int, str, bytes, bytes]], *,
                     now: int) -> None:
        """Keep verified deletion receipts: (epoch, index, holder, record digest, receipt)."""
        with self.transaction():
            for epoch, idx, holder, digest, receipt in receipts:
                self._put_erasure(keyset_id, epoch, idx, holder, digest, receipt, now)

    def erasures(self, keyset_id: str) -> list[dict[str, Any]]:
        return list(self._rows("erasures", "keyset_id = ?", [keyset_id], order_by="epoch, idx, holder"))

    def queue_epoch_notices(self, keyset_id: str, epoch: int, frames: Mapping[str, bytes], *, now: int) -> None:
        with self.transaction():
            for peer, frame in frames.items():
                self._db.execute(
                    "INSERT OR REPLACE INTO epoch_notices (keyset_id, epoch, peer, frame, updated_at) "
                    "VALUES (?, ?, ?, ?, ?)", [keyset_id, epoch, peer, frame, now])

    def epoch_notices(self) -> list[dict[str, Any]]:
        return list(self._rows("epoch_notices", order_by="updated_at"))

    def epoch_notice_done(self, keyset_id: str, epoch: int, peer: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM epoch_notices WHERE keyset_id = ? AND epoch = ? AND peer = ?",
                             [keyset_id, epoch, peer])

    def epoch_notice_failed(self, keyset_id: str, epoch: int, peer: str, error: str, *, now: int) -> None:
        with self.transaction():
            self._db.execute(
                "UPDATE epoch_notices SET attempts = attempts + 1, last_error = ?, updated_at = ? "
                "WHERE keyset_id = ? AND epoch = ? AND peer = ?", [_clip(error), now, keyset_id, epoch, peer])

    def truncate_wal(self) -> None:
        """Checkpoint the WAL into the database and truncate it to zero bytes, so that rows
        just deleted (overwritten in place by ``secure_delete``) leave no copy in the log.
        Inside a transaction this does nothing: call it again once that has committed."""
        if self.path != ":memory:" and not self._db.conn.in_transaction:  # else: the caller's, after it commits
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:  # another process reads the database: the log keeps its pages until the next checkpoint
                log.warning("the WAL of %s could not be truncated now (a reader holds it)", self.path)

    def kv_keys(self, prefix: str, *, except_value: bytes) -> set[str]:
        """The keys that start with ``prefix`` whose value is not ``except_value``."""
        return {row[0] for row in self._db.execute(
            "SELECT key FROM kv WHERE substr(key, 1, ?) = ? AND value != ?", [len(prefix), prefix, except_value])}

    def get_kv(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", [key]).fetchone()
        return None if row is None else bytes(row[0])

    def put_kv(self, key: str, value: bytes) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT INTO kv (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )

    def delete_kv(self, key: str) -> None:
        with self.transaction():
            self._db.execute("DELETE FROM kv WHERE key = ?", [key])
