"""The gateway's token store (hashes only, 0600, revocation, expiry, a damaged file) and its
listen setting (loopback unless allowed), without a daemon."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from engram.errors import Conflict, NotFound, StartupError
from engram.http.settings import HttpSettings, parse_listen
from engram.http.tokens import TOKEN_PREFIX, TokenStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_tokens_are_kept_as_hashes_in_a_private_file(tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    store.load()
    secret, token = store.create("ci", 1001, None, NOW)
    assert secret.startswith(TOKEN_PREFIX) and len(secret) > 40
    text = (tmp_path / "tokens.json").read_text()
    assert secret not in text and secret.removeprefix(TOKEN_PREFIX) not in text and token.sha256 in text
    assert stat.S_IMODE(os.stat(tmp_path / "tokens.json").st_mode) == 0o600
    assert store.find(secret) == token and store.find(secret + "x") is None and store.find("other") is None

    again = TokenStore(tmp_path / "tokens.json")
    again.load()
    assert again.find(secret) == token
    principal = again.principal(token)
    assert (principal.uid, principal.via, principal.token, principal.pid) == (1001, "http", "ci", None)


def test_names_are_unique_and_revocation_is_immediate_and_durable(tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    secret, _ = store.create("a", 5, None, NOW)
    with pytest.raises(Conflict):
        store.create("a", 6, None, NOW)
    store.revoke("a")
    assert store.find(secret) is None
    with pytest.raises(NotFound):
        store.revoke("a")
    reloaded = TokenStore(tmp_path / "tokens.json")
    reloaded.load()
    assert reloaded.tokens() == []


def test_expiry(tmp_path):
    store = TokenStore(tmp_path / "tokens.json")
    secret, token = store.create("brief", 5, 60, NOW)
    assert not token.expired(NOW + timedelta(seconds=59)) and token.expired(NOW + timedelta(seconds=60))
    assert token.info(NOW + timedelta(hours=1)).expired


def test_a_damaged_file_is_refused(tmp_path):
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"format": 1, "tokens": [{"name": "x"}]}))
    with pytest.raises(StartupError, match="unreadable token file"):
        TokenStore(path).load()


def test_listen_is_loopback_unless_allowed():
    assert parse_listen("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert HttpSettings(listen="localhost:1").listen == "localhost:1"
    for bad in ("8765", "127.0.0.1:0", "127.0.0.1:70000", "example.com:80", ":80"):
        with pytest.raises(ValidationError):
            HttpSettings(listen=bad)
    with pytest.raises(ValidationError, match="not a loopback address"):
        HttpSettings(listen="0.0.0.0:8765")
    assert HttpSettings(listen="0.0.0.0:8765", allow_non_loopback=True).listen == "0.0.0.0:8765"
