"""Signed threat feeds (protocol/_feed.py): what is taken, and what is refused with one line."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.protocol import feed

NOW = 1_800_000_000
KEY = Ed25519PrivateKey.from_private_bytes(b"\x11" * 32)
SIGNER = KEY.public_key().public_bytes_raw()
PEER = p.peer_id_of(Ed25519PrivateKey.from_private_bytes(b"\x22" * 32).public_key().public_bytes_raw())


def _doc(seq: int = 1, **kw: object) -> bytes:
    args = {"name": "intel", "seq": seq, "issued": NOW - 10, "expires": NOW + 3600, "threat_level": 3,
            "compromised": [PEER], "unsafe": [("country", "XX")], **kw}
    return feed.make(KEY, **args)  # type: ignore[arg-type]


def test_a_signed_feed_says_what_it_marks() -> None:
    f = feed.take(_doc(), SIGNER, NOW, None)
    assert f is not None and f.compromised == {PEER} and f.unsafe == {("country", "XX")} and f.threat_level == 3
    assert feed.signer_key(p.peer_id_of(SIGNER)) == SIGNER == feed.signer_key(SIGNER.hex())
    assert feed.take(_doc(), SIGNER, NOW, f) is None  # the same issue again: nothing new
    assert feed.take(_doc(2), SIGNER, NOW, f) is not None


def test_unsigned_forged_stale_replayed_and_malformed_feeds_are_refused() -> None:
    good = json.loads(_doc())
    unsigned = json.dumps({k: v for k, v in good.items() if k != "signature"}).encode()
    with pytest.raises(p.InvalidSignature, match="unsigned"):
        feed.take(unsigned, SIGNER, NOW, None)
    other = Ed25519PrivateKey.from_private_bytes(b"\x33" * 32).public_key().public_bytes_raw()
    with pytest.raises(p.InvalidSignature, match="configured signer"):
        feed.take(_doc(), other, NOW, None)
    body = json.loads(base64.b64decode(good["body"]))
    body["compromised"] = []
    forged = json.dumps({**good, "body": base64.b64encode(json.dumps(body).encode()).decode()}).encode()
    with pytest.raises(p.InvalidSignature):
        feed.take(forged, SIGNER, NOW, None)
    with pytest.raises(feed.StaleFeed, match="expired"):
        feed.take(_doc(expires=NOW - 1), SIGNER, NOW, None)
    with pytest.raises(feed.StaleFeed, match="future"):
        feed.take(_doc(issued=NOW + 3600), SIGNER, NOW, None)
    taken = feed.take(_doc(5), SIGNER, NOW, None)
    with pytest.raises(feed.StaleFeed, match="replay"):
        feed.take(_doc(4), SIGNER, NOW, taken)
    with pytest.raises(feed.StaleFeed, match="another body"):
        feed.take(_doc(5, threat_level=0), SIGNER, NOW, taken)
    for bad in (b"not json", b"{}", b"x" * (feed.MAX_FEED + 1), _doc(unsafe=[("planet", "Mars")]),
                _doc(compromised=["not-a-peer"]), _doc(threat_level=9), _doc(name="")):
        with pytest.raises(p.MalformedEncoding):
            feed.take(bad, SIGNER, NOW, None)
    with pytest.raises(p.MalformedEncoding, match="peer id or 64 hex"):
        feed.signer_key("nope")
