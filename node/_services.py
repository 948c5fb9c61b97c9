"""The node's services as plain classes (house style 4).

They hold the business logic: which descriptor to accept, whether to store a
delivered shard, how an import is dealt and placed, what a receipt means. The
libp2p stream handlers and the control socket (``_runtime``) are thin adapters
around them, so everything here can be driven directly in tests.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.protocol import _placement as placement
from shardnet.protocol._records import Delivery, Descriptor, Receipt, peer_id_of

from ._store import AuditEvent, NewOutboxItem, Store

DELIVER_PROTOCOL = "/shardnet/deliver/1"
DIRECTORY_PROTOCOL = "/shardnet/directory/1"
DIRECTORY_TOPIC = "shardnet/directory/1"
FRAME_TAG = "shardnet/deliver-frame"
MAX_DELIVER_FRAME = 512 * 1024
MAX_DIRECTORY_REPLY = 4 * 1024 * 1024
DELIVERY_WINDOW = 300  # seconds a delivery cover stays fresh
MAX_CLOCK_SKEW = 60
VERSION = "0.1.0"


class Rejected(Exception):
    """A peer's request is refused; the message goes back to it."""


# -- directory ----------------------------------------------------------------------


class Directory:
    """Known custodians, from signed descriptors (gossip and anti-entropy pulls)."""

    def __init__(self, store: Store, me: str) -> None:
        self.store = store
        self.me = me

    def accept(self, data: bytes, now: int) -> Descriptor | None:
        """Store a descriptor if valid and newer; None if we already had it (or newer)."""
        d = Descriptor.from_bytes(data)
        if d.seq > (now + MAX_CLOCK_SKEW) * 1000:
            raise p.MalformedEncoding(f"descriptor of {d.peer_id} is dated in the future")
        fields = {"name": d.name, "country": d.country, "city": d.city, "continent": d.continent, "org": d.org}
        if self.store.upsert_custodian(d.peer_id, d.signed, fields, d.seq, now=now):
            return d
        return None

    def is_stale(self, data: bytes) -> bool:
        """True when we already hold this descriptor or a newer one (cheap pre-check)."""
        d = Descriptor.from_bytes(data)
        row = self.store.custodian(d.peer_id)
        return row is not None and row["seq"] >= d.seq

    def get(self, peer_id: str) -> Descriptor | None:
        row = self.store.custodian(peer_id)
        return Descriptor.from_bytes(row["descriptor"]) if row else None

    def all(self) -> list[Descriptor]:
        return [Descriptor.from_bytes(r["descriptor"]) for r in self.store.custodians()]

    def candidates(self, kem: str) -> list[placement.Candidate]:
        return [
            placement.Candidate(d.peer_id, d.country, d.continent, d.org, d.city)
            for d in self.all() if kem in d.hpke
        ]

    def pull_reply(self) -> bytes:
        return p.encode([d.signed for d in self.all()][:4096])


# -- custodian side -----------------------------------------------------------------


