-- HRM router (engram.router): the assessor's weights, calibrated thresholds, the System-1
-- pattern cache and the decisions that feedback and calibration refer to.

-- Assessor weights per route, as JSON objects {feature: weight}. The row named '*prior' holds the
-- starting weights every route begins from (and returns to on route.reset): the weights live
-- here, not in code. slow: consolidated; fast: online updates since the last consolidation.
CREATE TABLE router_weights (
    route          TEXT    PRIMARY KEY,
    slow           TEXT    NOT NULL CHECK (json_valid(slow)),
    fast           TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(fast)),
    updates        INTEGER NOT NULL DEFAULT 0,
    consolidations INTEGER NOT NULL DEFAULT 0,
    updated_at     REAL    NOT NULL
) STRICT;

INSERT INTO router_weights (route, slow, fast, updated_at) VALUES (
    '*prior',
    '{"bias": -2.0, "log_size": 0.0, "spread": 0.0, "entropy": 0.0, "novelty": 1.0, "seen": -2.0, "depth": 1.5, "has_conf": 0.0, "low_conf": 6.0, "low_margin": 2.0}',
    '{}',
    0
);

-- Thresholds set by route.calibrate; NULL keeps the configured value.
CREATE TABLE router_thresholds (
    route          TEXT PRIMARY KEY,
    threshold      REAL,
    auto_threshold REAL,
    target         TEXT NOT NULL,
    calibrated_at  REAL NOT NULL
) STRICT;

-- System 1: answers by input hash; text answers also carry the text's embedding (float32).
CREATE TABLE router_cache (
    route      TEXT NOT NULL,
    key        TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    decision   TEXT NOT NULL,
    target     TEXT NOT NULL,
    answer     TEXT NOT NULL CHECK (json_valid(answer)),
    embedding  BLOB,
    PRIMARY KEY (route, key)
) STRICT;

CREATE INDEX router_cache_age ON router_cache (route, created_at);

-- Decisions (newest kept, bounded): what feedback and calibration learn from.
CREATE TABLE router_decisions (
    id          TEXT PRIMARY KEY,
    route       TEXT NOT NULL,
    time        REAL NOT NULL,
    taken       TEXT NOT NULL,
    features    TEXT NOT NULL CHECK (json_valid(features)),
    confidence  REAL,
    p_slow      REAL NOT NULL,
    agreed      INTEGER,
    feedback    TEXT
) STRICT;

CREATE INDEX router_decisions_route_time ON router_decisions (route, time);
