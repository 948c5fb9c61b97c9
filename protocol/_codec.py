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

import math
from collections.abc import Mapping
from typing import Any

import msgpack

from ._errors import MalformedEncoding

MAX_RECORD = 1 << 20  # default cap for one record: 1 MiB


_NESTED = (dict, list, tuple)


def _canonical(value: Any) -> Any:
    # Leaves are returned as they are without a call each: long lists of scalars
    # (pull summaries) are the common case on the hot path.
    if isinstance(value, dict):
        return {k: _canonical(v) if isinstance(v := value[k], _NESTED) else v for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) if isinstance(v, _NESTED) else v for v in value]
    return value


def encode(value: Any) -> bytes:
    """Canonical bytes of ``value`` (maps sorted by key, tuples as arrays)."""
    try:
        packed: bytes = msgpack.packb(_canonical(value), use_bin_type=True)
    except (UnicodeEncodeError, OverflowError, TypeError) as exc:
        raise ValueError(f"cannot be encoded: {exc}") from None
    return packed


_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1  # msgpack's integer range


def strict(value: object, *, max_depth: int, what: str = "value") -> Any:
    """A canonical copy of ``value`` that holds only what the codec can write.

    Allowed: None, bool, int (msgpack's range), finite float, str, bytes, and
    lists and str-keyed maps of these, with at most ``max_depth`` levels of
    arrays and maps inside the outermost one.
    Maps come back with sorted keys, arrays as lists. ValueError otherwise.
    """
    return _strict(value, 0, max_depth, what)


def _strict(value: object, depth: int, max_depth: int, what: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValueError(f"{what} integer {value} is outside msgpack's range")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} floats must be finite")
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if depth > max_depth:  # the outermost array or map is depth 0
        raise ValueError(f"{what} is nested more than {max_depth} levels deep")
    if isinstance(value, (list, tuple)):
        return [_strict(v, depth + 1, max_depth, what) for v in value]
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise ValueError(f"{what} keys must be str, not {type(key).__name__}")
        return {str.__str__(k): _strict(value[k], depth + 1, max_depth, what) for k in sorted(value)}
    raise ValueError(f"{what} cannot hold a {type(value).__name__}")


def decode_own(data: bytes, *, max_size: int = MAX_RECORD, max_items: int = 4096) -> Any:
    """Decode msgpack this node wrote itself and checked when it stored it (its own shards
    at rest), without the canonical re-encoding :func:`decode` does: never for bytes from
    a peer."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > max_size:
        raise MalformedEncoding("expected bytes within the cap")
    try:
        return msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True, max_str_len=max_size,
                               max_bin_len=max_size, max_array_len=max_items, max_map_len=max_items, max_ext_len=0)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise MalformedEncoding(f"not valid msgpack: {type(exc).__name__}") from None


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
    if type(value[1]) is not int or value[1] != version:  # True == 1, but is not a version
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
