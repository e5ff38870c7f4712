"""Providers through the real daemon: the Ollama plugin against a fake Ollama on loopback,
fallback chains that skip what the policy refuses, streaming, and a breaker that opens."""

from __future__ import annotations

import json
import subprocess

import pytest

from engram.errors import PolicyDenied

pytest.importorskip("engram_ollama", reason="make test installs plugins/engram-ollama")
pytest.importorskip("engram_openai", reason="make test installs plugins/engram-openai")
from engram_ollama.testing import FakeOllama
from engram_openai.testing import FakeOpenAI
from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e


def env(ollama: FakeOllama, openai: FakeOpenAI, **more: str) -> dict[str, str]:
    providers = {
        "ollama": {"base_url": ollama.url},
        "openai": {"base_url": openai.url, "locality": "remote"},
    }
    chains = {"generate": ["openai", "ollama"], "chat": ["ollama"], "embed": ["onnx"]}
    return {
        "ENGRAM_PLUGINS__DISABLED": "[]",
        "ENGRAM_PLUGINS__PROVIDERS": json.dumps(providers),
        "ENGRAM_PROVIDERS__CHAINS": json.dumps(chains),
        **more,
    }


def test_chain_skips_the_remote_provider_and_streams_from_ollama(make_daemon):
    with FakeOllama() as ollama, FakeOpenAI() as openai:
        daemon = make_daemon(env=env(ollama, openai))
        plugins = {p["name"]: p for p in daemon.call("plugins.list")["plugins"]}
        assert plugins["ollama"]["locality"] == "local" and plugins["ollama"]["capabilities"] == ["chat", "embed", "generate"]
        assert plugins["ollama"]["health"]["ok"] and plugins["ollama"]["breaker"] == "closed"
        assert plugins["openai"]["version"] == "0.1.0" and plugins["openai"]["cost"]["usd_per_1k_input_tokens"] == 0

        result = daemon.call("infer.generate", {"prompt": "hello world"})
        assert result["text"] == "echo: hello world" and result["provider"] == "ollama"
        assert [(a["provider"], a["outcome"]) for a in result["attempts"]] == [("openai", "policy_denied"), ("ollama", "ok")]
        assert openai.requests == []

        with daemon.raw() as conn:
            conn.send({"jsonrpc": "2.0", "id": 9, "method": "infer.chat",
                       "params": {"messages": [{"role": "user", "content": "a b c"}], "stream": True, "stream_id": "s"}})
            chunks = []
            while "id" not in (message := conn.recv()):
                assert message["method"] == "infer.chunk" and message["params"]["stream"] == "s"
                chunks.append(message["params"]["text"])
            assert chunks == ["echo:", " a", " b", " c"]
            assert message["result"]["text"] == "echo: a b c" and message["result"]["chunks"] == 4
        assert ollama.requests[-1][2]["stream"] is True


def test_failing_provider_opens_its_breaker(make_daemon):
    with FakeOllama() as ollama, FakeOpenAI() as openai:
        daemon = make_daemon(env=env(ollama, openai, ENGRAM_PROVIDERS__BREAKER__FAILURES="2"))
        ollama.fail_status = 500
        with daemon.client() as client:
            events = client.subscribe(["provider.*"])
            for _ in range(2):
                with pytest.raises(Exception, match="ollama: error"):
                    client.call("infer.generate", {"prompt": "x"})
            with pytest.raises(Exception, match="ollama: breaker_open"):
                client.call("infer.generate", {"prompt": "x"})
            received = [events.receive(timeout=10) for _ in range(3)]
        # provider.breaker is a control event: the bus may deliver it ahead of the bulk ones.
        assert sorted(e["topic"] for e in received) == ["provider.breaker", "provider.call_failed", "provider.call_failed"]
        opened = next(e for e in received if e["topic"] == "provider.breaker")
        assert opened["data"]["state"] == "open" and "HTTP 500" in opened["data"]["error"]
        assert len([r for r in ollama.requests if r[1] == "/api/generate"]) == 2
        plugins = {p["name"]: p for p in daemon.call("plugins.list")["plugins"]}
        assert plugins["ollama"]["breaker"] == "open"
        text = daemon.call("system.metrics")["text"]
        assert 'engram_provider_breaker_state{provider="ollama"} 2.0' in text
        assert 'engram_provider_calls_total{capability="generate",outcome="error",provider="ollama"} 2.0' in text


