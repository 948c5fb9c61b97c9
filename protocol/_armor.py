"""Text files for offline (air-gapped) use: share files and keyset files.

A share file::

    -----BEGIN SHARDNET SHARE-----
    Version: 1
    Keyset: 0f1e2d3c4b5a69788796a5b4c3d2e1f0
    Epoch: 0
    Index: 2
    Threshold: 3
    Shares: 5
    Value: 5c1d...64 hex digits...
    Checksum: 8d2c6a0e91b7f355
    -----END SHARDNET SHARE-----

``Checksum`` is the first 8 bytes (16 hex digits) of SHA-256 over the header
lines above it, each ending in ``\\n``: it catches a mistyped or damaged file
and says so. The lines must appear in this order. A keyset file has the same
frame (``SHARDNET KEYSET``) with informational headers, a checksum, and then
the owner-signed keyset record in base64 (64 characters a line); the headers
must agree with the signed record.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from . import _group as g
from ._errors import MalformedEncoding
from ._keyset import KEYSET_ID_LEN, Keyset, Share

_SHARE_FIELDS = ("Version", "Keyset", "Epoch", "Index", "Threshold", "Shares", "Value")
_KEYSET_FIELDS = ("Version", "Keyset", "Epoch", "Threshold", "Shares", "Owner")
MAX_FILE = 1 << 20


def _checksum(lines: list[str]) -> str:
    return hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()[:16]


def _frame(kind: str, headers: list[str], body: list[str]) -> str:
    lines = [f"-----BEGIN SHARDNET {kind}-----", *headers, f"Checksum: {_checksum(headers)}", *body,
             f"-----END SHARDNET {kind}-----"]
    return "\n".join(lines) + "\n"


def _unframe(text: str, kind: str, fields: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    if len(text) > MAX_FILE:
        raise MalformedEncoding(f"{kind.lower()} file is larger than {MAX_FILE} bytes")
    lines = [line.strip() for line in text.strip().splitlines()]
    begin, end = f"-----BEGIN SHARDNET {kind}-----", f"-----END SHARDNET {kind}-----"
    if not lines or lines[0] != begin:
        raise MalformedEncoding(f"not a shardnet {kind.lower()} file (missing {begin})")
    if lines[-1] != end:
        raise MalformedEncoding(f"{kind.lower()} file is truncated (missing {end})")
    n = len(fields)
    if len(lines) < n + 3:
        raise MalformedEncoding(f"{kind.lower()} file is truncated")
    headers = lines[1 : 1 + n]
    values: dict[str, str] = {}
    for want_name, line in zip(fields, headers, strict=True):
        name, sep, value = line.partition(":")
        if not sep or name.strip() != want_name:
            raise MalformedEncoding(f"{kind.lower()} file: expected a {want_name}: line, got {line[:40]!r}")
        values[want_name] = value.strip()
    name, sep, got = lines[1 + n].partition(":")
    if name != "Checksum" or not sep:
        raise MalformedEncoding(f"{kind.lower()} file: missing Checksum line")
    canon = [f"{f}: {values[f]}" for f in fields]
    # compare_digest takes ASCII text only: a mistyped non-ASCII checksum is a mismatch, not a TypeError.
    if not hmac.compare_digest(got.strip().lower().encode("utf-8", "replace"), _checksum(canon).encode()):
        raise MalformedEncoding(f"{kind.lower()} file: checksum mismatch (the file is damaged or mistyped)")
    return values, lines[2 + n : -1]


def _int(values: dict[str, str], name: str, lo: int, hi: int) -> int:
    v = values[name]
    if not (v.isascii() and v.isdigit()) or not lo <= int(v) <= hi:
        raise MalformedEncoding(f"{name}: expected a number in {lo}..{hi}")
    return int(v)


def _hex(values: dict[str, str], name: str, size: int) -> bytes:
    try:
        b = bytes.fromhex(values[name])
    except ValueError:
        raise MalformedEncoding(f"{name}: not hex") from None
    if len(b) != size:
        raise MalformedEncoding(f"{name}: expected {size} bytes")
    return b


def share_to_text(share: Share, threshold: int, shares: int) -> str:
    headers = [
        "Version: 1", f"Keyset: {share.keyset_id.hex()}", f"Epoch: {share.epoch}",
        f"Index: {share.index}", f"Threshold: {threshold}", f"Shares: {shares}",
        f"Value: {g.scalar_bytes(share.value).hex()}",
    ]
    return _frame("SHARE", headers, [])


def share_from_text(text: str) -> tuple[Share, int, int]:
    """Parse a share file; return the share, its threshold and its share count."""
    values, rest = _unframe(text, "SHARE", _SHARE_FIELDS)
    if rest:
        raise MalformedEncoding("share file: unexpected lines after the checksum")
    if values["Version"] != "1":
        raise MalformedEncoding(f"share file: unsupported version {values['Version'][:10]!r}")
    t = _int(values, "Threshold", 2, 1000)
    n = _int(values, "Shares", t, 1000)
    share = Share(
        _hex(values, "Keyset", KEYSET_ID_LEN), _int(values, "Epoch", 0, 2**32 - 1),
        _int(values, "Index", 1, n), g.scalar_from_bytes(_hex(values, "Value", 32), "Value"),
    )
    return share, t, n


def keyset_to_text(keyset: Keyset) -> str:
    headers = [
        "Version: 1", f"Keyset: {keyset.id_hex}", f"Epoch: {keyset.epoch}",
        f"Threshold: {keyset.threshold}", f"Shares: {keyset.shares}", f"Owner: {keyset.owner.hex()}",
    ]
    b64 = base64.b64encode(keyset.signed).decode()
    return _frame("KEYSET", headers, [b64[i : i + 64] for i in range(0, len(b64), 64)])


def keyset_from_text(text: str) -> Keyset:
    values, body = _unframe(text, "KEYSET", _KEYSET_FIELDS)
    if values["Version"] != "1":
        raise MalformedEncoding(f"keyset file: unsupported version {values['Version'][:10]!r}")
    try:
        raw = base64.b64decode("".join(body), validate=True)
    except (binascii.Error, ValueError):
        raise MalformedEncoding("keyset file: the record is not valid base64") from None
    keyset = Keyset.from_bytes(raw)
    if (
        values["Keyset"] != keyset.id_hex or values["Epoch"] != str(keyset.epoch)
        or values["Threshold"] != str(keyset.threshold) or values["Shares"] != str(keyset.shares)
        or values["Owner"] != keyset.owner.hex()
    ):
        raise MalformedEncoding("keyset file: the headers disagree with the signed record")
    return keyset
