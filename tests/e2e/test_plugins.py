"""Provider plugins found through entry points: good ones run, broken ones are reported."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from engram.errors import Unavailable

pytestmark = pytest.mark.e2e


def test_plugins_list_reports_good_and_broken(make_daemon, plugin_env):
    daemon = make_daemon(env=plugin_env({"configured": {"retries": "many"}}))
    plugins = {p["name"]: p for p in daemon.call("plugins.list")["plugins"]}
    assert set(plugins) - {"ollama", "openai"} == {
        "onnx", "good", "slow", "configured", "missing", "incomplete", "failing", "unreachable", "blocking"
    }
    assert plugins["onnx"]["state"] == "running" and plugins["onnx"]["distribution"] == "engram"
    assert plugins["onnx"]["locality"] == "local" and plugins["onnx"]["breaker"] == "closed"

    good = plugins["good"]
    assert good["state"] == "running" and good["locality"] == "local" and good["capabilities"] == ["embed"]
    assert good["distribution"] == "engram-testplugins" and good["version"] == "1.0"
    assert good["health"] == {"ok": True, "detail": "fine"}

    assert plugins["missing"]["state"] == "failed" and plugins["missing"]["failed_stage"] == "import"
    assert "ModuleNotFoundError" in plugins["missing"]["error"]
    assert plugins["incomplete"]["failed_stage"] == "validate"
    assert "capabilities" in plugins["incomplete"]["error"]
    assert plugins["failing"]["failed_stage"] == "start"
    assert "refused the connection" in plugins["failing"]["error"]
    assert plugins["configured"]["failed_stage"] == "config"
    assert "plugins.providers.configured" in plugins["configured"]["error"]

    # The daemon is up and says which plugins are broken; only the one the configuration names
    # (its plugins.providers table) degrades it, the others are installed but unused.
    health = daemon.call("system.health")
    assert health["status"] == "degraded"
    configured = health["checks"]["plugin:configured"]
    assert not configured["ok"] and configured["detail"].startswith("used by plugins.providers.configured; failed at config")
    failing = health["checks"]["plugin:failing"]
    assert failing["ok"] and failing["detail"].startswith("unused") and "refused the connection" in failing["detail"]
    assert health["checks"]["plugin:good"]["ok"]
    failed_logs = {r["name"] for r in daemon.records() if r.get("event") == "provider failed"}
    assert failed_logs == {"missing", "incomplete", "failing", "configured"}


def test_disabled_plugins_are_not_loaded(make_daemon, plugin_env):
    disabled = ["failing", "missing", "incomplete", "ollama", "openai"]
    daemon = make_daemon(env=plugin_env({"configured": {"url": "http://127.0.0.1:1"}}, disabled=disabled))
    plugins = {p["name"]: p["state"] for p in daemon.call("plugins.list")["plugins"] if p["name"] not in ("ollama", "openai")}
    assert plugins == {
        "onnx": "running",
        "good": "running",
        "slow": "running",
        "configured": "running",
        "missing": "disabled",
        "incomplete": "disabled",
        "failing": "disabled",
        "unreachable": "running",
        "blocking": "running",
    }
    assert daemon.call("system.health")["status"] == "ok"


def test_slow_health_is_bounded(make_daemon, plugin_env):
    daemon = make_daemon(
        env={**plugin_env({"slow": {"health_delay": 30}}), "ENGRAM_PLUGINS__HEALTH_TIMEOUT": "0.2"}
    )
    plugins = {p["name"]: p for p in daemon.call("plugins.list")["plugins"]}
    assert plugins["slow"]["health"] == {"ok": False, "detail": "no answer within 0.2 s"}


# The broken fixtures and the bundled HTTP plugins stay out: these tests are about one provider.
OTHERS = ["failing", "missing", "incomplete", "ollama", "openai"]


def test_an_unreachable_provider_that_nothing_uses_leaves_the_daemon_healthy(make_daemon, plugin_env):
    daemon = make_daemon(env=plugin_env(disabled=OTHERS))
    plugins = {p["name"]: p for p in daemon.call("plugins.list")["plugins"]}
    assert plugins["unreachable"]["state"] == "running"
    assert plugins["unreachable"]["health"]["ok"] is False  # it really is down
    health = daemon.call("system.health")
    assert health["status"] == "ok", health
    check = health["checks"]["plugin:unreachable"]
    assert check["ok"] is True
    assert check["detail"].startswith("unused (") and "running, unhealthy: 127.0.0.1:1:" in check["detail"]


def test_an_unreachable_provider_in_a_chain_degrades_health_and_says_why(make_daemon, plugin_env):
    chains = {"embed": ["onnx", "unreachable"]}
    daemon = make_daemon(env={**plugin_env(disabled=OTHERS), "ENGRAM_PROVIDERS__CHAINS": json.dumps(chains)})
    health = daemon.call("system.health")
    assert health["status"] == "degraded"
    check = health["checks"]["plugin:unreachable"]
    assert check["ok"] is False
    assert check["detail"].startswith("used by providers.chains.embed; running, unhealthy: 127.0.0.1:1:")
    assert "refused" in check["detail"].lower()
    assert health["checks"]["plugin:onnx"]["ok"] and health["checks"]["plugin:good"]["ok"]


def test_synchronous_provider_methods_answer(make_daemon, plugin_env):
    daemon = make_daemon(env=plugin_env(disabled=OTHERS))
    messages = [{"role": "user", "content": "one two"}]
    answer = daemon.call("infer.chat", {"provider": "blocking", "messages": messages})
    assert answer["text"] == "sync: one two" and answer["provider"] == "blocking"
    streamed = daemon.call("infer.chat", {"provider": "blocking", "messages": messages, "stream": True})
    assert streamed["text"] == "onetwo" and streamed["chunks"] == 2


def test_a_plugin_that_blocks_its_thread_holds_up_neither_the_daemon_nor_its_shutdown(make_daemon, plugin_env):
    block, call_timeout = 8.0, 2.0  # the plugin's time.sleep outlasts the call timeout and the shutdown
    daemon = make_daemon(env={
        **plugin_env({"blocking": {"block_seconds": block}}, disabled=OTHERS),
        "ENGRAM_PROVIDERS__CALL_TIMEOUT": str(call_timeout),
        "ENGRAM_PLUGINS__START_TIMEOUT": "0.5",  # also bounds the provider's stop at shutdown
    })
    answered: dict[str, float] = {}

    def ping_while_the_plugin_blocks() -> None:
        time.sleep(0.3)  # the generate call below is inside the plugin by now
        daemon.call("system.ping")
        answered["ping"] = time.monotonic()

    pinger = threading.Thread(target=ping_while_the_plugin_blocks)
    pinger.start()
    started = time.monotonic()
    with pytest.raises(Unavailable) as failure:
        daemon.call("infer.generate", {"provider": "blocking", "prompt": "hello"})
    answered["generate"] = time.monotonic()
    pinger.join()
    # The daemon answered another client while the plugin slept, and the call timeout, not the
    # plugin's return, ended the call.
    assert sorted(answered, key=answered.get) == ["ping", "generate"], {k: t - started for k, t in answered.items()}
    assert [(a["provider"], a["outcome"]) for a in failure.value.data["attempts"]] == [("blocking", "timeout")]
    assert answered["generate"] - started < block

    # The plugin's thread is still asleep: stop() cannot run there, so shutdown waits a bounded
    # time for it and leaves the thread behind.
    stopping = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    assert time.monotonic() - started < block
    abandoned = [r for r in daemon.records() if r.get("event") == "plugin thread abandoned"]
    assert [r["name"] for r in abandoned] == ["blocking"], time.monotonic() - stopping