def proxy_variables(proxy: FakeOllama) -> dict[str, str]:
    """Every variable an HTTP client may take a proxy from, all naming ``proxy``."""
    names = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
    return {**{name: proxy.url for name in names}, **{name.lower(): proxy.url for name in names},
            "NO_PROXY": "", "no_proxy": ""}


def test_proxy_variables_do_not_divert_a_local_provider(make_daemon):
    # The "proxy" is one more fake server: whatever reaches it is recorded in its requests.
    with FakeOllama() as ollama, FakeOpenAI() as openai, FakeOllama() as proxy:
        daemon = make_daemon(env={**env(ollama, openai), **proxy_variables(proxy)})
        result = daemon.call("infer.chat", {"messages": [{"role": "user", "content": "my secret"}]})
        assert result["text"] == "echo: my secret" and result["provider"] == "ollama"
        assert proxy.requests == []
        assert any(path == "/api/chat" for _, path, _ in ollama.requests)


def test_a_configured_proxy_makes_a_loopback_provider_remote(make_daemon):
    with FakeOllama() as ollama, FakeOpenAI() as openai, FakeOllama() as proxy:
        settings = env(ollama, openai)
        settings["ENGRAM_PLUGINS__PROVIDERS"] = json.dumps({"ollama": {"base_url": ollama.url, "proxy": proxy.url}})
        daemon = make_daemon(env=settings)
        plugins = {p["name"]: p for p in daemon.call("plugins.list")["plugins"]}
        assert plugins["ollama"]["locality"] == "remote"
        with pytest.raises(PolicyDenied, match="remote provider 'ollama'"):
            daemon.call("infer.chat", {"messages": [{"role": "user", "content": "my secret"}]})
        # The health check goes through the configured proxy; the prompt goes nowhere.
        assert {path for _, path, _ in proxy.requests} == {f"{ollama.url}/api/tags"}
        assert not any(path.endswith("/api/chat") for _, path, _ in ollama.requests + proxy.requests)


def engram(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args)  # the commands' output and status are checked, not the process


def test_cli_generate_streams_and_chat_answers(make_daemon):
    with FakeOllama() as ollama, FakeOpenAI() as openai:
        daemon = make_daemon(env=env(ollama, openai))
        sock = ["--socket", str(daemon.socket)]
        streamed = engram("generate", "tell me more", *sock)
        assert streamed.returncode == 0, streamed.stderr
        assert streamed.stdout == "echo: tell me more\n" and "ollama (local), 4 chunks" in streamed.stderr
        whole = engram("generate", "tell me more", "--no-stream", *sock)
        assert whole.returncode == 0, whole.stderr
        assert whole.stdout == "echo: tell me more\n" and whole.stderr == "-- ollama (local)\n"
        answer = json.loads(engram("chat", "hi", "--provider", "ollama", "--json", *sock).stdout)
        assert answer["text"] == "echo: hi" and answer["chunks"] == 0
        denied = engram("generate", "x", "--provider", "openai", *sock)
        assert denied.returncode == 1 and "-32001" in denied.stderr
        listed = engram("plugins", "list", *sock)
        assert "breaker closed" in listed.stdout


def test_bench_providers_smoke():
    run = engram("bench", "providers", "--calls", "5", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert [r["target"] for r in report["rows"]] == [
        "engram infer.generate", "baseline POST /api/generate", "plugin alone (in-process)"
    ]
    assert all(r["requests"] == 5 and r["errors"] == 0 for r in report["rows"]) and report["throughput_ratio"] > 0
