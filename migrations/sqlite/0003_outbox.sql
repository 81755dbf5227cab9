-- The notifications outbox, and the marks of Used kept with their
-- counter.
--
--   - quota_summaries.mark_amounts keeps the CounterOp.Marks of the
--     counter's last write (a JSON array of integers; NULL for none), as
--     limit_max keeps its Max: a Commit sets the marks of the committed
--     hold from it. Marks compare used, the recorded usage: a use with a
--     hold sets none, its commit does.
--   - quota_notices is the outbox (Store's Outbox, Notice): a use or a
--     commit that sets marks on a counter adds one row, for the highest
--     of them, in its transaction. AUTOINCREMENT: the ID of a notice is
--     never given to another, also once it is delivered and deleted.
--   - quota_holds_expiry serves SQLStore.Sweep, which removes the expired
--     holds of every subject.

ALTER TABLE quota_summaries ADD COLUMN mark_amounts TEXT;

-- One row per crossing to deliver: the counter as the use left it (used,
-- limit_max), the index of its highest mark the use set, the time of the
-- use's record, the deliveries tried (attempts), when it may be claimed
-- (due_at) and until when a claim holds it (claimed_until).
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

CREATE INDEX quota_holds_expiry ON quota_holds (expires_at);
