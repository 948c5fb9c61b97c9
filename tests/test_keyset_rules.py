"""A keyset's rules after import (protocol/_keyset_rules.py): policy versions and
revocation lists, co-signed by K of its M authorities, and what a node's RuleBook
takes: never a rollback, a replay, a forgery, an unknown signer, a record short of
the quorum or an oversized one."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.protocol import CoSigned
from shardnet.protocol import keyset_rules as kr

from .drbg import Drbg

NOW = 1_800_000_000
STRICT = 'permit (principal, action, resource) when { context.approvals >= context.quorum && context.hour < 12 };'


def _keys(k: int) -> list[Ed25519PrivateKey]:
    rng = Drbg(b"rules-keys")
    return [Ed25519PrivateKey.from_private_bytes(rng(32)) for _ in range(k)]


KEYS = _keys(6)
IDS = [p.peer_id_of(k.public_key().public_bytes_raw()) for k in KEYS]


def _keyset(authorities: int = 3, quorum: int = 2, seed: bytes = b"") -> p.Keyset:
    attrs = {"authorities": sorted(IDS[:authorities]), "authority_quorum": quorum}
    ks, _ = p.split_key(b"k" * 32, 2, 3, owner=KEYS[0], now=NOW, attrs=attrs, rng=Drbg(b"rules-keyset" + seed))
    return ks


KEYSET = _keyset()
BOOK = kr.RuleBook(KEYSET)


def _signed(body: bytes, *signers: int) -> CoSigned:
    cs = CoSigned.propose(KEYS[signers[0]], body)
    for i in signers[1:]:
        cs = cs.signed_by(KEYS[i])
    return cs


def _policy(version: int = 1, text: str = STRICT, placement: str = "", t: int = NOW) -> bytes:
    return kr.PolicyVersion.make_body(keyset_id=KEYSET.keyset_id, version=version, policy=text,
                                      placement=placement, time=t)


def test_a_policy_that_does_not_validate_is_never_signed() -> None:
    with pytest.raises(p.MalformedEncoding, match="policy version"):
        _policy(text='permit (principal, action, resource) when { context.quroum > 1 };')
    with pytest.raises(p.MalformedEncoding, match="placement"):
        _policy(placement="country in nowhere")


def test_quorum_applies_and_the_policy_is_in_force() -> None:
    cs = _signed(_policy(placement="distinct:country"), 0, 1)
    got, rec = BOOK.check(cs.to_bytes(), NOW)
    assert BOOK.complete(got)
    book = BOOK.applied(got, rec)
    assert book.policy_text == STRICT and book.placement == "distinct:country"
    assert book.version("policy") == 1 and book.version("revocations") == 0


def test_short_of_the_quorum_is_a_proposal_only() -> None:
    cs = _signed(_policy(), 1)
    got, rec = BOOK.check(cs.to_bytes(), NOW)
    assert not BOOK.complete(got)
    with pytest.raises(ValueError, match="quorum"):
        BOOK.applied(got, rec)


def test_rollback_and_replay_are_refused() -> None:
    v2 = _signed(_policy(2), 0, 1)
    book = BOOK.applied(*BOOK.check(v2.to_bytes(), NOW))
    with pytest.raises(kr.StaleRule, match="rollback"):
        book.check(_signed(_policy(1), 0, 1).to_bytes(), NOW)
    with pytest.raises(kr.StaleRule, match="replay"):
        book.check(v2.to_bytes(), NOW)
    with pytest.raises(kr.StaleRule, match="replay"):  # the same record with other signers
        book.check(_signed(_policy(2), 1, 2).to_bytes(), NOW)


def test_unknown_signers_forgeries_and_oversized_records_are_refused() -> None:
    with pytest.raises(p.InvalidSignature, match="not an authority"):
        BOOK.check(_signed(_policy(), 0, 4).to_bytes(), NOW)
    good = _signed(_policy(), 0, 1)
    forged = CoSigned(_policy(placement="distinct:org"), good.signatures)
    with pytest.raises(p.InvalidSignature):
        BOOK.check(forged.to_bytes(), NOW)
    other = _keyset(3, 2, b"other")
    assert other.keyset_id != KEYSET.keyset_id
    with pytest.raises(p.MalformedEncoding, match="another keyset"):
        kr.RuleBook(other).check(good.to_bytes(), NOW)
    with pytest.raises(p.MalformedEncoding, match="bytes"):
        BOOK.check(b"\x00" * (kr.MAX_RULE_RECORD + 1), NOW)
    with pytest.raises(p.MalformedEncoding, match="future"):
        BOOK.check(_signed(_policy(t=NOW + 3600), 0, 1).to_bytes(), NOW)


def test_two_records_at_one_version_resolve_the_same_on_every_node() -> None:
    a = _signed(_policy(1, placement=""), 0, 1)
    b = _signed(_policy(1, placement="distinct:country"), 1, 2)
    winner = min((a, b), key=lambda cs: cs.id)
    for first, second in ((a, b), (b, a)):
        book = BOOK.applied(*BOOK.check(first.to_bytes(), NOW))
        try:
            book = book.applied(*book.check(second.to_bytes(), NOW))
        except kr.StaleRule:
            pass
        assert book.held("policy")[0].body == winner.body  # type: ignore[index]


def _revocations(book: kr.RuleBook, *entries: kr.Revoked, version: int | None = None, t: int = NOW,
                 epoch: int = 0) -> bytes:
    body = kr.next_revocations(book, entries, time=t, epoch=epoch,
                               version=book.version("revocations") + 1 if version is None else version)
    assert body is not None
    return body


def test_revocation_lists_are_cumulative_and_idempotent() -> None:
    entry = kr.Revoked("custodian", IDS[5], 0, "compromised", NOW)
    book = BOOK.applied(*BOOK.check(_signed(_revocations(BOOK, entry), 0, 2).to_bytes(), NOW))
    assert book.holder_revoked(1, IDS[5], 0) and not book.holder_revoked(1, IDS[4], 0)
    assert kr.next_revocations(book, [entry], version=2, time=NOW + 1, epoch=0) is None  # in force already
    shard = kr.Revoked("shard", "", 2, "disk stolen", NOW, epoch=3)
    book = book.applied(*book.check(_signed(_revocations(book, shard, t=NOW + 1), 1, 2).to_bytes(), NOW + 1))
    assert book.version("revocations") == 2 and book.revoked.peers("custodian") == {IDS[5]}
    requester = kr.Revoked("requester", IDS[4], 0, "left the company", NOW)
    book = book.applied(*book.check(_signed(_revocations(book, requester, t=NOW + 2), 0, 1).to_bytes(), NOW + 2))
    assert book.revoked.peers("requester") == {IDS[4]} and len(book.revoked.entries) == 3


def test_a_shard_revocation_holds_for_its_epoch_only() -> None:
    shard = kr.Revoked("shard", "", 2, "disk stolen", NOW, epoch=3)
    book = BOOK.applied(*BOOK.check(_signed(_revocations(BOOK, shard, epoch=3), 0, 1).to_bytes(), NOW))
    assert book.revoked.indices(3) == {2} and book.holder_revoked(2, IDS[3], 3)
    assert not book.holder_revoked(2, IDS[3], 4) and not book.holder_revoked(2, IDS[3], 2)  # dealt anew since
    assert book.revoked.to_json()["revoked"] == [{"subject": "shard", "index": 2, "epoch": 3, "reason": "disk stolen",
                                                  "time": NOW}]
    # At epoch 4, the same index is revoked anew; the entry of epoch 3 protects nothing any
    # more, so the next list leaves it out, and leaving it out drops nothing.
    again = kr.Revoked("shard", "", 2, "stolen again", NOW, epoch=4)
    rec = kr.RevocationList.from_body(_revocations(book, again, epoch=4))
    assert [e.epoch for e in rec.entries] == [4] and book.dropped(rec, 4) == []
    assert book.dropped(rec, 3) == [shard]  # seen from a node still at epoch 3, it would drop one


def test_a_list_that_drops_a_revocation_in_force_is_not_kept() -> None:
    a = kr.Revoked("custodian", IDS[5], 0, "compromised", NOW)
    b = kr.Revoked("requester", IDS[4], 0, "left", NOW)
    book = BOOK.applied(*BOOK.check(_signed(_revocations(BOOK, a), 0, 1).to_bytes(), NOW))
    # A list proposed before `a` was in force (built on the empty one) lacks it.
    stale_base = kr.RevocationList.make_body(keyset_id=KEYSET.keyset_id, version=2, entries=[b], time=NOW)
    rec = kr.RevocationList.from_body(stale_base)
    assert book.dropped(rec, 0) == [a] and book.dropped(kr.RevocationList.from_body(_revocations(book, b)), 0) == []
    assert book.dropped(kr.PolicyVersion.from_body(_policy()), 0) == []
    c = kr.Revoked("requester", IDS[3], 0, "left too", NOW)  # in an open list this authority signed
    assert book.dropped(kr.RevocationList.from_body(_revocations(book, b)), 0, also=[c]) == [c]


def test_version_1_lists_are_still_read_and_their_shard_entries_hold_at_every_epoch() -> None:
    """Written before a shard revocation named its epoch, it meant every epoch: so it stays."""
    v1 = p.encode([kr.REVOCATIONS_TAG, 1, KEYSET.keyset_id, 1,
                   [["custodian", IDS[1], 0, "r", NOW], ["shard", "", 2, "s", NOW]], NOW])
    rec = kr.RevocationList.from_body(v1)
    assert rec.peers("custodian") == {IDS[1]} and rec.indices(0) == rec.indices(7) == {2}
    book = BOOK.applied(*BOOK.check(_signed(v1, 0, 1).to_bytes(), NOW))
    assert book.holder_revoked(2, IDS[4], 5) and book.holder_revoked(1, IDS[1], 5)
    # The next list is a version 2 one that carries both, the shard entry as "every epoch".
    more = kr.Revoked("requester", IDS[4], 0, "left", NOW)
    nxt = kr.RevocationList.from_body(_revocations(book, more, epoch=5))
    assert book.dropped(nxt, 5) == [] and nxt.indices(9) == {2} and p.decode(nxt.body)[1] == 2
    assert [e["epoch"] for e in nxt.to_json()["revoked"] if e["subject"] == "shard"] == ["every"]
    assert book.dropped(kr.RevocationList.from_body(
        kr.RevocationList.make_body(keyset_id=KEYSET.keyset_id, version=2, entries=[more], time=NOW)), 5) != []
    # A node pins such an entry to the epoch in force at its time (from its epoch records):
    # it then holds at that epoch only, and the next list names that epoch and drops it later.
    pinned = kr.RuleBook(KEYSET, epoch_at=lambda t: 3 if t >= NOW else 0).applied(*BOOK.check(
        _signed(v1, 0, 1).to_bytes(), NOW))
    assert pinned.revoked.indices(3) == {2} and pinned.revoked.indices(4) == set()
    at3 = kr.RevocationList.from_body(_revocations(pinned, more, epoch=3))
    assert [e.epoch for e in at3.entries if e.subject == "shard"] == [3] and pinned.dropped(at3, 3) == []
    at4 = kr.RevocationList.from_body(_revocations(pinned, more, epoch=4))
    assert [e.subject for e in at4.entries] == ["custodian", "requester"] and pinned.dropped(at4, 4) == []
    with pytest.raises(p.MalformedEncoding, match="epoch, reason"):  # a version 2 list has six fields
        kr.RevocationList.from_body(p.encode([kr.REVOCATIONS_TAG, 2, KEYSET.keyset_id, 1,
                                              [["custodian", IDS[1], 0, "r", NOW]], NOW]))


def test_stale_records_are_refused_from_a_peek_before_any_signature_check() -> None:
    v2 = _signed(_policy(2), 0, 1)
    book = BOOK.applied(*BOOK.check(v2.to_bytes(), NOW))
    forged = CoSigned(_policy(1), ((KEYS[0].public_key().public_bytes_raw(), b"\x00" * 64),))
    seen = kr.peek(forged.to_bytes())
    assert (seen.keyset_id, seen.kind, seen.version) == (KEYSET.keyset_id, "policy", 1)
    assert "rollback" in (book.stale(seen) or "")
    assert "replay" in (book.stale(kr.peek(v2.to_bytes())) or "")
    assert book.stale(kr.peek(_signed(_policy(3), 2).to_bytes())) is None


def test_a_version_must_be_an_int_not_a_bool() -> None:
    body = p.decode(_policy())
    body[1] = True
    with pytest.raises(p.MalformedEncoding, match="unsupported version"):
        kr.PolicyVersion.from_body(p.encode(body))


def test_revocation_entries_are_checked() -> None:
    for bad in (["custodian", "", 0, 0, "r", NOW], ["shard", IDS[1], 1, 0, "r", NOW], ["shard", "", 0, 0, "r", NOW],
                ["someone", IDS[1], 0, 0, "r", NOW], ["requester", IDS[1], 0, 0, "", NOW],
                ["custodian", "not-a-peer", 0, 0, "r", NOW], ["custodian", IDS[1], 0, 2, "r", NOW]):
        with pytest.raises(p.MalformedEncoding):
            kr.Revoked.from_list(bad)
    dup = p.encode([kr.REVOCATIONS_TAG, 2, KEYSET.keyset_id, 1,
                    [["custodian", IDS[1], 0, 0, "r", NOW]] * 2, NOW])
    with pytest.raises(p.MalformedEncoding, match="sorted"):
        kr.RevocationList.from_body(dup)


def test_the_default_authority_is_the_owner_alone() -> None:
    ks, _ = p.split_key(b"k" * 32, 2, 3, owner=KEYS[5], now=NOW, rng=Drbg(b"rules-default"))
    book = kr.RuleBook(ks)
    body = kr.next_policy(book, policy=STRICT, placement=None, time=NOW)
    cs = CoSigned.propose(KEYS[5], body)
    got, rec = book.check(cs.to_bytes(), NOW)
    assert book.complete(got)
    with pytest.raises(p.InvalidSignature):
        book.check(CoSigned.propose(KEYS[0], body).to_bytes(), NOW)


def test_a_policy_version_can_carry_the_schedule_and_a_version_1_keeps_the_keysets() -> None:
    attrs = {"authorities": sorted(IDS[:3]), "authority_quorum": 2, "refresh_every": 7200, "rewrap_every": 30}
    ks, _ = p.split_key(b"k" * 32, 2, 3, owner=KEYS[0], now=NOW, attrs=attrs, rng=Drbg(b"rules-schedule"))
    book = kr.RuleBook(ks)
    assert book.schedule == kr.Schedule(7200, kr.MIN_SCHEDULE)  # a record's schedule below the floor is raised
    v1 = kr.PolicyVersion.make_body(keyset_id=ks.keyset_id, version=1, policy=STRICT, placement="", time=NOW)
    cs = _signed(v1, 0, 1)
    book = book.applied(*book.check(cs.to_bytes(), NOW))
    assert book.policy is not None and book.policy[1].schedule is None
    assert book.schedule == kr.Schedule(7200, kr.MIN_SCHEDULE)  # version 1: the keyset's schedule still holds
    v2 = kr.PolicyVersion.make_body(keyset_id=ks.keyset_id, version=2, policy=STRICT, placement="", time=NOW,
                                    schedule=kr.Schedule(None, 86400))
    got, rec = book.check(_signed(v2, 1, 2).to_bytes(), NOW)
    assert isinstance(rec, kr.PolicyVersion) and rec.schedule == kr.Schedule(None, 86400)
    assert rec.to_json()["schedule"] == {"refresh_every": None, "rewrap_every": 86400}
    book = book.applied(got, rec)
    assert book.schedule == kr.Schedule(None, 86400)  # replaced whole: no refresh from now on
    assert p.decode(v2)[1] == 2 and p.decode(v1)[1] == 1  # an unscheduled version stays readable by older nodes
    back = kr.PolicyVersion.make_body(keyset_id=ks.keyset_id, version=3, policy=STRICT, placement="", time=NOW)
    with pytest.raises(p.MalformedEncoding, match="without a schedule cannot follow"):
        book.check(_signed(back, 0, 1).to_bytes(), NOW)  # would bring back the import's unannounced


def test_a_schedule_is_checked_before_anyone_signs() -> None:
    for bad in (kr.Schedule(10, None), kr.Schedule(None, -5), kr.Schedule(2**40, None)):
        with pytest.raises(p.MalformedEncoding, match="schedule"):
            kr.PolicyVersion.make_body(keyset_id=KEYSET.keyset_id, version=1, policy=STRICT, placement="",
                                       time=NOW, schedule=bad)
    raw = p.decode(kr.PolicyVersion.make_body(keyset_id=KEYSET.keyset_id, version=1, policy=STRICT,
                                              placement="", time=NOW, schedule=kr.Schedule(3600, None)))
    for bad_field in ([3600], [True, 0], ["1h", 0], [3600, -1]):
        with pytest.raises(p.MalformedEncoding):
            kr.PolicyVersion.from_body(p.encode([*raw[:-1], bad_field]))
