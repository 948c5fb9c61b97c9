"""The records of an epoch change (refresh, reshare), and the checks every node
makes on them (private; the round itself is ``_epoch``).

Who signs what:

* a keyset's **policy authorities** (``key import --authorities PEER,...
  --authority-quorum K``; by default the owner alone, K = 1) sign every epoch
  after the first. :class:`AuthorityRule` reads them from the keyset record;
* the **coordinator**, one of those authorities, signs the round's
  :class:`Plan`: from which epoch to which, the action, the new t, n and
  holders, the deadline;
* a **current holder** of each old index signs that index's :class:`Deal`:
  the Feldman commitments of its sub-sharing (of zero for a refresh, of its
  own share for a reshare), and one HPKE-sealed sub-share per new holder;
* each **new holder** signs an :class:`Echo`: the digest of the epoch record
  it verified its new share against, and of the qualified dealer set;
* K authorities co-sign the :class:`EpochRecord` (``_cosign``): the keyset id
  and epoch, t, n, the commitments, the holders of each index, the not-after
  and the digest of the previous epoch (of the keyset's genesis header for the
  first), so that the records form a chain back to the keyset record;
* each **old holder** signs an :class:`Erased` receipt once it has erased its
  old share, citing the epoch record that let it.

A node believes the highest epoch whose record carries K valid authority
signatures and whose chain of previous digests leads back to its keyset record
(:func:`successor`). :func:`at_epoch` gives the keyset as that epoch sees it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _group as g
from . import _vss as vss
from ._codec import encode, want, want_bytes, want_int
from ._cosign import CoSigned
from ._errors import (
    DecryptionFailed,
    InvalidShare,
    InvalidSignature,
    MalformedEncoding,
    RemoteProtocolError,
)
from ._keyset import MAX_EPOCH, Keyset, Share, commitments_digest
from ._records import peer_id_of, public_key_of
from ._shard import HpkeOpener, hpke_seal
from ._sign import Signer, open_signed, public_bytes, sign_body
from ._wire import MAX_CLOCK_SKEW

EPOCH_TAG = "shardnet/epoch"
PLAN_TAG = "shardnet/epoch-plan"
DEAL_TAG = "shardnet/epoch-deal"
ECHO_TAG = "shardnet/epoch-echo"
ERASED_TAG = "shardnet/erased"
ANCHOR_DOMAIN = b"shardnet/epoch-anchor/v1\x00"
DIGEST_DOMAIN = b"shardnet/epoch-digest/v1\x00"
QUALIFIED_DOMAIN = b"shardnet/epoch-qualified/v1\x00"
SUBSHARE_INFO = b"shardnet/epoch-subshare/v1\x00"
ACTIONS = ("refresh", "reshare")
ROUND_ID_LEN = 16
MAX_TIME = 2**63 - 1  # SQLite's largest integer
#: Seconds past a round's deadline that its record may still be handed to a node as a
#: commit: the coordinator retries that long, and new holders keep their share that long.
COMMIT_WINDOW = 86400
#: Bytes of one epoch record, plan, deal or echo at most (a deal seals one
#: sub-share per new holder: about 120 bytes each, up to 1,000 shares).
MAX_EPOCH_RECORD = 256 * 1024


# -- who may sign ------------------------------------------------------------------


@dataclass(frozen=True)
class AuthorityRule:
    """A keyset's policy authorities: peer ids, their keys, and how many must sign."""

    peers: tuple[str, ...]
    quorum: int

    @property
    def keys(self) -> frozenset[bytes]:
        return frozenset(public_key_of(p) for p in self.peers)

    @classmethod
    def of(cls, keyset: Keyset) -> AuthorityRule:
        named = keyset.attrs.get("authorities") or []
        if not named:
            return cls((peer_id_of(keyset.owner),), 1)
        return cls(tuple(sorted(named)), int(keyset.attrs.get("authority_quorum", 1)))

    def is_authority(self, peer: str) -> bool:
        return peer in self.peers


# -- the epoch record --------------------------------------------------------------


