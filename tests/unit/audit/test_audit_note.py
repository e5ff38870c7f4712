"""engram.signing: C2SP signed notes, Ed25519 keys and tlog checkpoints."""

from __future__ import annotations

import base64
import hashlib

import pytest
from engram.signing import (
    Checkpoint,
    NoteError,
    Signer,
    Verifier,
    generate_signer,
    key_id,
    open_checkpoint,
    open_note,
    sign_note,
)

# Public vector from Go's golang.org/x/mod/sumdb/note (also in the conformance README).
SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
SIG_LINE = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
)
NOTE = TEXT + "\n" + SIG_LINE + "\n"

ROOT = hashlib.sha256(b"root").digest()


@pytest.fixture(scope="module")
def other() -> tuple[Signer, Verifier]:
    skey, vkey = generate_signer("witness.example/w1")
    return Signer(skey), Verifier(vkey)


# --------------------------------------------------------------------------------------------
# The public vector
# --------------------------------------------------------------------------------------------


def test_vector_sign_reproduces_note_exactly() -> None:
    assert sign_note(TEXT, Signer(SKEY)) == NOTE


def test_vector_open() -> None:
    text, names = open_note(NOTE, [Verifier(VKEY)])
    assert text == TEXT
    assert names == ["PeterNeumann"]


def test_vector_keys() -> None:
    signer, verifier = Signer(SKEY), Verifier(VKEY)
    assert signer.name == verifier.name == "PeterNeumann"
    assert signer.key_id == verifier.key_id == 0xC74F20A3
    assert signer.verifier_key() == VKEY == verifier.key_string()
    assert signer.verifier() == verifier
    assert key_id("PeterNeumann", verifier.public_key) == 0xC74F20A3
    assert "AYEK" not in repr(signer)  # the seed never leaks through repr


# --------------------------------------------------------------------------------------------
# Round trips and rejection
# --------------------------------------------------------------------------------------------


def test_generated_key_round_trip(other: tuple[Signer, Verifier]) -> None:
    signer, verifier = other
    assert signer.verifier() == verifier
    note = sign_note("hello\n\nworld\n", signer)  # blank lines inside the text are fine
    assert open_note(note, [verifier]) == ("hello\n\nworld\n", ["witness.example/w1"])


def test_cosigned_note(other: tuple[Signer, Verifier]) -> None:
    note = sign_note(TEXT, Signer(SKEY), other[0])
    assert open_note(note, [Verifier(VKEY), other[1]]).signers == ["PeterNeumann", "witness.example/w1"]
    # Signatures by keys the caller does not know are ignored...
    assert open_note(note, [other[1]]).signers == ["witness.example/w1"]
    # ...and a signature repeated by one key counts once.
    doubled = note + SIG_LINE + "\n"
    assert open_note(doubled, [Verifier(VKEY)]).signers == ["PeterNeumann"]


def test_same_verifier_twice_is_fine() -> None:
    assert open_note(NOTE, [Verifier(VKEY), Verifier(VKEY)]).signers == ["PeterNeumann"]


def test_tampered_text_rejected() -> None:
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(NOTE.replace("answer", "Answer"), [Verifier(VKEY)])


def test_tampered_signature_rejected() -> None:
    raw = bytearray(base64.b64decode(SIG_LINE.split(" ")[2]))
    raw[10] ^= 0x01
    bad = TEXT + "\n\u2014 PeterNeumann " + base64.b64encode(bytes(raw)).decode() + "\n"
    with pytest.raises(NoteError, match="invalid signature"):
        open_note(bad, [Verifier(VKEY)])


def test_only_unknown_signatures_rejected(other: tuple[Signer, Verifier]) -> None:
    with pytest.raises(NoteError, match="no valid signature"):
        open_note(NOTE, [other[1]])
    with pytest.raises(NoteError, match="no valid signature"):
        open_note(NOTE, [])
    # Same name but another key ID is a different (unknown) key, not a bad signature.
    skey, vkey = generate_signer("PeterNeumann")
    with pytest.raises(NoteError, match="no valid signature"):
        open_note(NOTE, [Verifier(vkey)])


