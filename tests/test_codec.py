"""Canonical encoding, size caps, and decoders that never crash on garbage."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from shardnet.protocol import (
    Keyset,
    MalformedEncoding,
    Partial,
    ShardnetError,
    decode,
    encode,
    keyset_from_text,
    keyset_to_text,
    read_shard_meta,
    share_from_text,
    share_to_text,
    split_key,
)

from .drbg import Drbg

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=200)
@given(values)
def test_round_trip_and_canonical(v: object) -> None:
    data = encode(v)
    assert decode(data) == v
    assert encode(decode(data)) == data


def test_non_canonical_and_oversized_refused() -> None:
    import msgpack

    unsorted = msgpack.packb({"b": 1, "a": 2})
    with pytest.raises(MalformedEncoding, match="canonical"):
        decode(unsorted)
    with pytest.raises(MalformedEncoding, match="over the 100-byte cap"):
        decode(encode(b"x" * 200), max_size=100)
    with pytest.raises(MalformedEncoding):
        decode(b"\xdd\xff\xff\xff\xff")  # array32 claiming 4 billion items


KEYSET, SHARES = split_key(b"k", 2, 3, owner=Ed25519PrivateKey.from_private_bytes(bytes(32)), now=1,
                           rng=Drbg(b"c"))


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_decoders_only_raise_malformed(data: bytes) -> None:
    for parse in (decode, Keyset.from_bytes, Partial.from_bytes, read_shard_meta):
        try:
            parse(data)
        except MalformedEncoding:
            pass


@settings(max_examples=300)
@given(st.integers(0, 2000), st.integers(0, 255))
def test_bit_flips_in_a_keyset_never_pass(pos: int, byte: int) -> None:
    raw = bytearray(KEYSET.signed)
    pos %= len(raw)
    if raw[pos] == byte:
        return
    raw[pos] = byte
    with pytest.raises(ShardnetError):
        Keyset.from_bytes(bytes(raw))


def test_text_formats_round_trip_and_checksum() -> None:
    text = share_to_text(SHARES[0], 2, 3)
    share, t, n = share_from_text(text)
    assert (share, t, n) == (SHARES[0], 2, 3)
    assert keyset_from_text(keyset_to_text(KEYSET)) == KEYSET
    typo = text.replace("Index: 1", "Index: 2")
    with pytest.raises(MalformedEncoding, match="checksum mismatch"):
        share_from_text(typo)
    with pytest.raises(MalformedEncoding, match="truncated"):
        share_from_text(text.rsplit("\n", 2)[0])
    with pytest.raises(MalformedEncoding, match="not a shardnet share"):
        share_from_text("hello")
    with pytest.raises(MalformedEncoding, match="not a shardnet keyset"):
        keyset_from_text(text)


@settings(max_examples=200)
@given(st.text(max_size=600))
def test_text_parsers_only_raise_malformed(text: str) -> None:
    for parse in (share_from_text, keyset_from_text):
        try:
            parse(text)
        except MalformedEncoding:
            pass


def test_strict_copies_sort_check_types_and_bound_depth() -> None:
    from shardnet.protocol._codec import strict

    assert strict({"b": (1, 2.5), "a": {"y": b"x", "x": None}}, max_depth=2) == {
        "a": {"x": None, "y": b"x"}, "b": [1, 2.5]}
    assert strict([[[]]], max_depth=2) == [[[]]]
    for bad, match in ((([[[[]]]]), "nested more than 2"), ({1: "x"}, "keys must be str"),
                       (float("nan"), "finite"), (1 << 64, "msgpack's range"), ({"s": {1, 2}}, "cannot hold")):
        with pytest.raises(ValueError, match=match):
            strict(bad, max_depth=2)