class Custodian:
    """Receives shards: verifies everything, stores the sealed shard, signs a receipt."""

    def __init__(self, store: Store, key: Ed25519PrivateKey, hpke: dict[str, p.HpkePrivateKey]) -> None:
        self.store = store
        self.key = key
        self.hpke = hpke
        self.peer_id = peer_id_of(key.public_key().public_bytes_raw())
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    def _replayed(self, cover: Delivery, now: int) -> bool:
        while self._seen and next(iter(self._seen.values())) < now - DELIVERY_WINDOW:
            self._seen.popitem(last=False)
        digest = hashlib.sha256(cover.signed).digest()
        if digest in self._seen:
            return True
        self._seen[digest] = now
        if len(self._seen) > 100_000:
            self._seen.popitem(last=False)
        return False

    def handle_delivery(self, remote: str, frame: bytes, now: int) -> bytes:
        """Answer one delivery frame with a signed receipt (stored, already held or refused).

        Frames that are malformed, not from the owner's own node, addressed to
        someone else, stale or replayed raise :class:`Rejected` instead: they
        get no signed answer at all.
        """
        try:
            cover_b, keyset_b, sealed = p._codec.decode_record(
                frame, FRAME_TAG, 1, 3, max_size=MAX_DELIVER_FRAME
            )
            cover = Delivery.from_bytes(p._codec.want_bytes(cover_b, "cover"))
        except p.ShardnetError as exc:
            raise Rejected(f"malformed delivery: {exc}") from None
        if remote != peer_id_of(cover.owner):
            raise Rejected("delivery cover is not signed by the sending peer")
        if cover.recipient != self.peer_id:
            raise Rejected(f"delivery is addressed to {cover.recipient}")
        if not now - DELIVERY_WINDOW <= cover.sent_at <= now + MAX_CLOCK_SKEW:
            raise Rejected("stale delivery (sent_at outside the freshness window)")
        if self._replayed(cover, now):
            raise Rejected("replayed delivery frame")
        sealed = bytes(sealed) if isinstance(sealed, bytes) else b""
        digest = hashlib.sha256(sealed).digest()

        def answer(status: str, reason: str = "") -> bytes:
            r = Receipt.make(
                self.key, keyset_id=cover.keyset_id, epoch=cover.epoch, index=cover.index,
                shard_digest=digest, delivery_digest=hashlib.sha256(cover.signed).digest(),
                status=status, reason=reason, time=now,
            )
            return r.signed

        try:
            status = self._store_shard(cover, keyset_b, sealed, digest, now)
        except (p.ShardnetError, ValueError) as exc:
            reason = str(exc)[:400]
            self.store.append_audit(
                "refuse", {"keyset": cover.keyset_id.hex(), "epoch": cover.epoch, "index": cover.index,
                           "owner": peer_id_of(cover.owner), "reason": reason}, now, self.key,
            )
            return answer("refused", reason)
        return answer(status)

    def _store_shard(self, cover: Delivery, keyset_b: Any, sealed: bytes, digest: bytes, now: int) -> str:
        if not hmac.compare_digest(digest, cover.shard_digest):
            raise p.MalformedEncoding("the shard does not match the delivery cover")
        keyset = p.Keyset.from_bytes(p._codec.want_bytes(keyset_b, "keyset"), owner=cover.owner)
        if (keyset.keyset_id, keyset.epoch) != (cover.keyset_id, cover.epoch):
            raise p.MalformedEncoding("keyset record and delivery cover disagree")
        if keyset.not_after is not None and now > keyset.not_after:
            raise p.ShardExpired(f"keyset {keyset.id_hex[:12]}… expired at {keyset.not_after}")
        meta = p.read_shard_meta(sealed, owner=cover.owner)
        if meta.kem not in self.hpke:
            raise p.MalformedEncoding(f"this custodian has no {meta.kem} key")
        meta, share = p.open_shard(
            sealed, self.hpke[meta.kem], recipient=self.peer_id, now=now, owner=cover.owner,
            commitments=keyset.commitments,
        )
        if (meta.keyset_id, meta.epoch, meta.index) != (cover.keyset_id, cover.epoch, cover.index):
            raise p.MalformedEncoding("shard metadata and delivery cover disagree")
        if (meta.threshold, meta.shares) != (keyset.threshold, keyset.shares):
            raise p.MalformedEncoding("shard metadata and keyset disagree on t or n")
        del share  # verified; only the sealed form is ever stored
        held = self.store.held_shard(keyset.id_hex, meta.epoch, meta.index)
        if held is not None and held["sealed"] == sealed:
            return "already-held"
        body = {"keyset": keyset.id_hex, "epoch": meta.epoch, "index": meta.index,
                "owner": peer_id_of(cover.owner), "shard_sha256": digest.hex()}
        with self.store.transaction():
            self.store.put_keyset(_keyset_row(keyset, "custodian"), now=now)
            self.store.put_held_shard(
                keyset.id_hex, meta.epoch, meta.index, sealed=sealed, meta=meta.signed, now=now,
                audit=AuditEvent("store", body, self.key),
            )
        return "stored"


def _keyset_row(keyset: p.Keyset, role: str) -> Any:
    return {
        "keyset_id": keyset.id_hex, "record": keyset.signed, "owner": peer_id_of(keyset.owner),
        "threshold": keyset.threshold, "shares": keyset.shares, "epoch": keyset.epoch,
        "created": keyset.created, "not_after": keyset.not_after, "role": role,
    }


# -- owner side ---------------------------------------------------------------------


@dataclass
class ImportResult:
    keyset: p.Keyset
    holders: dict[int, list[str]]
    placement: str
    note: str


