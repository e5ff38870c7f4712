"""The policies issue's egress test: a remote provider stub on loopback under the real daemon.

The engram-openai plugin is configured against a fake OpenAI server on 127.0.0.1 that records
every request body, with ``locality = "remote"`` (its base URL is loopback, which would make it
local by the plugin's rule). Under the default policy nothing reaches it; under a policy that
allows it with the ``redact`` obligation it receives only redacted text; privacy mode refuses it
again.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("engram_openai", reason="make test installs plugins/engram-openai")
from engram_openai.testing import FakeOpenAI

pytestmark = pytest.mark.e2e

ALLOW = """
version = 1
name = "allow-openai"

[[rule]]
name = "owner-to-openai"
effect = "allow"
principals = ["owner"]
actions = ["infer.*"]
providers = ["openai"]
locality = ["remote"]
obligations = ["redact"]
"""

PROMPT = "Mail ada@example.org or call +33 6 12 34 56 78; key sk-abcdefghijklmnopqrstuvwxyz123456"


def openai_env(server: FakeOpenAI, **more: str) -> dict[str, str]:
    config = {"openai": {"base_url": server.url, "api_key": "sk-test", "model": "gpt-test", "locality": "remote"}}
    return {"ENGRAM_PLUGINS__PROVIDERS": json.dumps(config), "ENGRAM_PLUGINS__DISABLED": '["ollama"]', **more}


def test_default_policy_sends_nothing_to_a_remote_provider(make_daemon):
    with FakeOpenAI(api_key="sk-test") as server:
        daemon = make_daemon(env=openai_env(server))
        plugins = {p["name"]: p for p in daemon.call("plugins.list")["plugins"]}
        assert plugins["openai"]["state"] == "running" and plugins["openai"]["locality"] == "remote"
        with daemon.raw() as conn:
            for params in ({"prompt": PROMPT, "provider": "openai"}, {"prompt": PROMPT, "provider": "openai", "stream": True}):
                answer = conn.request({"jsonrpc": "2.0", "id": 1, "method": "infer.generate", "params": params})
                assert answer["error"]["code"] == -32001, answer
                assert answer["error"]["data"]["provider"] == "openai"
            chat = conn.request({"jsonrpc": "2.0", "id": 2, "method": "infer.chat",
                                 "params": {"messages": [{"role": "user", "content": PROMPT}], "provider": "openai"}})
            assert chat["error"]["code"] == -32001
        assert server.requests == []  # zero calls: not even a health check


def test_allowing_policy_sends_only_redacted_payloads_and_privacy_mode_refuses(make_daemon, tmp_path):
    policy = tmp_path / "allow-openai.toml"
    policy.write_text(ALLOW)
    with FakeOpenAI(api_key="sk-test") as server:
        daemon = make_daemon(env=openai_env(server, ENGRAM_POLICY__FILES=json.dumps([str(policy)])))
        result = daemon.call("infer.generate", {"prompt": PROMPT, "provider": "openai", "system": "reply to ada@example.org"})
        assert result["provider"] == "openai" and result["locality"] == "remote"
        assert result["redactions"] == {"email": 2, "phone": 1, "api_key": 1}
        sent = json.dumps(server.bodies())
        assert "ada@example.org" not in sent and "12 34 56 78" not in sent and "sk-abcdefghij" not in sent
        messages = server.bodies()[-1]["messages"]
        assert messages[0] == {"role": "system", "content": "reply to [REDACTED:email]"}
        assert messages[1]["content"] == "Mail [REDACTED:email] or call [REDACTED:phone]; key [REDACTED:api_key]"
        assert result["text"] == "echo: " + messages[1]["content"]

        chat = daemon.call("infer.chat", {"messages": [{"role": "user", "content": "I am ada@example.org"}], "provider": "openai"})
        assert chat["text"] == "echo: I am [REDACTED:email]"

        calls = len(server.requests)
        daemon.call("policy.privacy", {"mode": "on"})
        with daemon.raw() as conn:
            answer = conn.request({"jsonrpc": "2.0", "id": 1, "method": "infer.generate", "params": {"prompt": "hi", "provider": "openai"}})
        assert answer["error"]["code"] == -32001 and answer["error"]["data"]["rule"] == "privacy-mode"
        assert len(server.requests) == calls