def anchor(keyset: Keyset) -> bytes:
    """What the first epoch record names as its previous epoch: the keyset's genesis."""
    return hashlib.sha256(ANCHOR_DOMAIN + keyset.keyset_id + keyset.genesis).digest()


def _index(key: Any, n: int) -> int:
    """Map keys are decimal strings (msgpack maps are keyed by strings here)."""
    if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 4):
        raise MalformedEncoding("an index key must be a decimal string")
    return want_int(int(key), "index", 1, n)


def _keyed(holders: Mapping[int, Sequence[str]]) -> dict[str, list[str]]:
    return {str(i): list(hs) for i, hs in sorted(holders.items())}


def _holders(value: Any, n: int) -> dict[int, tuple[str, ...]]:
    want(value, dict, "holders")
    out: dict[int, tuple[str, ...]] = {}
    for i, peers in value.items():
        idx = _index(i, n)
        want(peers, list, "holders of an index")
        for peer in peers:
            public_key_of(want(peer, str, "a holder"))  # a peer id; a list here once raised TypeError
        if not 1 <= len(peers) <= 16 or len(set(peers)) != len(peers):
            raise MalformedEncoding("holders: 1 to 16 distinct peers per index")
        out[idx] = tuple(peers)
    return out


@dataclass(frozen=True)
class EpochRecord:
    keyset_id: bytes
    epoch: int
    action: str
    threshold: int
    shares: int
    commitments: tuple[bytes, ...]
    holders: dict[int, tuple[str, ...]]
    not_after: int | None
    prev: bytes
    round_id: bytes
    created: int
    deadline: int  # the round's: past it and COMMIT_WINDOW, nobody applies the record any more
    signed: bytes = field(default=b"", repr=False, compare=False)  # the co-signed record

    def body(self) -> bytes:
        return self._body

    @functools.cached_property
    def _body(self) -> bytes:  # once per record: a round asks for its digest dozens of times
        return encode([
            EPOCH_TAG, 1, self.keyset_id, self.epoch, self.action, self.threshold, self.shares,
            list(self.commitments), _keyed(self.holders),
            self.not_after, self.prev, self.round_id, self.created, self.deadline,
        ])

    def fresh(self, now: int) -> bool:
        """Whether a node may still apply this record as a commit it is handed (a record
        that a later epoch's record chains to is applied whatever its age)."""
        return now <= self.deadline + COMMIT_WINDOW

    @functools.cached_property
    def digest(self) -> bytes:
        return hashlib.sha256(DIGEST_DOMAIN + self.body()).digest()

    @classmethod
    def from_body(cls, body: bytes, *, signed: bytes = b"") -> EpochRecord:
        """Decode and check a record's body; ``signed``: the co-signed record it came in."""
        from ._codec import decode_record

        f = decode_record(body, EPOCH_TAG, 1, 12, max_size=MAX_EPOCH_RECORD)
        action = want(f[2], str, "action")
        if action not in ACTIONS:
            raise MalformedEncoding(f"epoch record: unknown action {action[:20]!r}")
        t = want_int(f[3], "threshold", 2, vss.MAX_SHARES)
        n = want_int(f[4], "shares", t, vss.MAX_SHARES)
        commitments = vss.check_commitments(want(f[5], list, "commitments"))
        if len(commitments) != t:
            raise MalformedEncoding("epoch record: expected one commitment per threshold degree")
        holders = _holders(f[6], n)
        if len(holders) < t:
            raise MalformedEncoding("epoch record: fewer indices with holders than the threshold")
        if f[7] is not None:
            want_int(f[7], "not after", 0, MAX_TIME)
        rec = cls(
            keyset_id=want_bytes(f[0], "keyset id", 16), epoch=want_int(f[1], "epoch", 1, MAX_EPOCH),
            action=action, threshold=t, shares=n, commitments=commitments, holders=holders,
            not_after=f[7], prev=want_bytes(f[8], "previous epoch digest", 32),
            round_id=want_bytes(f[9], "round id", ROUND_ID_LEN), created=want_int(f[10], "created", 0, MAX_TIME),
            deadline=want_int(f[11], "deadline", 0, MAX_TIME), signed=signed,
        )
        if rec.body() != bytes(body):
            raise MalformedEncoding("epoch record: not in canonical form")
        return rec

    @classmethod
    def parse(cls, data: bytes) -> EpochRecord:
        """A co-signed epoch record read without checking its signatures: one this node
        verified when it stored it, or a frame's, to see what it names before :meth:`open`."""
        cs = CoSigned.restore(data, max_size=MAX_EPOCH_RECORD)
        return cls.from_body(cs.body, signed=bytes(data))

    @classmethod
    def open(cls, data: bytes, keyset: Keyset) -> EpochRecord:
        """Verify a co-signed epoch record of ``keyset``: every signature from one of its
        authorities, at least K of them."""
        rule = AuthorityRule.of(keyset)
        cs = CoSigned.from_bytes(data, authorities=rule.keys, max_size=MAX_EPOCH_RECORD)
        if not cs.complete(rule.quorum):
            raise InvalidSignature(f"epoch record: {len(cs.signatures)} of the {rule.quorum} authority "
                                   "signatures it needs")
        rec = cls.from_body(cs.body, signed=cs.to_bytes())
        if rec.keyset_id != keyset.keyset_id:
            raise MalformedEncoding("epoch record of another keyset")
        if rec.commitments[0] != keyset.public_key:
            raise MalformedEncoding("epoch record changes the keyset's public key")
        return rec

    @property
    def commitments_digest(self) -> bytes:
        return commitments_digest(self.commitments)

    def holder_peers(self) -> set[str]:
        return {h for hs in self.holders.values() for h in hs}


