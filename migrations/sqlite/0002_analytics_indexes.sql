-- Indexes for analytics (Quota.Series, Quota.TopSubjects), each covering
-- the columns its query sums, so that neither reads the table:
--
--   - a subject's series reads each bucket as a range of
--     (subject, recorded_at);
--   - the top subjects of an action read (action, recorded_at).
--
-- quota_records_subject_action_time cannot serve either: a series does not
-- fix the action, and a ranking does not fix the subject.
CREATE INDEX quota_records_subject_time ON quota_records (subject, recorded_at, action, amount);
CREATE INDEX quota_records_action_time ON quota_records (action, recorded_at, subject, amount);
