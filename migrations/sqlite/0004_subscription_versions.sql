-- Subscription versions (Store's Versioned): the Version of each
-- subscription, as the Quota wrote it; 0 for the subscriptions written
-- before, which are not checked.
ALTER TABLE quota_subscriptions ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
