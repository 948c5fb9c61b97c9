"""Two different votes from one approver on one request void that approver.

The tally's outcome must be a function of the *set* of valid votes seen, never
of the order they arrived in or of the path that brought them (gossip, sync,
a release ask's evidence). These tests check that against a reference model:
exhaustively over every order of a small vote set, and with Hypothesis over
random vote sets, orders and paths.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import random
from collections.abc import Iterator, Sequence

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from shardnet import protocol as p
from shardnet.node._keystore import FileKeystore
from shardnet.node._rules import Rules
from shardnet.node._services import (
    Approvals,
    Custodian,
    Rejected,
    Releaser,
)
from shardnet.node._store import Store
from shardnet.protocol import wire
from shardnet.protocol._policy import DEFAULT_POLICY, Policy
from shardnet.protocol._quorum import (
    Added,
    ApprovalRule,
    ReleaseDenied,
    State,
    Tally,
    VoteRejected,
    decide_release,
)
from shardnet.protocol._records import Delivery, Receipt, peer_id_of
from shardnet.protocol._requests import Release, Request, Vote

from .admitted import admitted
from .drbg import Drbg

NOW = 1_800_000_000
APPROVERS = ["tokyo", "new-york", "paris"]
KEYS = {name: Ed25519PrivateKey.from_private_bytes(bytes([i + 40]) * 32)
        for i, name in enumerate(["owner", "req", *APPROVERS])}
PEER = {name: peer_id_of(k.public_key().public_bytes_raw()) for name, k in KEYS.items()}
POLICY = Policy(DEFAULT_POLICY)
QUORUM = 2


def _deal() -> tuple[p.Keyset, list[p.Share]]:
    holders = {str(i + 1): [PEER[a]] for i, a in enumerate(APPROVERS)}
    attrs = {"holders": holders, "policy": POLICY.text, "approvers": [PEER[a] for a in APPROVERS],
             "quorum": QUORUM}
    return p.split_key(b"master", 2, 3, owner=KEYS["owner"], now=NOW, policy_hash=POLICY.digest,
                       attrs=attrs, rng=Drbg(b"equivocation"))


KEYSET, SHARES = _deal()
EPHEMERAL = p.HpkePrivateKey.generate("x25519", Drbg(b"ephemeral"))
REQUEST = Request.make(KEYS["req"], keyset_id=KEYSET.keyset_id, mode="unwrap", reason="drill",
                       ephemeral=EPHEMERAL.public_bytes(), nonce=bytes(16), created=NOW, not_after=NOW + 600)
# Every vote a test can draw, signed once: (approver, decision, time offset). Two
# offsets give two different signed records with the same decision (duplicates
# that are not byte-identical); the same key twice is a byte-identical resend.
POOL = {(a, d, dt): Vote.make(KEYS[a], REQUEST, d, NOW + dt)
        for a in APPROVERS for d in ("approve", "deny") for dt in (0, 1)}


def model(votes: Sequence[Vote]) -> tuple[State, int, int, frozenset[str]]:
    """The reference: each approver's set of decisions, whatever the order."""
    decisions: dict[str, set[str]] = {}
    for v in votes:
        decisions.setdefault(v.approver, set()).add(v.decision)
    void = frozenset(a for a, ds in decisions.items() if len(ds) == 2)
    approvals = sum(ds == {"approve"} for ds in decisions.values())
    denials = sum(ds == {"deny"} for ds in decisions.values())
    if approvals >= QUORUM:
        state = State.APPROVED
    elif len(APPROVERS) - denials - len(void) < QUORUM:
        state = State.REJECTED
    else:
        state = State.PENDING
    return state, approvals, denials, void


def tally_of(votes: Sequence[Vote]) -> Tally:
    tally = Tally(REQUEST, ApprovalRule.of(KEYSET))
    assert tally.add_all(votes, NOW) == []
    return tally


