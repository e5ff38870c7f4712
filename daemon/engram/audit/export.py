"""The export format of the audit log (JSON Lines), and reading a log from an export or a state folder.

An export is UTF-8 text, one JSON object per line, in this order::

    {"type":"engram-audit-export","version":1,"origin":"engram.local/3f2a...","size":1200,"checkpoints":3}
    {"type":"key","vkey":"engram.local/3f2a...+1a2b3c4d+AX...","current":true}
    {"type":"checkpoint","size":1000,"root":"<b64>","key_id":"1a2b3c4d","time":"...","note":"<signed note>"}
    {"type":"entry","seq":0,"leaf_hash":"<b64>","entry":{...the entry's canonical JSON, byte for byte...}}

* the header says how many entries (``size``) and checkpoints follow, so a cut-off file is noticed;
* ``key`` lines list the log's verifier keys, the current one first, for information only:
  ``engram audit verify`` trusts only the keys given to it with ``--pubkey`` (it still checks
  that they are well-formed keys of this log);
* ``checkpoint`` lines come in signing order, all before the entries;
* ``entry`` lines come in ``seq`` order; the member ``entry`` is written verbatim from the stored
  canonical bytes, so the leaf hash is ``SHA-256(0x00 || those bytes)`` without re-encoding.

Nothing in an export is unchecked: every byte of every line is either covered by a signature or
a leaf hash, or compared with what is (base64 must be canonical, members exactly these), so any
single changed byte makes ``engram audit verify`` fail.

An export holds every checkpoint up to, and every entry below, the size of the last checkpoint
when the export started (a consistent snapshot, even while the daemon keeps appending).
"""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from engram.audit.merkle import CompactTree
from engram.audit.store import AuditStore, StoredCheckpoint
from engram.audit.verify import VerificationError
from engram.signing import NoteError, Verifier

__all__ = ["EXPORT_FORMAT", "ExportSource", "StateFolderSource", "write_export"]

EXPORT_FORMAT = "engram-audit-export"
EXPORT_VERSION = 1

_ENTRY_LINE = re.compile(rb'\{"type":"entry","seq":(0|[1-9][0-9]*),"leaf_hash":"([A-Za-z0-9+/]{43}=)","entry":(\{.*\})\}\Z', re.DOTALL)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _strict_b64(text: str) -> bytes | None:
    """Decode canonical base64 only: two spellings of one hash would be a byte the check misses."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return raw if _b64(raw) == text else None


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def entry_line(seq: int, data: bytes, leaf: bytes) -> bytes:
    return b'{"type":"entry","seq":%d,"leaf_hash":"%s","entry":%s}\n' % (seq, _b64(leaf).encode(), data)


def checkpoint_line(cp: StoredCheckpoint) -> bytes:
    return _compact(
        {"type": "checkpoint", "size": cp.size, "root": _b64(cp.root), "key_id": cp.key_id, "time": cp.time, "note": cp.note}
    ) + b"\n"


@dataclass
class ExportHeader:
    origin: str
    size: int
    checkpoints: int


def write_export(
    out: IO[bytes],
    header: ExportHeader,
    keys: Iterable[tuple[str, bool]],
    checkpoints: Iterable[StoredCheckpoint],
    entries: Iterable[tuple[int, bytes, bytes]],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write an export; returns the number of entries written."""
    out.write(
        _compact(
            {
                "type": EXPORT_FORMAT,
                "version": EXPORT_VERSION,
                "origin": header.origin,
                "size": header.size,
                "checkpoints": header.checkpoints,
            }
        )
        + b"\n"
    )
    for vkey, current in keys:
        out.write(_compact({"type": "key", "vkey": vkey, "current": current}) + b"\n")
    for cp in checkpoints:
        out.write(checkpoint_line(cp))
    written = 0
    for seq, data, leaf in entries:
        out.write(entry_line(seq, data, leaf))
        written += 1
        if progress is not None and written % 16384 == 0:
            progress(written)
    if progress is not None:
        progress(written)
    return written


