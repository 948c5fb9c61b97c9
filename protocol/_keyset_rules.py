"""A keyset's rules after import: policy versions and revocation lists (private).

Both are bodies of co-signed records (``_cosign``) that the keyset's policy
authorities sign, K of M (``AuthorityRule``: the owner alone by default).

* **Policy version** (``shardnet/policy-version``): the keyset id, a version
  (1, 2, ...; the keyset record's own policy is version 0), the Cedar request
  policy, the placement expression and a time. The Cedar text is validated
  against :data:`~shardnet.protocol._policy.POLICY_SCHEMA` and the placement
  parsed before anyone signs, and again by every node that receives it.
  A new request policy takes effect at once, with no round; a placement that
  the current holders violate asks for a reshare. Record version 2 adds the
  keyset's :class:`Schedule` (``refresh_every``, ``rewrap_every``), which then
  replaces the one the keyset record set at import; a version 1 body (no
  schedule, readable by nodes before version 2) keeps the keyset record's, and
  cannot follow a version 2 (it would bring the import's back unannounced).
* **Revocation list** (``shardnet/revocations``): the keyset id, a version and
  every revocation in force for it: a custodian (it gets no new share), one
  shard index of one epoch (while the keyset is at that epoch, that index is
  neither delivered nor refreshed; the next reshare deals every index anew), or
  a requester (its requests are refused, and its votes do not count). Each
  version holds the whole list, so applying one is idempotent, and a node that
  missed versions needs only the last. Record version 2 names the epoch of a
  shard entry; a version 1 list (before epochs bound it) is still read, a
  shard entry of it as :data:`EVERY_EPOCH`, which a node's book pins to the
  epoch in force at the entry's time (``RuleBook.epoch_at``): what it meant
  then. Authorities sign only a list that keeps every entry in force but shard
  entries of epochs past (:meth:`RuleBook.dropped`).

:class:`RuleBook` is one node's view of one keyset. It takes a record only if
every signature is from a distinct authority of that keyset and its version is
above the one in force: a lower version is a rollback, the same one a replay,
and both are refused. Two different records complete at the same version (two
quorums that overlap in an authority that signed both) resolve the same way on
every node: the smaller proposal id wins.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ._codec import decode, decode_record, encode, want, want_bytes, want_int
from ._cosign import CoSigned, proposal_id
from ._epoch_records import AuthorityRule
from ._errors import MalformedEncoding, ShardnetError
from ._keyset import Keyset
from ._membership import MAX_REASON, MAX_TIME
from ._placement import parse as parse_placement
from ._policy import Policy, PolicyError
from ._records import public_key_of
from ._triggers import MIN_SCHEDULE
from ._wire import MAX_CLOCK_SKEW

POLICY_TAG = "shardnet/policy-version"
REVOCATIONS_TAG = "shardnet/revocations"
KINDS = ("policy", "revocations")
#: What a revocation names: a custodian (peer id), a shard (index) or a requester (peer id).
SUBJECTS = ("custodian", "shard", "requester")
#: Revocations one list holds at most.
MAX_REVOCATIONS = 256
#: The epoch of a shard entry read from a version 1 list (and carried on): a node pins it to
#: the epoch in force at the entry's time (``RuleBook.epoch_at``); unpinned, it holds at every epoch.
EVERY_EPOCH = -1
#: Bytes of a placement expression at most.
MAX_PLACEMENT = 1024
#: Bytes of one co-signed rule record at most, signatures included.
MAX_RULE_RECORD = 96 * 1024
MAX_VERSION = 2**31 - 1
#: The longest schedule in seconds (a hundred years).
MAX_SCHEDULE = 100 * 365 * 86400
SCHEDULE_KEYS = ("refresh_every", "rewrap_every")


class StaleRule(ShardnetError):
    """A rule record whose version is not above the one in force: a rollback or a replay."""


@dataclass(frozen=True)
class Schedule:
    """How often a keyset's authorities refresh and rewrap it, in seconds (None: never)."""

    refresh_every: int | None = None
    rewrap_every: int | None = None

    @classmethod
    def of_attrs(cls, attrs: dict[str, Any]) -> Schedule:
        """The schedule a keyset record set at import: a value is held to :data:`MIN_SCHEDULE`
        to :data:`MAX_SCHEDULE`, one that is no positive int is ignored (the record is the owner's)."""
        got = [attrs.get(k) for k in SCHEDULE_KEYS]
        return cls(*(min(MAX_SCHEDULE, max(MIN_SCHEDULE, v)) if type(v) is int and v > 0 else None for v in got))

    def to_list(self) -> list[int]:
        return [0 if v is None else v for v in (self.refresh_every, self.rewrap_every)]

    @classmethod
    def from_list(cls, value: Any) -> Schedule:
        if not isinstance(value, list) or len(value) != 2:
            raise MalformedEncoding("schedule: expected [refresh_every, rewrap_every]")
        for v in value:
            if type(v) is not int or not (v == 0 or MIN_SCHEDULE <= v <= MAX_SCHEDULE):
                raise MalformedEncoding(f"schedule: each is 0 (never) or {MIN_SCHEDULE} to {MAX_SCHEDULE} "
                                        "seconds")
        return cls(*(v or None for v in value))

    def to_json(self) -> dict[str, int | None]:
        return dict(zip(SCHEDULE_KEYS, (self.refresh_every, self.rewrap_every), strict=True))


