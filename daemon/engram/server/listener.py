"""The listening socket: created private from the first instant, never stolen from a live daemon."""

from __future__ import annotations

import errno
import grp
import os
import socket
import stat
from pathlib import Path

from engram.errors import StartupError

BACKLOG = 1024


def _is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        return True  # e.g. EAGAIN: a backlog full of clients is a live daemon too
    finally:
        probe.close()
    return True


def bind_private(path: Path, group: str | None) -> socket.socket:
    """Bind and listen on ``path`` with mode 0600 (0660 and ``group`` when one is given).

    The mode is set through the umask during bind(2), so there is no moment at which the socket
    exists with wider permissions. A socket file that nobody listens on (a daemon that was
    killed) is replaced; one that answers belongs to a live daemon and is left alone.
    """
    gid = None
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise StartupError(f"server.socket_group: no group named {group!r}") from None
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create the socket's folder {path.parent}: {exc.strerror}") from None
    try:
        info = path.lstat()
    except FileNotFoundError:
        info = None
    if info is not None:
        if not stat.S_ISSOCK(info.st_mode):
            raise StartupError(f"{path} exists and is not a socket; move it away or choose another --socket")
        if _is_live(path):
            raise StartupError(
                f"another engramd is already listening on {path}; stop it first "
                "or give this one another --socket and --state-dir"
            )
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind {path}: {exc.strerror}") from None
    finally:
        os.umask(old_umask)
    if gid is not None:
        os.chown(path, -1, gid)
        os.chmod(path, 0o660)
    sock.listen(BACKLOG)
    return sock


def remove_if_ours(path: Path, inode: int) -> None:
    """Unlink the socket file at exit, unless another daemon has replaced it meanwhile."""
    try:
        if path.lstat().st_ino == inode:
            path.unlink()
    except OSError:
        pass
