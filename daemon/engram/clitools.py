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
from typing import Any

import click

from engram.errors import ConfigError, DaemonUnreachable, RPCError

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
