-- Sleep consolidation (engram.sleep): episode salience, runs and their reports, stage resume
-- cursors, and the journal of undoable changes a rollback replays backwards.

-- 0..1, written by the importance stage; NULL until an episode is first scored.
ALTER TABLE memory_episodes ADD COLUMN salience REAL CHECK (salience IS NULL OR (salience >= 0 AND salience <= 1));

-- One row per consolidation run. outcome is NULL while it runs; a run found without an outcome
-- at start was cut short by a crash or kill and becomes 'interrupted'.
CREATE TABLE sleep_runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    trigger     TEXT    NOT NULL CHECK (trigger IN ('manual', 'idle', 'schedule')),
    namespace   TEXT,                         -- the one namespace asked for, or NULL: all of them
    stages      TEXT    NOT NULL CHECK (json_valid(stages)),      -- JSON list of stage names
    started_at  REAL    NOT NULL,
    finished_at REAL,
    outcome     TEXT    CHECK (outcome IS NULL OR outcome IN ('completed', 'failed', 'interrupted')),
    resumed_by  INTEGER,                      -- the run that took over an interrupted one
    report      TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(report))
) STRICT;

-- Where an interrupted stage stopped: the next attempt at the same run picks it up.
CREATE TABLE sleep_cursors (
    run       INTEGER NOT NULL,                 -- sleep_runs.id (no foreign key: stages run standalone in tests)
    namespace TEXT    NOT NULL,
    stage     TEXT    NOT NULL,
    cursor    TEXT    NOT NULL CHECK (json_valid(cursor)),
    PRIMARY KEY (run, namespace, stage)
) STRICT, WITHOUT ROWID;

-- Stages finished within a run (per namespace; '' for per-run stages): a resumed run skips them.
CREATE TABLE sleep_stage_done (
    run       INTEGER NOT NULL,                 -- sleep_runs.id (no foreign key: stages run standalone in tests)
    namespace TEXT    NOT NULL,
    stage     TEXT    NOT NULL,
    seconds   REAL    NOT NULL,
    figures   TEXT    NOT NULL CHECK (json_valid(figures)),
    rolled_back INTEGER NOT NULL DEFAULT 0 CHECK (rolled_back IN (0, 1)),
    done_at   REAL    NOT NULL,
    PRIMARY KEY (run, namespace, stage)
) STRICT, WITHOUT ROWID;

-- Undoable changes: what was there before (JSON), keyed by what changed (kind, ref).
CREATE TABLE sleep_changes (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    run       INTEGER NOT NULL,                 -- sleep_runs.id (no foreign key: stages run standalone in tests)
    namespace TEXT    NOT NULL,
    stage     TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    ref       TEXT    NOT NULL,
    before    TEXT    NOT NULL CHECK (json_valid(before))
) STRICT;

CREATE INDEX sleep_changes_run ON sleep_changes (run, namespace, stage, kind);
