"""Which action a keyset's state calls for (protocol/_triggers.py): reshare away from a
holder that must not keep a share, refresh before expiry or on schedule, rewrap on
schedule; and the order the authorities act in."""

from __future__ import annotations

import dataclasses

from shardnet.protocol import placement
from shardnet.protocol import triggers as tr

NOW = 1_800_000_000
DAY = 86400


def _holder(i: int, country: str, **kw: object) -> tr.Holder:
    peer = f"peer{i}"
    defaults = {"state": "admitted", "issued": NOW - 100 * DAY, "not_after": NOW + 265 * DAY,
                "candidate": placement.Candidate(peer, country, "EU", f"org{i}")}
    return tr.Holder(peer, i, **{**defaults, **kw})  # type: ignore[arg-type]


def _situation(**kw: object) -> tr.Situation:
    base = tr.Situation(
        keyset_id="ab" * 16, epoch=2, holders=tuple(_holder(i, c) for i, c in enumerate(["CH", "JP", "BR"], 1)),
        revoked=frozenset(), revoked_indices=frozenset(), placement=tuple(placement.parse("distinct:country")),
        created=NOW - 10 * DAY, not_after=None, renew=False, refresh_every=None, rewrap_every=None,
        last_epoch_at=NOW - DAY, last_rewrap_at=NOW - DAY)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_nothing_is_due_for_a_healthy_keyset() -> None:
    assert tr.decide(_situation(), NOW) is None and tr.warnings(_situation(), NOW) == []


def test_a_revoked_custodian_is_resharded_away() -> None:
    d = tr.decide(_situation(revoked=frozenset({"peer2"})), NOW)
    assert d is not None and (d.action, d.trigger, d.away) == ("reshare", "revocation", ("peer2",))
    assert "revoked custodian" in d.defeats


def test_membership_revoked_expired_or_ending_within_the_margin_reshares() -> None:
    for kw, why in (({"state": "revoked"}, "is revoked"), ({"state": "expired"}, "is expired"),
                    ({"not_after": NOW + 5 * DAY}, "expires at")):  # 5 of 105 days left: within 10%
        s = _situation(holders=(_holder(1, "CH"), _holder(2, "JP", **kw), _holder(3, "BR")))
        d = tr.decide(s, NOW)
        assert d is not None and (d.action, d.trigger, d.away) == ("reshare", "membership", ("peer2",)), kw
        assert why in d.reason
    s = _situation(holders=(_holder(1, "CH"), _holder(2, "JP", not_after=NOW + 60 * DAY), _holder(3, "BR")))
    assert tr.decide(s, NOW) is None  # 60 of 160 days left: not yet
    # A holder this node has no admission of (its view may not be pulled yet): no trigger.
    s = _situation(holders=(_holder(1, "CH"), _holder(2, "JP", state="unknown"), _holder(3, "BR")))
    assert tr.decide(s, NOW) is None


def test_a_threat_feed_marks_a_custodian_compromised_or_a_country_unsafe() -> None:
    d = tr.decide(_situation(threats=tr.Threats(compromised=frozenset({"peer3"}))), NOW)
    assert d is not None and (d.action, d.trigger, d.away) == ("reshare", "threat-feed", ("peer3",))
    d = tr.decide(_situation(threats=tr.Threats(unsafe=frozenset({("country", "JP")}))), NOW)
    assert d is not None and d.away == ("peer2",) and "country=JP" in d.reason
    d = tr.decide(_situation(threats=tr.Threats(unsafe=frozenset({("org", "org1")})),
                             revoked=frozenset({"peer3"})), NOW)
    assert d is not None and d.away == ("peer1", "peer3") and d.trigger == "revocation,threat-feed"


def test_a_placement_the_holders_break_reshares_them_away() -> None:
    s = _situation(holders=(_holder(1, "CH"), _holder(2, "CH"), _holder(3, "BR")))
    d = tr.decide(s, NOW)
    assert d is not None and (d.action, d.trigger) == ("reshare", "placement") and d.away == ("peer1", "peer2")
    d = tr.decide(_situation(placement=tuple(placement.parse("exclude:country=BR"))), NOW)
    assert d is not None and d.away == ("peer3",)


