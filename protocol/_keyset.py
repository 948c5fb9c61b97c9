"""Keysets: split a master key, and get it back (recipes over the VSS math).

The master key (any length, 1 byte to 64 KiB) is sealed KEM-DEM style:

* ``s`` is a fresh random scalar, shared t-of-n with Feldman VSS;
* ``k_dem = HKDF-SHA256(s, salt=keyset_id, info=DEM_INFO || genesis)``;
* ``master_ct = ChaCha20-Poly1305(k_dem, nonce, master, aad=genesis)``;
* for threshold unwrap, ``k_dem`` is also sealed to ``S = s·G``: with random
  ``r``, ``R = r·G`` and ``k_wrap = HKDF(r·S || R)``, ``unwrap_ct =
  AEAD(k_wrap, k_dem, aad=genesis)``. Anyone holding t partials ``s_i·R``
  gets ``s·R = r·S`` without ``s`` ever being assembled.

``genesis`` is the canonical keyset header at epoch 0 (keyset id, epoch, t, n,
commitments digest, suite, created). It is the AEAD's associated data for the
life of the keyset: refresh and reshare keep ``s`` (so the ciphertexts stay
valid) and the signed record carries the current epoch's t, n and commitments
beside it.

The signed keyset record also keeps a binding digest of ``s``, so combine can
take the fast path (interpolate, compare one hash) and verify shares one by one
only when that fails.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import _group as g
from . import _vss as vss
from ._codec import encode, want, want_bytes, want_int
from ._errors import (
    DecryptionFailed,
    DuplicateShare,
    InvalidShare,
    InvalidShares,
    InvalidSignature,
    MalformedEncoding,
    MixedShares,
    TooFewShares,
)
from ._sign import Signer, open_signed, public_bytes, sign_body

KEYSET_TAG = "shardnet/keyset"
HEADER_TAG = "shardnet/keyset-header"
KEMS = ("x25519", "mlkem768-x25519")
MAX_MASTER = 64 * 1024
KEYSET_ID_LEN = 16
DEM_INFO = b"shardnet/dem/v1\x00"
WRAP_INFO = b"shardnet/unwrap/v1\x00"
DIGEST_TAG = b"shardnet/secret-digest/v1\x00"
COMMIT_TAG = b"shardnet/commitments/v1\x00"
KEYSET_ID_TAG = b"shardnet/keyset-id/v1\x00"
MAX_EPOCH = 2**32 - 1
MAX_RECORD = 256 * 1024


def derive_keyset_id(owner: bytes, nonce: bytes) -> bytes:
    """A keyset id is bound to its owner's key: nobody else can sign a record with it."""
    return hashlib.sha256(KEYSET_ID_TAG + owner + nonce).digest()[:KEYSET_ID_LEN]


def check_attrs(attrs: dict[str, Any], t: int, n: int) -> dict[str, Any]:
    """Type-check the node-level attributes a keyset record carries (owner-signed, still untrusted)."""
    from ._records import public_key_of

    def peers(value: Any, what: str) -> list[str]:
        if not isinstance(value, list) or len(value) > vss.MAX_SHARES:
            raise MalformedEncoding(f"keyset attrs: {what} must be a list of peer ids")
        for v in value:
            try:
                public_key_of(v)
            except MalformedEncoding as exc:
                raise MalformedEncoding(f"keyset attrs: {what}: {exc}") from None
        return value

    holders = attrs.get("holders", {})
    if not isinstance(holders, dict):
        raise MalformedEncoding("keyset attrs: holders must map indices to peer ids")
    for i, hs in holders.items():
        if not (isinstance(i, str) and i.isascii() and i.isdigit() and len(i) <= 4 and 1 <= int(i) <= n):
            raise MalformedEncoding(f"keyset attrs: holder index {str(i)[:10]!r} out of range")
        peers(hs, "holders")
    approvers = peers(attrs.get("approvers", []), "approvers")
    peers(attrs.get("custodians", []), "custodians")
    quorum = attrs.get("quorum", t)
    if not isinstance(quorum, int) or isinstance(quorum, bool) or not 1 <= quorum <= vss.MAX_SHARES:
        raise MalformedEncoding("keyset attrs: quorum must be a positive integer")
    if approvers and quorum > len(approvers):
        raise MalformedEncoding("keyset attrs: quorum exceeds the number of approvers")
    authorities = peers(attrs.get("authorities", []), "authorities")
    if len(set(authorities)) != len(authorities) or len(authorities) > 32:
        raise MalformedEncoding("keyset attrs: at most 32 distinct authorities")
    k = attrs.get("authority_quorum", 1)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max(1, len(authorities)):
        raise MalformedEncoding("keyset attrs: authority quorum must be 1 to the number of authorities")
    if authorities and 2 * k <= len(authorities):
        # Two quorums must share an authority: one that co-signs one record per epoch
        # (``_epoch_records``) then stops two different records of one epoch.
        raise MalformedEncoding("keyset attrs: the authority quorum must be a majority of the authorities")
    for key, typ in (("policy", str), ("placement", str), ("redundancy", int), ("revision", int),
                     ("deliver_within", int)):
        if key in attrs and not isinstance(attrs[key], typ):
            raise MalformedEncoding(f"keyset attrs: {key} has the wrong type")
    return attrs


