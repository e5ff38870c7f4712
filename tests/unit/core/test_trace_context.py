"""Trace context in process: ``_meta.traceparent`` checked and turned into the request's parent
span and trace id, the header a transport hands over, the tracer port of the parts, and the
provider-call span's context carried to a plugin's thread and out with its HTTP requests."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from engram.errors import InvalidParams
from engram.observability.tracing import NO_SPANS, Spans, remote_parent
from engram.plugins.locality import http_client_options
from engram.plugins.worker import PluginThread
from engram.principal import Principal
from engram.server.chain import Call
from engram.server.jsonrpc import Request, parse_frame, with_traceparent
from engram.server.layers.params import ParamsValidation
from engram.server.layers.tracing import Tracing
from engram.server.methods import Method, NoParams, RequestContext
from engram.server.params import parse_meta
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
PRINCIPAL = Principal(uid=4242, gid=4242, pid=9)


class Conn:
    id = 3


async def _nothing(ctx: RequestContext, params: Any) -> None:
    return None


METHOD = Method(name="t.ping", handler=_nothing, params=NoParams, result=NoParams, summary="test")


def _call(meta: Any) -> Call:
    request = Request("t.ping", {}, 1, meta=meta, received=time.monotonic())
    return Call(request, PRINCIPAL, Conn(), 7, METHOD, time.perf_counter())  # type: ignore[arg-type]


@pytest.fixture
def exported() -> tuple[trace.Tracer, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider.get_tracer("test"), spans


@pytest.mark.parametrize(
    "value", [TRACEPARENT, f"00-{TRACE}-{PARENT}-00", f"01-{TRACE}-{PARENT}-01-more-fields"]
)
def test_a_w3c_traceparent_is_accepted_and_names_the_trace(value: str) -> None:
    meta = parse_meta({"traceparent": value, "deadline_ms": 100})
    assert meta.traceparent == value and meta.trace_id == TRACE and meta.deadline_ms == 100


@pytest.mark.parametrize(
    "value",
    [
        "",
        f"00-{TRACE.upper()}-{PARENT}-01",  # upper-case hex
        f"00-{TRACE}-{PARENT}",  # no flags
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has four fields
        f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
        f"00-{'0' * 32}-{PARENT}-01",
        f"00-{TRACE}-{'0' * 16}-01",
        f"00-{TRACE[:-1]}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}-01-" + "x" * 500,  # longer than 512
        123,
        None,
    ],
)
def test_a_bad_traceparent_is_invalid_params_naming_it(value: Any) -> None:
    if value is None:  # null: no trace context, like absent
        assert parse_meta({"traceparent": None}).trace_id is None
        return
    with pytest.raises(InvalidParams) as caught:
        parse_meta({"traceparent": value})
    assert caught.value.data["field"] == "_meta.traceparent" and caught.value.reason == "invalid_params"


def test_a_transports_header_becomes_the_requests_traceparent_unless_meta_has_one() -> None:
    (plain,), _ = parse_frame(b'{"jsonrpc":"2.0","id":1,"method":"m","params":{"a":1}}')
    header = with_traceparent(plain, TRACEPARENT)  # type: ignore[arg-type]
    assert header.meta == {"traceparent": TRACEPARENT} and header.params == {"a": 1} and header.id == 1
    (timed,), _ = parse_frame(b'{"jsonrpc":"2.0","id":2,"method":"m","params":{"_meta":{"deadline_ms":5}}}')
    assert with_traceparent(timed, TRACEPARENT).meta == {"deadline_ms": 5, "traceparent": TRACEPARENT}  # type: ignore[arg-type]
    own = f"00-{'1' * 32}-{PARENT}-01"
    (traced,), _ = parse_frame(('{"jsonrpc":"2.0","id":3,"method":"m","params":{"_meta":{"traceparent":"%s"}}}' % own).encode())
    assert with_traceparent(traced, TRACEPARENT).meta == {"traceparent": own}  # type: ignore[arg-type]
    (odd,), _ = parse_frame(b'{"jsonrpc":"2.0","id":4,"method":"m","params":{"_meta":"soon"}}')
    assert with_traceparent(odd, TRACEPARENT).meta == "soon"  # type: ignore[arg-type]  # refused later, as sent
    assert with_traceparent(plain, None) is plain  # type: ignore[arg-type]


async def test_the_requests_span_is_a_child_of_the_clients(exported: tuple[trace.Tracer, InMemorySpanExporter]) -> None:
    tracer, spans = exported
    seen: dict[str, Any] = {}

    async def inner(call: Call) -> None:
        seen["current"] = trace.get_current_span().get_span_context()
        seen["trace_id"] = call.trace_id

    await Tracing(tracer)(_call({"traceparent": TRACEPARENT}), inner)
    (span,) = spans.get_finished_spans()
    assert format(span.context.trace_id, "032x") == TRACE == seen["trace_id"]
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT and span.parent.is_remote
    assert seen["current"].span_id == span.context.span_id
    # Without one (or with a malformed one, refused by the params layer after) it starts a trace.
    await Tracing(tracer)(_call({"traceparent": "garbage"}), inner)
    await Tracing(tracer)(_call(None), inner)
    assert [s.parent for s in spans.get_finished_spans()[1:]] == [None, None]
    assert remote_parent("garbage") is None


async def test_untraced_requests_still_carry_the_clients_trace_id() -> None:
    async def handler(call: Call) -> str | None:
        return call.trace_id

    assert await ParamsValidation()(_call({"traceparent": TRACEPARENT}), handler) == TRACE
    assert await ParamsValidation()(_call(None), handler) is None
    traced = _call({"traceparent": TRACEPARENT})
    traced.trace_id = "f" * 32  # the daemon's own span came first: it stays
    assert await ParamsValidation()(traced, handler) == "f" * 32


def test_the_port_off_costs_one_shared_null_context() -> None:
    assert not NO_SPANS.records and not Spans(trace.NoOpTracer()).records
    assert NO_SPANS.span("a") is NO_SPANS.span("b", {"x": 1})
    with NO_SPANS.span("a") as span:
        span.set_attribute("ignored", 1)
        assert not span.get_span_context().is_valid


def test_part_spans_nest_under_the_current_span(exported: tuple[trace.Tracer, InMemorySpanExporter]) -> None:
    tracer, spans = exported
    port = Spans(tracer)
    with tracer.start_as_current_span("request") as request:
        with port.span("memory.search", {"engram.memory.k": 3}) as span:
            span.set_attribute("engram.memory.hits", 2)
    with pytest.raises(ValueError), port.span("failing"):
        raise ValueError("boom")
    search, _, failing = spans.get_finished_spans()
    assert search.parent is not None and search.parent.span_id == request.get_span_context().span_id
    assert dict(search.attributes or {}) == {"engram.memory.k": 3, "engram.memory.hits": 2}
    assert not failing.status.is_ok


async def test_a_plugins_http_requests_carry_the_provider_call_span(
    exported: tuple[trace.Tracer, InMemorySpanExporter],
) -> None:
    tracer, _ = exported
    headers: list[httpx.Headers] = []

    def answer(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers)
        return httpx.Response(200, json={})

    async def plugin_call() -> None:  # what a provider plugin does on its own thread
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer), **http_client_options()) as client:
            await client.get("http://127.0.0.1:9/api/tags")

    async def plugin_stream() -> Any:
        await plugin_call()
        yield "chunk"

    thread = PluginThread("traced")
    await thread.start()
    try:
        with tracer.start_as_current_span("provider.generate") as span:
            await thread.call(plugin_call)
            assert [chunk async for chunk in thread.stream(plugin_stream)] == ["chunk"]
        await thread.call(plugin_call)  # no span current: no header
    finally:
        await thread.close(grace=5)
    context = span.get_span_context()
    expected = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert [h.get("traceparent") for h in headers] == [expected, expected, None]
