"""The audit log's layer of the request chain: one entry per audited request, its seq in the
answer, and no answer that claims an entry which was not recorded. The recorder is faked: it is
the seam."""

from __future__ import annotations

from typing import Any

import pytest
from engram.audit.layer import AuditRecord
from engram.errors import InternalError, NotFound, Overloaded, PolicyDenied, RPCError
from engram.observability.metrics import Metrics
from engram.principal import Principal
from engram.server.dispatch import Dispatcher
from engram.server.jsonrpc import Request
from engram.server.layers.access import Guards, require_method
from engram.server.layers.deadline import Deadline
from engram.server.layers.errors import translate_errors
from engram.server.layers.params import ParamsValidation
from engram.server.methods import (
    Method,
    MethodTable,
    NoParams,
    Params,
    RequestContext,
    Result,
    collect,
    rpc,
)
from engram.server.settings import ServerSettings

PRINCIPAL = Principal(uid=4242, gid=4242, pid=1)


class EchoParams(Params):
    value: int = 0


class EchoResult(Result):
    value: int


class Part:
    @rpc("t.echo", summary="echo")
    async def echo(self, ctx: RequestContext, params: EchoParams) -> EchoResult:
        if params.value < 0:
            raise NotFound("negative")
        if params.value == 13:
            raise RuntimeError("unlucky")
        return EchoResult(value=params.value)

    @rpc("t.peek", summary="introspection", audit=False)
    async def peek(self, ctx: RequestContext, params: NoParams) -> EchoResult:
        return EchoResult(value=1)

    @rpc("t.read", summary="a read", read_only=True)
    async def read(self, ctx: RequestContext, params: EchoParams) -> EchoResult:
        if params.value < 0:
            raise NotFound("negative")
        return EchoResult(value=params.value)

    @rpc("t.admin", summary="owner only", owner_only=True)
    async def admin(self, ctx: RequestContext, params: NoParams) -> EchoResult:
        return EchoResult(value=2)


class FakeRecorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.fail: RPCError | None = None

    async def record_request(self, **kwargs: Any) -> int:
        if self.fail is not None:
            raise self.fail
        # What the real recorder hashes before it returns (the dispatcher adds audit_seq after).
        self.calls.append({**kwargs, "result": dict(kwargs["result"]) if kwargs.get("result") else None})
        return 100 + len(self.calls)

    def enqueue_request(self, **kwargs: Any) -> None:
        if self.fail is not None:
            raise self.fail
        self.calls.append({**kwargs, "queued": True})


class Conn:
    id = 7


async def owner_only(principal: Principal, method: Method) -> None:
    """The guard the policy's default amounts to, for an owner of uid 1."""
    if method.owner_only and principal.uid not in (1, 0):
        raise PolicyDenied(f"{method.name} may only be called by the daemon's owner", reason="owner_only")


@pytest.fixture
def setup() -> tuple[Dispatcher, FakeRecorder]:
    table = MethodTable()
    table.add(collect(Part()))
    recorder = FakeRecorder()
    layers = [AuditRecord(recorder), translate_errors, require_method, Guards([owner_only]), ParamsValidation(),
              Deadline(ServerSettings, Metrics())]
    dispatcher = Dispatcher(table, layers)
    return dispatcher, recorder


async def call(dispatcher: Dispatcher, method: str, params: Any = None) -> Any:
    return await dispatcher.dispatch(Request(method, params, 1), PRINCIPAL, Conn())  # type: ignore[arg-type]


async def test_result_carries_the_seq_and_the_entry_has_what_was_sent_and_returned(setup) -> None:
    dispatcher, recorder = setup
    assert await call(dispatcher, "t.echo", {"value": 5}) == {"value": 5, "audit_seq": 101}
    (entry,) = recorder.calls
    assert entry["method"] == "t.echo" and entry["params"] == {"value": 5} and entry["result"] == {"value": 5}
    assert entry["principal"] == PRINCIPAL and entry["connection"] == 7 and entry["request"] >= 1


async def test_errors_carry_the_seq(setup) -> None:
    dispatcher, recorder = setup
    with pytest.raises(NotFound) as info:
        await call(dispatcher, "t.echo", {"value": -1})
    assert info.value.data["audit_seq"] == 101 and recorder.calls[0]["error"] is info.value
    with pytest.raises(RPCError) as bad:
        await call(dispatcher, "t.echo", {"value": "x"})
    assert bad.value.code == -32602 and bad.value.data["audit_seq"] == 102
    with pytest.raises(PolicyDenied) as denied:
        await call(dispatcher, "t.admin")
    assert denied.value.data["audit_seq"] == 103
    with pytest.raises(InternalError) as crashed:
        await call(dispatcher, "t.echo", {"value": 13})
    assert crashed.value.data["audit_seq"] == 104
    assert len(recorder.calls) == 4  # exactly one entry per request


async def test_unaudited_and_unknown_methods_make_no_entry(setup) -> None:
    dispatcher, recorder = setup
    assert await call(dispatcher, "t.peek") == {"value": 1}
    with pytest.raises(RPCError) as info:
        await call(dispatcher, "t.nope")
    assert info.value.code == -32601 and "audit_seq" not in info.value.data
    assert recorder.calls == []


async def test_a_failed_record_fails_the_request(setup) -> None:
    dispatcher, recorder = setup
    recorder.fail = Overloaded("queue full", reason="audit_overloaded")
    with pytest.raises(Overloaded) as info:
        await call(dispatcher, "t.echo", {"value": 5})
    assert info.value.reason == "audit_overloaded"
    with pytest.raises(Overloaded):  # an error whose entry cannot be written: the audit error wins
        await call(dispatcher, "t.echo", {"value": -1})


async def test_reads_are_queued_not_awaited_and_show_no_seq(setup) -> None:
    dispatcher, recorder = setup
    assert await call(dispatcher, "t.read", {"value": 5}) == {"value": 5}  # no seq before it is durable
    with pytest.raises(NotFound) as info:
        await call(dispatcher, "t.read", {"value": -1})
    assert "audit_seq" not in info.value.data
    ok, failed = recorder.calls
    assert ok["queued"] and ok["method"] == "t.read" and ok["result"] == {"value": 5} and ok["error"] is None
    assert failed["queued"] and failed["error"] is info.value
    recorder.fail = Overloaded("queue full", reason="audit_overloaded")
    with pytest.raises(Overloaded):  # a read whose entry cannot even be queued is not answered
        await call(dispatcher, "t.read", {"value": 5})
