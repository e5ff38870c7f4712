-- Stable learning (router/stability.py): per route, the last stable snapshot of the assessor's
-- weights, the learning rate in force (lowered at each revert) and how many reverts there were.
CREATE TABLE router_stability (
    route            TEXT    PRIMARY KEY,
    slow             TEXT    NOT NULL CHECK (json_valid(slow)),
    fast             TEXT    NOT NULL CHECK (json_valid(fast)),
    snapshot_rate    REAL    NOT NULL,
    snapshot_updates INTEGER NOT NULL,
    rate             REAL    NOT NULL,
    reverts          INTEGER NOT NULL DEFAULT 0,
    updated_at       REAL    NOT NULL
) STRICT;
