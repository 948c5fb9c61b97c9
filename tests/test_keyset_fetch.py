"""A keyset record fetched from the network is trusted only when its checks pass."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.protocol import keyset_fetch as kf

NOW = 1_800_000_000


def _key(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


OWNER, H1, H2, H3, OTHER, ASKER = (_key(i) for i in range(1, 7))


def pid(k: Ed25519PrivateKey) -> str:
    return p.peer_id_of(k.public_key().public_bytes_raw())


HOLDERS = {"1": [pid(H1)], "2": [pid(H2)], "3": [pid(H3)]}
KEYSET, _ = p.split_key(b"m" * 32, 2, 3, owner=OWNER, now=NOW, attrs={"holders": HOLDERS})
NONCE = bytes(range(16))


def receipt(key: Ed25519PrivateKey, index: int, *, digest: bytes | None = None, keyset: p.Keyset = KEYSET,
            status: str = "already-held") -> bytes:
    return p.Receipt.make(key, keyset_id=keyset.keyset_id, epoch=keyset.epoch, index=index,
                          shard_digest=bytes(32), status=status, reason="", time=NOW,
                          delivery_digest=digest if digest is not None else kf.proof_digest(NONCE, pid(ASKER))
                          ).signed


def check(data: bytes, responder: str, keyset_id: bytes = KEYSET.keyset_id) -> p.Keyset:
    return kf.check_reply(data, keyset_id=keyset_id, responder=responder, nonce=NONCE, requester=pid(ASKER))


def test_a_holder_answering_for_itself_is_trusted():
    got = check(kf.reply(KEYSET.signed, [receipt(H2, 2)]), pid(H2))
    assert got.signed == KEYSET.signed


def test_the_owner_answers_with_its_custodians_receipts():
    stored = [receipt(H1, 1, digest=bytes(32), status="stored"), receipt(H3, 3, digest=bytes(32))]
    assert check(kf.reply(KEYSET.signed, stored), pid(OWNER)).keyset_id == KEYSET.keyset_id


def test_a_record_signed_by_another_owner_key_is_refused():
    # The attacker re-signs the honest record's fields with its own key: the id no longer binds.
    forged = p.sign_body(OTHER, p.open_signed(KEYSET.signed, tag="shardnet/keyset", version=1, fields=16)[2])
    with pytest.raises(p.InvalidSignature, match="not bound"):
        check(kf.reply(forged, [receipt(H1, 1)]), pid(H1))


def test_a_bad_signature_is_refused():
    bad = bytearray(KEYSET.signed)
    bad[-1] ^= 1
    with pytest.raises(p.InvalidSignature):
        check(kf.reply(bytes(bad), [receipt(H1, 1)]), pid(H1))


def test_a_record_for_another_keyset_is_refused():
    other, _ = p.split_key(b"x" * 32, 2, 3, owner=OWNER, now=NOW, attrs={"holders": HOLDERS})
    with pytest.raises(kf.RecordRefused, match="is for keyset"):
        check(kf.reply(other.signed, [receipt(H1, 1, keyset=other)]), pid(H1))


def test_receipts_must_come_from_the_holders_the_record_names():
    with pytest.raises(kf.RecordRefused, match="does not name it a holder"):
        check(kf.reply(KEYSET.signed, [receipt(H1, 2)]), pid(H1))  # H1 holds index 1, not 2
    with pytest.raises(kf.RecordRefused, match="neither the keyset's owner nor a holder"):
        check(kf.reply(KEYSET.signed, [receipt(H1, 1)]), pid(OTHER))
    with pytest.raises(kf.RecordRefused, match="no holder's receipt"):
        check(kf.reply(KEYSET.signed, []), pid(OWNER))


def test_a_holders_old_receipt_is_not_a_fresh_answer():
    stale = receipt(H1, 1, digest=hashlib.sha256(b"an old delivery").digest())
    with pytest.raises(kf.RecordRefused, match="does not answer this fetch"):
        check(kf.reply(KEYSET.signed, [stale]), pid(H1))
    with pytest.raises(kf.RecordRefused, match="without a fresh receipt of its own"):
        check(kf.reply(KEYSET.signed, [receipt(H2, 2, digest=bytes(32))]), pid(H1))


def test_a_refused_outcome_is_not_a_holding():
    with pytest.raises(kf.RecordRefused, match="outcome"):
        check(kf.reply(KEYSET.signed, [receipt(H1, 1, status="refused")]), pid(H1))


def test_the_newest_revision_wins():
    amended = KEYSET.amend(OWNER, holders={**HOLDERS, "3": [pid(OTHER)]})
    assert kf.revision(amended) == (0, 1)
    assert kf.newest([amended, KEYSET]).signed == amended.signed
    assert kf.holders_of(amended)[3] == [pid(OTHER)]


def test_requests_round_trip_and_refuse_junk():
    assert kf.parse_request(kf.request(KEYSET.keyset_id, NONCE)) == (KEYSET.keyset_id, NONCE)
    with pytest.raises(p.MalformedEncoding):
        kf.parse_request(b"\x93junk")


def test_a_new_epoch_starts_at_revision_zero():
    amended = KEYSET.amend(OWNER, holders=HOLDERS)
    nxt = amended.next_epoch(commitments=KEYSET.commitments, threshold=2, shares=3, signer=OWNER)
    assert (nxt.epoch, nxt.revision) == (1, 0) and "revision" not in nxt.attrs


def test_an_amendment_may_move_holders_and_nothing_else():
    import dataclasses

    from shardnet.protocol._keyset import _signed

    moved = KEYSET.amend(OWNER, holders={**HOLDERS, "2": [pid(OTHER)]})
    assert moved.amends(KEYSET) and not KEYSET.amends(moved) and not moved.amends(moved)
    # The owner's key re-signing anything else at a higher revision is refused, not taken.
    keep = {f.name: getattr(moved, f.name) for f in dataclasses.fields(moved) if f.name not in ("owner", "signed")}
    for change in ({"attrs": {**moved.attrs, "approvers": [pid(OTHER)], "quorum": 1}},
                   {"attrs": {**moved.attrs, "policy": "permit (principal, action, resource);"}},
                   {"not_after": NOW + 1}, {"threshold": 3}):
        bad = _signed(OWNER, **{**keep, **change})
        with pytest.raises(p.InvalidSignature, match="changes more than its holders"):
            bad.amends(KEYSET)


def test_an_amendment_keeps_the_approvers_even_when_they_are_the_holders_by_default():
    import dataclasses

    from shardnet.protocol._keyset import _signed

    assert "approvers" not in KEYSET.attrs and KEYSET.approvers == sorted(sum(HOLDERS.values(), []))
    moved = KEYSET.amend(OWNER, holders={**HOLDERS, "3": [pid(OTHER)]})
    assert moved.amends(KEYSET) and moved.approvers == KEYSET.approvers  # named now, the same three
    assert p.ApprovalRule.of(moved).approvers == frozenset(KEYSET.approvers)
    # Moving holders while leaving the approvers implicit would hand approval to the new holders.
    keep = {f.name: getattr(KEYSET, f.name) for f in dataclasses.fields(KEYSET) if f.name not in ("owner", "signed")}
    grab = _signed(OWNER, **{**keep, "attrs": {**KEYSET.attrs, "revision": 1,
                                               "holders": {"1": [pid(OTHER)], "2": [pid(ASKER)], "3": [pid(OTHER)]}}})
    with pytest.raises(p.InvalidSignature, match="changes more than its holders"):
        grab.amends(KEYSET)
    # Two different records at one revision are an owner that equivocates: refused too.
    twin = KEYSET.amend(OWNER, holders={**HOLDERS, "3": [pid(ASKER)]})
    with pytest.raises(p.InvalidSignature, match="two different records"):
        twin.amends(moved)
    # The fetch keeps the newest record that amends the others, and names the ones that do not.
    best, refused = kf.pick([KEYSET, moved, grab])
    assert best.signed == moved.signed and [r.signed for r in refused] == []
    worse = _signed(OWNER, **{**keep, "attrs": {**moved.attrs, "revision": 2, "quorum": 1}})
    best, refused = kf.pick([KEYSET, moved, worse])
    assert best.signed == moved.signed and [r.signed for r in refused] == [worse.signed]


def test_a_pinned_keysets_amendment_stays_in_the_pin():
    pinned, _ = p.split_key(b"m" * 32, 2, 3, owner=OWNER, now=NOW,
                            attrs={"holders": HOLDERS, "custodians": [pid(H1), pid(H2), pid(H3), pid(ASKER)]})
    assert pinned.amend(OWNER, holders={**HOLDERS, "3": [pid(ASKER)]}).amends(pinned)
    with pytest.raises(p.InvalidSignature, match="changes more than its holders"):
        pinned.amend(OWNER, holders={**HOLDERS, "3": [pid(OTHER)]}).amends(pinned)