def commitments_digest(commitments: Sequence[bytes]) -> bytes:
    return hashlib.sha256(COMMIT_TAG + b"".join(commitments)).digest()


def secret_digest(keyset_id: bytes, s: int) -> bytes:
    return hashlib.sha256(DIGEST_TAG + keyset_id + g.scalar_bytes(s)).digest()


@dataclass(frozen=True)
class Share:
    """Holder ``index``'s share of keyset ``keyset_id`` at ``epoch``."""

    keyset_id: bytes
    epoch: int
    index: int
    value: int = field(repr=False)


@dataclass(frozen=True)
class Keyset:
    """The owner-signed public record of one keyset at one epoch."""

    keyset_id: bytes
    epoch: int
    threshold: int
    shares: int
    commitments: tuple[bytes, ...]
    secret_digest: bytes
    genesis: bytes
    master_ct: bytes
    unwrap_r: bytes
    unwrap_ct: bytes
    kem: str
    created: int
    not_after: int | None
    policy_hash: bytes
    attrs: dict[str, Any]
    id_nonce: bytes
    owner: bytes
    signed: bytes = field(repr=False, compare=False)

    @property
    def id_hex(self) -> str:
        return self.keyset_id.hex()

    @property
    def public_key(self) -> bytes:
        """S = s·G, the keyset's public key (constant across epochs)."""
        return self.commitments[0]

    @property
    def commitments_digest(self) -> bytes:
        return commitments_digest(self.commitments)

    def _fields(self) -> list[Any]:
        return [
            KEYSET_TAG, 1, self.keyset_id, self.epoch, self.threshold, self.shares,
            list(self.commitments), self.secret_digest, self.genesis, self.master_ct,
            self.unwrap_r, self.unwrap_ct, self.kem, self.created, self.not_after,
            self.policy_hash, self.attrs, self.id_nonce,
        ]

    @classmethod
    def from_bytes(cls, data: bytes, *, owner: bytes | None = None) -> Keyset:
        """Decode and verify a signed keyset record (optionally from a known owner)."""
        f, signer, _ = open_signed(
            data, tag=KEYSET_TAG, version=1, fields=16, signer=owner, max_size=MAX_RECORD
        )
        keyset_id = want_bytes(f[0], "keyset id", KEYSET_ID_LEN)
        id_nonce = want_bytes(f[15], "keyset id nonce", KEYSET_ID_LEN)
        if not hmac.compare_digest(keyset_id, derive_keyset_id(signer, id_nonce)):
            raise InvalidSignature("keyset id is not bound to the key that signed the record")
        epoch = want_int(f[1], "epoch", 0, MAX_EPOCH)
        t = want_int(f[2], "threshold", 2, vss.MAX_SHARES)
        n = want_int(f[3], "shares", t, vss.MAX_SHARES)
        commitments = vss.check_commitments(want(f[4], list, "commitments"))
        if len(commitments) != t:
            raise MalformedEncoding("keyset: expected one commitment per threshold degree")
        kem = want(f[10], str, "kem")
        if kem not in KEMS:
            raise MalformedEncoding(f"keyset: unknown kem {kem[:40]!r}")
        not_after = f[12]
        if not_after is not None:
            want_int(not_after, "not after", 0, 2**63 - 1)
        attrs = check_attrs(want(f[14], dict, "attrs"), t, n)
        return cls(
            keyset_id=keyset_id, epoch=epoch, threshold=t, shares=n, commitments=commitments,
            secret_digest=want_bytes(f[5], "secret digest", 32),
            genesis=want_bytes(f[6], "genesis header"),
            master_ct=want_bytes(f[7], "sealed master key"),
            unwrap_r=g.check_point(f[8], "unwrap R"),
            unwrap_ct=want_bytes(f[9], "unwrap ciphertext"),
            kem=kem, created=want_int(f[11], "created", 0, 2**63 - 1), not_after=not_after,
            policy_hash=want_bytes(f[13], "policy hash", 32), attrs=attrs, id_nonce=id_nonce, owner=signer,
            signed=bytes(data),
        )

    @property
    def revision(self) -> int:
        """Raised by :meth:`amend`; 0 for a record as dealt or as made for a new epoch."""
        rev = self.attrs.get("revision", 0)
        return rev if isinstance(rev, int) and not isinstance(rev, bool) else 0

    def amend(self, signer: Signer, *, holders: Mapping[str, Sequence[str]]) -> Keyset:
        """The same epoch, with a shard index moved to other holders (the owner re-placed a
        shard that was never delivered): the shares, every ciphertext and the approvers stay,
        the holders change, and the revision goes up by one."""
        # The approvers stay who they were: by default the holders, so they are named now.
        attrs = {**self.attrs, "holders": {i: list(hs) for i, hs in holders.items()},
                 "revision": self.revision + 1, "approvers": self.approvers}
        check_attrs(attrs, self.threshold, self.shares)
        keep = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("owner", "signed", "attrs")}
        return _signed(signer, **keep, attrs=attrs)

    def amends(self, current: Keyset) -> bool:
        """Whether this record is a later amendment of ``current``: the same keyset, epoch and
        owner, a higher revision, and nothing else changed but who holds which index (so an
        amendment can never change the approvers, the quorum, the policy or the shares).
        False for the same record, an older one or another epoch's (epoch changes are not
        amendments); raises InvalidSignature for a later one that changes anything else."""
        if self.signed == current.signed or self.epoch != current.epoch or self.revision < current.revision:
            return False
        if self.revision == current.revision:
            raise InvalidSignature(f"keyset {self.id_hex}: two different records of epoch {self.epoch} at "
                                   f"revision {self.revision}")
        mine, theirs = self._fields(), current._fields()
        loose = ("holders", "revision", "approvers")
        same_attrs = ({k: v for k, v in self.attrs.items() if k not in loose}
                      == {k: v for k, v in current.attrs.items() if k not in loose})
        pinned = current.attrs.get("custodians")
        in_pin = pinned is None or all(h in pinned for hs in self.attrs.get("holders", {}).values() for h in hs)
        if (self.owner != current.owner or mine[:16] != theirs[:16] or mine[17:] != theirs[17:] or not same_attrs
                or self.approvers != current.approvers or not in_pin):
            raise InvalidSignature(f"keyset {self.id_hex}: a later record (epoch {self.epoch}, revision "
                                   f"{self.revision}) changes more than its holders")
        return True

    @property
    def approvers(self) -> list[str]:
        """Who approves a reconstruction: those the record names, by default its holders."""
        named = self.attrs.get("approvers")
        if named:
            return sorted(named)
        return sorted({h for hs in self.attrs.get("holders", {}).values() for h in hs})

    def next_epoch(
        self, *, commitments: Sequence[bytes], threshold: int, shares: int,
        signer: Signer, attrs: dict[str, Any] | None = None,
    ) -> Keyset:
        """The signed record for the next epoch (after a refresh or reshare)."""
        if commitments[0] != self.public_key:
            raise ValueError("an epoch change must keep the keyset's public key")
        return _signed(
            signer, keyset_id=self.keyset_id, epoch=self.epoch + 1, threshold=threshold,
            shares=shares, commitments=tuple(commitments), secret_digest=self.secret_digest,
            genesis=self.genesis, master_ct=self.master_ct, unwrap_r=self.unwrap_r,
            unwrap_ct=self.unwrap_ct, kem=self.kem, created=self.created,
            not_after=self.not_after, policy_hash=self.policy_hash,
            attrs={k: v for k, v in (self.attrs if attrs is None else attrs).items() if k != "revision"},
            id_nonce=self.id_nonce,
        )