@dataclass(frozen=True)
class PolicyVersion:
    keyset_id: bytes
    version: int
    policy: str  # Cedar text
    placement: str
    time: int
    body: bytes = field(default=b"", repr=False, compare=False)
    #: Record version 2's schedule; None (version 1): the keyset record's holds.
    schedule: Schedule | None = None
    kind = "policy"

    @property
    def id(self) -> bytes:
        return proposal_id(self.body)

    @property
    def digest(self) -> bytes:
        """The Cedar policy's digest (:attr:`Policy.digest`), without parsing it again."""
        return hashlib.sha256(self.policy.encode()).digest()

    @staticmethod
    def make_body(*, keyset_id: bytes, version: int, policy: str, placement: str, time: int,
                  schedule: Schedule | None = None) -> bytes:
        """A version 1 body without ``schedule``, else version 2."""
        head = [keyset_id, version, policy, placement, time]
        body = encode([POLICY_TAG, 1, *head] if schedule is None else [POLICY_TAG, 2, *head, schedule.to_list()])
        PolicyVersion.from_body(body)  # Cedar, placement and schedule checks before anyone signs
        return body

    @classmethod
    def from_body(cls, body: bytes, *, trusted: bool = False) -> PolicyVersion:
        """Decode and check; ``trusted``: a body this node checked when it stored it (the
        Cedar text is not validated again: that costs milliseconds)."""
        head = decode(body, max_size=MAX_RULE_RECORD)
        record_version = 2 if isinstance(head, list) and len(head) > 1 and type(head[1]) is int and head[1] == 2 \
            else 1
        f = decode_record(body, POLICY_TAG, record_version, 5 + (record_version == 2), max_size=MAX_RULE_RECORD)
        schedule = Schedule.from_list(f[5]) if record_version == 2 else None
        text = want(f[2], str, "policy")
        try:
            if not trusted:
                Policy(text)
        except PolicyError as exc:
            raise MalformedEncoding(f"policy version: {exc}") from None
        expr = want(f[3], str, "placement")
        if len(expr.encode()) > MAX_PLACEMENT:
            raise MalformedEncoding(f"placement: over {MAX_PLACEMENT} bytes")
        try:
            parse_placement(expr)
        except ValueError as exc:  # PlacementError is one
            raise MalformedEncoding(f"placement: {exc}") from None
        return cls(want_bytes(f[0], "keyset id", 16), want_int(f[1], "version", 1, MAX_VERSION), text, expr,
                   want_int(f[4], "time", 0, MAX_TIME), bytes(body), schedule)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "policy", "keyset": self.keyset_id.hex(), "version": self.version, "policy": self.policy,
                "policy_sha256": self.digest.hex(), "placement": self.placement, "time": self.time,
                "schedule": None if self.schedule is None else self.schedule.to_json()}


