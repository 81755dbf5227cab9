-- An index for analytics: a subject's series (Quota.Series, see Sums in
-- store_sql.go) reads its range as one range of (subject, recorded_at),
-- an index-only scan. quota_records_subject_action_time cannot serve it:
-- a series does not fix the action. The top subjects of an action
-- (Quota.TopSubjects) do well enough with quota_records_time.
CREATE INDEX quota_records_subject_time ON quota_records (subject, recorded_at) INCLUDE (action, amount);