def digest_of(keyset: Keyset, current: EpochRecord | None) -> bytes:
    """The digest the next epoch record must name as its previous one."""
    return anchor(keyset) if current is None else current.digest


def successor(keyset: Keyset, current: EpochRecord | None, data: bytes) -> EpochRecord:
    """Verify ``data`` as the epoch record that follows ``current`` (None: the keyset record
    itself): K authority signatures, the next epoch number, and the previous digest."""
    rec = EpochRecord.open(data, keyset)
    base = keyset.epoch if current is None else current.epoch
    if rec.epoch != base + 1:
        raise MalformedEncoding(f"epoch record {rec.epoch} does not follow epoch {base}")
    if rec.prev != digest_of(keyset, current):
        raise InvalidSignature(f"epoch record {rec.epoch} does not chain to epoch {base}")
    return rec


def at_epoch(keyset: Keyset, rec: EpochRecord | None) -> Keyset:
    """The keyset as epoch ``rec`` sees it: its t, n, commitments and holders; the
    approvers and the quorum stay those of the keyset record."""
    if rec is None:
        return keyset
    # Who approves, and how many, are the keyset record's (by default its first holders and
    # its first t): an epoch change moves shares, never the approval rule.
    attrs = {**keyset.attrs, "approvers": keyset.approvers,
             "quorum": int(keyset.attrs.get("quorum") or keyset.threshold),
             "holders": {str(i): list(hs) for i, hs in sorted(rec.holders.items())}}
    return dataclasses.replace(keyset, epoch=rec.epoch, threshold=rec.threshold, shares=rec.shares,
                               commitments=rec.commitments, not_after=rec.not_after, attrs=attrs)


def holders_of(keyset: Keyset) -> dict[int, tuple[str, ...]]:
    return {int(i): tuple(hs) for i, hs in keyset.attrs.get("holders", {}).items()}


