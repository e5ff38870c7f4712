"""Bearer tokens of the HTTP gateway, kept as SHA-256 hashes in ``<state>/http-tokens.json`` (0600).

A token is ``engram_`` and 32 random bytes (URL-safe base64), shown once when it is made. Only its
SHA-256 is stored, so a copy of the file lets no one in. A fast hash is enough: a slow KDF
(scrypt, argon2) protects guessable passwords, and 256 random bits are not guessable; a fast one
also keeps the check of every request at about a microsecond. A presented token is found by its
hash (a dict lookup on a digest of a secret reveals nothing useful through its timing).

The file is read once at start and rewritten (atomically, durably) on every change; the daemon
is its only writer, so revocation takes effect on the next request.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from engram.errors import Conflict, NotFound, StartupError
from engram.http.api import TokenInfo
from engram.principal import Principal
from engram.storage.files import replace_durably

__all__ = ["TOKEN_PREFIX", "StoredToken", "TokenStore"]

TOKEN_PREFIX = "engram_"
MAX_TOKENS = 10_000  # a bound on the file, far above any real use
_FORMAT = 1


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredToken:
    name: str
    uid: int
    sha256: str
    created_at: datetime
    expires_at: datetime | None

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def principal(self) -> Principal:
        """Whom a request with this token is: the token's uid, that user's primary group."""
        try:
            entry = pwd.getpwuid(self.uid)
            gid, user = entry.pw_gid, entry.pw_name
        except KeyError:
            gid, user = self.uid, None  # no such user here: its uid alone, as the kernel would report
        return Principal(uid=self.uid, gid=gid, pid=None, user=user, via="http", token=self.name)

    def info(self, now: datetime) -> TokenInfo:
        try:
            user: str | None = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            user = None
        return TokenInfo(
            name=self.name, uid=self.uid, user=user, created_at=self.created_at.isoformat(),
            expires_at=self.expires_at.isoformat() if self.expires_at else None, expired=self.expired(now),
        )


class TokenStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._by_hash: dict[str, StoredToken] = {}
        self._by_name: dict[str, StoredToken] = {}
        self._principals: dict[str, Principal] = {}  # by token name: the user lookup once per token

    def load(self) -> None:
        """Read the file (absent: no tokens). A damaged file is a StartupError: the daemon does not
        start with tokens it cannot read, rather than serving with some silently missing."""
        try:
            data = json.loads(self.path.read_text())
            tokens = [
                StoredToken(
                    name=item["name"], uid=int(item["uid"]), sha256=item["sha256"],
                    created_at=datetime.fromisoformat(item["created_at"]),
                    expires_at=datetime.fromisoformat(item["expires_at"]) if item.get("expires_at") else None,
                )
                for item in data["tokens"]
            ]
        except FileNotFoundError:
            tokens = []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StartupError(f"{self.path}: unreadable token file ({exc}); fix or remove it") from None
        self._by_name = {token.name: token for token in tokens}
        self._by_hash = {token.sha256: token for token in tokens}

    def _save(self) -> None:
        data = {
            "format": _FORMAT,
            "tokens": [
                {
                    "name": t.name, "uid": t.uid, "sha256": t.sha256, "created_at": t.created_at.isoformat(),
                    "expires_at": t.expires_at.isoformat() if t.expires_at else None,
                }
                for t in self._by_name.values()
            ],
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        replace_durably(tmp, self.path)

    def create(self, name: str, uid: int, expires_in: float | None, now: datetime) -> tuple[str, StoredToken]:
        if name in self._by_name:
            raise Conflict(f"a token named {name!r} exists; revoke it first or choose another name",
                           reason="token_exists", name=name)
        if len(self._by_name) >= MAX_TOKENS:
            raise Conflict(f"{MAX_TOKENS} tokens exist; revoke some first", reason="too_many_tokens")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        expires = now + timedelta(seconds=expires_in) if expires_in is not None else None
        token = StoredToken(name=name, uid=uid, sha256=_digest(secret), created_at=now, expires_at=expires)
        self._by_name[name] = token
        self._by_hash[token.sha256] = token
        try:
            self._save()
        except OSError:
            del self._by_name[name], self._by_hash[token.sha256]
            raise
        return secret, token

    def revoke(self, name: str) -> StoredToken:
        token = self._by_name.get(name)
        if token is None:
            raise NotFound(f"no token named {name!r}", reason="no_such_token", name=name)
        del self._by_name[name], self._by_hash[token.sha256]
        try:
            self._save()
        except OSError:
            self._by_name[name], self._by_hash[token.sha256] = token, token
            raise
        self._principals.pop(name, None)
        return token

    def principal(self, token: StoredToken) -> Principal:
        principal = self._principals.get(token.name)
        if principal is None:
            principal = self._principals[token.name] = token.principal()
        return principal

    def tokens(self) -> list[StoredToken]:
        return sorted(self._by_name.values(), key=lambda t: t.name)

    def find(self, presented: str) -> StoredToken | None:
        """The token ``presented`` is, or None (unknown, or not one of ours at all)."""
        if not presented.startswith(TOKEN_PREFIX) or len(presented) > 256:
            return None
        return self._by_hash.get(_digest(presented))
