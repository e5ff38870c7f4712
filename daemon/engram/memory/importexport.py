"""``engram memory import`` and ``export``: JSON Lines in and out, in batches, with progress.

One episode per line, the fields of ``memory.export`` items (``id``, ``text``, ``kind``,
``tags``, ``metadata``, ``session``, ``time``, ``importance``, ``pinned``, ``source`` and, with
``--vectors``, ``vector``); only ``text`` is required on import. Import sends batches to
``memory.import``, which skips ids it already has, and lines without an id get one derived from
their content; so an interrupted import is resumed by running the same command again, and
nothing is duplicated. A bad line stops the import at that line, naming it; the lines before it
are in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from engram.errors import DataError, InvalidParams

__all__ = ["ExportSummary", "ImportSummary", "LineError", "export_jsonl", "import_jsonl", "read_batches"]

Call = Callable[[str, dict[str, Any]], Any]


class LineError(DataError):
    """A line of the import file is unusable; ``line`` is its 1-based number."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line


@dataclass
class ImportSummary:
    imported: int = 0
    skipped: int = 0
    lines: int = 0
    ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"imported": self.imported, "skipped": self.skipped, "lines": self.lines}


@dataclass
class ExportSummary:
    exported: int = 0
    total: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"exported": self.exported, "total": self.total}


def read_batches(handle: IO[bytes], batch: int) -> Iterator[tuple[list[int], list[dict[str, Any]], int]]:
    """(line numbers, items, bytes read) per batch of ``batch`` non-blank lines."""
    numbers: list[int] = []
    items: list[dict[str, Any]] = []
    size = 0
    for number, raw in enumerate(handle, start=1):
        size += len(raw)
        text = raw.strip()
        if not text:
            continue
        try:
            item = json.loads(text)
        except ValueError as exc:
            raise LineError(number, f"not JSON ({exc})") from None
        if not isinstance(item, dict):
            raise LineError(number, "not a JSON object")
        numbers.append(number)
        items.append(item)
        if len(items) >= batch:
            yield numbers, items, size
            numbers, items, size = [], [], 0
    if items or size:
        yield numbers, items, size


def import_jsonl(
    path: Path,
    call: Call,
    namespace: str | None = None,
    batch: int = 256,
    progress: Callable[[int, ImportSummary], None] | None = None,
) -> ImportSummary:
    """Send ``path`` to ``memory.import`` in batches; ``progress(bytes, summary)`` after each."""
    summary = ImportSummary()
    with open(path, "rb") as handle:
        for numbers, items, size in read_batches(handle, batch):
            if items:
                params: dict[str, Any] = {"items": items}
                if namespace is not None:
                    params["namespace"] = namespace
                try:
                    result = call("memory.import", params)
                except InvalidParams as exc:
                    raise _line_error(exc, numbers) from None
                summary.imported += result["imported"]
                summary.skipped += result["skipped"]
                summary.lines += len(items)
            if progress is not None:
                progress(size, summary)
    return summary


def _line_error(exc: InvalidParams, numbers: list[int]) -> Exception:
    """Point an item error (``items.3.text``) at its line in the file."""
    where = str(exc.data.get("field") or "")
    parts = where.split(".")
    if len(parts) >= 2 and parts[0] == "items" and parts[1].isdigit() and int(parts[1]) < len(numbers):
        rest = ".".join(parts[2:]) or "item"
        message = exc.message.split(": ", 1)[-1]
        return LineError(numbers[int(parts[1])], f"{rest}: {message}")
    return exc


def export_jsonl(
    out: IO[str],
    call: Call,
    namespace: str | None = None,
    with_vectors: bool = False,
    page: int = 500,
    progress: Callable[[ExportSummary], None] | None = None,
) -> ExportSummary:
    """Write every episode of the namespace to ``out``, one JSON object per line, oldest first."""
    summary = ExportSummary()
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": page, "with_vectors": with_vectors}
        if namespace is not None:
            params["namespace"] = namespace
        if after is not None:
            params["after"] = after
        result = call("memory.export", params)
        summary.total = result["total"]
        for item in result["items"]:
            out.write(json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n")
        summary.exported += len(result["items"])
        if progress is not None:
            progress(summary)
        after = result.get("next")
        if after is None:
            return summary
