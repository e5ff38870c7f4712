"""Durable file replacement: what "written" means for the files engram keeps beside its database.

A rename is atomic but not durable until the directory holding it is synced too; without that,
a power cut can bring back the old file (or no file) after the new one was reported written.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, path: Path) -> None:
    """Rename the already-synced ``tmp`` over ``path`` and sync the directory; ``tmp`` never stays."""
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
