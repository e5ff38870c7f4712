"""The engram command as a person runs it: output, --json, and the documented exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cli_inproc import run_cli
from tests.conftest import DaemonProcess, running_daemon

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    """One daemon for the module: the commands tested against it only read."""
    with running_daemon() as process:
        yield process


def engram(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A process, for the exit codes and for commands whose whole environment is the test's."""
    return subprocess.run(
        [sys.executable, "-m", "engram.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """In-process, for the tests that check what a command prints (the same text either way)."""
    return run_cli(*args)


def test_status_ping_health_plugins(daemon):
    sock = ["--socket", str(daemon.socket)]
    status = cli("status", *sock)
    assert status.returncode == 0 and f"socket       {daemon.socket}" in status.stdout
    as_json = json.loads(cli("status", "--json", *sock).stdout)
    assert as_json["pid"] == daemon.proc.pid
    ping = cli("ping", *sock)
    assert ping.returncode == 0 and ping.stdout.startswith("pong (")
    assert json.loads(cli("ping", "--json", *sock).stdout)["pong"] is True
    health = cli("health", *sock)
    assert health.returncode == 0 and "status: ok" in health.stdout
    plugins = cli("plugins", "list", *sock)
    assert plugins.returncode == 0 and "onnx" in plugins.stdout and "breaker closed" in plugins.stdout
    listed = json.loads(cli("plugins", "list", "--json", *sock).stdout)["plugins"]
    assert [p["name"] for p in listed if p["state"] == "running"] == ["onnx"]  # the built-in provider
    topics = cli("events", *sock)
    assert "request.completed" in topics.stdout.split()


def test_metrics_are_prometheus_text(daemon):
    daemon.call("system.ping")
    out = cli("metrics", "--socket", str(daemon.socket))
    assert out.returncode == 0
    families = {f.name: f for f in text_string_to_metric_families(out.stdout)}
    assert {"engram_requests", "engram_request_duration_seconds", "engram_connections", "engram_bus_queue_depth"} <= set(families)
    pings = [s for s in families["engram_requests"].samples if s.labels.get("method") == "system.ping"]
    assert pings and pings[0].value >= 1
    structured = json.loads(cli("metrics", "--json", "--socket", str(daemon.socket)).stdout)
    assert any(f["name"] == "engram_request_duration_seconds" for f in structured)


def test_exit_codes(daemon, state_dir):
    sock = ["--socket", str(daemon.socket)]
    remote = engram("call", "no.such", *sock)
    assert remote.returncode == 1 and "-32601" in remote.stderr
    assert engram("call", "system.ping", "{not json", *sock).returncode == 2
    assert engram("call", "system.ping", '{"echo": NaN}', *sock).returncode == 2
    assert engram("status", "--bogus-flag").returncode == 2
    unreachable = engram("status", "--socket", str(state_dir.parent / "absent.sock"))
    assert unreachable.returncode == 3 and "absent.sock" in unreachable.stderr
    bad_config = engram("config", "show", "--offline", env={"ENGRAM_LOG__LEVEL": "chatty", "PATH": "/usr/bin"})
    assert bad_config.returncode == 2 and "log.level" in bad_config.stderr
    no_daemon = engram("config", "show", "--socket", str(state_dir.parent / "absent.sock"))
    assert no_daemon.returncode == 3 and "absent.sock" in no_daemon.stderr


def test_call_prints_json(daemon):
    out = cli("call", "system.ping", '{"echo": {"a": [1, 2]}}', "--socket", str(daemon.socket))
    assert out.returncode == 0 and json.loads(out.stdout) == {"pong": True, "echo": {"a": [1, 2]}}


def test_config_show_offline_is_the_configuration_computed_here(tmp_path):
    config = tmp_path / "engram.toml"
    config.write_text('[server]\nmax_connections = 77\n\n[log]\nlevel = "warning"\n')
    env = {"ENGRAM_SERVER__REQUEST_TIMEOUT": "12.5", "PATH": "/usr/bin", "HOME": str(tmp_path)}
    out = engram("config", "show", "--config", str(config), "--state-dir", str(tmp_path / "s"), env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# source: computed here (offline)")
    assert f"# config file: {config}\n" in out.stdout
    shown = tomllib.loads(out.stdout)
    assert shown["server"]["max_connections"] == 77
    assert shown["server"]["request_timeout"] == 12.5
    assert shown["log"]["level"] == "warning"
    assert shown["state_dir"] == str(tmp_path / "s") and shown["socket"] == str(tmp_path / "s" / "engram.sock")
    as_json = json.loads(engram("config", "show", "--json", "--config", str(config), env=env).stdout)
    assert as_json["source"] == "local" and as_json["config_file"] == str(config)
    assert as_json["settings"]["server"]["max_connections"] == 77


def test_system_config_is_the_daemons_configuration_with_secrets_redacted(make_daemon, state_dir):
    providers = {"openai": {"api_key": "sk-test-0123456789", "base_url": "https://me:hunter2@llm.example/v1"}}
    grant = state_dir.parent / "grant.toml"
    grant.write_text('[[rule]]\nname = "nobody-system"\neffect = "allow"\nprincipals = ["uid:65534"]\nactions = ["system.*"]\n')
    daemon = make_daemon(env={
        "ENGRAM_PLUGINS__PROVIDERS": json.dumps(providers),
        "ENGRAM_SERVER__MAX_CONNECTIONS": "77",
        "ENGRAM_POLICY__FILES": json.dumps([str(grant)]),
    })
    with daemon.raw() as conn:
        reply = conn.request({"jsonrpc": "2.0", "id": 1, "method": "system.config"})
    result = reply["result"]
    assert result["settings"]["state_dir"] == str(state_dir) and result["settings"]["socket"] == str(daemon.socket)
    assert result["settings"]["server"]["max_connections"] == 77  # the daemon's environment, not this one's
    assert result["config_file"] is None
    openai = result["settings"]["plugins"]["providers"]["openai"]
    assert openai == {"api_key": "<redacted>", "base_url": "https://me:<redacted>@llm.example/v1"}
    assert sorted(result["redacted"]) == ["plugins.providers.openai.api_key", "plugins.providers.openai.base_url"]
    assert "sk-test" not in json.dumps(reply) and "hunter2" not in json.dumps(reply)
    with daemon.raw() as conn:
        bad = conn.request({"jsonrpc": "2.0", "id": 2, "method": "system.config", "params": {"full": True}})
    assert bad["error"]["code"] == -32602

    # An admin method: other uids are refused even by a rule that grants them every system.* method.
    other = daemon.call("policy.explain", {"method": "system.config", "uid": 65534})
    assert (other["effect"], other["rule"]) == ("deny", "owner-only")
    assert daemon.call("policy.explain", {"method": "system.status", "uid": 65534})["effect"] == "allow"
    assert daemon.call("policy.explain", {"method": "system.config"})["effect"] == "allow"  # the owner


def test_config_show_prints_the_running_daemons_configuration(daemon, tmp_path):
    # This shell would guess another state folder: what is printed must come from the daemon.
    env = {"PATH": "/usr/bin", "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "elsewhere")}
    out = engram("config", "show", "--socket", str(daemon.socket), env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# source: the running daemon (system.config)")
    shown = tomllib.loads(out.stdout)
    assert shown["state_dir"] == str(daemon.state_dir) and shown["socket"] == str(daemon.socket)
    as_json = json.loads(engram("config", "show", "--json", "--socket", str(daemon.socket), env=env).stdout)
    assert as_json["source"] == "daemon" and as_json["settings"]["state_dir"] == str(daemon.state_dir)


def test_default_socket_for_a_user_is_in_the_runtime_dir(tmp_path):
    env = {"PATH": "/usr/bin", "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    shown = json.loads(engram("config", "show", "--offline", "--json", env=env).stdout)["settings"]
    import os

    if os.geteuid() == 0:
        assert shown["state_dir"] == "/var/lib/engram" and shown["socket"] == "/run/engram/engram.sock"
    else:
        assert shown["state_dir"] == str(tmp_path / "state" / "engram")
        assert shown["socket"] == str(tmp_path / "run" / "engram" / "engram.sock")
    systemd_env = {**env, "STATE_DIRECTORY": "/var/lib/engram", "RUNTIME_DIRECTORY": "/run/engram"}
    shown = json.loads(engram("config", "show", "--offline", "--json", env=systemd_env).stdout)["settings"]
    assert shown["state_dir"] == "/var/lib/engram" and shown["socket"] == "/run/engram/engram.sock"


def test_bench_rpc_smoke():
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    out = cli("bench", "rpc", "--requests", "40", "--concurrency", "1,4", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    if cpus is not None and len(cpus) >= 2:  # the load generator (here, in process) on a CPU of its own, then given its CPUs back
        assert report["pinned"]["load_generator_cpu"] != report["pinned"]["server_cpu"]
        assert os.sched_getaffinity(0) == cpus
    assert [r["concurrency"] for r in report["ratios"]] == [1, 4]
    assert all(r["throughput_ratio"] > 0 for r in report["ratios"])
    assert {row["target"] for row in report["rows"]} == {"engramd", "baseline"}
    assert all(row["errors"] == 0 and row["requests"] >= 40 for row in report["rows"])
    layers = report["layers"]["layers_us_per_request"]  # from a second daemon, timed per layer
    assert list(layers)[0] == "RequestEvents" and list(layers)[-1] == "call_handler"
    assert "Guards" in layers and all(us >= 0 for us in layers.values())
