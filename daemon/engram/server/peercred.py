"""Peer credentials of a connected Unix socket: who is on the other end, per the kernel."""

from __future__ import annotations

import socket
import struct
import sys

from engram.principal import Principal

# macOS <sys/un.h>: SOL_LOCAL = 0, LOCAL_PEERCRED = 0x001, LOCAL_PEERPID = 0x002.
_SOL_LOCAL = 0
_LOCAL_PEERCRED = 0x001
_LOCAL_PEERPID = 0x002
_XUCRED = struct.Struct("IIh16I")  # cr_version, cr_uid, cr_ngroups, cr_groups[16]; native alignment


def peer_principal(sock: socket.socket) -> Principal:
    if sys.platform.startswith("linux"):
        ucred = struct.Struct("3i")
        pid, uid, gid = ucred.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, ucred.size))
        return Principal.from_ids(uid, gid, pid)
    if sys.platform == "darwin":
        raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, _XUCRED.size)
        _version, uid, ngroups, *groups = _XUCRED.unpack(raw[: _XUCRED.size])
        gid = groups[0] if ngroups > 0 else -1
        pid_raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, 4)
        return Principal.from_ids(uid, gid, struct.unpack("=i", pid_raw)[0])
    raise OSError(f"peer credentials are not supported on {sys.platform}")
