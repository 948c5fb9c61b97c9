"""A keyset's rules on this node: policy versions and revocation lists (house style 4).

``Rules`` keeps, for every keyset this node knows (it owns it, holds a shard of
it, approves for it or is one of its authorities), the records in force
(``protocol/_keyset_rules.py``), and the open proposals of the keysets it is an
authority of. Where records come from:

* gossip (``wire.POLICY_TOPIC``, ``wire.REVOCATION_TOPIC``): complete records
  only; the validator is :meth:`check`;
* anti-entropy (``wire.RULES`` "pull"): what a peer that knows the keyset holds
  newer than our summary;
* another authority (``wire.RULES`` "propose"): a proposal short of the quorum;
* the operator: ``policy publish``, ``revoke`` and ``sign``.

What the rest of the node asks: the request policy and placement in force, and
who is revoked (:meth:`book`).
"""

from __future__ import annotations

import bisect
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from shardnet import protocol as p
from shardnet.protocol import CoSigned, wire
from shardnet.protocol import keyset_rules as kr

from ._epoch_view import base_keyset, keyset_view
from ._store import AuditEvent, Store

log = logging.getLogger("shardnet.node")

#: Open rule proposals a node keeps at most (only a keyset's authorities keep them).
MAX_RULE_PROPOSALS = wire.MAX_PROPOSALS
#: Seconds an open rule proposal is kept after its last new signature.
PROPOSAL_TTL = 7 * 86400
#: Other nodes' open rule proposals a node keeps at most: of the keysets of one owner; of
#: those, per signer; and per keyset, kind and signer (a newer one from the same signer
#: alone takes the place of its oldest). How many versions past the one in force a
#: proposal may be.
PROPOSALS_PER_OWNER = 32
PROPOSALS_PER_OWNER_SIGNER = 8
PROPOSALS_PER_SIGNER = 2
MAX_AHEAD = 8
#: Keysets one pull summary names at most, and records one reply carries at most.
MAX_PULL_KEYSETS = wire.DIRECTORY_PULL_MAX
MAX_PULL_ITEMS = 8000
#: Keysets whose rules a node keeps parsed in memory (an authority of a thousand keysets
#: reads each one's many times a round: fewer would be read from the store again and again).
MAX_BOOKS = 2048
#: Versions of one kind a node applies per keyset within APPLY_WINDOW seconds at most:
#: past that, records of that kind for the keyset wait (a quorum of hostile authorities could otherwise
#: make every node that knows the keyset write and relay without end). A node that skipped
#: versions takes the newest later, by gossip or pull: each holds the whole state.
APPLY_BURST = 16
APPLY_WINDOW = 3600


class NotAuthority(p.ShardnetError):
    """Only a keyset's policy authorities propose and sign its rules."""


#: Verified records kept (by digest), so that a gossip batch checked by the validator is not
#: verified again when it is taken in.
CHECKED_CACHE = 2 * p.batches.MAX_RULES_BATCH


class TooManyVersions(p.ShardnetError):
    """A keyset's authorities put APPLY_BURST versions in force within APPLY_WINDOW: more wait."""


class NoRoom(p.ShardnetError):
    """No room for another open rule proposal (see PROPOSALS_PER_OWNER and the rest)."""


class UnknownKeyset(p.ShardnetError):
    """A rule record for a keyset this node does not know: it cannot check the signers."""


def read_book(store: Store, keyset_id: str) -> kr.RuleBook | None:
    """A keyset's rules in force as stored (verified when they were stored); None for a
    keyset this node does not know."""
    base = base_keyset(store, keyset_id)
    if base is None:
        return None

    def epoch_at(time: int) -> int:  # the epoch in force at ``time``: its round began before
        return max([0, *(r.epoch for r in map(p.epoch_records.EpochRecord.parse,
                                               (bytes(row["record"]) for row in store.epochs(keyset_id)))
                         if r.created <= time)])
    book = kr.RuleBook(base, epoch_at=epoch_at)
    for row in store.rules(keyset_id, in_force=True):
        cs = CoSigned.restore(bytes(row["record"]), max_size=kr.MAX_RULE_RECORD)
        book = book.applied(cs, kr.parse_body(cs.body, trusted=True))
    return book