# -- the round's messages ----------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the coordinating authority asks for: signed by it."""

    keyset_id: bytes
    from_epoch: int
    prev: bytes
    action: str
    threshold: int
    shares: int
    holders: dict[int, tuple[str, ...]]
    not_after: int | None
    round_id: bytes
    created: int
    deadline: int
    coordinator: bytes = b""
    signed: bytes = field(default=b"", repr=False, compare=False)

    @property
    def to_epoch(self) -> int:
        return self.from_epoch + 1

    def _body(self) -> bytes:
        return encode([
            PLAN_TAG, 1, self.keyset_id, self.from_epoch, self.prev, self.action, self.threshold, self.shares,
            _keyed(self.holders), self.not_after, self.round_id,
            self.created, self.deadline,
        ])

    def sign(self, key: Signer) -> Plan:
        return dataclasses.replace(self, coordinator=public_bytes(key), signed=sign_body(key, self._body()))

    @classmethod
    def from_bytes(cls, data: bytes) -> Plan:
        f, signer, _ = open_signed(data, tag=PLAN_TAG, version=1, fields=11, max_size=MAX_EPOCH_RECORD)
        action = want(f[3], str, "action")
        if action not in ACTIONS:
            raise MalformedEncoding(f"epoch plan: unknown action {action[:20]!r}")
        t = want_int(f[4], "threshold", 2, vss.MAX_SHARES)
        n = want_int(f[5], "shares", t, vss.MAX_SHARES)
        holders = _holders(f[6], n)
        if sorted(holders) != list(range(1, n + 1)):
            raise MalformedEncoding("epoch plan: every new index needs holders")
        peers = [h for hs in holders.values() for h in hs]
        if len(set(peers)) != len(peers):
            raise MalformedEncoding("epoch plan: a peer holds at most one new index")
        if f[7] is not None:
            want_int(f[7], "not after", 0, MAX_TIME)
        return cls(
            keyset_id=want_bytes(f[0], "keyset id", 16), from_epoch=want_int(f[1], "epoch", 0, MAX_EPOCH - 1),
            prev=want_bytes(f[2], "previous epoch digest", 32), action=action, threshold=t, shares=n,
            holders=holders, not_after=f[7], round_id=want_bytes(f[8], "round id", ROUND_ID_LEN),
            created=want_int(f[9], "created", 0, MAX_TIME), deadline=want_int(f[10], "deadline", 0, MAX_TIME),
            coordinator=signer, signed=bytes(data),
        )

    def record(self, commitments: Sequence[bytes]) -> EpochRecord:
        """The epoch record this round makes, given the new commitments."""
        return EpochRecord(
            keyset_id=self.keyset_id, epoch=self.to_epoch, action=self.action, threshold=self.threshold,
            shares=self.shares, commitments=tuple(commitments), holders=dict(self.holders),
            not_after=self.not_after, prev=self.prev, round_id=self.round_id, created=self.created,
            deadline=self.deadline,
        )

    def check_against(self, keyset: Keyset, current: EpochRecord | None) -> None:
        """The plan is signed by an authority of ``keyset`` and starts from ``current``."""
        if self.keyset_id != keyset.keyset_id:
            raise MalformedEncoding("epoch plan of another keyset")
        if not AuthorityRule.of(keyset).is_authority(peer_id_of(self.coordinator)):
            raise InvalidSignature("epoch plan: its signer is no authority of the keyset")
        here = keyset.epoch if current is None else current.epoch
        if self.from_epoch != here or self.prev != digest_of(keyset, current):
            raise MalformedEncoding(f"epoch plan starts from epoch {self.from_epoch}; this node is at {here}")
        if self.action == "refresh":
            view = at_epoch(keyset, current)
            if self.threshold != view.threshold or self.holders != holders_of(view):
                raise MalformedEncoding("a refresh keeps the threshold, the indices and their holders")


def check_not_after(keyset: Keyset, current: EpochRecord | None, not_after: int | None, now: int) -> None:
    """A plan keeps the keyset's not-after, or renews it: only if the keyset allows renewal
    (``renew`` in its attributes, set at import), later than the one in force, and at most
    its first lifetime from ``now``."""
    view = at_epoch(keyset, current)
    if not_after == view.not_after:
        return
    lifetime = keyset.not_after - keyset.created if keyset.not_after is not None else None
    if not keyset.attrs.get("renew") or lifetime is None or not_after is None or view.not_after is None:
        raise MalformedEncoding("epoch plan: this keyset's not-after may not change (it was not imported with "
                                "--renew)")
    if not_after <= view.not_after:
        raise MalformedEncoding("epoch plan: a renewal moves the not-after later, never earlier")
    if not_after > now + lifetime + MAX_CLOCK_SKEW:
        raise MalformedEncoding(f"epoch plan: a renewal sets the not-after at most {lifetime} s (the keyset's "
                                "first lifetime) from now")


