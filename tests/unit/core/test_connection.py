"""A connection's own safety nets: what it writes when a response cannot be encoded, and what
happens when serving it fails unexpectedly (it closes; the exception goes no further)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from engram.server.settings import ServerSettings
from engram.principal import Principal
from engram.server.connection import ClientConnection


class FakeStream:
    def __init__(self, receive_error: Exception | None = None) -> None:
        self.receive_error = receive_error
        self.written: list[bytes] = []
        self.closed = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self.receive_error is not None:
            raise self.receive_error
        return b""

    def write(self, data: bytes) -> bool:
        self.written.append(data)
        return False

    async def drain(self) -> None:
        pass

    async def aclose(self) -> None:
        self.closed = True


def connection(stream: FakeStream) -> ClientConnection:
    server = SimpleNamespace(bus=SimpleNamespace(publish=lambda event: None), settings=ServerSettings)
    return ClientConnection(1, stream, Principal(uid=1000, gid=1000, pid=1), server)  # type: ignore[arg-type]


async def test_a_failure_while_serving_closes_the_connection_and_goes_no_further():
    stream = FakeStream(receive_error=RuntimeError("a bug"))
    conn = connection(stream)
    await conn.run()  # returns: the exception would otherwise end the daemon's task group
    assert stream.closed and conn.close_reason == "internal_error"


async def test_an_unencodable_response_becomes_an_error_with_its_id():
    stream = FakeStream()
    conn = connection(stream)
    await conn._send({"jsonrpc": "2.0", "id": 3, "result": {"x": float("nan")}})
    reply = json.loads(stream.written[-1])
    assert reply["id"] == 3 and reply["error"]["code"] == -32603
    assert reply["error"]["data"]["reason"] == "unencodable_response"


async def test_in_a_batch_only_the_unencodable_member_becomes_an_error():
    stream = FakeStream()
    conn = connection(stream)
    good = {"jsonrpc": "2.0", "id": 1, "result": {"ok": True}}
    await conn._send([good, {"jsonrpc": "2.0", "id": 2, "result": object()}])
    first, second = json.loads(stream.written[-1])
    assert first == good
    assert second["id"] == 2 and second["error"]["data"]["reason"] == "unencodable_response"