@dataclass(frozen=True)
class Revoked:
    subject: str  # one of SUBJECTS
    peer: str  # the custodian or requester; "" for a shard
    index: int  # the shard index; 0 otherwise
    reason: str
    time: int
    epoch: int = 0  # the epoch of a shard's index (or EVERY_EPOCH); 0 otherwise

    def to_list(self) -> list[Any]:
        return [self.subject, self.peer, self.index, self.epoch, self.reason, self.time]

    @classmethod
    def from_list(cls, value: Any, *, record_version: int = 2) -> Revoked:
        """``[subject, peer, index, epoch, reason, time]``; in a version 1 list,
        ``[subject, peer, index, reason, time]`` (a shard's epoch read as EVERY_EPOCH)."""
        want(value, list, "revocation")
        if record_version == 1:
            if len(value) != 5:
                raise MalformedEncoding("a revocation is [subject, peer, index, reason, time]")
            value = [*value[:3], EVERY_EPOCH if value[0] == "shard" else 0, *value[3:]]
        elif len(value) != 6:
            raise MalformedEncoding("a revocation is [subject, peer, index, epoch, reason, time]")
        subject = want(value[0], str, "subject")
        if subject not in SUBJECTS:
            raise MalformedEncoding(f"revocation subject must be one of {', '.join(SUBJECTS)}")
        peer = want(value[1], str, "peer")
        index = want_int(value[2], "index", 0, 1 << 16)
        epoch = want_int(value[3], "epoch", EVERY_EPOCH, MAX_VERSION)
        if subject == "shard":
            if peer or not index:
                raise MalformedEncoding("a shard revocation names an index and no peer")
        else:
            if index or epoch != 0 or not peer:
                raise MalformedEncoding(f"a {subject} revocation names a peer, and no index or epoch")
            public_key_of(peer)
        reason = want(value[4], str, "reason")
        if not 0 < len(reason) <= MAX_REASON:
            raise MalformedEncoding(f"reason: 1 to {MAX_REASON} characters")
        return cls(subject, peer, index, reason, want_int(value[5], "time", 0, MAX_TIME), epoch)

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.subject, self.peer, self.index, self.epoch)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"subject": self.subject, "reason": self.reason, "time": self.time}
        if self.subject == "shard":
            out.update(index=self.index, epoch="every" if self.epoch == EVERY_EPOCH else self.epoch)
        else:
            out["peer"] = self.peer
        return out


@dataclass(frozen=True)
class RevocationList:
    keyset_id: bytes
    version: int
    entries: tuple[Revoked, ...]  # sorted by key, one per key
    time: int
    body: bytes = field(default=b"", repr=False, compare=False)
    kind = "revocations"

    @property
    def id(self) -> bytes:
        return proposal_id(self.body)

    @staticmethod
    def make_body(*, keyset_id: bytes, version: int, entries: Iterable[Revoked], time: int) -> bytes:
        items = sorted(entries, key=lambda e: e.key)
        body = encode([REVOCATIONS_TAG, 2, keyset_id, version, [e.to_list() for e in items], time])
        RevocationList.from_body(body)
        return body

    @classmethod
    def from_body(cls, body: bytes) -> RevocationList:
        head = decode(body, max_size=MAX_RULE_RECORD)
        record_version = 1 if isinstance(head, list) and len(head) > 1 and type(head[1]) is int and head[1] == 1 \
            else 2
        f = decode_record(body, REVOCATIONS_TAG, record_version, 4, max_size=MAX_RULE_RECORD)
        raw = want(f[2], list, "revocations")
        if not 0 < len(raw) <= MAX_REVOCATIONS:
            raise MalformedEncoding(f"a revocation list holds 1 to {MAX_REVOCATIONS} revocations")
        entries = tuple(Revoked.from_list(v, record_version=record_version) for v in raw)
        keys = [e.key for e in entries]
        if keys != sorted(set(keys)):
            raise MalformedEncoding("revocations must be sorted, one per subject")
        return cls(want_bytes(f[0], "keyset id", 16), want_int(f[1], "version", 1, MAX_VERSION), entries,
                   want_int(f[3], "time", 0, MAX_TIME), bytes(body))

    def peers(self, subject: str) -> frozenset[str]:
        return frozenset(e.peer for e in self.entries if e.subject == subject)

    def indices(self, epoch: int) -> frozenset[int]:
        """The shard indices revoked at ``epoch``."""
        return frozenset(e.index for e in self.entries if e.subject == "shard" and e.epoch in (epoch, EVERY_EPOCH))

    def still_holds(self, entry: Revoked, epoch: int) -> bool:
        """Whether ``entry`` protects anything at ``epoch`` (a shard entry of an epoch past does not)."""
        return not (entry.subject == "shard" and EVERY_EPOCH < entry.epoch < epoch)

    @property
    def keys(self) -> frozenset[tuple[str, str, int, int]]:
        return frozenset(e.key for e in self.entries)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "revocations", "keyset": self.keyset_id.hex(), "version": self.version,
                "time": self.time, "revoked": [e.to_json() for e in self.entries]}


Rule = PolicyVersion | RevocationList


def parse_body(body: bytes, *, trusted: bool = False) -> Rule:
    """The policy version or revocation list a co-signed body holds (``trusted``: see
    :meth:`PolicyVersion.from_body`)."""
    try:
        return PolicyVersion.from_body(body, trusted=trusted)
    except MalformedEncoding as first:
        if not str(first).startswith(f"expected a {POLICY_TAG} record"):
            raise
    try:
        return RevocationList.from_body(body)
    except MalformedEncoding as exc:
        if str(exc).startswith(f"expected a {REVOCATIONS_TAG} record"):
            raise MalformedEncoding("co-signed body is neither a policy version nor a revocation list") from None
        raise