def _signed(signer: Signer, **kw: Any) -> Keyset:
    """Sign a record we built ourselves (no need to re-validate our own points)."""
    unsigned = Keyset(**kw, owner=b"", signed=b"")
    signed = sign_body(signer, encode(unsigned._fields()))
    return dataclasses.replace(unsigned, owner=public_bytes(signer), signed=signed)


def _header(keyset_id: bytes, t: int, n: int, commitments: Sequence[bytes], kem: str, created: int) -> bytes:
    return encode([HEADER_TAG, 1, keyset_id, 0, t, n, commitments_digest(commitments), kem, created])


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _dem_key(keyset_id: bytes, genesis: bytes, s: int) -> bytes:
    return _hkdf(g.scalar_bytes(s), keyset_id, DEM_INFO + genesis)


def _wrap_key(keyset_id: bytes, genesis: bytes, shared: bytes, r_point: bytes) -> bytes:
    return _hkdf(shared + r_point, keyset_id, WRAP_INFO + genesis)


def _seal(key: bytes, plaintext: bytes, aad: bytes, rng: g.Rng) -> bytes:
    nonce = rng(12)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, sealed: bytes, aad: bytes, what: str) -> bytes:
    if len(sealed) < 12 + 16:
        raise DecryptionFailed(f"{what}: ciphertext too short")
    try:
        return ChaCha20Poly1305(key).decrypt(sealed[:12], sealed[12:], aad)
    except InvalidTag:
        raise DecryptionFailed(f"{what} did not open") from None


