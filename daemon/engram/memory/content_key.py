"""The key of the content digests that leave memory: ``<state_dir>/keys/content.key``.

Events and audit entries name the texts they are about by a digest, never the text: the audit
log keeps them after the text is forgotten, and event subscribers and exported logs see them.
A bare SHA-256 of a short text ("yes", a PIN, a name) is undone by trying candidates, so the
digest that leaves is HMAC-SHA256 under this key, of the text's SHA-256 (the hash memory already
keeps per episode). Whoever holds the key (the owner) can still tell whether a given text is the
one an entry names; nobody else can.

The key is 32 random bytes, created on first start, 0600 in the 0700 keys folder.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from engram.errors import StartupError
from engram.storage.files import make_private_dir, replace_durably

__all__ = ["CONTENT_KEY_FILE", "KEY_BYTES", "ContentKey"]

CONTENT_KEY_FILE = "content.key"
KEY_BYTES = 32


class ContentKey:
    """Loads (or creates) the key; :meth:`digest` is cheap and safe on the event loop once loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: bytes | None = None

    def load(self) -> None:
        """Read the key, creating it the first time. Blocking file I/O: call from a worker thread."""
        make_private_dir(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            self._key = self._create()
            return
        except OSError as exc:
            raise StartupError(f"content key {self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as file:
            mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
            key = file.read(KEY_BYTES + 1)
        if mode & 0o077:
            raise StartupError(f"content key {self.path} is readable by others (mode {mode:04o}); chmod 600 it")
        if len(key) != KEY_BYTES:
            raise StartupError(f"content key {self.path} is not {KEY_BYTES} bytes; restore it from a backup")
        self._key = key

    def _create(self) -> bytes:
        key = secrets.token_bytes(KEY_BYTES)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask left
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        replace_durably(tmp, self.path)
        return key

    def digest(self, text_sha256: str) -> str:
        """HMAC-SHA256 (hex) of a text, given the hex SHA-256 of its UTF-8 bytes."""
        assert self._key is not None, "the content key is loaded when memory starts"
        return hmac.new(self._key, bytes.fromhex(text_sha256), hashlib.sha256).hexdigest()

    def digests(self, text_sha256s: list[str]) -> list[str]:
        return [self.digest(h) for h in text_sha256s]