class Owner:
    """Deals keys, places and seals shards, and turns receipts into outbox state."""

    def __init__(self, store: Store, key: Ed25519PrivateKey, directory: Directory) -> None:
        self.store = store
        self.key = key
        self.directory = directory
        self.peer_id = peer_id_of(key.public_key().public_bytes_raw())

    def import_key(
        self, master: bytes, threshold: int, shares: int, *, now: int, placement_expr: str | None = None,
        redundancy: int = 1, expires: int | None = None, kem: str = "x25519",
    ) -> ImportResult:
        if kem not in p.KEMS:
            raise ValueError(f"unknown kem {kem!r}; choose one of {', '.join(p.KEMS)}")
        p._vss.check_params(threshold, shares)
        cands = self.directory.candidates(kem)
        note = ""
        if placement_expr is None:
            countries = {c.country for c in cands}
            if len(countries) >= shares * redundancy:
                placement_expr = "distinct:country"
            else:
                placement_expr = ""
                note = (f"only {len(countries)} countries known for {shares * redundancy} holders: "
                        "placed without distinct:country")
        constraints = placement.parse(placement_expr)
        holders = placement.solve(cands, shares, redundancy=redundancy, constraints=constraints,
                                  seed=int.from_bytes(os.urandom(4), "big"))
        not_after = now + expires if expires else None
        attrs = {"placement": placement_expr, "redundancy": redundancy,
                 "holders": {str(i): hs for i, hs in holders.items()}}
        keyset, share_list = p.split_key(master, threshold, shares, owner=self.key, now=now,
                                         not_after=not_after, kem=kem, attrs=attrs)
        rows: list[NewOutboxItem] = []
        for share in share_list:
            for holder in holders[share.index]:
                d = self.directory.get(holder)
                assert d is not None
                meta = p.ShardMeta(keyset.keyset_id, keyset.epoch, share.index, shares, threshold, holder,
                                   now, not_after, keyset.policy_hash, keyset.commitments_digest, kem)
                sealed = p.seal_shard(meta, share, d.hpke[kem], owner=self.key)
                rows.append({"keyset_id": keyset.id_hex, "epoch": keyset.epoch, "idx": share.index,
                             "custodian": holder, "envelope": sealed})
        del share_list
        self.store.import_keyset(
            _keyset_row(keyset, "owner"), rows,
            AuditEvent("import", {"keyset": keyset.id_hex, "threshold": threshold, "shares": shares,
                                  "kem": kem, "placement": placement_expr, "redundancy": redundancy,
                                  "holders": attrs["holders"]}, self.key),
            now=now,
        )
        return ImportResult(keyset, holders, placement_expr, note)

    def delivery_frame(self, row: Any, now: int) -> tuple[bytes, Delivery]:
        ks = self.store.keyset(row["keyset_id"])
        assert ks is not None
        cover = Delivery.make(self.key, keyset_id=bytes.fromhex(row["keyset_id"]), epoch=row["epoch"],
                              index=row["idx"], recipient=row["custodian"], sealed=row["envelope"],
                              sent_at=now, nonce=os.urandom(16))
        return p.encode([FRAME_TAG, 1, cover.signed, ks["record"], row["envelope"]]), cover

    def accept_receipt(self, row: Any, cover: Delivery, reply: bytes, now: int) -> Receipt:
        """Check a custodian's receipt against what we sent; record delivered or refused."""
        r = Receipt.from_bytes(reply, custodian=row["custodian"])
        expect = (cover.keyset_id, cover.epoch, cover.index, cover.shard_digest,
                  hashlib.sha256(cover.signed).digest())
        if (r.keyset_id, r.epoch, r.index, r.shard_digest, r.delivery_digest) != expect:
            raise p.MalformedEncoding("receipt does not answer the delivery we sent")
        key = (row["keyset_id"], row["epoch"], row["idx"], row["custodian"])
        body = {"keyset": row["keyset_id"], "epoch": row["epoch"], "index": row["idx"],
                "custodian": row["custodian"], "status": r.status, "receipt_sha256":
                hashlib.sha256(r.signed).hexdigest()}
        if r.status == "refused":
            body["reason"] = r.reason
            self.store.mark_refused(*key, reason=r.reason, now=now, audit=AuditEvent("refused", body, self.key))
        else:
            self.store.mark_delivered(*key, receipt=r.signed, now=now,
                                      audit=AuditEvent("receipt", body, self.key))
        return r