def write_export_file(path: Path, write: Callable[[IO[bytes]], int]) -> int:
    """Write through a temporary file renamed into place: no half-written export under ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            count = write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count


# --- reading ----------------------------------------------------------------------------------


class ExportSource:
    """An export file as a :class:`~engram.audit.verify.LogSource`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] = open(path, "rb")
        self._line = 0
        self.keys: list[tuple[str, bool]] = []
        self._checkpoints: list[StoredCheckpoint] = []
        self._pending: bytes | None = None
        header = self._json_line("the header")
        if header.get("type") != EXPORT_FORMAT or header.get("version") != EXPORT_VERSION:
            raise VerificationError("export line 1", f"is not an {EXPORT_FORMAT} version {EXPORT_VERSION} header")
        if set(header) != {"type", "version", "origin", "size", "checkpoints"} or not (
            isinstance(header["origin"], str) and _is_count(header["size"]) and _is_count(header["checkpoints"])
        ):
            raise VerificationError("export line 1", "the header must hold exactly type, version, origin, size, checkpoints")
        self.origin: str | None = header["origin"]
        self.size: int = header["size"]
        self.declared_checkpoints: int = header["checkpoints"]
        self._read_head()

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ExportSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next(self) -> bytes | None:
        if self._pending is not None:
            line, self._pending = self._pending, None
            return line
        line = self._handle.readline()
        if not line:
            return None
        self._line += 1
        return line

    def _json_line(self, what: str) -> dict[str, Any]:
        line = self._next()
        if line is None:
            raise VerificationError(f"export line {self._line + 1}", f"missing ({what})")
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise VerificationError(f"export line {self._line}", f"is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise VerificationError(f"export line {self._line}", "is not a JSON object")
        return obj

    def _read_head(self) -> None:
        while (line := self._next()) is not None:
            if line.startswith(b'{"type":"entry"'):
                self._pending = line
                self._line -= 1
                break
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise VerificationError(f"export line {self._line}", f"is not JSON: {exc}") from None
            kind = obj.get("type") if isinstance(obj, dict) else None
            if kind == "key" and not self._checkpoints and set(obj) == {"type", "vkey", "current"}:
                self._key_line(obj)
            elif kind == "checkpoint" and set(obj) == {"type", "size", "root", "key_id", "time", "note"}:
                root = _strict_b64(obj["root"]) if isinstance(obj["root"], str) else None
                fields = (obj["note"], obj["key_id"], obj["time"])
                if root is None or not _is_count(obj["size"]) or not all(isinstance(f, str) for f in fields):
                    raise VerificationError(f"export line {self._line}", "is a malformed checkpoint line")
                self._checkpoints.append(
                    StoredCheckpoint(len(self._checkpoints) + 1, obj["size"], root, obj["note"], obj["key_id"], obj["time"])
                )
            else:
                raise VerificationError(f"export line {self._line}", "is not a key, checkpoint or entry line in its place")
        if not self.keys:
            raise VerificationError("export", "lists no verifier key")
        if len(self._checkpoints) != self.declared_checkpoints:
            raise VerificationError(
                "export",
                f"the header announces {self.declared_checkpoints} checkpoints, the file holds {len(self._checkpoints)}",
            )

    def _key_line(self, obj: dict[str, Any]) -> None:
        # Informational, but checked: a well-formed key of this log, the current one first.
        where = f"export line {self._line}"
        if not isinstance(obj["vkey"], str) or obj["current"] is not (not self.keys):
            raise VerificationError(where, "is a malformed key line (the current key comes first, once)")
        try:
            name = Verifier(obj["vkey"]).name
        except NoteError as exc:
            raise VerificationError(where, f"is not a valid verifier key: {exc}") from None
        if name != self.origin:
            raise VerificationError(where, f"is a key of log {name!r}, not of {self.origin!r}")
        self.keys.append((obj["vkey"], obj["current"]))

    def entry_count_hint(self) -> int:
        return self.size

    def checkpoints(self) -> list[StoredCheckpoint]:
        return list(self._checkpoints)

    def iter_entries(self, start: int = 0) -> Iterator[tuple[int, bytes, bytes | None]]:
        count = 0
        while (line := self._next()) is not None:
            match = _ENTRY_LINE.match(line.rstrip(b"\n")) if line.endswith(b"\n") else None
            if match is None:
                raise VerificationError(f"export line {self._line}", "is not a well-formed entry line")
            count += 1
            leaf = _strict_b64(match[2].decode("ascii"))
            if leaf is None:
                raise VerificationError(f"export line {self._line}", "has a leaf hash in non-canonical base64")
            if int(match[1]) >= start:
                yield int(match[1]), match[3], leaf
        if count != self.size:
            raise VerificationError(
                "export", f"the header announces {self.size} entries, the file holds {count}: the export was cut off"
            )

    def tree_state(self) -> CompactTree | None:
        return None

    def has_nodes(self) -> bool:
        return False

    def nodes_between(self, level: int, start: int, end: int) -> list[tuple[int, bytes]]:
        return []

    def first_node_from(self, level: int, start: int) -> int | None:
        return None

    def max_node_level(self) -> int:
        return 0


class StateFolderSource:
    """A state folder's database as a :class:`~engram.audit.verify.LogSource` (use inside
    ``store.snapshot()`` so that every read sees the same state)."""

    def __init__(self, store: AuditStore, origin: str | None) -> None:
        self.store = store
        self.origin = origin

    def entry_count_hint(self) -> int:
        return self.store.count_entries()

    def checkpoints(self) -> list[StoredCheckpoint]:
        try:
            return self.store.checkpoints()
        except sqlite3.Error as exc:  # e.g. a note that is no longer valid UTF-8
            raise VerificationError("checkpoints", f"cannot be read: {exc}") from None

    def iter_entries(self, start: int = 0) -> Iterator[tuple[int, bytes, bytes | None]]:
        return self.store.iter_entries(start)  # SQLite hands BLOBs over as bytes already

    def tree_state(self) -> CompactTree | None:
        try:
            return self.store.tree_state()
        except ValueError as exc:
            raise VerificationError("tree state", str(exc)) from None

    def has_nodes(self) -> bool:
        return True

    def nodes_between(self, level: int, start: int, end: int) -> list[tuple[int, bytes]]:
        return self.store.nodes_between(level, start, end)

    def first_node_from(self, level: int, start: int) -> int | None:
        return self.store.first_node_from(level, start)

    def max_node_level(self) -> int:
        return self.store.max_node_level()
