"""C2SP signed notes and tlog checkpoints with Ed25519 keys.

Below the parts, importing none of them: the audit log signs its checkpoints with these keys and
the inference part signs and verifies model manifests with them.

A *signed note* (https://c2sp.org/signed-note, the format of Go's ``golang.org/x/mod/sumdb/note``)
is UTF-8 text ending in a newline, a blank line, then one line per signature::

    <text>\\n
    \\n
    — <key name> <base64(4-byte key ID || signature)>\\n

The dash is U+2014 EM DASH followed by a space. Keys are strings:

* verifier key ``<name>+<8 hex digit key ID>+<base64(0x01 || 32-byte Ed25519 public key)>``
* signer key ``PRIVATE+KEY+<name>+<key ID>+<base64(0x01 || 32-byte Ed25519 seed)>``

and the key ID is the first 4 bytes of ``SHA-256(name || 0x0A || 0x01 || public key)``, so a
verifier is identified by ``(name, key ID)``.

A *checkpoint* (https://c2sp.org/tlog-checkpoint) is the note text a transparency log signs::

    <origin>\\n<tree size, decimal>\\n<base64(root hash)>\\n[<extension line>\\n ...]

Everything here is strict: what we emit is canonical and what we accept must be too (canonical
base64, no stray control characters), because an audit log must not have two encodings of one fact.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from engram.errors import DataError

__all__ = [
    "ALG_ED25519",
    "Checkpoint",
    "NoteError",
    "OpenedNote",
    "Signer",
    "Verifier",
    "generate_signer",
    "key_id",
    "open_checkpoint",
    "open_note",
    "sign_note",
]

ALG_ED25519 = 0x01
"""Signature algorithm byte for Ed25519 in signed-note keys."""

_SIG_PREFIX = "\u2014 "  # EM DASH + space starts every signature line
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_MAX_SIGNATURES = 100  # as Go's note.Open: bound the work an attacker-supplied note can cause
_HASH_SIZE = 32
_MAX_TREE_SIZE = (1 << 64) - 1
_KEY_ID_RE = re.compile(r"[0-9a-fA-F]{8}")
_DECIMAL_RE = re.compile(r"0|[1-9][0-9]*")


class NoteError(DataError, ValueError):
    """A key, note or checkpoint is malformed, or a signature does not verify."""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64: padding required, and only the canonical encoding is accepted
    (re-encoding must give back the same string), so no two strings decode to the same bytes."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise NoteError(f"{what} is not valid base64") from e
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _is_valid_name(name: str) -> bool:
    # C2SP signed-note: non-empty, no Unicode whitespace, no '+' (it separates key fields).
    if not name or "+" in name:
        return False
    return not any(c.isspace() for c in name) and _no_controls(name)


# As Go's note.Open: ASCII control characters other than newline are refused (they could hide
# text from a human reader), and so are lone surrogates, which have no UTF-8 encoding.
_BAD_IN_TEXT = re.compile("[\x00-\x09\x0b-\x1f\ud800-\udfff]")
_BAD_IN_LINE = re.compile("[\x00-\x1f\ud800-\udfff]")


def _no_controls(text: str, allow_newline: bool = False) -> bool:
    return (_BAD_IN_TEXT if allow_newline else _BAD_IN_LINE).search(text) is None


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _is_valid_name(name):
        raise NoteError(f"invalid key name {name!r}: must be non-empty, without spaces or '+'")


def key_id(name: str, public_key: bytes) -> int:
    """Key ID of an Ed25519 key: first 4 bytes of ``SHA-256(name || "\\n" || 0x01 || key)``."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def _verifier_key_string(name: str, kid: int, public_key: bytes) -> str:
    return f"{name}+{kid:08x}+{_b64encode(bytes([ALG_ED25519]) + public_key)}"


def _parse_key_fields(name: str, kid: str, data: str, what: str) -> tuple[int, bytes]:
    """Shared checks for the ``name+keyid+base64`` tail of both key formats."""
    _check_name(name)
    if not _KEY_ID_RE.fullmatch(kid):
        raise NoteError(f"{what}: key ID {kid!r} is not 8 hex digits")
    raw = _b64decode(data, f"{what}: key data")
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise NoteError(f"{what}: key data must be 0x01 followed by 32 Ed25519 key bytes")
    return int(kid, 16), raw[1:]


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


