"""engramd refuses a bad configuration or environment with exit 2 and one line saying why.

systemd's ``RestartPreventExitStatus=2`` keeps a unit failed instead of restarting it every two
seconds, so every configuration or environment error has to exit 2: not 1 (restarted forever),
not a traceback (the reason lost in it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from engram.signing import generate_signer

from tests.conftest import ENGRAMD, short_tempdir

pytestmark = pytest.mark.e2e

# Each case: what to set up in a fresh folder (returns extra flags and environment variables)
# and a piece of text the one-line reason must contain.
Setup = Callable[[Path], tuple[list[str], dict[str, str]]]


def config_file(content: bytes) -> Setup:
    def setup(base: Path) -> tuple[list[str], dict[str, str]]:
        path = base / "engram.toml"
        path.write_bytes(content)
        return ["--config", str(path)], {}

    return setup


def environment(**variables: str) -> Setup:
    return lambda base: ([], variables)


def broken_policy(base: Path) -> tuple[list[str], dict[str, str]]:
    path = base / "policy.toml"
    path.write_text("[[rule]]\neffect = 'perhaps'\n")
    return [], {"ENGRAM_POLICY__FILES": f'["{path}"]'}


def state_folder_is_a_file(base: Path) -> tuple[list[str], dict[str, str]]:
    (base / "file").write_text("")
    return ["--state-dir", str(base / "file" / "state")], {}


def socket_folder_is_a_file(base: Path) -> tuple[list[str], dict[str, str]]:
    (base / "file").write_text("")
    return ["--socket", str(base / "file" / "engram.sock")], {}


def span_file_in_a_file(base: Path) -> tuple[list[str], dict[str, str]]:
    (base / "file").write_text("")
    return [], {"ENGRAM_TRACING__EXPORTER": "file", "ENGRAM_TRACING__FILE": str(base / "file" / "traces.jsonl")}


def socket_path_too_long(base: Path) -> tuple[list[str], dict[str, str]]:
    return ["--socket", str(base / ("s" * 120) / "engram.sock")], {}


def audit_key_open_to_others(base: Path) -> tuple[list[str], dict[str, str]]:
    path = base / "audit.key"
    path.write_text(generate_signer("engram.local/x")[0] + "\n")
    path.chmod(0o644)
    return [], {"ENGRAM_AUDIT__SIGNING_KEY_FILE": str(path)}


CASES: dict[str, tuple[Setup, str]] = {
    "toml_not_utf8": (config_file(b"state_dir = '\xff\xfe'\n"), "UTF-8"),
    "toml_unknown_key": (config_file(b"bogus = 1\n"), "bogus: unknown setting"),
    "toml_bad_value": (config_file(b"[server]\nmax_inflight = 0\n"), "server.max_inflight"),
    "config_missing": (lambda base: (["--config", str(base / "nope.toml")], {}), "does not exist"),
    "env_unknown": (environment(ENGRAM_BOGUS="1"), "ENGRAM_BOGUS"),
    "env_unknown_nested": (environment(ENGRAM_SERVER__BOGUS="1"), "ENGRAM_SERVER__BOGUS"),
    "env_not_json": (environment(ENGRAM_PLUGINS__DISABLED="ollama"), "ENGRAM_PLUGINS__DISABLED"),
    "env_bad_value": (environment(ENGRAM_SERVER__MAX_INFLIGHT="many"), "server.max_inflight"),
    "policy_file_broken": (broken_policy, "policy"),
    "socket_group_missing": (environment(ENGRAM_SERVER__SOCKET_GROUP="no-such-group-here"), "no-such-group-here"),
    "state_folder_unusable": (state_folder_is_a_file, "state folder"),
    "socket_folder_unusable": (socket_folder_is_a_file, "socket's folder"),
    "span_file_unusable": (span_file_in_a_file, "span file"),
    "socket_path_too_long": (socket_path_too_long, "longer than"),
    "audit_key_open_to_others": (audit_key_open_to_others, "mode 0644"),
}


def engramd(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {key: value for key, value in os.environ.items() if not key.upper().startswith("ENGRAM_")}
    base_env = {**clean, "ENGRAM_PLUGINS__DISABLED": '["ollama", "openai"]', "ENGRAM_LOG__FORMAT": "json"}
    return subprocess.run([*ENGRAMD, *args], env={**base_env, **env}, capture_output=True, text=True, timeout=60)


def assert_refused(run: subprocess.CompletedProcess[str], expected: str) -> None:
    output = run.stdout + run.stderr
    assert run.returncode == 2, output
    assert "Traceback" not in output, output
    reasons = [line for line in run.stderr.splitlines() if line.startswith("engram: ")]
    assert len(reasons) == 1 and expected in reasons[0], output
    assert run.stderr.endswith(reasons[0] + "\n"), output  # the reason is the last word, on one line


@pytest.fixture
def base() -> Iterator[Path]:
    folder = short_tempdir()  # short enough for socket paths
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("case", CASES)
def test_configuration_error_exits_2_with_one_line(case: str, base: Path) -> None:
    setup, expected = CASES[case]
    args, env = setup(base)
    if "--state-dir" not in args:
        args = ["--state-dir", str(base / "state"), *args]
    if "--socket" not in args:
        args = [*args, "--socket", str(base / "engram.sock")]
    assert_refused(engramd(args, env), expected)


def test_second_daemon_on_the_same_state_folder_exits_2(daemon) -> None:
    run = engramd(["--state-dir", str(daemon.state_dir), "--socket", str(daemon.state_dir / "other.sock")], {})
    assert_refused(run, "in use by another engramd")
