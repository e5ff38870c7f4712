-- Beliefs that update and episodes that do not repeat (engram.memory).

-- A relation whose validity a newer fact of a functional type ended (same source and type,
-- another destination, starting later) is kept, closed at the newer fact's valid_from, and names
-- that fact here; so is a relation retracted because a contradicting fact with the same start
-- corrected it. NULL: nothing ended it. Recall lowers the episodes that are sources of such
-- relations only (see memory/scoring.py).
ALTER TABLE memory_relations ADD COLUMN superseded_by TEXT;

-- The SHA-256 of an episode's normalised text (Unicode NFKC, case-folded, runs of whitespace made
-- one space, trimmed): one live episode per normalised text in a namespace. The unique index is
-- what makes memory.remember's deduplication race free. Rows written before this migration have
-- no key until memory fills them in at start (the first of each text keeps it; older duplicates
-- stay NULL, left to sleep's near-duplicate merge); archived episodes give theirs up.
ALTER TABLE memory_episodes ADD COLUMN text_key TEXT;

CREATE UNIQUE INDEX memory_episodes_ns_text_key ON memory_episodes (namespace, text_key) WHERE text_key IS NOT NULL;