class Rules:
    def __init__(self, store: Store, key: p.Signer) -> None:
        self.store = store
        self.key = key
        self.peer_id = p.peer_id_of(key.public_key().public_bytes_raw())
        self._books: OrderedDict[str, kr.RuleBook] = OrderedDict()  # least recently used first
        self._checked: dict[bytes, tuple[CoSigned, kr.Rule]] = {}
        self._after = ""  # the last keyset a pull summary named: the next one starts after it
        self.outgoing: list[CoSigned] = []  # proposals this node made by itself, to hand round
        self._applied: OrderedDict[tuple[str, str], list[int]] = OrderedDict()  # (keyset, kind) -> recent times
        #: Called when rules of a keyset this node is an authority of go in force (the autopilot's wake-up).
        self.on_applied: Callable[[str], None] = lambda keyset_id: None

    # -- what the rest of the node asks -------------------------------------------

    def book(self, keyset_id: str) -> kr.RuleBook | None:
        """The rules in force for a keyset this node knows; None for one it does not."""
        got = self._books.get(keyset_id)
        if got is not None:
            self._books.move_to_end(keyset_id)
            return got
        book = read_book(self.store, keyset_id)
        if book is None:
            return None
        self._remember(keyset_id, book)
        return book

    def _remember(self, keyset_id: str, book: kr.RuleBook) -> None:
        self._books[keyset_id] = book
        self._books.move_to_end(keyset_id)
        while len(self._books) > MAX_BOOKS:  # each may hold two records of up to 96 KiB
            self._books.popitem(last=False)

    def policy_text(self, keyset: p.Keyset) -> str:
        book = self.book(keyset.id_hex)
        return book.policy_text if book is not None else str(keyset.attrs.get("policy", p.DEFAULT_POLICY))

    def policy_digest(self, keyset: p.Keyset, handed: Sequence[bytes] = (), now: int = 0) -> bytes:
        """What a shard's metadata binds: the digest of the request policy in force, counting
        the complete records ``handed`` with an epoch commit that are news (a new holder
        seals its share before it stores them: it may not know the keyset before)."""
        book = self.book(keyset.id_hex) or kr.RuleBook(keyset)
        for data in handed:
            try:
                cs, rec = book.check(data, now)
                if book.complete(cs):
                    book = book.applied(cs, rec)
            except p.ShardnetError:
                continue
        return book.policy[1].digest if book.policy else keyset.policy_hash

    def policy_digest_of(self, keyset_id: str) -> bytes | None:
        book = self.book(keyset_id)
        return self.policy_digest(book.keyset) if book is not None else None

    def in_force(self, keyset_id: str) -> list[bytes]:
        """The co-signed records in force for the keyset (to hand on with a commit)."""
        book = self.book(keyset_id)
        return [held[0].to_bytes() for kind in kr.KINDS if book is not None and (held := book.held(kind))]

    def versioned(self, keyset_id: str) -> bool:
        """Whether a policy version replaced the keyset record's own policy."""
        book = self.book(keyset_id)
        return book is not None and book.policy is not None

    def revoked_requester(self, keyset_id: str, peer: str) -> bool:
        book = self.book(keyset_id)
        return book is not None and peer in book.revoked.peers("requester")

    # -- records in ---------------------------------------------------------------

    def _check_any(self, data: bytes, now: int) -> tuple[CoSigned, kr.Rule, kr.RuleBook]:
        """Verified (signatures checked once per record: the validator's check is kept for
        accept), and news. A stale record is refused before any signature or Cedar check."""
        if len(data) > kr.MAX_RULE_RECORD:
            raise p.MalformedEncoding(f"rule record over {kr.MAX_RULE_RECORD} bytes")
        seen = kr.peek(data)
        keyset_id = seen.keyset_id.hex()
        book = self.book(keyset_id)
        if book is None:
            raise UnknownKeyset(f"keyset {keyset_id} is not known to this node")
        why = book.stale(seen)
        if why is not None:
            raise kr.StaleRule(why)
        recent = [t for t in self._applied.get((keyset_id, seen.kind), []) if t > now - APPLY_WINDOW]
        if len(recent) >= APPLY_BURST:
            raise TooManyVersions(f"keyset {keyset_id}: {APPLY_BURST} {seen.kind} versions applied within "
                                  f"{APPLY_WINDOW} s; the next waits")
        digest = hashlib.sha256(data).digest()
        hit = self._checked.get(digest)
        if hit is None:
            hit = book.verify(data)
            self._checked[digest] = hit
            if len(self._checked) > CHECKED_CACHE:
                self._checked.pop(next(iter(self._checked)))
        book.news(hit[1], now, complete=book.complete(hit[0]))
        return hit[0], hit[1], book

    def check(self, data: bytes, now: int) -> tuple[CoSigned, kr.Rule]:
        """The gossip validator's check: a complete, verified record that is news."""
        cs, rec, book = self._check_any(data, now)
        if not book.complete(cs):
            raise p.MalformedEncoding(f"{rec.kind} version {rec.version} has {len(cs.signatures)} of the "
                                      f"{book.rule.quorum} authority signatures it needs")
        return cs, rec

    def accept(self, data: bytes, now: int) -> str | None:
        """Verify and keep a rule record: "applied" (now in force), "proposal" (kept, short
        of the quorum, at an authority only), or None (nothing new). Raises for the invalid."""
        cs, rec, book = self._check_any(data, now)
        if book.complete(cs):
            self._apply(book, cs, rec, now)
            return "applied"
        if not book.rule.is_authority(self.peer_id):
            return None
        return self._keep_proposal(cs, rec, now)

    def _keep_proposal(self, cs: CoSigned, rec: kr.Rule, now: int) -> str | None:
        """Keep a proposal (merged with the copy held), or apply it if that completes it:
        "applied", "proposal", or None (held already). Room is bounded (NoRoom past it): in
        all; per keyset owner (an owner can name any node an authority of its own keysets),
        and per signer within that; per keyset, kind and signer (so one hostile authority
        cannot take the others' room); at most MAX_AHEAD versions past the one in force.
        This node's own proposals are kept while there is room in all, or another node's
        proposal to make room (``Store.put_rule_proposal``)."""
        held = self.store.rule_proposal(cs.id.hex())
        if held is not None:
            cs = cs.merged(CoSigned.restore(bytes(held["record"]), max_size=kr.MAX_RULE_RECORD))
        book = self.book(rec.keyset_id.hex())
        assert book is not None
        if book.complete(cs):
            self._apply(book, cs, rec, now)
            return "applied"
        if rec.version > book.version(rec.kind) + MAX_AHEAD:
            raise p.MalformedEncoding(f"{rec.kind} version {rec.version} is more than {MAX_AHEAD} versions past "
                                      f"version {book.version(rec.kind)} in force")
        kept = self.store.put_rule_proposal(
            cs.id.hex(), rec.keyset_id.hex(), rec.kind, rec.version, cs.to_bytes(),
            signers=[p.peer_id_of(k) for k in cs.signers], now=now, owner=p.peer_id_of(book.keyset.owner),
            me=self.peer_id, limits=(MAX_RULE_PROPOSALS, PROPOSALS_PER_OWNER, PROPOSALS_PER_OWNER_SIGNER,
                                     PROPOSALS_PER_SIGNER))
        if kept == "full":
            raise NoRoom(f"no room for another open {rec.kind} proposal of keyset {rec.keyset_id.hex()} here "
                         "(its signers hold their share of the room; sign or let expire the open ones)")
        return "proposal" if kept == "kept" else None

    def _apply(self, book: kr.RuleBook, cs: CoSigned, rec: kr.Rule, now: int) -> None:
        keyset_id = rec.keyset_id.hex()
        body: dict[str, Any] = {"keyset": keyset_id, "kind": rec.kind, "version": rec.version,
                                "record": cs.id.hex(), "signers": sorted(p.peer_id_of(k) for k in cs.signers)}
        before = book.revoked
        if isinstance(rec, kr.RevocationList):
            body["revoked"] = [e.to_json() for e in rec.entries if e not in before.entries]
        else:
            body["policy_sha256"] = rec.digest.hex()
            body["placement"] = rec.placement
            body["schedule"] = replace(book, policy=(cs, rec)).schedule.to_json()
        lost = self._lost(book, rec, self._mine_open(keyset_id, rec.kind)) if isinstance(rec, kr.RevocationList) \
            else []
        with self.store.transaction():
            self.store.put_rule(cs.id.hex(), keyset_id, rec.kind, rec.version, cs.to_bytes(),
                                signatures=len(cs.signatures), now=now,
                                audit=AuditEvent(f"{rec.kind}-applied", body, self.key))
            if isinstance(rec, kr.RevocationList):
                self._refuse_requests(keyset_id, rec.peers("requester") - before.peers("requester"), now)
        new = book.applied(cs, rec)
        self._remember(keyset_id, new)
        recent = [t for t in self._applied.pop((keyset_id, rec.kind), []) if t > now - APPLY_WINDOW]
        self._applied[(keyset_id, rec.kind)] = [*recent, now][-APPLY_BURST:]
        while len(self._applied) > 2 * MAX_BOOKS:
            self._applied.popitem(last=False)
        if lost and isinstance(rec, kr.RevocationList):
            self._carry(new, rec, lost, now)
        if book.rule.is_authority(self.peer_id):
            self.on_applied(keyset_id)

    def _lost(self, book: kr.RuleBook, rec: kr.RevocationList,
              superseded: list[tuple[CoSigned, kr.Rule]]) -> list[kr.Revoked]:
        """What a revocation list about to go in force leaves out: of the one in force, and of
        the open lists this node signed up to its version (which it replaces)."""
        mine = [e for _, r in superseded if isinstance(r, kr.RevocationList) and r.version <= rec.version
                for e in r.entries]
        return book.dropped(rec, self._epoch(book), also=mine)

    def _carry(self, book: kr.RuleBook, rec: kr.RevocationList, lost: list[kr.Revoked], now: int) -> None:
        """A list went in force that leaves out revocations (of the one in force before, or of
        open lists this node signed: K authorities signed it, one of them maybe on a stale
        view). Every node says so; an authority proposes them again, on top of it."""
        names = ", ".join(sorted({f"{e.subject} {e.peer or e.index}" for e in lost}))
        log.warning("keyset %s: revocations version %d leaves out %s", rec.keyset_id.hex(), rec.version, names)
        body: dict[str, Any] = {"keyset": rec.keyset_id.hex(), "over": rec.version,
                                "revoked": [e.to_json() for e in lost]}
        if book.rule.is_authority(self.peer_id):
            try:
                got = self._propose_revocations(book, lost, now)
            except Exception as exc:  # noqa: BLE001 - the list is applied; this is a follow-up
                log.warning("keyset %s: could not propose %s again: %s", rec.keyset_id.hex(), names, exc)
                got = None
            if got is not None:
                body["proposal"] = got[0].id.hex()
                self.outgoing.append(got[0])
        self.store.append_audit("revocations-dropped", body, now, self.key)

    def _epoch(self, book: kr.RuleBook) -> int:
        view = keyset_view(self.store, book.keyset.id_hex)
        return view.epoch if view is not None else book.keyset.epoch

    def _refuse_requests(self, keyset_id: str, requesters: frozenset[str], now: int) -> None:
        """A revoked requester's pending requests are refused at once."""
        if not requesters:
            return
        for row in self.store.requests(active_at=now):
            if row["keyset_id"] == keyset_id and row["requester"] in requesters and not row["outcome"]:
                self.store.set_request_outcome(row["request_id"], "refused: the requester is revoked")

    # -- the operator's proposals ---------------------------------------------------

    def _authority_book(self, keyset_id: str) -> kr.RuleBook:
        book = self.book(keyset_id)
        if book is None:
            raise UnknownKeyset(f"keyset {keyset_id} is not known to this node")
        if not book.rule.is_authority(self.peer_id):
            raise NotAuthority(f"this node is no policy authority of keyset {keyset_id} (its authorities: "
                               f"{', '.join(book.rule.peers)}; {book.rule.quorum} must sign)")
        return book

    def _propose(self, body: bytes, now: int) -> tuple[CoSigned, str]:
        cs = CoSigned.propose(self.key, body)
        rec = kr.parse_body(body, trusted=True)
        book = self.book(rec.keyset_id.hex())
        assert book is not None
        book.check(cs.to_bytes(), now)  # news: a version above the one in force
        outcome = self._keep_proposal(cs, rec, now)
        if outcome is None:  # pragma: no cover - a new body is never held already
            raise p.ShardnetError("this proposal is held already")
        return cs, outcome

    def _mine_open(self, keyset_id: str, kind: str) -> list[tuple[CoSigned, kr.Rule]]:
        """Open proposals of ``kind`` for the keyset that carry this node's signature, by version."""
        me = p.public_key_of(self.peer_id)
        out = []
        for row in self.store.rules(keyset_id, in_force=False):
            if row["kind"] == kind:
                cs = CoSigned.restore(bytes(row["record"]), max_size=kr.MAX_RULE_RECORD)
                if me in cs.signers:
                    out.append((cs, kr.parse_body(cs.body, trusted=True)))
        return sorted(out, key=lambda x: x[1].version)

    def propose_policy(self, keyset_id: str, text: str | None, placement: str | None, now: int,
                       schedule: dict[str, int | None] | None = None) -> tuple[CoSigned, str]:
        """A policy version above the one in force and every open one this node signed (an
        authority signs one body per version). None keeps what is in force: the text, the
        placement, and each of ``schedule``'s keys (a value of None stops that schedule). The
        body carries a schedule (record version 2) once one is set through a policy version."""
        book = self._authority_book(keyset_id)
        carried = book.policy is not None and book.policy[1].schedule is not None
        new = None
        if schedule or carried:
            new = replace(book.schedule, **(schedule or {}))
        body = kr.PolicyVersion.make_body(keyset_id=book.keyset.keyset_id, version=self._next_version(book, "policy"),
                                          policy=book.policy_text if text is None else text,
                                          placement=book.placement if placement is None else placement, time=now,
                                          schedule=new)
        return self._propose(body, now)

    def _signed_revocations(self, keyset_id: str) -> list[kr.Revoked]:
        """The revocations of the open lists this node signed."""
        return [e for _, r in self._mine_open(keyset_id, "revocations") if isinstance(r, kr.RevocationList)
                for e in r.entries]

    def propose_revocation(self, keyset_id: str, entry: kr.Revoked, now: int) -> tuple[CoSigned, str] | None:
        """The next revocation list: every revocation in force, those of every open list this
        node signed, and ``entry``, at a version above all of them; None if ``entry`` is in
        one of them already."""
        book = self._authority_book(keyset_id)
        signed = self._signed_revocations(keyset_id)
        if entry.key in book.revoked.keys or entry.key in {e.key for e in signed}:
            return None
        return self._propose_revocations(book, [entry], now)  # on top of those it signed

    def _propose_revocations(self, book: kr.RuleBook, entries: list[kr.Revoked],
                             now: int) -> tuple[CoSigned, str] | None:
        keyset_id = book.keyset.id_hex
        body = kr.next_revocations(book, [*self._signed_revocations(keyset_id), *entries], time=now,
                                   version=self._next_version(book, "revocations"), epoch=self._epoch(book))
        return None if body is None else self._propose(body, now)

    def _next_version(self, book: kr.RuleBook, kind: str) -> int:
        """Above the one in force and every open proposal this node signed (it signs one body
        per version). Not above the others' ones: a hostile authority's proposals at high
        versions would then push this node's past MAX_AHEAD."""
        mine = [r.version for _, r in self._mine_open(book.keyset.id_hex, kind)]
        return max([book.version(kind), *mine]) + 1

    def withdraw(self, proposal: str) -> dict[str, Any]:
        """Forget an open proposal this node signed: it no longer binds what this node signs.
        (Copies that other authorities hold keep its signature: they may still complete it.)"""
        row = self.store.rule_proposal(proposal)
        if row is None:
            raise LookupError(f"no open proposal {proposal!r} on this node")
        cs = CoSigned.restore(bytes(row["record"]), max_size=kr.MAX_RULE_RECORD)
        if p.public_key_of(self.peer_id) not in cs.signers:
            raise p.ShardnetError("this node did not sign that proposal: there is nothing of its own to withdraw")
        self.store.drop_rule_proposal(row["proposal_id"])
        return self._proposal_row(row) | {"withdrawn": True}

    def sign(self, proposal: str, now: int) -> tuple[CoSigned, str]:
        row = self.store.rule_proposal(proposal)
        if row is None:
            raise LookupError(f"no open proposal {proposal!r} on this node")
        cs = CoSigned.restore(bytes(row["record"]), max_size=kr.MAX_RULE_RECORD)
        book = self._authority_book(row["keyset_id"])
        if p.public_key_of(self.peer_id) in cs.signers:
            return cs, "signed already"
        rec = kr.parse_body(cs.body, trusted=True)
        rival = [c for c, r in self._mine_open(row["keyset_id"], rec.kind) if r.version == rec.version]
        if rival:
            raise p.ShardnetError(f"this node signed another {rec.kind} proposal for version {rec.version} "
                                  f"({rival[0].id.hex()[:12]}); an authority signs one per version")
        dropped = book.dropped(rec, self._epoch(book), also=self._signed_revocations(row["keyset_id"]))
        if dropped:
            lost = sorted(f"{e.subject} {e.peer or e.index}" for e in dropped)
            raise p.ShardnetError(f"this list drops revocations in force or in a list this node signed "
                                  f"({', '.join(lost)}), and none is taken back; propose a new one (shardnet "
                                  "revoke builds on all of them)")
        cs = cs.signed_by(self.key)
        book.check(cs.to_bytes(), now)  # still news
        outcome = self._keep_proposal(cs, rec, now)
        return cs, outcome or "signed already"

    def completed(self, cs: CoSigned) -> CoSigned:
        """The record in force that ``cs`` (a proposal) completed, with every signature held;
        ``cs`` itself if none is held."""
        rec = kr.parse_body(cs.body, trusted=True)
        book = self.book(rec.keyset_id.hex())
        held = book.held(rec.kind) if book is not None else None
        return held[0] if held is not None else cs

    def mine(self) -> list[str]:
        """Keysets this node is a policy authority of."""
        out = []
        for keyset_id in self.known_keysets():  # from the keyset records: no rule book read for it
            base = base_keyset(self.store, keyset_id)
            if base is not None and p.epoch_records.AuthorityRule.of(base).is_authority(self.peer_id):
                out.append(keyset_id)
        return out

    def known_keysets(self) -> list[str]:
        ids = {r["keyset_id"] for r in self.store.keysets()} | {r["keyset_id"] for r in self.store.known_keysets()}
        return sorted(ids)

    def expire_proposals(self, now: int) -> int:
        return self.store.drop_rule_proposals(updated_before=now - PROPOSAL_TTL)

    # -- anti-entropy ---------------------------------------------------------------

    def summary(self, keysets: list[str] | None = None,
                budget: int = wire.RULES.max_request - 1024) -> list[list[Any]]:
        """What this node holds, per keyset: ``[keyset id, policy version, its record id,
        revocations version, its record id, [ids of the open proposals held]]`` (version 0
        and an empty id where none is in force). Within ``budget`` encoded bytes and
        MAX_PULL_KEYSETS keysets: a node that knows more names the next ones in its next
        pull (a window that goes round), so every keyset is pulled in time. ``keysets``: only
        those (the ones the peer pulled from knows), else every keyset this node knows."""
        open_ids: dict[str, list[bytes]] = {}
        for row in self.store.rules(in_force=False):
            open_ids.setdefault(row["keyset_id"], []).append(bytes.fromhex(row["proposal_id"]))
        known = self.known_keysets() if keysets is None else sorted(keysets)
        start = bisect.bisect_right(known, self._after) % len(known) if known else 0
        out: list[list[Any]] = []
        used = 0
        for step in range(len(known)):
            keyset_id = known[(start + step) % len(known)]
            book = self.book(keyset_id)
            if book is None:
                continue
            entry: list[Any] = [bytes.fromhex(keyset_id)]
            for kind in kr.KINDS:
                held = book.held(kind)
                entry += [held[1].version, held[1].id] if held else [0, b""]
            entry.append(open_ids.get(keyset_id, [])[:2 * MAX_AHEAD])
            size = len(p.encode(entry))
            if used + size > budget or len(out) >= MAX_PULL_KEYSETS:
                break
            used += size
            out.append(entry)
            self._after = keyset_id
        return out

    def pull_reply(self, summary: Any, puller: str = "", budget: int = wire.RULES.max_reply - 1024) -> list[bytes]:
        """For keysets this node knows: the records in force that are news to ``summary``
        (a higher version, or the same one's winning rival), then, for the keysets
        ``puller`` is an authority of, the open proposals it does not hold (so an authority
        that was away when one was handed round gets it). Within ``budget`` bytes and
        MAX_PULL_ITEMS records: collecting stops there, and the rest comes with the next pull."""
        p.want(summary, list, "summary")
        if len(summary) > MAX_PULL_KEYSETS:
            raise p.MalformedEncoding(f"a rules pull names at most {MAX_PULL_KEYSETS} keysets")
        out: list[bytes] = []
        used = 0

        def take(data: bytes) -> bool:
            nonlocal used
            if used + len(data) + 5 > budget or len(out) >= MAX_PULL_ITEMS:
                return False
            used += len(data) + 5  # and its msgpack framing
            out.append(data)
            return True

        theirs: list[tuple[str, kr.RuleBook, set[bytes]]] = []
        for item in summary:
            p.want(item, list, "summary entry")
            if len(item) != 6:
                raise p.MalformedEncoding("a summary entry is [keyset id, policy version, id, revocations "
                                          "version, id, [open proposal ids]]")
            keyset_id = p.want_bytes(item[0], "keyset id", 16).hex()
            held_open = {p.want_bytes(x, "proposal id") for x in p.want(item[5], list, "proposal ids")[:64]}
            book = self._books.get(keyset_id) or (self.book(keyset_id) if self._known(keyset_id) else None)
            if book is None:
                continue
            for kind, at in (("policy", 1), ("revocations", 3)):
                version, rid = p.want(item[at], int, "version"), p.want_bytes(item[at + 1], "record id")
                held = book.held(kind)
                if held is not None and book.wins(kind, version, rid or b"\xff" * 16) and not take(held[0].to_bytes()):
                    return out  # what is in force first
            if puller and book.rule.is_authority(puller):
                theirs.append((keyset_id, book, held_open))
        for keyset_id, _, held_open in theirs:
            for r in self.store.rules(keyset_id, in_force=False):
                if bytes.fromhex(r["proposal_id"]) not in held_open and not take(bytes(r["record"])):
                    return out
        return out

    def _known(self, keyset_id: str) -> bool:
        return self.store.keyset(keyset_id) is not None or self.store.known_keyset(keyset_id) is not None

    # -- what `policy show` and `revocations` print -----------------------------------

    def show(self, keyset_id: str) -> dict[str, Any]:
        book = self.book(keyset_id)
        if book is None:
            raise UnknownKeyset(f"keyset {keyset_id} is not known to this node")
        held = book.policy
        out: dict[str, Any] = {
            "keyset": keyset_id, "version": book.version("policy"), "policy": book.policy_text,
            "policy_sha256": p.Policy(book.policy_text).digest.hex(), "placement": book.placement,
            "schedule": book.schedule.to_json(),
            "authorities": list(book.rule.peers), "authority_quorum": book.rule.quorum,
            "signers": sorted(p.peer_id_of(k) for k in held[0].signers) if held else
            [p.peer_id_of(book.keyset.owner)],
            "time": held[1].time if held else book.keyset.created,
            "proposals": [self._proposal_row(r) for r in self.store.rules(keyset_id, in_force=False)
                          if r["kind"] == "policy"],
        }
        return out

    def revocations(self) -> list[dict[str, Any]]:
        rows = []
        for keyset_id in self.known_keysets():
            book = self.book(keyset_id)
            if book is None or book.revocations is None:
                continue
            cs, rec = book.revocations
            for e in rec.entries:
                rows.append({"keyset": keyset_id, "version": rec.version,
                             "signers": sorted(p.peer_id_of(k) for k in cs.signers), **e.to_json()})
        return rows

    def _proposal_row(self, row: dict[str, Any]) -> dict[str, Any]:
        cs = CoSigned.restore(bytes(row["record"]), max_size=kr.MAX_RULE_RECORD)
        rec = kr.parse_body(cs.body, trusted=True)
        book = self.book(row["keyset_id"])
        return {"proposal": row["proposal_id"], "kind": rec.kind, "keyset": row["keyset_id"],
                "version": rec.version, "signatures": len(cs.signatures),
                "needed": book.rule.quorum if book else 0,
                "signed_by_me": p.public_key_of(self.peer_id) in cs.signers, "record": rec.to_json()}

    def proposals(self) -> list[dict[str, Any]]:
        return [self._proposal_row(r) for r in self.store.rules(in_force=False)]
