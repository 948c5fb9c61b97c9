"""Signed notes, checkpoints and cosignatures (protocol/_note.py), against the examples of
c2sp.org/signed-note and golang.org/x/mod/sumdb/note."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shardnet import protocol as p
from shardnet.protocol import note, tlog

# c2sp.org/signed-note, "Example": this verifier key verifies this note.
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = ("This is an example message.\n\n"
             "\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRK"
             "uwHjG1Yu72IneyaQM=\n")
# golang.org/x/mod/sumdb/note's documentation example (PeterNeumann).
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_NOTE = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n\n"
           "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n")

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
WITNESS = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def test_the_published_examples_verify() -> None:
    for vkey, text in ((SPEC_VKEY, SPEC_NOTE), (GO_VKEY, GO_NOTE)):
        v = note.Verifier.parse(vkey)
        assert v.vkey() == vkey
        opened = note.open_note(text, [v])
        assert opened.text == text[:text.rindex("\n\n") + 1] and opened.unknown == 0
        with pytest.raises(p.InvalidSignature):  # one flipped character of the text
            note.open_note(text.replace("is", "iz", 1), [v])


def test_unknown_keys_are_ignored_and_a_known_bad_one_refuses() -> None:
    v = note.Verifier.parse(SPEC_VKEY)
    other = note.Verifier.parse(GO_VKEY)
    with pytest.raises(p.InvalidSignature, match="no known key"):
        note.open_note(SPEC_NOTE, [other])
    both = note.add_signatures(SPEC_NOTE, list(note.parse(GO_NOTE).signatures))
    assert note.open_note(both, [v]).unknown == 1
    # the PeterNeumann line under the example's text: known key, wrong text
    with pytest.raises(p.InvalidSignature, match="PeterNeumann"):
        note.open_note(both, [v, other])


def test_a_checkpoint_signed_and_cosigned_round_trips() -> None:
    t = tlog.MemoryTree()
    for i in range(5):
        t.append(b"entry %d" % i)
    cp = note.Checkpoint("shardnet/audit/test", t.size, t.root())
    signed = note.sign_checkpoint(cp, cp.origin, KEY)
    log_key = note.Verifier(cp.origin, note.ED25519, KEY.public_key().public_bytes_raw())
    opened = note.open_note(signed, [log_key])
    assert note.Checkpoint.from_text(opened.text) == cp
    assert signed.startswith("shardnet/audit/test\n5\n")
    cosig = note.cosign(cp.text(), "witness/1", WITNESS, 1_800_000_000)
    with_cosig = note.add_signatures(signed, [cosig])
    assert note.add_signatures(with_cosig, [cosig]) == with_cosig
    w = note.Verifier("witness/1", note.COSIGNATURE_V1, WITNESS.public_key().public_bytes_raw())
    opened = note.open_note(with_cosig, [log_key, w])
    assert [v.kind for v, _ in opened.verified] == [note.ED25519, note.COSIGNATURE_V1]
    assert note.cosignature_time(opened.verified[1][1]) == 1_800_000_000
    # the same key as a plain note signer is a different key ID: the cosignature is unknown to it
    assert note.open_note(with_cosig, [log_key, note.Verifier("witness/1", note.ED25519, w.key)]).unknown == 1
    # a cosignature moved to another time does not verify
    moved = note.Signature(cosig.name, cosig.id, (1_800_000_001).to_bytes(8, "big") + cosig.data[8:])
    with pytest.raises(p.InvalidSignature):
        note.open_note(note.add_signatures(signed, [moved]), [log_key, w])


@pytest.mark.parametrize("text, why", [
    ("a\n5\n" + "A" * 44 + "\n", "32 bytes"),
    ("a\n05\n" + "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n", "leading zeroes"),
    ("a\n-1\n" + "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n", "decimal"),
    ("a\n1\n", "origin, size and root"),
    ("a\n1\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=", "origin, size and root"),
])
def test_malformed_checkpoints_are_refused(text: str, why: str) -> None:
    with pytest.raises(p.MalformedEncoding, match=why):
        note.Checkpoint.from_text(text)


@pytest.mark.parametrize("bad", [
    "no blank line\n\u2014 k AAAAAAA=\n",
    "text\n\n\u2014 k AAAA\n",  # under 5 bytes
    "text\n\n- k AAAAAAAA\n",  # no em dash
    "text\n\n\u2014 k+x AAAAAAAA\n",  # a plus in the name
    "te\x01xt\n\n\u2014 k AAAAAAAA\n",
    "text\n\n",
])
def test_malformed_notes_are_refused(bad: str) -> None:
    with pytest.raises(p.MalformedEncoding):
        note.open_note(bad, [note.Verifier.parse(SPEC_VKEY)])


def test_vkeys_are_checked() -> None:
    good = note.Verifier.parse(SPEC_VKEY)
    for bad in (SPEC_VKEY.replace("530d903a", "530d903b"), "example.com/foo+530d903a", "x+zz+AA==",
                good.vkey().replace("+Aek", "+Bek")):
        with pytest.raises(p.MalformedEncoding):
            note.Verifier.parse(bad)


def test_every_other_signing_domain_holds_a_nul() -> None:
    """What makes signing checkpoints with the node key safe: a note holds no NUL."""
    import inspect

    from shardnet.protocol import _sign

    src = "".join(inspect.getsource(m) for m in vars(p).values() if inspect.ismodule(m))
    assert _sign.SIG_DOMAIN.endswith(b"\x00")
    assert "sign_in_domain(" in src
    for m in (v for v in vars(p).values() if inspect.ismodule(v)):
        for name, value in vars(m).items():
            if name.endswith("DOMAIN") and isinstance(value, bytes):
                assert b"\x00" in value, (m.__name__, name)