@pytest.mark.parametrize(
    "note",
    [
        pytest.param(TEXT + SIG_LINE + "\n", id="no-blank-line"),
        pytest.param(NOTE[:-1], id="unterminated-signature"),
        pytest.param(TEXT + "\n", id="no-signatures"),
        pytest.param(TEXT + "\n" + SIG_LINE.replace("\u2014", "-") + "\n", id="ascii-dash"),
        pytest.param(TEXT + "\n" + SIG_LINE.replace(" x08", "  x08") + "\n", id="double-space"),
        pytest.param(TEXT + "\n" + SIG_LINE[:-1] + "\n", id="bad-base64"),
        pytest.param(TEXT + "\n\u2014 PeterNeumann AAAA\n", id="signature-too-short"),
        pytest.param(TEXT + "\n\u2014 PeterNeumann\n", id="no-signature"),
        pytest.param("a\tb\n\n" + SIG_LINE + "\n", id="control-character"),
        pytest.param(TEXT + "\n" + SIG_LINE + "\n\n", id="trailing-blank-line"),
        pytest.param(TEXT + "\n" + (SIG_LINE + "\n") * 101, id="too-many-signatures"),
    ],
)
def test_malformed_notes_rejected(note: str) -> None:
    with pytest.raises(NoteError):
        open_note(note, [Verifier(VKEY)])