class BadDeal(RemoteProtocolError):
    """The deal of old index ``dealer`` is invalid (its sub-share, or the deal itself)."""

    def __init__(self, dealer: int, detail: str) -> None:
        super().__init__(f"the deal of old index {dealer} is bad: {detail}")
        self.dealer = dealer


def _sub_info(plan: Plan, dealer: int, index: int, peer: str) -> bytes:
    return SUBSHARE_INFO + encode([plan.round_id, plan.keyset_id, plan.to_epoch, dealer, index, peer])


@dataclass(frozen=True)
class Deal:
    """One old index's deal: commitments and a sealed sub-share for each new holder."""

    round_id: bytes
    keyset_id: bytes
    to_epoch: int
    index: int  # the old index dealt from
    commitments: tuple[bytes, ...]
    sealed: dict[int, dict[str, bytes]]  # new index -> new holder -> HPKE ciphertext
    dealer: bytes = b""
    signed: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def make(cls, key: Signer, plan: Plan, share: Share, keys: Mapping[str, bytes], kem: str,
             rng: vss.Rng) -> Deal:
        """Deal ``share`` (an old holder's) for ``plan``; ``keys``: each new holder's HPKE key."""
        new = sorted(plan.holders)
        d: vss.RefreshDeal | vss.ReshareDeal
        if plan.action == "refresh":
            d = vss.refresh_deal(share.index, plan.threshold, new, rng=rng)
        else:
            d = vss.reshare_deal(share.index, share.value, plan.threshold, new, rng=rng)
        sealed = {
            i: {peer: hpke_seal(kem, keys[peer], g.scalar_bytes(d.subshares[i]),
                                _sub_info(plan, share.index, i, peer)) for peer in plan.holders[i]}
            for i in new
        }
        body = encode([DEAL_TAG, 1, plan.round_id, plan.keyset_id, plan.to_epoch, share.index,
                       list(d.commitments), {str(i): dict(sorted(s.items())) for i, s in sealed.items()}])
        return cls(plan.round_id, plan.keyset_id, plan.to_epoch, share.index, d.commitments, sealed,
                   public_bytes(key), sign_body(key, body))

    @classmethod
    def from_bytes(cls, data: bytes) -> Deal:
        f, signer, _ = open_signed(data, tag=DEAL_TAG, version=1, fields=6, max_size=MAX_EPOCH_RECORD)
        sealed: dict[int, dict[str, bytes]] = {}
        for i, per in want(f[5], dict, "sealed sub-shares").items():
            idx = _index(i, vss.MAX_SHARES)
            sealed[idx] = {want(peer, str, "new holder"): want_bytes(ct, "sub-share")
                           for peer, ct in want(per, dict, "sealed sub-shares").items()}
        return cls(
            round_id=want_bytes(f[0], "round id", ROUND_ID_LEN), keyset_id=want_bytes(f[1], "keyset id", 16),
            to_epoch=want_int(f[2], "epoch", 1, MAX_EPOCH), index=want_int(f[3], "old index", 1, vss.MAX_SHARES),
            commitments=tuple(want_bytes(c, "commitment", 32) for c in want(f[4], list, "commitments")),
            sealed=sealed, dealer=signer, signed=bytes(data),
        )

    def check(self, plan: Plan, current: Keyset) -> None:
        """Everything but the sealed sub-shares: it is this round's, signed by a holder of
        its old index in ``current`` (the keyset at the plan's epoch), with commitments
        of the right kind, and one sub-share for each planned new holder."""
        if (self.round_id, self.keyset_id, self.to_epoch) != (plan.round_id, plan.keyset_id, plan.to_epoch):
            raise MalformedEncoding(f"deal for old index {self.index} is of another round")
        if peer_id_of(self.dealer) not in holders_of(current).get(self.index, ()):
            raise InvalidSignature(f"deal for old index {self.index} is not signed by a holder of that index")
        if len(self.commitments) != plan.threshold:
            raise MalformedEncoding(f"deal for old index {self.index}: expected {plan.threshold} commitments")
        if plan.action == "refresh":
            vss.check_commitments(self.commitments, zero_sharing=True)
        else:
            vss.check_reshare_deal(vss.ReshareDeal(self.index, vss.check_commitments(self.commitments), {}),
                                   current.commitments, plan.threshold)
        if {i: set(s) for i, s in self.sealed.items()} != {i: set(hs) for i, hs in plan.holders.items()}:
            raise MalformedEncoding(f"deal for old index {self.index} does not cover the planned holders")

    def open_for(self, plan: Plan, index: int, peer: str, opener: HpkeOpener) -> int:
        """The sub-share sealed to ``peer`` for new ``index``, checked against the commitments."""
        ct = self.sealed.get(index, {}).get(peer)
        if ct is None:
            raise BadDeal(self.index, f"nothing sealed for {peer}")
        try:
            value = g.scalar_from_bytes(opener.open(ct, _sub_info(plan, self.index, index, peer)), "sub-share")
            vss.verify_share(self.commitments, index, value)
        except (DecryptionFailed, MalformedEncoding, InvalidShare) as exc:
            raise BadDeal(self.index, f"the sub-share for index {index}: {exc}") from None
        return value


