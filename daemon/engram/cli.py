"""The ``engram`` command (and ``engramd``, which is ``engram serve``).

Exit codes, for every command: 0 ok, 1 the daemon answered with an error (engramd: it crashed),
2 usage, configuration or environment error (engramd: it cannot start), 3 the daemon could not
be reached.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from engram import __version__
from engram.clitools import (
    EXIT_REMOTE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    INSTALL_BENCH,
    Output,
    call,
    client_command,
    errors,
    fail,
    json_option,
)
from engram.errors import ConfigError, StartupError
from engram.lazygroup import LazyGroup

# The commands each part adds from its own cli module, imported only when one of
# them runs or --help lists them (engram.lazygroup): `engram ping` loads none of these modules,
# so what one part imports at its top cannot slow the commands of the others.
PART_COMMANDS = {
    "ask": "engram.ask.cli:ask",
    "audit": "engram.audit.cli:audit",
    "chat": "engram.providers.cli:chat",
    "generate": "engram.providers.cli:generate",
    "mcp": "engram.mcpserver.cli:mcp_command",
    "memory": "engram.memory.cli:memory",
    "models": "engram.inference.cli:models",
    "policy": "engram.policy.cli:policy",
    "route": "engram.router.cli:route",
    "sleep": "engram.sleep.cli:sleep",
    "task": "engram.tasks.cli:task",
    "token": "engram.http.cli:token",
}


@click.group(cls=LazyGroup, lazy_commands=PART_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="engram")
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    help="Daemon socket for every command (also accepted after the command name).",
)
def main(socket_path: Path | None) -> None:
    """engram: a local-first cognitive daemon, and the client to talk to it."""
    if socket_path is not None:
        # Every command reads ENGRAM_SOCKET (client commands through their own --socket option,
        # the daemon through its settings), so `engram --socket S status` means what it says.
        os.environ["ENGRAM_SOCKET"] = str(socket_path)


# --- serve --------------------------------------------------------------------------------


def _serve_options(func: Callable) -> Callable:
    func = click.option(
        "--config", "config_file", type=click.Path(path_type=Path), envvar="ENGRAM_CONFIG", help="TOML configuration file."
    )(func)
    func = click.option(
        "--socket", "socket_path", type=click.Path(path_type=Path), help="Socket path (env ENGRAM_SOCKET)."
    )(func)
    func = click.option(
        "--state-dir", type=click.Path(path_type=Path), help="State folder (env ENGRAM_STATE_DIR)."
    )(func)
    return func


def _run_daemon(state_dir: Path | None, socket_path: Path | None, config_file: Path | None) -> None:
    # First of all: whatever part starts first (tracing opens its span file while the daemon is
    # being built) must not create state under the umask the daemon was started with.
    from engram.storage.files import PRIVATE_UMASK

    os.umask(PRIVATE_UMASK)
    import anyio
    import structlog

    from engram.config import load_settings
    from engram.observability.logging import configure_logging

    overrides = {"state_dir": state_dir, "socket": socket_path}
    try:
        settings = load_settings(config_file, **overrides)
    except ConfigError as exc:
        fail(EXIT_USAGE, _one_line(str(exc)))
    # Only a configuration that loads pays for importing every part (most of a start's time).
    from engram.eventloop import backend_options
    from engram.runtime import serve

    configure_logging(settings.log)
    log = structlog.get_logger("engram.daemon")
    try:
        anyio.run(serve, settings, config_file, overrides, backend_options=backend_options(settings.event_loop))
    except KeyboardInterrupt:
        pass
    except BaseException as exc:  # noqa: BLE001 - the last line of defence: say why, exit non-zero
        cause = _unwrap(exc)
        if isinstance(cause, (ConfigError, StartupError)):
            # Exit 2, like a bad setting: the unit's RestartPreventExitStatus=2 keeps systemd from
            # restarting a daemon whose configuration or environment will not be better next time.
            log.error("cannot start", error=str(cause))
            fail(EXIT_USAGE, _one_line(str(cause)))
        if isinstance(cause, (SystemExit, KeyboardInterrupt)):
            raise
        log.critical("daemon crashed", error=f"{type(cause).__name__}: {cause}", exc_info=cause)
        fail(EXIT_REMOTE, f"daemon crashed: {type(cause).__name__}: {cause}")


def _one_line(message: str) -> str:
    """``message`` on one line (a journal shows one line as the reason the unit failed):
    ``invalid configuration:`` and its indented problems become ``invalid configuration: a: x; b: y``."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return "".join(lines)
    glue = " " if lines[0].endswith(":") else "; "
    return lines[0] + glue + "; ".join(lines[1:])


