"""A deterministic byte stream for tests and vectors (never for real keys)."""

from shardnet.simulations._drbg import Drbg

__all__ = ["Drbg"]
