"""The typed SDK against the real daemon: ``client.memory.recall(query=..., k=...)`` answers with
the generated pydantic models, blocking and async, and fails with the same errors as ``call``."""

from __future__ import annotations

from pathlib import Path

import anyio
import pydantic
import pytest

from engram.client import AsyncClient, Client
from engram.client import sdk_models as m
from engram.errors import InvalidParams, NotFound

from tests.conftest import DaemonProcess

pytestmark = pytest.mark.e2e


def test_blocking_typed_calls_remember_recall_and_errors(daemon: DaemonProcess) -> None:
    with daemon.client() as client:
        ping = client.system.ping(echo={"n": 1})
        assert isinstance(ping, m.SystemPingResult) and ping.pong is True and ping.echo == {"n": 1}

        remembered = client.memory.remember(
            items=[m.EpisodeIn(text="the spare key is under the blue flowerpot"), {"text": "the train leaves at 7:40"}]
        )
        assert isinstance(remembered, m.MemoryRememberResult) and len(remembered.ids) == 2
        assert remembered.audit_seq is not None  # an audited write: the model carries its seq

        recalled = client.memory.recall(query="where is the spare key?", k=1)
        assert isinstance(recalled, m.MemoryRecallResult)
        assert [type(hit) for hit in recalled.hits] == [m.Hit]
        assert recalled.hits[0].id == remembered.ids[0]

        got = client.memory.get(ids=[remembered.ids[1]])
        assert got.episodes[0].text == "the train leaves at 7:40"
        forgotten = client.memory.forget(ids=[remembered.ids[1]])
        assert isinstance(forgotten, m.MemoryForgetResult)
        with pytest.raises(NotFound) as missing:
            client.memory.get(ids=[remembered.ids[1]])
        assert missing.value.code == -32002

        with pytest.raises(InvalidParams) as bad:
            client.memory.recall(query="anything", k=0)
        assert bad.value.data["field"] == "k"

        # a nested namespace, and a method whose name is a Python keyword
        put = client.memory.working.put(session="s1", content="draft reply to Ana")
        assert client.memory.working.get(session="s1", key=put.key).item.content == "draft reply to Ana"
        exported = client.memory.export(limit=10)
        assert isinstance(exported, m.MemoryExportResult) and [item.id for item in exported.items] == remembered.ids[:1]
        again = client.memory.import_(items=[m.ImportItem.model_validate(exported.items[0].model_dump())])
        assert isinstance(again, m.MemoryImportResult)


def test_wrong_arguments_fail_before_anything_is_sent(tmp_path: Path) -> None:
    client = Client(tmp_path / "no-daemon.sock")  # never connected: a call that got as far as sending would say so
    with pytest.raises(TypeError, match="quer"):
        client.memory.recall(quer="typo")
    with pytest.raises(TypeError):
        client.memory.recall("positional")
    with pytest.raises(pydantic.ValidationError, match="txt"):
        m.EpisodeIn(txt="typo")
    with pytest.raises(RuntimeError, match="not connected"):
        client.system.ping()


def test_async_typed_calls(daemon: DaemonProcess) -> None:
    async def main() -> None:
        async with AsyncClient(daemon.socket, timeout=10) as client:
            status = await client.system.status()
            assert isinstance(status, m.SystemStatusResult)
            assert status.parts and all(isinstance(part, m.PartStatus) for part in status.parts)
            assert {part.name for part in status.parts} >= {"memory", "inference"}
            topics = await client.events.topics()
            assert "memory.remembered" in topics.topics
            untyped = await client.call("system.hello", {"client": "sdk-test"})
            typed = await client.system.hello(client="sdk-test")
            assert isinstance(typed, m.SystemHelloResult)
            assert typed.model_dump(exclude={"audit_seq"}) == {k: v for k, v in untyped.items() if k != "audit_seq"}
            with pytest.raises(NotFound):
                await client.task.get(task_id="tk_" + "f" * 32)

    anyio.run(main)