def split_key(
    master: bytes, threshold: int, shares: int, *, owner: Signer, now: int,
    not_after: int | None = None, kem: str = "x25519", policy_hash: bytes = bytes(32),
    attrs: dict[str, Any] | None = None, rng: g.Rng = os.urandom,
) -> tuple[Keyset, list[Share]]:
    """Deal a new keyset for ``master``; return the signed record and n shares."""
    if not isinstance(master, bytes) or not 1 <= len(master) <= MAX_MASTER:
        raise ValueError(f"the master key must be 1 to {MAX_MASTER} bytes")
    if kem not in KEMS:
        raise ValueError(f"unknown kem {kem!r}; choose one of {', '.join(KEMS)}")
    if len(policy_hash) != 32:
        raise ValueError("policy hash must be 32 bytes")
    vss.check_params(threshold, shares)
    id_nonce = rng(KEYSET_ID_LEN)
    keyset_id = derive_keyset_id(public_bytes(owner), id_nonce)
    dealing = vss.deal(threshold, shares, rng=rng)
    s = dealing.secret
    genesis = _header(keyset_id, threshold, shares, dealing.commitments, kem, now)
    k_dem = _dem_key(keyset_id, genesis, s)
    r = g.random_scalar(rng)
    r_point = g.base_mult(r)
    # r·S = (r·s)·G: the dealer knows s, so a base multiplication will do.
    k_wrap = _wrap_key(keyset_id, genesis, g.base_mult(r * s), r_point)
    keyset = _signed(
        owner, keyset_id=keyset_id, epoch=0, threshold=threshold, shares=shares,
        commitments=dealing.commitments, secret_digest=secret_digest(keyset_id, s),
        genesis=genesis, master_ct=_seal(k_dem, master, genesis, rng), unwrap_r=r_point,
        unwrap_ct=_seal(k_wrap, k_dem, genesis, rng), kem=kem, created=now,
        not_after=not_after, policy_hash=policy_hash, attrs=dict(attrs or {}), id_nonce=id_nonce,
    )
    out = [Share(keyset_id, 0, i, v) for i, v in sorted(dealing.shares.items())]
    return keyset, out


@dataclass(frozen=True)
class Recovered:
    """The outcome of a successful combine: the key, and every share found bad."""

    master: bytes
    bad: list[InvalidShare]
    used: list[int]


def check_shares(keyset: Keyset, shares: Sequence[Share], sources: Sequence[str] | None = None) -> dict[int, int]:
    """Refuse duplicates and shares of another keyset or epoch; map index -> value.

    This runs on every combine, so the happy path builds nothing but the map;
    messages are composed only when something is refused.
    """
    if sources is not None and len(sources) != len(shares):
        raise ValueError("one source name per share")
    kid, epoch = keyset.keyset_id, keyset.epoch
    values: dict[int, int] = {}
    for k, sh in enumerate(shares):
        if sh.keyset_id != kid or sh.epoch != epoch or not 1 <= sh.index <= vss.MAX_SHARES:
            _refuse_share(keyset, sh, sources[k] if sources else f"index {sh.index}")
        values[sh.index] = sh.value
    if len(values) != len(shares):
        dup = next(i for i in values if sum(sh.index == i for sh in shares) > 1)
        where = [sources[k] for k, sh in enumerate(shares) if sh.index == dup] if sources else None
        raise DuplicateShare(dup, where)
    return values


