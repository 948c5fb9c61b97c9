"""The node's services as plain classes (house style 4).

They hold the business logic: which descriptor to accept, whether to store a
delivered shard, how an import is dealt and placed, what a receipt means. The
libp2p stream handlers and the control socket (``_runtime``) are thin adapters
around them, so everything here can be driven directly in tests.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shardnet import protocol as p
from shardnet.protocol import (
    DEFAULT_POLICY,
    Added,
    Admission,
    ApprovalRule,
    Delivery,
    Descriptor,
    Equivocation,
    Policy,
    PolicyError,
    Receipt,
    Release,
    ReleaseDenied,
    Request,
    Tally,
    Vote,
    decide_release,
    directory_pull,
    hazmat,
    partial_payload,
    peer_id_of,
    placement,
    share_payload,
    wire,
)

from ._clock import MAX_DURATION, Rng
from ._epoch_view import current_record, record_view
from ._keystore import Keystore
from ._limits import DEFAULT_LIMITS, Limits
from ._members import Members
from ._rules import Rules
from ._store import AuditEvent, NewOutboxItem, OutboxRow, ShardConflict, Store
from ._verified import VerifiedRecords

VERSION = "0.1.0"


class Rejected(Exception):
    """A peer's request is refused; the message goes back to it."""


POSSESSION_PREFIX = "possession:"


def possession_mark(peer: str, admission: Admission) -> str:
    """The store key of a custodian's proof of possession under one admission: ``ok`` or
    the reason it failed (``_possession``)."""
    return f"{POSSESSION_PREFIX}{peer}:{admission.id.hex()}"


class QuotaExceeded(p.ShardnetError):
    """A peer would pass one of this node's quotas (``_limits.Limits``): refused, nothing kept."""


class NotAdmitted(p.ShardnetError):
    """A record about, or a request from, a peer the network has not admitted."""


class AuditLimiter:
    """At most ``per_hour`` audit entries about refusals per remote peer.

    A refusal is worth logging, but any peer can provoke them; without a cap
    it could grow the signed, fsync'd audit log without bound.
    """

    def __init__(self, per_hour: int = 30) -> None:
        self.per_hour = per_hour
        self._counts: dict[str, tuple[int, int]] = {}  # peer -> (hour, count)

    def allow(self, peer: str, now: int) -> bool:
        hour = now // 3600
        h, n = self._counts.get(peer, (hour, 0))
        if h != hour:
            n = 0
        if len(self._counts) > 10_000:
            self._counts.clear()
        self._counts[peer] = (hour, n + 1)
        return n < self.per_hour


# -- directory ----------------------------------------------------------------------


class Directory:
    """Known custodians, from signed descriptors (gossip and anti-entropy pulls).

    The store is the record; this class holds an index of it in memory (peer ->
    seq, exact bytes), made once when the node starts, because the loops read
    the directory every half second and every pull compares against it. Only
    this class writes the custodians table, and only in the running node (one
    per home): a row written by anything else is seen at the next start.
    Descriptors are verified once, when they arrive, and parsed lazily. The
    same descriptor arriving again costs a hash, not a signature check.

    Anti-entropy pulls carry a summary of what the puller holds, (key of peer,
    seq) per custodian, and the reply carries only the descriptors that are
    newer than those or unknown to the puller: with N custodians in step a
    pull moves O(N) small integers instead of N descriptors.
    """

    def __init__(self, store: Store, me: str, admits: Callable[[str], bool] = lambda peer: True) -> None:
        """``admits(peer)``: whether the network admits ``peer``; descriptors of peers it
        does not are refused before their signature is checked, and never stored."""
        self.store = store
        self.me = me
        self.admits = admits
        self._signed: dict[str, bytes] = {}  # peer -> the descriptor held, exact bytes
        self._seq: dict[str, int] = {}
        self._key: dict[str, bytes] = {}  # peer -> its key in pull summaries
        self._parsed: dict[str, Descriptor] = {}
        self._held: dict[bytes, str] = {}  # sha256 of a descriptor we hold -> its peer
        self._heard: dict[str, int] = {}  # peer -> when its descriptor last reached us
        self.verified = VerifiedRecords(8 << 20)  # the validator's parses, for accept() right after
        self._summary: bytes | None = None
        for row in store.custodians():
            self._index(row["peer_id"], row["descriptor"], row["seq"])
            self._heard[row["peer_id"]] = row["updated_at"]

    def _index(self, peer: str, signed: bytes, seq: int) -> None:
        old = self._signed.get(peer)
        if old is not None:
            self._held.pop(hashlib.sha256(old).digest(), None)
        self._signed[peer], self._seq[peer] = signed, seq
        self._summary = None
        self._key.setdefault(peer, directory_pull.summary_key(peer))
        self._held[hashlib.sha256(signed).digest()] = peer
        self._parsed.pop(peer, None)

    def accept(self, data: bytes, now: int) -> Descriptor | None:
        """Store a descriptor if valid and newer; None if we already had it (or newer)."""
        if hashlib.sha256(data).digest() in self._held:
            return None
        d = self.parse(data)
        if d.seq > (now + wire.MAX_CLOCK_SKEW) * 1000:
            raise p.MalformedEncoding(f"descriptor of {d.peer_id} is dated in the future")
        if d.seq <= self._seq.get(d.peer_id, -1):
            return None
        fields = {"name": d.name, "country": d.country, "city": d.city, "continent": d.continent, "org": d.org}
        if not self.store.upsert_custodian(d.peer_id, d.signed, fields, d.seq, now=now):
            return None
        self._index(d.peer_id, d.signed, d.seq)
        self._parsed[d.peer_id] = d
        self._heard[d.peer_id] = now
        return d

    def heard(self, data: bytes, now: int) -> None:
        """A descriptor we hold arrived again: its custodian is alive (the gossip validator
        lets only the custodian itself publish its descriptor)."""
        peer = self.held_from(data)
        if peer is not None:
            self._heard[peer] = max(now, self._heard.get(peer, 0))

    def live(self, peer: str, now: int) -> bool:
        """Heard from within ``wire.DESCRIPTOR_TTL`` s (we are always live to ourselves)."""
        return peer == self.me or now - self._heard.get(peer, -wire.DESCRIPTOR_TTL - 1) <= wire.DESCRIPTOR_TTL

    def last_heard(self) -> dict[str, int]:
        return dict(self._heard)

    def __len__(self) -> int:
        return len(self._signed)

    def parse(self, data: bytes) -> Descriptor:
        """A verified descriptor of an admitted peer (the gossip validator's check, kept
        for accept()). The signer is read first: a descriptor of a peer the network has
        not admitted costs a decode, never a signature check."""
        signer = p.signer_of(data)
        if signer is None or not self.admits(peer_id_of(signer)):
            raise NotAdmitted("descriptor of a peer the network has not admitted")
        return self.verified.parse(Descriptor, data)

    def held_from(self, data: bytes) -> str | None:
        """The peer whose descriptor ``data`` is, if we hold exactly these bytes (verified
        when they arrived); None otherwise."""
        return self._held.get(hashlib.sha256(data).digest())

    def seq_of(self, peer_id: str) -> int:
        """The seq of the descriptor held for ``peer_id``; -1 if none."""
        return self._seq.get(peer_id, -1)

    def peer_ids(self) -> list[str]:
        return sorted(self._signed)

    def get(self, peer_id: str) -> Descriptor | None:
        d = self._parsed.get(peer_id)
        if d is None and peer_id in self._signed:
            d = self._parsed[peer_id] = Descriptor.from_bytes(self._signed[peer_id])
        return d

    def all(self) -> list[Descriptor]:
        """Every custodian, by peer id."""
        return [d for peer in sorted(self._signed) if (d := self.get(peer)) is not None]


    def _summary_now(self) -> bytes:
        if self._summary is None:  # made again only after the directory changed
            self._summary = directory_pull.summary((self._key[peer], seq) for peer, seq in self._seq.items())
        return self._summary

    def summary(self) -> bytes:
        """A pull request: what we hold, so the peer sends only what is new to us."""
        return directory_pull.encode_pull(self._summary_now())

    def pull_reply(self, frame: bytes) -> bytes:
        """The descriptors the puller lacks (every one for a bare ``wire.PULL``)."""
        theirs = directory_pull.decode_pull(frame)
        return directory_pull.pull_reply(  # never a descriptor of a peer the network does not admit
            ((self._key[peer], seq, self._signed[peer]) for peer, seq in self._seq.items() if self.admits(peer)),
            theirs, self._summary_now())


