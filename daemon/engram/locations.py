"""Where the state folder and the socket are when nothing says otherwise.

The table in :mod:`engram.config`'s docstring says where, for a system service, a user and a
checkout. The daemon (through its settings) and every client find the socket with these
functions. They live apart from the settings because a client only needs a path: importing the
settings imports pydantic-settings and builds every part's settings model, most of a second
that every ``engram`` command would pay. Keep this module to the standard library.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MAX_UNIX_PATH", "default_socket", "default_socket_candidates", "default_state_dir"]

# sun_path is 108 bytes on Linux and 104 on macOS, including the terminating NUL.
MAX_UNIX_PATH = 103


def default_state_dir() -> Path:
    if state := os.environ.get("STATE_DIRECTORY"):  # systemd StateDirectory=
        return Path(state.split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/engram")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "engram"


def default_socket(state_dir_chosen: bool, state_dir: Path) -> Path:
    """The daemon's socket when none is configured, given its state folder."""
    if runtime := os.environ.get("RUNTIME_DIRECTORY"):  # systemd RuntimeDirectory=
        return Path(runtime.split(":")[0]) / "engram.sock"
    if state_dir_chosen:
        return state_dir / "engram.sock"
    if os.geteuid() == 0:
        return Path("/run/engram/engram.sock")
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return Path(xdg) / "engram" / "engram.sock"
    return state_dir / "engram.sock"


def default_socket_candidates() -> list[Path]:
    """Sockets a client tries, in order, when neither ``--socket`` nor ``ENGRAM_SOCKET`` is given:
    this user's daemon, the system daemon, then a checkout's ``./var``."""
    candidates: list[Path] = []
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        candidates.append(Path(xdg) / "engram" / "engram.sock")
    candidates.append(Path("/run/engram/engram.sock"))
    candidates.append(default_state_dir() / "engram.sock")
    candidates.append(Path.cwd() / "var" / "engram.sock")
    seen: list[Path] = []
    for path in candidates:
        if path not in seen:
            seen.append(path)
    return seen