def _unwrap(exc: BaseException) -> BaseException:
    """The one exception inside (nested) task-group exception groups, if there is just one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@main.command()
@_serve_options
def serve(state_dir: Path | None, socket_path: Path | None, config_file: Path | None) -> None:
    """Run the daemon in the foreground (what engramd does)."""
    _run_daemon(state_dir, socket_path, config_file)


@click.command()
@click.version_option(__version__, prog_name="engramd")
@_serve_options
def engramd(state_dir: Path | None, socket_path: Path | None, config_file: Path | None) -> None:
    """engramd: the engram daemon. Runs in the foreground; stop it with SIGTERM or Ctrl-C."""
    _run_daemon(state_dir, socket_path, config_file)


# --- daemon state ---------------------------------------------------------------------------


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _print_status(status: dict[str, Any]) -> None:
    parts = ", ".join(f"{p['name']} {p['state']}" for p in status["parts"])
    lines = [
        f"engramd {status['version']}  pid {status['pid']}  up {status['uptime_s']:.0f} s",
        f"socket       {status['socket']}{'  (socket-activated)' if status['socket_activated'] else ''}",
        f"state        {status['state_dir']}",
        f"parts        {parts}",
        f"connections  {status['connections']} open, {status['connections_accepted']} accepted",
        f"requests     {status['requests_in_flight']} in flight",
        f"events       {status['events_published']} published, {_count(len(status['subscriptions']), 'subscription')}",
    ]
    for sub in status["subscriptions"]:
        lines.append(
            f"  {sub['id']:<6} {','.join(sub['topics'])}  depth {sub['depth']}  dropped {sub['dropped']}"
        )
    click.echo("\n".join(lines))


@main.command()
@client_command
def status(socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Version, uptime, parts, connections and queue depths of the running daemon."""
    Output(as_json).emit(call(socket_path, timeout, "system.status"), _print_status)