def echoes_needed(plan: Plan) -> int:
    """New indices that must echo before a round may commit: t_new and one more (all of
    them when n_new = t_new), so that one new holder that echoed and then lies or vanishes
    cannot leave the new epoch with fewer than t_new usable shares."""
    return min(plan.shares, plan.threshold + 1)


def qualified_digest(deals: Sequence[Deal]) -> bytes:
    items = sorted((d.index, list(d.commitments)) for d in deals)
    return hashlib.sha256(QUALIFIED_DOMAIN + encode([[i, c] for i, c in items])).digest()


def new_commitments(plan: Plan, current: Keyset, deals: Sequence[Deal]) -> tuple[bytes, ...]:
    """The commitments of the new epoch, from the qualified deals' public commitments."""
    if plan.action == "refresh":
        return vss.refresh_commitments(current.commitments,
                                       [vss.RefreshDeal(d.index, d.commitments, {}) for d in deals])
    return vss.reshare_commitments([vss.ReshareDeal(d.index, d.commitments, {}) for d in deals],
                                   current.commitments, plan.threshold)


def new_share(plan: Plan, current: Keyset, deals: Sequence[Deal], *, index: int, peer: str,
              opener: HpkeOpener, old: Share | None) -> tuple[Share, EpochRecord]:
    """A new holder's share of the new epoch, verified against the new commitments, and the
    epoch record it will echo. A refresh adds every zero sub-share to ``old`` (this
    holder's own share of the same index); a reshare interpolates the dealt sub-shares.
    Raises InvalidShare naming the dealer of a bad sub-share."""
    if len({d.index for d in deals}) != len(deals):  # checked here, not only by the VSS math
        raise MalformedEncoding("two deals for one old index")
    for d in deals:
        try:
            d.check(plan, current)
        except (MalformedEncoding, InvalidSignature, InvalidShare) as exc:
            raise BadDeal(d.index, str(exc)) from None
    subs = {d.index: d.open_for(plan, index, peer, opener) for d in deals}
    if plan.action == "refresh":
        if old is None or old.index != index:
            raise MalformedEncoding(f"a refresh needs this holder's own share of index {index}")
        value = (old.value + sum(subs.values())) % g.L
    else:
        dealers = sorted(subs)
        if len(dealers) != current.threshold:
            raise MalformedEncoding(f"a reshare takes exactly {current.threshold} deals, got {len(dealers)}")
        lam = vss.lagrange_at_zero(dealers)
        value = sum(lam_i * subs[i] for lam_i, i in zip(lam, dealers, strict=True)) % g.L
    commitments = new_commitments(plan, current, deals)
    vss.verify_share(commitments, index, value, "the new epoch")
    return Share(plan.keyset_id, plan.to_epoch, index, value), plan.record(commitments)