def _refuse_share(keyset: Keyset, sh: Share, src: str) -> None:
    if sh.keyset_id != keyset.keyset_id:
        raise MixedShares(f"{src} belongs to keyset {sh.keyset_id.hex()[:12]}…, not {keyset.id_hex[:12]}…")
    if sh.epoch != keyset.epoch:
        raise MixedShares(
            f"{src} is from epoch {sh.epoch}, the keyset is at epoch {keyset.epoch}; "
            "shares from different epochs never combine"
        )
    raise InvalidShare(sh.index, src, "index out of range")


def recover_secret(
    keyset: Keyset, shares: Sequence[Share], sources: Sequence[str] | None = None,
) -> tuple[int, list[InvalidShare], list[int]]:
    """Interpolate ``s`` from all given shares; verify per share only if needed.

    Fast path: interpolate the first t shares and compare the binding digest;
    a match proves those t good, and any further shares are batch-verified
    against the commitments (and named if bad). Otherwise each share is
    checked, the bad ones are named, and ``s`` is recombined from the good
    ones if at least t remain.
    """
    values = check_shares(keyset, shares, sources)
    t = keyset.threshold
    if len(values) < t:
        raise TooFewShares(len(values), t)
    first = values if len(values) == t else dict(list(values.items())[:t])
    s = vss.interpolate(first)
    src_map = {sh.index: sources[k] for k, sh in enumerate(shares)} if sources else {}
    if hmac.compare_digest(secret_digest(keyset.keyset_id, s), keyset.secret_digest):
        if first is values:
            return s, [], sorted(values)
        # t shares are proven good; the others are checked on their own, so two
        # colluding bad shares cannot cancel out and be reported as used.
        extra = {i: v for i, v in values.items() if i not in first}
        if vss.batch_check(keyset.commitments, extra):
            return s, [], sorted(values)
        bad = vss.find_bad_shares(keyset.commitments, extra, src_map)
        bad_idx = {b.index for b in bad}
        return s, bad, sorted(i for i in values if i not in bad_idx)
    bad = vss.find_bad_shares(keyset.commitments, values, src_map)
    bad_idx = {b.index for b in bad}
    good = {i: v for i, v in values.items() if i not in bad_idx}
    if len(good) < t:
        raise TooFewShares(len(good), t, bad)
    s = vss.interpolate(good)
    if not hmac.compare_digest(secret_digest(keyset.keyset_id, s), keyset.secret_digest):
        # Every share matches the commitments yet the digest does not: the
        # record itself is inconsistent (signed by the owner, so the owner's fault).
        raise MalformedEncoding("keyset record: commitments and secret digest disagree")
    return s, bad, sorted(good)


def combine_key(
    keyset: Keyset, shares: Sequence[Share], sources: Sequence[str] | None = None,
) -> Recovered:
    """Recover the master key from at least t shares (see :func:`recover_secret`)."""
    s, bad, used = recover_secret(keyset, shares, sources)
    master = _open(_dem_key(keyset.keyset_id, keyset.genesis, s), keyset.master_ct,
                   keyset.genesis, "sealed master key")
    return Recovered(master, bad, used)


def open_with_unwrapped(keyset: Keyset, shared: bytes) -> bytes:
    """Open the master key given ``s·R`` from threshold unwrap."""
    k_wrap = _wrap_key(keyset.keyset_id, keyset.genesis, shared, keyset.unwrap_r)
    k_dem = _open(k_wrap, keyset.unwrap_ct, keyset.genesis, "unwrap envelope")
    return _open(k_dem, keyset.master_ct, keyset.genesis, "sealed master key")


def verify_share(keyset: Keyset, share: Share, source: str | None = None) -> None:
    """Check one share against the keyset's commitments (raises InvalidShare)."""
    check_shares(keyset, [share], [source] if source else None)
    vss.verify_share(keyset.commitments, share.index, share.value, source)


def batch_verify_shares(
    keyset: Keyset, shares: Sequence[Share], sources: Sequence[str] | None = None,
    *, rng: g.Rng = os.urandom,
) -> None:
    """Verify many shares at once; on failure, name every bad one."""
    values = check_shares(keyset, shares, sources)
    if vss.batch_check(keyset.commitments, values, rng=rng):
        return
    src_map: Mapping[int, str] = (
        {sh.index: sources[k] for k, sh in enumerate(shares)} if sources else {}
    )
    bad = vss.find_bad_shares(keyset.commitments, values, src_map)
    if bad:
        raise InvalidShares(bad)
