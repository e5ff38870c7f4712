"""The audit log's Ed25519 signing key and the verifier keys of every key it ever used.

Files, in ``<state_dir>/keys`` (mode 0700):

* ``audit.key`` — the signer key string (``PRIVATE+KEY+<origin>+<id>+<base64>``), mode 0600,
  created on first start;
* ``audit.pub`` — its C2SP verifier key (``<origin>+<id>+<base64>``), what verifiers pin, mode 0600;
* ``audit-<id>.pub`` — the verifier key of each earlier key, kept by rotation so that checkpoints
  signed before it stay verifiable.

Every write goes to a temporary file that is fsynced and renamed over the target, so a crash
leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import structlog

from engram.audit.note import NoteError, Signer, Verifier, generate_signer
from engram.errors import StartupError
from engram.storage.files import replace_durably

__all__ = ["KEY_FILE", "PUB_FILE", "AuditKeys", "read_verifier_keys"]

log = structlog.get_logger("engram.audit")

KEY_FILE = "audit.key"
PUB_FILE = "audit.pub"
# Verifier keys are no secret, but they are state like any other: 0600, as every file in the state
# folder is (the folder is 0700, so a wider mode would give no one more anyway).
VERIFIER_KEY_MODE = 0o600


def _write_atomic(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away; say exactly what we want
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    replace_durably(tmp, path)


def read_verifier_keys(path: Path) -> list[Verifier]:
    """Every verifier key in a file, one per non-empty line (``#`` starts a comment line)."""
    keys = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(Verifier(line))
        except NoteError as exc:
            raise NoteError(f"{path}:{number}: {exc}") from None
    if not keys:
        raise NoteError(f"{path}: no verifier key in the file")
    return keys


class AuditKeys:
    """Loads, creates and rotates the signing key. Blocking file I/O: call from a worker thread."""

    def __init__(self, keys_dir: Path) -> None:
        self.dir = keys_dir
        self.signer: Signer | None = None
        self.previous: list[Verifier] = []

    @property
    def key_path(self) -> Path:
        return self.dir / KEY_FILE

    @property
    def pub_path(self) -> Path:
        return self.dir / PUB_FILE

    @property
    def current(self) -> Verifier:
        if self.signer is None:
            raise RuntimeError("audit keys are not loaded")
        return self.signer.verifier()

    def verifiers(self) -> list[Verifier]:
        """The current key and every earlier one: all that may have signed this log."""
        return [self.current, *self.previous]

    def exists(self) -> bool:
        return self.key_path.exists()

    def load(self, origin: str) -> None:
        """Read the keys; refuses a key that others may read or that belongs to another log."""
        path = self.key_path
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise StartupError(
                f"the audit signing key {path} is readable by others (mode {mode:04o}); it may be "
                f"compromised. Make it private with `chmod 600 {path}`, then rotate it with "
                "`engram audit rotate-key` once the daemon runs."
            )
        try:
            signer = Signer(path.read_text(encoding="utf-8").strip())
        except NoteError as exc:
            raise StartupError(f"the audit signing key {path} is malformed: {exc}") from None
        if signer.name != origin:
            raise StartupError(
                f"the audit signing key {path} belongs to the log {signer.name!r}, not to this "
                f"database's log {origin!r}. Restore the keys folder that goes with this database, "
                f"or move {self.dir} aside (together with the database it belongs to) to start a new log."
            )
        self.signer = signer
        self.previous = self._load_previous(origin)
        if not self.pub_path.exists() or self.pub_path.read_text(encoding="utf-8").strip() != signer.verifier_key():
            _write_atomic(self.pub_path, signer.verifier_key() + "\n", VERIFIER_KEY_MODE)  # re-export a lost/stale copy

    def _load_previous(self, origin: str) -> list[Verifier]:
        previous = []
        for path in sorted(self.dir.glob("audit-*.pub")):
            try:
                verifier = Verifier(path.read_text(encoding="utf-8").strip())
            except NoteError as exc:
                raise StartupError(f"the earlier audit verifier key {path} is malformed: {exc}") from None
            if verifier.name == origin:
                previous.append(verifier)
        return previous

    def create(self, origin: str) -> None:
        """Create the first key of a new log."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        skey, vkey = generate_signer(origin)
        _write_atomic(self.key_path, skey + "\n", 0o600)
        _write_atomic(self.pub_path, vkey + "\n", VERIFIER_KEY_MODE)
        self.signer = Signer(skey)
        self.previous = []
        log.info("audit signing key created", path=str(self.key_path), vkey=vkey)

    def rotate(self) -> tuple[Signer, Signer]:
        """Make a new key current and keep the old verifier key; returns ``(old, new)`` signers.

        The old verifier key is saved first, so that whatever point a crash interrupts the
        rotation at, every checkpoint already signed stays verifiable.
        """
        old = self.signer
        if old is None:
            raise RuntimeError("audit keys are not loaded")
        skey, vkey = generate_signer(old.name)
        _write_atomic(self.dir / f"audit-{old.key_id:08x}.pub", old.verifier_key() + "\n", VERIFIER_KEY_MODE)
        _write_atomic(self.key_path, skey + "\n", 0o600)
        _write_atomic(self.pub_path, vkey + "\n", VERIFIER_KEY_MODE)
        new = Signer(skey)
        self.signer = new
        self.previous = [old.verifier(), *[v for v in self.previous if v != old.verifier()]]
        log.info("audit signing key rotated", old=old.verifier_key(), new=vkey)
        return old, new
