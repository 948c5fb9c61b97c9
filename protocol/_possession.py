"""Proof that a custodian holds the HPKE private key its admission names (sans-IO).

Before a custodian's first shard under an admission, its owner seals 32
random bytes to the custodian's certified HPKE key, for each KEM the
certificate lists, and the custodian answers with what it opened, signed.

The HPKE ``info`` of a challenge is ``POSSESSION_DOMAIN || challenger's peer
id || nonce``, and the custodian builds it itself from the authenticated
peer that asks and the nonce in the request. A sealed shard's ``info`` is
``_shard.HPKE_INFO`` and its signed metadata, which never starts with that domain. So a
challenge can never be a captured shard sent for decryption: under any other
``info`` the ciphertext does not open.

Frames: the request ``[CHALLENGE_TAG, 1, kem, nonce, ciphertext]``; the
reply a signed ``[PROOF_TAG, 1, challenger, kem, nonce, opened]``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ._codec import decode_record, encode, want, want_bytes
from ._errors import InvalidSignature, MalformedEncoding
from ._records import public_key_of
from ._shard import HpkeOpener, hpke_seal
from ._sign import Signer, open_signed, sign_body

POSSESSION_DOMAIN = b"shardnet/possession/v1\x00"
CHALLENGE_TAG = "shardnet/possession-challenge"
PROOF_TAG = "shardnet/possession-proof"
SECRET = 32
NONCE = 16
MAX_CHALLENGE = 4096


class PossessionFailed(InvalidSignature):
    """The custodian did not prove that it holds the key (a wrong or unsigned answer)."""


def challenge_info(challenger: str, nonce: bytes) -> bytes:
    return POSSESSION_DOMAIN + challenger.encode() + nonce


@dataclass(frozen=True)
class Challenge:
    kem: str
    nonce: bytes
    secret: bytes = b""  # known to the challenger only
    frame: bytes = b""

    @classmethod
    def make(cls, kem: str, public: bytes, *, challenger: str, rng: Callable[[int], bytes]) -> Challenge:
        nonce, secret = rng(NONCE), rng(SECRET)
        ct = hpke_seal(kem, public, secret, challenge_info(challenger, nonce))
        return cls(kem, nonce, secret, encode([CHALLENGE_TAG, 1, kem, nonce, ct]))

    def check(self, proof: bytes, *, custodian: str, challenger: str) -> None:
        """Raise PossessionFailed unless ``proof`` is ``custodian``'s signed answer to this."""
        try:
            f, _, _ = open_signed(proof, tag=PROOF_TAG, version=1, fields=4, signer=public_key_of(custodian),
                                  max_size=MAX_CHALLENGE)
        except (MalformedEncoding, InvalidSignature) as exc:
            raise PossessionFailed(f"{custodian}: no valid signed answer to the {self.kem} challenge ({exc})") from None
        if (f[0], f[1], f[2]) != (challenger, self.kem, self.nonce) or not isinstance(f[3], bytes) \
                or not hmac.compare_digest(f[3], self.secret):
            raise PossessionFailed(f"{custodian} did not open the {self.kem} challenge: it does not hold the "
                                   "HPKE key its admission names")


def answer(frame: bytes, openers: Mapping[str, HpkeOpener], *, challenger: str, key: Signer) -> bytes:
    """The custodian's side: open a challenge from ``challenger`` (the authenticated peer)
    under the ``info`` built here, and sign what came out. Raises DecryptionFailed when it
    does not open (never the case for a challenge sealed to our own key)."""
    kem, nonce, ct = decode_record(frame, CHALLENGE_TAG, 1, 3, max_size=MAX_CHALLENGE)
    want(kem, str, "kem")
    nonce = want_bytes(nonce, "nonce", NONCE)
    if kem not in openers:
        raise MalformedEncoding(f"this custodian has no {kem} key")
    opened = openers[kem].open(want_bytes(ct, "ciphertext"), challenge_info(challenger, nonce))
    return sign_body(key, encode([PROOF_TAG, 1, challenger, kem, nonce, opened]))