class Verifier:
    """An Ed25519 verifier key, identified by ``(name, key_id)``."""

    __slots__ = ("_key", "_public_key", "key_id", "name")

    def __init__(self, vkey: str) -> None:
        """Parse ``<name>+<hex key ID>+<base64(0x01 || public key)>``."""
        if not isinstance(vkey, str):
            raise NoteError("verifier key must be a string")
        parts = vkey.split("+", 2)  # base64 key data may itself contain "+"
        if len(parts) != 3:
            raise NoteError("malformed verifier key: want <name>+<key ID>+<key data>")
        name, kid_hex, data = parts
        kid, public = _parse_key_fields(name, kid_hex, data, "verifier key")
        if key_id(name, public) != kid:
            raise NoteError("verifier key: key ID does not match the name and public key")
        self.name = name
        self.key_id = kid
        self._public_key = public
        self._key = Ed25519PublicKey.from_public_bytes(public)

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def key_string(self) -> str:
        """The verifier key in its string form (round-trips through the constructor)."""
        return _verifier_key_string(self.name, self.key_id, self._public_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Verifier):
            return NotImplemented
        return (self.name, self.key_id, self._public_key) == (
            other.name,
            other.key_id,
            other._public_key,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.key_id, self._public_key))

    def __repr__(self) -> str:
        return f"Verifier({self.key_string()!r})"


