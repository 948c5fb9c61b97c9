"""Epoch changes (protocol/_epoch.py and _epoch_records.py), driven without a network.

The participants are simulated with the same protocol functions a node calls:
a dealer makes its Deal, a new holder computes and echoes its share, an
authority checks the evidence and co-signs, and everyone applies the commit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from shardnet import protocol as p
from shardnet.protocol import epoch as ep
from shardnet.protocol import epoch_records as er

from .drbg import Drbg

NOW = 1_800_000_000
MASTER = b"the master key of this test \x00\xff"


@dataclass
class Peer:
    key: Ed25519PrivateKey
    hpke: p.HpkePrivateKey
    shares: dict[int, p.Share] = field(default_factory=dict)  # epoch -> share
    pending: p.Share | None = None

    @property
    def id(self) -> str:
        return p.peer_id_of(self.key.public_key().public_bytes_raw())


def make_peers(k: int, seed: int = 0) -> list[Peer]:
    rng = Drbg(b"epoch-peers" + bytes([seed]))
    return [Peer(Ed25519PrivateKey.from_private_bytes(rng(32)), p.HpkePrivateKey.generate("x25519", rng))
            for _ in range(k)]


class World:
    """A keyset t-of-n over the first n peers, and a pool of other peers."""

    def __init__(self, t: int = 3, n: int = 5, pool: int = 9, *, authorities: int = 0, quorum: int = 1,
                 seed: int = 0) -> None:
        self.rng = Drbg(b"epoch-world" + bytes([seed]))
        self.peers = make_peers(pool, seed)
        self.by_id = {q.id: q for q in self.peers}
        self.owner = self.peers[0]
        attrs: dict = {"holders": {str(i + 1): [self.peers[i].id] for i in range(n)}}
        if authorities:
            attrs["authorities"] = sorted(q.id for q in self.peers[:authorities])
            attrs["authority_quorum"] = quorum
        self.keyset, shares = p.split_key(MASTER, t, n, owner=self.owner.key, now=NOW, attrs=attrs, rng=self.rng)
        for i, s in enumerate(shares):
            self.peers[i].shares[0] = s
        self.current: er.EpochRecord | None = None
        self.offline: set[str] = set()
        self.lying_dealer: str | None = None

    @property
    def view(self) -> p.Keyset:
        return er.at_epoch(self.keyset, self.current)

    def plan(self, coordinator: Peer, action: str = "refresh", *, holders: list[list[str]] | None = None,
             t: int | None = None, deadline: int = NOW + 60) -> er.Plan:
        view = self.view
        if holders is None:
            hs = {i: hs for i, hs in er.holders_of(view).items()}
        else:
            hs = {i + 1: tuple(h) for i, h in enumerate(holders)}
        return er.Plan(
            keyset_id=view.keyset_id, from_epoch=view.epoch, prev=er.digest_of(self.keyset, self.current),
            action=action, threshold=t or view.threshold, shares=len(hs), holders=hs, not_after=None,
            round_id=self.rng(16), created=NOW, deadline=deadline,
        ).sign(coordinator.key)

    # -- what each participant does -------------------------------------------------

    def deal(self, peer: str, index: int, plan: er.Plan) -> bytes:
        q = self.by_id[peer]
        plan.check_against(self.keyset, self.current)
        share = q.shares[self.view.epoch]
        assert share.index == index
        keys = {h: self.by_id[h].hpke.public_bytes() for hs in plan.holders.values() for h in hs}
        honest = er.Deal.make(q.key, plan, share, keys, "x25519", self.rng)
        if peer != self.lying_dealer:
            return honest.signed
        # Honest commitments, and sub-shares of another polynomial sealed under them.
        bad = er.Deal.make(q.key, plan, dataclasses.replace(share, value=share.value + 1), keys, "x25519", self.rng)
        body = p.encode([er.DEAL_TAG, 1, honest.round_id, honest.keyset_id, honest.to_epoch, honest.index,
                         list(honest.commitments), {str(i): dict(sorted(s.items())) for i, s in bad.sealed.items()}])
        return p.sign_body(q.key, body)

    def echo(self, peer: str, plan: er.Plan, deals: tuple[bytes, ...]) -> bytes:
        q = self.by_id[peer]
        plan.check_against(self.keyset, self.current)
        index = next(i for i, hs in plan.holders.items() if peer in hs)
        parsed = [er.Deal.from_bytes(d) for d in deals]
        old = q.shares.get(self.view.epoch) if plan.action == "refresh" else None
        share, record = er.new_share(plan, self.view, parsed, index=index, peer=peer, opener=q.hpke, old=old)
        q.pending = share
        return er.Echo.make(q.key, record, index, er.qualified_digest(parsed)).signed

    def cosign(self, peer: str, plan: er.Plan, deals: tuple[bytes, ...], echoes: tuple[bytes, ...]) -> bytes:
        q = self.by_id[peer]
        record = er.check_evidence(plan, self.keyset, self.current, deals, echoes)
        return p.CoSigned(record.body(), ()).signed_by(q.key).to_bytes()

    def apply(self, peer: str, data: bytes) -> tuple[bytes, ...]:
        """A participant applies the commit: keeps its new share, erases its old one."""
        q = self.by_id[peer]
        rec = er.successor(self.keyset, self.current, data)
        receipts = []
        old_epoch = self.view.epoch
        if old_epoch in q.shares:
            s = q.shares.pop(old_epoch)
            receipts.append(er.Erased.make(q.key, keyset_id=rec.keyset_id, epoch=old_epoch, index=s.index,
                                           record=rec.digest, time=NOW).signed)
        if q.pending is not None and q.pending.epoch == rec.epoch:
            q.shares[rec.epoch] = q.pending
            q.pending = None
        return tuple(receipts)

    # -- the driver ------------------------------------------------------------------

    def run(self, rnd: ep.EpochRound, *, now: float = NOW) -> list[ep.Effect]:
        """Carry out every effect until the round is over; return them all."""
        queue = rnd.handle(ep.Start(), now)
        seen: list[ep.Effect] = []
        committed: bytes | None = None
        applied: set[str] = set()
        while queue:
            e = queue.pop(0)
            seen.append(e)
            if isinstance(e, ep.WakeAt | ep.Progress | ep.Done | ep.Aborted):
                continue
            if isinstance(e, ep.Commit):  # the coordinator applies its own commit first
                committed = e.record
                applied.add(rnd.me)
                rnd.add_receipts(rnd.me, self.apply(rnd.me, e.record))
                continue
            peer = e.peer  # type: ignore[union-attr]
            ev: ep.Event
            if peer in self.offline:
                ev = ep.AskFailed(peer, "unreachable", index=getattr(e, "index", None))
            elif isinstance(e, ep.AskDeal):
                ev = ep.DealIn(e.index, peer, self.deal(peer, e.index, rnd.plan))
            elif isinstance(e, ep.AskEcho):
                try:
                    ev = ep.EchoIn(peer, self.echo(peer, rnd.plan, e.deals))
                except er.BadDeal as exc:
                    ev = ep.AskFailed(peer, str(exc), bad_deal=exc.dealer)
            elif isinstance(e, ep.AskSign):
                ev = ep.SignatureIn(peer, self.cosign(peer, rnd.plan, e.deals, e.echoes))
            elif isinstance(e, ep.SendCommit):
                applied.add(peer)
                ev = ep.Acked(peer, self.apply(peer, e.record))
            else:  # pragma: no cover
                raise AssertionError(e)
            if rnd.state in (ep.EpochState.COMMITTED, ep.EpochState.ABORTED):
                continue
            queue.extend(rnd.handle(ev, now))
        if committed is not None:
            self.current = er.successor(self.keyset, self.current, committed)
        return seen


def current_shares(w: World) -> list[p.Share]:
    return [q.shares[w.view.epoch] for q in w.peers if w.view.epoch in q.shares]


def done(effects: list[ep.Effect]) -> ep.Done:
    return next(e for e in effects if isinstance(e, ep.Done))


def test_refresh_keeps_the_key_and_old_shares_no_longer_combine() -> None:
    w = World()
    old = current_shares(w)
    rnd = ep.EpochRound(w.plan(w.owner), w.keyset, None, w.owner.key)
    effects = w.run(rnd)
    assert rnd.state is ep.EpochState.COMMITTED
    d = done(effects)
    assert len(d.receipts) == 5 and not d.unacked and not d.bad
    view = w.view
    assert view.epoch == 1 and view.public_key == w.keyset.public_key
    new = current_shares(w)
    assert len(new) == 5 and all(s.epoch == 1 for s in new)
    assert p.combine_key(view, new[:3]).master == MASTER
    assert p.combine_key(view, new[2:]).master == MASTER
    with pytest.raises(p.MixedShares):
        p.combine_key(view, [old[0], *new[1:3]])
    # An old share relabelled as the current epoch fails the commitment check, and is named.
    relabelled = dataclasses.replace(old[0], epoch=1)
    with pytest.raises(p.InvalidShare):
        p.verify_share(view, relabelled)
    rec = p.combine_key(view, [relabelled, new[1], new[2], new[3]])
    assert rec.master == MASTER and [b.index for b in rec.bad] == [1]


def test_reshare_to_new_holders_and_threshold() -> None:
    w = World(t=3, n=5, pool=9)
    old = current_shares(w)
    new_holders = [[q.id] for q in w.peers[4:8]]  # index 5's holder stays; 4 new indices, 2-of-4
    rnd = ep.EpochRound(w.plan(w.owner, "reshare", holders=new_holders, t=2), w.keyset, None, w.owner.key)
    effects = w.run(rnd)
    assert rnd.state is ep.EpochState.COMMITTED, [e for e in effects if isinstance(e, ep.Aborted)]
    view = w.view
    assert (view.threshold, view.shares, view.public_key) == (2, 4, w.keyset.public_key)
    new = current_shares(w)
    assert sorted(s.index for s in new) == [1, 2, 3, 4]
    assert p.combine_key(view, new[:2]).master == MASTER
    assert len(done(effects).receipts) == 5  # every old holder erased, peer 4 included
    with pytest.raises(p.MixedShares):
        p.combine_key(view, [old[1], new[0]])
    # The approvers stay those of the keyset record: its first holders.
    assert view.approvers == w.keyset.approvers


def test_a_holder_offline_in_a_reshare_with_enough_left() -> None:
    w = World(t=2, n=3, pool=7)
    w.offline = {w.peers[1].id, w.peers[4].id}  # an old holder, and one of the four new
    new_holders = [[q.id] for q in w.peers[3:7]]
    rnd = ep.EpochRound(w.plan(w.owner, "reshare", holders=new_holders), w.keyset, None, w.owner.key)
    effects = w.run(rnd)
    assert rnd.state is ep.EpochState.COMMITTED
    d = done(effects)
    assert sorted(d.unacked) == sorted(w.offline)
    assert p.combine_key(w.view, current_shares(w)).master == MASTER


def test_too_few_deals_aborts_and_leaves_the_old_epoch() -> None:
    w = World(t=3, n=4)
    w.offline = {w.peers[1].id, w.peers[2].id}
    rnd = ep.EpochRound(w.plan(w.owner), w.keyset, None, w.owner.key)
    effects = w.run(rnd)
    assert rnd.state is ep.EpochState.ABORTED and w.current is None
    assert "2 valid deals" in next(e for e in effects if isinstance(e, ep.Aborted)).message
    assert p.combine_key(w.view, current_shares(w)[:3]).master == MASTER
    with pytest.raises(ep.RoundOver):
        rnd.handle(ep.Tick(), NOW)


def test_a_dealer_with_bad_sub_shares_is_named_and_left_out() -> None:
    w = World(t=2, n=4, pool=8)
    w.lying_dealer = w.peers[0].id
    new_holders = [[q.id] for q in w.peers[4:8]]
    rnd = ep.EpochRound(w.plan(w.owner, "reshare", holders=new_holders), w.keyset, None, w.owner.key)
    effects = w.run(rnd)
    assert rnd.state is ep.EpochState.COMMITTED
    d = done(effects)
    assert any(who == w.peers[0].id and "old index 1" in why for who, why in d.bad)
    assert rnd._accused == {1} and sorted(deal.index for deal in rnd.qualified) == [2, 3]  # the next two
    assert p.combine_key(w.view, current_shares(w)[:2]).master == MASTER


def test_two_of_three_authorities_without_the_owner() -> None:
    w = World(t=2, n=4, pool=7, authorities=0)
    auth = [w.peers[4], w.peers[5], w.peers[6]]
    w.keyset, shares = p.split_key(
        MASTER, 2, 4, owner=w.owner.key, now=NOW, rng=w.rng,
        attrs={"holders": {str(i + 1): [w.peers[i].id] for i in range(4)},
               "authorities": sorted(a.id for a in auth), "authority_quorum": 2})
    for i, s in enumerate(shares):
        w.peers[i].shares = {0: s}
    w.offline = {w.owner.id, auth[2].id}  # the owner (holder of index 1) and one authority
    rnd = ep.EpochRound(w.plan(auth[0]), w.keyset, None, auth[0].key)
    w.run(rnd)
    assert rnd.state is ep.EpochState.COMMITTED
    rec = w.current
    assert rec is not None and len(p.CoSigned.restore(rec.signed, max_size=er.MAX_EPOCH_RECORD).signatures) == 2
    assert p.combine_key(w.view, current_shares(w)).master == MASTER  # indices 2, 3 and 4 refreshed
    # The owner's old share of index 1 was not refreshed: it does not combine.
    with pytest.raises(p.MixedShares):
        p.combine_key(w.view, [w.owner.shares[0], *current_shares(w)[:1]])


def test_one_echo_short_of_t_new_plus_one_aborts() -> None:
    """Three new holders, 2-of-3: with one away only t_new echo, and that is not enough."""
    w = World(t=2, n=3, pool=6)
    w.offline = {w.peers[4].id}
    rnd = ep.EpochRound(w.plan(w.owner, "reshare", holders=[[q.id] for q in w.peers[3:6]]), w.keyset, None,
                        w.owner.key)
    effects = w.run(rnd)
    assert rnd.state is ep.EpochState.ABORTED and w.current is None
    assert "it needs 3" in next(e for e in effects if isinstance(e, ep.Aborted)).message


def test_a_refresh_plan_must_keep_the_holders() -> None:
    w = World(t=2, n=4)
    moved = [[w.peers[i].id] for i in (0, 1, 2, 5)]
    with pytest.raises(p.MalformedEncoding, match="keeps the threshold, the indices"):
        ep.EpochRound(w.plan(w.owner, "refresh", holders=moved), w.keyset, None, w.owner.key)
    with pytest.raises(p.MalformedEncoding, match="keeps the threshold, the indices"):
        ep.EpochRound(w.plan(w.owner, "refresh", holders=moved[:3]), w.keyset, None, w.owner.key)


def test_an_authority_locked_on_another_record_does_not_sign() -> None:
    w = World()

    def locked(record: er.EpochRecord) -> None:
        raise p.ShardnetError("it signed another record of epoch 1")

    rnd = ep.EpochRound(w.plan(w.owner), w.keyset, None, w.owner.key, lock=locked)
    effects = w.run(rnd)
    assert rnd.state is ep.EpochState.ABORTED and w.current is None
    assert "will not sign" in next(e for e in effects if isinstance(e, ep.Aborted)).message


def test_a_new_holder_accuses_at_most_once_per_round() -> None:
    """A new holder that refuses every deal as bad gets one dealt dropped, not all."""
    w = World(t=2, n=4, pool=8)
    liar = w.peers[5].id
    rnd = ep.EpochRound(w.plan(w.owner, "reshare", holders=[[q.id] for q in w.peers[4:8]]), w.keyset, None,
                        w.owner.key)
    honest_echo = w.echo

    def echo(peer: str, plan: er.Plan, deals: tuple[bytes, ...]) -> bytes:
        if peer == liar:
            raise er.BadDeal(er.Deal.from_bytes(deals[0]).index, "made up")
        return honest_echo(peer, plan, deals)

    w.echo = echo  # type: ignore[method-assign]
    w.run(rnd)
    assert rnd.state is ep.EpochState.COMMITTED
    assert len(rnd._accused) == 1
    assert p.combine_key(w.view, current_shares(w)[:2]).master == MASTER


def test_the_authority_quorum_must_be_a_majority() -> None:
    peers = make_peers(4)
    ids = sorted(q.id for q in peers)
    bad, _ = p.split_key(MASTER, 2, 3, owner=peers[0].key, now=NOW,
                         attrs={"authorities": ids, "authority_quorum": 2})
    with pytest.raises(p.MalformedEncoding, match="majority"):
        p.Keyset.from_bytes(bad.signed)


def test_a_plan_by_someone_not_an_authority_is_refused() -> None:
    w = World()
    with pytest.raises(p.InvalidSignature, match="no authority"):
        ep.EpochRound(w.plan(w.peers[3]), w.keyset, None, w.peers[3].key)


def test_deadline_aborts_a_round_in_progress() -> None:
    w = World()
    rnd = ep.EpochRound(w.plan(w.owner, deadline=NOW + 10), w.keyset, None, w.owner.key)
    out = rnd.handle(ep.Start(), NOW)
    assert sum(isinstance(e, ep.AskDeal) for e in out) == 5
    out = rnd.handle(ep.Tick(), NOW + 10)
    assert rnd.state is ep.EpochState.ABORTED and isinstance(out[-1], ep.Aborted)


# -- what every node refuses to apply -----------------------------------------------


def committed_world() -> tuple[World, bytes]:
    w = World(authorities=3, quorum=2)
    rnd = ep.EpochRound(w.plan(w.peers[0]), w.keyset, None, w.peers[0].key)
    effects = w.run(rnd)
    return w, done(effects).record


def test_rollback_replay_forgery_and_short_quorum_are_refused() -> None:
    w, data = committed_world()
    rec = w.current
    assert rec is not None and rec.epoch == 1
    with pytest.raises(p.MalformedEncoding, match="does not follow"):
        er.successor(w.keyset, rec, data)  # replay of the record in force
    # Short of the quorum: one signature of the two.
    cs = p.CoSigned.restore(data, max_size=er.MAX_EPOCH_RECORD)
    short = p.CoSigned(cs.body, cs.signatures[:1]).to_bytes()
    with pytest.raises(p.InvalidSignature, match="of the 2"):
        er.successor(w.keyset, None, short)
    # A forgery: signed by keys that are no authority of the keyset.
    outsiders = [q.key for q in w.peers[5:7]]
    forged = p.CoSigned(cs.body, ()).signed_by(outsiders[0]).signed_by(outsiders[1]).to_bytes()
    with pytest.raises(p.InvalidSignature, match="not an authority"):
        er.successor(w.keyset, None, forged)
    # A record that does not chain: the right signers, a wrong previous digest.
    body = dataclasses.replace(rec, prev=bytes(32)).body()
    bad_chain = p.CoSigned(body, ()).signed_by(w.peers[0].key).signed_by(w.peers[1].key).to_bytes()
    with pytest.raises(p.InvalidSignature, match="does not chain"):
        er.successor(w.keyset, None, bad_chain)
    # Rollback: epoch 1 again after epoch 2.
    rnd = ep.EpochRound(w.plan(w.peers[1]), w.keyset, w.current, w.peers[1].key)
    w.run(rnd)
    assert w.current is not None and w.current.epoch == 2
    with pytest.raises(p.MalformedEncoding, match="does not follow"):
        er.successor(w.keyset, w.current, data)
    # Oversized.
    with pytest.raises(p.MalformedEncoding):
        er.successor(w.keyset, w.current, data + bytes(er.MAX_EPOCH_RECORD))
    assert p.combine_key(w.view, current_shares(w)[:3]).master == MASTER


def test_keyset_attrs_check_the_authorities() -> None:
    peers = make_peers(3)
    bad, _ = p.split_key(MASTER, 2, 3, owner=peers[0].key, now=NOW,
                         attrs={"authorities": [peers[1].id], "authority_quorum": 2})
    with pytest.raises(p.MalformedEncoding, match="authority quorum"):
        p.Keyset.from_bytes(bad.signed)
    ks, _ = p.split_key(MASTER, 2, 3, owner=peers[0].key, now=NOW)
    assert er.AuthorityRule.of(p.Keyset.from_bytes(ks.signed)) == er.AuthorityRule((peers[0].id,), 1)


# -- random event orders --------------------------------------------------------------


def reachable(state: ep.EpochState) -> set[ep.EpochState]:
    seen, todo = {state}, [state]
    while todo:
        for nxt in ep.EPOCH_MOVES[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


class EpochMachine(RuleBasedStateMachine):
    """Random answers, failures and ticks, in any order: the moves stay legal, a
    commit always has t_new echoed indices and K signatures, and nothing follows the end."""

    @initialize(action=st.sampled_from(["refresh", "reshare"]), seed=st.integers(0, 3))
    def setup(self, action: str, seed: int) -> None:
        self.w = World(t=2, n=3, pool=6, seed=seed)
        holders = None if action == "refresh" else [[q.id] for q in self.w.peers[3:6]]
        self.rnd = ep.EpochRound(self.w.plan(self.w.owner, action, holders=holders), self.w.keyset, None,
                                 self.w.owner.key)
        self.now = float(NOW)
        self.pending: list[ep.Effect] = []
        self.states = [self.rnd.state]
        self._feed(ep.Start())

    def _feed(self, ev: ep.Event) -> None:
        if self.rnd.state in (ep.EpochState.COMMITTED, ep.EpochState.ABORTED):
            with pytest.raises(ep.RoundOver):
                self.rnd.handle(ev, self.now)
            return
        before = self.rnd.state
        out = self.rnd.handle(ev, self.now)
        assert self.rnd.state in reachable(before)  # the machine's own _move checks each step
        self.states.append(self.rnd.state)
        self.pending.extend(e for e in out if isinstance(e, ep.AskDeal | ep.AskEcho | ep.AskSign | ep.SendCommit))

    @rule(pick=st.integers(0, 50), fail=st.booleans())
    def answer(self, pick: int, fail: bool) -> None:
        if not self.pending:
            return
        e = self.pending.pop(pick % len(self.pending))
        peer = e.peer  # type: ignore[union-attr]
        if fail:
            self._feed(ep.AskFailed(peer, "lost", index=getattr(e, "index", None)))
        elif isinstance(e, ep.AskDeal):
            self._feed(ep.DealIn(e.index, peer, self.w.deal(peer, e.index, self.rnd.plan)))
        elif isinstance(e, ep.AskEcho):
            self._feed(ep.EchoIn(peer, self.w.echo(peer, self.rnd.plan, e.deals)))
        elif isinstance(e, ep.SendCommit):
            self._feed(ep.Acked(peer, ()))

    @rule(dt=st.floats(0, 40))
    def tick(self, dt: float) -> None:
        self.now += dt
        self._feed(ep.Tick())

    @invariant()
    def commits_are_backed(self) -> None:
        if self.rnd.state in (ep.EpochState.COMMITTING, ep.EpochState.COMMITTED):
            assert self.rnd.cosigned is not None and self.rnd.record is not None
            assert len(self.rnd._echoed()) >= er.echoes_needed(self.rnd.plan) > self.rnd.plan.threshold
            er.successor(self.w.keyset, None, self.rnd.cosigned.to_bytes())


TestEpochMachine = EpochMachine.TestCase
TestEpochMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