def check_against_model(votes: Sequence[Vote]) -> None:
    tally = tally_of(votes)
    state, approvals, denials, void = model(votes)
    assert (tally.state(NOW), tally.approvals, tally.denials, frozenset(tally.equivocations)) == (
        state, approvals, denials, void)
    for approver, e in tally.equivocations.items():
        # The evidence is two records signed by that approver, with different decisions.
        assert {e.first.decision, e.second.decision} == {"approve", "deny"}
        for v in (e.first, e.second):
            assert Vote.from_bytes(v.signed).approver == approver
    released = True
    try:
        decide_release(KEYSET, tally, now=NOW + 1, policy=POLICY)
    except ReleaseDenied:
        released = False
    assert released == (state is State.APPROVED)


def test_the_reported_bypass_is_closed() -> None:
    """tokyo's stored deny, then an ask whose evidence puts tokyo's approve first."""
    stored = [POOL["tokyo", "deny", 0]]
    evidence = [POOL["tokyo", "approve", 0], POOL["new-york", "approve", 0]]
    for votes in (evidence + stored, stored + evidence):
        tally = tally_of(votes)
        assert tally.approvals == 1 and set(tally.equivocations) == {PEER["tokyo"]}
        with pytest.raises(ReleaseDenied, match=r"no quorum: 1 of 2 approvals; 1 void"):
            decide_release(KEYSET, tally, now=NOW + 1, policy=POLICY)


def test_add_says_what_it_did() -> None:
    tally = Tally(REQUEST, ApprovalRule.of(KEYSET))
    assert tally.add(POOL["tokyo", "approve", 0], NOW) is Added.COUNTED
    assert tally.add(POOL["tokyo", "approve", 0], NOW) is Added.DUPLICATE
    assert tally.add(POOL["tokyo", "approve", 1], NOW) is Added.DUPLICATE
    assert tally.add(POOL["tokyo", "deny", 0], NOW) is Added.EQUIVOCATION
    assert tally.add(POOL["tokyo", "approve", 0], NOW) is Added.VOIDED
    assert tally.add(POOL["tokyo", "deny", 1], NOW) is Added.VOIDED
    assert tally.approvals == tally.denials == 0 and tally.voted(PEER["tokyo"])


# Every order of this multiset: an equivocator (both decisions, one duplicated),
# an honest approver whose approve arrives twice, and a denier.
EXHAUSTIVE = [POOL["tokyo", "approve", 0], POOL["tokyo", "deny", 0], POOL["tokyo", "approve", 1],
              POOL["new-york", "approve", 0], POOL["new-york", "approve", 0], POOL["paris", "deny", 0]]


def test_every_order_of_arrival() -> None:
    orders = 0
    for order in itertools.permutations(EXHAUSTIVE):
        check_against_model(order)
        orders += 1
    assert orders == 720
    assert model(EXHAUSTIVE)[0] is State.REJECTED  # 1 approval possible at most: quorum out of reach


def test_every_order_with_two_honest_approvals() -> None:
    votes = [POOL["tokyo", "approve", 0], POOL["tokyo", "deny", 1], POOL["new-york", "approve", 0],
             POOL["paris", "approve", 1], POOL["paris", "approve", 0]]
    for order in itertools.permutations(votes):
        tally = tally_of(order)
        assert tally.state(NOW) is State.APPROVED and tally.approvals == 2  # tokyo never counts
        assert set(tally.equivocations) == {PEER["tokyo"]}


votes_strategy = st.lists(st.sampled_from(sorted(POOL)), max_size=12).flatmap(
    lambda keys: st.permutations(keys))


@settings(max_examples=2000, deadline=None)
@given(votes_strategy)
def test_tally_depends_only_on_the_set_of_votes(keys: list[tuple[str, str, int]]) -> None:
    check_against_model([POOL[k] for k in keys])