# -- custodian side -----------------------------------------------------------------


class Custodian:
    """Receives shards: verifies everything, stores the sealed shard, signs a receipt."""

    def __init__(self, store: Store, keystore: Keystore, limits: Limits = DEFAULT_LIMITS) -> None:
        self.store = store
        self.keystore = keystore
        self.limits = limits
        self.key = keystore.signer
        self.hpke = keystore.openers()
        self.peer_id = keystore.peer_id
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self._limiter = AuditLimiter()

    def _replayed(self, cover: Delivery, now: int) -> bool:
        while self._seen and next(iter(self._seen.values())) < now - wire.DELIVERY_WINDOW:
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
            cover_b, keyset_b, sealed = p.decode_record(
                frame, wire.DELIVER_FRAME_TAG, 1, 3, max_size=wire.DELIVER.max_request
            )
            cover = Delivery.from_bytes(p.want_bytes(cover_b, "cover"))
        except p.ShardnetError as exc:
            raise Rejected(f"malformed delivery: {exc}") from None
        if remote != peer_id_of(cover.owner):
            raise Rejected("delivery cover is not signed by the sending peer")
        if cover.recipient != self.peer_id:
            raise Rejected(f"delivery is addressed to {cover.recipient}")
        if not now - wire.DELIVERY_WINDOW <= cover.sent_at <= now + wire.MAX_CLOCK_SKEW:
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
        except (p.ShardnetError, ValueError, ShardConflict) as exc:
            reason = str(exc)[:400]
            if self._limiter.allow(remote, now):
                self.store.append_audit(
                    "refuse", {"keyset": cover.keyset_id.hex(), "epoch": cover.epoch, "index": cover.index,
                               "owner": peer_id_of(cover.owner), "reason": reason}, now, self.key,
                )
            return answer("refused", reason)
        return answer(status)

    def _store_shard(self, cover: Delivery, keyset_b: Any, sealed: bytes, digest: bytes, now: int) -> str:
        if not hmac.compare_digest(digest, cover.shard_digest):
            raise p.MalformedEncoding("the shard does not match the delivery cover")
        keyset = p.Keyset.from_bytes(p.want_bytes(keyset_b, "keyset"), owner=cover.owner)
        if (keyset.keyset_id, keyset.epoch) != (cover.keyset_id, cover.epoch):
            raise p.MalformedEncoding("keyset record and delivery cover disagree")
        if keyset.not_after is not None and now > keyset.not_after:
            raise p.ShardExpired(f"keyset {keyset.id_hex[:12]}… expired at {keyset.not_after}")
        policy = Policy(str(keyset.attrs.get("policy", DEFAULT_POLICY)))
        if policy.digest != keyset.policy_hash:
            raise p.MalformedEncoding("the keyset's policy text does not match its policy hash")
        meta = p.read_shard_meta(sealed, owner=cover.owner)
        if meta.epoch_record or meta.wrap:  # version 2 is what a holder seals to itself, never a delivery
            raise p.MalformedEncoding("a delivered shard carries version 1 metadata")
        if meta.kem not in self.hpke:
            raise p.MalformedEncoding(f"this custodian has no {meta.kem} key")
        meta, share = p.open_shard(
            sealed, self.hpke[meta.kem], recipient=self.peer_id, now=now, owner=cover.owner,
            commitments=keyset.commitments,
        )
        if (meta.keyset_id, meta.epoch, meta.index) != (cover.keyset_id, cover.epoch, cover.index):
            raise p.MalformedEncoding("shard metadata and delivery cover disagree")
        if (meta.threshold, meta.shares, meta.policy_hash) != (keyset.threshold, keyset.shares,
                                                                keyset.policy_hash):
            raise p.MalformedEncoding("shard metadata and keyset disagree on t, n or the policy")
        value = share.value  # verified; only the sealed form is ever stored
        current = self.store.keyset(keyset.id_hex)
        held = self.store.held_shard(keyset.id_hex, meta.epoch, meta.index)
        if held is None:
            holds_one = bool(self.store.held_shards(keyset.id_hex))
            self._within_quota(peer_id_of(cover.owner), adding=len(sealed) + len(meta.signed)
                               + (0 if holds_one else len(keyset.signed)), new_keyset=not holds_one)
        rec = current_record(self.store, keyset.id_hex)  # the epoch alone: no second signature check
        now_at = rec.epoch if rec is not None else keyset.epoch
        if meta.epoch < now_at:  # an owner back from offline with a slot of an epoch that is over
            raise p.MixedShares(f"the shard is of epoch {meta.epoch}; the keyset is at epoch {now_at}")
        if current is not None:  # the delivery may carry the owner's amendment (a shard re-placed)
            amend_record(self.store, self.key, p.Keyset.from_bytes(current["record"]), keyset, now)
        if held is not None and self._same_share(held["sealed"], sealed, value, now):
            return "already-held"
        del share, value
        body = {"keyset": keyset.id_hex, "epoch": meta.epoch, "index": meta.index,
                "owner": peer_id_of(cover.owner), "shard_sha256": digest.hex()}
        with self.store.transaction():
            self.store.put_keyset(_keyset_row(keyset, "custodian"), now=now)
            self.store.put_held_shard(
                keyset.id_hex, meta.epoch, meta.index, sealed=self.keystore.seal_at_rest(sealed), meta=meta.signed,
                now=now,
                audit=AuditEvent("store", body, self.key),
            )
        return "stored"

    def _within_quota(self, owner: str, *, adding: int, new_keyset: bool) -> None:
        """Refuse what would take ``owner`` past this custodian's quotas (``Limits``)."""
        count, size = self.store.owner_holdings(owner)
        if new_keyset and count >= self.limits.keysets_per_owner:
            raise QuotaExceeded(f"this custodian holds {count} keysets of this owner, its limit "
                                f"(limits.keysets_per_owner)")
        if size + adding > self.limits.bytes_per_owner:
            raise QuotaExceeded(f"this custodian holds {size} bytes for this owner; {adding} more would pass "
                                f"its limit of {self.limits.bytes_per_owner} (limits.bytes_per_owner)")

    def _same_share(self, stored: bytes, sealed: bytes, value: int, now: int) -> bool:
        """Whether the shard held for this slot is the one delivered again: the same bytes,
        or (after a rewrap resealed it to an at-rest key) the same share."""
        mine = self.keystore.open_at_rest(stored)
        if mine == sealed:
            return True
        meta = p.read_shard_meta(mine)
        if meta.wrap == 0:
            return False
        _, held = p.open_shard(mine, self.keystore.opener_for(meta), recipient=self.peer_id, now=now)
        return hmac.compare_digest(hazmat.scalar_bytes(held.value), hazmat.scalar_bytes(value))


