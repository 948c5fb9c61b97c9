"""C2SP signed notes, transparency-log checkpoints and their cosignatures.

- c2sp.org/signed-note: a text ending in a newline, a blank line, then one line per
  signature, ``— <key name> base64(key ID || signature)``. Ed25519 signatures (type
  0x01) sign the text; the key ID is ``SHA-256(name || 0x0A || 0x01 || key)[:4]``, and a
  verifier key is written ``<name>+<hex key ID>+base64(0x01 || key)``.
- c2sp.org/tlog-checkpoint: the text is ``<origin>\\n<tree size>\\n<base64 root>\\n``,
  then optional extension lines.
- c2sp.org/tlog-cosignature, the Ed25519 kind (type 0x04): a witness signs
  ``cosignature/v1\\ntime <t>\\n`` followed by the checkpoint's text, and its signature
  line holds ``key ID || u64 big-endian t || signature``.

A node signs its checkpoints with its identity key. That key signs nothing else
without a domain tag that holds a NUL byte (``SIG_DOMAIN`` and the others), and a note
holds no control character but newlines, so no note is ever a record's signed bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ._errors import InvalidSignature, MalformedEncoding
from ._sign import Signer, public_bytes

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
DASH = "\u2014 "
MAX_NOTE = 64 * 1024
#: The spec asks verifiers to take at least 16; a checkpoint carries its log's and
#: up to this many witnesses'.
MAX_SIGNATURES = 64
COSIGN_HEADER = "cosignature/v1\n"


def key_id(name: str, kind: int, key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes((kind,)) + key).digest()[:4]


def _check_name(name: str) -> str:
    if not name or any(c.isspace() or c == "+" for c in name) or any(ord(c) < 0x20 for c in name):
        raise MalformedEncoding(f"a note key name is non-empty, without spaces or '+': {name[:60]!r}")
    return name


@dataclass(frozen=True)
class Verifier:
    """A key that may sign notes: its name, kind (ED25519 or COSIGNATURE_V1) and raw
    Ed25519 public key."""

    name: str
    kind: int
    key: bytes

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.kind, self.key)

    def vkey(self) -> str:
        return f"{self.name}+{self.id.hex()}+{base64.b64encode(bytes((self.kind,)) + self.key).decode()}"

    @classmethod
    def parse(cls, text: str) -> Verifier:
        """A verifier key, ``<name>+<hex id>+base64(kind || key)``."""
        name, sep, rest = text.strip().partition("+")
        hex_id, sep2, b64 = rest.partition("+")
        try:
            raw = base64.b64decode(b64, validate=True)
            want = bytes.fromhex(hex_id)
        except (binascii.Error, ValueError):
            raise MalformedEncoding("a verifier key is NAME+HEXID+BASE64KEY") from None
        if not (sep and sep2) or len(want) != 4 or len(raw) != 33 or raw[0] not in (ED25519, COSIGNATURE_V1):
            raise MalformedEncoding("a verifier key is NAME+HEXID+BASE64KEY, of an Ed25519 key (type 1 or 4)")
        v = cls(_check_name(name), raw[0], raw[1:])
        if v.id != want:
            raise MalformedEncoding(f"verifier key {name[:60]}: the key ID does not match the key")
        return v


@dataclass(frozen=True)
class Signature:
    name: str
    id: bytes
    data: bytes  # what follows the key ID

    def line(self) -> str:
        return f"{DASH}{self.name} {base64.b64encode(self.id + self.data).decode()}\n"


@dataclass(frozen=True)
class Note:
    text: str  # ends in a newline
    signatures: tuple[Signature, ...]

    def to_text(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


def parse(note: str | bytes) -> Note:
    """A signed note's text and signature lines, unverified."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedEncoding("a signed note is UTF-8") from None
    if len(note.encode()) > MAX_NOTE:
        raise MalformedEncoding(f"a signed note is at most {MAX_NOTE} bytes")
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise MalformedEncoding("a signed note holds no control characters but newlines")
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise MalformedEncoding("a signed note is its text, a blank line and signature lines")
    text, lines = note[:cut + 1], note[cut + 2:].splitlines()
    if not lines or len(lines) > MAX_SIGNATURES:
        raise MalformedEncoding(f"a signed note has 1 to {MAX_SIGNATURES} signature lines")
    sigs = []
    for line in lines:
        name, sep, b64 = line.removeprefix(DASH).partition(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except binascii.Error:
            raw = b""
        if not line.startswith(DASH) or not sep or len(raw) < 5:
            raise MalformedEncoding("a note signature line is '— NAME BASE64'")
        sigs.append(Signature(_check_name(name), raw[:4], raw[4:]))
    return Note(text, tuple(sigs))


def _verify(key: bytes, sig: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(sig, message)
    except (_CryptoInvalidSignature, ValueError):
        return False
    return True


def signed_message(v: Verifier, text: str, sig: Signature) -> tuple[bytes, bytes] | None:
    """(message, Ed25519 signature) that ``sig`` by ``v`` stands for; None if the
    signature's shape is wrong for its kind."""
    if v.kind == ED25519:
        return (text.encode(), sig.data) if len(sig.data) == 64 else None
    if len(sig.data) != 72:
        return None
    when = int.from_bytes(sig.data[:8], "big")
    if when >= 1 << 63:
        return None
    return cosigned_message(text, when), sig.data[8:]


def cosigned_message(text: str, when: int) -> bytes:
    return f"{COSIGN_HEADER}time {when}\n{text}".encode()


@dataclass(frozen=True)
class Opened:
    text: str
    verified: tuple[tuple[Verifier, Signature], ...]  # by known keys, each verified
    unknown: int  # lines from keys not in the list, ignored


def open_note(note: str | bytes, known: list[Verifier]) -> Opened:
    """Verify a signed note against ``known`` keys, as c2sp.org/signed-note says: lines of
    unknown keys are ignored, a known key's line that fails refuses the whole note, and
    a note that no known key signed is refused."""
    n = parse(note)
    by = {(v.name, v.id): v for v in known}
    verified, unknown = [], 0
    for sig in n.signatures:
        v = by.get((sig.name, sig.id))
        if v is None:
            unknown += 1
            continue
        got = signed_message(v, n.text, sig)
        if got is None or not _verify(v.key, got[1], got[0]):
            raise InvalidSignature(f"the note signature of {sig.name[:60]} does not verify")
        verified.append((v, sig))
    if not verified:
        raise InvalidSignature("no known key signed the note")
    return Opened(n.text, tuple(verified), unknown)


def sign(text: str, name: str, key: Signer) -> Signature:
    """An Ed25519 note signature (type 0x01) of ``text`` by ``key`` under ``name``."""
    _check_text(text)
    v = Verifier(_check_name(name), ED25519, public_bytes(key))
    return Signature(v.name, v.id, key.sign(text.encode()))


def cosign(text: str, name: str, key: Signer, when: int) -> Signature:
    """A c2sp.org/tlog-cosignature v1 (type 0x04) of checkpoint ``text`` at ``when``."""
    _check_text(text)
    if not 0 <= when < 1 << 63:
        raise ValueError("a cosignature time is a POSIX time below 2**63")
    v = Verifier(_check_name(name), COSIGNATURE_V1, public_bytes(key))
    return Signature(v.name, v.id, when.to_bytes(8, "big") + key.sign(cosigned_message(text, when)))


def cosignature_time(sig: Signature) -> int:
    return int.from_bytes(sig.data[:8], "big")


def _check_text(text: str) -> None:
    if not text.endswith("\n") or "\n\n" in text or any(ord(c) < 0x20 and c != "\n" for c in text):
        raise ValueError("a note text ends in a newline and holds no blank line or control character")


# -- checkpoints (c2sp.org/tlog-checkpoint) ------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "" or any(not line for line in lines[:-1]):
            raise MalformedEncoding("a checkpoint is origin, size and root hash lines, then extensions")
        origin, size, root = lines[0], lines[1], lines[2]
        if not size.isascii() or not size.isdigit() or (size != "0" and size.startswith("0")) or len(size) > 20:
            raise MalformedEncoding("a checkpoint's tree size is a decimal number without leading zeroes")
        try:
            digest = base64.b64decode(root, validate=True)
        except binascii.Error:
            digest = b""
        if len(digest) != 32:
            raise MalformedEncoding("a checkpoint's root hash is 32 bytes in base64")
        if int(size) >= 1 << 63:
            raise MalformedEncoding("a checkpoint's tree size is below 2**63")
        return cls(origin, int(size), digest, tuple(lines[3:-1]))


def sign_checkpoint(cp: Checkpoint, name: str, key: Signer) -> str:
    """``cp`` as a signed note of ``key`` (the log's key name is its origin, by C2SP's
    recommendation, when ``name`` is the origin)."""
    text = cp.text()
    return Note(text, (sign(text, name, key),)).to_text()


def add_signatures(note: str, sigs: list[Signature]) -> str:
    """``note`` with ``sigs`` added (a line already there is not repeated)."""
    n = parse(note)
    have = set(n.signatures)
    return Note(n.text, n.signatures + tuple(s for s in sigs if s not in have)).to_text()
