"""Requests, votes, the quorum state machine, the release decision and the
requester's session: the protocol core of reconstruction, without a network."""

from __future__ import annotations

import dataclasses
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
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
from shardnet.protocol._reconstruct import ReconstructionFailed, Session
from shardnet.protocol._records import peer_id_of
from shardnet.protocol._requests import Release, Request, Vote, partial_payload, share_payload

from .drbg import Drbg

NOW = 1_800_000_000
KEYS = {name: Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32)
        for i, name in enumerate(["owner", "a", "b", "c", "d", "e", "req", "mallory"])}
PEER = {name: peer_id_of(k.public_key().public_bytes_raw()) for name, k in KEYS.items()}
POLICY = Policy(DEFAULT_POLICY)


def make_keyset(approvers: list[str] | None = None, quorum: int | None = None, t: int = 3):
    holders = {str(i + 1): [PEER[n]] for i, n in enumerate("abcde")}
    attrs: dict = {"holders": holders, "policy": POLICY.text}
    if approvers:
        attrs["approvers"] = [PEER[a] for a in approvers]
    if quorum:
        attrs["quorum"] = quorum
    return p.split_key(b"the master key", t, 5, owner=KEYS["owner"], now=NOW, policy_hash=POLICY.digest,
                       attrs=attrs, rng=Drbg(b"q"))


def make_request(keyset: p.Keyset, mode: str = "unwrap", ttl: int = 300):
    eph = p.HpkePrivateKey.generate("x25519", os.urandom)
    req = Request.make(KEYS["req"], keyset_id=keyset.keyset_id, mode=mode, reason="disaster recovery",
                       ephemeral=eph.public_bytes(), nonce=os.urandom(16), created=NOW, not_after=NOW + ttl)
    return req, eph


def vote(name: str, req: Request, decision: str = "approve") -> Vote:
    return Vote.make(KEYS[name], req, decision, NOW)


def tally_of(keyset: p.Keyset, req: Request, votes: list[Vote]) -> Tally:
    tally = Tally(req, ApprovalRule.of(keyset))
    tally.add_all(votes, NOW)
    return tally


def test_records_round_trip_and_bind_signer() -> None:
    keyset, _ = make_keyset()
    req, _ = make_request(keyset)
    assert Request.from_bytes(req.signed) == req and len(req.id) == 32
    v = vote("a", req)
    assert Vote.from_bytes(v.signed) == v
    tag, ver, body, signer, sig = p.decode(v.signed)
    forged = p.encode([tag, ver, body, KEYS["mallory"].public_key().public_bytes_raw(), sig])
    with pytest.raises(p.InvalidSignature):
        Vote.from_bytes(forged)
    with pytest.raises(ValueError, match="expire after"):
        Request.make(KEYS["req"], keyset_id=keyset.keyset_id, mode="unwrap", reason="", ephemeral=bytes(32),
                     nonce=bytes(16), created=NOW, not_after=NOW)


def test_tally_state_machine() -> None:
    keyset, _ = make_keyset(approvers=["a", "b", "c"], quorum=2)
    req, _ = make_request(keyset)
    tally = Tally(req, ApprovalRule.of(keyset))
    assert tally.state(NOW) is State.PENDING
    assert tally.add(vote("a", req), NOW) is Added.COUNTED
    assert tally.add(vote("a", req), NOW) is Added.DUPLICATE  # the same vote again counts once
    assert tally.state(NOW) is State.PENDING
    with pytest.raises(VoteRejected, match="not an approver"):
        tally.add(vote("d", req), NOW)
    other, _ = make_request(keyset)
    with pytest.raises(VoteRejected, match="another request"):
        tally.add(vote("b", other), NOW)  # a replayed vote from another request
    with pytest.raises(VoteRejected, match="expired"):
        tally.add(vote("b", req), NOW + 301)
    tally.add(vote("b", req), NOW)
    assert tally.state(NOW) is State.APPROVED and tally.approvals == 2
    assert tally.state(NOW + 301) is State.EXPIRED


def test_denials_can_make_quorum_unreachable() -> None:
    keyset, _ = make_keyset(approvers=["a", "b", "c"], quorum=2)
    req, _ = make_request(keyset)
    tally = Tally(req, ApprovalRule.of(keyset))
    tally.add(vote("a", req, "deny"), NOW)
    assert tally.state(NOW) is State.PENDING
    tally.add(vote("b", req, "deny"), NOW)
    assert tally.state(NOW) is State.REJECTED


def test_default_approvers_are_the_custodians_with_quorum_t() -> None:
    keyset, _ = make_keyset()
    rule = ApprovalRule.of(keyset)
    assert rule.approvers == {PEER[n] for n in "abcde"} and rule.quorum == 3


@pytest.mark.parametrize("case, expect", [
    ("no votes", "no quorum: 0 of 2"),
    ("one vote", "no quorum: 1 of 2"),
    ("non-approver", "no quorum: 1 of 2"),
    ("replayed", "no quorum: 1 of 2"),
    ("expired", "expired"),
    ("denied", "quorum 2 is out of reach"),
    ("revoked", "the keyset is revoked"),
    ("policy", "policy denies"),
    ("wrong policy", "does not match the keyset's policy hash"),
])
def test_release_is_refused(case: str, expect: str) -> None:
    keyset, _ = make_keyset(approvers=["a", "b", "c"], quorum=2)
    req, _ = make_request(keyset)
    old, _ = make_request(keyset)
    votes = {
        "no votes": [], "one vote": [vote("a", req)], "non-approver": [vote("a", req), vote("d", req)],
        "replayed": [vote("a", req), vote("b", old)], "expired": [vote("a", req), vote("b", req)],
        "denied": [vote("a", req, "deny"), vote("b", req, "deny")], "revoked": [vote("a", req), vote("b", req)],
        "policy": [vote("a", req), vote("b", req)], "wrong policy": [vote("a", req), vote("b", req)],
    }[case]
    kw: dict = {"now": NOW + (400 if case == "expired" else 10), "policy": POLICY}
    if case == "revoked":
        kw["status"] = "revoked"
    if case == "policy":
        kw["threat_level"] = 5  # the default policy forbids everything at critical threat
    if case == "wrong policy":
        kw["policy"] = Policy('permit(principal, action, resource);')
    with pytest.raises(ReleaseDenied, match=expect):
        decide_release(keyset, tally_of(keyset, req, votes), **kw)


