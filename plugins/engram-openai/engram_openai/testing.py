"""A fake OpenAI-compatible server on loopback that speaks the real API shapes, for tests.

``with FakeOpenAI() as server:`` serves ``server.url`` (``http://127.0.0.1:<port>/v1``) from a
thread and records every request in ``server.requests`` as ``(path, headers, body)`` — the tests
of engram's egress policy read exactly what left the daemon. It answers:

* ``POST /v1/chat/completions`` — a ``chat.completion`` object (``choices[0].message.content``,
  ``usage``), or with ``stream: true`` Server-Sent Events of ``chat.completion.chunk`` objects
  (``choices[0].delta.content``) ending with ``data: [DONE]``;
* ``POST /v1/embeddings`` — ``{"object": "list", "data": [{"object": "embedding", "index", "embedding"}], ...}``;
* a missing or wrong ``Authorization: Bearer`` when ``api_key`` is set — 401 with an ``error`` object.

The answer is ``"echo: <last user message>"``, streamed word by word.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def bodies(self) -> list[Any]:
        with self._lock:
            return [body for _, _, body in self.requests]

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                with fake._lock:
                    fake.requests.append((self.path, dict(self.headers), None))
                self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with fake._lock:
                    fake.requests.append((self.path, dict(self.headers), body))
                if fake.api_key is not None and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    return self._send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}})
                if self.path == "/v1/embeddings":
                    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                    return self._send(200, {
                        "object": "list", "model": body["model"],
                        "data": [{"object": "embedding", "index": i, "embedding": [float(len(t)), 0.5]} for i, t in enumerate(inputs)],
                        "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
                    })
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"unknown path {self.path}", "type": "invalid_request_error"}})
                last = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
                answer = f"echo: {last}"
                base = {"id": "chatcmpl-1", "created": 1700000000, "model": body["model"]}
                if not body.get("stream"):
                    return self._send(200, {
                        **base, "object": "chat.completion",
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": len(answer.split()), "total_tokens": 5 + len(answer.split())},
                    })
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                words = answer.split(" ")
                deltas = [{"role": "assistant", "content": ""}] + [{"content": w if i == 0 else " " + w} for i, w in enumerate(words)]
                for delta in deltas:
                    chunk = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                end = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())

        return Handler
