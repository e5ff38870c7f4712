"""The tasks part's own tables (``tasks/migrations/``): tasks, their steps, and step inputs and
outputs stored content-addressed.

One sqlite3 connection, used from worker threads one at a time (a lock), with ``synchronous =
FULL``: a step recorded as done is on disk before the next step starts, which is what "a finished
step never runs again after kill -9" rests on. A step's output and its ``done`` state commit in
one transaction.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engram.principal import Principal
from engram.storage.connection import OneConnection

__all__ = ["StepRow", "TaskRow", "TaskStore", "canonical_json", "digest_of"]

UNFINISHED = ("queued", "running")


def canonical_json(value: Any) -> bytes:
    """The bytes an output is hashed and stored as: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@dataclass(frozen=True)
class StepRow:
    step_id: str
    position: int
    tool: str
    state: str
    output_hash: str | None
    output_size: int | None
    error: dict[str, Any] | None
    started_at: float | None
    finished_at: float | None
    input_hash: str | None = None
    audit_seq: int | None = None
    attempts: int | None = None


@dataclass(frozen=True)
class TaskRow:
    id: str
    state: str
    plan: dict[str, Any]
    namespace: str | None
    principal: Principal
    deadline_at: float | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: dict[str, Any] | None
    goal: str | None = None
    plans: int = 0  # plans the planner made for it (0: the plan came with it)
    planner: dict[str, Any] | None = None  # how it planned: {"providers": [...], "decisions": [...]}
    replay_of: str | None = None  # a live replay: the task whose plan it runs again

    @property
    def planned(self) -> bool:
        """Whether it has its plan (a task submitted with a goal has none until a worker plans it)."""
        return bool(self.plan.get("steps"))


_TASK_COLUMNS = (
    "id, state, plan, namespace, principal, deadline_at, created_at, started_at, finished_at, error, goal, plans, planner, "
    "replay_of"
)


def _task(row: tuple[Any, ...]) -> TaskRow:
    return TaskRow(
        id=row[0], state=row[1], plan=json.loads(row[2]), namespace=row[3],
        principal=Principal.model_validate_json(row[4]), deadline_at=row[5], created_at=row[6],
        started_at=row[7], finished_at=row[8], error=json.loads(row[9]) if row[9] else None,
        goal=row[10], plans=row[11], planner=json.loads(row[12]) if row[12] else None, replay_of=row[13],
    )


def _error(error: dict[str, Any] | None) -> str | None:
    return None if error is None else json.dumps(error, separators=(",", ":"))


