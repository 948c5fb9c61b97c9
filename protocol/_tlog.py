"""Merkle tree logs (RFC 6962 / RFC 9162 hashing, proofs and their verification).

A log of n entries is the Merkle tree over their leaf hashes:

    leaf hash = SHA-256(0x00 || entry)
    node hash = SHA-256(0x01 || left || right)
    MTH({})   = SHA-256("")

A log stores the hash of every complete subtree once, as it grows: the subtree of
2**level leaves starting at leaf ``index * 2**level`` is ``(level, index)``.
:func:`stored_hashes` gives the ones an append adds, and a ``HashReader`` reads
them back. Any other subtree, any root and any proof is built from O(log n) of
them (an unbalanced subtree is split at the largest power of two below its
size), so nothing here needs the entries themselves.

Inclusion proofs are RFC 6962's audit paths, consistency proofs its SUBPROOF;
both verify with RFC 9162's algorithms (sections 2.1.3.2 and 2.1.4.2), and both
are the ones ``golang.org/x/mod/sumdb/tlog`` checks (``CheckRecord``,
``CheckTree``). The functions here raise :class:`ProofError` and nothing else
on a bad proof. A hash that is not 32 bytes is refused before anything is compared
(transparency-dev/merkle compares whatever it is given: of its vectors, one pair of
12-byte "roots" at equal sizes, which it accepts, is refused here).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from ._errors import ShardnetError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
#: The longest proof a tree of up to 2**63 leaves can need (one hash per level; a
#: consistency proof may add the old root).
MAX_PROOF = 64

HashReader = Callable[[int, int], bytes]
"""``read(level, index)``: the stored hash of complete subtree ``(level, index)``."""


class ProofError(ShardnetError):
    """A proof, a size or a hash that does not verify."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def stored_hashes(index: int, leaf: bytes, read: HashReader) -> list[tuple[int, int, bytes]]:
    """The complete subtrees that appending leaf number ``index`` (its hash ``leaf``)
    completes, lowest first: ``(0, index, leaf)``, then each parent whose right child
    that made complete."""
    out = [(0, index, leaf)]
    level, i, h = 0, index, leaf
    while i & 1:
        h = node_hash(read(level, i - 1), h)
        level, i = level + 1, i >> 1
        out.append((level, i, h))
    return out


def _split(n: int) -> int:
    """The largest power of two below ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_hash(start: int, end: int, read: HashReader) -> bytes:
    """MTH of leaves ``start`` to ``end`` (exclusive), ``start`` aligned as in every
    subtree RFC 6962 names."""
    n = end - start
    if n <= 0:
        raise ValueError(f"empty subtree {start}..{end}")
    if n & (n - 1) == 0 and start % n == 0:
        level = n.bit_length() - 1
        return read(level, start >> level)
    k = _split(n)
    return node_hash(subtree_hash(start, start + k, read), subtree_hash(start + k, end, read))


def root(size: int, read: HashReader) -> bytes:
    """The tree head of the first ``size`` leaves."""
    if size < 0:
        raise ValueError("a tree size is not negative")
    return EMPTY_ROOT if size == 0 else subtree_hash(0, size, read)


def inclusion_proof(index: int, size: int, read: HashReader) -> list[bytes]:
    """RFC 6962's audit path of leaf ``index`` in the tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    out: list[bytes] = []
    start, end, m = 0, size, index
    while end - start > 1:  # top-down; the path is read bottom-up
        k = _split(end - start)
        if m < k:
            out.append(subtree_hash(start + k, end, read))
            end = start + k
        else:
            out.append(subtree_hash(start, start + k, read))
            start, m = start + k, m - k
    return out[::-1]


def consistency_proof(old: int, size: int, read: HashReader) -> list[bytes]:
    """RFC 6962's proof that the tree of ``old`` leaves is a prefix of the one of
    ``size`` (0 < old < size; equal sizes need no proof)."""
    if not 0 < old <= size:
        raise ValueError(f"no consistency proof from {old} to {size}")
    out: list[bytes] = []
    start, end, m, whole = 0, size, old, True
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            out.append(subtree_hash(start + k, end, read))
            end = start + k
        else:
            out.append(subtree_hash(start, start + k, read))
            start, m, whole = start + k, m - k, False
    if not whole:
        out.append(subtree_hash(start, end, read))
    return out[::-1]


def _hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        raise ProofError(f"{what} is not a {HASH_SIZE}-byte hash")
    return value


def _check_proof(proof: Sequence[bytes]) -> list[bytes]:
    if len(proof) > MAX_PROOF:
        raise ProofError(f"a proof of {len(proof)} hashes is longer than any tree needs")
    return [_hash(h, "a proof element") for h in proof]


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root_hash: bytes) -> None:
    """RFC 9162 2.1.3.2: ``leaf`` is leaf ``index`` of the tree ``root_hash`` of
    ``size`` leaves."""
    hashes = _check_proof(proof)
    r, want = _hash(leaf, "the leaf"), _hash(root_hash, "the root")
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size}")
    fn, sn = index, size - 1
    for p in hashes:
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is deep")
    if r != want:
        raise ProofError("the inclusion proof does not lead to the root")


def verify_consistency(old: int, size: int, old_root: bytes, root_hash: bytes, proof: Sequence[bytes]) -> None:
    """RFC 9162 2.1.4.2: the tree ``old_root`` of ``old`` leaves is a prefix of the
    tree ``root_hash`` of ``size`` leaves."""
    hashes = _check_proof(proof)
    first, second = _hash(old_root, "the old root"), _hash(root_hash, "the new root")
    if not 0 <= old <= size:
        raise ProofError(f"a tree of {old} leaves cannot grow into one of {size}")
    if old == size:
        if hashes:
            raise ProofError("equal tree sizes need an empty proof")
        if first != second:
            raise ProofError("two different roots for one tree size")
        if size == 0 and first != EMPTY_ROOT:
            raise ProofError("that is not the empty tree's root")
        return
    if old == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if old & (old - 1) == 0:  # a complete subtree: the old root is the proof's first hash
        hashes = [first, *hashes]
    if not hashes:
        raise ProofError("the consistency proof is empty")
    fn, sn = old - 1, size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = hashes[0]
    for c in hashes[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than the trees need")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than the trees need")
    if fr != first:
        raise ProofError("the consistency proof does not lead to the old root")
    if sr != second:
        raise ProofError("the consistency proof does not lead to the new root")


class MemoryTree:
    """A log's stored hashes in a dict: for tests, and for a witness's scratch work."""

    def __init__(self) -> None:
        self.size = 0
        self.hashes: dict[tuple[int, int], bytes] = {}

    def read(self, level: int, index: int) -> bytes:
        return self.hashes[(level, index)]

    def append(self, entry: bytes) -> int:
        """Append ``entry``; returns its index."""
        for level, index, h in stored_hashes(self.size, leaf_hash(entry), self.read):
            self.hashes[(level, index)] = h
        self.size += 1
        return self.size - 1

    def root(self, size: int | None = None) -> bytes:
        return root(self.size if size is None else size, self.read)
