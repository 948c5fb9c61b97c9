"""Canonical msgpack encoding with size caps (private).

A record on the wire or on disk is a msgpack array whose first two items are a
domain tag (str) and a version (int). Maps are written with sorted keys, so the
encoding of a value is unique; :func:`decode` re-encodes what it read and
refuses anything that is not in canonical form, which makes "the bytes that were
signed" and "the value that was decoded" the same thing.

Untrusted input is bounded before it is decoded (house style 8): the total size
first, then every string, bytes, array and map length inside msgpack itself.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ._errors import MalformedEncoding

MAX_RECORD = 1 << 20  # default cap for one record: 1 MiB


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def encode(value: Any) -> bytes:
    """Canonical bytes of ``value`` (maps sorted by key, tuples as arrays)."""
    return msgpack.packb(_canonical(value), use_bin_type=True)


def decode(data: bytes, *, max_size: int = MAX_RECORD, max_items: int = 4096) -> Any:
    """Decode canonical msgpack, refusing oversized or non-canonical input."""
    if not isinstance(data, (bytes, bytearray)):
        raise MalformedEncoding("expected bytes")
    if len(data) > max_size:
        raise MalformedEncoding(f"record is {len(data)} bytes, over the {max_size}-byte cap")
    try:
        value = msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=max_items,
            max_map_len=max_items,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise MalformedEncoding(f"not valid msgpack: {type(exc).__name__}") from None
    try:
        again = encode(value)
    except Exception:
        raise MalformedEncoding("not canonical msgpack") from None
    if again != bytes(data):
        raise MalformedEncoding("not canonical msgpack")
    return value


def decode_record(
    data: bytes, tag: str, version: int, fields: int, *, max_size: int = MAX_RECORD
) -> list[Any]:
    """Decode ``[tag, version, *fields]`` and check the tag, version and arity."""
    value = decode(data, max_size=max_size)
    if not isinstance(value, list) or len(value) < 2:
        raise MalformedEncoding(f"expected a {tag} record")
    if value[0] != tag:
        raise MalformedEncoding(f"expected a {tag} record, got {str(value[0])[:40]!r}")
    if value[1] != version:
        raise MalformedEncoding(f"{tag}: unsupported version {value[1]!r}")
    if len(value) != 2 + fields:
        raise MalformedEncoding(f"{tag}: expected {fields} fields, got {len(value) - 2}")
    return value[2:]


def want(value: Any, typ: type | tuple[type, ...], what: str) -> Any:
    """Type-check one decoded field (bool is not an int here)."""
    if isinstance(value, bool) and typ is not bool:
        raise MalformedEncoding(f"{what}: wrong type")
    if not isinstance(value, typ):
        raise MalformedEncoding(f"{what}: wrong type")
    return value


def want_bytes(value: Any, what: str, size: int | None = None) -> bytes:
    want(value, bytes, what)
    if size is not None and len(value) != size:
        raise MalformedEncoding(f"{what}: expected {size} bytes")
    return bytes(value)


def want_int(value: Any, what: str, lo: int, hi: int) -> int:
    want(value, int, what)
    if not lo <= value <= hi:
        raise MalformedEncoding(f"{what}: {value} out of range {lo}..{hi}")
    return int(value)
