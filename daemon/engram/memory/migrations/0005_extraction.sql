-- Knowledge extraction's progress: each extractor has read the episodes up to its watermark (an
-- episode seq; no row: none read yet, so the episodes of a database older than this migration
-- are extracted too). The episodes past it are its queue, durable by construction: an episode is
-- committed before it is acknowledged, and a batch's concepts and relations commit in the same
-- transaction as the watermark that moves past it, so a crash loses nothing and repeats nothing.
CREATE TABLE memory_extraction_cursors (
    extractor  TEXT    PRIMARY KEY,
    watermark  INTEGER NOT NULL,
    updated_at REAL    NOT NULL
) STRICT, WITHOUT ROWID;
