"""The Deadline layer with a request's deadline: checked before the handler, cut off at it, counted."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from engram.errors import Timeout
from engram.observability.metrics import Metrics
from engram.principal import Principal
from engram.server.dispatch import Dispatcher
from engram.server.jsonrpc import Request
from engram.server.layers.access import require_method
from engram.server.layers.deadline import Deadline
from engram.server.layers.errors import translate_errors
from engram.server.layers.params import ParamsValidation
from engram.server.methods import MethodTable, NoParams, RequestContext, Result, collect, rpc
from engram.server.settings import ServerSettings

PRINCIPAL = Principal(uid=4242, gid=4242, pid=9)


class Part:
    def __init__(self) -> None:
        self.ran: list[str] = []
        self.deadlines: list[Any] = []

    @rpc("t.count", summary="counts its runs")
    async def count(self, ctx: RequestContext, params: NoParams) -> Result:
        self.ran.append("count")
        self.deadlines.append(ctx.deadline)
        return Result()

    @rpc("t.instant", summary="instant", instant=True, audit=False)
    async def instant(self, ctx: RequestContext, params: NoParams) -> Result:
        self.ran.append("instant")
        return Result()

    @rpc("t.slow", summary="waits", timeout=0.2)
    async def slow(self, ctx: RequestContext, params: NoParams) -> Result:
        self.ran.append("slow")
        await anyio.sleep_forever()
        return Result()


class Conn:
    id = 3


def setup() -> tuple[Part, Dispatcher, Metrics]:
    part, metrics = Part(), Metrics()
    table = MethodTable()
    table.add(collect(part))
    layers = [translate_errors, require_method, ParamsValidation(), Deadline(ServerSettings, metrics)]
    return part, Dispatcher(table, layers), metrics


async def call(dispatcher: Dispatcher, method: str, deadline_ms: int, age_s: float = 0.0) -> Any:
    # As the parser hands it over: params._meta taken out of params, the time the frame was read.
    request = Request(method, {}, 1, meta={"deadline_ms": deadline_ms}, received=time.monotonic() - age_s)
    return await dispatcher.dispatch(request, PRINCIPAL, Conn())  # type: ignore[arg-type]


def misses(metrics: Metrics, where: str) -> float:
    return metrics.deadline_misses.labels(where)._value.get()


@pytest.mark.parametrize("method", ["t.count", "t.instant"])
async def test_a_deadline_passed_before_the_handler_starts_is_missed_without_running(method: str) -> None:
    part, dispatcher, metrics = setup()
    with pytest.raises(Timeout) as caught:
        await call(dispatcher, method, 100, age_s=0.5)  # read half a second ago, due after a tenth
    assert caught.value.data == {"reason": "deadline_missed", "deadline_ms": 100, "where": "before_run"}
    assert part.ran == []
    assert misses(metrics, "before_run") == 1 and metrics.deadline_requests._value.get() == 1


async def test_a_deadline_in_time_runs_and_the_handler_gets_it() -> None:
    part, dispatcher, metrics = setup()
    await call(dispatcher, "t.count", 5000)
    await call(dispatcher, "t.instant", 5000)
    assert part.ran == ["count", "instant"]
    (deadline,) = part.deadlines
    assert deadline.ms == 5000 and 4.5 < deadline.remaining() <= 5.0
    assert metrics.deadline_requests._value.get() == 2 and misses(metrics, "before_run") == 0


async def test_a_running_request_is_cut_off_at_its_deadline_or_its_timeout_whichever_is_first() -> None:
    part, dispatcher, metrics = setup()
    with pytest.raises(Timeout) as at_deadline:
        await call(dispatcher, "t.slow", 50)  # before the method's 0.2 s timeout
    assert at_deadline.value.data == {"reason": "deadline", "deadline_ms": 50}
    assert misses(metrics, "running") == 1
    with pytest.raises(Timeout) as at_timeout:
        await call(dispatcher, "t.slow", 5000)
    assert at_timeout.value.data == {"reason": "timeout", "limit_s": 0.2}
    assert misses(metrics, "running") == 1 and part.ran == ["slow", "slow"]
