"""The HTTP gateway's settings section (``[http]``). Read at start."""

from __future__ import annotations

import ipaddress

from pydantic import Field, ValidationInfo, field_validator

from engram.sections import PositiveSeconds, Section

__all__ = ["HttpSettings", "is_loopback", "parse_listen"]


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a host and a port; ValueError says what is wrong."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8765)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is not between 1 and 65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"{host!r} is not an IP address (or localhost): name lookups are not done") from None
    return host, port


def is_loopback(host: str) -> bool:
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


class HttpSettings(Section):
    """The HTTP gateway (docs/http.md): off unless ``listen`` is set."""

    allow_non_loopback: bool = Field(
        default=False,
        description="Allow a listen address other than loopback (127.0.0.0/8, ::1, localhost); the daemon refuses "
        "to start otherwise. The gateway speaks plain HTTP: put TLS in front of it before exposing it.",
    )
    listen: str | None = Field(
        default=None,
        description="HOST:PORT to serve HTTP on (e.g. 127.0.0.1:8765); unset: no HTTP listener at all.",
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest request body accepted; a larger one is answered 413.",
    )
    max_connections: int = Field(
        default=256, ge=1, le=65_536, description="Connections (and requests) served at once; more are answered 503."
    )
    read_timeout: PositiveSeconds = Field(
        default=30.0,
        description="Seconds a client may take to send a request head (the connection is closed after that), and "
        "then its body (answered 408).",
    )
    idle_timeout: PositiveSeconds = Field(
        default=30.0, description="Seconds a keep-alive connection may stay idle between requests before it is closed."
    )
    stream_buffer: int = Field(
        default=256,
        ge=1,
        le=65_536,
        description="Chunks of a streamed chat answer held for a client that reads slowly; the answer waits when full.",
    )
    metrics_public: bool = Field(
        default=False, description="Serve GET /metrics without a token (it still answers only on the listen address)."
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        host, _ = parse_listen(value)
        if not is_loopback(host) and not info.data.get("allow_non_loopback", False):
            raise ValueError(
                f"{host} is not a loopback address, and the gateway speaks plain HTTP with bearer tokens; "
                "set http.allow_non_loopback = true to serve it anyway (behind TLS)"
            )
        return value
