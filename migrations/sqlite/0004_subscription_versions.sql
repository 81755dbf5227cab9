-- Subscription versions (Store's Versioned): the Version of each
-- subscription, as the Quota wrote it; 0 for the subscriptions written
-- before, which are not checked.
ALTER TABLE quota_subscriptions ADD COLUMN version INTEGER NOT NULL DEFAULT 0;

-- A key whose hold was committed stays claimed once the hold is gone
-- (settled); one whose hold was cancelled, or expired uncommitted, is
-- claimed anew by the next use of the key.
ALTER TABLE quota_idempotency_keys ADD COLUMN settled INTEGER NOT NULL DEFAULT 0;
