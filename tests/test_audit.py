"""The hash-chained audit log core (shardnet.protocol._audit), without any IO."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import pathlib
from typing import Any, cast

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from shardnet.protocol._audit import (
    GENESIS_PREV,
    MAX_BODY_BYTES,
    SIG_DOMAIN,
    AuditChainBroken,
    AuditEntry,
    canonical_body,
    decode_body,
    encode_body,
    make_entry,
    verify_chain,
)
from shardnet.protocol._errors import MalformedEncoding, RemoteProtocolError

# Fixed keys: tests are deterministic.
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
PUB = KEY.public_key().public_bytes_raw()
OTHER_PUB = OTHER.public_key().public_bytes_raw()


def chain(n: int, key: Ed25519PrivateKey = KEY, start: AuditEntry | None = None) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    prev = start
    for i in range(n):
        prev = make_entry(
            prev, time=1_700_000_000 + i, kind="deliver", body={"i": i, "peer": f"p{i}"}, key=key
        )
        entries.append(prev)
    return entries


def broken_at(entries: list[AuditEntry], **kw: Any) -> AuditChainBroken:
    with pytest.raises(AuditChainBroken) as info:
        verify_chain(entries, **kw)
    return info.value


# -- entries -------------------------------------------------------------------


def test_first_entry_matches_the_specified_encoding() -> None:
    body = {"b": 2, "a": {"z": [1, b"x"], "y": None}}
    e = make_entry(None, time=1234, kind="import", body=body, key=KEY)
    assert (e.seq, e.prev, e.time, e.kind, e.signer) == (1, GENESIS_PREV, 1234, "import", PUB)
    assert list(e.body) == ["a", "b"] and list(e.body["a"]) == ["y", "z"]
    canonical = msgpack.packb(
        ["shardnet/audit", 1, 1, bytes(32), 1234, "import",
         {"a": {"y": None, "z": [1, b"x"]}, "b": 2}, PUB],
        use_bin_type=True,
    )
    assert e.hash == hashlib.sha256(canonical).digest()
    KEY.public_key().verify(e.sig, b"shardnet/audit/v1\x00" + e.hash)
    assert SIG_DOMAIN == b"shardnet/audit/v1\x00"


def test_next_entry_links_to_previous() -> None:
    a, b = chain(2)
    assert (b.seq, b.prev) == (2, a.hash)


def test_entry_body_is_a_copy() -> None:
    body: dict[str, Any] = {"list": [1]}
    e = make_entry(None, time=1, kind="import", body=body, key=KEY)
    body["list"].append(2)
    assert e.body == {"list": [1]}
    assert verify_chain([e]) == 1


@pytest.mark.parametrize(
    "kind", ["", "Deliver", "has space", "x" * 65, "9lives", "dé"]
)
def test_bad_kind_is_refused(kind: str) -> None:
    with pytest.raises(ValueError, match="kind"):
        make_entry(None, time=1, kind=kind, body={}, key=KEY)


@pytest.mark.parametrize("time", [-1, 1.5, True, "1", 1 << 63])
def test_bad_time_is_refused(time: Any) -> None:
    with pytest.raises(ValueError, match="time"):
        make_entry(None, time=time, kind="import", body={}, key=KEY)


# -- body encoding ---------------------------------------------------------------


def test_body_cap_is_64_kib() -> None:
    # fixmap(1) + fixstr "x" (2) + bin16 header (3) + payload
    at_cap = {"x": bytes(MAX_BODY_BYTES - 6)}
    assert len(encode_body(at_cap)) == MAX_BODY_BYTES
    make_entry(None, time=1, kind="import", body=at_cap, key=KEY)
    over = {"x": bytes(MAX_BODY_BYTES - 5)}
    with pytest.raises(ValueError, match="65536-byte cap"):
        make_entry(None, time=1, kind="import", body=over, key=KEY)
    with pytest.raises(ValueError, match="cap"):
        encode_body(over)


@pytest.mark.parametrize(
    "body",
    [
        {1: "int key"},
        {"set": {1, 2}},
        {"nan": float("nan")},
        {"inf": float("inf")},
        {"big": 1 << 64},
        {"small": -(1 << 63) - 1},
        {"deep": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]},
        {"surrogate": "\ud800"},
        {"obj": object()},
    ],
)
def test_bad_bodies_are_refused(body: Any) -> None:
    with pytest.raises(ValueError):
        make_entry(None, time=1, kind="import", body=body, key=KEY)


def test_body_must_be_a_map() -> None:
    with pytest.raises(ValueError, match="map"):
        make_entry(None, time=1, kind="import", body=cast(Any, [1, 2]), key=KEY)


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
bodies = st.dictionaries(st.text(max_size=8), values, max_size=6)


def _reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reverse_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reverse_keys(v) for v in value]
    return value


@given(bodies)
def test_body_round_trips_through_canonical_encoding(body: dict[str, Any]) -> None:
    data = encode_body(body)
    assert decode_body(data) == body
    assert encode_body(decode_body(data)) == data
    assert encode_body(_reverse_keys(body)) == data  # insertion order does not matter
    assert canonical_body(_reverse_keys(body)) == body


@given(bodies)
@settings(max_examples=50)
def test_any_body_makes_a_verifiable_entry(body: dict[str, Any]) -> None:
    e = make_entry(None, time=7, kind="import", body=body, key=KEY)
    assert e.body == body
    assert verify_chain([e], trusted_signers={PUB}) == 1


def test_tuples_encode_as_lists() -> None:
    assert encode_body({"t": (1, 2)}) == encode_body({"t": [1, 2]})
    assert decode_body(encode_body({"t": (1, 2)})) == {"t": [1, 2]}


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb({"b": 1, "a": 2}),  # unsorted keys
        msgpack.packb({"x": 1.5}, use_single_float=True),  # float32 instead of float64
        msgpack.packb({"a": "bc"})[:-1],  # truncated
        msgpack.packb([1, 2]),  # not a map
        msgpack.packb({b"k": 1}, use_bin_type=True),  # bytes key
        msgpack.packb({"x": msgpack.ExtType(1, b"e")}),  # extension type
        msgpack.packb({"a": 1}) + b"\x00",  # trailing bytes
        b"\xc1",  # never-used byte
        b"",
    ],
)
def test_decode_refuses_non_canonical_or_malformed(data: bytes) -> None:
    with pytest.raises(MalformedEncoding):
        decode_body(data)


def test_decode_checks_size_before_decoding() -> None:
    with pytest.raises(MalformedEncoding, match="cap"):
        decode_body(b"\x80" + bytes(MAX_BODY_BYTES))


# -- chains ------------------------------------------------------------------------


def test_chain_of_50_verifies() -> None:
    entries = chain(50)
    assert verify_chain(entries) == 50
    assert verify_chain(entries, trusted_signers={PUB}) == 50
    assert verify_chain(iter(entries), trusted_signers=frozenset({PUB, OTHER_PUB})) == 50


def test_empty_chain_verifies() -> None:
    assert verify_chain([]) == 0


def test_error_message_and_fields() -> None:
    entries = chain(20)
    entries[16] = dataclasses.replace(entries[16], time=entries[16].time + 1)
    err = broken_at(entries)
    assert (err.seq, err.reason) == (17, "hash mismatch (entry was edited)")
    assert str(err) == "audit log broken at entry 17: hash mismatch (entry was edited)"
    assert isinstance(err, RemoteProtocolError)


def _flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


TAMPER = {
    "prev": (lambda e: dataclasses.replace(e, prev=_flip(e.prev)), "prev link"),
    "time": (lambda e: dataclasses.replace(e, time=e.time + 1), "hash mismatch"),
    "kind": (lambda e: dataclasses.replace(e, kind="refuse"), "hash mismatch"),
    "body": (lambda e: dataclasses.replace(e, body={**e.body, "i": -1}), "hash mismatch"),
    "signer": (lambda e: dataclasses.replace(e, signer=OTHER_PUB), "hash mismatch"),
    "hash": (lambda e: dataclasses.replace(e, hash=_flip(e.hash)), "hash mismatch"),
    "sig": (lambda e: dataclasses.replace(e, sig=_flip(e.sig)), "bad signature"),
    "seq": (lambda e: dataclasses.replace(e, seq=e.seq + 100), "missing"),
    "short_hash": (lambda e: dataclasses.replace(e, hash=e.hash[:31]), "malformed"),
    "bad_body": (lambda e: dataclasses.replace(e, body={"x": {1, 2}}), "malformed"),
}


@pytest.mark.parametrize("field", sorted(TAMPER))
@pytest.mark.parametrize("seq", [1, 17, 50])
def test_tampering_any_field_is_reported_at_that_entry(field: str, seq: int) -> None:
    entries = chain(50)
    change, reason = TAMPER[field]
    entries[seq - 1] = change(entries[seq - 1])
    err = broken_at(entries, trusted_signers={PUB})
    assert err.seq == seq
    assert reason in err.reason


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_first_broken_entry_is_reported(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 12))
    entries = chain(n)
    first = data.draw(st.integers(1, n))
    later = data.draw(st.integers(first, n))
    for seq in {first, later}:
        entries[seq - 1] = dataclasses.replace(entries[seq - 1], time=0)
    assert broken_at(entries).seq == first


def test_deleted_entry_is_reported() -> None:
    entries = chain(50)
    del entries[16]
    err = broken_at(entries)
    assert err.seq == 17
    assert "found entry 18 where 17 was expected" in err.reason


def test_deleted_first_entry_is_reported() -> None:
    err = broken_at(chain(5)[1:])
    assert err.seq == 1


def test_reordered_entries_are_reported() -> None:
    entries = chain(5)
    entries[1], entries[2] = entries[2], entries[1]
    err = broken_at(entries)
    assert err.seq == 2 and "found entry 3" in err.reason


def test_foreign_signer_is_reported() -> None:
    entries = chain(10)
    entries += chain(5, key=OTHER, start=entries[-1])
    assert verify_chain(entries) == 15  # consistent, but...
    err = broken_at(entries, trusted_signers={PUB})
    assert err.seq == 11
    assert "untrusted key" in err.reason and OTHER_PUB.hex()[:16] in err.reason
    assert verify_chain(entries, trusted_signers={PUB, OTHER_PUB}) == 15


def test_rechained_forgery_is_reported_at_first_forged_entry() -> None:
    # An attacker edits entry 7 and re-signs everything after it with its own key.
    entries = chain(20)
    forged = chain(14, key=OTHER, start=entries[5])
    err = broken_at(entries[:6] + forged, trusted_signers={PUB})
    assert err.seq == 7


def test_verify_after_a_checkpoint() -> None:
    entries = chain(30)
    assert verify_chain(entries[20:], after=entries[19], trusted_signers={PUB}) == 10
    assert broken_at(entries[21:], after=entries[19]).seq == 21
    assert broken_at(entries[20:], after=entries[18]).seq == 20


def test_repr_is_short() -> None:
    text = repr(chain(1)[0])
    assert "seq=1" in text and len(text) < 200


# -- sans-IO -----------------------------------------------------------------------

FORBIDDEN = {"trio", "libp2p", "sqlite3", "sqlite_utils", "socket", "time", "os"}


def test_audit_core_is_sans_io() -> None:
    import shardnet.protocol._audit as audit

    tree = ast.parse(pathlib.Path(audit.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN
