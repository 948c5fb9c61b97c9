"""Signed threat feeds (private): the document, its checks, and what it says.

A feed is a JSON document that a node polls (a file or a URL) and checks
against the one Ed25519 key its operator configured for it
(``shardnet feed add ... --signer PUBKEY``)::

    {"shardnet_feed": 1,
     "body": "<base64 of the body's UTF-8 JSON bytes>",
     "signature": "<base64 Ed25519 signature of those bytes>"}

and the body::

    {"feed": "acme-threat-intel",        # a name, 1 to 64 characters
     "seq": 42,                          # grows with every new issue of the feed
     "issued": 1800000000,               # Unix seconds
     "expires": 1800003600,              # past it, the feed says nothing any more
     "threat_level": 2,                  # 0 (low) to 5 (critical); optional, default 0
     "compromised": ["12D3KooW..."],     # custodians (peer ids): resharded away
     "unsafe": [{"attr": "country", "value": "XX"}]}   # or org, city, continent

A document is refused, with one line, when it is unsigned or its signature is
not the configured signer's, when it is stale (expired, or issued in the
future), when it is a replay (a lower ``seq`` than one already taken, or the
same ``seq`` with another body), or when it is over :data:`MAX_FEED` bytes or
malformed.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ._errors import InvalidSignature, MalformedEncoding, ShardnetError
from ._records import public_key_of
from ._sign import Signer
from ._wire import MAX_CLOCK_SKEW

FEED_VERSION = 1
#: Bytes of a feed document at most.
MAX_FEED = 64 * 1024
#: Entries of each kind a feed holds at most.
MAX_ENTRIES = 1024
ATTRS = ("country", "org", "city", "continent")
MAX_LEVEL = 5


class StaleFeed(ShardnetError):
    """An expired feed, one issued in the future, or a replay of an older issue."""


@dataclass(frozen=True)
class Feed:
    name: str
    seq: int
    issued: int
    expires: int
    threat_level: int
    compromised: frozenset[str]
    unsafe: frozenset[tuple[str, str]]
    body: bytes

    def to_json(self) -> dict[str, Any]:
        return {"feed": self.name, "seq": self.seq, "issued": self.issued, "expires": self.expires,
                "threat_level": self.threat_level, "compromised": sorted(self.compromised),
                "unsafe": [{"attr": a, "value": v} for a, v in sorted(self.unsafe)]}


def signer_key(text: str) -> bytes:
    """The feed signer's Ed25519 public key: a peer id, or 64 hex digits."""
    text = text.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        return public_key_of(text)
    except MalformedEncoding:
        raise MalformedEncoding("a feed signer is a peer id or 64 hex digits of an Ed25519 public key") from None


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise MalformedEncoding(f"feed: {what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedEncoding(f"feed: {what} is not base64") from None


def _int(body: dict[str, Any], key: str, lo: int, hi: int, default: int | None = None) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise MalformedEncoding(f"feed: {key} must be an integer from {lo} to {hi}")
    return value


def parse(document: bytes, signer: bytes) -> Feed:
    """Check a feed document's size, shape and signature (by ``signer``); what it says."""
    if len(document) > MAX_FEED:
        raise MalformedEncoding(f"feed: over {MAX_FEED} bytes")
    try:
        outer = json.loads(document)
    except (UnicodeDecodeError, ValueError):
        raise MalformedEncoding("feed: not JSON") from None
    if not isinstance(outer, dict) or outer.get("shardnet_feed") != FEED_VERSION:
        raise MalformedEncoding(f"feed: not a shardnet feed (version {FEED_VERSION})")
    if "signature" not in outer:
        raise InvalidSignature("feed: unsigned")
    body = _b64(outer.get("body"), "body")
    signature = _b64(outer["signature"], "signature")
    try:
        Ed25519PublicKey.from_public_bytes(signer).verify(signature, body)
    except (CryptoInvalidSignature, ValueError):
        raise InvalidSignature("feed: the signature is not the configured signer's") from None
    try:
        fields = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise MalformedEncoding("feed: the body is not JSON") from None
    if not isinstance(fields, dict):
        raise MalformedEncoding("feed: the body is not a JSON object")
    name = fields.get("feed")
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        raise MalformedEncoding("feed: its name is 1 to 64 characters")
    compromised = fields.get("compromised", [])
    unsafe = fields.get("unsafe", [])
    if not isinstance(compromised, list) or not isinstance(unsafe, list) or \
            max(len(compromised), len(unsafe)) > MAX_ENTRIES:
        raise MalformedEncoding(f"feed: compromised and unsafe are lists of at most {MAX_ENTRIES}")
    for peer in compromised:
        if not isinstance(peer, str):
            raise MalformedEncoding("feed: a compromised custodian is a peer id")
        public_key_of(peer)
    marks = set()
    for u in unsafe:
        if not (isinstance(u, dict) and u.get("attr") in ATTRS and isinstance(u.get("value"), str)
                and 0 < len(u["value"]) <= 128):
            raise MalformedEncoding(f"feed: an unsafe entry is {{attr: one of {', '.join(ATTRS)}, value}}")
        value = u["value"].upper() if u["attr"] in ("country", "continent") else u["value"]
        marks.add((u["attr"], value))  # as admissions spell them (placement's upper case)
    return Feed(name, _int(fields, "seq", 0, 2**53), _int(fields, "issued", 0, 2**40),
                _int(fields, "expires", 0, 2**40), _int(fields, "threat_level", 0, MAX_LEVEL, 0),
                frozenset(compromised), frozenset(marks), body)


def take(document: bytes, signer: bytes, now: int, last: Feed | None) -> Feed | None:
    """The feed in ``document`` if it is news after ``last`` (None: the same issue again);
    raises for what is refused."""
    feed = parse(document, signer)
    if feed.issued > now + MAX_CLOCK_SKEW:
        raise StaleFeed(f"feed {feed.name}: issued in the future ({feed.issued})")
    if feed.expires < now:
        raise StaleFeed(f"feed {feed.name}: expired at {feed.expires}")
    if last is not None:
        if feed.seq < last.seq:
            raise StaleFeed(f"feed {feed.name}: seq {feed.seq} is older than seq {last.seq} taken (a replay)")
        if feed.seq == last.seq:
            if feed.body != last.body:
                raise StaleFeed(f"feed {feed.name}: another body for seq {feed.seq} (a replay or a forgery "
                                "by the signer)")
            return None
    return feed


def make(key: Signer, *, name: str, seq: int, issued: int, expires: int, threat_level: int = 0,
         compromised: list[str] | None = None, unsafe: list[tuple[str, str]] | None = None) -> bytes:
    """A signed feed document (for feed publishers and tests)."""
    body = json.dumps({"feed": name, "seq": seq, "issued": issued, "expires": expires,
                       "threat_level": threat_level, "compromised": list(compromised or []),
                       "unsafe": [{"attr": a, "value": v} for a, v in unsafe or []]},
                      sort_keys=True, separators=(",", ":")).encode()
    return json.dumps({"shardnet_feed": FEED_VERSION, "body": base64.b64encode(body).decode(),
                       "signature": base64.b64encode(key.sign(body)).decode()}).encode()
