"""Durable file replacement: what "written" means for the files engram keeps beside its database.

A rename is atomic but not durable until the directory holding it is synced too; without that,
a power cut can bring back the old file (or no file) after the new one was reported written.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

# The daemon's umask: everything it creates is private unless made otherwise on purpose.
PRIVATE_UMASK = 0o077


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents as 0700, whatever the umask of the moment.

    ``Path.mkdir(parents=True)`` gives the parents the umask's default mode (0777 under umask 0),
    so each missing level is made here and chmodded: the umask can only take bits away, and a
    folder that already exists is the owner's choice and stays as it is.
    """
    missing = []
    level = path
    while not level.exists():
        missing.append(level)
        if level.parent == level:
            break
        level = level.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs, not ours to chmod
        os.chmod(folder, 0o700)
    if not path.is_dir():  # a file in the way: say so now, not at the first write into it
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))


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