@settings(max_examples=500, deadline=None)
@given(votes_strategy, st.randoms(use_true_random=False))
def test_split_between_stored_and_evidence(keys: list[tuple[str, str, int]], rnd: random.Random) -> None:
    """A custodian's tally is its stored votes plus an ask's evidence: any split of
    the same votes between the two, in any order, gives one outcome."""
    votes = [POOL[k] for k in keys]
    cut = rnd.randint(0, len(votes))
    stored, evidence = votes[:cut], votes[cut:]
    rnd.shuffle(evidence)
    a, b = tally_of(stored + evidence), tally_of(evidence + stored)
    expected = model(votes)
    for t in (a, b):
        assert (t.state(NOW), t.approvals, t.denials, frozenset(t.equivocations)) == expected


def test_equivocation_voids_an_approval_that_had_reached_quorum() -> None:
    tally = tally_of([POOL["tokyo", "approve", 0], POOL["new-york", "approve", 0]])
    assert tally.state(NOW) is State.APPROVED
    tally.add(POOL["tokyo", "deny", 0], NOW)
    assert tally.state(NOW) is State.PENDING and tally.approvals == 1


def test_a_forged_contradiction_cannot_void_an_honest_approver() -> None:
    """The evidence must be signed by the approver itself: a vote naming tokyo but
    signed by someone else does not decode, so it can never void tokyo."""
    mallory = Ed25519PrivateKey.from_private_bytes(os.urandom(32))
    tag, ver, body, _signer, sig = p.decode(POOL["tokyo", "deny", 0].signed)
    forged = p.encode([tag, ver, body, mallory.public_key().public_bytes_raw(), sig])
    with pytest.raises(p.InvalidSignature):
        Vote.from_bytes(forged)


# Votes that must never count: from someone who is not an approver, and dated
# after the request's lifetime. Adding one raises and changes nothing.
NOT_ALLOWED = [Vote.make(KEYS["owner"], REQUEST, "approve", NOW),
               Vote.make(KEYS["tokyo"], REQUEST, "approve", REQUEST.not_after + 1)]


class TallyMachine(RuleBasedStateMachine):
    """Random interleavings of allowed votes, refused votes and time passing: after
    every step the tally agrees with the set-based model of the votes it took."""

    @initialize()
    def start(self) -> None:
        self.tally = Tally(REQUEST, ApprovalRule.of(KEYSET))
        self.seen: list[Vote] = []
        self.now = NOW
        self.void_ever: set[str] = set()

    @rule(key=st.sampled_from(sorted(POOL)))
    def vote(self, key: tuple[str, str, int]) -> None:
        v = POOL[key]
        before = model(self.seen)
        if self.now > REQUEST.not_after:
            with pytest.raises(VoteRejected):
                self.tally.add(v, self.now)
            return
        added = self.tally.add(v, self.now)
        earlier = {w.decision for w in self.seen if w.approver == v.approver}
        self.seen.append(v)
        expected = (Added.COUNTED if not earlier else Added.VOIDED if len(earlier) == 2 else
                    Added.DUPLICATE if earlier == {v.decision} else Added.EQUIVOCATION)
        assert added is expected
        if added is Added.DUPLICATE or added is Added.VOIDED:
            assert model(self.seen) == before  # nothing new was learnt

    @rule(i=st.integers(0, len(NOT_ALLOWED) - 1))
    def refused(self, i: int) -> None:
        snapshot = (dict(self.tally.votes), dict(self.tally.equivocations))
        with pytest.raises(VoteRejected):
            self.tally.add(NOT_ALLOWED[i], self.now)
        assert (self.tally.votes, self.tally.equivocations) == snapshot

    @rule(dt=st.sampled_from([1, 60, 700]))
    def time_passes(self, dt: int) -> None:
        self.now += dt

    @invariant()
    def agrees_with_the_model(self) -> None:
        if not hasattr(self, "tally"):
            return
        state, approvals, denials, void = model(self.seen)
        if self.now > REQUEST.not_after:
            state = State.EXPIRED
        assert (self.tally.state(self.now), self.tally.approvals, self.tally.denials,
                frozenset(self.tally.equivocations)) == (state, approvals, denials, void)
        # A void approver stays void, and counts on neither side.
        assert self.void_ever <= void
        self.void_ever |= void
        assert not void & set(self.tally.votes)
        assert approvals + denials + len(void) <= len(APPROVERS)
        # The same votes in another order give the same tally.
        again = tally_of(list(reversed(self.seen))) if self.now <= REQUEST.not_after else None
        if again is not None:
            assert (again.approvals, again.denials, set(again.equivocations)) == (
                approvals, denials, set(void))


