"""systemd integration without libsystemd: sd_notify, socket activation, the watchdog.

All three are small, stable protocols (see sd_notify(3) and sd_listen_fds(3)); speaking them
directly keeps engram free of a C dependency and makes them work the same under any service
manager that implements them.
"""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger("engram.systemd")

SD_LISTEN_FDS_START = 3


def notify(*states: str) -> bool:
    """Send ``STATE=value`` lines to ``$NOTIFY_SOCKET``; returns False when not supervised."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    payload = "\n".join(states).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(1.0)
            sock.sendto(payload, address)
    except OSError as exc:
        log.warning("sd_notify failed", socket=os.environ.get("NOTIFY_SOCKET"), error=str(exc))
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half the timeout systemd set), or None when off."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        return max(int(usec) / 1_000_000 / 2, 0.01)
    except ValueError:
        return None


def inherited_socket() -> socket.socket | None:
    """The listening socket passed by socket activation (fd 3), or None.

    The environment variables are removed so that child processes do not think the socket is
    theirs, as sd_listen_fds(unset_environment=1) does.
    """
    pid = os.environ.get("LISTEN_PID")
    fds = os.environ.get("LISTEN_FDS")
    if not fds or (pid and pid != str(os.getpid())):
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if int(fds) < 1:
        return None
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise OSError("the inherited socket (fd 3) is not a Unix stream socket")
    os.set_inheritable(sock.fileno(), False)
    return sock