def amend_record(store: Store, key: p.Signer, current: p.Keyset, new: p.Keyset, now: int, *,
                 known: bool = False) -> bool:
    """Replace ``current`` by ``new`` in the store if ``new`` amends it (``Keyset.amends``:
    same epoch, higher revision, only holders moved); True if it did. Raises
    InvalidSignature for a later record that changes anything else."""
    if not new.amends(current):
        return False
    audit = AuditEvent("amended", {"keyset": new.id_hex, "epoch": new.epoch, "revision": new.revision}, key)
    (store.amend_known_keyset if known else store.amend_keyset)(new.id_hex, new.signed, now=now, audit=audit)
    return True


def _keyset_row(keyset: p.Keyset, role: str) -> Any:
    return {
        "keyset_id": keyset.id_hex, "record": keyset.signed, "owner": peer_id_of(keyset.owner),
        "threshold": keyset.threshold, "shares": keyset.shares, "epoch": keyset.epoch,
        "created": keyset.created, "not_after": keyset.not_after, "role": role,
    }


# -- owner side ---------------------------------------------------------------------


#: An import's idempotency token: 32 to 64 hex digits, random (never derived from the key:
#: a hash of it would let anyone holding the token test a guessed key).
IMPORT_TOKEN = re.compile(r"[0-9a-f]{32,64}")
IMPORT_TOKEN_KEY = "import-token:"

#: A keyset's reserves (its undelivered shares, sealed to the owner) are kept at most this
#: long past the keyset's deliver-within: then they are erased, re-placed or not.
RESERVE_KEEP = 86400


class ReserveExpired(p.ShardnetError):
    """A slot's reserve outlived RESERVE_KEEP: it is erased, and the shard is not re-placed."""


@dataclass
class ImportResult:
    keyset: p.Keyset
    holders: dict[int, list[str]]
    placement: str
    note: str