@main.command()
@client_command
def health(socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Whether each part works (exit 1 unless the status is ok)."""
    result = call(socket_path, timeout, "system.health")

    def human(data: dict[str, Any]) -> None:
        click.echo(f"status: {data['status']}")
        for name, check in data["checks"].items():
            click.echo(f"  {'ok  ' if check['ok'] else 'FAIL'} {name}: {check['detail']}")

    Output(as_json).emit(result, human)
    if result["status"] != "ok":
        sys.exit(EXIT_REMOTE)


@main.command()
@client_command
def ping(socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Check that the daemon answers, and how fast (one round trip on an open connection)."""
    import time

    from engram.client import Client

    with errors(), Client(socket_path, timeout=timeout) as client:
        started = time.perf_counter()
        result = client.call("system.ping")
        elapsed_ms = (time.perf_counter() - started) * 1000
    Output(as_json).emit({**result, "ms": round(elapsed_ms, 3)}, lambda d: click.echo(f"pong ({d['ms']:.2f} ms)"))


@main.command()
@client_command
def metrics(socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Metrics in Prometheus text format (--json: structured)."""
    result = call(socket_path, timeout, "system.metrics")
    if as_json:
        click.echo(json.dumps(result["families"]))
    else:
        click.echo(result["text"], nl=False)


@main.command()
@client_command
def reload(socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Re-read the configuration (like SIGHUP)."""

    def human(data: dict[str, Any]) -> None:
        click.echo(f"reloaded; changed: {', '.join(data['changed']) or 'nothing'}")
        if data["restart_required"]:
            click.echo(f"needs a restart to take effect: {', '.join(data['restart_required'])}")

    Output(as_json).emit(call(socket_path, timeout, "system.reload"), human)


@main.command()
@click.argument("patterns", nargs=-1)
@click.option("--follow", "-f", is_flag=True, help="Stream events as they happen (Ctrl-C to stop).")
@click.option("--count", "-n", type=click.IntRange(min=1), help="With --follow: stop after N events.")
@click.option(
    "--overflow",
    type=click.Choice(["drop_oldest", "drop_newest", "disconnect"]),
    default="drop_oldest",
    show_default=True,
    help="What the daemon does when this client falls behind.",
)
@client_command
def events(
    patterns: tuple[str, ...],
    follow: bool,
    count: int | None,
    overflow: str,
    socket_path: Path | None,
    as_json: bool,
    timeout: float,
) -> None:
    """List event topics, or with --follow stream the events matching PATTERNS (default '*')."""
    from engram.client import Client

    out = Output(as_json)
    if not follow:
        topics: list[str] = []
        for pattern in patterns or ("*",):
            topics += call(socket_path, timeout, "events.topics", {"pattern": pattern})["topics"]
        out.emit({"topics": sorted(set(topics))}, lambda d: click.echo("\n".join(d["topics"])))
        return
    seen = 0
    with errors(), Client(socket_path, timeout=timeout) as client:
        stream = client.subscribe(list(patterns) or ["*"], overflow=overflow)
        try:
            for event in stream:
                if as_json:
                    click.echo(json.dumps(event))
                else:
                    lost = f"  (dropped {event['dropped']})" if event.get("dropped") else ""
                    click.echo(f"{event['time']:.3f} {event['topic']:<24} {json.dumps(event['data'])}{lost}")
                seen += 1
                if count is not None and seen >= count:
                    break
        except KeyboardInterrupt:
            pass
    if count is not None and seen < count:
        fail(EXIT_UNREACHABLE, f"event stream ended after {seen} event(s): {stream._stream.closed_reason}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


@main.command("call")
@click.argument("method")
@click.argument("params", required=False)
@client_command
def call_method(method: str, params: str | None, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Call any RPC METHOD with PARAMS given as JSON (object or array)."""
    try:
        parsed = json.loads(params, parse_constant=_no_constant) if params else None
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="PARAMS") from None
    Output(True).emit(call(socket_path, timeout, method, parsed))


# --- configuration ----------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Inspect the configuration."""


@config.command("show")
@click.option("--offline", is_flag=True, help="Compute the configuration here instead of asking the running daemon.")
@click.option(
    "--config", "config_file", type=click.Path(path_type=Path), help="With this TOML file (implies --offline; default $ENGRAM_CONFIG)."
)
@click.option("--state-dir", type=click.Path(path_type=Path), help="With this state folder (implies --offline).")
@client_command
def config_show(
    offline: bool, config_file: Path | None, state_dir: Path | None, socket_path: Path | None, as_json: bool, timeout: float
) -> None:
    """Print the configuration in force in the running daemon (system.config), secrets redacted.

    With --offline, --config or --state-dir it is computed here instead, from the file, this
    shell's ENGRAM_* environment and the flags (--socket then sets the socket), as engramd would
    at start: a way to check a file before using it. The output says which of the two it is.
    """
    if offline or config_file is not None or state_dir is not None:
        shown = _local_config(config_file, state_dir, socket_path)
    else:
        shown = {"source": "daemon", **call(socket_path, timeout, "system.config")}
    Output(as_json).emit(shown, _print_config)


def _local_config(config_file: Path | None, state_dir: Path | None, socket_path: Path | None) -> dict[str, Any]:
    """What ``system.config`` would answer for a daemon started here with these flags."""
    from engram.config import config_file_from_env, load_settings

    try:
        settings = load_settings(config_file, state_dir=state_dir, socket=socket_path)
    except ConfigError as exc:
        fail(EXIT_USAGE, str(exc))
    data, redacted = settings.redacted_dict()
    path = config_file or config_file_from_env()
    return {"source": "local", "config_file": str(path) if path else None, "settings": data, "redacted": redacted}


_CONFIG_SOURCES = {
    "daemon": "the running daemon (system.config): the configuration in force there",
    "local": "computed here (offline) from the file, this shell's ENGRAM_* environment and the flags; "
    "a running daemon may use another",
}


def _print_config(shown: dict[str, Any]) -> None:
    import tomli_w

    # Comments, so that the output stays a TOML file that can be read back.
    lines = [f"# source: {_CONFIG_SOURCES[shown['source']]}", f"# config file: {shown['config_file'] or 'none'}"]
    if shown["redacted"]:
        lines.append(f"# redacted: {', '.join(shown['redacted'])}")
    click.echo("\n".join(lines) + "\n")
    click.echo(tomli_w.dumps(_drop_none(shown["settings"])), nl=False)


def _drop_none(value: Any) -> Any:
    """TOML has no null: an unset optional setting is simply absent (in route tables too)."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


# --- plugins ------------------------------------------------------------------------------------


@main.group()
def plugins() -> None:
    """Provider plugins."""


@plugins.command("list")
@client_command
def plugins_list(socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Installed providers: version, locality, capabilities, state, health."""

    def human(data: dict[str, Any]) -> None:
        if not data["plugins"]:
            click.echo("no provider plugins installed")
        for p in data["plugins"]:
            caps = ",".join(p["capabilities"]) or "-"
            health = p["health"]
            state = p["state"] if not health else f"{p['state']} ({'healthy' if health['ok'] else 'unhealthy'})"
            state += f", breaker {p['breaker']}" if p.get("breaker") else ""
            click.echo(f"{p['name']:<16} {p['version'] or '-':<10} {p['locality'] or '-':<7} {caps:<24} {state}")
            if p["error"]:
                click.echo(f"{'':<16} {p['failed_stage']}: {p['error']}")

    Output(as_json).emit(call(socket_path, timeout, "plugins.list"), human)


# --- developer tools ------------------------------------------------------------------------------


@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("schemas"), show_default=True)
@click.option("--check", is_flag=True, help="Exit 1 if the files in --out differ from what would be written.")
@click.option(
    "--sdk",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Also write the typed Python SDK (sdk.py, sdk_models.py) to this folder (daemon/engram/client).",
)
@json_option
def schemas(out: Path, check: bool, sdk: Path | None, as_json: bool) -> None:
    """Write the JSON Schemas of every RPC method, event and the configuration (and the SDK)."""
    from engram.schemas import render_schemas

    files = {out / name: text for name, text in render_schemas().items()}
    if sdk is not None:
        from engram.sdkgen import render_sdk

        files |= {sdk / name: text for name, text in render_sdk().items()}
    if check:
        stale = [str(path) for path, text in files.items() if not path.is_file() or path.read_text() != text]
        extra = sorted(str(p) for p in out.rglob("*.json") if p not in files) if out.is_dir() else []
        if stale or extra:
            fail(EXIT_REMOTE, f"generated files are stale: {', '.join(stale + extra)}; run `make schemas`")
        Output(as_json).emit(
            {"files": sorted(map(str, files)), "stale": []}, lambda d: click.echo(f"{len(files)} generated files up to date")
        )
        return
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    Output(as_json).emit(
        {"files": sorted(map(str, files)), "out": str(out)}, lambda d: click.echo(f"wrote {len(files)} generated files")
    )


@main.group(cls=LazyGroup, entry_point_group="engram.cli.bench", install_hint=INSTALL_BENCH)
def bench() -> None:
    """Benchmarks: engram against a baseline, in one run (from engram-bench)."""


if __name__ == "__main__":
    main()
