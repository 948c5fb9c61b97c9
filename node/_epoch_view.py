"""Which epoch of a keyset is current on this node, and the keyset as it sees it.

The keyset record (epoch 0, as amended) is in ``keysets`` or ``known_keysets``;
the epoch records after it in ``epochs``, each verified and chained to the one
before when it was stored (``_epochs``). Reads only.
"""

from __future__ import annotations

from shardnet import protocol as p
from shardnet.protocol import epoch_records as er

from ._store import Store

#: What each action defeats, in the words of the revocation table (docs, `key show`).
DEFEATS = p.triggers.DEFEATS


def base_keyset(store: Store, keyset_id: str) -> p.Keyset | None:
    """The keyset record (epoch 0, as amended), from the keysets this node holds or knows."""
    row = store.keyset(keyset_id)
    if row is not None:
        return p.Keyset.from_bytes(row["record"])
    known = store.known_keyset(keyset_id)
    return p.Keyset.from_bytes(known) if known is not None else None


def current_record(store: Store, keyset_id: str) -> er.EpochRecord | None:
    """The epoch record in force (verified and chained when it was stored), or None at epoch 0."""
    row = store.latest_epoch(keyset_id)
    if row is None:
        return None
    return er.EpochRecord.parse(bytes(row["record"]))


def keyset_view(store: Store, keyset_id: str) -> p.Keyset | None:
    """The keyset as its current epoch sees it: t, n, commitments and holders."""
    base = base_keyset(store, keyset_id)
    return None if base is None else er.at_epoch(base, current_record(store, keyset_id))


def record_view(store: Store, record: bytes) -> p.Keyset:
    """``record``'s keyset at the epoch this node holds it at."""
    base = p.Keyset.from_bytes(record)
    return er.at_epoch(base, current_record(store, base.id_hex))
