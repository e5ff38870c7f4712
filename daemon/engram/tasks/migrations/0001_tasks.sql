-- Tasks (engram.tasks): submitted plans, their steps' states, and the steps' outputs stored
-- content-addressed.

-- One row per task. A task found 'queued' or 'running' at start was cut short by a stop or a
-- crash and is queued again; its finished steps are not run again.
CREATE TABLE tasks_runs (
    id          TEXT    PRIMARY KEY,
    state       TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    plan        TEXT    NOT NULL CHECK (json_valid(plan)),       -- the validated plan, as submitted
    namespace   TEXT,                                             -- filled into tool calls that name none
    principal   TEXT    NOT NULL CHECK (json_valid(principal)),  -- who submitted it: tools run as them
    deadline_at REAL,                                             -- unix time past which it fails
    created_at  REAL    NOT NULL,
    started_at  REAL,
    finished_at REAL,
    error       TEXT    CHECK (error IS NULL OR json_valid(error))
) STRICT;

CREATE INDEX tasks_runs_created ON tasks_runs (created_at);

-- One row per step of a task, in the order the executor runs them (position).
CREATE TABLE tasks_steps (
    task_id     TEXT    NOT NULL REFERENCES tasks_runs (id) ON DELETE CASCADE,
    step_id     TEXT    NOT NULL,
    position    INTEGER NOT NULL,
    tool        TEXT    NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed', 'cancelled', 'skipped')),
    output_hash TEXT,                                             -- tasks_outputs.hash once done
    error       TEXT    CHECK (error IS NULL OR json_valid(error)),
    started_at  REAL,
    finished_at REAL,
    PRIMARY KEY (task_id, step_id)
) STRICT, WITHOUT ROWID;

-- Step outputs as canonical JSON, keyed by the SHA-256 of those bytes (hex): equal outputs are
-- stored once.
CREATE TABLE tasks_outputs (
    hash TEXT    PRIMARY KEY,
    size INTEGER NOT NULL,
    body BLOB    NOT NULL
) STRICT, WITHOUT ROWID;
