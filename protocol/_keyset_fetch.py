"""Fetching a keyset record from the network, for a coordinator that never saw it.

Any admitted node may coordinate a reconstruction. One that holds no record of
the keyset asks the network's custodians for it by id, and trusts an answer
only when all of this holds (:func:`check_reply`):

* the record's signature verifies and the keyset id is derived from the key
  that signed it (so nobody but the owner can sign a record with that id);
* the id is the one asked for;
* the answer carries at least one receipt from a holder the record names for
  that index and epoch, and every receipt it carries is such a one. A holder
  answering for itself signs a fresh receipt over the asker's nonce
  (:func:`proof_digest`), so an old one cannot be replayed; the owner answers
  with the receipts its custodians gave it;
* the one answering is the owner or a holder the record names.

After an epoch change (refresh, reshare) the answer also carries the epoch
records since the keyset record, each co-signed by K of the keyset's policy
authorities and chained to the one before (``_epoch_records.successor``): the
checks above then hold for the keyset as its newest epoch sees it, and the
owner may answer without receipts (the authorities' signatures vouch for the
holders of an epoch it dealt no shard of).

The request is ``[FETCH_TAG, 1, keyset id, nonce]``; the reply
``[FETCH_REPLY_TAG, 1, record, [receipt, ...]]`` at epoch 0, and
``[FETCH_REPLY_TAG, 2, record, [receipt, ...], [epoch record, ...]]`` after. Of several trusted answers
the coordinator keeps the newest (:func:`newest`): the highest epoch, then the
highest revision (``attrs["revision"]``, raised when the owner re-places a
shard).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from ._codec import decode, decode_record, encode, want, want_bytes
from ._epoch_records import MAX_EPOCH_RECORD, EpochRecord, at_epoch, successor
from ._errors import InvalidSignature, ShardnetError
from ._keyset import KEYSET_ID_LEN, MAX_RECORD, Keyset
from ._records import Receipt, peer_id_of
from ._wire import MAX_EPOCH_CHAIN

FETCH_TAG = "shardnet/keyset-fetch"
FETCH_REPLY_TAG = "shardnet/keyset-fetch-reply"
PROOF_TAG = b"shardnet/keyset-fetch-proof/v1\x00"
NONCE_LEN = 16
MAX_RECEIPTS = 128
HELD = ("stored", "already-held")


class RecordRefused(ShardnetError):
    """A fetched keyset record failed a check: it is not trusted."""


def request(keyset_id: bytes, nonce: bytes) -> bytes:
    if len(keyset_id) != KEYSET_ID_LEN or len(nonce) != NONCE_LEN:
        raise ValueError("a keyset fetch needs a 16-byte id and a 16-byte nonce")
    return encode([FETCH_TAG, 1, keyset_id, nonce])


def parse_request(frame: bytes) -> tuple[bytes, bytes]:
    """The (keyset id, nonce) a fetch asks for; raises MalformedEncoding."""
    kid, nonce = decode_record(frame, FETCH_TAG, 1, 2, max_size=256)
    return want_bytes(kid, "keyset id", KEYSET_ID_LEN), want_bytes(nonce, "nonce", NONCE_LEN)


def proof_digest(nonce: bytes, requester: str) -> bytes:
    """What a holder's fresh receipt answers (its delivery-digest field)."""
    return hashlib.sha256(PROOF_TAG + nonce + requester.encode()).digest()


def reply(record: bytes, receipts: Iterable[bytes], chain: Sequence[bytes] = ()) -> bytes:
    if chain:
        return encode([FETCH_REPLY_TAG, 2, record, list(receipts)[:MAX_RECEIPTS], list(chain)])
    return encode([FETCH_REPLY_TAG, 1, record, list(receipts)[:MAX_RECEIPTS]])


def revision(keyset: Keyset) -> tuple[int, int]:
    return keyset.epoch, keyset.revision


def newest(keysets: Iterable[Keyset]) -> Keyset:
    return max(keysets, key=revision)


def pick(keysets: Iterable[Keyset]) -> tuple[Keyset, list[Keyset]]:
    """The newest record that amends every one of its epoch with a lower revision
    (``Keyset.amends``), and the newer ones refused because they do not (they change more
    than the holders)."""
    ordered = sorted(keysets, key=revision, reverse=True)
    refused: list[Keyset] = []
    for k, candidate in enumerate(ordered):
        try:
            if all(candidate.amends(older) for older in ordered[k + 1:]
                   if older.epoch == candidate.epoch and older.revision < candidate.revision):
                return candidate, refused
        except InvalidSignature:
            pass
        refused.append(candidate)
    raise RecordRefused("no fetched record amends the others")


def holders_of(keyset: Keyset) -> dict[int, list[str]]:
    return {int(i): list(hs) for i, hs in keyset.attrs.get("holders", {}).items()}


def check_reply(data: bytes, *, keyset_id: bytes, responder: str, nonce: bytes, requester: str) -> Keyset:
    """The keyset in ``responder``'s answer, at the newest epoch it proves, if it can be
    trusted; raises RecordRefused (or MalformedEncoding) naming what failed."""
    cap = MAX_RECORD + MAX_RECEIPTS * 2048 + MAX_EPOCH_CHAIN * MAX_EPOCH_RECORD
    value = decode(data, max_size=cap)
    version = value[1] if isinstance(value, list) and len(value) > 1 else None
    if version == 2:
        record, receipts, chain = decode_record(data, FETCH_REPLY_TAG, 2, 3, max_size=cap)
    else:
        (record, receipts), chain = decode_record(data, FETCH_REPLY_TAG, 1, 2, max_size=cap), []
    base = Keyset.from_bytes(want_bytes(record, "keyset record"))  # signature and id binding
    if base.keyset_id != keyset_id:
        raise RecordRefused(f"the record is for keyset {base.id_hex}, not {keyset_id.hex()}")
    chain = want(chain, list, "epoch records")
    if len(chain) > MAX_EPOCH_CHAIN:
        raise RecordRefused("the answer carries too many epoch records")
    current: EpochRecord | None = None
    for raw in chain:
        try:
            current = successor(base, current, want_bytes(raw, "epoch record"))
        except ShardnetError as exc:
            raise RecordRefused(f"an epoch record does not verify: {exc}") from None
    keyset = at_epoch(base, current)
    holders = holders_of(keyset)
    owner = peer_id_of(keyset.owner)
    if responder != owner and not any(responder in hs for hs in holders.values()):
        raise RecordRefused("the peer that answered is neither the keyset's owner nor a holder it names")
    listed = want(receipts, list, "receipts")
    if len(listed) > MAX_RECEIPTS or (not listed and (current is None or responder != owner)):
        raise RecordRefused("the answer carries no holder's receipt")
    fresh = proof_digest(nonce, requester)
    signers = set()
    for raw in listed:
        r = Receipt.from_bytes(want_bytes(raw, "receipt"))
        if (r.keyset_id, r.epoch) != (keyset.keyset_id, keyset.epoch) or r.status not in HELD:
            raise RecordRefused(f"a receipt from {r.custodian} is for another keyset, epoch or outcome")
        if r.custodian not in holders.get(r.index, []):
            raise RecordRefused(f"{r.custodian} signed a receipt for index {r.index}, "
                                "but the record does not name it a holder of that index")
        if r.custodian == responder and r.delivery_digest != fresh:
            raise RecordRefused("the holder's own receipt does not answer this fetch (replayed?)")
        signers.add(r.custodian)
    if responder != owner and responder not in signers:
        raise RecordRefused("a holder answered without a fresh receipt of its own")
    return keyset
