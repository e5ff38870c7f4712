"""The extraction queue: the episodes past an extractor's watermark (blocking; worker threads).

There is no queue table. The episodes table is the queue, in commit order (``seq``), and
``memory_extraction_cursors`` says how far each extractor has read, so what is acknowledged to a
client is already queued, durably, and nothing can overflow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

from engram.memory.db import MemoryDB

__all__ = ["ExtractionQueue", "PendingEpisode"]


@dataclass(frozen=True, slots=True)
class PendingEpisode:
    seq: int
    id: str
    namespace: str
    time: float
    text: str
    tags: tuple[str, ...] = ()


class ExtractionQueue:
    def __init__(self, db: MemoryDB, extractor: str) -> None:
        self.db = db
        self.extractor = extractor

    def watermark(self) -> int:
        with self.db.read() as conn:
            row = conn.execute("SELECT watermark FROM memory_extraction_cursors WHERE extractor = ?", (self.extractor,)).fetchone()
        return row[0] if row is not None else 0

    def lag(self) -> int:
        """Episodes committed past the watermark (forgotten ones excepted)."""
        with self.db.read() as conn:
            row = conn.execute(
                "SELECT count(*) FROM memory_episodes WHERE seq > coalesce("
                "(SELECT watermark FROM memory_extraction_cursors WHERE extractor = ?), 0)",
                (self.extractor,),
            ).fetchone()
        return int(row[0])

    def pending(self, limit: int, max_chars: int) -> list[PendingEpisode]:
        """The oldest episodes past the watermark, at most ``limit``, texts cut at ``max_chars``,
        with their tags (the policy's data tags, should the text go to an LLM)."""
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT e.seq, e.id, e.namespace, e.time, substr(e.text, 1, ?), "
                "(SELECT json_group_array(t.tag) FROM memory_episode_tags t WHERE t.seq = e.seq) "
                "FROM memory_episodes e WHERE e.seq > coalesce("
                "(SELECT watermark FROM memory_extraction_cursors WHERE extractor = ?), 0) ORDER BY e.seq LIMIT ?",
                (max_chars, self.extractor, limit),
            ).fetchall()
        return [PendingEpisode(*row[:5], tuple(json.loads(row[5]))) for row in rows]

    def existing(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` are still there (an episode may be forgotten while it is parsed)."""
        with self.db.read() as conn:
            return {
                i for (i,) in conn.execute(
                    f"SELECT id FROM memory_episodes WHERE id IN ({','.join('?' * len(ids))})", tuple(ids)
                )
            }

    def believed(self, namespace: str, keys: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], list[tuple[float, float | None, float | None]]]:
        """(source key, type, destination key) -> the (weight, valid_from, valid_to) of each
        relation memory believes now with those ends and type."""
        out: dict[tuple[str, str, str], list[tuple[float, float | None, float | None]]] = {}
        with self.db.read() as conn:
            for key in keys:
                rows = conn.execute(
                    "SELECT r.weight, r.valid_from, r.valid_to FROM memory_relations r "
                    "JOIN memory_concepts s ON s.seq = r.src JOIN memory_concepts d ON d.seq = r.dst "
                    "WHERE s.namespace = ? AND s.key = ? AND d.namespace = ? AND d.key = ? AND r.type = ? "
                    "AND r.retracted_at IS NULL",
                    (namespace, key[0], namespace, key[2], key[1]),
                ).fetchall()
                if rows:
                    out[key] = [tuple(r) for r in rows]
        return out

    def advance(self, seq: int) -> None:
        """Move the watermark to ``seq`` (never back). Committed without waiting for the disk, like
        the batch's graph write before it: SQLite's log keeps commits in order, so a power cut that
        loses this commit loses at most the batch too, which is then redone."""
        with self.db.transaction(background=True) as conn:
            conn.execute(
                "INSERT INTO memory_extraction_cursors (extractor, watermark, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (extractor) DO UPDATE SET watermark = max(watermark, excluded.watermark), "
                "updated_at = excluded.updated_at",
                (self.extractor, seq, time.time()),
            )
