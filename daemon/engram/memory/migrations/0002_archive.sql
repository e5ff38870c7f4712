-- Archived episodes and the replay log (engram.memory, for sleep's forgetting and dream replay).

-- An archived episode (archived_at: when, Unix seconds; NULL: live) is out of recall, out of the
-- vector index and out of the live counts, but still readable by id and forgettable; sleep's
-- forgetting stage deletes it (audited) once sleep.forgetting.grace has passed, and a rollback
-- makes it live again. The index serves the live-only scans (seqs_of, counts: (namespace, NULL)
-- ranges, in seq order) and the search for archived episodes past their grace.
ALTER TABLE memory_episodes ADD COLUMN archived_at REAL;

CREATE INDEX memory_episodes_ns_archived ON memory_episodes (namespace, archived_at);

-- A bounded sample of past memory.recall queries (memory.replay_log.*), replayed by sleep to
-- check that consolidation did not make recall worse. Only the query vector is kept (never the
-- query text), with k and the ids it returned; memory.forget all empties a namespace's sample.
CREATE TABLE memory_replay_queries (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT    NOT NULL,
    time      REAL    NOT NULL,                 -- when the recall ran
    k         INTEGER NOT NULL CHECK (k > 0),
    dim       INTEGER NOT NULL CHECK (dim > 0),
    vector    BLOB    NOT NULL CHECK (length(vector) = 4 * dim),  -- float32 little-endian, unit length
    results   TEXT    NOT NULL CHECK (json_valid(results))        -- JSON array of the episode ids returned, best first
) STRICT;

CREATE INDEX memory_replay_queries_ns ON memory_replay_queries (namespace, seq);
