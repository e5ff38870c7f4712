"""The request chain as the daemon assembles it, in process: what each layer adds to a request,
in order, for answers, errors, unknown methods, timeouts and cancellation."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from engram.audit.layer import AuditRecord
from engram.bus import EventBus
from engram.bus.events import CORE_EVENTS
from engram.errors import MethodNotFound, PolicyDenied, RPCError
from engram.observability.metrics import Metrics
from engram.principal import Principal
from engram.server.chain import Call, LayerClock, compose
from engram.server.dispatch import Dispatcher
from engram.server.jsonrpc import Request
from engram.server.layers.access import Guards, require_method
from engram.server.layers.deadline import Deadline
from engram.server.layers.errors import translate_errors
from engram.server.layers.events import RequestEvents
from engram.server.layers.metrics import RequestMetrics
from engram.server.layers.params import ParamsValidation
from engram.server.layers.tracing import Tracing
from engram.server.methods import Method, MethodTable, NoParams, Params, RequestContext, Result, collect, rpc
from engram.server.settings import ServerSettings
from engram.sleep.activity import ForegroundActivity
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

PRINCIPAL = Principal(uid=4242, gid=4242, pid=9)


class WorkParams(Params):
    value: int = 0


class WorkResult(Result):
    value: int
    foreground: int
    trace_id: str | None
    request: int


class Part:
    def __init__(self) -> None:
        self.activity = ForegroundActivity()
        self.started = anyio.Event()

    @rpc("t.work", summary="work")
    async def work(self, ctx: RequestContext, params: WorkParams) -> WorkResult:
        if params.value == 13:
            raise RuntimeError("unlucky")
        return WorkResult(value=params.value, foreground=self.activity.foreground, trace_id=ctx.trace_id, request=ctx.request)

    @rpc("t.slow", summary="waits", timeout=0.05)
    async def slow(self, ctx: RequestContext, params: NoParams) -> Result:
        self.started.set()
        await anyio.sleep_forever()
        return Result()

    @rpc("t.secret", summary="owner only", owner_only=True)
    async def secret(self, ctx: RequestContext, params: WorkParams) -> Result:
        return Result()

    @rpc("system.look", summary="monitoring", audit=False)
    async def look(self, ctx: RequestContext, params: NoParams) -> WorkResult:
        return WorkResult(value=0, foreground=self.activity.foreground, trace_id=ctx.trace_id, request=ctx.request)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def record_request(self, **kwargs: Any) -> int:
        self.calls.append(kwargs)
        return len(self.calls)


class Conn:
    id = 3


async def nobody_but_the_owner(principal: Principal, method: Method) -> None:
    if method.owner_only:
        raise PolicyDenied(f"{method.name} is the owner's", reason="owner_only")


class Env:
    def __init__(self) -> None:
        self.part = Part()
        self.bus = EventBus(CORE_EVENTS)
        self.events = self.bus.subscribe(["request.*"])
        self.metrics = Metrics()
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.recorder = Recorder()
        table = MethodTable()
        table.add(collect(self.part))
        self.dispatcher = Dispatcher(table, [  # the daemon's order (engram.runtime)
            RequestEvents(self.bus), Tracing(provider.get_tracer("test")), RequestMetrics(self.metrics),
            self.part.activity, AuditRecord(self.recorder), translate_errors, require_method,
            Guards([nobody_but_the_owner]), ParamsValidation(), Deadline(ServerSettings, self.metrics),
        ])

    async def call(self, method: str, params: Any = None) -> Any:
        return await self.dispatcher.dispatch(Request(method, params, 1), PRINCIPAL, Conn())  # type: ignore[arg-type]

    def drain(self) -> list[Any]:
        events = []
        while (event := self.events.receive_nowait()) is not None:
            events.append(event)
        return events

    def count(self, method: str, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value("engram_requests_total", {"method": method, "outcome": outcome})
        return value or 0.0


@pytest.fixture
def env() -> Env:
    return Env()


async def test_an_answer_passes_every_layer(env: Env) -> None:
    before = env.part.activity.last_foreground
    result = await env.call("t.work", {"value": 5})
    received, completed = env.drain()
    (span,) = env.spans.get_finished_spans()
    assert result["value"] == 5 and result["audit_seq"] == 1 and result["foreground"] == 1
    assert result["trace_id"] == format(span.context.trace_id, "032x") == completed.trace_id
    assert (received.topic, received.method, received.request, received.connection) == ("request.received", "t.work", 1, 3)
    assert (completed.outcome, completed.error_code, completed.request, completed.principal) == ("ok", None, 1, PRINCIPAL)
    assert span.name == "t.work" and span.attributes["engram.request"] == 1 and span.attributes["engram.peer.uid"] == 4242
    assert env.count("t.work", "ok") == 1 and env.metrics.registry.get_sample_value("engram_requests_in_flight") == 0
    assert env.part.activity.foreground == 0 and env.part.activity.last_foreground > before
    (entry,) = env.recorder.calls
    assert entry["method"] == "t.work" and entry["params"] == {"value": 5} and entry["request"] == result["request"]


async def test_monitoring_is_not_foreground_nor_audited(env: Env) -> None:
    assert (await env.call("system.look"))["foreground"] == 0
    assert env.recorder.calls == []


async def test_errors_are_translated_recorded_and_reported_alike(env: Env) -> None:
    with pytest.raises(RPCError) as crashed:
        await env.call("t.work", {"value": 13})
    assert crashed.value.code == -32603 and "unlucky" not in crashed.value.message
    with pytest.raises(PolicyDenied) as denied:  # the guard decides before the params are read
        await env.call("t.secret", {"value": "not a number"})
    with pytest.raises(RPCError) as timed_out:
        await env.call("t.slow")
    assert timed_out.value.code == -32004 and timed_out.value.data["limit_s"] == 0.05
    completed = [e for e in env.drain() if e.topic == "request.completed"]
    assert [e.error_code for e in completed] == [-32603, -32001, -32004]
    assert [c["error"].code for c in env.recorder.calls] == [-32603, -32001, -32004]
    assert [crashed.value.data["audit_seq"], denied.value.data["audit_seq"], timed_out.value.data["audit_seq"]] == [1, 2, 3]
    assert [s.attributes["rpc.jsonrpc.error_code"] for s in env.spans.get_finished_spans()] == [-32603, -32001, -32004]
    assert env.count("t.work", "error") == 1 and env.count("t.slow", "error") == 1


async def test_unknown_methods_are_traced_and_counted_but_not_audited(env: Env) -> None:
    with pytest.raises(MethodNotFound) as info:
        await env.call("t.nope")
    assert "audit_seq" not in info.value.data and env.recorder.calls == []
    received, completed = env.drain()
    assert received.method == completed.method == "t.nope" and completed.error_code == -32601
    assert env.spans.get_finished_spans()[0].name == "(unknown method)" and env.count("(unknown)", "error") == 1


async def test_a_cancelled_request_is_recorded_and_reported_as_cancelled(env: Env) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(env.call, "t.slow")
        await env.part.started.wait()
        tg.cancel_scope.cancel()
    (entry,) = env.recorder.calls
    assert entry["error"].reason == "cancelled"
    completed = env.drain()[-1]
    assert (completed.outcome, completed.error_reason) == ("error", "cancelled")
    assert env.part.activity.foreground == 0 and env.metrics.registry.get_sample_value("engram_requests_in_flight") == 0


async def test_compose_runs_layers_outermost_first() -> None:
    seen: list[str] = []

    def layer(name: str) -> Any:
        async def run(call: Call, call_next: Any) -> Any:
            seen.append(name)
            result = await call_next(call)
            seen.append("/" + name)
            return result

        return run

    async def endpoint(call: Call) -> str:
        seen.append("handler")
        return "done"

    chain = compose([layer("a"), layer("b")], endpoint)
    call = Call(Request("m", None, 1), PRINCIPAL, Conn(), 1, None, time.perf_counter())  # type: ignore[arg-type]
    assert await chain(call) == "done" and seen == ["a", "b", "handler", "/b", "/a"]


async def test_a_layer_clock_gives_each_layer_its_own_time() -> None:
    spent: dict[str, float] = {}

    def counter(name: str) -> Any:
        def add(seconds: float) -> None:
            spent[name] = spent.get(name, 0.0) + seconds

        return add

    def busy(seconds: float) -> None:  # time on the layer's own account, as a computing layer spends it
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            pass

    async def outer(call: Call, call_next: Any) -> Any:
        busy(0.02)
        return await call_next(call)

    async def inner(call: Call, call_next: Any) -> Any:
        result = await call_next(call)
        busy(0.01)
        return result

    async def endpoint(call: Call) -> str:
        busy(0.03)
        return "done"

    chain = compose([outer, inner], endpoint, LayerClock(counter))
    call = Call(Request("m", None, 1), PRINCIPAL, Conn(), 1, None, time.perf_counter())  # type: ignore[arg-type]
    assert await chain(call) == "done"
    assert list(spent) == ["endpoint", "inner", "outer"]  # each told once the request left it
    # Its own time and not what it waited for inside (which would make outer at least 0.06 s).
    assert 0.02 <= spent["outer"] < 0.04
    assert 0.01 <= spent["inner"] < 0.03
    assert spent["endpoint"] >= 0.03


class Instant:
    @rpc("t.instant", summary="instant", audit=False, instant=True)
    async def now(self, ctx: RequestContext, params: NoParams) -> Result:
        return Result()


async def test_only_instant_methods_in_small_frames_run_inline(env: Env) -> None:
    env.dispatcher.methods.add(collect(Instant()))
    assert env.dispatcher.runs_inline(Request("t.instant", None, 1))
    assert not env.dispatcher.runs_inline(Request("t.instant", None, 1, large=True))  # validated in a thread
    assert not env.dispatcher.runs_inline(Request("t.work", None, 1))
    assert not env.dispatcher.runs_inline(Request("t.nothing", None, 1))
    assert await env.call("t.instant") == {}


def test_an_instant_method_cannot_be_audited() -> None:
    with pytest.raises(ValueError, match="instant"):
        rpc("t.both", summary="both", instant=True)


async def test_a_layer_that_passes_a_method_is_left_out_of_its_chain_only() -> None:
    calls: list[str] = []

    class SkipsSystem:
        def passes(self, method: Method) -> bool:
            return method.name.startswith("system.")

        async def __call__(self, call: Call, call_next: Any) -> Any:
            calls.append(call.request.method)
            return await call_next(call)

    table = MethodTable()
    table.add(collect(Part()))
    dispatcher = Dispatcher(table, [SkipsSystem(), require_method, ParamsValidation()])
    for name in ("system.look", "t.work", "t.nothing", "system.look"):
        try:
            await dispatcher.dispatch(Request(name, None, 1), PRINCIPAL, Conn())  # type: ignore[arg-type]
        except MethodNotFound:
            pass
    # An unknown name runs the whole chain: no method to ask about.
    assert calls == ["t.work", "t.nothing"]


class Plain:
    @rpc("t.plain", summary="answers with its result model's JSON form", audit=False, instant=True)
    async def plain(self, ctx: RequestContext, params: WorkParams) -> WorkResult | dict[str, Any]:
        return {"value": params.value, "foreground": 0, "trace_id": None, "request": ctx.request}


async def test_a_handler_may_answer_with_its_result_models_json_form(env: Env) -> None:
    (method,) = collect(Plain())
    assert method.result is WorkResult  # the schema is the model's
    env.dispatcher.methods.add([method])
    assert await env.call("t.plain", {"value": 4}) == {"value": 4, "foreground": 0, "trace_id": None, "request": 1}