@dataclass(frozen=True)
class Echo:
    round_id: bytes
    keyset_id: bytes
    epoch: int
    index: int
    record: bytes  # digest of the epoch record's body
    qualified: bytes
    holder: bytes = b""
    signed: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def make(cls, key: Signer, record: EpochRecord, index: int, qualified: bytes) -> Echo:
        body = encode([ECHO_TAG, 1, record.round_id, record.keyset_id, record.epoch, index, record.digest,
                       qualified])
        return cls(record.round_id, record.keyset_id, record.epoch, index, record.digest, qualified,
                   public_bytes(key), sign_body(key, body))

    @classmethod
    def from_bytes(cls, data: bytes) -> Echo:
        f, signer, _ = open_signed(data, tag=ECHO_TAG, version=1, fields=6, max_size=4096)
        return cls(want_bytes(f[0], "round id", ROUND_ID_LEN), want_bytes(f[1], "keyset id", 16),
                   want_int(f[2], "epoch", 1, MAX_EPOCH), want_int(f[3], "index", 1, vss.MAX_SHARES),
                   want_bytes(f[4], "record digest", 32), want_bytes(f[5], "qualified digest", 32),
                   signer, bytes(data))

    def check(self, record: EpochRecord, qualified: bytes) -> None:
        if (self.round_id, self.keyset_id, self.epoch, self.record, self.qualified) != (
                record.round_id, record.keyset_id, record.epoch, record.digest, qualified):
            raise MalformedEncoding(f"echo for index {self.index} is for another record")
        if peer_id_of(self.holder) not in record.holders.get(self.index, ()):
            raise InvalidSignature(f"echo for index {self.index} is not signed by a planned holder of it")


def echoed_indices(record: EpochRecord, qualified: bytes, echoes: Sequence[bytes]) -> set[int]:
    """The new indices at least one planned holder echoed (each echo verified)."""
    out = set()
    for data in echoes:
        e = Echo.from_bytes(data)
        e.check(record, qualified)
        out.add(e.index)
    return out


def check_evidence(plan: Plan, keyset: Keyset, current: EpochRecord | None, deals: Sequence[bytes],
                   echoes: Sequence[bytes]) -> EpochRecord:
    """What an authority checks before it co-signs: the plan starts from ``current``, the
    deals are valid and qualified, and at least t_new indices echoed the record.
    Returns the record to sign."""
    plan.check_against(keyset, current)
    view = at_epoch(keyset, current)
    parsed = [Deal.from_bytes(d) for d in deals]
    if len({d.index for d in parsed}) != len(parsed) or len(parsed) < view.threshold:
        raise MalformedEncoding(f"the round has {len(parsed)} distinct deals; it needs {view.threshold}")
    if plan.action == "reshare" and len(parsed) != view.threshold:
        raise MalformedEncoding(f"a reshare takes exactly {view.threshold} deals")
    for d in parsed:
        d.check(plan, view)
    record = plan.record(new_commitments(plan, view, parsed))
    have = echoed_indices(record, qualified_digest(parsed), echoes)
    if len(have) < echoes_needed(plan):
        raise MalformedEncoding(f"{len(have)} new indices echoed the record; it needs {echoes_needed(plan)}")
    return record


@dataclass(frozen=True)
class Erased:
    """An old holder's receipt: it erased its share of ``index`` at ``epoch``."""

    keyset_id: bytes
    epoch: int
    index: int
    record: bytes  # digest of the epoch record that let it erase
    time: int
    holder: bytes = b""
    signed: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def make(cls, key: Signer, *, keyset_id: bytes, epoch: int, index: int, record: bytes, time: int) -> Erased:
        body = encode([ERASED_TAG, 1, keyset_id, epoch, index, record, time])
        return cls(keyset_id, epoch, index, record, time, public_bytes(key), sign_body(key, body))

    @classmethod
    def from_bytes(cls, data: bytes) -> Erased:
        f, signer, _ = open_signed(data, tag=ERASED_TAG, version=1, fields=5, max_size=1024)
        return cls(want_bytes(f[0], "keyset id", 16), want_int(f[1], "epoch", 0, MAX_EPOCH),
                   want_int(f[2], "index", 1, vss.MAX_SHARES), want_bytes(f[3], "record digest", 32),
                   want_int(f[4], "time", 0, MAX_TIME), signer, bytes(data))

    @property
    def holder_id(self) -> str:
        return peer_id_of(self.holder)