def test_release_allowed_with_quorum() -> None:
    keyset, _ = make_keyset(approvers=["a", "b", "c"], quorum=2)
    req, _ = make_request(keyset)
    d = decide_release(keyset, tally_of(keyset, req, [vote("c", req), vote("a", req)]), now=NOW + 5,
                       policy=POLICY)
    assert (d.approvals, d.quorum) == (2, 2)


def releases(keyset: p.Keyset, shares: list[p.Share], req: Request, names: str = "abcde") -> dict[str, bytes]:
    out = {}
    for name, share in zip(names, shares, strict=False):
        if req.mode == "unwrap":
            payload = partial_payload(p.partial_decrypt(keyset, share, req.id.encode()))
        else:
            payload = share_payload(share)
        out[name] = Release.make(KEYS[name], req, epoch=keyset.epoch, index=share.index, payload=payload).signed
    return out


@pytest.mark.parametrize("mode", ["unwrap", "shares"])
def test_session_reconstructs_and_names_a_liar(mode: str) -> None:
    keyset, shares = make_keyset()
    req, eph = make_request(keyset, mode)
    names = {PEER[n]: n for n in "abcde"}
    s = Session(keyset, req, eph, names)
    assert sorted(s.targets()) == sorted(PEER[n] for n in "abcde")
    for peer in s.targets():
        s.asked(peer)
    good = releases(keyset, shares, req)
    wrong = dataclasses.replace(shares[1], value=shares[1].value + 1)
    lie = releases(keyset, [wrong], req, names="b")["b"]
    s.on_release(PEER["a"], good["a"])
    s.on_release(PEER["b"], lie)
    s.on_unreachable(PEER["c"], "connection refused")
    assert s.have() == 1 and not s.complete()
    assert s.bad == [(PEER["b"], s.bad[0][1])]
    with pytest.raises(ReconstructionFailed) as ei:
        s.result()
    msg = str(ei.value)
    unit = "partial decryptions" if mode == "unwrap" else "shares"
    assert msg.startswith(f"1 of 3 required {unit}: custodians c unreachable; b sent an invalid")
    s.on_release(PEER["d"], good["d"])
    s.on_release(PEER["e"], good["e"])
    assert s.complete() and s.result() == b"the master key"
    assert s.holders[PEER["b"]].state == "invalid"


def test_session_refuses_releases_for_other_requests_and_indices() -> None:
    keyset, shares = make_keyset()
    req, eph = make_request(keyset)
    other, _ = make_request(keyset)
    s = Session(keyset, req, eph)
    for peer in s.targets():
        s.asked(peer)
    s.on_release(PEER["a"], releases(keyset, shares, other)["a"])
    assert s.holders[PEER["a"]].state == "invalid"
    # b sends a valid partial for index 3, which it does not hold.
    rel = Release.make(KEYS["b"], req, epoch=0, index=3,
                       payload=partial_payload(p.partial_decrypt(keyset, shares[2], req.id.encode())))
    s.on_release(PEER["b"], rel.signed)
    assert s.holders[PEER["b"]].state == "invalid" and "not an index" in s.holders[PEER["b"]].detail
    # A release signed by someone else than the peer that sent it.
    s.on_release(PEER["c"], releases(keyset, shares, req)["d"])
    assert s.holders[PEER["c"]].state == "invalid"
    assert s.have() == 0


def test_requests_live_a_day_at_most_and_votes_inside_their_lifetime() -> None:
    keyset, _ = make_keyset(approvers=["a", "b", "c"], quorum=2)
    with pytest.raises(ValueError, match="within 86400 s"):
        make_request(keyset, ttl=86401)
    req, _ = make_request(keyset)
    tally = Tally(req, ApprovalRule.of(keyset))
    late = Vote.make(KEYS["a"], req, "approve", NOW + 10_000)
    with pytest.raises(VoteRejected, match="outside the request's lifetime"):
        tally.add(late, NOW)


def test_a_flood_from_one_liar_counts_once() -> None:
    keyset, shares = make_keyset()
    req, eph = make_request(keyset)
    s = Session(keyset, req, eph)
    s.asked(PEER["a"])
    for _ in range(50):
        s.on_release(PEER["a"], b"junk")
    assert len(s.bad) == 1 and s.holders[PEER["a"]].state == "invalid"


def test_a_session_takes_answers_only_from_holders_it_asked() -> None:
    keyset, shares = make_keyset()
    req, eph = make_request(keyset)
    s = Session(keyset, req, eph)
    with pytest.raises(ValueError, match="was not asked"):
        s.on_release(PEER["a"], releases(keyset, shares, req)["a"])
    with pytest.raises(ValueError, match="was not asked"):
        s.on_refused(PEER["b"], "no")
    assert s.have() == 0
