"""The HTTP gateway through the real daemon: bearer tokens, /rpc and /v1/methods over the same
request chain as the socket, the OpenAI-compatible endpoints checked with the official openai
client (chat against a fake Ollama on loopback), and hostile clients that must not hurt others."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.conftest import DaemonProcess, running_daemon

openai = pytest.importorskip("openai", reason="make test installs the test extra (openai)")
pytest.importorskip("engram_ollama", reason="make test installs plugins/engram-ollama")
from engram_ollama.testing import FakeOllama  # noqa: E402
from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e

OTHER_UID = 65534  # nobody: not the daemon's owner


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gateway:
    def __init__(self, daemon: DaemonProcess, port: int) -> None:
        self.daemon = daemon
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.owner = daemon.call("token.create", {"name": "owner", "owner": True})["token"]
        self.other = daemon.call("token.create", {"name": "other", "uid": OTHER_UID})["token"]

        self.ollama: FakeOllama | None = None

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def openai(self, token: str | None = None) -> Any:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=token or self.owner, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    port = free_port()
    with FakeOllama() as ollama:
        env = {
            "ENGRAM_HTTP__LISTEN": f"127.0.0.1:{port}",
            "ENGRAM_HTTP__MAX_BODY_BYTES": str(1 << 20),
            "ENGRAM_HTTP__MAX_CONNECTIONS": "8",
            "ENGRAM_HTTP__READ_TIMEOUT": "1",
            "ENGRAM_PLUGINS__DISABLED": '["openai"]',
            "ENGRAM_PLUGINS__PROVIDERS": json.dumps({"ollama": {"base_url": ollama.url}}),
            "ENGRAM_PROVIDERS__CHAINS": json.dumps({"chat": ["ollama"], "generate": ["ollama"], "embed": ["onnx"]}),
        }
        with running_daemon(env) as daemon:
            gateway = Gateway(daemon, port)
            gateway.ollama = ollama
            yield gateway


# --- OpenAI-compatible endpoints, with the official client ------------------------------------------


def test_embeddings_equal_infer_embed_in_float_and_base64(gateway):
    texts = ["the cat sat on the mat", "a completely different sentence about engines"]
    expected = np.asarray(gateway.daemon.call("infer.embed", {"texts": texts, "output_format": "list"})["vectors"]["data"])
    client = gateway.openai()
    floats = client.embeddings.create(model="engram", input=texts, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1] and floats.model == "all-minilm-l6-v2"
    assert np.allclose(np.asarray([d.embedding for d in floats.data]), expected, atol=1e-6)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > len(" ".join(texts).split())
    # The client's default asks for base64 and decodes it itself; read the raw answer too.
    raw = client.embeddings.with_raw_response.create(model="all-minilm-l6-v2", input=texts[0], encoding_format="base64")
    row = np.frombuffer(base64.b64decode(json.loads(raw.text)["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(row, expected[0], atol=1e-6)
    decoded = client.embeddings.create(model="engram", input=texts[1])
    assert np.allclose(np.asarray(decoded.data[0].embedding), expected[1], atol=1e-6)


def test_chat_completion_and_its_stream(gateway):
    client = gateway.openai()
    answer = client.chat.completions.create(model="engram", messages=[
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}])
    assert answer.choices[0].message.content == "echo: hello there" and answer.choices[0].finish_reason == "stop"
    assert answer.object == "chat.completion" and answer.model == "engram"

    stream = client.chat.completions.create(model="provider:ollama", messages=[{"role": "user", "content": "a b c"}], stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: a b c"
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1 and len(chunks) == 1 + 4 + 1  # role, one per word, stop


def test_chat_with_memory_as_context_goes_through_route_ask(gateway):
    gateway.daemon.call("memory.remember", {"items": [{"text": "The car is parked on level 3, spot 42."}], "namespace": "notes"})
    client = gateway.openai()
    question = [{"role": "user", "content": "where is the car parked?"}]
    memory = {"engram": {"memory": {"k": 3, "namespace": "notes", "remember": False}}}
    answer = client.chat.completions.create(model="engram", messages=question, extra_body=memory)
    # The fake provider echoes its prompt: the recalled memory was in it.
    assert "level 3, spot 42" in answer.choices[0].message.content
    assert answer.model_extra["engram"]["method"] == "route.ask"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="engram", messages=question, extra_body=memory, stream=True))
    assert "level 3, spot 42" in streamed


def test_a_client_that_leaves_a_stream_cancels_the_call(gateway):
    def slow(prompt: str, body: dict[str, Any]) -> str:
        time.sleep(3 if prompt == "take your time" else 0)
        return f"echo: {prompt}"

    gateway.ollama.responder = slow
    try:
        body = json.dumps({"model": "engram", "stream": True, "messages": [{"role": "user", "content": "take your time"}]})
        with socket.create_connection(("127.0.0.1", gateway.port)) as leaving:
            leaving.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gateway.owner}\r\n"
                            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
            time.sleep(0.5)
        deadline = time.monotonic() + 2  # well before the provider would have answered
        while time.monotonic() < deadline:
            done = [r for r in gateway.daemon.records() if r.get("event") == "request" and r.get("method") == "infer.chat"
                    and r.get("reason") == "cancelled"]
            if done:
                break
            time.sleep(0.05)
        assert done, "the call went on after its client left"
    finally:
        gateway.ollama.responder = None
    _ping_still_works(gateway)


def test_chat_refusals_keep_their_status(gateway):
    client = gateway.openai()
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert bad.value.body["code"] == "model_not_found" and bad.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as unknown:
        client.chat.completions.create(model="engram", messages=[{"role": "user", "content": "x"}], extra_body={"tools_x": 1})
    assert unknown.value.body["param"] == "tools_x"
    with pytest.raises(openai.BadRequestError) as tagged:
        client.chat.completions.create(model="route:r", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"engram": {"tags": ["secret"]}})
    assert tagged.value.body["param"] == "engram.tags"
    # Refused before any text: a status and an error body, not a stream.
    with pytest.raises(openai.APIStatusError) as down:
        list(client.chat.completions.create(model="provider:nope", messages=[{"role": "user", "content": "x"}], stream=True))
    assert down.value.status_code == 503 and down.value.body["code"] == "no_provider"


def test_models_lists_the_chain_embedders_and_providers(gateway):
    ids = [m.id for m in gateway.openai().models.list()]
    assert ids[0] == "engram" and "all-minilm-l6-v2" in ids and "provider:ollama" in ids


# --- engram's methods over HTTP ---------------------------------------------------------------------


def test_rpc_single_batch_and_notifications(gateway):
    with gateway.http(gateway.owner) as http:
        single = http.post("/rpc", json={"jsonrpc": "2.0", "id": 7, "method": "system.ping", "params": {"echo": [1]}})
        assert single.status_code == 200 and single.json() == {"jsonrpc": "2.0", "id": 7, "result": {"pong": True, "echo": [1]}}
        batch = http.post("/rpc", json=[
            {"jsonrpc": "2.0", "id": 1, "method": "system.ping"},
            {"jsonrpc": "2.0", "id": 2, "method": "no.such"},
            {"jsonrpc": "2.0", "method": "system.ping"},
            {"jsonrpc": "1.0", "id": 3, "method": "system.ping"},
        ]).json()
        assert [(r["id"], "result" in r, r.get("error", {}).get("code")) for r in batch] == [
            (1, True, None), (2, False, -32601), (3, False, -32600)]
        assert http.post("/rpc", json={"jsonrpc": "2.0", "method": "system.ping"}).status_code == 204
        assert http.post("/rpc", json=[]).json()["error"]["data"]["reason"] == "empty_batch"


def test_methods_endpoint_maps_errors_to_statuses(gateway):
    with gateway.http(gateway.owner) as http:
        ok = http.post("/v1/methods/infer.embed", json={"texts": ["x"], "output_format": "list"})
        assert ok.status_code == 200 and ok.json()["dim"] == 384
        assert http.post("/v1/methods/system.status", content=b"", headers={"content-type": "application/json"}).json()["version"]
        bad = http.post("/v1/methods/infer.embed", json={"texts": "not a list"})
        assert bad.status_code == 400 and bad.json()["error"]["data"]["field"] == "texts"
        assert http.post("/v1/methods/no.such", json={}).status_code == 404
        assert http.post("/v1/methods/system.ping", json=3).json()["error"]["data"]["reason"] == "bad_params"


def test_audit_log_names_the_token(gateway):
    with gateway.http(gateway.owner) as http:
        seq = http.post("/v1/methods/memory.remember", json={"items": [{"text": "http was here"}]}).json()["audit_seq"]
    entry = gateway.daemon.call("audit.entry", {"seq": seq})["entry"]
    assert entry["principal"]["via"] == "http" and entry["principal"]["token"] == "owner"
    assert entry["principal"]["pid"] is None


# --- who may ------------------------------------------------------------------------------------------


def test_missing_bad_and_revoked_tokens_get_401(gateway):
    with gateway.http() as http:
        none = http.post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "system.ping"})
        assert none.status_code == 401 and none.headers["www-authenticate"] == 'Bearer realm="engram"'
        bad = http.get("/v1/models", headers={"Authorization": "Bearer engram_not-a-token"})
        assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]
        assert bad.json()["error"]["code"] == "bad_token"
        assert http.get("/metrics").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        gateway.openai("engram_wrong").models.list()

    token = gateway.daemon.call("token.create", {"name": "short-lived", "owner": True})["token"]
    with gateway.http(token) as http:
        assert http.post("/v1/methods/system.ping", json={}).status_code == 200
        gateway.daemon.call("token.revoke", {"name": "short-lived"})
        assert http.post("/v1/methods/system.ping", json={}).status_code == 401
    names = [t["name"] for t in gateway.daemon.call("token.list")["tokens"]]
    assert "short-lived" not in names and {"owner", "other"} <= set(names)


def engram_cli(gateway: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--socket", str(gateway.daemon.socket), *args)  # output and status are checked, not the process


def test_token_commands_and_expiry(gateway):
    made = engram_cli(gateway, "token", "create", "--name", "cli-made", "--owner", "--expires", "2")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("engram_") and "acts as uid" in made.stderr and "not shown again" in made.stderr
    listed = engram_cli(gateway, "token", "list")
    assert "cli-made" in listed.stdout and token not in listed.stdout
    with gateway.http(token) as http:
        assert http.post("/v1/methods/system.ping", json={}).status_code == 200
        time.sleep(2.1)
        expired = http.post("/v1/methods/system.ping", json={})
        assert expired.status_code == 401 and expired.json()["error"]["data"]["reason"] == "token_expired"
    assert engram_cli(gateway, "token", "revoke", "cli-made").returncode == 0
    again = engram_cli(gateway, "token", "revoke", "cli-made")
    assert again.returncode == 1 and "no token named" in again.stderr
    bad = engram_cli(gateway, "token", "create", "--name", "x", "--uid", "5", "--expires", "soon")
    assert bad.returncode == 2 and "--expires" in bad.stderr


def test_policy_denial_is_403(gateway):
    with gateway.http(gateway.other) as http:
        denied = http.post("/v1/methods/system.config", json={})
        assert denied.status_code == 403 and denied.json()["error"]["code"] == -32001
        assert http.post("/v1/methods/token.create", json={"name": "escalate", "owner": True}).status_code == 403
        # The default policy serves the daemon's own user only: the other uid's token gets nothing.
        with pytest.raises(openai.PermissionDeniedError):
            gateway.openai(gateway.other).embeddings.create(model="engram", input="x")
    with gateway.http(gateway.owner) as http:
        assert http.post("/v1/methods/system.config", json={}).status_code == 200


def test_token_create_needs_exactly_one_identity(gateway):
    from engram.errors import InvalidParams

    with pytest.raises(InvalidParams) as both:
        gateway.daemon.call("token.create", {"name": "x", "uid": 5, "owner": True})
    assert both.value.data["field"] == "uid"
    with pytest.raises(InvalidParams):
        gateway.daemon.call("token.create", {"name": "x"})
    with pytest.raises(InvalidParams) as name:
        gateway.daemon.call("token.create", {"name": "../x", "uid": 5})
    assert name.value.data["field"] == "name"


# --- operations -------------------------------------------------------------------------------------


def test_healthz_needs_no_token_and_metrics_count_requests(gateway):
    with gateway.http() as http:
        health = http.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
    with gateway.http(gateway.owner) as http:
        text = http.get("/metrics").text
    assert 'engram_http_requests_total{endpoint="healthz",status="200"}' in text
    assert "engram_requests_total" in text


# --- hostile input --------------------------------------------------------------------------------------


def _ping_still_works(gateway: Gateway) -> None:
    assert gateway.daemon.call("system.ping", {"echo": 1})["echo"] == 1
    with gateway.http(gateway.owner) as http:
        assert http.post("/v1/methods/system.ping", json={"echo": 2}).json()["echo"] == 2


def test_bad_bodies_get_specific_errors(gateway):
    with gateway.http(gateway.owner) as http:
        huge = http.post("/rpc", content=b"[" + b"1," * (1 << 20) + b"1]", headers={"content-type": "application/json"})
        assert huge.status_code == 413 and huge.json()["error"]["data"]["reason"] == "body_too_large"
        parse = http.post("/rpc", content=b"{not json", headers={"content-type": "application/json"})
        assert parse.status_code == 200 and parse.json()["error"]["code"] == -32700
        deep = http.post("/rpc", content=b"[" * 100 + b"]" * 100, headers={"content-type": "application/json"})
        assert deep.json()["error"]["data"]["reason"] == "too_deep"
        nan = http.post("/v1/embeddings", content=b'{"input": "x", "model": "engram", "dimensions": NaN}',
                        headers={"content-type": "application/json"})
        assert nan.status_code == 400 and nan.json()["error"]["code"] == "non_finite_number"
        typed = http.post("/rpc", content=b"{}", headers={"content-type": "text/plain"})
        assert typed.status_code == 415 and typed.json()["error"]["data"]["reason"] == "unsupported_media_type"
        not_object = http.post("/v1/chat/completions", json=[1, 2])
        assert not_object.status_code == 400 and not_object.json()["error"]["code"] == "not_an_object"
        surrogate = http.post("/v1/embeddings", content=b'{"input": "\\ud800", "model": "engram"}',
                              headers={"content-type": "application/json"})
        assert surrogate.status_code == 400 and surrogate.json()["error"]["param"] == "input"
    _ping_still_works(gateway)


def test_garbage_bodies_get_client_errors_never_a_crash(gateway):
    rng = random.Random(21)
    pieces = [b"{", b"}", b"[", b"]", b'"', b":", b",", b"1e400", b"-0", b"null", b"\\u0000", b"\xff\xfe", b"\x00",
              b'"model"', b'"input"', b'"messages"', b'"role"', b'"content"', b'"jsonrpc":"2.0"', b'"method"', b'"params"']
    statuses = set()
    with gateway.http(gateway.owner) as http:
        for path in ("/rpc", "/v1/methods/infer.embed", "/v1/embeddings", "/v1/chat/completions"):
            for _ in range(40):
                body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
                answer = http.post(path, content=body, headers={"content-type": "application/json"})
                statuses.add(answer.status_code)
                assert answer.status_code < 500, (path, body, answer.text)
                assert "error" in answer.json() or answer.status_code == 200
    assert statuses <= {200, 400, 404}
    _ping_still_works(gateway)


def test_slow_body_is_cut_off_and_others_are_served(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port)) as slow:
        slow.sendall(f"POST /rpc HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {gateway.owner}\r\n"
                     "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"js".encode())
        _ping_still_works(gateway)  # while the slow one waits
        slow.settimeout(10)
        answer = b""
        while chunk := slow.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"slow_body" in answer


def test_silent_and_slow_headed_connections_are_closed(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port)) as silent, \
            socket.create_connection(("127.0.0.1", gateway.port)) as trickle:
        trickle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        _ping_still_works(gateway)
        for sock in (silent, trickle):
            sock.settimeout(10)
            started = time.monotonic()
            assert sock.recv(65536) == b""  # closed by the daemon (http.read_timeout is 1 s here)
            assert time.monotonic() - started < 5


def test_too_many_connections_are_refused_then_served_again(gateway):
    idle = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(8)]
    try:
        time.sleep(0.2)
        with gateway.http(gateway.owner) as http:
            assert http.post("/v1/methods/system.ping", json={}).status_code == 503
        assert gateway.daemon.call("system.ping")["pong"]  # the socket is not affected
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    _ping_still_works(gateway)


# --- on and off -------------------------------------------------------------------------------------


def test_off_by_default(daemon):
    health = daemon.call("system.health")
    assert health["checks"]["http"] == {"ok": True, "detail": "listener off (http.listen unset); 0 tokens"}
    assert not any(r.get("event") == "http gateway listening" for r in daemon.records())


def test_sigterm_lets_a_streamed_answer_finish(make_daemon):
    port = free_port()

    def slow(prompt: str, body: dict[str, Any]) -> str:
        time.sleep(1.5)
        return f"echo: {prompt}"

    with FakeOllama(responder=slow) as ollama:
        daemon = make_daemon(env={
            "ENGRAM_HTTP__LISTEN": f"127.0.0.1:{port}",
            "ENGRAM_PLUGINS__DISABLED": '["openai"]',
            "ENGRAM_PLUGINS__PROVIDERS": json.dumps({"ollama": {"base_url": ollama.url}}),
            "ENGRAM_PROVIDERS__CHAINS": json.dumps({"chat": ["ollama"]}),
        })
        token = daemon.call("token.create", {"name": "t", "owner": True})["token"]
        body = json.dumps({"model": "engram", "stream": True, "messages": [{"role": "user", "content": "last words"}]})
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
            time.sleep(0.5)
            daemon.signal(signal.SIGTERM)  # while the provider is still thinking
            conn.settimeout(20)
            answer = b""
            while b"data: [DONE]" not in answer and (chunk := conn.recv(65536)):
                answer += chunk
        events = [json.loads(event) for event in re.findall(rb"data: (\{[^\n]*\})\n", answer)]  # chunked framing around
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == "echo: last words"
        assert daemon.wait(30) == 0


def test_public_metrics_need_no_token_but_the_rest_does(make_daemon):
    port = free_port()
    make_daemon(env={"ENGRAM_HTTP__LISTEN": f"localhost:{port}", "ENGRAM_HTTP__METRICS_PUBLIC": "true"})
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
        metrics = http.get("/metrics")
        assert metrics.status_code == 200 and "engram_uptime_seconds" in metrics.text
        assert metrics.headers["content-type"].startswith("text/plain")
        assert http.post("/v1/methods/system.ping", json={}).status_code == 401


def test_non_loopback_listen_is_refused_at_start(tmp_path):
    env = {"ENGRAM_HTTP__LISTEN": f"0.0.0.0:{free_port()}", "ENGRAM_LOG__FORMAT": "json"}
    proc = subprocess.run([sys.executable, "-m", "engram.cli", "serve", "--state-dir", str(tmp_path / "s")],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "http.listen" in proc.stderr and "not a loopback address" in proc.stderr


def test_a_listen_address_in_use_is_refused_at_start(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {"ENGRAM_HTTP__LISTEN": f"127.0.0.1:{taken.getsockname()[1]}", "ENGRAM_LOG__FORMAT": "json"}
        proc = subprocess.run([sys.executable, "-m", "engram.cli", "serve", "--state-dir", str(tmp_path / "s")],
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "cannot listen (Address already in use)" in proc.stderr.splitlines()[-1]
