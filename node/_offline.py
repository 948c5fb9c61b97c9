"""Offline commands: ``shardnet split`` and ``shardnet combine`` (air-gapped use)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p

from ._clock import Rng
from ._files import read_input, write_atomic


@dataclass
class SplitResult:
    keyset: p.Keyset
    keyset_file: pathlib.Path
    share_files: list[pathlib.Path]

    def to_json(self) -> dict[str, Any]:
        return {
            "keyset": self.keyset.id_hex,
            "threshold": self.keyset.threshold,
            "shares": self.keyset.shares,
            "kem": self.keyset.kem,
            "public_key": self.keyset.public_key.hex(),
            "keyset_file": str(self.keyset_file),
            "share_files": [str(f) for f in self.share_files],
        }


def split_file(
    in_path: str, threshold: int, shares: int, out_dir: str, *, kem: str = "x25519", now: float, rng: Rng,
) -> SplitResult:
    """Split a key file into share files plus a keyset file in ``out_dir``.

    The keyset record is signed with a throw-away owner key: offline, the
    signature proves the file is intact and self-consistent, not who made it.
    """
    master = read_input(in_path, p.MAX_MASTER)
    if not master:
        raise ValueError(f"{in_path}: the key file is empty")
    owner = Ed25519PrivateKey.from_private_bytes(rng(32))
    keyset, share_list = p.split_key(master, threshold, shares, owner=owner, now=int(now), kem=kem, rng=rng)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    width = len(str(shares))
    names = [out / f"share-{s.index:0{width}d}-of-{shares}.txt" for s in share_list]
    keyset_file = out / "keyset.txt"
    clash = [str(f) for f in [keyset_file, *names] if f.exists()]
    if clash:
        raise FileExistsError(f"{clash[0]} already exists; choose an empty --out-dir")
    write_atomic(keyset_file, p.keyset_to_text(keyset).encode(), 0o644)
    for f, s in zip(names, share_list, strict=True):
        write_atomic(f, p.share_to_text(s, threshold, shares).encode(), 0o600)
    return SplitResult(keyset, keyset_file, names)


@dataclass
class CombineResult:
    keyset: p.Keyset
    out: pathlib.Path
    size: int
    used: list[str]
    bad: list[p.InvalidShare]  # parsed, but not matching the keyset's commitments
    skipped: list[tuple[str, str]]  # (file, why): damaged, of another keyset, or a second copy

    def to_json(self) -> dict[str, Any]:
        return {
            "keyset": self.keyset.id_hex, "out": str(self.out), "bytes": self.size,
            "used": self.used,
            "invalid": [{"file": b.source, "index": b.index} for b in self.bad],
            "skipped": [{"file": f, "reason": why} for f, why in self.skipped],
        }


def _verifies(keyset: p.Keyset, share: p.Share) -> bool:
    try:
        p.verify_share(keyset, share)
    except p.ShardnetError:
        return False
    return True


class TooFewGoodFiles(p.ShardnetError):
    """Fewer good share files than the threshold; the message names the rest and why."""


def combine_files(keyset_path: str, share_paths: list[str], out_path: str, *, force: bool = False) -> CombineResult:
    """Recover the key from the share files that are good. A damaged file, one of another
    keyset and a second file of one index are skipped and named; nothing is written unless
    t good ones remain."""
    keyset = p.keyset_from_text(read_input(keyset_path, p.MAX_ARMOR_FILE).decode("utf-8", "replace"))
    out = pathlib.Path(out_path)
    if not out.parent.is_dir():
        raise ValueError(f"{out.parent}: no such directory (for --out)")
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists (use --force to overwrite)")
    shares: list[p.Share] = []
    sources: list[str] = []
    skipped: list[tuple[str, str]] = []
    first: dict[int, str] = {}
    for path in share_paths:
        try:
            share, _, _ = p.share_from_text(read_input(path, 64 * 1024).decode("utf-8", "replace"))
        except p.MalformedEncoding as exc:
            skipped.append((path, str(exc)))
            continue
        if (share.keyset_id, share.epoch) != (keyset.keyset_id, keyset.epoch):
            skipped.append((path, f"belongs to keyset {share.keyset_id.hex()[:12]}… at epoch {share.epoch}, "
                                  f"not {keyset.id_hex[:12]}… at epoch {keyset.epoch}"))
            continue
        if share.index in first:  # two files of one index: the one that matches the commitments stays
            k = sources.index(first[share.index])
            if share.value != shares[k].value and not _verifies(keyset, shares[k]) and _verifies(keyset, share):
                skipped.append((sources[k], f"does not match the keyset's commitments (index {share.index}; "
                                            f"{path} does)"))
                shares[k], sources[k], first[share.index] = share, path, path
            else:
                skipped.append((path, f"index {share.index} supplied more than once (also {first[share.index]})"))
            continue
        first[share.index] = path
        shares.append(share)
        sources.append(path)
    try:
        got = p.combine_key(keyset, shares, sources)
    except p.TooFewShares as exc:
        if not skipped:
            raise
        why = "; ".join(f"{f}: {reason}" for f, reason in skipped)
        raise TooFewGoodFiles(f"{exc}; skipped {why}") from None
    write_atomic(out, got.master, 0o600, overwrite=force)
    by_index = dict(zip((s.index for s in shares), sources, strict=True))
    return CombineResult(keyset, out, len(got.master), [by_index[i] for i in got.used], got.bad, skipped)