# -- rewrap ---------------------------------------------------------------------------

REWRAP_TAG = "shardnet/rewrap"
REWRAPPED_TAG = "shardnet/rewrapped"


@dataclass(frozen=True)
class RewrapOrder:
    """An authority asks the holders of a keyset's current epoch to rewrap their shards."""

    keyset_id: bytes
    epoch: int
    round_id: bytes
    created: int
    deadline: int
    coordinator: bytes = b""
    signed: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def make(cls, key: Signer, *, keyset_id: bytes, epoch: int, round_id: bytes, created: int,
             deadline: int) -> RewrapOrder:
        body = encode([REWRAP_TAG, 1, keyset_id, epoch, round_id, created, deadline])
        return cls(keyset_id, epoch, round_id, created, deadline, public_bytes(key), sign_body(key, body))

    @classmethod
    def from_bytes(cls, data: bytes) -> RewrapOrder:
        f, signer, _ = open_signed(data, tag=REWRAP_TAG, version=1, fields=5, max_size=1024)
        return cls(want_bytes(f[0], "keyset id", 16), want_int(f[1], "epoch", 0, MAX_EPOCH),
                   want_bytes(f[2], "round id", ROUND_ID_LEN), want_int(f[3], "created", 0, MAX_TIME),
                   want_int(f[4], "deadline", 0, MAX_TIME), signer, bytes(data))

    def check_against(self, keyset: Keyset, current: EpochRecord | None) -> None:
        if self.keyset_id != keyset.keyset_id:
            raise MalformedEncoding("rewrap order of another keyset")
        if not AuthorityRule.of(keyset).is_authority(peer_id_of(self.coordinator)):
            raise InvalidSignature("rewrap order: its signer is no authority of the keyset")
        here = keyset.epoch if current is None else current.epoch
        if self.epoch != here:
            raise MalformedEncoding(f"rewrap order for epoch {self.epoch}; this node is at {here}")


@dataclass(frozen=True)
class Rewrapped:
    """A holder's receipt: its share of ``index`` is now sealed to its at-rest key ``wrap``."""

    keyset_id: bytes
    epoch: int
    index: int
    wrap: int
    sealed_digest: bytes
    round_id: bytes
    time: int
    holder: bytes = b""
    signed: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def make(cls, key: Signer, *, keyset_id: bytes, epoch: int, index: int, wrap: int, sealed_digest: bytes,
             round_id: bytes, time: int) -> Rewrapped:
        body = encode([REWRAPPED_TAG, 1, keyset_id, epoch, index, wrap, sealed_digest, round_id, time])
        return cls(keyset_id, epoch, index, wrap, sealed_digest, round_id, time, public_bytes(key),
                   sign_body(key, body))

    @classmethod
    def from_bytes(cls, data: bytes) -> Rewrapped:
        f, signer, _ = open_signed(data, tag=REWRAPPED_TAG, version=1, fields=7, max_size=1024)
        return cls(want_bytes(f[0], "keyset id", 16), want_int(f[1], "epoch", 0, MAX_EPOCH),
                   want_int(f[2], "index", 1, vss.MAX_SHARES), want_int(f[3], "wrap", 1, 2**32 - 1),
                   want_bytes(f[4], "sealed digest", 32), want_bytes(f[5], "round id", ROUND_ID_LEN),
                   want_int(f[6], "time", 0, MAX_TIME), signer, bytes(data))

    @property
    def holder_id(self) -> str:
        return peer_id_of(self.holder)
