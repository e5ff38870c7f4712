"""Where a network provider's data goes: the locality a plugin declares from its endpoint URL.

A provider that speaks HTTP is ``local`` only when its endpoint is a loopback address (a model
server on this machine); any other host — another machine on the LAN included — is ``remote``:
data sent there leaves this machine, and the policy treats it so.

A proxy in between makes any endpoint ``remote``: the proxy sees every request whole, and where it
sends them is beyond what the endpoint URL says. For the same reason provider HTTP clients take a
proxy only from their own settings, never from ``HTTP_PROXY`` and its kin (:func:`http_client_options`):
a variable in the daemon's environment would otherwise divert a "local" provider's prompts.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal
from urllib.parse import urlsplit

from engram.observability.tracing import inject_trace_context

__all__ = ["http_client_options", "is_loopback", "locality_of"]


def is_loopback(url: str) -> bool:
    """True when ``url``'s host is ``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def locality_of(
    url: str, setting: Literal["auto", "local", "remote"] = "auto", proxy: str | None = None
) -> Literal["local", "remote"]:
    """The locality of a provider at ``url``: ``remote`` behind a ``proxy`` (whatever ``setting``
    says: the proxy is another party), else ``setting`` when it names one, else from the host."""
    if proxy:
        return "remote"
    if setting != "auto":
        return setting
    return "local" if is_loopback(url) else "remote"


def http_client_options(proxy: str | None = None) -> dict[str, Any]:
    """Keyword arguments for a provider's ``httpx.AsyncClient``: the configured ``proxy`` or none,
    and the trace context of the provider call on each request.

    ``trust_env=False`` makes httpx ignore ``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY`` (and
    ``SSL_CERT_FILE``, ``.netrc``): only what the provider's settings say decides where data goes.
    The request hook adds ``traceparent`` of the daemon's provider-call span (current in the
    plugin's task, see :mod:`engram.plugins.worker`), so a traced model server joins the trace;
    with tracing off there is no span and no header.
    """
    return {"trust_env": False, "proxy": proxy or None, "event_hooks": {"request": [_send_trace_context]}}


async def _send_trace_context(request: Any) -> None:
    inject_trace_context(request.headers)
