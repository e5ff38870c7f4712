"""The audit log's Ed25519 signing key and the verifier keys of every key it ever used.

Files, in ``<state_dir>/keys`` (mode 0700):

* ``audit.key`` — the signer key string (``PRIVATE+KEY+<origin>+<id>+<base64>``), mode 0600,
  created on first start. Not there when the key is *external* (``audit.signing_key_file`` or a
  systemd credential, see :mod:`.keyfile`): then, if present, it is the key that signed the log
  so far, which hands the log over to the external key at start and is deleted after;
* ``audit.pub`` — the current key's C2SP verifier key (``<origin>+<id>+<base64>``), what
  verifiers pin, mode 0600; written for an external key too;
* ``audit-<id>.pub`` — the verifier key of each earlier key, kept by rotation so that checkpoints
  signed before it stay verifiable.

Every write goes to a temporary file that is fsynced and renamed over the target, so a crash
leaves either the old or the new file, never half of one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import structlog

from engram.audit.keyfile import KEY_FILE, KeySource, locate_signing_key, read_signing_key
from engram.errors import StartupError
from engram.signing import NoteError, Signer, Verifier, generate_signer
from engram.storage.files import fsync_directory, make_private_dir, replace_durably

__all__ = ["KEY_FILE", "PUB_FILE", "AuditKeys", "read_verifier_keys"]

log = structlog.get_logger("engram.audit")

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


def _hex_id(signer: Signer) -> str:
    return f"{signer.key_id:08x}"  # as the store keeps the signer of each checkpoint


class AuditKeys:
    """Loads, creates and rotates the signing key. Blocking file I/O: call from a worker thread."""

    def __init__(self, keys_dir: Path, signing_key_file: Path | None = None) -> None:
        self.dir = keys_dir
        self.signing_key_file = signing_key_file
        self.source = KeySource("state_folder", keys_dir / KEY_FILE)  # until locate() says otherwise
        self.signer: Signer | None = None
        self.previous: list[Verifier] = []
        # The state folder's key that signed the log so far, while it hands over to an external key.
        self.handover: Signer | None = None

    @property
    def key_path(self) -> Path:
        """The state folder's key file (whether or not it is the key in use)."""
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

    def trusted(self) -> list[Verifier]:
        """The keys the start-up check trusts.

        With an external key, the verifier key files in the state folder are not trusted: whoever
        can write there could add a key of their own. Earlier keys are then trusted only through
        the rotation checkpoints that the external key (or the key handing over to it) co-signed.
        """
        if not self.source.external:
            return self.verifiers()
        return [self.current, *([self.handover.verifier()] if self.handover is not None else [])]

    def locate(self, environ: Mapping[str, str] = os.environ) -> KeySource:
        """Find where the signing key comes from (see :mod:`.keyfile`)."""
        self.source = locate_signing_key(self.signing_key_file, self.dir, environ)
        return self.source

    def exists(self) -> bool:
        return self.key_path.exists()

    def _check_origin(self, signer: Signer, source: KeySource, origin: str) -> None:
        if signer.name == origin:
            return
        if source.external:
            fix = (
                "Configure this log's key, or make a key for it with "
                f"`engram audit keygen FILE --state-dir {self.dir.parent}`"
            )
        else:
            fix = (
                f"Restore the keys folder that goes with this database, or move {self.dir} aside "
                "(together with the database it belongs to) to start a new log"
            )
        raise StartupError(
            f"the audit signing key {source} belongs to the log {signer.name!r}, not to this "
            f"database's log {origin!r}. {fix}."
        )

    def load(self, origin: str) -> None:
        """Read the state folder's key; refuses a key that others may use or that belongs to another log."""
        signer = read_signing_key(self.source)
        self._check_origin(signer, self.source, origin)
        self.signer = signer
        self.previous = self._load_previous(origin)
        self._export_verifier_key()

    def use_external(self, signer: Signer, origin: str, last_signed_by: str | None) -> None:
        """Use ``signer``, read from an external source: it is never written here.

        ``last_signed_by`` is the hex key ID that signed the log's last checkpoint (``None``: no
        checkpoint yet). A key in the state folder that signed it, and is not this key, hands the
        log over to this key (:meth:`hand_over`); any other key left there is deleted, so that no
        signing key stays where write access to the state folder would reach it.
        """
        self._check_origin(signer, self.source, origin)
        self.signer = signer
        self.previous = self._load_previous(origin)
        left = self._state_folder_key(origin) if self.exists() else None
        if left is not None and left.key_id != signer.key_id and last_signed_by == _hex_id(left):
            self.handover = left
            return
        if last_signed_by is not None and last_signed_by != _hex_id(signer):
            there_now = "" if left is None else " instead of the key there now, which did not sign it either"
            raise StartupError(
                f"the audit signing key {self.source} is not the key this log was signed with: its "
                f"last checkpoint was signed by key {last_signed_by}. To hand the log over to the new "
                f"key, stop engramd and put the key that signed it in {self.key_path}{there_now} (mode "
                "0600): at the next start engramd signs a checkpoint with both keys and deletes that "
                "copy. Or configure the earlier key again."
            )
        if left is not None:
            # A copy of this very key, or one that signed nothing (or already handed over).
            self._delete_state_folder_key()
            log.warning(
                "a signing key in the state folder was deleted: the key in use is external", path=str(self.key_path)
            )
        self._export_verifier_key()

    def _state_folder_key(self, origin: str) -> Signer:
        source = KeySource("state_folder", self.key_path)
        signer = read_signing_key(source)
        self._check_origin(signer, source, origin)
        return signer

    def _delete_state_folder_key(self) -> None:
        self.key_path.unlink()
        fsync_directory(self.dir)

    def _export_verifier_key(self) -> None:
        """Write ``audit.pub`` for the current key unless it already says so (re-export a lost or stale copy)."""
        signer = self.signer
        assert signer is not None
        make_private_dir(self.dir)  # a new state folder with an external key has no keys folder yet
        if not self.pub_path.exists() or self.pub_path.read_text(encoding="utf-8").strip() != signer.verifier_key():
            _write_atomic(self.pub_path, signer.verifier_key() + "\n", VERIFIER_KEY_MODE)

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

    def _keep_previous(self, old: Signer) -> None:
        """Save ``old``'s verifier key as an earlier key (first thing in a rotation: whatever point
        a crash interrupts it at, every checkpoint already signed stays verifiable)."""
        _write_atomic(self.dir / f"audit-{old.key_id:08x}.pub", old.verifier_key() + "\n", VERIFIER_KEY_MODE)
        self.previous = [old.verifier(), *[v for v in self.previous if v != old.verifier()]]

    def rotate(self) -> tuple[Signer, Signer]:
        """Make a new key current and keep the old verifier key; returns ``(old, new)`` signers."""
        old = self.signer
        if old is None:
            raise RuntimeError("audit keys are not loaded")
        if self.source.external:
            raise RuntimeError("engramd never replaces an external signing key")
        skey, vkey = generate_signer(old.name)
        self._keep_previous(old)
        _write_atomic(self.key_path, skey + "\n", 0o600)
        _write_atomic(self.pub_path, vkey + "\n", VERIFIER_KEY_MODE)
        new = Signer(skey)
        self.signer = new
        log.info("audit signing key rotated", old=old.verifier_key(), new=vkey)
        return old, new

    def hand_over(self) -> tuple[Signer, Signer]:
        """The rotation from the state folder's key to the external one; returns ``(old, new)``.

        Only the verifier keys are written here; the caller signs the rotation checkpoint with
        both keys and then calls :meth:`finish_hand_over`, which deletes the old key.
        """
        old, new = self.handover, self.signer
        if old is None or new is None:
            raise RuntimeError("no key hands over")
        self._keep_previous(old)
        self._export_verifier_key()
        return old, new

    def finish_hand_over(self) -> None:
        """Delete the state folder's key once the checkpoint that retires it is stored."""
        old = self.handover
        if old is None:
            raise RuntimeError("no key hands over")
        self._delete_state_folder_key()
        self.handover = None
        log.info(
            "audit log handed over to the external signing key", old=old.verifier_key(), new=self.current.key_string()
        )
