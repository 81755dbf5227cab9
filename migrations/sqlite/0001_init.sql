-- quota schema for SQLite.
--
-- Times are INTEGER microseconds since the Unix epoch, UTC; the zero time
-- (the start of a counter of period "none") is -62135596800000000. STRICT
-- tables refuse a REAL where an INTEGER belongs, so an int64 overflow can
-- never be stored as a float.

-- The ledger: one row per use, never updated.
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

CREATE INDEX quota_records_subject_action_time ON quota_records (subject, action, recorded_at);
CREATE INDEX quota_records_time ON quota_records (recorded_at);

-- The per-period summaries (Store's Counter): used is the sum of the
-- amounts of the records charged to the window. limit_max is the Max in
-- force at the last write; NULL for a row never written (PostgreSQL
-- creates the row before it locks it, and keeps it if the use is then
-- refused). marks has bit l-1 set once level l (warning, critical,
-- exceeded) was reached in the window. Rows are never deleted.
CREATE TABLE quota_summaries (
    subject      TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    period       TEXT    NOT NULL,
    period_start INTEGER NOT NULL,
    period_end   INTEGER NOT NULL,
    used         INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0),
    limit_max    INTEGER,
    marks        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, action, period, period_start)
) STRICT, WITHOUT ROWID;

-- Rollups of pruned records: per subject, action and quarter hour
-- (bucket_start, microseconds), the sum of their amounts and their count.
CREATE TABLE quota_rollups (
    subject      TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    bucket_start INTEGER NOT NULL,
    amount       INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    PRIMARY KEY (subject, action, bucket_start)
) STRICT, WITHOUT ROWID;

CREATE INDEX quota_rollups_time ON quota_rollups (bucket_start);

-- Reservations: an amount held until expires_at, then committed into a
-- record, cancelled, or left to expire. The record-to-be is kept here.
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

CREATE INDEX quota_holds_subject_action_expiry ON quota_holds (subject, action, expires_at);

-- The counters a hold is charged to, in the order they are locked (pos).
-- A counter's held amount is the sum of its rows with expires_at > now.
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

CREATE INDEX quota_hold_counters_counter ON quota_hold_counters (subject, action, period, period_start, expires_at, amount);

-- Idempotency keys, per subject, with the payload's fingerprint and the
-- first outcome (counters: a JSON array, see store_sql.go).
CREATE TABLE quota_idempotency_keys (
    subject         TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    record_id       INTEGER,
    hold_id         TEXT,
    hold_expires_at INTEGER,
    counters        TEXT,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (subject, idempotency_key)
) STRICT, WITHOUT ROWID;

-- Subscriptions: subject -> plan, billing anchor, overrides (JSON).
CREATE TABLE quota_subscriptions (
    subject      TEXT    NOT NULL PRIMARY KEY,
    plan         TEXT    NOT NULL,
    anchor       INTEGER NOT NULL,
    time_zone    TEXT    NOT NULL,
    overrides    TEXT,
    next_plan    TEXT,
    next_plan_at INTEGER
) STRICT, WITHOUT ROWID;
