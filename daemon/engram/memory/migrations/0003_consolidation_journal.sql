-- What sleep consolidation changed in memory, for its rollback, and where its units stopped.
-- Both are memory's because they commit in the same transaction as the change they describe;
-- sleep names the rows by a tag (run, namespace, stage) that memory keeps but does not interpret.
-- (Until now the journal was sleep's table sleep_changes: sleep's migration 0002 copies an
-- unfinished run's entries from there into memory_changes and drops it.)

-- Undoable changes: what was there before (JSON), keyed by what changed (kind, ref).
CREATE TABLE memory_changes (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    run       INTEGER NOT NULL,
    namespace TEXT    NOT NULL,
    stage     TEXT    NOT NULL,
    kind      TEXT    NOT NULL,
    ref       TEXT    NOT NULL,
    before    TEXT    NOT NULL CHECK (json_valid(before))
) STRICT;

CREATE INDEX memory_changes_tag ON memory_changes (run, namespace, stage, kind);

-- A consolidation stage's resume cursor, when it must commit with the change it follows (an
-- opaque JSON object; sleep keeps its other cursors in its own table).
CREATE TABLE memory_checkpoints (
    run       INTEGER NOT NULL,
    namespace TEXT    NOT NULL,
    stage     TEXT    NOT NULL,
    state     TEXT    NOT NULL CHECK (json_valid(state)),
    PRIMARY KEY (run, namespace, stage)
) STRICT, WITHOUT ROWID;