TestTallyMachine = TallyMachine.TestCase
TestTallyMachine.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)


# -- the node's services, on a real SQLite store: gossip, sync and evidence paths ---


class Node:
    """One custodian's services (real store, real crypto), holding one shard of KEYSET."""

    def __init__(self, path: pathlib.Path, share: p.Share) -> None:
        self.store = Store(path)
        self.hpke = {"x25519": p.HpkePrivateKey.generate("x25519", os.urandom)}
        keystore = FileKeystore(os.urandom(32), self.hpke)
        self.key = keystore.signer
        self.custodian = Custodian(self.store, keystore)
        self.approvals = Approvals(self.store, self.key)
        members = admitted(self.store, self.key, KEYS.values(), NOW)
        self.releaser = Releaser(self.store, keystore, self.approvals, members, Rules(self.store, self.key),
                                 lambda: 0, rng=os.urandom)
        me = self.custodian.peer_id
        meta = p.ShardMeta(KEYSET.keyset_id, 0, share.index, KEYSET.shares, KEYSET.threshold, me, NOW, None,
                           KEYSET.policy_hash, KEYSET.commitments_digest, "x25519")
        sealed = p.seal_shard(meta, share, self.hpke["x25519"].public_bytes(), owner=KEYS["owner"])
        cover = Delivery.make(KEYS["owner"], keyset_id=KEYSET.keyset_id, epoch=0, index=share.index, recipient=me,
                              sealed=sealed, sent_at=NOW, nonce=os.urandom(16))
        owner = peer_id_of(KEYS["owner"].public_key().public_bytes_raw())
        reply = self.custodian.handle_delivery(owner, p.encode([wire.DELIVER_FRAME_TAG, 1, cover.signed, KEYSET.signed, sealed]),
                                               NOW)
        assert Receipt.from_bytes(reply).status == "stored"

    def ask(self, evidence: Sequence[Vote]) -> bytes:
        frame = p.encode([wire.RELEASE_ASK_TAG, 1, REQUEST.signed, [v.signed for v in evidence]])
        return self.releaser.handle(PEER["req"], frame, NOW + 2, no_shard=True)

    def audit(self, kind: str) -> list[dict]:
        return [dict(e.body) for e in self.store.audit_entries() if e.kind == kind]


@pytest.fixture
def nodes(tmp_path: pathlib.Path) -> Iterator[list[Node]]:
    made = [Node(tmp_path / f"n{i}.db", SHARES[i]) for i in range(2)]
    yield made
    for n in made:
        n.store.close()


def test_evidence_cannot_outvote_a_stored_deny(nodes: list[Node]) -> None:
    """The reported attack, on the custodian's own services: tokyo's deny came by
    gossip and is stored; the ask's evidence puts an approve by tokyo first."""
    n = nodes[0]
    assert n.approvals.accept_request(REQUEST.signed, NOW) is not None
    assert n.approvals.accept_vote(POOL["tokyo", "deny", 0].signed, NOW) == (POOL["tokyo", "deny", 0],
                                                                            Added.COUNTED)
    for evidence in ([POOL["tokyo", "approve", 0], POOL["new-york", "approve", 0]],
                     [POOL["new-york", "approve", 0], POOL["tokyo", "approve", 1]]):
        with pytest.raises(Rejected, match=r"no quorum: 1 of 2 approvals; 1 void for contradictory votes"):
            n.ask(evidence)
    assert n.audit("release") == []
    # The pair is kept as signed evidence, and the audit log names tokyo once.
    [(first, second)] = n.store.equivocations(REQUEST.id)
    assert {Vote.from_bytes(first).decision, Vote.from_bytes(second).decision} == {"approve", "deny"}
    [entry] = n.audit("equivocation")
    assert entry["approver"] == PEER["tokyo"] and entry["request"] == REQUEST.id
    # tokyo stays void for this request: its approve no longer counts even alone with paris.
    with pytest.raises(Rejected, match="no quorum: 1 of 2"):
        n.ask([POOL["paris", "approve", 0]])
    assert n.approvals.listing(NOW)[0]["void"] == [PEER["tokyo"]]