@dataclass(frozen=True)
class Peek:
    """What a co-signed rule record names, read without checking a signature or parsing
    the Cedar text: enough to route it (its keyset) and to refuse it early as stale."""

    keyset_id: bytes
    kind: str
    version: int
    body: bytes

    @property
    def id(self) -> bytes:
        return proposal_id(self.body)


def peek(data: bytes) -> Peek:
    body = CoSigned.restore(data, max_size=MAX_RULE_RECORD).body
    value = decode(body, max_size=MAX_RULE_RECORD)
    if not (isinstance(value, list) and len(value) >= 4 and value[0] in (POLICY_TAG, REVOCATIONS_TAG)):
        raise MalformedEncoding("co-signed body is neither a policy version nor a revocation list")
    kind = "policy" if value[0] == POLICY_TAG else "revocations"
    return Peek(want_bytes(value[2], "keyset id", 16), kind, want_int(value[3], "version", 1, MAX_VERSION), body)


def empty_revocations(keyset_id: bytes) -> RevocationList:
    return RevocationList(keyset_id, 0, (), 0)


@dataclass(frozen=True)
class RuleBook:
    """One keyset's rules in force on one node (pure: each change returns a new book)."""

    keyset: Keyset  # the keyset record (epoch 0): its authorities, policy and placement
    #: The epoch in force at a time (this node's epoch records): pins the shard entries of a
    #: version 1 list; without it they hold at every epoch.
    epoch_at: Callable[[int], int] | None = field(default=None, compare=False, repr=False)
    policy: tuple[CoSigned, PolicyVersion] | None = None
    revocations: tuple[CoSigned, RevocationList] | None = None

    @property
    def rule(self) -> AuthorityRule:
        return AuthorityRule.of(self.keyset)

    def version(self, kind: str) -> int:
        held = self.policy if kind == "policy" else self.revocations
        return held[1].version if held else 0

    def held(self, kind: str) -> tuple[CoSigned, Rule] | None:
        return self.policy if kind == "policy" else self.revocations

    # -- what is in force -------------------------------------------------------------

    @property
    def policy_text(self) -> str:
        if self.policy is not None:
            return self.policy[1].policy
        from ._policy import DEFAULT_POLICY
        return str(self.keyset.attrs.get("policy", DEFAULT_POLICY))

    @property
    def placement(self) -> str:
        return self.policy[1].placement if self.policy else str(self.keyset.attrs.get("placement", ""))

    @property
    def schedule(self) -> Schedule:
        """The last policy version's schedule, or the keyset record's if it carries none."""
        if self.policy is not None and self.policy[1].schedule is not None:
            return self.policy[1].schedule
        return Schedule.of_attrs(self.keyset.attrs)

    @functools.cached_property
    def revoked(self) -> RevocationList:
        """The revocations in force, pinned (once per book: ``epoch_at`` may read a store)."""
        return self.pinned(self.revocations[1]) if self.revocations else empty_revocations(self.keyset.keyset_id)

    def pinned(self, rec: RevocationList) -> RevocationList:
        """``rec`` with the shard entries of a version 1 list pinned to their epoch (see
        :attr:`epoch_at`); the record itself, as signed, is unchanged."""
        if self.epoch_at is None or all(e.epoch != EVERY_EPOCH for e in rec.entries):
            return rec
        at = self.epoch_at
        entries = {e.key: e for e in (replace(e, epoch=at(e.time)) if e.epoch == EVERY_EPOCH else e
                                      for e in rec.entries)}
        return replace(rec, entries=tuple(sorted(entries.values(), key=lambda e: e.key)))

    def holder_revoked(self, index: int, peer: str, epoch: int) -> bool:
        """Whether ``peer``, holding ``index`` at ``epoch``, may keep (or be given) it no longer."""
        r = self.revoked
        return index in r.indices(epoch) or peer in r.peers("custodian")

    def dropped(self, rec: Rule, epoch: int, also: Iterable[Revoked] = ()) -> list[Revoked]:
        """The revocations in force (and ``also``: those of the lists this authority signed)
        that a revocation list leaves out, but those that protect nothing at ``epoch`` any
        more (shard entries of epochs past). An authority signs no list that drops one."""
        if not isinstance(rec, RevocationList):
            return []
        keys = self.pinned(rec).keys
        return [e for e in {e.key: e for e in (*self.revoked.entries, *self._pin(also))}.values()
                if e.key not in keys and self.revoked.still_holds(e, epoch)]

    def _pin(self, entries: Iterable[Revoked]) -> tuple[Revoked, ...]:
        return self.pinned(RevocationList(self.keyset.keyset_id, 0, tuple(entries), 0)).entries

    # -- records in -------------------------------------------------------------------

    def check(self, data: bytes, now: int) -> tuple[CoSigned, Rule]:
        """Verify a co-signed rule record for this keyset (:meth:`verify`) and that it is
        news (:meth:`news`)."""
        cs, rec = self.verify(data)
        self.news(rec, now, complete=self.complete(cs))
        return cs, rec

    def verify(self, data: bytes) -> tuple[CoSigned, Rule]:
        """Size, shape, and every signature from a distinct authority of this keyset."""
        if len(data) > MAX_RULE_RECORD:
            raise MalformedEncoding(f"rule record over {MAX_RULE_RECORD} bytes")
        cs = CoSigned.from_bytes(data, authorities=self.rule.keys, max_size=MAX_RULE_RECORD)
        rec = parse_body(cs.body)
        if rec.keyset_id != self.keyset.keyset_id:
            raise MalformedEncoding("the rule record is for another keyset")
        return cs, rec

    def stale(self, rec: Peek | Rule) -> str | None:
        """Why a record is no news whatever its signatures say (a rollback, a replay or a
        losing rival), or None: the part of :meth:`news` that needs no signature check."""
        held = self.held(rec.kind)
        if held is None:
            return None
        cur = held[1]
        if rec.version < cur.version:
            return f"{rec.kind} version {rec.version} is older than version {cur.version} in force (a rollback)"
        if rec.version == cur.version and (rec.body == cur.body or rec.id > cur.id):
            return (f"{rec.kind} version {rec.version} is in force already (a replay, or a proposal overtaken "
                    "by another)")
        return None

    def news(self, rec: Rule, now: int, *, complete: bool) -> None:
        """Dated no later than ``now`` (with skew), and a version above the one in force;
        or, for a ``complete`` record only, the one in force's rival that wins (see the
        module). A proposal at the version in force can never be signed into force."""
        if rec.time > now + MAX_CLOCK_SKEW:
            raise MalformedEncoding("the rule record is dated in the future")
        why = self.stale(rec)
        if why is None and not complete and rec.version == self.version(rec.kind):
            why = f"{rec.kind} version {rec.version} is in force already (a proposal overtaken by another)"
        if why is not None:
            raise StaleRule(why)
        held = self.policy
        if isinstance(rec, PolicyVersion) and rec.schedule is None and held is not None \
                and held[1].schedule is not None:
            raise MalformedEncoding("a policy version without a schedule cannot follow one that set it "
                                    "(it would bring back the import's without saying so)")

    def wins(self, kind: str, version: int, record_id: bytes) -> bool:
        """Whether the record in force of ``kind`` is news to a node that holds ``version``
        with id ``record_id`` (anti-entropy: a higher version, or the same one's winning rival)."""
        held = self.held(kind)
        if held is None:
            return False
        cur = held[1]
        return cur.version > version or (cur.version == version and cur.id < record_id)

    def complete(self, cs: CoSigned) -> bool:
        return cs.complete(self.rule.quorum)

    def applied(self, cs: CoSigned, rec: Rule) -> RuleBook:
        """This book with a checked, complete record in force."""
        if not self.complete(cs):
            raise ValueError("a rule record takes effect only with the authority quorum's signatures")
        if isinstance(rec, PolicyVersion):
            return replace(self, policy=(cs, rec))
        return replace(self, revocations=(cs, rec))


def next_revocations(book: RuleBook, entries: Iterable[Revoked], *, version: int, time: int,
                     epoch: int) -> bytes | None:
    """The body of a revocation list at ``version`` that holds every revocation in force and
    ``entries`` that still protect something at ``epoch`` (the keyset's epoch now); None if
    that adds nothing to what is in force."""
    revoked = book.revoked
    held = {e.key: e for e in revoked.entries if revoked.still_holds(e, epoch)}
    new = {e.key: e for e in book._pin(entries) if e.key not in held and revoked.still_holds(e, epoch)}
    if not new:
        return None
    return RevocationList.make_body(keyset_id=book.keyset.keyset_id, version=version,
                                    entries=[*held.values(), *new.values()], time=time)


def next_policy(book: RuleBook, *, policy: str, placement: str | None, time: int) -> bytes:
    """The body of the policy version after the one in force (placement: kept if None)."""
    return PolicyVersion.make_body(keyset_id=book.keyset.keyset_id, version=book.version("policy") + 1,
                                   policy=policy, placement=book.placement if placement is None else placement,
                                   time=time)
