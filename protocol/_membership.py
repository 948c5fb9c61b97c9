"""Who belongs to a network: its genesis, admission certificates and their revocations.

* **Genesis** (``shardnet/genesis``): signed once by the network's first
  authority. It names the network, its admission authorities (Ed25519 keys,
  which are also their peer ids) and K, the signatures an admission needs.
  The network id is a hash of its body; the first 8 hex digits of it are
  part of every protocol id and topic (``wire.scoped``).
* **Admission** (``shardnet/admission``): binds a peer id to its HPKE public
  keys, its roles and its vouched attributes (name, org, country, city,
  continent) from ``issued`` to ``not_after``. It takes effect with K
  authority signatures (``_cosign``).
* **Membership revocation** (``shardnet/member-revoke``): K signatures; it
  voids every admission of that peer issued at or before its time.
* **Join request** (``shardnet/join-request``): what a new node hands the
  authorities out of band, signed by itself; they vet it, and ``admit`` it.

:class:`Membership` is one node's view: the records it has applied and what
follows from them at a given time. Rules: a peer's admission is the one
issued last (ties: the larger id; it supersedes earlier ones, for example a renewal with new
attributes); it counts from ``issued - MAX_CLOCK_SKEW`` until ``not_after``
and only if no revocation is dated at or after it.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any

from ._codec import decode_record, encode, want, want_bytes, want_int
from ._cosign import MAX_SIGNERS, CoSigned, proposal_id
from ._errors import InvalidSignature, MalformedEncoding
from ._geo import continent_of
from ._records import peer_id_of, public_key_of
from ._sign import Signer, open_signed, public_bytes, sign_body
from ._wire import MAX_CLOCK_SKEW

GENESIS_TAG = "shardnet/genesis"
ADMISSION_TAG = "shardnet/admission"
MEMBER_REVOKE_TAG = "shardnet/member-revoke"
JOIN_REQUEST_TAG = "shardnet/join-request"
_NETWORK_ID_DOMAIN = b"shardnet/network-id/v1\x00"

ROLES = ("custodian", "approver", "observer")
MAX_NAME = 128
MAX_REASON = 512
MAX_HPKE_KEY = 2048
#: Times in membership records end before the year 10000 (what dates can print).
MAX_TIME = 253_402_300_799
#: Bytes of one membership record on the wire, signatures included.
MAX_MEMBERSHIP_RECORD = 16 * 1024


def _text(value: Any, what: str, *, empty: bool = True, limit: int = MAX_NAME) -> str:
    want(value, str, what)
    if len(value) > limit or (not empty and not value):
        raise MalformedEncoding(f"{what}: must be {0 if empty else 1} to {limit} characters")
    return str(value)


def _country(value: Any) -> tuple[str, str]:
    cc = _text(value, "country", empty=False)
    try:
        return cc, continent_of(cc)
    except ValueError as exc:
        raise MalformedEncoding(str(exc)) from None


def _hpke(value: Any) -> dict[str, bytes]:
    want(value, dict, "hpke keys")
    if not value or len(value) > 4:
        raise MalformedEncoding("hpke keys: 1 to 4 KEMs")
    out = {}
    for k, v in value.items():
        _text(k, "kem", empty=False)
        pub = want_bytes(v, "HPKE public key")
        if not 0 < len(pub) <= MAX_HPKE_KEY:
            raise MalformedEncoding("HPKE public key: wrong size")
        out[str(k)] = pub
    return out


def hpke_fingerprints(hpke: dict[str, bytes]) -> dict[str, str]:
    """KEM -> the first 16 hex digits of SHA-256 of its public key: what a co-signer
    compares with the join request before it signs."""
    return {k: hashlib.sha256(v).hexdigest()[:16] for k, v in sorted(hpke.items())}


# -- genesis ------------------------------------------------------------------------


@dataclass(frozen=True)
class Genesis:
    name: str
    authorities: tuple[bytes, ...]  # Ed25519 public keys, sorted
    quorum: int  # K: signatures an admission or a membership revocation needs
    created: int
    network_id: bytes
    signed: bytes = field(default=b"", repr=False, compare=False)

    @property
    def prefix(self) -> str:
        """What protocol ids and topics carry: the first 8 hex digits of the id."""
        return self.network_id.hex()[:8]

    @functools.cached_property
    def authority_set(self) -> frozenset[bytes]:
        return frozenset(self.authorities)

    @functools.cached_property
    def _authority_ids(self) -> frozenset[str]:
        return frozenset(peer_id_of(k) for k in self.authorities)

    def is_authority(self, peer_id: str) -> bool:
        """A set lookup: asked for every connected peer and gossip message."""
        return peer_id in self._authority_ids

    @classmethod
    def make(cls, key: Signer, *, name: str, authorities: list[bytes], quorum: int, created: int) -> Genesis:
        keys = sorted(set(authorities) | {public_bytes(key)})
        body = encode([GENESIS_TAG, 1, name, keys, quorum, created])
        return cls.from_bytes(sign_body(key, body))

    @classmethod
    def from_bytes(cls, data: bytes) -> Genesis:
        f, signer, body = open_signed(data, tag=GENESIS_TAG, version=1, fields=4, max_size=8192)
        name = _text(f[0], "network name", empty=False)
        keys = [want_bytes(k, "authority key", 32) for k in want(f[1], list, "authorities")]
        if not 1 <= len(keys) <= MAX_SIGNERS or keys != sorted(set(keys)):
            raise MalformedEncoding(f"genesis: 1 to {MAX_SIGNERS} distinct authorities, sorted")
        quorum = want_int(f[2], "authority quorum", 1, len(keys))
        if signer not in keys:
            raise InvalidSignature("genesis is not signed by one of its authorities")
        nid = hashlib.sha256(_NETWORK_ID_DOMAIN + body).digest()[:16]
        return cls(name, tuple(keys), quorum, want_int(f[3], "created", 0, 2**63), nid, bytes(data))


# -- the records authorities co-sign ------------------------------------------------


@dataclass(frozen=True)
class Admission:
    network_id: bytes
    peer_id: str
    hpke: tuple[tuple[str, bytes], ...]  # (kem, public key), sorted
    roles: tuple[str, ...]
    name: str
    org: str
    country: str
    city: str
    continent: str
    issued: int
    not_after: int
    body: bytes = field(default=b"", repr=False, compare=False)

    @property
    def id(self) -> bytes:
        return proposal_id(self.body)

    @property
    def kems(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.hpke)

    def hpke_key(self, kem: str) -> bytes | None:
        return dict(self.hpke).get(kem)

    @staticmethod
    def make_body(*, network_id: bytes, peer_id: str, hpke: dict[str, bytes], roles: list[str], name: str,
                  org: str, country: str, city: str, issued: int, not_after: int) -> bytes:
        cc = country.upper()
        body = encode([ADMISSION_TAG, 1, network_id, peer_id, hpke, sorted(set(roles)), name, org, cc, city,
                       continent_of(cc), issued, not_after])
        Admission.from_body(body)  # the same checks as a received one
        return body

    @classmethod
    def from_body(cls, body: bytes) -> Admission:
        f = decode_record(body, ADMISSION_TAG, 1, 11, max_size=MAX_MEMBERSHIP_RECORD)
        peer = _text(f[1], "peer id", empty=False)
        public_key_of(peer)
        roles = [_text(r, "role", empty=False) for r in want(f[3], list, "roles")]
        if not roles or roles != sorted(set(roles)) or any(r not in ROLES for r in roles):
            raise MalformedEncoding(f"admission: roles must be a sorted subset of {', '.join(ROLES)}")
        country, continent = _country(f[6])
        if f[8] != continent:
            raise MalformedEncoding("admission: continent does not match the country")
        issued = want_int(f[9], "issued", 0, MAX_TIME - 1)
        not_after = want_int(f[10], "not after", issued + 1, MAX_TIME)
        return cls(
            want_bytes(f[0], "network id", 16), peer, tuple(sorted(_hpke(f[2]).items())), tuple(roles),
            _text(f[4], "name", empty=False), _text(f[5], "org", empty=False), country, _text(f[7], "city"),
            continent, issued, not_after, bytes(body),
        )

    def to_json(self) -> dict[str, Any]:
        return {"peer_id": self.peer_id, "name": self.name, "org": self.org, "country": self.country,
                "city": self.city, "continent": self.continent, "roles": list(self.roles),
                "kems": list(self.kems), "hpke_sha256": hpke_fingerprints(dict(self.hpke)),
                "issued": self.issued, "not_after": self.not_after, "admission": self.id.hex()}


@dataclass(frozen=True)
class MemberRevocation:
    network_id: bytes
    peer_id: str
    reason: str
    time: int
    body: bytes = field(default=b"", repr=False, compare=False)

    @property
    def id(self) -> bytes:
        return proposal_id(self.body)

    @staticmethod
    def make_body(*, network_id: bytes, peer_id: str, reason: str, time: int) -> bytes:
        body = encode([MEMBER_REVOKE_TAG, 1, network_id, peer_id, reason, time])
        MemberRevocation.from_body(body)
        return body

    @classmethod
    def from_body(cls, body: bytes) -> MemberRevocation:
        f = decode_record(body, MEMBER_REVOKE_TAG, 1, 4, max_size=MAX_MEMBERSHIP_RECORD)
        peer = _text(f[1], "peer id", empty=False)
        public_key_of(peer)
        return cls(want_bytes(f[0], "network id", 16), peer, _text(f[2], "reason", empty=False, limit=MAX_REASON),
                   want_int(f[3], "time", 0, MAX_TIME), bytes(body))

    def to_json(self) -> dict[str, Any]:
        return {"peer_id": self.peer_id, "reason": self.reason, "time": self.time, "revocation": self.id.hex()}


MembershipRecord = Admission | MemberRevocation


def parse_body(body: bytes) -> MembershipRecord:
    """The admission or revocation a co-signed body holds (MalformedEncoding for anything else)."""
    try:
        return Admission.from_body(body)
    except MalformedEncoding as first:
        if not str(first).startswith(f"expected a {ADMISSION_TAG} record"):
            raise
    try:
        return MemberRevocation.from_body(body)
    except MalformedEncoding as exc:
        if str(exc).startswith(f"expected a {MEMBER_REVOKE_TAG} record"):
            raise MalformedEncoding("co-signed body is neither an admission nor a membership revocation") from None
        raise


# -- join requests ------------------------------------------------------------------


@dataclass(frozen=True)
class JoinRequest:
    network_id: bytes  # empty if the node had joined no network when it asked
    peer_id: str
    hpke: dict[str, bytes]
    name: str
    org: str
    country: str
    city: str
    time: int
    signed: bytes = field(default=b"", repr=False, compare=False)

    @classmethod
    def make(cls, key: Signer, *, network_id: bytes, hpke: dict[str, bytes], name: str, org: str, country: str,
             city: str, time: int) -> JoinRequest:
        body = encode([JOIN_REQUEST_TAG, 1, network_id, peer_id_of(public_bytes(key)), hpke, name, org,
                       country.upper(), city, time])
        return cls.from_bytes(sign_body(key, body))

    @classmethod
    def from_bytes(cls, data: bytes) -> JoinRequest:
        f, signer, _ = open_signed(data, tag=JOIN_REQUEST_TAG, version=1, fields=8, max_size=MAX_MEMBERSHIP_RECORD)
        nid = want_bytes(f[0], "network id")
        if len(nid) not in (0, 16):
            raise MalformedEncoding("join request: network id is 16 bytes or empty")
        peer = _text(f[1], "peer id", empty=False)
        if peer != peer_id_of(signer):
            raise InvalidSignature("join request is signed by another key than its peer id's")
        country, _ = _country(f[5])
        return cls(nid, peer, _hpke(f[2]), _text(f[3], "name", empty=False), _text(f[4], "org"), country,
                   _text(f[6], "city"), want_int(f[7], "time", 0, 2**63), bytes(data))


# -- one node's view ----------------------------------------------------------------


class NotForThisNetwork(MalformedEncoding):
    """A record of another network, or one that breaks this network's rules."""


