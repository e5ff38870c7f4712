"""What every ``engram`` subcommand shares: exit codes, output, error mapping, client options.

Parts that add commands (``engram audit``, ``engram models``, ...) build them from these so that
every command behaves the same: ``--socket``, ``--json``, ``--timeout`` and the exit codes
0 ok, 1 the daemon answered with an error, 2 usage or configuration error, 3 daemon unreachable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from engram.errors import ConfigError, DaemonUnreachable, RPCError, error_from_wire

if TYPE_CHECKING:
    import socket

EXIT_OK, EXIT_REMOTE, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

# The benchmarks and the ONNX conformance run are not part of the product: the engram-bench
# distribution (benchmarks/ in the repository) adds them to `engram bench` and `engram models`
# through the entry-point groups ``engram.cli.bench`` and ``engram.cli.models``
# (:class:`engram.lazygroup.LazyGroup`). What those groups say when a command is not there:
INSTALL_BENCH = (
    "the benchmarks and `engram models conformance` come with engram-bench: "
    "`make bench`, or `pip install -e benchmarks` in engram's repository"
)


class Output:
    """Where a command's result goes: JSON for programs, text for people."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: Any, human: Callable[[Any], None] | None = None) -> None:
        if self.as_json or human is None:
            click.echo(json.dumps(data, indent=None if self.as_json else 2, sort_keys=False))
        else:
            human(data)


def fail(code: int, message: str) -> None:
    click.echo(f"engram: {message}", err=True)
    sys.exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Map engram's errors to the documented exit codes."""
    try:
        yield
    except DaemonUnreachable as exc:
        fail(EXIT_UNREACHABLE, str(exc))
    except ConfigError as exc:
        fail(EXIT_USAGE, str(exc))
    except RPCError as exc:
        detail = {k: v for k, v in exc.data.items() if k != "reason"}
        extra = f" {json.dumps(detail)}" if detail else ""
        fail(EXIT_REMOTE, f"error {exc.code} ({exc.reason}): {exc.message}{extra}")


def socket_option(func: Callable) -> Callable:
    return click.option(
        "--socket",
        "socket_path",
        type=click.Path(path_type=Path),
        envvar="ENGRAM_SOCKET",
        help="Daemon socket (default: $ENGRAM_SOCKET, then the usual places).",
    )(func)


def json_option(func: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(func)


def timeout_option(func: Callable) -> Callable:
    return click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait.")(func)


def client_command(func: Callable) -> Callable:
    return socket_option(json_option(timeout_option(func)))


def call(socket_path: Path | None, timeout: float, method: str, params: Any = None) -> Any:
    from engram.client import Client

    with errors(), Client(socket_path, timeout=timeout) as client:
        return client.call(method, params)


def _print_chunk(method: str, params: dict[str, Any]) -> None:
    if method == "infer.chunk":
        click.echo(params["text"], nl=False)


def stream_call(
    socket_path: Path | None, timeout: float, method: str, params: dict[str, Any],
    notified: Callable[[str, dict[str, Any]], None] = _print_chunk,
) -> dict[str, Any]:
    """Call ``method`` (params asking for a stream) and hand each notification that comes before
    its answer to ``notified`` (by default: print ``infer.chunk`` text to stdout); the result.

    The notifications are read off a plain socket connection: the request is the only one on
    it, so every notification before its answer belongs to it. ``timeout`` bounds each read."""
    from engram.client.async_client import resolve_socket

    with errors():
        sock, path = _connect(resolve_socket(socket_path), timeout)
        with sock, sock.makefile("rb") as lines:
            sock.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode() + b"\n")
            for line in lines:
                message = json.loads(line)
                if "method" in message and "id" not in message:
                    notified(message["method"], message.get("params") or {})
                elif message.get("id") == 1:
                    if notified is _print_chunk:
                        click.echo()  # the chunks' line ends with the answer
                    if "error" in message:
                        raise error_from_wire(message["error"])
                    return message["result"]
        raise DaemonUnreachable("engramd closed the connection before answering", path)


def _connect(candidates: list[Path], timeout: float) -> tuple[socket.socket, str]:
    """The first socket that accepts, in the client's order of places."""
    import socket  # here, not at the top: most commands never stream

    problems = []
    for candidate in candidates:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(candidate))
            return sock, str(candidate)
        except OSError as exc:
            sock.close()
            problems.append(f"{candidate}: {exc.strerror or exc}")
    raise DaemonUnreachable(f"cannot connect to engramd ({'; '.join(problems) or 'no socket path'})", str(candidates[:1]))
