"""Which epoch of a keyset is current on this node, and the keyset as it sees it.

The keyset record (epoch 0, as amended) is in ``keysets`` or ``known_keysets``;
the epoch records after it in ``epochs``, each verified and chained to the one
before when it was stored (``_epochs``). Reads only.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar, cast

from shardnet import protocol as p
from shardnet.protocol import epoch_records as er

from ._store import Store

T = TypeVar("T")

#: What each action defeats, in the words of the revocation table (docs, `key show`).
DEFEATS = p.triggers.DEFEATS


#: Records this node's store gave and that were parsed last, per store (per node: on the
#: grid, many nodes share a process, and each must still check what it reads itself). A
#: node reads the same keyset and epoch records many times a round; Keyset and EpochRecord
#: are immutable, so one parse serves them all. Bounded by the records' bytes, counted
#: :data:`PARSED_WEIGHT` times: the parsed objects (measured about 2.5x) and a cached body.
MAX_PARSED_BYTES = 32 * 1024 * 1024
PARSED_WEIGHT = 4


class _Memo:
    def __init__(self) -> None:
        self.items: OrderedDict[tuple[Callable[[bytes], Any], bytes], Any] = OrderedDict()
        self.size = 0


_parsed: weakref.WeakKeyDictionary[Store, _Memo] = weakref.WeakKeyDictionary()


def parsed(store: Store, data: bytes, parse: Callable[[bytes], T]) -> T:
    """``parse(data)``, once per node while it is remembered: ``parse`` is a pure function
    of the bytes (a check that raises is not remembered, and runs again next time). Keyed
    by the function too, so that a parse without signature checks never answers for one with."""
    memo = _parsed.get(store)
    if memo is None:
        memo = _parsed[store] = _Memo()
    key = (parse, bytes(data))
    hit = memo.items.get(key)
    if hit is None:
        hit = memo.items[key] = parse(key[1])
        memo.size += PARSED_WEIGHT * len(key[1])
        while memo.size > MAX_PARSED_BYTES and len(memo.items) > 1:
            (_, old), _ = memo.items.popitem(last=False)
            memo.size -= PARSED_WEIGHT * len(old)
    else:
        memo.items.move_to_end(key)
    return cast(T, hit)


def base_keyset(store: Store, keyset_id: str) -> p.Keyset | None:
    """The keyset record (epoch 0, as amended), from the keysets this node holds or knows."""
    row = store.keyset(keyset_id)
    if row is not None:
        return parsed(store, row["record"], p.Keyset.from_bytes)
    known = store.known_keyset(keyset_id)
    return parsed(store, known, p.Keyset.from_bytes) if known is not None else None


def current_record(store: Store, keyset_id: str) -> er.EpochRecord | None:
    """The epoch record in force (verified and chained when it was stored), or None at epoch 0."""
    row = store.latest_epoch(keyset_id)
    if row is None:
        return None
    return parsed(store, row["record"], er.EpochRecord.parse)


def keyset_view(store: Store, keyset_id: str) -> p.Keyset | None:
    """The keyset as its current epoch sees it: t, n, commitments and holders."""
    base = base_keyset(store, keyset_id)
    return None if base is None else er.at_epoch(base, current_record(store, keyset_id))


def record_view(store: Store, record: bytes) -> p.Keyset:
    """``record``'s keyset at the epoch this node holds it at."""
    base = p.Keyset.from_bytes(record)
    return er.at_epoch(base, current_record(store, base.id_hex))
