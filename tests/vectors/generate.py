"""Regenerate tests/vectors/sharing.json (only when the format changes on purpose).

    .venv/bin/python -m tests.vectors.generate

Every value comes from a fixed seed through tests.drbg.Drbg, and Ed25519
signatures are deterministic, so the output is byte-for-byte reproducible.
"""

from __future__ import annotations

import json
import pathlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet.protocol import _group as g
from shardnet.protocol import partial_decrypt, share_to_text, split_key

from ..drbg import Drbg

CASES = [
    {"seed": "00", "t": 2, "n": 3, "master": "6b6579", "now": 1700000000, "kem": "x25519"},
    {"seed": "01", "t": 3, "n": 5, "master": "00" * 32, "now": 1700000001, "kem": "x25519"},
    {"seed": "02", "t": 5, "n": 10, "master": "ff" * 64, "now": 1700000002, "kem": "mlkem768-x25519"},
]
OWNER_SEED = bytes(range(32))
PATH = pathlib.Path(__file__).with_name("sharing.json")


def build(case: dict) -> dict:
    owner = Ed25519PrivateKey.from_private_bytes(OWNER_SEED)
    keyset, shares = split_key(
        bytes.fromhex(case["master"]), case["t"], case["n"], owner=owner, now=case["now"],
        kem=case["kem"], rng=Drbg(bytes.fromhex(case["seed"])),
    )
    prng = Drbg(b"partial" + bytes.fromhex(case["seed"]))
    return {
        **case,
        "owner_seed": OWNER_SEED.hex(),
        "keyset": keyset.signed.hex(),
        "public_key": keyset.public_key.hex(),
        "shares": [g.scalar_bytes(s.value).hex() for s in shares],
        "share_file_1": share_to_text(shares[0], case["t"], case["n"]),
        "partial_1": partial_decrypt(keyset, shares[0], b"vector-request", rng=prng).to_bytes().hex(),
    }


def main() -> None:
    PATH.write_text(json.dumps({"cases": [build(c) for c in CASES]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
