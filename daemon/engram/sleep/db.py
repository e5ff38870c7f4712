"""Sleep's own SQLite connection, for its own tables (``sleep/migrations/``): the runs and their
reports (``sleep_runs``), the stages a run finished (``sleep_stage_done``) and the stages'
resume cursors (``sleep_cursors``).

One connection for everything, held by one thread at a time: sleep writes a row or two per stage
and per cursor, in worker threads. Memory's data, and the journal and checkpoints that commit
with memory's changes, are memory's (:mod:`engram.sleep.ports`); this connection never touches
them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engram.storage.connection import OneConnection

__all__ = ["SleepDB"]


class SleepDB(OneConnection):
    def __init__(self, path: Path, busy_timeout: float = 5.0) -> None:
        super().__init__(path, busy_timeout, name="sleep")

    # --- what the stages read and write ----------------------------------------------------------------

    def save_cursor(self, run: int, namespace: str, stage: str, cursor: dict[str, Any]) -> None:
        """Keep a stage's resume cursor for a run and namespace (one short transaction)."""
        text = json.dumps(cursor, separators=(",", ":"))
        with self.transaction(background=True) as conn:
            conn.execute(
                "INSERT INTO sleep_cursors (run, namespace, stage, cursor) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (run, namespace, stage) DO UPDATE SET cursor = excluded.cursor",
                (run, namespace, stage, text),
            )

    def cursor(self, run: int, namespace: str, stage: str) -> dict[str, Any] | None:
        with self.read() as conn:
            row = conn.execute(
                "SELECT cursor FROM sleep_cursors WHERE run = ? AND namespace = ? AND stage = ?", (run, namespace, stage)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def last_completed_start(self, other_than: int) -> float | None:
        """When the latest completed run other than ``other_than`` started (None: there is none)."""
        with self.read() as conn:
            row = conn.execute(
                "SELECT max(started_at) FROM sleep_runs WHERE outcome = 'completed' AND id != ?", (other_than,)
            ).fetchone()
        return row[0] if row else None