class Membership:
    """The admissions and revocations a node has applied, and who is admitted when."""

    def __init__(self, genesis: Genesis) -> None:
        self.genesis = genesis
        self._admissions: dict[str, Admission] = {}  # peer -> the one issued last
        self._revoked: dict[str, MemberRevocation] = {}  # peer -> the latest revocation
        self._ids: set[bytes] = set()  # ids of complete records applied

    # -- checking and applying ------------------------------------------------------

    def check(self, data: bytes, now: int) -> tuple[CoSigned, MembershipRecord]:
        """Verify a co-signed membership record (complete or a proposal) for this network."""
        cs = CoSigned.from_bytes(data, authorities=self.genesis.authority_set, max_size=MAX_MEMBERSHIP_RECORD)
        return cs, self.check_body(cs.body, now)

    def check_body(self, body: bytes, now: int) -> MembershipRecord:
        rec = parse_body(body)
        if rec.network_id != self.genesis.network_id:
            raise NotForThisNetwork(f"membership record of another network ({rec.network_id.hex()[:8]})")
        t = rec.issued if isinstance(rec, Admission) else rec.time
        if t > now + MAX_CLOCK_SKEW:
            raise NotForThisNetwork("membership record dated in the future")
        if isinstance(rec, Admission) and rec.not_after < now - MAX_CLOCK_SKEW:
            raise NotForThisNetwork(f"the admission of {rec.peer_id} expired at {rec.not_after}")
        return rec

    def complete(self, cs: CoSigned) -> bool:
        return cs.complete(self.genesis.quorum)

    def apply(self, cs: CoSigned, rec: MembershipRecord) -> bool:
        """Take a complete record into the view; False if it changes nothing."""
        if not self.complete(cs):
            raise ValueError("a proposal short of the authority quorum cannot be applied")
        return self._apply(rec)

    def restore(self, data: bytes) -> MembershipRecord:
        """Apply a complete record this node verified when it stored it."""
        cs = CoSigned.restore(data, max_size=MAX_MEMBERSHIP_RECORD)
        rec = parse_body(cs.body)
        self._apply(rec)
        return rec

    def _apply(self, rec: MembershipRecord) -> bool:
        if rec.id in self._ids:
            return False
        self._ids.add(rec.id)
        if isinstance(rec, Admission):
            old = self._admissions.get(rec.peer_id)
            if old is None or (rec.issued, rec.id) > (old.issued, old.id):
                self._admissions[rec.peer_id] = rec
        else:
            old_r = self._revoked.get(rec.peer_id)
            if old_r is None or (rec.time, rec.id) > (old_r.time, old_r.id):
                self._revoked[rec.peer_id] = rec
        return True

    def has(self, record_id: bytes) -> bool:
        return record_id in self._ids

    # -- queries --------------------------------------------------------------------

    def state(self, peer: str, now: int) -> str:
        """``admitted``, ``expired``, ``revoked``, ``not-yet`` or ``unknown``."""
        a = self._admissions.get(peer)
        if a is None:
            return "unknown"
        r = self._revoked.get(peer)
        if r is not None and r.time >= a.issued:
            return "revoked"
        if now > a.not_after:
            return "expired"
        if now < a.issued - MAX_CLOCK_SKEW:
            return "not-yet"
        return "admitted"

    def admission(self, peer: str, now: int, role: str | None = None) -> Admission | None:
        """The admission that makes ``peer`` a member now (with ``role``, if given); None otherwise."""
        if self.state(peer, now) != "admitted":
            return None
        a = self._admissions[peer]
        return a if role is None or role in a.roles else None

    def may_connect(self, peer: str, now: int) -> bool:
        """Admitted in any role, or an authority of the network."""
        return self.genesis.is_authority(peer) or self.state(peer, now) == "admitted"

    def admissions(self) -> list[Admission]:
        """The latest admission of every peer ever admitted, by peer id."""
        return [self._admissions[p] for p in sorted(self._admissions)]

    def admissions_of(self, peer: str) -> list[Admission]:
        """The admission in effect for ``peer`` (superseded ones are not kept), or none."""
        a = self._admissions.get(peer)
        return [a] if a is not None else []

    def revocation(self, peer: str) -> MemberRevocation | None:
        return self._revoked.get(peer)

    def __len__(self) -> int:
        return len(self._ids)
