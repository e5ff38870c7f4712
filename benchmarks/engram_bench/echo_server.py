"""The baseline of ``engram bench rpc``: the least a newline-JSON server over a Unix socket does.

It parses each line and answers it, nothing more: no validation, limits, telemetry or events.
Run as ``python -m engram_bench.echo_server PATH``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            request = json.loads(line)
            response = {"jsonrpc": "2.0", "id": request.get("id"), "result": {"pong": True, "echo": None}}
            writer.write(json.dumps(response, separators=(",", ":")).encode() + b"\n")
            await writer.drain()
    except (ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(path: str) -> None:
    old = os.umask(0o177)
    server = await asyncio.start_unix_server(_handle, path, limit=16 * 1024 * 1024, backlog=1024)
    os.umask(old)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
