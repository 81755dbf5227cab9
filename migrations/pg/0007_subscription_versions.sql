-- Subscription versions (Store's Versioned): the Version of each
-- subscription, as the Quota wrote it; 0 for the subscriptions written
-- before, which are not checked.
--
-- quota_use is quota_apply after step 0 of Op: a use judged against a
-- subscription (p_version > 0), or against the default plan of a subject
-- without one (p_version = -1), applies only if that is still what is
-- stored; otherwise o_status is 'stale' and nothing is written.
-- p_version 0 checks nothing. The check reads the subscription in the
-- statement's snapshot: a Subscribe that committed before the use began
-- is seen. quota_batch makes the same check for every apply, with the
-- argument v.
--
-- quota_batch takes the locks of the batch first (its steps 1 to 3) only
-- when the batch holds commits or cancels ("lock": true). A batch of
-- applies alone comes sorted by subject and action (SQLStore keeps the
-- order of the calls of each subject and action, which commute with the
-- others): its calls then lock their counters in the global order of
-- 0006 as they go, without locking them twice.
ALTER TABLE quota_subscriptions ADD COLUMN version bigint NOT NULL DEFAULT 0;

-- A key whose hold was committed stays claimed once the hold is gone
-- (settled, which quota_batch and SQLStore's commit set); one whose hold
-- was cancelled, or expired uncommitted, is claimed anew by the next use
-- of the key: quota_use and quota_batch release it first
-- (quota_release_key).
ALTER TABLE quota_idempotency_keys ADD COLUMN settled boolean NOT NULL DEFAULT false;

CREATE FUNCTION quota_release_key(p_subject text, p_key text, p_now timestamptz) RETURNS void LANGUAGE sql AS $fn$
    DELETE FROM quota_idempotency_keys k
     WHERE k.subject = p_subject AND k.idempotency_key = p_key AND k.hold_id IS NOT NULL AND NOT k.settled
       AND NOT EXISTS (SELECT 1 FROM quota_holds h WHERE h.id = k.hold_id AND h.expires_at > p_now)
$fn$;

CREATE FUNCTION quota_use(
    p_version      bigint,
    p_subject      text,
    p_action       text,
    p_periods      text,
    p_starts       text,
    p_ends         text,
    p_maxes        text,
    p_amount       bigint,
    p_enforce      boolean,
    p_now          timestamptz,
    p_time         timestamptz,
    p_resource_id  text,
    p_metadata     text,
    p_key          text,
    p_fingerprint  text,
    p_hold_id      text,
    p_hold_expires timestamptz,
    p_marks        text,
    OUT o_status       text,
    OUT o_record_id    bigint,
    OUT o_hold_id      text,
    OUT o_used         bigint[],
    OUT o_held         bigint[],
    OUT o_limits       bigint[],
    OUT o_replay       json,
    OUT o_action       text,
    OUT o_hold_expires timestamptz,
    OUT o_crossed      bigint[]
) LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
BEGIN
    IF p_version <> 0 AND (CASE WHEN p_version = -1
                                THEN EXISTS (SELECT 1 FROM quota_subscriptions WHERE subject = p_subject)
                                ELSE NOT EXISTS (SELECT 1 FROM quota_subscriptions WHERE subject = p_subject AND version = p_version)
                           END) THEN
        o_status := 'stale';
        RETURN;
    END IF;
    IF p_key IS NOT NULL THEN
        PERFORM quota_release_key(p_subject, p_key, p_now);
    END IF;
    SELECT * INTO o_status, o_record_id, o_hold_id, o_used, o_held, o_limits, o_replay, o_action, o_hold_expires, o_crossed
      FROM quota_apply(p_subject, p_action, p_periods, p_starts, p_ends, p_maxes, p_amount, p_enforce, p_now, p_time,
                       p_resource_id, p_metadata, p_key, p_fingerprint, p_hold_id, p_hold_expires, p_marks);
END
$fn$;

CREATE OR REPLACE FUNCTION quota_batch(
    p_batch jsonb,
    OUT o_i            integer,
    OUT o_status       text,
    OUT o_record_id    bigint,
    OUT o_hold_id      text,
    OUT o_used         text,
    OUT o_held         text,
    OUT o_limits       text,
    OUT o_replay       text,
    OUT o_action       text,
    OUT o_hold_expires timestamptz,
    OUT o_crossed      text,
    OUT o_subject      text,
    OUT o_amount       bigint,
    OUT o_resource_id  text,
    OUT o_metadata     text,
    OUT o_key          text,
    OUT o_time         timestamptz
) RETURNS SETOF record LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $fn$
DECLARE
    v_holds text[] := ARRAY(SELECT jsonb_array_elements_text(coalesce(p_batch->'holds', '[]')));
    v_op    record;
    v_a     record;
    v_c     record;
    v_n     integer;
BEGIN
    -- Steps 1 to 3 only when the batch asks for them (lock): a batch of
    -- applies alone comes sorted by subject and action, and its calls
    -- lock their counters in that order already.
    IF coalesce((p_batch->>'lock')::boolean, true) THEN
    -- 1. The holds, by id.
    PERFORM 1 FROM quota_holds h WHERE h.id = ANY (v_holds) ORDER BY h.id COLLATE "C" FOR UPDATE;

    -- 2. The counters of the applies that do not exist yet.
    INSERT INTO quota_summaries (subject, action, period, period_start, period_end, used, limit_max)
    SELECT k.s, k.a, k.p, k.st, k.en, 0, NULL
      FROM jsonb_to_recordset(coalesce(p_batch->'counters', '[]')) AS k(s text, a text, p text, st timestamptz, en timestamptz)
     ORDER BY k.s COLLATE "C", k.a COLLATE "C", quota_period_rank(k.p), k.st
    ON CONFLICT DO NOTHING;

    -- 3. Every counter of the batch: those of the applies, those of the
    -- holds.
    PERFORM 1 FROM quota_summaries s
      JOIN (SELECT k.s, k.a, k.p, k.st
              FROM jsonb_to_recordset(coalesce(p_batch->'counters', '[]')) AS k(s text, a text, p text, st timestamptz)
            UNION
            SELECT c.subject, c.action, c.period, c.period_start
              FROM quota_hold_counters c WHERE c.hold_id = ANY (v_holds)) k
        ON s.subject = k.s AND s.action = k.a AND s.period = k.p AND s.period_start = k.st
     ORDER BY s.subject COLLATE "C", s.action COLLATE "C", quota_period_rank(s.period), s.period_start
       FOR UPDATE OF s;
    END IF;

    -- 4. The calls, in order, each read from the JSON once.
    FOR v_op IN SELECT x.*, e.i::integer AS i
                  FROM jsonb_array_elements(p_batch->'ops') WITH ORDINALITY AS e(v, i),
                       jsonb_to_record(e.v) AS x(k text, s text, a text, p text, st text, en text, mx text, n bigint,
                                                 f boolean, now timestamptz, t timestamptz, r text, m text, key text,
                                                 fp text, h text, he timestamptz, mk text, v bigint, id text)
                 ORDER BY e.i LOOP
        o_i := v_op.i;
        o_status := NULL; o_record_id := NULL; o_hold_id := NULL; o_used := NULL; o_held := NULL;
        o_limits := NULL; o_replay := NULL; o_action := NULL; o_hold_expires := NULL; o_crossed := NULL;
        o_subject := NULL; o_amount := NULL; o_resource_id := NULL; o_metadata := NULL; o_key := NULL; o_time := NULL;
        CASE v_op.k
        WHEN 'apply' THEN
            IF coalesce(v_op.v, 0) <> 0 AND (CASE WHEN v_op.v = -1
                                                THEN EXISTS (SELECT 1 FROM quota_subscriptions WHERE subject = v_op.s)
                                                ELSE NOT EXISTS (SELECT 1 FROM quota_subscriptions WHERE subject = v_op.s AND version = v_op.v)
                                           END) THEN
                o_status := 'stale';
            ELSE
                IF v_op.key IS NOT NULL THEN
                    PERFORM quota_release_key(v_op.s, v_op.key, v_op.now);
                END IF;
                SELECT * INTO v_a FROM quota_apply(v_op.s, v_op.a, v_op.p, v_op.st, v_op.en, v_op.mx, v_op.n,
                    coalesce(v_op.f, false), v_op.now, v_op.t, v_op.r, v_op.m, v_op.key, v_op.fp, v_op.h, v_op.he, v_op.mk);
                o_status := v_a.o_status;
                o_record_id := v_a.o_record_id;
                o_hold_id := v_a.o_hold_id;
                o_used := v_a.o_used::text;
                o_held := v_a.o_held::text;
                o_limits := v_a.o_limits::text;
                o_replay := v_a.o_replay::text;
                o_action := v_a.o_action;
                o_hold_expires := v_a.o_hold_expires;
                o_crossed := v_a.o_crossed::text;
            END IF;
        WHEN 'commit' THEN
            SELECT * INTO v_c FROM quota_commit(v_op.id, v_op.n, v_op.now);
            o_status := v_c.o_status;
            o_record_id := v_c.o_id;
            o_subject := v_c.o_subject;
            o_action := v_c.o_action;
            o_amount := v_c.o_amount;
            o_resource_id := v_c.o_resource_id;
            o_metadata := v_c.o_metadata;
            o_key := v_c.o_key;
            o_time := v_c.o_time;
            IF v_c.o_status = 'committed' AND v_c.o_key IS NOT NULL THEN
                UPDATE quota_idempotency_keys SET settled = true
                 WHERE subject = v_c.o_subject AND idempotency_key = v_c.o_key AND hold_id = v_op.id;
            END IF;
        WHEN 'cancel' THEN
            DELETE FROM quota_holds WHERE id = v_op.id;
            GET DIAGNOSTICS v_n = ROW_COUNT;
            o_status := CASE WHEN v_n > 0 THEN 'cancelled' ELSE 'not_found' END;
        ELSE
            RAISE EXCEPTION 'quota: unknown call %', v_op.k;
        END CASE;
        RETURN NEXT;
    END LOOP;
END
$fn$;
