"""The network this node belongs to, and who else does (house style 4: a plain class).

``Members`` holds the node's :class:`~shardnet.protocol.membership.Membership`
view, made from its store when it starts, and everything that changes it:

* a co-signed record from gossip, a pull or the operator: verified against
  the genesis authorities, then applied if complete (K signatures) or kept
  as a proposal (at most ``wire.MAX_PROPOSALS``; only authorities can sign
  one, so only they can fill that room);
* ``admit`` and ``revoke_member``: a new proposal, signed by this node, which
  must be an authority; ``sign``: this node's signature added to a proposal.

What the rest of the node asks: may a peer connect at all (admitted in some
role, or an authority), and which admitted custodians with which vouched
attributes may hold a shard now.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

from shardnet import protocol as p
from shardnet.protocol import (
    Admission,
    CoSigned,
    Genesis,
    JoinRequest,
    MemberRevocation,
    Membership,
    directory_pull,
    wire,
)

from ._store import AuditEvent, Store

MAX_MEMBERSHIP_RECORD = p.membership.MAX_MEMBERSHIP_RECORD
MembershipRecord = Admission | MemberRevocation

#: Seconds an open proposal is kept after its last new signature.
PROPOSAL_TTL = 7 * 86400
#: Open proposals one authority's signature may be on (of ``wire.MAX_PROPOSALS`` in all).
PROPOSALS_PER_AUTHORITY = 32


class NoNetwork(Exception):
    """This home has joined no network yet."""


class AlreadyHeld(p.ShardnetError):
    """A membership record that adds nothing to what this node holds."""


class ProposalsFull(p.ShardnetError):
    """No room for another open proposal."""


class NotAnAuthority(p.ShardnetError):
    """Only the network's admission authorities propose and sign membership records."""


def _kind(rec: MembershipRecord) -> str:
    return "admission" if isinstance(rec, Admission) else "revocation"


def _time(rec: MembershipRecord) -> int:
    return rec.issued if isinstance(rec, Admission) else rec.time


