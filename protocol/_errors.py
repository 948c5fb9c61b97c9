"""One exception hierarchy for everything the core can refuse.

Every error says whose fault it is (house style 11): ``ValueError`` subclasses
mean the caller passed something wrong; :class:`RemoteProtocolError` subclasses
mean bytes that came from somewhere else (a file, a peer) are bad, and name the
source when it is known. No code path returns a wrong key: anything that could
produce one raises one of these instead.
"""

from __future__ import annotations


class ShardnetError(Exception):
    """Base class of every error raised by :mod:`shardnet.protocol`."""


class RemoteProtocolError(ShardnetError):
    """Data from outside (a peer, a file) is malformed, forged or inconsistent."""


class MalformedEncoding(RemoteProtocolError):
    """Bytes do not decode to a well-formed record (size caps are checked first)."""


class InvalidSignature(RemoteProtocolError):
    """A signature does not verify under the expected key."""


class InvalidPoint(RemoteProtocolError):
    """A group element is not a valid point of the prime-order subgroup."""


class InvalidShare(RemoteProtocolError):
    """A share does not match the dealer's commitments.

    ``index`` is the share index; ``source`` names where it came from (a file or
    a custodian) when the caller told us.
    """

    def __init__(self, index: int, source: str | None = None, detail: str = "") -> None:
        self.index = index
        self.source = source
        who = f" from {source}" if source else ""
        msg = f"share {index}{who} does not match the keyset's commitments"
        super().__init__(msg + (f": {detail}" if detail else ""))


class InvalidShares(RemoteProtocolError):
    """Several shares failed verification; ``bad`` names each one."""

    def __init__(self, bad: list[InvalidShare]) -> None:
        self.bad = list(bad)
        super().__init__("; ".join(str(b) for b in self.bad))


class InvalidPartial(RemoteProtocolError):
    """A partial decryption or its DLEQ proof does not verify."""

    def __init__(self, index: int, source: str | None = None, detail: str = "") -> None:
        self.index = index
        self.source = source
        who = f" from {source}" if source else ""
        msg = f"partial decryption {index}{who} is invalid"
        super().__init__(msg + (f": {detail}" if detail else ""))


class TooFewShares(ShardnetError):
    """Fewer valid shares than the threshold.

    ``have`` valid shares of ``need`` required; ``bad`` lists the invalid ones.
    """

    def __init__(self, have: int, need: int, bad: list[InvalidShare] | None = None) -> None:
        self.have = have
        self.need = need
        self.bad = list(bad or [])
        msg = f"{have} of {need} required shares"
        if self.bad:
            names = ", ".join(_name(b.index, b.source) for b in self.bad)
            msg += f"; invalid: {names}"
        super().__init__(msg)


class TooFewPartials(ShardnetError):
    """Fewer valid partial decryptions than the threshold."""

    def __init__(self, have: int, need: int, bad: list[InvalidPartial] | None = None) -> None:
        self.have = have
        self.need = need
        self.bad = list(bad or [])
        msg = f"{have} of {need} required partial decryptions"
        if self.bad:
            names = ", ".join(_name(b.index, b.source) for b in self.bad)
            msg += f"; invalid: {names}"
        super().__init__(msg)


class DuplicateShare(ShardnetError, ValueError):
    """The same share index was supplied more than once."""

    def __init__(self, index: int, sources: list[str] | None = None) -> None:
        self.index = index
        self.sources = list(sources or [])
        where = f" ({', '.join(self.sources)})" if self.sources else ""
        super().__init__(f"share index {index} was supplied more than once{where}")


class MixedShares(ShardnetError, ValueError):
    """Shares from different keysets or epochs were combined."""


class ShardExpired(ShardnetError):
    """A shard or record is past its not-after time."""


class WrongRecipient(RemoteProtocolError):
    """A shard was sealed for another custodian."""


class DecryptionFailed(RemoteProtocolError):
    """An AEAD or HPKE ciphertext did not open (wrong key, or it was tampered with)."""


def _name(index: int, source: str | None) -> str:
    return f"{source} (index {index})" if source else f"index {index}"
