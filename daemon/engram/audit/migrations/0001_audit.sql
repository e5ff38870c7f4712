-- The signed audit log (engram.audit): an append-only RFC 9162 Merkle log and its checkpoints.

-- One row per entry. seq is the entry's 0-based position in the log, which is also its leaf
-- index in the Merkle tree; entry holds the canonical JSON bytes exactly as they were hashed.
CREATE TABLE audit_entries (
    seq       INTEGER PRIMARY KEY CHECK (seq >= 0),
    entry     BLOB    NOT NULL,
    leaf_hash BLOB    NOT NULL CHECK (length(leaf_hash) = 32)
) STRICT;

-- The tree state: its size and compact frontier (engram.audit.merkle.CompactTree.to_bytes()).
-- Written in the same transaction as the entries it covers, so it never disagrees with them.
CREATE TABLE audit_tree (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    size     INTEGER NOT NULL CHECK (size >= 0),
    frontier BLOB    NOT NULL
) STRICT;

-- Hashes of the perfect (power-of-two, aligned) subtrees above the leaves: node (level, idx)
-- covers leaves [idx << level, (idx + 1) << level). With the leaf hashes they answer any
-- inclusion or consistency proof in O(log n) lookups.
CREATE TABLE audit_nodes (
    level INTEGER NOT NULL CHECK (level >= 1),
    idx   INTEGER NOT NULL CHECK (idx >= 0),
    hash  BLOB    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
) STRICT, WITHOUT ROWID;

-- Signed checkpoints (C2SP tlog-checkpoint notes), in the order they were signed. size, root,
-- key_id and time repeat what the signed note says, for queries; verification trusts the note
-- and checks that the columns agree with it.
CREATE TABLE audit_checkpoints (
    id     INTEGER PRIMARY KEY,
    size   INTEGER NOT NULL CHECK (size >= 0),
    root   BLOB    NOT NULL CHECK (length(root) = 32),
    note   TEXT    NOT NULL,
    key_id TEXT    NOT NULL,
    time   TEXT    NOT NULL
) STRICT;

CREATE INDEX audit_checkpoints_size ON audit_checkpoints (size);