class Members:
    def __init__(self, store: Store, key: p.Signer, genesis: Genesis) -> None:
        self.store = store
        self.key = key
        self.peer_id = p.peer_id_of(key.public_key().public_bytes_raw())
        self.genesis = genesis
        self.view = Membership(genesis)
        self._held: dict[bytes, tuple[int, bytes]] = {}  # record id -> (signatures, co-signed bytes)
        self._checked: OrderedDict[bytes, tuple[CoSigned, MembershipRecord]] = OrderedDict()
        self._summary: bytes | None = None
        for data in store.membership_records():
            rec = self.view.restore(data)
            self._hold(rec.id, data, genesis.quorum)  # complete: seq K (see _take)
        for row in store.proposals():
            self._hold(bytes.fromhex(row["proposal_id"]), row["record"], row["signatures"])

    @classmethod
    def of(cls, store: Store, key: p.Signer) -> Members:
        raw = store.genesis()
        if raw is None:
            raise NoNetwork("this home belongs to no network: create one with `shardnet network create`, "
                            "or join one with `shardnet network join`")
        return cls(store, key, Genesis.from_bytes(raw))

    @property
    def prefix(self) -> str:
        return self.genesis.prefix

    def _hold(self, rid: bytes, data: bytes, sigs: int) -> None:
        held = self._held.get(rid)
        if held is None or held[0] < sigs:
            self._held[rid] = (sigs, bytes(data))
            self._summary = None

    # -- what the rest of the node asks ---------------------------------------------

    def may_connect(self, peer: str, now: int) -> bool:
        return peer == self.peer_id or self.view.may_connect(peer, now)

    def admission(self, peer: str, now: int, role: str | None = None) -> Admission | None:
        return self.view.admission(peer, now, role)

    def custodians(self, now: int) -> list[Admission]:
        """Every peer admitted as a custodian now, by peer id."""
        return [a for a in self.view.admissions() if self.view.admission(a.peer_id, now, "custodian")]

    def listing(self, now: int) -> list[dict[str, Any]]:
        out = []
        for a in self.view.admissions():
            row = a.to_json() | {"state": self.view.state(a.peer_id, now)}
            r = self.view.revocation(a.peer_id)
            if r is not None and row["state"] == "revoked":
                row["revoked"] = r.to_json()
            out.append(row)
        return out

    # -- records in ---------------------------------------------------------------

    def check(self, data: bytes, now: int) -> tuple[CoSigned, MembershipRecord]:
        """Verify a co-signed record (the gossip validator's check, kept for accept())."""
        digest = hashlib.sha256(data).digest()
        hit = self._checked.get(digest)
        if hit is not None:
            self.view.check_body(hit[0].body, now)  # the times again: now has moved
            return hit
        self._no_news(data)
        got = self.view.check(data, now)
        self._checked[digest] = got
        if len(self._checked) > 32:  # what one burst of gossip brings before accept() runs
            self._checked.popitem(last=False)
        return got

    def _no_news(self, data: bytes) -> None:
        """Refuse, before any signature is checked, a record that cannot add anything: one
        in effect already, or a subset of the signatures of a proposal we hold. Any subset
        of a public record's signatures verifies, so without this each would cost every
        node its signature checks."""
        try:
            cs = CoSigned.restore(data, max_size=MAX_MEMBERSHIP_RECORD)
        except p.ShardnetError:
            return  # the full check names what is wrong
        held = self._held.get(cs.id)
        if held is None:
            return
        if self.view.has(cs.id):
            raise AlreadyHeld("membership record already in effect")
        if cs.signers <= CoSigned.restore(held[1], max_size=MAX_MEMBERSHIP_RECORD).signers:
            raise AlreadyHeld("no signature this node does not hold already")

    def accept(self, data: bytes, now: int) -> str | None:
        """Take a co-signed record in: ``applied`` (complete, and new to the view),
        ``proposal`` (kept, or more signatures for one kept), or None if it adds
        nothing. Raises ShardnetError for a record that does not verify."""
        try:
            cs, rec = self.check(data, now)
        except AlreadyHeld:
            return None
        return self._take(cs, rec, now)

    def _take(self, cs: CoSigned, rec: MembershipRecord, now: int) -> str | None:
        rid = rec.id
        held = self._held.get(rid)
        if held is not None and not self.view.complete(cs):
            cs = cs.merged(CoSigned.restore(held[1], max_size=MAX_MEMBERSHIP_RECORD))
            if len(cs.signatures) <= held[0]:
                return None
        if self.view.complete(cs):
            # A complete record is summarised with seq = K whatever its signature count, so
            # that pulls between nodes holding different complete subsets converge.
            if self.view.has(rid):
                return None
            data = cs.to_bytes()
            body = rec.to_json() | {"kind": _kind(rec), "signers": sorted(
                p.peer_id_of(k) for k in cs.signers)}
            stored = self.store.put_membership(rec.peer_id, _kind(rec), rid, data, time=_time(rec), now=now,
                                               audit=AuditEvent("membership", body, self.key))
            self.view.apply(cs, rec)  # superseded or not, the view ignores it the same way
            self._hold(rid, data, self.genesis.quorum)
            return "applied" if stored else None
        data = cs.to_bytes()
        if held is None and self._over_quota(cs.signers):
            return None
        if not self.store.put_proposal(rid.hex(), _kind(rec), rec.peer_id, data, signatures=len(cs.signatures),
                                       now=now, limit=wire.MAX_PROPOSALS):
            return None
        self._hold(rid, data, len(cs.signatures))
        return "proposal"

    def _over_quota(self, signers: frozenset[bytes]) -> bool:
        """Whether one of ``signers`` already signed ``PROPOSALS_PER_AUTHORITY`` open
        proposals: one authority cannot fill the room that all of them share."""
        counts: dict[bytes, int] = {}
        for n, data in self._held.values():
            if n < self.genesis.quorum:
                for k in CoSigned.restore(data, max_size=MAX_MEMBERSHIP_RECORD).signers:
                    counts[k] = counts.get(k, 0) + 1
        return any(counts.get(k, 0) >= PROPOSALS_PER_AUTHORITY for k in signers)

    # -- what an authority does ---------------------------------------------------

    def _propose(self, body: bytes, now: int) -> tuple[CoSigned, str | None]:
        if not self.genesis.is_authority(self.peer_id):
            raise NotAnAuthority(f"this node is not an admission authority of network {self.prefix}")
        rec = self.view.check_body(body, now)
        cs = CoSigned.propose(self.key, body)
        outcome = self._take(cs, rec, now)
        if outcome is None and not self.view.has(rec.id) and rec.id not in self._held:
            raise ProposalsFull(f"no room for another open proposal (at most {wire.MAX_PROPOSALS}, "
                                f"{PROPOSALS_PER_AUTHORITY} signed by one authority): get the open ones "
                                "signed, or let them expire (shardnet proposals)")
        return cs, outcome

    def admit(self, join: JoinRequest | str, *, org: str, country: str, city: str | None, roles: list[str],
              name: str | None, hpke: dict[str, bytes] | None, now: int, expires: int
              ) -> tuple[CoSigned, str | None]:
        """Propose the admission of a peer (from its join request, or a peer id and its
        HPKE keys); complete at once when this node's signature is the K-th."""
        if isinstance(join, JoinRequest):
            if join.network_id not in (b"", self.genesis.network_id):
                raise ValueError(f"the join request is for network {join.network_id.hex()[:8]}, "
                                 f"not {self.prefix}")
            peer, keys, name = join.peer_id, join.hpke, name or join.name
            city = join.city if city is None else city
        else:
            peer, keys = join, hpke or {}
            if not keys:
                raise ValueError(f"no HPKE keys known for {peer}: admit it from its join request "
                                 "(`shardnet network request`)")
        waiting = [r["proposal_id"][:12] for r in self.store.proposals()
                   if r["peer_id"] == peer and r["kind"] == "admission"]
        if waiting:
            raise ValueError(f"an admission of {peer} waits for signatures already (proposal {waiting[0]}): "
                             "sign that one, or let it expire")
        body = Admission.make_body(network_id=self.genesis.network_id, peer_id=peer, hpke=keys, roles=roles,
                                   name=name or peer[:12], org=org, country=country, city=city or "",
                                   issued=now, not_after=now + expires)
        return self._propose(body, now)

    def revoke_member(self, peer: str, reason: str, now: int) -> tuple[CoSigned, str | None]:
        p.public_key_of(peer)
        current = self.view.admissions_of(peer)
        if not current:
            raise ValueError(f"{peer} has no admission in this network: nothing to revoke")
        # Dated no earlier than the admission it voids, whatever this node's clock says.
        t = max([now, *[a.issued for a in current]])
        body = MemberRevocation.make_body(network_id=self.genesis.network_id, peer_id=peer, reason=reason, time=t)
        return self._propose(body, now)

    def proposals(self, now: int) -> list[dict[str, Any]]:
        out = []
        for row in self.store.proposals():
            cs = CoSigned.restore(row["record"], max_size=MAX_MEMBERSHIP_RECORD)
            rec = p.membership.parse_body(cs.body)
            out.append({"proposal": row["proposal_id"], "kind": row["kind"], "peer_id": row["peer_id"],
                        "signatures": row["signatures"], "needed": self.genesis.quorum,
                        "signers": sorted(p.peer_id_of(k) for k in cs.signers),
                        "signed_by_me": self.key.public_key().public_bytes_raw() in cs.signers,
                        "created": row["created"], "record": rec.to_json()})
        return out

    def sign(self, proposal_id: str, now: int) -> tuple[CoSigned, str | None]:
        """Add this node's signature to an open proposal."""
        if not self.genesis.is_authority(self.peer_id):
            raise NotAnAuthority(f"this node is not an admission authority of network {self.prefix}")
        row = self.store.proposal(proposal_id)
        if row is None:
            if any(rid.hex().startswith(proposal_id.lower()) for rid in self._held):
                raise LookupError(f"proposal {proposal_id} already has its signatures and is in effect")
            raise LookupError(f"no open proposal {proposal_id} (see `shardnet proposals`)")
        cs = CoSigned.restore(row["record"], max_size=MAX_MEMBERSHIP_RECORD)
        if self.key.public_key().public_bytes_raw() in cs.signers:
            raise ValueError(f"this node has signed proposal {row['proposal_id'][:12]} already")
        rec = self.view.check_body(cs.body, now)
        cs = cs.signed_by(self.key)
        return cs, self._take(cs, rec, now)

    def expire_proposals(self, now: int) -> int:
        dropped = self.store.drop_proposals(updated_before=now - PROPOSAL_TTL)
        if dropped:
            keep = {bytes.fromhex(r["proposal_id"]) for r in self.store.proposals()}
            for rid in [r for r, (n, _) in self._held.items() if n < self.genesis.quorum and r not in keep]:
                del self._held[rid]
            self._summary = None
        return dropped

    # -- anti-entropy -------------------------------------------------------------

    def _summary_now(self) -> bytes:
        if self._summary is None:
            self._summary = directory_pull.summary((rid, n) for rid, (n, _) in self._held.items())
        return self._summary

    def summary(self) -> bytes:
        return directory_pull.encode_pull(self._summary_now())

    def pull_reply(self, frame: bytes) -> bytes:
        theirs = directory_pull.decode_pull(frame)
        return directory_pull.pull_reply(((rid, n, d) for rid, (n, d) in self._held.items()), theirs,
                                         self._summary_now())
