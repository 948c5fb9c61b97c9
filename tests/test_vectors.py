"""Known-answer vectors: the committed file is reproduced byte for byte."""

import json

from shardnet.protocol import Keyset, Partial, Share, combine_key
from shardnet.protocol import _group as g

from .vectors.generate import CASES, PATH, build


def test_vectors_reproduce_byte_for_byte() -> None:
    stored = json.loads(PATH.read_text())["cases"]
    assert len(stored) == len(CASES)
    for case, want in zip(CASES, stored, strict=True):
        assert build(case) == want


def test_vectors_decode_and_combine() -> None:
    for want in json.loads(PATH.read_text())["cases"]:
        keyset = Keyset.from_bytes(bytes.fromhex(want["keyset"]))
        shares = [
            Share(keyset.keyset_id, 0, i + 1, g.scalar_from_bytes(bytes.fromhex(v)))
            for i, v in enumerate(want["shares"])
        ]
        assert combine_key(keyset, shares[: want["t"]]).master == bytes.fromhex(want["master"])
        p = Partial.from_bytes(bytes.fromhex(want["partial_1"]))
        assert p.index == 1
        assert keyset.public_key.hex() == want["public_key"]
