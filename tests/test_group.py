"""Group arithmetic edge cases: the identity and points from outside."""

import pytest
from nacl import bindings as sodium

from shardnet.protocol import InvalidPoint
from shardnet.protocol import _group as g


def test_identity_is_handled_explicitly() -> None:
    assert g.base_mult(0) == g.IDENTITY
    assert g.base_mult(g.L) == g.IDENTITY
    assert g.mult(5, g.IDENTITY) == g.IDENTITY
    assert g.mult(0, g.G) == g.IDENTITY
    assert g.add(g.IDENTITY, g.G) == g.G
    assert g.add(g.G, g.IDENTITY) == g.G
    assert g.sub(g.G, g.G) == g.IDENTITY
    assert g.add(g.base_mult(5), g.base_mult(g.L - 5)) == g.IDENTITY


def test_scalar_arithmetic_matches_points() -> None:
    a, b = 1234567, g.L - 99
    assert g.add(g.base_mult(a), g.base_mult(b)) == g.base_mult(a + b)
    assert g.mult(a, g.base_mult(b)) == g.base_mult(a * b)


def test_outside_points_are_validated() -> None:
    assert g.check_point(g.G) == g.G
    with pytest.raises(InvalidPoint, match="identity"):
        g.check_point(g.IDENTITY)
    assert g.check_point(g.IDENTITY, allow_identity=True) == g.IDENTITY
    with pytest.raises(InvalidPoint):
        g.check_point(b"\x00" * 31)
    with pytest.raises(InvalidPoint):
        g.check_point(b"\xff" * 32)  # not canonical / not on the curve
    # A point with a torsion component: G plus a point of order 8.
    order8 = bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a")
    assert not sodium.crypto_core_ed25519_is_valid_point(order8)
    torsioned = sodium.crypto_core_ed25519_add(g.G, order8)
    with pytest.raises(InvalidPoint, match="subgroup"):
        g.check_point(torsioned)


def test_inverse_all() -> None:
    vals = [1, 2, 3, g.L - 1, 987654321]
    for v, inv in zip(vals, g.inverse_all(vals), strict=True):
        assert v * inv % g.L == 1


def test_scalar_decoding_refuses_non_canonical() -> None:
    from shardnet.protocol import MalformedEncoding

    with pytest.raises(MalformedEncoding):
        g.scalar_from_bytes(g.L.to_bytes(32, "little"))
    with pytest.raises(MalformedEncoding):
        g.scalar_from_bytes(b"\x01" * 31)
    assert g.scalar_from_bytes((g.L - 1).to_bytes(32, "little")) == g.L - 1
