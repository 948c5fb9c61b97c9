"""Networks and who belongs to them: genesis, co-signed admissions and revocations (sans-IO)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.protocol import hazmat, wire
from shardnet.protocol import membership as m

CoSigned = p.cosign.CoSigned

NOW = 1_800_000_000


def key(i: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32)


def pub(k: Ed25519PrivateKey) -> bytes:
    return k.public_key().public_bytes_raw()


def pid(k: Ed25519PrivateKey) -> str:
    return p.peer_id_of(pub(k))


A1, A2, A3, OUTSIDER = key(1), key(2), key(3), key(9)


def genesis(quorum: int = 2, name: str = "test") -> m.Genesis:
    return m.Genesis.make(A1, name=name, authorities=[pub(A2), pub(A3)], quorum=quorum, created=NOW)


def admission(g: m.Genesis, who: Ed25519PrivateKey, *, issued: int = NOW, ttl: int = 86400,
              roles: tuple[str, ...] = ("custodian",), country: str = "DE") -> bytes:
    return m.Admission.make_body(network_id=g.network_id, peer_id=pid(who), hpke={"x25519": b"k" * 32},
                                 roles=list(roles), name="n", org="Org", country=country, city="",
                                 issued=issued, not_after=issued + ttl)


def cosigned(body: bytes, *signers: Ed25519PrivateKey) -> bytes:
    cs = CoSigned.propose(signers[0], body)
    for s in signers[1:]:
        cs = cs.signed_by(s)
    return cs.to_bytes()


# -- genesis ----------------------------------------------------------------------


def test_genesis_round_trips_and_its_id_is_its_content() -> None:
    g = genesis()
    again = m.Genesis.from_bytes(g.signed)
    assert again == g and len(g.network_id) == 16 and g.prefix == g.network_id.hex()[:8]
    assert g.authorities == tuple(sorted(pub(k) for k in (A1, A2, A3))) and g.quorum == 2
    assert genesis(name="other").network_id != g.network_id
    assert g.is_authority(pid(A2)) and not g.is_authority(pid(OUTSIDER)) and not g.is_authority("junk")


def test_genesis_quorum_must_fit_the_authorities() -> None:
    with pytest.raises(p.MalformedEncoding, match="authority quorum"):
        genesis(quorum=4)
    with pytest.raises(p.MalformedEncoding, match="authority quorum"):
        genesis(quorum=0)


def test_a_tampered_genesis_does_not_verify() -> None:
    data = bytearray(genesis().signed)
    data[data.index(b"test")] ^= 1
    with pytest.raises((p.InvalidSignature, p.MalformedEncoding)):
        m.Genesis.from_bytes(bytes(data))


def test_protocol_ids_and_topics_carry_the_network_prefix() -> None:
    assert wire.scoped(wire.DELIVER.id, "0123abcd") == "/shardnet/0123abcd/deliver/1"
    assert wire.scoped(wire.DIRECTORY_TOPIC.name, "0123abcd") == "shardnet/0123abcd/directory/1"
    with pytest.raises(ValueError):
        wire.scoped(wire.DELIVER.id, "short")


# -- co-signatures ----------------------------------------------------------------


def test_signatures_gather_merge_and_complete() -> None:
    g = genesis()
    body = admission(g, OUTSIDER)
    one = CoSigned.propose(A1, body)
    assert not one.complete(2) and one.signed_by(A1) is one
    other = CoSigned.propose(A3, body)
    both = one.merged(other)
    assert both.complete(2) and both.signers == {pub(A1), pub(A3)} and both.id == one.id
    again = CoSigned.from_bytes(both.to_bytes(), authorities=g.authority_set, max_size=m.MAX_MEMBERSHIP_RECORD)
    assert again == both


def test_a_signature_from_a_non_authority_or_twice_or_forged_is_refused() -> None:
    g = genesis()
    body = admission(g, OUTSIDER)
    with pytest.raises(p.InvalidSignature, match="not an authority"):
        CoSigned.from_bytes(cosigned(body, A1, OUTSIDER), authorities=g.authority_set, max_size=1 << 14)
    cs = CoSigned.propose(A1, body)
    twice = CoSigned(body, (cs.signatures[0], cs.signatures[0]))
    with pytest.raises(p.MalformedEncoding, match="twice"):
        CoSigned.from_bytes(twice.to_bytes(), authorities=g.authority_set, max_size=1 << 14)
    forged = CoSigned(body, ((pub(A2), cs.signatures[0][1]),))  # A1's signature under A2's key
    with pytest.raises(p.InvalidSignature):
        CoSigned.from_bytes(forged.to_bytes(), authorities=g.authority_set, max_size=1 << 14)
    with pytest.raises(p.MalformedEncoding, match="no signature"):
        CoSigned.from_bytes(CoSigned(body, ()).to_bytes(), authorities=g.authority_set, max_size=1 << 14)


# -- records ----------------------------------------------------------------------


def test_admission_fields_are_checked() -> None:
    g = genesis()
    with pytest.raises(p.MalformedEncoding, match="roles"):
        admission(g, OUTSIDER, roles=("king",))
    with pytest.raises(p.MalformedEncoding, match="not after"):
        admission(g, OUTSIDER, ttl=0)
    with pytest.raises(ValueError, match="unknown country"):
        admission(g, OUTSIDER, country="XX")
    a = m.Admission.from_body(admission(g, OUTSIDER, roles=("custodian", "approver")))
    assert a.roles == ("approver", "custodian") and a.continent == "EU" and a.hpke_key("x25519") == b"k" * 32


def test_join_request_is_signed_by_the_peer_it_names() -> None:
    j = m.JoinRequest.make(OUTSIDER, network_id=b"", hpke={"x25519": b"k" * 32}, name="n", org="", country="ke",
                           city="Nairobi", time=NOW)
    assert m.JoinRequest.from_bytes(j.signed) == j and j.peer_id == pid(OUTSIDER) and j.country == "KE"
    data = bytearray(j.signed)
    data[data.index(b"Nairobi")] ^= 1
    with pytest.raises(p.InvalidSignature):
        m.JoinRequest.from_bytes(bytes(data))


# -- the view ---------------------------------------------------------------------


def test_only_a_complete_record_of_this_network_is_applied() -> None:
    g = genesis()
    view = m.Membership(g)
    cs, rec = view.check(cosigned(admission(g, OUTSIDER), A1), NOW)
    assert not view.complete(cs)
    with pytest.raises(ValueError, match="short of"):
        view.apply(cs, rec)
    assert view.state(pid(OUTSIDER), NOW) == "unknown"
    cs, rec = view.check(cosigned(admission(g, OUTSIDER), A1, A2), NOW)
    assert view.apply(cs, rec) and not view.apply(cs, rec)
    assert view.admission(pid(OUTSIDER), NOW, "custodian") == rec and view.may_connect(pid(OUTSIDER), NOW)
    assert view.admission(pid(OUTSIDER), NOW, "approver") is None


def test_forged_certificates_are_never_applied() -> None:
    g, other = genesis(), genesis(name="elsewhere")
    view = m.Membership(g)
    forgeries = {
        "another network": cosigned(admission(other, OUTSIDER), A1, A2),
        "non-authorities": cosigned(admission(g, OUTSIDER), OUTSIDER, key(8)),
        "expired": cosigned(admission(g, OUTSIDER, issued=NOW - 7200, ttl=3600), A1, A2),
        "from the future": cosigned(admission(g, OUTSIDER, issued=NOW + 3600), A1, A2),
    }
    for what, data in forgeries.items():
        with pytest.raises(p.ShardnetError):
            view.check(data, NOW)
            pytest.fail(f"a certificate {what} was accepted")
    assert len(view) == 0 and not view.may_connect(pid(OUTSIDER), NOW)


def test_revocation_voids_earlier_admissions_and_a_later_one_readmits() -> None:
    g = genesis()
    view = m.Membership(g)
    view.apply(*view.check(cosigned(admission(g, OUTSIDER), A1, A2), NOW))
    revoke = m.MemberRevocation.make_body(network_id=g.network_id, peer_id=pid(OUTSIDER), reason="left",
                                          time=NOW + 10)
    view.apply(*view.check(cosigned(revoke, A2, A3), NOW + 10))
    assert view.state(pid(OUTSIDER), NOW + 11) == "revoked" and view.admission(pid(OUTSIDER), NOW + 11) is None
    assert view.revocation(pid(OUTSIDER)).reason == "left"  # type: ignore[union-attr]
    view.apply(*view.check(cosigned(admission(g, OUTSIDER, issued=NOW + 20), A1, A3), NOW + 20))
    assert view.state(pid(OUTSIDER), NOW + 21) == "admitted"


def test_an_admission_expires_and_the_latest_issued_wins() -> None:
    g = genesis()
    view = m.Membership(g)
    view.apply(*view.check(cosigned(admission(g, OUTSIDER, ttl=100), A1, A2), NOW))
    assert view.state(pid(OUTSIDER), NOW + 101) == "expired"
    later = cosigned(admission(g, OUTSIDER, issued=NOW + 50, ttl=1000, country="KE"), A1, A2)
    view.apply(*view.check(later, NOW + 60))
    older = cosigned(admission(g, OUTSIDER, issued=NOW + 1, ttl=10**6, country="JP"), A1, A2)
    view.apply(*view.check(older, NOW + 60))  # applied, but superseded by the later one
    a = view.admission(pid(OUTSIDER), NOW + 101)
    assert a is not None and a.country == "KE"


def test_restore_takes_stored_records_without_checking_them_again() -> None:
    g = genesis()
    data = cosigned(admission(g, OUTSIDER), A1, A2)
    view = m.Membership(g)
    before = hazmat.verifications()
    view.restore(data)
    assert hazmat.verifications() == before and view.state(pid(OUTSIDER), NOW) == "admitted"


# -- the node's membership service (real SQLite in memory) -------------------------


def _members(g: m.Genesis, key: Ed25519PrivateKey) -> Any:
    from shardnet.node._members import Members
    from shardnet.node._store import Store

    store = Store(":memory:")
    store.set_network(g.network_id, g.signed, now=NOW)
    return Members(store, key, g)


def test_pulls_converge_between_nodes_holding_different_complete_subsets() -> None:
    g = genesis()
    a, b = _members(g, A1), _members(g, A2)
    body = admission(g, OUTSIDER)
    assert a.accept(cosigned(body, A1, A2), NOW) == "applied"
    assert b.accept(cosigned(body, A1, A3), NOW) == "applied"
    assert p.decode(b.pull_reply(a.summary())) == [] and p.decode(a.pull_reply(b.summary())) == []


def test_a_record_that_adds_nothing_is_refused_before_any_signature_check() -> None:
    g = genesis(quorum=3)
    a = _members(g, A1)
    body = admission(g, OUTSIDER)
    assert a.accept(cosigned(body, A1, A2), NOW) == "proposal"
    before = hazmat.verifications()
    assert a.accept(cosigned(body, A2), NOW) is None and hazmat.verifications() == before
    assert a.accept(cosigned(body, A3), NOW) == "applied"  # the third signature: in effect
    before = hazmat.verifications()
    assert a.accept(cosigned(body, A1, A2, A3), NOW) is None and hazmat.verifications() == before


def test_one_authority_cannot_fill_the_room_for_proposals() -> None:
    from shardnet.node._members import PROPOSALS_PER_AUTHORITY

    g = genesis(quorum=3)
    a = _members(g, A1)
    mine = [admission(g, key(100 + i)) for i in range(PROPOSALS_PER_AUTHORITY + 1)]
    taken = [a.accept(cosigned(body, A2), NOW) for body in mine]
    assert taken.count("proposal") == PROPOSALS_PER_AUTHORITY and taken[-1] is None
    # Another authority's proposal still finds room, and A2 may still sign it.
    assert a.accept(cosigned(admission(g, key(99)), A3), NOW) == "proposal"
    assert a.accept(cosigned(admission(g, key(99)), A3, A2), NOW) == "proposal"


# -- proof of possession ----------------------------------------------------------


@pytest.mark.parametrize("kem", p.KEMS)
def test_a_custodian_proves_it_holds_its_key_and_a_liar_cannot(kem: str) -> None:
    owner, custodian = pid(A1), OUTSIDER
    real = p.HpkePrivateKey.generate(kem, os.urandom)
    ch = p.possession.Challenge.make(kem, real.public_bytes(), challenger=owner, rng=os.urandom)
    proof = p.possession.answer(ch.frame, {kem: real}, challenger=owner, key=custodian)
    ch.check(proof, custodian=pid(custodian), challenger=owner)
    # A custodian whose admission names a key it does not hold cannot open the challenge.
    other = p.HpkePrivateKey.generate(kem, os.urandom)
    with pytest.raises(p.DecryptionFailed):
        p.possession.answer(ch.frame, {kem: other}, challenger=owner, key=custodian)
    # Asked by someone else, the custodian builds another info: the same bytes do not open.
    with pytest.raises(p.DecryptionFailed):
        p.possession.answer(ch.frame, {kem: real}, challenger=pid(A2), key=custodian)
    # An answer signed by another key, or to another challenge, does not count.
    with pytest.raises(p.possession.PossessionFailed):
        ch.check(proof, custodian=pid(A3), challenger=owner)
    again = p.possession.Challenge.make(kem, real.public_bytes(), challenger=owner, rng=os.urandom)
    with pytest.raises(p.possession.PossessionFailed):
        again.check(proof, custodian=pid(custodian), challenger=owner)


def test_a_captured_shard_cannot_be_opened_through_a_challenge() -> None:
    """The custodian opens only under the info it builds; a shard's info is its signed metadata."""
    kem = "x25519"
    hpke = p.HpkePrivateKey.generate(kem, os.urandom)
    keyset, shares = p.split_key(b"m" * 32, 2, 3, owner=A1, now=NOW)
    meta = p.ShardMeta(keyset.keyset_id, 0, 1, 3, 2, pid(OUTSIDER), NOW, None, keyset.policy_hash,
                       keyset.commitments_digest, kem)
    sealed = p.seal_shard(meta, shares[0], hpke.public_bytes(), owner=A1)
    ct = p.decode(sealed)[3]  # [shard tag, 1, signed metadata, ciphertext]
    frame = p.encode([p.possession.CHALLENGE_TAG, 1, kem, b"\x00" * 16, ct])
    with pytest.raises(p.DecryptionFailed):
        p.possession.answer(frame, {kem: hpke}, challenger=pid(A2), key=OUTSIDER)