class Owner:
    """Deals keys, places and seals shards, and turns receipts into outbox state."""

    def __init__(self, store: Store, keystore: Keystore, directory: Directory, members: Members, rng: Rng,
                 rules: Rules) -> None:
        self.store = store
        self.key = keystore.signer
        self.keystore = keystore
        self.directory = directory
        self.members = members
        self.rng = rng
        self.rules = rules
        self.peer_id = keystore.peer_id

    def import_key(
        self, master: bytes, threshold: int, shares: int, *, now: int, placement_expr: str | None = None,
        redundancy: int = 1, expires: int | None = None, kem: str = "x25519",
        token: tuple[str, str] | None = None,
        approvers: list[str] | None = None, quorum: int | None = None, policy_text: str | None = None,
        custodians: list[str] | None = None, deliver_within: int | None = p.outbox.DELIVER_WITHIN,
        authorities: list[str] | None = None, authority_quorum: int | None = None,
        schedule: dict[str, int] | None = None, renew: bool = False,
    ) -> ImportResult:
        """``deliver_within``: seconds after which a shard still undelivered is re-placed on
        another admitted custodian (None: never). Until then each slot keeps its share
        sealed to this node's own HPKE key, and erases it when the shard is delivered.
        ``schedule``: ``refresh_every`` and ``rewrap_every`` seconds (``_autopilot``).
        ``renew``: the authorities refresh it with a new not-after before it expires.
        ``token``: the import's idempotency token and the digest of its options
        (:meth:`imported_with`), stored with it."""
        policy = Policy(policy_text if policy_text is not None else DEFAULT_POLICY)
        if kem not in p.KEMS:
            raise ValueError(f"unknown kem {kem!r}; choose one of {', '.join(p.KEMS)}")
        if expires is not None and not (isinstance(expires, int) and 0 < expires <= MAX_DURATION):
            raise ValueError(f"--expires: a duration from 1s to 100y, got {expires!r}")
        p.check_params(threshold, shares)
        admitted = self.candidates(kem, now, custodians)
        cands = [self._candidate(a) for a in admitted.values()]
        need = shares * redundancy
        if len(cands) < need:
            raise placement.PlacementError(
                f"need {need} custodians ({shares} shards x {redundancy}), but only {len(cands)} admitted "
                f"custodians with a {kem} key are known (see `shardnet membership` and `shardnet custodians`)")
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
                                  seed=int.from_bytes(self.rng(4), "big"))
        not_after = now + expires if expires else None
        attrs: dict[str, Any] = {"placement": placement_expr, "redundancy": redundancy,
                                 "holders": {str(i): hs for i, hs in holders.items()},
                                 "policy": policy.text}
        if custodians is not None:  # a re-placed shard stays on this set too
            attrs["custodians"] = sorted(admitted)
        for key, every in (schedule or {}).items():
            if key not in p.keyset_rules.SCHEDULE_KEYS or not isinstance(every, int) \
                    or not p.keyset_rules.MIN_SCHEDULE <= every <= p.keyset_rules.MAX_SCHEDULE:
                raise ValueError(f"--{key.replace('_', '-')}: {p.keyset_rules.MIN_SCHEDULE} s to "
                                 f"{p.keyset_rules.MAX_SCHEDULE // (365 * 86400)} years")
            attrs[key] = every
        if renew:
            if not expires:
                raise ValueError("--renew needs --expires: a keyset that never expires has nothing to renew")
            attrs["renew"] = True
        if deliver_within is not None:
            if deliver_within < 1:
                raise ValueError("--deliver-within must be at least 1 second")
            attrs["deliver_within"] = deliver_within
        if approvers:
            approver_ids = sorted({self._resolve(a) for a in approvers})
            q = quorum if quorum is not None else min(threshold, len(approver_ids))
            if not 1 <= q <= len(approver_ids):
                raise ValueError(f"--quorum must be 1..{len(approver_ids)} for {len(approver_ids)} approvers")
            attrs["approvers"], attrs["quorum"] = approver_ids, q
        elif quorum is not None:
            n_holders = len({h for hs in holders.values() for h in hs})
            if not 1 <= quorum <= n_holders:
                raise ValueError(f"--quorum must be 1..{n_holders} (the custodians approve by default)")
            attrs["quorum"] = quorum
        if authorities:
            authority_ids = sorted({self._resolve(a, "authority") for a in authorities})
            k = authority_quorum if authority_quorum is not None else 1
            if not 1 <= k <= len(authority_ids):
                raise ValueError(f"--authority-quorum must be 1..{len(authority_ids)} for {len(authority_ids)} "
                                 "authorities")
            attrs["authorities"], attrs["authority_quorum"] = authority_ids, k
        elif authority_quorum not in (None, 1):
            raise ValueError("--authority-quorum needs --authorities (the owner alone is the default, K = 1)")
        keyset, share_list = p.split_key(master, threshold, shares, owner=self.key, now=now, rng=self.rng,
                                         not_after=not_after, kem=kem, policy_hash=policy.digest,
                                         attrs=attrs)
        rows: list[NewOutboxItem] = []
        for share in share_list:
            for holder in holders[share.index]:
                meta = p.ShardMeta(keyset.keyset_id, keyset.epoch, share.index, shares, threshold, holder,
                                   now, not_after, keyset.policy_hash, keyset.commitments_digest, kem)
                # Sealed to the key the authorities vouched for, not the one the descriptor names.
                sealed = p.seal_shard(meta, share, admitted[holder].hpke_key(kem) or b"", owner=self.key)
                row: NewOutboxItem = {"keyset_id": keyset.id_hex, "epoch": keyset.epoch, "idx": share.index,
                                      "custodian": holder, "envelope": sealed}
                if deliver_within is not None and holder != self.peer_id:
                    row["reserve"] = self._reserve(keyset, share, now)
                    row["deliver_by"] = now + deliver_within
                rows.append(row)
        del share_list
        holder_ids = {h for hs in holders.values() for h in hs}
        # Approvers and authorities that hold no shard still need the record.
        notices = sorted({a for a in [*attrs.get("approvers", []), *attrs.get("authorities", [])]
                          if a not in holder_ids and a != self.peer_id})
        self.store.import_keyset(
            _keyset_row(keyset, "owner"), rows,
            AuditEvent("import", {"keyset": keyset.id_hex, "threshold": threshold, "shares": shares,
                                  "kem": kem, "placement": placement_expr, "redundancy": redundancy,
                                  "holders": attrs["holders"]}, self.key),
            now=now, notices=notices,
            token=(IMPORT_TOKEN_KEY + token[0], f"{keyset.id_hex} {token[1]}".encode()) if token else None,
        )
        return ImportResult(keyset, holders, placement_expr, note)

    def imported_with(self, token: str) -> tuple[str, str] | None:
        """The keyset an import with this idempotency token made, if one did, and the digest
        of its options. The CLI draws the token at random and prints it before it sends the
        key: a retry of an import cut off by a crash reports that keyset instead of making a
        second one."""
        got = self.store.get_kv(IMPORT_TOKEN_KEY + token)
        if got is None:
            return None
        keyset_id, _, digest = got.decode().partition(" ")
        return keyset_id, digest

    def candidates(self, kem: str, now: int, pinned: list[str] | None = None) -> dict[str, Admission]:
        """Who may hold a shard now: custodians the network admits (with their vouched
        attributes and HPKE keys) that we know how to reach and have heard from lately. ``pinned``: exactly these,
        each of which must be one."""
        failed = self.store.kv_keys(POSSESSION_PREFIX, except_value=b"ok")  # one query, not one per candidate
        failed_peers = {key.split(":")[1] for key in failed}
        admitted = {a.peer_id: a for a in self.members.custodians(now)
                    if kem in a.kems and self.directory.get(a.peer_id) is not None
                    and self.directory.live(a.peer_id, now)
                    and not (a.peer_id in failed_peers and possession_mark(a.peer_id, a) in failed)}
        if pinned is None:
            return admitted
        out = {}
        for peer in dict.fromkeys(x.strip() for x in pinned if x.strip()):
            if peer not in admitted:
                state = self.members.view.state(peer, now)
                a = self.members.admission(peer, now)
                if a is not None and self.failed_possession(a):
                    state = "failed"
                elif state == "admitted" and self.directory.get(peer) is not None and not self.directory.live(peer, now):
                    state = "stale"
                why = {"unknown": "not admitted to the network", "admitted": "admitted, but not as a custodian"
                       f" with a {kem} key, or its descriptor (its addresses) is unknown",
                       "stale": f"its descriptor was not heard for over {wire.DESCRIPTOR_TTL} s (stale)",
                       "failed": "it failed the proof of possession of its HPKE key",
                       }.get(state, state)
                raise ValueError(f"--custodians: {peer} cannot hold a shard: {why}")
            out[peer] = admitted[peer]
        return out

    def _reserve(self, keyset: p.Keyset, share: p.Share, now: int) -> bytes:
        """The share sealed to this node's own x25519 key, kept until the slot is delivered."""
        meta = p.ShardMeta(keyset.keyset_id, keyset.epoch, share.index, keyset.shares, keyset.threshold,
                           self.peer_id, now, keyset.not_after, keyset.policy_hash, keyset.commitments_digest,
                           "x25519")
        return p.seal_shard(meta, share, self.keystore.hpke_public()["x25519"], owner=self.key)

    def revoked_slot(self, row: OutboxRow) -> tuple[str, str] | None:
        """Whether a pending slot's shard may no longer go to its custodian: ("index", why)
        if its authorities revoked that index at that epoch, ("custodian", why) if they
        revoked the custodian; None otherwise."""
        book = self.rules.book(row["keyset_id"])
        if book is None:
            return None
        if row["idx"] in book.revoked.indices(row["epoch"]):
            return "index", f"index {row['idx']} of epoch {row['epoch']} is revoked"
        if row["custodian"] in book.revoked.peers("custodian"):
            return "custodian", f"custodian {row['custodian']} is revoked for this keyset"
        return None

    def replace(self, row: OutboxRow, now: int) -> str:
        """Re-place an overdue slot's shard on another admitted custodian that keeps the
        keyset's placement; return it. One transaction moves the slot, queues the new one
        and amends the keyset record (same epoch, the new holder named, revision + 1).
        Raises PlacementError when no custodian fits, ValueError when the slot has no reserve."""
        if row["reserve"] is None:
            raise ValueError("the slot keeps no share to re-place (queued before re-placement existed)")
        book = self.rules.book(row["keyset_id"])  # revocations and a placement since the import
        if book is not None and row["idx"] in book.revoked.indices(row["epoch"]):
            raise ValueError(f"index {row['idx']} of epoch {row['epoch']} is revoked: it goes to nobody")
        ks_row = self.store.keyset(row["keyset_id"])
        assert ks_row is not None
        keyset = p.Keyset.from_bytes(ks_row["record"])
        within = keyset.attrs.get("deliver_within")
        if not isinstance(within, int) or now >= keyset.created + within + RESERVE_KEEP:
            raise ReserveExpired(f"the shard was not delivered or re-placed within {within} s + "
                                 f"{RESERVE_KEEP // 3600} h of the import")
        _, share = p.open_shard(row["reserve"], self.keystore.openers()["x25519"], recipient=self.peer_id,
                                now=now, owner=self.key.public_key().public_bytes_raw(),
                                commitments=keyset.commitments)
        revoked = book.revoked.peers("custodian") if book is not None else frozenset()
        admitted = {peer: a for peer, a in self.candidates(keyset.kem, now).items() if peer not in revoked}
        pinned = keyset.attrs.get("custodians")
        if isinstance(pinned, list):
            admitted = {peer: a for peer, a in admitted.items() if peer in pinned}
        holders = {int(i): list(hs) for i, hs in keyset.attrs.get("holders", {}).items()}
        moved_from = frozenset(o["custodian"] for o in self.store.outbox(keyset.id_hex) if o["state"] == "moved")
        new = placement.replace(
            [self._candidate(a) for a in admitted.values()],
            {i: [self._candidate(self._last_admission(h)) for h in hs] for i, hs in holders.items()},
            row["idx"], row["custodian"],
            constraints=placement.parse(book.placement if book else str(keyset.attrs.get("placement", ""))),
            avoid=moved_from, seed=int.from_bytes(self.rng(4), "big"))
        holders[row["idx"]] = [new.peer_id if h == row["custodian"] else h for h in holders[row["idx"]]]
        amended = keyset.amend(self.key, holders={str(i): hs for i, hs in holders.items()})
        meta = p.ShardMeta(keyset.keyset_id, keyset.epoch, share.index, keyset.shares, keyset.threshold,
                           new.peer_id, now, keyset.not_after, keyset.policy_hash, keyset.commitments_digest,
                           keyset.kem)
        sealed = p.seal_shard(meta, share, admitted[new.peer_id].hpke_key(keyset.kem) or b"", owner=self.key)
        del share
        item: NewOutboxItem = {"keyset_id": row["keyset_id"], "epoch": row["epoch"], "idx": row["idx"],
                               "custodian": new.peer_id, "envelope": sealed, "reserve": row["reserve"],
                               "deliver_by": now + within}
        # Who holds the old record gets the amendment: the holders that have their shard,
        # and the approvers that hold none (the new holder gets it with its shard).
        delivered = {o["custodian"] for o in self.store.outbox(keyset.id_hex) if o["state"] == "delivered"}
        told = ((delivered - {row["custodian"]}) | set(keyset.attrs.get("approvers", []))) - {self.peer_id,
                                                                                           new.peer_id}
        self.store.move_slot(row, item, record=amended.signed, now=now, notices=sorted(told), audit=AuditEvent(
            "moved", {"keyset": keyset.id_hex, "epoch": keyset.epoch, "index": row["idx"], "from": row["custodian"],
                      "to": new.peer_id, "revision": amended.revision, "reason": "not delivered by its deadline"},
            self.key))
        return new.peer_id

    def drop_reserve(self, row: OutboxRow, why: str, now: int) -> None:
        self.store.drop_reserve(row["keyset_id"], row["epoch"], row["idx"], row["custodian"], now=now, error=why,
                                audit=AuditEvent("reserve-erased", {"keyset": row["keyset_id"], "index": row["idx"],
                                                                     "custodian": row["custodian"], "reason": why},
                                                 self.key))

    def _last_admission(self, peer: str) -> Admission | None:
        """The peer's latest admission, even if revoked or expired since (its attributes
        still count for the placement of the other shards)."""
        known = self.members.view.admissions_of(peer)
        return known[-1] if known else None

    @staticmethod
    def _candidate(a: Admission | None) -> placement.Candidate:
        if a is None:
            return placement.Candidate("", "", "")
        return placement.Candidate(a.peer_id, a.country, a.continent, a.org, a.city)

    def failed_possession(self, a: Admission) -> bool:
        raw = self.store.get_kv(possession_mark(a.peer_id, a))
        return raw is not None and raw != b"ok"

    def _resolve(self, who: str, what: str = "approver") -> str:
        """An approver's (or authority's) peer id. Names are self-declared in descriptors, so
        anyone could claim one: they are always named by peer id (see `shardnet custodians`)."""
        who = who.strip()
        try:
            p.public_key_of(who)
        except p.MalformedEncoding:
            hint = [d.peer_id for d in self.directory.all() if d.name == who]
            extra = f" (a custodian calling itself that has peer id {hint[0]})" if len(hint) == 1 else ""
            raise ValueError(f"{what} {who!r} is not a peer id; name {what}s by peer id{extra}") from None
        return who

    def delivery_frame(self, row: Any, now: int) -> tuple[bytes, Delivery]:
        ks = self.store.keyset(row["keyset_id"])
        assert ks is not None
        cover = Delivery.make(self.key, keyset_id=bytes.fromhex(row["keyset_id"]), epoch=row["epoch"],
                              index=row["idx"], recipient=row["custodian"], sealed=row["envelope"],
                              sent_at=now, nonce=self.rng(16))
        return p.encode([wire.DELIVER_FRAME_TAG, 1, cover.signed, ks["record"], row["envelope"]]), cover

    def check_receipt(self, row: Any, cover: Delivery, reply: bytes) -> Receipt:
        """The custodian's receipt, checked against what we sent; raises if it does not answer it."""
        r = Receipt.from_bytes(reply, custodian=row["custodian"])
        expect = (cover.keyset_id, cover.epoch, cover.index, cover.shard_digest,
                  hashlib.sha256(cover.signed).digest())
        if (r.keyset_id, r.epoch, r.index, r.shard_digest, r.delivery_digest) != expect:
            raise p.MalformedEncoding("receipt does not answer the delivery we sent")
        return r

    def record(self, row: Any, outcome: p.outbox.Record, receipt: Receipt | None, now: int) -> None:
        """Carry out an outbox slot's Record effect: delivered, refused, or one more failed attempt."""
        key = (row["keyset_id"], row["epoch"], row["idx"], row["custodian"])
        if outcome.state is p.outbox.OutboxState.PENDING or receipt is None:
            self.store.record_attempt(*key, error=outcome.detail[:400], now=now)
            return
        body = {"keyset": row["keyset_id"], "epoch": row["epoch"], "index": row["idx"],
                "custodian": row["custodian"], "status": receipt.status, "receipt_sha256":
                hashlib.sha256(receipt.signed).hexdigest()}
        if outcome.state is p.outbox.OutboxState.REFUSED:
            body["reason"] = receipt.reason
            self.store.mark_refused(*key, reason=receipt.reason, now=now,
                                    audit=AuditEvent("refused", body, self.key))
        else:
            self.store.mark_delivered(*key, receipt=receipt.signed, now=now,
                                      audit=AuditEvent("receipt", body, self.key))


