"""OpenTelemetry end to end: a real daemon exporting its spans over OTLP http/protobuf to a
receiver on loopback (this test's, decoding what arrives with opentelemetry-proto), the client's
``_meta.traceparent`` as the parent of the request's span, child spans of the parts, the trace id
in events, and the provider call's ``traceparent`` header at a fake Ollama on loopback."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytest.importorskip("engram_ollama", reason="make test installs plugins/engram-ollama")
from engram_ollama.testing import FakeOllama
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

pytestmark = pytest.mark.e2e

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint on loopback: each POST is an ExportTraceServiceRequest, whose
    spans are kept flattened (ids in hex, attributes as plain values)."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.content_types: list[str] = []
        self.tokens: list[str | None] = []  # the x-collector-token header of each export
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1/traces"

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver._lock:
                    receiver.content_types.append(self.headers.get("Content-Type", ""))
                    receiver.tokens.append(self.headers.get("x-collector-token"))
                    for resource in request.resource_spans:
                        service = {a.key: _value(a.value) for a in resource.resource.attributes}
                        for scope in resource.scope_spans:
                            for span in scope.spans:
                                receiver.spans.append({
                                    "name": span.name,
                                    "trace_id": span.trace_id.hex(),
                                    "span_id": span.span_id.hex(),
                                    "parent": span.parent_span_id.hex(),
                                    "kind": span.kind,
                                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                                    "service": service.get("service.name"),
                                })
                data = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def wait_for(self, found: Callable[[list[dict[str, Any]]], bool], timeout: float = 15.0) -> list[dict[str, Any]]:
        """The spans received once ``found(spans)`` holds (the exporter sends in batches)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = list(self.spans)
            if found(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value")) if value.WhichOneof("value") else None


def _in_trace(spans: list[dict[str, Any]], trace_id: str) -> dict[str, list[dict[str, Any]]]:
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        if span["trace_id"] == trace_id:
            by_name.setdefault(span["name"], []).append(span)
    return by_name


def _descends(span: dict[str, Any], ancestor: dict[str, Any], spans: list[dict[str, Any]]) -> bool:
    ids = {s["span_id"]: s for s in spans}
    parent = span["parent"]
    while parent:
        if parent == ancestor["span_id"]:
            return True
        parent = ids[parent]["parent"] if parent in ids else ""
    return False


def test_client_trace_runs_through_the_parts_the_events_and_the_provider(make_daemon):
    with OtlpReceiver() as receiver, FakeOllama() as ollama:
        daemon = make_daemon(env={
            "ENGRAM_TRACING__EXPORTER": "otlp",
            "ENGRAM_TRACING__OTLP_ENDPOINT": receiver.url,
            "ENGRAM_TRACING__OTLP_HEADERS": json.dumps({"x-collector-token": "t0ken"}),
            "ENGRAM_PLUGINS__DISABLED": "[]",
            "ENGRAM_PLUGINS__PROVIDERS": json.dumps({"ollama": {"base_url": ollama.url}}),
            "ENGRAM_PROVIDERS__CHAINS": json.dumps({"generate": ["ollama"]}),
        })
        meta = {"traceparent": TRACEPARENT}
        with daemon.client() as client:
            events = client.subscribe(["request.completed"])
            client.call("memory.remember", {"namespace": "otel", "items": [{"text": "the kettle is blue"}],
                                            "_meta": meta})
            hits = client.call("memory.recall", {"namespace": "otel", "query": "kettle", "_meta": meta})["hits"]
            assert hits and hits[0]["text"] == "the kettle is blue"
            generated = client.call("infer.generate", {"prompt": "hello", "_meta": meta})
            assert generated["provider"] == "ollama"
            completed = [e for e in (events.receive(timeout=10)["data"] for _ in range(4))
                         if e["method"] != "events.subscribe"]
        # Every event of the client's requests carries the client's trace id.
        assert [(e["method"], e["trace_id"]) for e in completed] == [
            ("memory.remember", CLIENT_TRACE), ("memory.recall", CLIENT_TRACE), ("infer.generate", CLIENT_TRACE),
        ]

        wanted = {"memory.remember", "memory.recall", "infer.generate", "policy.method", "policy.egress",
                  "memory.embed", "memory.write", "memory.search", "inference.run", "audit.append", "provider.generate"}
        spans = receiver.wait_for(lambda s: wanted <= set(_in_trace(s, CLIENT_TRACE)))
        trace = _in_trace(spans, CLIENT_TRACE)
        assert wanted <= set(trace), f"missing spans: {wanted - set(trace)}"
        assert all(t.startswith("application/x-protobuf") for t in receiver.content_types)
        assert set(receiver.tokens) == {"t0ken"}  # tracing.otlp_headers

        # The request spans are server spans, children of the client's span.
        requests = {name: trace[name][0] for name in ("memory.remember", "memory.recall", "infer.generate")}
        for span in requests.values():
            assert span["parent"] == CLIENT_SPAN and span["kind"] == 2  # SPAN_KIND_SERVER
            assert span["service"] == "engramd" and span["attributes"]["rpc.system"] == "jsonrpc"
        # The parts' spans nest under the request that caused them.
        remember, recall, generate = requests["memory.remember"], requests["memory.recall"], requests["infer.generate"]
        assert any(_descends(s, remember, spans) for s in trace["memory.write"])
        assert any(_descends(s, remember, spans) for s in trace["audit.append"])
        assert any(_descends(s, recall, spans) for s in trace["memory.search"])
        assert any(_descends(s, recall, spans) for s in trace["memory.embed"])
        embedding = [s for s in trace["inference.run"] if _descends(s, recall, spans)]
        assert embedding and embedding[0]["attributes"]["engram.inference.rows"] == 1
        policy = [s for s in trace["policy.method"] if s["parent"] == remember["span_id"]]
        assert policy and policy[0]["attributes"]["engram.policy.effect"] == "allow"
        egress = trace["policy.egress"][0]
        assert _descends(egress, generate, spans) and egress["attributes"]["engram.policy.provider"] == "ollama"

        # One client span per provider attempt, with the provider, its locality and the outcome ...
        (provider_span,) = trace["provider.generate"]
        assert _descends(provider_span, generate, spans) and provider_span["kind"] == 3  # SPAN_KIND_CLIENT
        attributes = provider_span["attributes"]
        assert (attributes["engram.provider"], attributes["engram.provider.locality"], attributes["engram.provider.outcome"]) == (
            "ollama", "local", "ok"
        )
        # ... whose context went to Ollama with the HTTP request.
        posts = [h for (method, path, _), h in zip(ollama.requests, ollama.headers, strict=True) if path == "/api/generate"]
        assert posts and posts[-1]["traceparent"] == f"00-{CLIENT_TRACE}-{provider_span['span_id']}-01"


def test_traceparent_is_checked_and_fills_trace_ids_with_tracing_off(daemon):
    from engram.errors import InvalidParams

    with daemon.client() as client:
        for bad in ("00-nothex-00f067aa0ba902b7-01", f"00-{'0' * 32}-{CLIENT_SPAN}-01", f"ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
                    f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01-extra", 7):
            with pytest.raises(InvalidParams) as refused:
                client.call("system.ping", {"_meta": {"traceparent": bad}})
            assert refused.value.data["field"] == "_meta.traceparent", bad
        # Untraced here (tracing.exporter = none), the request still carries the client's trace id.
        events = client.subscribe(["request.completed"])
        assert events.receive(timeout=10)["data"]["method"] == "events.subscribe"
        client.call("system.ping", {"_meta": {"traceparent": TRACEPARENT}})
        assert events.receive(timeout=10)["data"]["trace_id"] == CLIENT_TRACE
        client.call("system.ping")
        assert events.receive(timeout=10)["data"]["trace_id"] is None


def test_otlp_endpoint_off_the_machine_needs_the_policy(make_daemon, tmp_path):
    remote = {"ENGRAM_TRACING__EXPORTER": "otlp", "ENGRAM_TRACING__OTLP_ENDPOINT": "http://192.0.2.10:4318/v1/traces",
              "ENGRAM_TRACING__OTLP_TIMEOUT": "1"}
    refused = make_daemon(env=remote, start=False)
    refused.spawn()
    assert refused.wait(timeout=60) == 2
    assert "policy refuses the egress (provider 'otlp', method 'tracing.export')" in refused.logs()

    grant = tmp_path / "otlp.toml"
    grant.write_text(
        'version = 1\nname = "spans-out"\n\n[[rule]]\nname = "owner-spans"\neffect = "allow"\n'
        'principals = ["owner"]\nactions = ["tracing.export"]\nproviders = ["otlp"]\nlocality = ["remote"]\n'
    )
    allowed = make_daemon(env={**remote, "ENGRAM_POLICY__FILES": json.dumps([str(grant)])})
    assert any(r.get("event") == "span export allowed" and r.get("rule") == "owner-spans" for r in allowed.records())


def test_the_http_gateway_takes_the_traceparent_header_and_the_body_s_meta(make_daemon):
    import socket

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with OtlpReceiver() as receiver:
        daemon = make_daemon(env={
            "ENGRAM_TRACING__EXPORTER": "otlp",
            "ENGRAM_TRACING__OTLP_ENDPOINT": receiver.url,
            "ENGRAM_HTTP__LISTEN": f"127.0.0.1:{port}",
        })
        token = daemon.call("token.create", {"name": "tracer", "owner": True})["token"]
        headers = {"authorization": f"Bearer {token}", "traceparent": TRACEPARENT}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=30) as http:
            assert http.post("/v1/methods/system.status", json={}).status_code == 200
            assert http.post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "system.ping"}).json()["result"]
            # the body's own _meta wins over the header; its deadline counts from when the body was read
            other = f"00-{'ab' * 16}-{CLIENT_SPAN}-01"
            meta = {"traceparent": other, "deadline_ms": 60_000}
            assert http.post("/v1/methods/system.health", json={"_meta": meta}).status_code == 200
            assert http.post("/v1/methods/system.health", json={"_meta": {"deadline_ms": -1}}).status_code == 400
        spans = receiver.wait_for(lambda s: {"system.status", "system.ping"} <= set(_in_trace(s, CLIENT_TRACE))
                                  and "system.health" in _in_trace(s, "ab" * 16))
        trace = _in_trace(spans, CLIENT_TRACE)
        assert trace["system.status"][0]["parent"] == trace["system.ping"][0]["parent"] == CLIENT_SPAN
        assert _in_trace(spans, "ab" * 16)["system.health"][0]["parent"] == CLIENT_SPAN
