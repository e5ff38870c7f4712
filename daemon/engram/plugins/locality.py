"""Where a network provider's data goes: the locality a plugin declares from its endpoint URL.

A provider that speaks HTTP is ``local`` only when its endpoint is a loopback address (a model
server on this machine); any other host — another machine on the LAN included — is ``remote``:
data sent there leaves this machine, and the policy treats it so.
"""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

__all__ = ["is_loopback", "locality_of"]


def is_loopback(url: str) -> bool:
    """True when ``url``'s host is ``localhost`` or a loopback IP address (127.0.0.0/8, ::1)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def locality_of(url: str, setting: Literal["auto", "local", "remote"] = "auto") -> Literal["local", "remote"]:
    """The locality of a provider at ``url``: ``setting`` when it names one, else from the host."""
    if setting != "auto":
        return setting
    return "local" if is_loopback(url) else "remote"