# -- reconstruction: requests, votes, releases --------------------------------------



FETCHED_KEPT = 32


class Approvals:
    """Requests and votes this node has seen, and its own votes."""

    def __init__(self, store: Store, key: p.Signer, eligible: Callable[[str], bool] = lambda peer: True,
                 revoked: Callable[[str, str], bool] = lambda keyset_id, peer: False,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        """``eligible(peer)``: whether an approver named by a keyset may vote now (the network
        still admits it). ``revoked(keyset_id, peer)``: whether the keyset's authorities
        revoked ``peer`` as a requester. Votes of either count nowhere: not from gossip, not
        from a sync pull, not as the evidence of a release ask."""
        self.store = store
        self.key = key
        self.eligible = eligible
        self.revoked = revoked
        self.limits = limits
        self.peer_id = peer_id_of(key.public_key().public_bytes_raw())
        self.verified = VerifiedRecords()
        # Records a coordinator fetched from the network for its own requests (newest last).
        self._fetched: OrderedDict[bytes, p.Keyset] = OrderedDict()

    def remember(self, keyset: p.Keyset) -> None:
        """Tally requests for a keyset this node fetched the record of (``_keyset_fetch``)."""
        self._fetched[keyset.keyset_id] = keyset
        self._fetched.move_to_end(keyset.keyset_id)
        while len(self._fetched) > FETCHED_KEPT:
            self._fetched.popitem(last=False)

    def parse_request(self, data: bytes) -> Request:
        return self.verified.parse(Request, data)

    def parse_vote(self, data: bytes) -> Vote:
        return self.verified.parse(Vote, data)

    def keyset(self, keyset_id: bytes) -> p.Keyset | None:
        """The keyset record, whether this node owns it, holds a shard of it or only approves."""
        row = self.store.keyset(keyset_id.hex())
        record = row["record"] if row else self.store.known_keyset(keyset_id.hex())
        if record is None:
            return self._fetched.get(keyset_id)
        return self.verified.parse(p.Keyset, record)

    def accept_keyset_notice(self, remote: str, data: bytes, now: int) -> bytes:
        """An owner tells an approver (that holds no shard) about a keyset it approves for,
        or tells a holder or an approver of an amendment (the same epoch, a shard re-placed:
        a higher revision replaces the record held)."""
        try:
            keyset = p.Keyset.from_bytes(data)
        except p.ShardnetError as exc:
            raise Rejected(f"malformed keyset notice: {exc}") from None
        if remote != peer_id_of(keyset.owner):
            raise Rejected("a keyset notice must come from the keyset's owner")
        row = self.store.keyset(keyset.id_hex)
        if row is not None:  # we own it or hold a shard of it: only an amendment is news
            self._amend(p.Keyset.from_bytes(row["record"]), keyset, now, known=False)
            return b"ok"
        try:
            rule = ApprovalRule.of(keyset)
        except p.ShardnetError as exc:
            raise Rejected(str(exc)) from None
        authority = self.peer_id in (keyset.attrs.get("authorities") or [])
        if self.peer_id not in rule.approvers and not authority:
            raise Rejected("this node is neither an approver nor a policy authority of that keyset")
        known = self.store.known_keyset(keyset.id_hex)
        if known is not None:
            self._amend(p.Keyset.from_bytes(known), keyset, now, known=True)
            return b"ok"
        kept = self.store.known_keysets_of(peer_id_of(keyset.owner))
        if kept >= self.limits.known_keysets_per_owner:
            raise Rejected(f"this node keeps {kept} keyset records of this owner, its limit "
                           "(limits.known_keysets_per_owner)")
        self.store.put_known_keyset(
            keyset.id_hex, keyset.signed, peer_id_of(keyset.owner), now=now,
            audit=AuditEvent("approver-of" if self.peer_id in rule.approvers else "authority-of",
                             {"keyset": keyset.id_hex, "owner": peer_id_of(keyset.owner),
                              "quorum": rule.quorum}, self.key),
        )
        return b"ok"

    def forget_expired(self, before: int) -> int:
        """Forget the keyset records kept as an approver or authority of keysets that
        expired before ``before`` (at the epoch this node knows): past its expiry no
        custodian releases a shard of it. How many went."""
        gone = []
        for row in self.store.known_keysets():
            not_after = record_view(self.store, row["record"]).not_after
            if not_after is not None and not_after < before:
                gone.append(row["keyset_id"])
        return self.store.drop_known_keysets(gone)

    def _amend(self, current: p.Keyset, new: p.Keyset, now: int, *, known: bool) -> None:
        """Keep ``new`` if it is the owner's later amendment of ``current`` (holders moved,
        nothing else changed); ignore one that is the same or older."""
        if new.epoch < current.epoch:
            return  # we hold a later epoch already
        if new.epoch > current.epoch:
            raise Rejected(f"this node holds epoch {current.epoch} of that keyset; a notice only amends the "
                           "epoch it holds")
        try:
            amend_record(self.store, self.key, current, new, now, known=known)
        except p.InvalidSignature as exc:
            raise Rejected(f"{exc}; a notice only amends who holds which shard") from None

    def accept_request(self, data: bytes, now: int) -> Request | None:
        """Store a valid, unexpired request for a keyset we know; None if known or not ours."""
        req = self.parse_request(data)
        if now > req.not_after:
            raise p.MalformedEncoding("request has expired")
        if req.created > now + wire.MAX_CLOCK_SKEW:
            raise p.MalformedEncoding("request is dated in the future")
        if self.keyset(req.keyset_id) is None:
            return None
        if req.requester != self.peer_id and self.store.request(req.id) is None and \
                self.store.live_requests(req.requester, now) >= self.limits.live_requests_per_requester:
            raise QuotaExceeded(f"{req.requester} has {self.limits.live_requests_per_requester} requests that have "
                                f"not expired, this node's limit (limits.live_requests_per_requester)")
        if self.store.put_request(req.id, req.keyset_id.hex(), req.requester, req.signed,
                                  created=req.created, not_after=req.not_after, now=now):
            return req
        return None

    def request(self, request_id: str) -> Request:
        row = self.store.find_request(request_id)
        return self.parse_request(row["record"])

    def stored_votes(self, req: Request) -> list[Vote]:
        """Every signed vote on ``req`` this node keeps: the counted ones and both
        halves of each recorded equivocation."""
        votes = [self.parse_vote(v) for v in self.store.votes(req.id)]
        for first, second in self.store.equivocations(req.id):
            votes += [self.parse_vote(first), self.parse_vote(second)]
        return votes

    def tally(self, req: Request, evidence: Sequence[Vote] = ()) -> Tally:
        """The tally of the stored votes and of ``evidence`` (votes a peer offered)."""
        keyset = self.keyset(req.keyset_id)
        if keyset is None:
            raise LookupError(f"keyset {req.keyset_id.hex()} is not known to this node")
        tally = Tally(req, ApprovalRule.of(keyset))
        tally.add_all([v for v in self.stored_votes(req) + list(evidence) if self.counts(keyset.id_hex, v.approver)],
                      req.created)
        return tally

    def counts(self, keyset_id: str, approver: str) -> bool:
        """Whether ``approver``'s votes on the keyset's requests count now."""
        return self.eligible(approver) and not self.revoked(keyset_id, approver)

    def record_equivocations(self, tally: Tally, now: int) -> list[Equivocation]:
        """Keep the evidence of every equivocation in ``tally`` not on record yet,
        each with an audit entry that names the approver; return the new ones."""
        new = []
        for e in tally.equivocations.values():
            body = {"request": e.request_id, "keyset": tally.request.keyset_id.hex(), "approver": e.approver,
                    "decisions": [e.first.decision, e.second.decision],
                    "votes_sha256": [hashlib.sha256(e.first.signed).hexdigest(),
                                     hashlib.sha256(e.second.signed).hexdigest()]}
            if self.store.put_equivocation(e.request_id, e.approver, e.first.signed, e.second.signed, now=now,
                                           audit=AuditEvent("equivocation", body, self.key)):
                new.append(e)
        return new

    def accept_vote(self, data: bytes, now: int) -> tuple[Vote, Added] | None:
        """Take a signed vote on a known request from one of its approvers.

        A first vote is stored (COUNTED). A vote that contradicts the approver's
        earlier one voids the approver, and the pair is kept as evidence
        (EQUIVOCATION). None for a vote that changes nothing here (a duplicate,
        a void approver, an unknown request). Raises VoteRejected.
        """
        vote = self.parse_vote(data)
        row = self.store.request(vote.request_id)
        if row is None or not self.counts(row["keyset_id"], vote.approver):
            return None
        req = self.parse_request(row["record"])
        tally = self.tally(req)
        added = tally.add(vote, now)  # raises VoteRejected
        if added is Added.COUNTED:
            if self.store.put_vote(vote.request_id, vote.approver, vote.decision, vote.signed, now=now):
                return vote, added
        elif added is Added.EQUIVOCATION and self.record_equivocations(tally, now):
            return vote, added
        return None

    def cast(self, request_id: str, decision: str, now: int) -> Vote:
        req = self.request(request_id)
        tally = self.tally(req)
        if self.peer_id not in tally.rule.approvers:
            raise ValueError("this node is not an approver of that keyset")
        if now > req.not_after:
            raise ValueError(f"request {req.id} has expired")
        if self.revoked(req.keyset_id.hex(), req.requester):
            raise ValueError(f"request {req.id} is refused: the keyset's authorities revoked its requester")
        earlier = tally.votes.get(self.peer_id)
        if earlier is not None:
            raise ValueError(f"this node already voted {earlier.decision} on request {req.id}")
        if self.peer_id in tally.equivocations:
            raise ValueError(f"this node's key signed contradicting votes on request {req.id}; it is void there")
        vote = Vote.make(self.key, req, decision, now)
        tally.add(vote, now)
        with self.store.transaction():
            self.store.put_vote(req.id, self.peer_id, decision, vote.signed, now=now)
            self.store.append_audit("vote", {"request": req.id, "keyset": req.keyset_id.hex(),
                                             "requester": req.requester, "decision": decision}, now, self.key)
        return vote

    def listing(self, now: int) -> list[dict[str, Any]]:
        out = []
        for row in self.store.requests(active_at=now - 3600):
            req = self.parse_request(row["record"])
            try:
                tally = self.tally(req)
            except LookupError:
                continue
            mine = tally.votes.get(self.peer_id)
            out.append({
                "request": req.id, "keyset": req.keyset_id.hex(), "requester": req.requester,
                "mode": req.mode, "reason": req.reason, "created": req.created, "not_after": req.not_after,
                "approvals": tally.approvals, "denials": tally.denials, "quorum": tally.rule.quorum,
                "state": "refused" if self.revoked(req.keyset_id.hex(), req.requester) else tally.state(now).value,
                "approver": self.peer_id in tally.rule.approvers,
                "void": sorted(tally.equivocations),
                # "void": this node's own key signed both ways (a stolen or cloned key).
                "my_vote": "void" if self.peer_id in tally.equivocations else mine.decision if mine else None,
                "outcome": row["outcome"],
            })
        return out

    def sync_reply(self, now: int, budget: int = wire.SYNC.max_reply - 1024) -> bytes:
        """The live requests with their votes, newest first, within ``budget`` bytes.

        Both halves of an equivocation travel, so every peer voids the approver;
        the void approver's stored vote (one of the halves) is not sent twice.
        A request that does not fit is left for the next pull, never cut.
        """
        items: list[list[Any]] = []
        used = 16  # msgpack array headers
        for r in reversed(self.store.requests(active_at=now)[-256:]):
            votes = self.store.votes(r["request_id"])
            pairs = self.store.equivocations(r["request_id"])
            if pairs:  # parsing verifies a signature: only where a vote may need leaving out
                void = {self.parse_vote(first).approver for first, _ in pairs}
                votes = [v for v in votes if self.parse_vote(v).approver not in void]
                votes += [v for pair in pairs for v in pair]
            size = len(r["record"]) + sum(len(v) + 5 for v in votes) + 16
            if used + size > budget:
                break
            used += size
            items.append([bytes(r["record"]), votes])
        return p.encode(items)


class Releaser:
    """A custodian's release service: decides on its own, then releases sealed to the requester."""

    def __init__(self, store: Store, keystore: Keystore, approvals: Approvals, members: Members, rules: Rules,
                 threat_level: Callable[[], int], rng: Rng) -> None:
        self.rng = rng  # the DLEQ proof's nonce
        self.store = store
        self.keystore = keystore
        self.key = keystore.signer
        self.hpke = keystore.openers()
        self.approvals = approvals
        self.members = members
        self.rules = rules
        self.threat_level = threat_level
        self.peer_id = keystore.peer_id
        self._policies: dict[bytes, Policy] = {}
        self._refusals: set[tuple[str, str]] = set()
        self._limiter = AuditLimiter()

    def _policy(self, keyset: p.Keyset) -> Policy:
        """The keyset's request policy in force (its latest policy version's, else the keyset
        record's), parsed and cached by the digest of its text."""
        text = self.rules.policy_text(keyset)
        key = hashlib.sha256(text.encode()).digest()
        pol = self._policies.get(key)
        if pol is None:
            if len(self._policies) > 1024:
                self._policies.clear()
            pol = Policy(text)
            self._policies[key] = pol
        return pol

    def handle(self, remote: str, frame: bytes, now: int, *, no_shard: bool) -> bytes:
        """Answer one release ask. ``no_shard``: the asker (on ``wire.RELEASE``, version 2)
        understands a signed no-shard answer; one on version 1 gets a refusal instead."""
        try:
            req_b, votes_b = p.decode_record(frame, wire.RELEASE_ASK_TAG, 1, 2, max_size=wire.RELEASE.max_request)
            req = self.approvals.parse_request(p.want_bytes(req_b, "request"))
            votes = [self.approvals.parse_vote(p.want_bytes(v, "vote")) for v in p.want(votes_b, list, "votes")]
        except p.ShardnetError as exc:
            raise Rejected(f"malformed release request: {exc}") from None
        if req.requester != remote:
            raise Rejected("the request was not made by the peer asking")
        # Policies see the attributes the authorities vouched for, never self-declared ones.
        requester = self.members.admission(req.requester, now)
        if requester is None:
            raise Rejected(f"the requester is not admitted to network {self.members.prefix} "
                           f"({self.members.view.state(req.requester, now)})")
        row = self.store.keyset(req.keyset_id.hex())
        if row is None:
            return self._no_shard(no_shard, req, None, "this custodian does not know that keyset")
        keyset = record_view(self.store, row["record"])  # at its current epoch
        if self.rules.revoked_requester(keyset.id_hex, req.requester):
            raise Rejected(f"the keyset's authorities revoked {req.requester} as a requester")
        held = [h for h in self.store.held_shards(keyset.id_hex) if h["epoch"] == keyset.epoch]
        if not held:
            return self._no_shard(no_shard, req, keyset.epoch, "this custodian holds no shard of that keyset")
        try:
            self.approvals.accept_request(req.signed, now)
        except p.ShardnetError:
            pass  # decide_release below gives the reason
        try:
            # Stored votes and the ask's evidence in one tally: an approver with two
            # different votes is void, whichever came first and whoever brought them.
            tally = self.approvals.tally(req, votes)
            if tally.equivocations and self.store.request(req.id) is not None:
                self.approvals.record_equivocations(tally, now)
            decision = decide_release(
                keyset, tally, now=now, policy=self._policy(keyset),
                in_force=self.rules.versioned(keyset.id_hex),
                requester_org=requester.org, requester_country=requester.country, threat_level=self.threat_level(),
                status=row["status"],
            )
        except (ReleaseDenied, PolicyError, p.RemoteProtocolError, ValueError) as exc:
            reason = getattr(exc, "reason", str(exc))
            if (req.id, reason) not in self._refusals and self._limiter.allow(remote, now):
                if len(self._refusals) > 10_000:
                    self._refusals.clear()
                self._refusals.add((req.id, reason))
                self.store.append_audit("release-refused", {"request": req.id, "keyset": keyset.id_hex,
                                                            "requester": req.requester, "reason": reason},
                                        now, self.key)
            raise Rejected(reason) from None
        out = []
        for h in held:
            sealed = self.keystore.open_at_rest(h["sealed"])
            meta, share = p.open_shard(sealed, self.keystore.opener_for(p.read_shard_meta(sealed)),
                                       recipient=self.peer_id, now=now, commitments=keyset.commitments)
            rel = Release.make(self.key, req, epoch=keyset.epoch, index=share.index,
                               payload=self._payload(keyset, req, share))
            with self.store.transaction():
                self.store.append_audit("release", {
                    "request": req.id, "keyset": keyset.id_hex, "index": share.index, "mode": req.mode,
                    "requester": req.requester, "approvals": decision.approvals, "quorum": decision.quorum,
                }, now, self.key)
                if req.mode == "shares" and row["status"] == "active":
                    self.store.set_keyset_status(keyset.id_hex, "exposed", now=now)
            out.append(rel.signed)
        return p.encode(out)

    def _no_shard(self, signed: bool, req: Request, epoch: int | None, reason: str) -> bytes:
        if not signed:
            raise Rejected(reason)
        return p.encode([p.NoShard.make(self.key, req, epoch=epoch).signed])

    def _payload(self, keyset: p.Keyset, req: Request, share: p.Share) -> bytes:
        """What this custodian releases: a partial decryption with its proof, or its share."""
        if req.mode == "unwrap":
            return partial_payload(p.partial_decrypt(keyset, share, req.id.encode(), rng=self.rng))
        return share_payload(share)