class Signer:
    """An Ed25519 signer key. Its ``repr`` never shows the secret seed."""

    __slots__ = ("_key", "_public_key", "key_id", "name")

    def __init__(self, skey: str) -> None:
        """Parse ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || 32-byte seed)>``."""
        if not isinstance(skey, str) or not skey.startswith(_PRIVATE_PREFIX):
            raise NoteError("malformed signer key: must start with PRIVATE+KEY+")
        parts = skey[len(_PRIVATE_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise NoteError("malformed signer key: want PRIVATE+KEY+<name>+<key ID>+<key data>")
        name, kid_hex, data = parts
        # Error messages never echo the key data: it is secret.
        kid, seed = _parse_key_fields(name, kid_hex, data, "signer key")
        key = Ed25519PrivateKey.from_private_bytes(seed)
        # public_bytes_raw rather than public_bytes(Encoding.Raw, ...): cryptography's serialization
        # package imports every cipher (SSH key support), a sizeable share of a daemon's start.
        public = key.public_key().public_bytes_raw()
        if key_id(name, public) != kid:
            raise NoteError("signer key: key ID does not match the name and public key")
        self.name = name
        self.key_id = kid
        self._key = key
        self._public_key = public

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def verifier(self) -> Verifier:
        return Verifier(self.verifier_key())

    def verifier_key(self) -> str:
        return _verifier_key_string(self.name, self.key_id, self._public_key)

    def __repr__(self) -> str:
        return f"Signer(name={self.name!r}, key_id={self.key_id:08x})"


def generate_signer(name: str) -> tuple[str, str]:
    """New random Ed25519 key pair: ``(signer key string, verifier key string)``."""
    _check_name(name)
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes_raw()
    public = key.public_key().public_bytes_raw()
    kid = key_id(name, public)
    prefix = bytes([ALG_ED25519])
    skey = f"{_PRIVATE_PREFIX}{name}+{kid:08x}+{_b64encode(prefix + seed)}"
    return skey, _verifier_key_string(name, kid, public)


# --------------------------------------------------------------------------------------------
# Notes
# --------------------------------------------------------------------------------------------


class OpenedNote(NamedTuple):
    """Result of :func:`open_note`: the signed text and the names of the keys that verified."""

    text: str
    signers: list[str]


def _check_text(text: str) -> None:
    if not isinstance(text, str):
        raise NoteError("note text must be a string")
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    if not _no_controls(text, allow_newline=True):
        raise NoteError("note text must not contain control characters other than newline")


def sign_note(text: str, *signers: Signer) -> str:
    """Sign ``text`` with every signer; returns the note (text, blank line, signature lines)."""
    _check_text(text)
    if not signers:
        raise NoteError("sign_note needs at least one signer")
    message = text.encode("utf-8")
    lines = []
    for s in signers:
        sig = s.key_id.to_bytes(4, "big") + s.sign(message)
        lines.append(f"{_SIG_PREFIX}{s.name} {_b64encode(sig)}\n")
    return text + "\n" + "".join(lines)


def _index_verifiers(verifiers: Iterable[Verifier]) -> dict[tuple[str, int], Verifier]:
    known: dict[tuple[str, int], Verifier] = {}
    for v in verifiers:
        if not isinstance(v, Verifier):
            raise TypeError(f"expected Verifier, got {type(v).__name__}")
        other = known.setdefault((v.name, v.key_id), v)
        if other != v:  # a 32-bit key ID collision under one name: refuse to guess
            raise NoteError(f"ambiguous verifiers: two keys {v.name}+{v.key_id:08x}")
    return known


def open_note(note: str, verifiers: Iterable[Verifier]) -> OpenedNote:
    """Verify a signed note; returns its text and the names of the known keys that signed it.

    Signatures by unknown ``(name, key ID)`` pairs are ignored (others may co-sign a note), but
    at least one known key must have signed, and a signature claiming a known key that fails to
    verify is an error. Repeated signatures by one key count once.
    """
    if not isinstance(note, str):
        raise NoteError("note must be a string")
    if not _no_controls(note, allow_newline=True):
        raise NoteError("malformed note: control characters other than newline")
    # The signature block starts after the *last* blank line: signature lines are never empty,
    # so the text itself may contain blank lines.
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("malformed note: no blank line before the signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block or not block.endswith("\n"):
        raise NoteError("malformed note: missing or unterminated signature lines")
    known = _index_verifiers(verifiers)
    message = text.encode("utf-8")

    verified: list[str] = []
    seen: set[tuple[str, int]] = set()
    lines = block[:-1].split("\n")
    if len(lines) > _MAX_SIGNATURES:
        raise NoteError(f"malformed note: more than {_MAX_SIGNATURES} signatures")
    for line in lines:
        if not line.startswith(_SIG_PREFIX):
            raise NoteError("malformed note: signature line does not start with '\u2014 '")
        name, sep, b64 = line[len(_SIG_PREFIX) :].partition(" ")
        if not sep or not _is_valid_name(name) or not b64:
            raise NoteError("malformed note: signature line is not '\u2014 <name> <base64>'")
        raw = _b64decode(b64, "signature")
        if len(raw) < 5:
            raise NoteError("malformed note: signature too short")
        kid = int.from_bytes(raw[:4], "big")
        verifier = known.get((name, kid))
        if verifier is None or (name, kid) in seen:
            continue
        seen.add((name, kid))
        if not verifier.verify(message, raw[4:]):
            raise NoteError(f"invalid signature by {name}+{kid:08x}")
        verified.append(name)
    if not verified:
        raise NoteError("note has no valid signature by a known key")
    return OpenedNote(text, verified)


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tlog checkpoint: the log's origin, its size and the Merkle root at that size."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin or "\n" in self.origin:
            raise NoteError("checkpoint origin must be a non-empty single line")
        if not _no_controls(self.origin):
            raise NoteError("checkpoint origin must not contain control characters")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise NoteError("checkpoint size must be an integer")
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise NoteError("checkpoint size must be in [0, 2**64)")
        if not isinstance(self.root, bytes) or len(self.root) != _HASH_SIZE:
            raise NoteError(f"checkpoint root must be {_HASH_SIZE} bytes")
        object.__setattr__(self, "extensions", tuple(self.extensions))
        for ext in self.extensions:
            # An empty extension line would read as the blank line that ends the note text.
            if not isinstance(ext, str) or not ext or "\n" in ext or not _no_controls(ext):
                raise NoteError("checkpoint extension lines must be non-empty single lines")

    def format(self) -> str:
        """The checkpoint as note text (ends with a newline, ready for :func:`sign_note`)."""
        lines = [self.origin, str(self.size), _b64encode(self.root), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Strictly parse checkpoint note text (as returned by :func:`open_note`)."""
        if not isinstance(text, str) or not text.endswith("\n"):
            raise NoteError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise NoteError("checkpoint needs origin, size and root hash lines")
        origin, size_text, root_text, *extensions = lines
        if not _DECIMAL_RE.fullmatch(size_text):
            raise NoteError(f"checkpoint size {size_text!r} is not a canonical decimal number")
        root = _b64decode(root_text, "checkpoint root hash")
        return cls(origin, int(size_text), root, tuple(extensions))

    def sign(self, *signers: Signer) -> str:
        """Format and sign: the signed note a log publishes."""
        return sign_note(self.format(), *signers)


def open_checkpoint(
    note: str, verifiers: Iterable[Verifier], origin: str | None = None
) -> tuple[Checkpoint, list[str]]:
    """Verify a signed checkpoint note and parse it. With ``origin``, also require the checkpoint
    to come from that log: a valid signature on another log's checkpoint proves nothing here."""
    text, names = open_note(note, verifiers)
    checkpoint = Checkpoint.parse(text)
    if origin is not None and checkpoint.origin != origin:
        raise NoteError(f"checkpoint origin {checkpoint.origin!r} is not {origin!r}")
    return checkpoint, names