def test_without_the_deny_the_same_evidence_releases(nodes: list[Node]) -> None:
    """The control: the evidence alone is a valid quorum, so the check above can fail."""
    n = nodes[0]
    n.approvals.accept_request(REQUEST.signed, NOW)
    [release] = p.decode(n.ask([POOL["tokyo", "approve", 0], POOL["new-york", "approve", 0]]))
    p.verify_partial(KEYSET, p.Partial.from_bytes(Release.from_bytes(release).open(EPHEMERAL)), REQUEST.id.encode())
    assert len(n.audit("release")) == 1


def test_gossip_in_either_order_then_sync_voids_the_approver_everywhere(nodes: list[Node]) -> None:
    a, b = nodes
    for n in nodes:
        n.approvals.accept_request(REQUEST.signed, NOW)
    approve, deny = POOL["tokyo", "approve", 0], POOL["tokyo", "deny", 0]
    assert a.approvals.accept_vote(approve.signed, NOW) == (approve, Added.COUNTED)
    assert a.approvals.accept_vote(deny.signed, NOW) == (deny, Added.EQUIVOCATION)
    assert a.approvals.accept_vote(deny.signed, NOW) is None  # evidence kept once
    assert a.approvals.accept_vote(POOL["tokyo", "approve", 1].signed, NOW) is None
    assert len(a.audit("equivocation")) == 1
    # b learns only through a's sync reply, which carries both halves of the pair.
    for record, votes in p.decode(a.approvals.sync_reply(NOW)):
        assert record == REQUEST.signed
        for v in reversed(votes):
            b.approvals.accept_vote(v, NOW)
    assert b.approvals.tally(REQUEST).equivocations.keys() == {PEER["tokyo"]}
    assert b.audit("equivocation")[0]["approver"] == PEER["tokyo"]
    for n in nodes:
        with pytest.raises(Rejected, match="no quorum: 1 of 2"):
            n.ask([approve, POOL["new-york", "approve", 0]])


def test_sync_reply_stays_within_its_budget_and_sends_each_vote_once(nodes: list[Node]) -> None:
    a = nodes[0]
    requests = []
    for i in range(6):
        r = Request.make(KEYS["req"], keyset_id=KEYSET.keyset_id, mode="unwrap", reason=f"drill {i}",
                         ephemeral=EPHEMERAL.public_bytes(), nonce=bytes([i]) * 16, created=NOW + i,
                         not_after=NOW + 600)
        a.approvals.accept_request(r.signed, NOW + i)
        for name in ("tokyo", "new-york"):
            a.approvals.accept_vote(Vote.make(KEYS[name], r, "approve", NOW + i).signed, NOW + i)
        requests.append(r)
    a.approvals.accept_vote(Vote.make(KEYS["tokyo"], requests[-1], "deny", NOW).signed, NOW + 6)
    full = p.decode(a.approvals.sync_reply(NOW + 6))
    assert [rec for rec, _ in full] == [r.signed for r in reversed(requests)]  # newest first
    newest_votes = [Vote.from_bytes(v) for v in full[0][1]]
    assert sorted((v.approver, v.decision) for v in newest_votes) == sorted(
        [(PEER["new-york"], "approve"), (PEER["tokyo"], "approve"), (PEER["tokyo"], "deny")])
    one = len(p.encode([full[0]]))
    small = p.decode(a.approvals.sync_reply(NOW + 6, budget=one + 64))
    assert small == full[:1]  # what does not fit waits for the next pull, whole