class TaskStore(OneConnection):
    def __init__(self, path: Path, busy_timeout: float = 5.0) -> None:
        super().__init__(path, busy_timeout, name="the tasks part", foreign_keys=True)

    # --- writes ----------------------------------------------------------------------------------

    def insert(self, task: TaskRow, steps: list[tuple[str, str]]) -> None:
        """A new queued task with its steps (``(step_id, tool)`` in execution order), pending."""
        with self.transaction() as conn:
            conn.execute(
                f"INSERT INTO tasks_runs ({_TASK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, ?)",
                (task.id, task.state, json.dumps(task.plan, separators=(",", ":")), task.namespace,
                 task.principal.model_dump_json(), task.deadline_at, task.created_at, None, None, None, task.goal,
                 task.replay_of),
            )
            conn.executemany(
                "INSERT INTO tasks_steps (task_id, step_id, position, tool, state) VALUES (?, ?, ?, ?, 'pending')",
                [(task.id, step_id, position, tool) for position, (step_id, tool) in enumerate(steps)],
            )

    def set_plan(
        self, task_id: str, plan: dict[str, Any], new_steps: list[tuple[str, str]], planner: dict[str, Any]
    ) -> None:
        """A plan the planner made: ``plan`` (the done steps and the new ones) replaces the task's,
        its pending steps go, ``new_steps`` (``(step_id, tool)`` in execution order) come after
        the steps that stay, pending; the count of plans grows by one. One commit."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE tasks_runs SET plan = ?, plans = plans + 1, planner = ? WHERE id = ?",
                (json.dumps(plan, separators=(",", ":")), json.dumps(planner, separators=(",", ":")), task_id),
            )
            conn.execute("DELETE FROM tasks_steps WHERE task_id = ? AND state = 'pending'", (task_id,))
            start = conn.execute(
                "SELECT coalesce(max(position) + 1, 0) FROM tasks_steps WHERE task_id = ?", (task_id,)
            ).fetchone()[0]
            conn.executemany(
                "INSERT INTO tasks_steps (task_id, step_id, position, tool, state) VALUES (?, ?, ?, ?, 'pending')",
                [(task_id, step_id, start + n, tool) for n, (step_id, tool) in enumerate(new_steps)],
            )

    def set_task_state(self, task_id: str, state: str, at: float, error: dict[str, Any] | None = None) -> bool:
        """Move an unfinished task to ``state``: 'running' sets started_at (once); a final state
        sets finished_at and the error, and skips the steps that never ran. Whether it moved: a
        task that has ended stays as it ended (a stuck step's worker may come back after the
        watchdog ended its task)."""
        with self.transaction() as conn:
            if state == "running":
                return conn.execute(
                    "UPDATE tasks_runs SET state = 'running', started_at = coalesce(started_at, ?) "
                    "WHERE id = ? AND state IN (?, ?)",
                    (at, task_id, *UNFINISHED),
                ).rowcount > 0
            moved = conn.execute(
                "UPDATE tasks_runs SET state = ?, finished_at = ?, error = ? WHERE id = ? AND state IN (?, ?)",
                (state, at, _error(error), task_id, *UNFINISHED),
            ).rowcount > 0
            if moved and state != "queued":
                conn.execute(
                    "UPDATE tasks_steps SET state = 'skipped' WHERE task_id = ? AND state = 'pending'", (task_id,)
                )
            return moved

    def step_started(self, task_id: str, step_id: str, at: float) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE tasks_steps SET state = 'running', started_at = ?, error = NULL WHERE task_id = ? AND step_id = ?",
                (at, task_id, step_id),
            )

    def step_done(
        self, task_id: str, step_id: str, body: bytes, digest: str, at: float,
        input_body: bytes | None = None, input_hash: str | None = None, audit_seq: int | None = None,
        attempts: int | None = None,
    ) -> bool:
        """The step's output and resolved input (each stored once per digest), the seq of its
        audit entry and its 'done' state, in one commit; whether the step was still running (a
        step the watchdog failed as stuck stays failed)."""
        with self.transaction() as conn:
            stored = [(digest, len(body), body)]
            if input_body is not None:
                stored.append((input_hash, len(input_body), input_body))
            conn.executemany(
                "INSERT INTO tasks_outputs (hash, size, body) VALUES (?, ?, ?) ON CONFLICT (hash) DO NOTHING", stored
            )
            return conn.execute(
                "UPDATE tasks_steps SET state = 'done', output_hash = ?, input_hash = ?, audit_seq = ?, attempts = ?, finished_at = ? "
                "WHERE task_id = ? AND step_id = ? AND state = 'running'",
                (digest, input_hash, audit_seq, attempts, at, task_id, step_id),
            ).rowcount > 0

    def step_ended(
        self, task_id: str, step_id: str, state: str, error: dict[str, Any], at: float, attempts: int | None = None,
    ) -> bool:
        """A running step that did not finish: 'failed' or 'cancelled', with why (a step whose
        output was committed just before a cancel reached it stays done); whether it was running."""
        with self.transaction() as conn:
            return conn.execute(
                "UPDATE tasks_steps SET state = ?, error = ?, attempts = ?, finished_at = ? "
                "WHERE task_id = ? AND step_id = ? AND state = 'running'",
                (state, _error(error), attempts, at, task_id, step_id),
            ).rowcount > 0

    def requeue_interrupted(self, idempotent: Callable[[str], bool], error: dict[str, Any], at: float) -> int:
        """At start: tasks a stop or crash cut short are queued again. A step that was running
        then never finished: if its tool is idempotent it is pending again (it runs again);
        if not, whether it took effect is unknown, so it is failed with ``error`` and never run
        twice. The number of steps failed so."""
        with self.transaction() as conn:
            conn.execute("UPDATE tasks_runs SET state = 'queued' WHERE state = 'running'")
            running = conn.execute("SELECT task_id, step_id, tool FROM tasks_steps WHERE state = 'running'").fetchall()
            unsure = [(task_id, step_id) for task_id, step_id, tool in running if not idempotent(tool)]
            conn.executemany(
                "UPDATE tasks_steps SET state = 'failed', error = ?, finished_at = ? WHERE task_id = ? AND step_id = ?",
                [(_error(error), at, task_id, step_id) for task_id, step_id in unsure],
            )
            conn.execute("UPDATE tasks_steps SET state = 'pending', started_at = NULL WHERE state = 'running'")
        return len(unsure)

    # --- reads -----------------------------------------------------------------------------------

    def task(self, task_id: str) -> TaskRow | None:
        with self.read() as conn:
            row = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks_runs WHERE id = ?", (task_id,)).fetchone()
        return _task(row) if row else None

    def tasks(self, uid: int | None, states: list[str] | None, limit: int) -> list[TaskRow]:
        """Newest first; ``uid`` None: everyone's."""
        where, args = [], []
        if uid is not None:
            where.append("json_extract(principal, '$.uid') = ?")
            args.append(uid)
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args += states
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self.read() as conn:
            rows = conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks_runs {clause} ORDER BY created_at DESC, id LIMIT ?", (*args, limit)
            ).fetchall()
        return [_task(row) for row in rows]

    def unfinished(self) -> list[TaskRow]:
        """Tasks a stop or crash cut short, oldest first: they are queued again at start."""
        with self.read() as conn:
            rows = conn.execute(
                f"SELECT {_TASK_COLUMNS} FROM tasks_runs WHERE state IN (?, ?) ORDER BY created_at, id", UNFINISHED
            ).fetchall()
        return [_task(row) for row in rows]

    def steps(self, task_id: str) -> list[StepRow]:
        with self.read() as conn:
            rows = conn.execute(
                "SELECT s.step_id, s.position, s.tool, s.state, s.output_hash, o.size, s.error, s.started_at, "
                "s.finished_at, s.input_hash, s.audit_seq, s.attempts FROM tasks_steps s LEFT JOIN tasks_outputs o ON o.hash = s.output_hash "
                "WHERE s.task_id = ? ORDER BY s.position",
                (task_id,),
            ).fetchall()
        return [
            StepRow(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6]) if r[6] else None, r[7], r[8], r[9], r[10], r[11])
            for r in rows
        ]

    def outputs(self, task_id: str) -> dict[str, Any]:
        """The outputs of a task's done steps, by step id."""
        with self.read() as conn:
            rows = conn.execute(
                "SELECT s.step_id, o.body FROM tasks_steps s JOIN tasks_outputs o ON o.hash = s.output_hash "
                "WHERE s.task_id = ? AND s.state = 'done'",
                (task_id,),
            ).fetchall()
        return {step_id: json.loads(body) for step_id, body in rows}

    def bodies(self, hashes: list[str]) -> dict[str, bytes]:
        """Stored inputs and outputs by their hashes (those it has), exactly as stored."""
        found: dict[str, bytes] = {}
        with self.read() as conn:
            for start in range(0, len(hashes), 500):  # within SQLite's limit of bound parameters
                chunk = hashes[start : start + 500]
                rows = conn.execute(
                    f"SELECT hash, body FROM tasks_outputs WHERE hash IN ({', '.join('?' * len(chunk))})", chunk
                ).fetchall()
                found.update((digest, bytes(body)) for digest, body in rows)
        return found


def digest_of(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()
