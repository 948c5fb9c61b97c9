"""Merkle tree logs (protocol/_tlog.py) against transparency-dev/merkle's public vectors
(tests/vectors/tlog/, with their source and licence), and Hypothesis over random sizes."""

from __future__ import annotations

import base64
import json
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardnet.protocol import tlog

VECTORS = pathlib.Path(__file__).parent / "vectors" / "tlog"


def _load(name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((VECTORS / name).read_text())


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value) if value is not None else b""


def _tree(entries: list[bytes]) -> tlog.MemoryTree:
    t = tlog.MemoryTree()
    for e in entries:
        t.append(e)
    return t


def test_hashing_matches_the_reference_trees() -> None:
    v = _load("hashing.json")
    leaves = [bytes.fromhex(h) for h in v["leaf_inputs"]]
    t = tlog.MemoryTree()
    assert t.root() == tlog.EMPTY_ROOT == bytes.fromhex(v["empty_root"])
    for n, entry in enumerate(leaves, 1):
        t.append(entry)
        assert t.root().hex() == v["root_hashes"][n], n
    for level, hashes in enumerate(v["node_hashes"]):
        for index, h in enumerate(hashes):
            assert t.read(level, index).hex() == h, (level, index)


def test_inclusion_probes_of_transparency_dev() -> None:
    probes = _load("inclusion.json")["probes"]
    assert len(probes) >= 90
    wrong = []
    for p in probes:
        proof = [_b64(h) for h in p["proof"] or []]
        try:
            tlog.verify_inclusion(p["leafIdx"], p["treeSize"], _b64(p["leafHash"]), proof, _b64(p["root"]))
            ok = True
        except tlog.ProofError:
            ok = False
        if ok == p["wantErr"]:
            wrong.append(f"{p['file']}: {p['desc']}")
    assert wrong == []
    assert sum(not p["wantErr"] for p in probes) >= 5  # happy paths, not only refusals


def test_consistency_probes_of_transparency_dev() -> None:
    probes = _load("consistency.json")["probes"]
    assert len(probes) >= 90
    wrong = []
    for p in probes:
        proof = [_b64(h) for h in p["proof"] or []]
        try:
            tlog.verify_consistency(p["size1"], p["size2"], _b64(p["root1"]), _b64(p["root2"]), proof)
            ok = True
        except tlog.ProofError:
            ok = False
        if ok == p["wantErr"]:
            wrong.append(f"{p['file']}: {p['desc']}")
    # The one divergence, on purpose: two 12-byte "roots" ("don't care 2") are no hashes.
    assert wrong == ["testdata/consistency/additional/sizes-are-equal-one-and-proof-is-empty.json: "
                     "sizes are equal (one) and proof is empty"]
    assert sum(not p["wantErr"] for p in probes) >= 5


def test_our_proofs_are_the_reference_ones() -> None:
    """The happy-path vectors were made by the reference implementation over its leaf
    inputs: ours, over the same leaves, are byte for byte the same."""
    t = _tree([bytes.fromhex(h) for h in _load("hashing.json")["leaf_inputs"]])
    compared = 0
    for p in _load("inclusion.json")["probes"]:
        if not p["wantErr"] and p["treeSize"] <= t.size and p["root"] == base64.b64encode(
                t.root(p["treeSize"])).decode():
            assert tlog.inclusion_proof(p["leafIdx"], p["treeSize"], t.read) == [_b64(h) for h in p["proof"] or []]
            compared += 1
    for p in _load("consistency.json")["probes"]:
        if not p["wantErr"] and 0 < p["size1"] < p["size2"] <= t.size:
            assert tlog.consistency_proof(p["size1"], p["size2"], t.read) == [_b64(h) for h in p["proof"]]
            compared += 1
    assert compared >= 8, compared


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300), st.data())
def test_every_inclusion_proof_verifies_and_any_flip_fails(size: int, data: st.DataObject) -> None:
    t = _tree([i.to_bytes(4, "big") for i in range(size)])
    index = data.draw(st.integers(0, size - 1))
    proof = tlog.inclusion_proof(index, size, t.read)
    leaf = tlog.leaf_hash(index.to_bytes(4, "big"))
    tlog.verify_inclusion(index, size, leaf, proof, t.root(size))
    if proof:
        i, byte, bit = data.draw(st.integers(0, len(proof) - 1)), data.draw(st.integers(0, 31)), data.draw(
            st.integers(0, 7))
        bad = [bytearray(h) for h in proof]
        bad[i][byte] ^= 1 << bit
        with pytest.raises(tlog.ProofError):
            tlog.verify_inclusion(index, size, leaf, [bytes(h) for h in bad], t.root(size))
    for other in {index + 1, index - 1} - {index} if size > 1 else set():
        if 0 <= other < size:
            with pytest.raises(tlog.ProofError):
                tlog.verify_inclusion(other, size, leaf, proof, t.root(size))


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 300), st.data())
def test_every_consistency_proof_verifies_and_any_flip_fails(size: int, data: st.DataObject) -> None:
    t = _tree([i.to_bytes(4, "big") for i in range(size)])
    old = data.draw(st.integers(1, size - 1))
    proof = tlog.consistency_proof(old, size, t.read)
    tlog.verify_consistency(old, size, t.root(old), t.root(size), proof)
    tlog.verify_consistency(size, size, t.root(size), t.root(size), [])
    i, byte, bit = data.draw(st.integers(0, len(proof) - 1)), data.draw(st.integers(0, 31)), data.draw(
        st.integers(0, 7))
    bad = [bytearray(h) for h in proof]
    bad[i][byte] ^= 1 << bit
    with pytest.raises(tlog.ProofError):
        tlog.verify_consistency(old, size, t.root(old), t.root(size), [bytes(h) for h in bad])
    forked = _tree([i.to_bytes(4, "big") for i in range(old - 1)] + [b"rewritten"] +
                   [i.to_bytes(4, "big") for i in range(old, size)])
    with pytest.raises(tlog.ProofError):  # a rewritten entry: no proof joins the two heads
        tlog.verify_consistency(old, size, t.root(old), forked.root(size), proof)


def test_bad_inputs_are_proof_errors_not_crashes() -> None:
    t = _tree([b"a", b"b", b"c"])
    r = t.root()
    for args in ((0, 3, b"short", [], r), (5, 3, tlog.leaf_hash(b"a"), [], r), (0, 3, tlog.leaf_hash(b"a"),
                 ["not bytes"], r), (0, 3, tlog.leaf_hash(b"a"), [bytes(32)] * 65, r)):
        with pytest.raises(tlog.ProofError):
            tlog.verify_inclusion(*args)  # type: ignore[arg-type]
    with pytest.raises(tlog.ProofError):
        tlog.verify_consistency(3, 2, r, r, [])
    with pytest.raises(ValueError):
        tlog.consistency_proof(0, 3, t.read)
