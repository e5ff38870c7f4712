"""The Ollama provider against a fake Ollama server on loopback."""

from __future__ import annotations

import pytest
from engram.plugins import Completion
from engram_ollama import OllamaConfig, OllamaError, OllamaProvider
from engram_ollama.testing import FakeOllama


@pytest.fixture
def fake():
    with FakeOllama() as server:
        yield server


@pytest.fixture
async def provider(fake):
    p = OllamaProvider(OllamaConfig(base_url=fake.url, keep_alive="1m"))
    await p.start()
    yield p
    await p.stop()


async def test_generate(provider, fake):
    answer = await provider.generate("hello there", system="be brief", options={"temperature": 0})
    assert answer == Completion(text="echo: hello there", model="llama3.2", input_tokens=3, output_tokens=3)
    method, path, body = fake.requests[-1]
    assert (method, path) == ("POST", "/api/generate")
    assert body == {"model": "llama3.2", "prompt": "hello there", "stream": False, "system": "be brief",
                    "options": {"temperature": 0}, "keep_alive": "1m"}


async def test_stream_generate_reads_ndjson(provider):
    chunks = [c async for c in provider.stream_generate("one two three")]
    assert chunks == ["echo:", " one", " two", " three"]


async def test_chat_and_stream_chat(provider, fake):
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi you"}]
    assert (await provider.chat(messages)).text == "echo: hi you"
    assert "".join([c async for c in provider.stream_chat(messages, model="llama3.2")]) == "echo: hi you"
    assert fake.requests[-1][2]["stream"] is True and fake.requests[-1][1] == "/api/chat"


async def test_embed_and_list_models(provider):
    assert await provider.embed(["ab", "abcd"]) == [[2.0, 1.0, 0.0], [4.0, 1.0, 0.0]]
    assert await provider.list_models() == ["llama3.2:latest", "nomic-embed-text:latest"]
    assert (await provider.health()).ok


async def test_errors_are_raised(provider, fake):
    with pytest.raises(OllamaError, match="not found"):
        await provider.generate("x", model="nope")
    with pytest.raises(OllamaError, match="not found"):
        [c async for c in provider.stream_generate("x", model="nope")]
    fake.fail_status = 500
    health = await provider.health()
    assert not health.ok and "HTTP 500" in health.detail


async def test_unreachable_server_is_unhealthy():
    p = OllamaProvider(OllamaConfig(base_url="http://127.0.0.1:1"))
    await p.start()
    try:
        assert not (await p.health()).ok
    finally:
        await p.stop()


def test_locality_follows_base_url():
    assert OllamaProvider(OllamaConfig()).locality == "local"
    assert OllamaProvider(OllamaConfig(base_url="http://[::1]:11434")).locality == "local"
    assert OllamaProvider(OllamaConfig(base_url="http://gpu-box.lan:11434")).locality == "remote"
    assert OllamaProvider(OllamaConfig(locality="remote")).locality == "remote"


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


async def test_proxy_variables_are_ignored(fake, monkeypatch):
    with FakeOllama() as proxy:  # a "proxy" that records whatever reaches it
        for name in PROXY_VARIABLES:
            monkeypatch.setenv(name, proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        p = OllamaProvider(OllamaConfig(base_url=fake.url))
        await p.start()
        try:
            assert (await p.generate("my secret")).text == "echo: my secret"
        finally:
            await p.stop()
        assert proxy.requests == [] and fake.requests[-1][1] == "/api/generate"


async def test_a_configured_proxy_is_used_and_makes_it_remote(fake):
    with FakeOllama() as proxy:
        p = OllamaProvider(OllamaConfig(base_url=fake.url, proxy=proxy.url))
        assert p.locality == "remote"
        await p.start()
        try:
            with pytest.raises(OllamaError):  # the fake proxy is no proxy: it answers itself
                await p.list_models()
        finally:
            await p.stop()
        assert [path for _, path, _ in proxy.requests] == [f"{fake.url}/api/tags"] and fake.requests == []


async def test_requests_work_between_start_and_stop_and_starting_sends_none(fake):
    p = OllamaProvider(OllamaConfig(base_url=fake.url))
    with pytest.raises(OllamaError, match="not started"):
        await p.generate("hi")
    for _ in range(2):  # a stopped provider starts again
        await p.start()
        assert fake.requests == []  # the client is made at the first request, not at start
        assert (await p.generate("hi")).text == "echo: hi"
        await p.stop()
        with pytest.raises(OllamaError, match="not started"):
            await p.generate("hi")
        fake.requests.clear()
