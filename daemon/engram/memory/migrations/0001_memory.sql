-- Memory tiers (engram.memory): episodic memory and the semantic graph. Working memory lives in
-- RAM only. Every table carries its namespace; every query filters by it.

-- Episodes. seq is the internal key: AUTOINCREMENT so that a forgotten episode's seq is never
-- reused (the vector index and its watermark speak in seqs), and it is the FAISS label and the
-- FTS rowid. id is the public, stable name ("ep_" + 26 Crockford base32 characters).
CREATE TABLE memory_episodes (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT    NOT NULL UNIQUE,
    namespace    TEXT    NOT NULL,
    session      TEXT,
    kind         TEXT    NOT NULL,
    time         REAL    NOT NULL,            -- when it happened (Unix seconds)
    recorded_at  REAL    NOT NULL,            -- when engram committed it
    text         TEXT    NOT NULL,
    text_sha256  TEXT    NOT NULL,
    metadata     TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    source       TEXT,
    importance   REAL    NOT NULL CHECK (importance >= 0 AND importance <= 1),
    pinned       INTEGER NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1)),
    access_count INTEGER NOT NULL DEFAULT 0,
    last_access  REAL,
    embedder     TEXT    NOT NULL,            -- model that made the embedding, or 'client'
    dim          INTEGER NOT NULL CHECK (dim > 0),
    embedding    BLOB    NOT NULL CHECK (length(embedding) = 4 * dim)  -- float32 little-endian, unit length
) STRICT;

CREATE INDEX memory_episodes_ns_time ON memory_episodes (namespace, time);
CREATE INDEX memory_episodes_ns_session ON memory_episodes (namespace, session, time);
CREATE INDEX memory_episodes_ns_kind ON memory_episodes (namespace, kind, time);

CREATE TABLE memory_episode_tags (
    seq INTEGER NOT NULL REFERENCES memory_episodes (seq) ON DELETE CASCADE,
    tag TEXT    NOT NULL,
    PRIMARY KEY (tag, seq)
) STRICT, WITHOUT ROWID;

CREATE INDEX memory_episode_tags_seq ON memory_episode_tags (seq);

-- Full-text index over the episodes' text, kept in step by triggers (external content: the text
-- is stored once, in memory_episodes).
CREATE VIRTUAL TABLE memory_fts USING fts5 (
    text,
    content = 'memory_episodes',
    content_rowid = 'seq',
    tokenize = 'porter unicode61 remove_diacritics 2'
);

CREATE TRIGGER memory_episodes_fts_insert AFTER INSERT ON memory_episodes BEGIN
    INSERT INTO memory_fts (rowid, text) VALUES (new.seq, new.text);
END;

CREATE TRIGGER memory_episodes_fts_delete AFTER DELETE ON memory_episodes BEGIN
    INSERT INTO memory_fts (memory_fts, rowid, text) VALUES ('delete', old.seq, old.text);
END;

CREATE TRIGGER memory_episodes_fts_update AFTER UPDATE OF text ON memory_episodes BEGIN
    INSERT INTO memory_fts (memory_fts, rowid, text) VALUES ('delete', old.seq, old.text);
    INSERT INTO memory_fts (rowid, text) VALUES (new.seq, new.text);
END;

-- Semantic memory: concepts and typed, weighted, bi-temporal relations between them.
CREATE TABLE memory_concepts (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL UNIQUE,       -- "co_" + 26 base32 characters
    namespace  TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    key        TEXT    NOT NULL,              -- case-folded name: what makes a concept the same
    kind       TEXT    NOT NULL,
    created_at REAL    NOT NULL,
    dim        INTEGER,
    embedding  BLOB,                          -- float32 little-endian, unit length, or NULL
    UNIQUE (namespace, key)
) STRICT;

CREATE TABLE memory_relations (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,    -- "re_" + 26 base32 characters
    namespace     TEXT    NOT NULL,
    src           INTEGER NOT NULL REFERENCES memory_concepts (seq) ON DELETE CASCADE,
    dst           INTEGER NOT NULL REFERENCES memory_concepts (seq) ON DELETE CASCADE,
    type          TEXT    NOT NULL,
    weight        REAL    NOT NULL CHECK (weight >= 0 AND weight <= 1),
    valid_from    REAL,                       -- when the fact began to hold (NULL: always had)
    valid_to      REAL,                       -- when it stopped holding (NULL: still holds)
    recorded_at   REAL    NOT NULL,           -- when engram learned it
    retracted_at  REAL,                       -- when engram stopped believing it (NULL: believed)
    retracted_by  TEXT,                       -- id of the relation that superseded it
    sourced       INTEGER NOT NULL DEFAULT 0  -- 1 when it was learned from episodes
) STRICT;

CREATE INDEX memory_relations_src ON memory_relations (src, type);
CREATE INDEX memory_relations_dst ON memory_relations (dst, type);

-- Which episodes a relation was learned from. Forgetting an episode removes these rows; a
-- relation learned only from forgotten episodes is deleted with them.
CREATE TABLE memory_relation_sources (
    relation INTEGER NOT NULL REFERENCES memory_relations (seq) ON DELETE CASCADE,
    episode  INTEGER NOT NULL REFERENCES memory_episodes (seq) ON DELETE CASCADE,
    PRIMARY KEY (relation, episode)
) STRICT, WITHOUT ROWID;

CREATE INDEX memory_relation_sources_episode ON memory_relation_sources (episode);

-- Which episodes mention a concept (spreading activation reaches episodes through these).
CREATE TABLE memory_concept_episodes (
    concept INTEGER NOT NULL REFERENCES memory_concepts (seq) ON DELETE CASCADE,
    episode INTEGER NOT NULL REFERENCES memory_episodes (seq) ON DELETE CASCADE,
    weight  REAL    NOT NULL DEFAULT 1.0 CHECK (weight >= 0 AND weight <= 1),
    PRIMARY KEY (concept, episode)
) STRICT, WITHOUT ROWID;

CREATE INDEX memory_concept_episodes_episode ON memory_concept_episodes (episode);
