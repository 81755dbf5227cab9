-- The quota schema after Migrate, as sqlite_schema holds it.

-- table quota_hold_counters
CREATE TABLE quota_hold_counters (
    hold_id      TEXT    NOT NULL REFERENCES quota_holds (id) ON DELETE CASCADE,
    pos          INTEGER NOT NULL,
    subject      TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    period       TEXT    NOT NULL,
    period_start INTEGER NOT NULL,
    amount       INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (hold_id, pos)
) STRICT, WITHOUT ROWID;

-- table quota_holds
CREATE TABLE quota_holds (
    id              TEXT    NOT NULL PRIMARY KEY,
    subject         TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    amount          INTEGER NOT NULL CHECK (amount > 0),
    resource_id     TEXT,
    metadata        TEXT,
    idempotency_key TEXT,
    recorded_at     INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- table quota_idempotency_keys
CREATE TABLE quota_idempotency_keys (
    subject         TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    record_id       INTEGER,
    hold_id         TEXT,
    hold_expires_at INTEGER,
    counters        TEXT,
    created_at      INTEGER NOT NULL, settled INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, idempotency_key)
) STRICT, WITHOUT ROWID;

-- table quota_notices
CREATE TABLE quota_notices (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    subject       TEXT    NOT NULL,
    action        TEXT    NOT NULL,
    period        TEXT    NOT NULL,
    period_start  INTEGER NOT NULL,
    period_end    INTEGER NOT NULL,
    mark          INTEGER NOT NULL,
    used          INTEGER NOT NULL,
    limit_max     INTEGER NOT NULL,
    recorded_at   INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    due_at        INTEGER NOT NULL,
    claimed_until INTEGER
) STRICT;

-- table quota_records
CREATE TABLE quota_records (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    subject         TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    amount          INTEGER NOT NULL,
    resource_id     TEXT,
    metadata        TEXT,   -- a JSON object, byte for byte as given
    idempotency_key TEXT,
    recorded_at     INTEGER NOT NULL
) STRICT;

-- table quota_rollups
CREATE TABLE quota_rollups (
    subject      TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    bucket_start INTEGER NOT NULL,
    amount       INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (subject, action, bucket_start)
) STRICT, WITHOUT ROWID;

-- table quota_schema_migrations
CREATE TABLE quota_schema_migrations (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    checksum   TEXT    NOT NULL,
    applied_at INTEGER NOT NULL
) STRICT;

-- table quota_subscriptions
CREATE TABLE quota_subscriptions (
    subject      TEXT    NOT NULL PRIMARY KEY,
    plan         TEXT    NOT NULL,
    anchor       INTEGER NOT NULL,
    time_zone    TEXT    NOT NULL,
    overrides    TEXT,
    next_plan    TEXT,
    next_plan_at INTEGER
, version INTEGER NOT NULL DEFAULT 0) STRICT, WITHOUT ROWID;

-- table quota_summaries
CREATE TABLE quota_summaries (
    subject      TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    period       TEXT    NOT NULL,
    period_start INTEGER NOT NULL,
    period_end   INTEGER NOT NULL,
    used         INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
    limit_max    INTEGER,
    marks        INTEGER NOT NULL DEFAULT 0, mark_amounts TEXT,
    PRIMARY KEY (subject, action, period, period_start)
) STRICT, WITHOUT ROWID;

-- index quota_hold_counters_counter
CREATE INDEX quota_hold_counters_counter ON quota_hold_counters (subject, action, period, period_start, expires_at, amount);

-- index quota_holds_expiry
CREATE INDEX quota_holds_expiry ON quota_holds (expires_at);

-- index quota_holds_subject_action_expiry
CREATE INDEX quota_holds_subject_action_expiry ON quota_holds (subject, action, expires_at);

-- index quota_records_action_time
CREATE INDEX quota_records_action_time ON quota_records (action, recorded_at, subject, amount);

-- index quota_records_subject_action_time
CREATE INDEX quota_records_subject_action_time ON quota_records (subject, action, recorded_at);

-- index quota_records_subject_time
CREATE INDEX quota_records_subject_time ON quota_records (subject, recorded_at, action, amount);

-- index quota_records_time
CREATE INDEX quota_records_time ON quota_records (recorded_at);

-- index quota_rollups_time
CREATE INDEX quota_rollups_time ON quota_rollups (bucket_start);
