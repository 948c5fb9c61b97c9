"""The requester's release round (protocol/_release_round.py), driven without a network."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shardnet import protocol as p
from shardnet.protocol._reconstruct import HolderState, IllegalHolderMove
from shardnet.protocol._release_round import (
    RETRY,
    Ask,
    Failed,
    Progress,
    Publish,
    Refused,
    Released,
    ReleaseRound,
    RoundOver,
    RoundState,
    Stale,
    Start,
    Succeeded,
    Tick,
    Unreachable,
    VotesSeen,
    WakeAt,
)
from shardnet.protocol._requests import NoShard

from .drbg import Drbg
from .test_quorum import (
    KEYS,
    NOW,
    PEER,
    POLICY,
    make_keyset,
    make_request,
    releases,
    tally_of,
    vote,
)

T0 = 1000.0  # the node's monotonic time base


def setup(mode: str = "unwrap", timeout: float = 30.0):
    keyset, shares = make_keyset(approvers=["a", "b", "c"], quorum=2)
    req, eph = make_request(keyset, mode)
    rnd = ReleaseRound(keyset, req, eph, deadline=T0 + timeout, timeout=timeout)
    return keyset, shares, req, rnd


def kinds(effects: list) -> list[str]:
    return [type(e).__name__ for e in effects]


def test_happy_path_publishes_waits_asks_and_opens_the_key() -> None:
    keyset, shares, req, rnd = setup()
    out = rnd.handle(Start(), T0)
    assert kinds(out) == ["Publish", "WakeAt"] and out[0] == Publish(req.signed)
    assert rnd.handle(Tick(), T0 + 1) == [WakeAt(T0 + 2)]  # nothing to say again yet
    assert kinds(rnd.handle(Tick(), T0 + 3.5)) == ["Publish", "WakeAt"]  # gossip is lossy
    out = rnd.handle(VotesSeen(tally_of(keyset, req, [vote("a", req)])), T0 + 4)
    assert isinstance(out[0], Progress) and out[0].body["approvals"] == 1 and rnd.state is RoundState.WAITING
    out = rnd.handle(VotesSeen(tally_of(keyset, req, [vote("a", req), vote("b", req)])), T0 + 5)
    asks = [e for e in out if isinstance(e, Ask)]
    assert rnd.state is RoundState.ASKING and sorted(a.peer for a in asks) == sorted(PEER[n] for n in "abcde")
    assert all(len(a.votes) == 2 for a in asks)
    good = releases(keyset, shares, req)
    for n in "abcd":
        out = rnd.handle(Released(PEER[n], (good[n],)), T0 + 6)
    assert rnd.state is RoundState.ASKING  # t are in, but e's answer is still owed: it might be a liar
    out = rnd.handle(Refused(PEER["e"], "busy"), T0 + 6)
    done = [e for e in out if isinstance(e, Succeeded)]
    assert rnd.state is RoundState.SUCCEEDED and done[0].master == b"the master key" and done[0].bad == ()
    assert done[0].timings["quorum"] == 5000.0 and done[0].timings["total"] == 6000.0
    with pytest.raises(RoundOver):
        rnd.handle(Tick(), T0 + 7)


def test_denials_fail_the_round_at_once() -> None:
    keyset, _, req, rnd = setup()
    rnd.handle(Start(), T0)
    out = rnd.handle(VotesSeen(tally_of(keyset, req, [vote("a", req, "deny"), vote("b", req, "deny")])), T0 + 1)
    assert rnd.state is RoundState.FAILED
    assert isinstance(out[-1], Failed) and out[-1].message.startswith("request denied: 2 approvers voted deny")


def test_an_equivocator_is_named_in_the_failure() -> None:
    keyset, _, req, rnd = setup(timeout=5)
    rnd.handle(Start(), T0)
    rnd.handle(VotesSeen(tally_of(keyset, req, [vote("a", req), vote("a", req, "deny")])), T0 + 1)
    out = rnd.handle(Tick(), T0 + 5)
    assert isinstance(out[-1], Failed)
    assert out[-1].message == f"no quorum within 5 s: 0 of 2 approvals, 1 void for contradictory votes ({PEER['a']})"


def test_a_liar_is_named_never_used_and_the_others_carry_the_round() -> None:
    keyset, shares, req, rnd = setup()
    rnd.handle(Start(), T0)
    rnd.handle(VotesSeen(tally_of(keyset, req, [vote("a", req), vote("b", req)])), T0 + 1)
    wrong = dataclasses.replace(shares[0], value=shares[0].value + 1)
    lie = releases(keyset, [wrong], req, names="a")["a"]
    good = releases(keyset, shares, req)
    rnd.handle(Released(PEER["a"], (lie,)), T0 + 2)
    assert rnd.session.holders[PEER["a"]].state is HolderState.INVALID
    with pytest.raises(IllegalHolderMove):  # invalid is final
        rnd.session.holders[PEER["a"]].move(HolderState.OK)
    for n in "bcde":
        out = rnd.handle(Released(PEER[n], (good[n],)), T0 + 3)
    done = out[-1]
    assert isinstance(done, Succeeded) and [b[0] for b in done.bad] == [PEER["a"]] and 1 not in done.used_indices


def test_refused_and_unreachable_are_asked_again_after_a_pause() -> None:
    keyset, shares, req, rnd = setup()
    rnd.handle(Start(), T0)
    rnd.handle(VotesSeen(tally_of(keyset, req, [vote("a", req), vote("b", req)])), T0 + 1)
    for n in "abc":
        rnd.handle(Refused(PEER[n], "no quorum yet"), T0 + 2)
    for n in "de":
        out = rnd.handle(Unreachable(PEER[n], "connection refused"), T0 + 2)
    assert not [e for e in out if isinstance(e, Ask)] and WakeAt(T0 + 2 + RETRY) in out
    out = rnd.handle(Tick(), T0 + 2 + RETRY)
    assert sorted(e.peer for e in out if isinstance(e, Ask)) == sorted(PEER[n] for n in "abcde")


def test_the_deadline_fails_with_what_was_missing() -> None:
    keyset, shares, req, rnd = setup(timeout=10)
    rnd.handle(Start(), T0)
    rnd.handle(VotesSeen(tally_of(keyset, req, [vote("a", req), vote("b", req)])), T0 + 1)
    good = releases(keyset, shares, req)
    rnd.handle(Released(PEER["a"], (good["a"],)), T0 + 2)
    out = rnd.handle(Tick(), T0 + 10)
    assert isinstance(out[-1], Failed) and out[-1].message.startswith("1 of 3 required partial decryptions")
    assert "no answer from" in out[-1].message


def test_answers_from_peers_not_asked_are_refused() -> None:
    keyset, shares, req, rnd = setup()
    rnd.handle(Start(), T0)
    with pytest.raises(ValueError, match="was not asked"):
        rnd.handle(Released(PEER["a"], (b"junk",)), T0 + 1)


class RoundMachine(RuleBasedStateMachine):
    """Random answers (good, lying, refused, unreachable) and ticks, in random orders."""

    @initialize(mode=st.sampled_from(["unwrap", "shares"]))
    def start(self, mode: str) -> None:
        self.keyset, shares, _, _ = setup(mode, timeout=20)
        self.req, eph = make_request(self.keyset, mode)
        # a and b's receipts are kept: their no-shard answers are lies; c, d and e's refusals.
        self.receipted = {PEER["a"], PEER["b"]}
        self.rnd = ReleaseRound(self.keyset, self.req, eph, deadline=T0 + 20, timeout=20,
                                receipts=(receipt(self.keyset, "a", 1), receipt(self.keyset, "b", 2)))
        self.good = releases(self.keyset, shares, self.req)
        wrong = [dataclasses.replace(s, value=s.value + 1) for s in shares]
        self.lies = releases(self.keyset, wrong, self.req)
        self.newer = releases(*at_epoch(self.keyset, shares, 1), self.req)  # a commit this record missed
        self.now = T0
        self.effects = self.rnd.handle(Start(), self.now)
        self.effects += self.rnd.handle(VotesSeen(tally_of(self.keyset, self.req, [vote("a", self.req),
                                                                                     vote("b", self.req)])), self.now)
        self.ever_invalid: set[str] = set()
        self.finished = 0

    def feed(self, event: object) -> None:
        out = self.rnd.handle(event, self.now)  # type: ignore[arg-type]
        self.finished += sum(isinstance(e, Succeeded | Failed | Stale) for e in out)
        for e in out:
            if isinstance(e, Succeeded):
                assert e.master == b"the master key"
            if isinstance(e, Stale):
                assert e.epoch == 1 and self.rnd.session.newer == 1
            if isinstance(e, Succeeded | Failed | Stale):
                assert {b[0] for b in e.bad} <= self.ever_invalid  # only a holder that lied is named
        self.effects += out

    def live(self) -> bool:
        return self.rnd.state is RoundState.ASKING

    @precondition(lambda self: self.live() and self.rnd.in_flight)
    @rule(data=st.data(), what=st.sampled_from(["good", "lie", "refused", "unreachable", "none", "newer"]))
    def answer(self, data: st.DataObject, what: str) -> None:
        peer = data.draw(st.sampled_from(sorted(self.rnd.in_flight)))
        name = next(n for n, pid in PEER.items() if pid == peer)
        none = NoShard.make(KEYS[name], self.req, epoch=data.draw(st.sampled_from([None, 0, 1]))).signed
        event = {"good": Released(peer, (self.good[name],)), "lie": Released(peer, (self.lies[name],)),
                 "refused": Refused(peer, "not yet"), "unreachable": Unreachable(peer, "down"),
                 "none": Released(peer, (none,)), "newer": Released(peer, (self.newer[name],))}[what]
        if what == "lie" or what == "none" and peer in self.receipted and NoShard.from_bytes(none).epoch != 1:
            self.ever_invalid.add(peer)
        self.feed(event)

    @precondition(lambda self: self.live())
    @rule(dt=st.floats(0.1, 3.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        self.feed(Tick())

    @precondition(lambda self: not self.live())
    @rule()
    def after_the_end(self) -> None:
        with pytest.raises(RoundOver):
            self.rnd.handle(Tick(), self.now)

    @invariant()
    def holders_follow_their_table(self) -> None:
        if not hasattr(self, "rnd"):
            return
        for peer in self.ever_invalid:
            assert self.rnd.session.holders[peer].state is HolderState.INVALID  # invalid stays invalid
        for peer in self.rnd.in_flight:
            assert self.rnd.session.holders[peer].state is HolderState.ASKED
        assert self.finished <= 1
        assert (self.finished == 1) == (self.rnd.state in (RoundState.SUCCEEDED, RoundState.FAILED))
        assert len({b[0] for b in self.rnd.session.bad}) == len(self.rnd.session.bad)  # each liar once


TestRoundMachine = RoundMachine.TestCase
TestRoundMachine.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)


def test_public_surface_exports_the_machine() -> None:
    assert p.ReleaseRound is ReleaseRound


def test_t_answers_and_the_deadline_succeed_without_the_silent_rest() -> None:
    keyset, shares, req, rnd = setup(timeout=10)
    rnd.handle(Start(), T0)
    rnd.handle(VotesSeen(tally_of(keyset, req, [vote("a", req), vote("b", req)])), T0 + 1)
    good = releases(keyset, shares, req)
    for n in "abc":
        rnd.handle(Released(PEER[n], (good[n],)), T0 + 2)
    out = rnd.handle(Tick(), T0 + 10)
    assert isinstance(out[-1], Succeeded) and out[-1].master == b"the master key"


# -- a lying receipt: a holder that signed for its shard and then says it holds none --------


def receipt(keyset: p.Keyset, name: str, index: int, status: str = "stored", *,
            keyset_id: bytes | None = None) -> p.Receipt:
    return p.Receipt.make(KEYS[name], keyset_id=keyset_id or keyset.keyset_id, epoch=keyset.epoch,
                          index=index, shard_digest=b"s" * 32, delivery_digest=b"d" * 32, status=status,
                          reason="", time=1)


def asking(receipts: Callable[[p.Keyset], tuple[p.Receipt, ...]], keyset_and_shares: tuple | None = None) -> tuple:
    keyset, shares = keyset_and_shares or make_keyset(approvers=["a", "b", "c"], quorum=2)
    req, eph = make_request(keyset)
    rnd = ReleaseRound(keyset, req, eph, deadline=T0 + 30, timeout=30, receipts=receipts(keyset))
    rnd.handle(Start(), T0)
    rnd.handle(VotesSeen(tally_of(keyset, req, [vote("a", req), vote("b", req)])), T0 + 1)
    return keyset, shares, req, rnd


def test_a_no_shard_answer_is_signed_and_bound_to_its_request() -> None:
    keyset, _ = make_keyset()
    req, _ = make_request(keyset)
    d = NoShard.make(KEYS["a"], req, epoch=None)
    assert NoShard.from_bytes(d.signed, custodian=PEER["a"]) == d and d.epoch is None
    assert (d.request_id, d.keyset_id, d.custodian) == (req.id, keyset.keyset_id, PEER["a"])
    assert NoShard.from_bytes(NoShard.make(KEYS["a"], req, epoch=4).signed).epoch == 4
    with pytest.raises(p.InvalidSignature):  # a no-shard answer speaks for the custodian that signed it
        NoShard.from_bytes(d.signed, custodian=PEER["b"])
    tampered = bytearray(d.signed)
    tampered[-1] ^= 1
    with pytest.raises(p.InvalidSignature):
        NoShard.from_bytes(bytes(tampered))


def test_a_holder_whose_receipt_the_requester_keeps_and_that_denies_its_shard_is_named() -> None:
    keyset, shares, req, rnd = asking(lambda ks: (receipt(ks, "a", 1), receipt(ks, "b", 2, "already-held")))
    good = releases(keyset, shares, req)
    rnd.handle(Released(PEER["a"], (NoShard.make(KEYS["a"], req, epoch=keyset.epoch).signed,)), T0 + 2)
    rnd.handle(Released(PEER["b"], (NoShard.make(KEYS["b"], req, epoch=None).signed,)), T0 + 2)
    for n in "cde":
        out = rnd.handle(Released(PEER[n], (good[n],)), T0 + 3)
    done = out[-1]
    assert isinstance(done, Succeeded) and done.master == b"the master key"
    assert [b[0] for b in done.bad] == [PEER["a"], PEER["b"]]
    assert "signed a receipt for index 1 at epoch 0" in done.bad[0][1] and "holds none" in done.bad[0][1]
    assert "knows no such keyset" in done.bad[1][1]
    assert rnd.session.holders[PEER["a"]].state is HolderState.INVALID


def test_a_no_shard_answer_without_a_receipt_or_from_a_newer_epoch_is_a_refusal() -> None:
    keyset, shares, req, rnd = asking(lambda ks: (receipt(ks, "a", 1, keyset_id=b"x" * 16),
                                                  receipt(ks, "b", 2, "refused"), receipt(ks, "c", 3)))
    # a's receipt is for another keyset
    rnd.handle(Released(PEER["a"], (NoShard.make(KEYS["a"], req, epoch=0).signed,)), T0 + 2)
    rnd.handle(Released(PEER["b"], (NoShard.make(KEYS["b"], req, epoch=0).signed,)), T0 + 2)  # it refused
    # c's view is newer than this request's record: it may have handed its share on.
    out = rnd.handle(Released(PEER["c"], (NoShard.make(KEYS["c"], req, epoch=1).signed,)), T0 + 2)
    for n in "ab":
        assert rnd.session.holders[PEER[n]].state is HolderState.REFUSED, n
    assert rnd.session.holders[PEER["c"]].state is HolderState.OTHER_EPOCH and rnd.session.newer == 1
    assert rnd.session.bad == []
    assert "holds no share of this keyset at epoch 1" in rnd.session.holders[PEER["c"]].detail
    assert not [e for e in out if isinstance(e, Failed | Stale)]


def at_epoch(keyset: p.Keyset, shares: list[p.Share], epoch: int) -> tuple[p.Keyset, list[p.Share]]:
    """The same polynomial, labelled ``epoch``: what a holder of a later epoch signs (it is
    never verified: the round's record is of the earlier one)."""
    return dataclasses.replace(keyset, epoch=epoch), [dataclasses.replace(s, epoch=epoch) for s in shares]


def test_holders_at_a_newer_epoch_end_the_round_stale_and_are_never_named() -> None:
    """A requester whose record missed a commit (it was down) hears the holders answer at a
    newer epoch: not lies. The round ends so that the node fetches the newer record."""
    keyset, shares, req, rnd = asking(lambda ks: (receipt(ks, "a", 1),))
    newer = releases(*at_epoch(keyset, shares, 1), req)
    for n in "abc":
        assert not [e for e in rnd.handle(Released(PEER[n], (newer[n],)), T0 + 2) if isinstance(e, Stale)]
    rnd.handle(Released(PEER["d"], (NoShard.make(KEYS["d"], req, epoch=2).signed,)), T0 + 2)
    assert rnd.session.bad == [] and rnd.session.newer == 2
    assert "answers at epoch 1, newer than this record's epoch 0" in rnd.session.holders[PEER["a"]].detail
    assert {rnd.session.holders[PEER[n]].state for n in "abcd"} == {HolderState.OTHER_EPOCH}
    out = rnd.handle(Unreachable(PEER["e"], "gone"), T0 + 2)  # every answer in, and t are not
    assert out[-1] == Stale(2, ()) and rnd.state is RoundState.FAILED


def test_on_the_network_s_newest_record_a_claim_of_a_later_epoch_is_not_believed() -> None:
    """After a fetch, a holder that claims an epoch no record backs (a liar, say epoch 999)
    neither ends the round nor is asked again; the others carry it."""
    keyset, shares = make_keyset(approvers=["a", "b", "c"], quorum=2)
    req, eph = make_request(keyset)
    rnd = ReleaseRound(keyset, req, eph, deadline=T0 + 30, timeout=30, fetched=True, invalid=[PEER["e"]])
    rnd.handle(Start(), T0)
    out = rnd.handle(VotesSeen(tally_of(keyset, req, [vote("a", req), vote("b", req)])), T0 + 1)
    assert PEER["e"] not in {a.peer for a in out if isinstance(a, Ask)}  # named by an earlier round
    lie = releases(*at_epoch(keyset, shares, 999), req)
    good = releases(keyset, shares, req)
    rnd.handle(Released(PEER["a"], (lie["a"],)), T0 + 2)
    rnd.handle(Refused(PEER["b"], "busy"), T0 + 2)
    out = rnd.handle(Released(PEER["c"], (good["c"],)), T0 + 2)
    assert rnd.session.newer is None and "which no record the network showed backs" in rnd.session.holders[
        PEER["a"]].detail
    out = rnd.handle(Released(PEER["d"], (good["d"],)), T0 + 2)
    assert not [e for e in out if isinstance(e, Stale | Failed | Succeeded)]  # 2 of 3: b is asked again
    assert rnd.session.targets(retry=True) == [PEER["b"]]
    asks = [e for e in rnd.handle(Tick(), T0 + 2 + RETRY) if isinstance(e, Ask)]
    assert [a.peer for a in asks] == [PEER["b"]]
    out = rnd.handle(Released(PEER["b"], (good["b"],)), T0 + 4)
    assert isinstance(out[-1], Succeeded) and out[-1].bad == ()


def test_t_answers_at_the_round_s_epoch_succeed_beside_holders_at_a_newer_one() -> None:
    keyset, shares, req, rnd = asking(lambda ks: ())
    good, newer = releases(keyset, shares, req), releases(*at_epoch(keyset, shares, 1), req)
    for n in "abc":
        rnd.handle(Released(PEER[n], (good[n],)), T0 + 2)
    rnd.handle(Released(PEER["d"], (newer["d"],)), T0 + 2)
    out = rnd.handle(Released(PEER["e"], (good["e"],)), T0 + 2)
    assert isinstance(out[-1], Succeeded) and out[-1].bad == () and out[-1].master == b"the master key"


def test_a_release_at_an_older_epoch_is_a_refusal_and_one_at_two_epochs_a_lie() -> None:
    """A holder that missed the commit answers from the old epoch: stale, not a cheat."""
    holders = {"1": [PEER["a"]], "2": [PEER["a"]], "3": [PEER["b"]], "4": [PEER["c"]], "5": [PEER["d"]]}
    attrs = {"holders": holders, "policy": POLICY.text, "approvers": [PEER[n] for n in "abc"], "quorum": 2}
    made = p.split_key(b"the master key", 3, 5, owner=KEYS["owner"], now=NOW, policy_hash=POLICY.digest,
                       attrs=attrs, rng=Drbg(b"epochs"))
    keyset, shares, req, rnd = asking(lambda ks: (), at_epoch(*made, 1))
    older = releases(*made, req, names="aabcd")  # epoch 0: shares their holders have not erased yet
    now = releases(keyset, shares, req, names="aabcd")
    rnd.handle(Released(PEER["b"], (older["b"],)), T0 + 2)
    assert rnd.session.bad == [] and rnd.session.newer is None
    assert "answers at epoch 0: it has not applied epoch 1 yet" in rnd.session.holders[PEER["b"]].detail
    assert PEER["b"] not in rnd.session.targets(retry=True)  # not asked again: it would release again
    rnd.handle(Released(PEER["a"], (now["a"], older["a"])), T0 + 2)
    assert rnd.session.bad == [(PEER["a"], "released a share at epoch 1, and one at epoch 0")]


def test_a_no_shard_answer_for_another_request_or_signed_by_another_is_a_lie() -> None:
    keyset, shares, req, rnd = asking(lambda ks: ())
    other, _ = make_request(keyset)
    rnd.handle(Released(PEER["a"], (NoShard.make(KEYS["a"], other, epoch=0).signed,)), T0 + 2)
    rnd.handle(Released(PEER["b"], (NoShard.make(KEYS["c"], req, epoch=0).signed,)), T0 + 2)
    assert [b[0] for b in rnd.session.bad] == [PEER["a"], PEER["b"]]
    assert "answers another request" in rnd.session.bad[0][1]


def test_a_holder_of_two_indices_that_denies_both_is_named_once_and_the_round_goes_on() -> None:
    holders = {"1": [PEER["a"]], "2": [PEER["a"]], "3": [PEER["b"]], "4": [PEER["c"]], "5": [PEER["d"]]}
    attrs = {"holders": holders, "policy": POLICY.text, "approvers": [PEER[n] for n in "abc"], "quorum": 2}
    made = p.split_key(b"the master key", 3, 5, owner=KEYS["owner"], now=NOW, policy_hash=POLICY.digest,
                       attrs=attrs, rng=Drbg(b"two"))
    keyset, shares, req, rnd = asking(lambda ks: (receipt(ks, "a", 1), receipt(ks, "a", 2)), made)
    no = NoShard.make(KEYS["a"], req, epoch=0).signed
    rnd.handle(Released(PEER["a"], (no, no)), T0 + 2)  # once named, the rest of its answer is not read
    assert rnd.session.bad == [(PEER["a"], "signed a receipt for index 1 at epoch 0, and now says it holds none "
                                           "at epoch 0")]
    rnd.handle(Released(PEER["b"], (NoShard.make(KEYS["b"], req, epoch=0).signed, b"junk")), T0 + 2)
    assert rnd.session.holders[PEER["b"]].state is HolderState.REFUSED  # no receipt: a refusal, junk unread
    good = releases(keyset, shares, req, names="aabcd")
    out = rnd.handle(Released(PEER["c"], (good["c"],)), T0 + 3)
    out = rnd.handle(Released(PEER["d"], (good["d"],)), T0 + 3)
    assert not [e for e in out if isinstance(e, Succeeded)]  # 2 of 3: a is a liar, b holds none
    out = rnd.handle(Tick(), T0 + 30)
    assert isinstance(out[-1], Failed), out
    assert "a denies holding the share it signed for" in out[-1].message.replace(PEER["a"], "a")


def test_a_waiting_round_publishes_again_at_doubling_gaps_and_stops_once_asking() -> None:
    keyset, _, req, rnd = setup(timeout=600)
    rnd.handle(Start(), T0)
    published = []
    now = T0
    while now < T0 + 300:
        now += 0.5
        if any(isinstance(e, Publish) for e in rnd.handle(Tick(), now)):
            published.append(now - T0)
    gaps = [b - a for a, b in zip([0.0, *published], published, strict=False)]
    assert gaps[:3] == [3.0, 6.0, 12.0] and set(gaps[3:]) == {15.0}, gaps
    rnd.handle(VotesSeen(tally_of(keyset, req, [vote("a", req), vote("b", req)])), now)
    assert rnd.state is RoundState.ASKING
    assert not any(isinstance(e, Publish) for t in range(1, 200) for e in rnd.handle(Tick(), now + t * 0.25))
