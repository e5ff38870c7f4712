"""Where the audit log's signing key comes from, and reading a key file that only its owner can use.

The first of these that applies is the key:

1. ``audit.signing_key_file``: a file the operator put anywhere engramd can read;
2. ``$CREDENTIALS_DIRECTORY/engram-audit.key``: the systemd credential of that name
   (``LoadCredential=engram-audit.key:/etc/engram/audit.key``), when it exists;
3. ``<state_dir>/keys/audit.key``: the key engramd created itself (the default).

The first two are *external*: engramd reads them and never creates, rotates or writes them, so
that write access to the state folder is not enough to sign anything (see "Threat model" in
docs/audit.md). The verifier keys stay in the state folder either way.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engram.errors import StartupError
from engram.signing import NoteError, Signer

__all__ = ["CREDENTIAL_NAME", "KEY_FILE", "KeySource", "SourceKind", "locate_signing_key", "read_signing_key"]

KEY_FILE = "audit.key"
CREDENTIAL_NAME = "engram-audit.key"
# A signer key string is about 100 bytes; anything much longer is not one (and is not read whole).
MAX_KEY_FILE_BYTES = 4096

SourceKind = Literal["state_folder", "signing_key_file", "credential"]


@dataclass(frozen=True)
class KeySource:
    """Where the signing key is read from: ``kind`` says which of the three places, ``path`` the file."""

    kind: SourceKind
    path: Path

    @property
    def external(self) -> bool:
        return self.kind != "state_folder"

    def describe(self) -> str:
        """Where the key comes from, without its path (shown to every client in the health check)."""
        return {
            "state_folder": "the state folder",
            "signing_key_file": "audit.signing_key_file",
            "credential": f"systemd credential {CREDENTIAL_NAME}",
        }[self.kind]

    def __str__(self) -> str:
        return str(self.path) if self.kind == "state_folder" else f"{self.path} ({self.describe()})"


def locate_signing_key(configured: Path | None, keys_dir: Path, environ: Mapping[str, str]) -> KeySource:
    """The source of the signing key (see the module docstring). Reads nothing but a directory entry."""
    if configured is not None:
        return KeySource("signing_key_file", configured)
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        path = Path(credentials) / CREDENTIAL_NAME
        try:
            path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            pass  # the unit passes other credentials, not this one
        else:
            return KeySource("credential", path)
    return KeySource("state_folder", keys_dir / KEY_FILE)


def _advice(source: KeySource) -> str:
    """What to do about a key that others could read or replace."""
    if source.external:
        return (
            "consider it compromised: make a new one with `engram audit keygen` and hand the log over "
            "to it (docs/audit.md, Keys outside the state folder)"
        )
    return "then rotate it with `engram audit rotate-key` once the daemon runs"


def read_signing_key(source: KeySource) -> Signer:
    """The signer key in ``source.path``; :class:`StartupError` if the file is missing, unreadable,
    not a regular file, open to other users, owned by someone else than engramd's user or root, or
    malformed. The message never shows any of the key."""
    path = source.path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise StartupError(f"the audit signing key {source} does not exist") from None
    except OSError as exc:
        raise StartupError(f"cannot read the audit signing key {source}: {exc.strerror}") from None
    try:
        # Checked on the open file, not the path: what is read is what was checked.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StartupError(f"the audit signing key {source} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise StartupError(
                f"the audit signing key {source} can be read or written by other users (mode {mode:04o}); it may be "
                f"compromised. Make it private with `chmod 600 {path}` (or 400), {_advice(source)}."
            )
        if info.st_uid not in (os.geteuid(), 0):
            raise StartupError(
                f"the audit signing key {source} belongs to uid {info.st_uid}, neither engramd's user "
                f"(uid {os.geteuid()}) nor root, and its owner could replace it; give it to engramd's "
                f"user (chown), {_advice(source)}."
            )
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise StartupError(f"cannot read the audit signing key {source}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        if len(data) > MAX_KEY_FILE_BYTES:
            raise NoteError(f"longer than {MAX_KEY_FILE_BYTES} bytes")
        return Signer(data.decode("utf-8").strip())
    except (NoteError, UnicodeDecodeError) as exc:
        why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else str(exc)
        raise StartupError(f"the audit signing key {source} is malformed: {why}") from None