def _noncanonical(b64: str) -> str:
    """Same bytes, different string: set an unused low bit of the last character before '='."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    body = b64.rstrip("=")
    assert b64 != body, "needs a padded encoding (unused trailing bits)"
    last = alphabet[alphabet.index(body[-1]) | 1]
    out = body[:-1] + last + b64[len(body) :]
    assert out != b64 and base64.b64decode(out) == base64.b64decode(b64)
    return out


def test_noncanonical_signature_encoding_rejected() -> None:
    name, b64 = SIG_LINE.split(" ")[1:]
    with pytest.raises(NoteError, match="canonical"):
        open_note(f"{TEXT}\n\u2014 {name} {_noncanonical(b64)}\n", [Verifier(VKEY)])


@pytest.mark.parametrize("text", ["no newline", "tab\there\n", "", "nul\x00\n", "lone \ud800\n"])
def test_sign_rejects_bad_text(text: str) -> None:
    with pytest.raises(NoteError):
        sign_note(text, Signer(SKEY))


def test_sign_needs_a_signer() -> None:
    with pytest.raises(NoteError):
        sign_note(TEXT)


# --------------------------------------------------------------------------------------------
# Malformed keys
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vkey",
    [
        pytest.param("", id="empty"),
        pytest.param("PeterNeumann+c74f20a3", id="two-fields"),
        pytest.param("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", id="wrong-id"),
        pytest.param("PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", id="short-id"),
        pytest.param("PeterNeumann+c74f20ag+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", id="non-hex-id"),
        pytest.param("PeterNeuman+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", id="wrong-name"),
        pytest.param("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", id="space-name"),
        pytest.param("+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", id="empty-name"),
        pytest.param("PeterNeumann+c74f20a3+Ahpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", id="wrong-alg"),
        pytest.param("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10", id="short-key"),
        pytest.param("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TX", id="changed-key-byte"),
        pytest.param("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T", id="bad-padding"),
        pytest.param(SKEY, id="signer-key"),
    ],
)
def test_malformed_verifier_keys_rejected(vkey: str) -> None:
    with pytest.raises(NoteError):
        Verifier(vkey)


@pytest.mark.parametrize(
    "skey",
    [
        pytest.param(VKEY, id="verifier-key"),
        pytest.param("PRIVATE+KEY+PeterNeumann+c74f20a3", id="missing-data"),
        pytest.param(SKEY.replace("c74f20a3", "00000000"), id="wrong-id"),
        pytest.param(SKEY.replace("+AYEK", "+AoEK"), id="wrong-alg"),
        pytest.param(SKEY[:-4], id="short-seed"),
        pytest.param(SKEY.replace("PeterNeumann", "Peter+Neumann"), id="plus-in-name"),
        pytest.param("private+key+" + SKEY[len("PRIVATE+KEY+") :], id="lowercase-prefix"),
    ],
)
def test_malformed_signer_keys_rejected(skey: str) -> None:
    with pytest.raises(NoteError):
        Signer(skey)


@pytest.mark.parametrize("name", ["", "a b", "a+b", "tab\tname", "nl\nname", "\u2003em-space"])
def test_generate_rejects_bad_names(name: str) -> None:
    with pytest.raises(NoteError):
        generate_signer(name)


def test_key_error_does_not_echo_secret() -> None:
    bad = SKEY.replace("c74f20a3", "00000000")
    with pytest.raises(NoteError) as info:
        Signer(bad)
    assert "AYEK" not in str(info.value)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def test_checkpoint_format_parse_round_trip() -> None:
    cp = Checkpoint("example.com/log", 12345, ROOT, ("ext one", "ext two"))
    text = cp.format()
    assert text == f"example.com/log\n12345\n{base64.b64encode(ROOT).decode()}\next one\next two\n"
    assert Checkpoint.parse(text) == cp
    empty = Checkpoint("example.com/log", 0, ROOT)
    assert Checkpoint.parse(empty.format()) == empty
    assert empty.format().count("\n") == 3


def test_checkpoint_sign_and_open(other: tuple[Signer, Verifier]) -> None:
    cp = Checkpoint("engram.local/audit", 42, ROOT)
    note = cp.sign(Signer(SKEY), other[0])
    got, names = open_checkpoint(note, [Verifier(VKEY)], origin="engram.local/audit")
    assert got == cp and names == ["PeterNeumann"]
    with pytest.raises(NoteError, match="origin"):
        open_checkpoint(note, [Verifier(VKEY)], origin="someone.else/log")


B64_ROOT = base64.b64encode(ROOT).decode()


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"o\n12\n{B64_ROOT}", id="no-final-newline"),
        pytest.param("o\n12\n", id="missing-root"),
        pytest.param(f"\n12\n{B64_ROOT}\n", id="empty-origin"),
        pytest.param(f"o\n012\n{B64_ROOT}\n", id="leading-zero"),
        pytest.param(f"o\n00\n{B64_ROOT}\n", id="double-zero"),
        pytest.param(f"o\n-1\n{B64_ROOT}\n", id="negative"),
        pytest.param(f"o\n+1\n{B64_ROOT}\n", id="plus-sign"),
        pytest.param(f"o\n 1\n{B64_ROOT}\n", id="space"),
        pytest.param(f"o\n1_000\n{B64_ROOT}\n", id="underscore"),
        pytest.param(f"o\n\u0661\n{B64_ROOT}\n", id="non-ascii-digit"),
        pytest.param(f"o\n{2**64}\n{B64_ROOT}\n", id="too-large"),
        pytest.param(f"o\n1\n{base64.b64encode(ROOT[:31]).decode()}\n", id="short-root"),
        pytest.param(f"o\n1\n{B64_ROOT.rstrip('=')}\n", id="unpadded-root"),
        pytest.param(f"o\n1\n{_noncanonical(B64_ROOT)}\n", id="noncanonical-root"),
        pytest.param(f"o\n1\n{B64_ROOT}\n\n", id="empty-extension"),
        pytest.param(f"o\n1\n{B64_ROOT}\next\there\n", id="control-in-extension"),
    ],
)
def test_checkpoint_parse_rejects(text: str) -> None:
    with pytest.raises(NoteError):
        Checkpoint.parse(text)


def test_checkpoint_constructor_validates() -> None:
    with pytest.raises(NoteError):
        Checkpoint("", 1, ROOT)
    with pytest.raises(NoteError):
        Checkpoint("o\nx", 1, ROOT)
    with pytest.raises(NoteError):
        Checkpoint("o", -1, ROOT)
    with pytest.raises(NoteError):
        Checkpoint("o", True, ROOT)
    with pytest.raises(NoteError):
        Checkpoint("o", 1, ROOT[:31])
    with pytest.raises(NoteError):
        Checkpoint("o", 1, ROOT, ("",))
