"""The content key: made once, 0600, reused; refused when others could read it or it is damaged."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import pytest

from engram.errors import StartupError
from engram.memory.content_key import ContentKey


def test_the_key_is_created_private_and_reused(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        first = ContentKey(tmp_path / "keys" / "content.key")
        first.load()
    finally:
        os.umask(old)
    assert first.path.stat().st_mode & 0o777 == 0o600 and first.path.parent.stat().st_mode & 0o777 == 0o700
    again = ContentKey(first.path)
    again.load()
    sha = hashlib.sha256(b"1234").hexdigest()
    assert again.digest(sha) == first.digest(sha) == hmac.new(first.path.read_bytes(), bytes.fromhex(sha), "sha256").hexdigest()
    assert first.digest(sha) != sha


@pytest.mark.parametrize(
    ("content", "mode", "problem"),
    [(b"k" * 32, 0o644, "readable by others"), (b"short", 0o600, "is not 32 bytes")],
)
def test_a_key_others_can_read_or_a_damaged_one_stops_the_start(tmp_path: Path, content: bytes, mode: int, problem: str) -> None:
    path = tmp_path / "content.key"
    path.write_bytes(content)
    path.chmod(mode)
    with pytest.raises(StartupError, match=problem):
        ContentKey(path).load()
