"""The OpenAI-compatible provider against a fake server on loopback."""

from __future__ import annotations

import pytest
from engram_openai import OpenAIConfig, OpenAIError, OpenAIProvider
from engram_openai.testing import FakeOpenAI


@pytest.fixture
def fake():
    with FakeOpenAI(api_key="sk-test") as server:
        yield server


@pytest.fixture
async def provider(fake):
    p = OpenAIProvider(OpenAIConfig(base_url=fake.url, api_key="sk-test", model="gpt-test"))
    await p.start()
    yield p
    await p.stop()


async def test_chat(provider, fake):
    answer = await provider.chat([{"role": "user", "content": "hello"}], options={"temperature": 0.1})
    assert answer.text == "echo: hello" and answer.model == "gpt-test"
    assert (answer.input_tokens, answer.output_tokens) == (5, 2)
    path, headers, body = fake.requests[-1]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test"
    assert body == {"temperature": 0.1, "model": "gpt-test", "messages": [{"role": "user", "content": "hello"}], "stream": False}


async def test_generate_is_a_chat_with_system(provider, fake):
    assert (await provider.generate("hi", system="brief")).text == "echo: hi"
    assert fake.requests[-1][2]["messages"] == [{"role": "system", "content": "brief"}, {"role": "user", "content": "hi"}]


async def test_streaming_reads_sse(provider):
    chunks = [c async for c in provider.stream_generate("one two")]
    assert chunks == ["echo:", " one", " two"]
    assert "".join([c async for c in provider.stream_chat([{"role": "user", "content": "x"}])]) == "echo: x"


async def test_embeddings(provider, fake):
    assert await provider.embed(["ab", "abc"]) == [[2.0, 0.5], [3.0, 0.5]]
    assert fake.requests[-1][2] == {"model": "text-embedding-3-small", "input": ["ab", "abc"]}


async def test_bad_key_is_an_error(fake):
    p = OpenAIProvider(OpenAIConfig(base_url=fake.url, api_key="sk-wrong"))
    await p.start()
    try:
        with pytest.raises(OpenAIError, match="HTTP 401: Incorrect API key"):
            await p.chat([{"role": "user", "content": "x"}])
        with pytest.raises(OpenAIError, match="HTTP 401"):
            [c async for c in p.stream_chat([{"role": "user", "content": "x"}])]
    finally:
        await p.stop()


async def test_health_sends_nothing(provider, fake):
    health = await provider.health()
    assert health.ok and "not contacted" in health.detail
    assert fake.requests == []


def test_api_key_from_environment(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-env")
    assert OpenAIProvider(OpenAIConfig(api_key_env="MY_KEY"))._api_key() == "sk-env"


def test_locality():
    assert OpenAIProvider(OpenAIConfig()).locality == "remote"
    assert OpenAIProvider(OpenAIConfig(base_url="http://127.0.0.1:8080/v1")).locality == "local"
    assert OpenAIProvider(OpenAIConfig(base_url="http://localhost:8080/v1", locality="remote")).locality == "remote"


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


async def test_proxy_variables_are_ignored(fake, monkeypatch):
    with FakeOpenAI() as proxy:  # a "proxy" that records whatever reaches it
        for name in PROXY_VARIABLES:
            monkeypatch.setenv(name, proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        p = OpenAIProvider(OpenAIConfig(base_url=fake.url, api_key="sk-test"))
        await p.start()
        try:
            assert (await p.generate("my secret")).text == "echo: my secret"
        finally:
            await p.stop()
        assert proxy.requests == [] and fake.requests[-1][0] == "/v1/chat/completions"


async def test_a_configured_proxy_is_used_and_makes_it_remote(fake):
    with FakeOpenAI() as proxy:
        p = OpenAIProvider(OpenAIConfig(base_url=fake.url, api_key="sk-test", proxy=proxy.url))
        assert p.locality == "remote"
        await p.start()
        try:
            with pytest.raises(Exception):  # the fake proxy is no proxy: it answers itself
                await p.embed(["x"])
        finally:
            await p.stop()
        assert [path for path, _, _ in proxy.requests] == [f"{fake.url}/embeddings"] and fake.requests == []


async def test_requests_work_between_start_and_stop_and_starting_sends_none(fake):
    p = OpenAIProvider(OpenAIConfig(base_url=fake.url, api_key="sk-test", model="gpt-test"))
    messages = [{"role": "user", "content": "hello"}]
    with pytest.raises(OpenAIError, match="not started"):
        await p.chat(messages)
    assert not (await p.health()).ok
    for _ in range(2):  # a stopped provider starts again
        await p.start()
        assert fake.requests == [] and (await p.health()).ok  # the client is made at the first request
        assert (await p.chat(messages)).text == "echo: hello"
        await p.stop()
        with pytest.raises(OpenAIError, match="not started"):
            await p.chat(messages)
        fake.requests.clear()
