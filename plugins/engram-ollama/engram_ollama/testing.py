"""A fake Ollama server on loopback that speaks the real API shapes, for tests.

``with FakeOllama() as server:`` serves on ``server.url`` (127.0.0.1, a free port) from a thread;
``server.requests`` records ``(method, path, body)`` of every request. It answers:

* ``GET /api/tags`` — ``{"models": [{"name", "model", "modified_at", "size", "digest", "details"}]}``
* ``POST /api/generate`` — ``{"model", "created_at", "response", "done": true, ...}``, or with
  ``stream: true`` NDJSON lines of ``{"model", "created_at", "response", "done": false}`` and a
  last line with ``done: true`` and the counts;
* ``POST /api/chat`` — the same with ``"message": {"role": "assistant", "content"}``;
* ``POST /api/embed`` — ``{"model", "embeddings": [[...], ...]}``;
* an unknown model — 404 ``{"error": "model \\"x\\" not found, try pulling it first"}``.

The answer to a prompt is ``"echo: <prompt>"`` (chat: the last user message), streamed word by word;
``FakeOllama(responder=f)`` answers ``f(prompt, body)`` instead (``body``: the request's JSON), as a
model would, e.g. a JSON plan.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable
from typing import Any

CREATED = "2024-01-01T00:00:00Z"


class FakeOllama:
    def __init__(self, models: tuple[str, ...] = ("llama3.2:latest", "nomic-embed-text:latest"),
                 responder: Callable[[str, dict[str, Any]], str] | None = None) -> None:
        self.models = models
        self.responder = responder
        self.requests: list[tuple[str, str, Any]] = []
        self.headers: list[dict[str, str]] = []  # each request's HTTP headers (lower-case names), in order
        self.fail_status: int | None = None  # set to answer every request with this HTTP status
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeOllama:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _known(self, model: str) -> bool:
        return model in self.models or f"{model}:latest" in self.models

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, lines: list[dict[str, Any]]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()  # HTTP/1.0: the body ends when the connection closes
                for line in lines:
                    self.wfile.write(json.dumps(line).encode() + b"\n")
                    self.wfile.flush()

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, None))
                fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                if fake.fail_status:
                    return self._send(fake.fail_status, {"error": "failing on purpose"})
                if self.path == "/api/tags":
                    return self._send(200, {"models": [
                        {"name": m, "model": m, "modified_at": CREATED, "size": 1, "digest": "0" * 64,
                         "details": {"format": "gguf", "family": "llama"}} for m in fake.models
                    ]})
                self._send(404, {"error": "404 page not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                fake.requests.append(("POST", self.path, body))
                fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                if fake.fail_status:
                    return self._send(fake.fail_status, {"error": "failing on purpose"})
                model = body.get("model", "")
                if not fake._known(model):
                    return self._send(404, {"error": f'model "{model}" not found, try pulling it first'})
                if self.path == "/api/embed":
                    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                    return self._send(200, {"model": model, "embeddings": [[float(len(t)), 1.0, 0.0] for t in inputs]})
                if self.path == "/api/generate":
                    prompt, key = body["prompt"], "response"
                elif self.path == "/api/chat":
                    prompt, key = [m["content"] for m in body["messages"] if m["role"] == "user"][-1], "message"
                else:
                    return self._send(404, {"error": "404 page not found"})
                answer = f"echo: {prompt}" if fake.responder is None else fake.responder(prompt, body)

                def piece(text: str, done: bool) -> dict[str, Any]:
                    out: dict[str, Any] = {"model": model, "created_at": CREATED, "done": done}
                    out[key] = text if key == "response" else {"role": "assistant", "content": text}
                    if done:
                        out.update(done_reason="stop", total_duration=1, prompt_eval_count=3, eval_count=len(answer.split()))
                    return out

                if body.get("stream", True):  # Ollama streams unless told not to
                    words = answer.split(" ")
                    chunks = [w if i == 0 else " " + w for i, w in enumerate(words)]
                    return self._stream([piece(c, False) for c in chunks] + [piece("", True)])
                self._send(200, piece(answer, True))

        return Handler
