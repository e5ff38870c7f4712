"""Settings: precedence, validation messages, directory defaults."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from engram.config import MAX_UNIX_PATH, REDACTED, load_settings
from engram.errors import ConfigError, StartupError
from engram.eventloop import backend_options


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith("ENGRAM_") or key in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "engram.toml"
    path.write_text(text)
    return path


def test_precedence_defaults_file_env_flags(tmp_path, monkeypatch):
    config = write(tmp_path, "state_dir = '/from/file'\n[server]\nmax_connections = 10\nrequest_timeout = 5\n")
    monkeypatch.setenv("ENGRAM_SERVER__REQUEST_TIMEOUT", "7")
    settings = load_settings(config)
    assert settings.server.max_connections == 10  # file over default
    assert settings.server.request_timeout == 7  # env over file
    assert settings.server.idle_timeout == 600  # default
    assert settings.state_dir == Path("/from/file")
    flagged = load_settings(config, state_dir=tmp_path / "flag")
    assert flagged.state_dir == tmp_path / "flag" and flagged.socket_path == tmp_path / "flag" / "engram.sock"


def test_config_file_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGRAM_CONFIG", str(write(tmp_path, "[log]\nlevel = 'error'\n")))
    assert load_settings().log.level == "error"


def test_every_problem_is_named_with_its_source(tmp_path, monkeypatch):
    config = write(tmp_path, "[server]\nmax_frame_bytes = 'huge'\nmax_conections = 3\n[nope]\nx = 1\n")
    monkeypatch.setenv("ENGRAM_LOG__LEVEL", "loud")
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    problems = dict(info.value.problems)
    assert "unable to parse string as an integer" in problems["server.max_frame_bytes"]
    assert str(config) in problems["server.max_frame_bytes"]
    assert problems["server.max_conections"].startswith("unknown setting")
    assert problems["nope"].startswith("unknown setting")
    assert "ENGRAM_LOG__LEVEL" in problems["log.level"]


def test_bounds_are_enforced(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "[server]\nmax_frame_bytes = 10\nrequest_timeout = -1\n"))
    assert {key for key, _ in info.value.problems} == {"server.max_frame_bytes", "server.request_timeout"}


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[server\n"))


def test_socket_path_too_long(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(None, socket=tmp_path / ("s" * (MAX_UNIX_PATH + 1)))
    assert info.value.problems[0][0] == "socket"


def test_systemd_directories(monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/engram")
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/engram")
    settings = load_settings()
    assert settings.state_dir == Path("/var/lib/engram")
    assert settings.socket_path == Path("/run/engram/engram.sock")


def test_relative_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, state_dir=Path("var"))
    assert settings.state_dir == tmp_path / "var" and settings.socket_path == tmp_path / "var" / "engram.sock"


def test_provider_tables_pass_through(tmp_path, monkeypatch):
    monkeypatch.setenv("ENGRAM_PLUGINS__PROVIDERS", '{"ollama": {"url": "http://127.0.0.1:11434"}}')
    assert load_settings().plugins.providers == {"ollama": {"url": "http://127.0.0.1:11434"}}


def test_secrets_are_redacted_where_settings_are_shown(tmp_path):
    config = write(tmp_path, """
[plugins.providers.openai]
api_key = "sk-live-123"
api_key_env = "OPENAI_API_KEY"
base_url = "https://me:hunter2@llm.example/v1"

[plugins.providers.openai.headers]
Authorization = "Bearer abc"

[plugins.providers.ollama]
base_url = "http://127.0.0.1:11434"
""")
    settings = load_settings(config, state_dir=tmp_path / "s")
    shown, redacted = settings.redacted_dict()
    openai = shown["plugins"]["providers"]["openai"]
    assert openai["api_key"] == REDACTED and openai["headers"]["Authorization"] == REDACTED
    assert openai["base_url"] == f"https://me:{REDACTED}@llm.example/v1"
    assert openai["api_key_env"] == "OPENAI_API_KEY"  # the name of a variable, not a secret
    assert shown["plugins"]["providers"]["ollama"] == {"base_url": "http://127.0.0.1:11434"}
    assert sorted(redacted) == [
        "plugins.providers.openai.api_key",
        "plugins.providers.openai.base_url",
        "plugins.providers.openai.headers.Authorization",
    ]
    assert "sk-live-123" not in str(settings.public_dict()) and "hunter2" not in str(settings.public_dict())
    assert shown["state_dir"] == str(tmp_path / "s") and shown["inference"]["trusted_keys"] == []


def test_event_loop_choices_become_anyio_backend_options(monkeypatch):
    assert backend_options("auto") == backend_options("uvloop") == {"use_uvloop": True}
    assert backend_options("asyncio") == {}
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what a platform without uvloop looks like: ImportError
    assert backend_options("auto") == {}
    with pytest.raises(StartupError, match="uvloop is not installed"):
        backend_options("uvloop")
