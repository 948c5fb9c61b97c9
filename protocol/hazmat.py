"""Primitives under the recipes, for benchmarks and tests only.

Like pyca/cryptography's ``hazmat`` layer: these do no integrity checks. A
bare :func:`interpolate` of the wrong or too few shares returns a wrong
scalar without complaint; :func:`shardnet.protocol.recover_secret` is what
application code calls instead.
"""

from ._group import L as GROUP_ORDER
from ._group import scalar_bytes
from ._sign import VERIFIED
from ._vss import deal, interpolate


def verifications() -> int:
    """Ed25519 signatures verified so far in this process (records and audit entries)."""
    return VERIFIED[0]


__all__ = ["GROUP_ORDER", "deal", "interpolate", "scalar_bytes", "verifications"]