def test_expiry_refreshes_with_a_new_not_after_only_when_renewal_is_allowed() -> None:
    ending = {"created": NOW - 95 * DAY, "not_after": NOW + 5 * DAY}
    d = tr.decide(_situation(renew=True, **ending), NOW)
    assert d is not None and (d.action, d.trigger, d.renew) == ("refresh", "expiry", True)
    s = _situation(renew=False, **ending)
    assert tr.decide(s, NOW) is None
    assert "not renewed" in tr.warnings(s, NOW)[0]
    assert "expired" in tr.warnings(s, NOW + 6 * DAY)[0]
    assert tr.decide(_situation(renew=True, created=NOW - 50 * DAY, not_after=NOW + 50 * DAY), NOW) is None
    # A renewed lifetime's margin is 10% of the first lifetime, counted from the renewal: a keyset
    # renewed many times over is not due again at once (its age is not its lifetime).
    old = _situation(renew=True, created=NOW - 1000 * DAY, not_after=NOW + 95 * DAY, lifetime=100 * DAY)
    assert tr.decide(old, NOW) is None and tr.decide(old, NOW + 86 * DAY) is not None
    # Past the not-after, nothing is renewed (expired shards are dealt by nobody), and it says so.
    assert tr.decide(_situation(renew=True, **ending), NOW + 6 * DAY) is None
    assert "expired" in tr.warnings(_situation(renew=True, **ending), NOW + 6 * DAY)[0]
    # A renewal that is overdue (half the margin gone) is warned about.
    assert tr.warnings(_situation(renew=True, **ending), NOW - 2 * DAY) == []  # 7 of its 10 margin days left
    assert "has not happened" in tr.warnings(_situation(renew=True, **ending), NOW + 3 * DAY)[0]


def test_schedules_refresh_then_rewrap() -> None:
    s = _situation(refresh_every=7 * DAY, rewrap_every=DAY, last_epoch_at=NOW - 8 * DAY, last_rewrap_at=NOW - 2 * DAY)
    d = tr.decide(s, NOW)
    assert d is not None and (d.action, d.trigger) == ("refresh", "schedule")
    d = tr.decide(dataclasses.replace(s, last_epoch_at=NOW - 3 * DAY), NOW)
    assert d is not None and (d.action, d.trigger) == ("rewrap", "schedule")
    assert tr.decide(dataclasses.replace(s, last_epoch_at=NOW - 3 * DAY, last_rewrap_at=NOW - 3600), NOW) is None
    # A revoked shard index: a reshare deals every index anew (a refresh would keep it).
    d = tr.decide(dataclasses.replace(s, rewrap_every=None, revoked_indices=frozenset({2})), NOW)
    assert d is not None and (d.action, d.trigger, d.away) == ("reshare", "revocation", ())


def test_authorities_take_turns_by_keyset_and_epoch() -> None:
    auth = ("c", "a", "b")
    assert tr.leader(auth, "00000000" + "0" * 24, 0) == ("a", "b", "c")
    assert tr.leader(auth, "00000000" + "0" * 24, 1) == ("b", "c", "a")
    assert tr.leader(auth, "00000002" + "0" * 24, 0) == ("c", "a", "b")
    assert tr.leader((), "00" * 16, 0) == ()


def test_a_renewal_moves_the_not_after_only_if_the_keyset_allows_it() -> None:
    import pytest
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from shardnet import protocol as p
    from shardnet.protocol import epoch_records as er

    from .drbg import Drbg

    owner = Ed25519PrivateKey.from_private_bytes(b"\x01" * 32)
    for renew in (True, False):
        ks, _ = p.split_key(b"k" * 32, 2, 3, owner=owner, now=NOW, not_after=NOW + 100 * DAY,
                            attrs={"renew": True} if renew else {}, rng=Drbg(b"renew"))
        er.check_not_after(ks, None, ks.not_after, NOW + 95 * DAY)  # kept: always fine
        later = NOW + 195 * DAY
        if renew:
            er.check_not_after(ks, None, later, NOW + 95 * DAY)
            with pytest.raises(p.MalformedEncoding, match="first lifetime"):  # longer than its first lifetime
                er.check_not_after(ks, None, later + DAY, NOW + 95 * DAY)
            with pytest.raises(p.MalformedEncoding, match="never earlier"):
                er.check_not_after(ks, None, NOW + 50 * DAY, NOW + 40 * DAY)
        else:
            with pytest.raises(p.MalformedEncoding, match="--renew"):
                er.check_not_after(ks, None, later, NOW + 95 * DAY)
