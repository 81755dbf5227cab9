-- Batches: quota_batch performs several Apply, Commit and Cancel calls of
-- SQLStore in one statement, so in one round trip and one transaction,
-- each with the outcome it would have alone, in their order.
--
-- p_batch is a jsonb object:
--
--   holds:    the ids of the holds that the commits and cancels name;
--   counters: the counters of the applies, as objects {s, a, p, st, en}
--             (subject, action, period, period start and end);
--   ops:      the calls, in order, each an object with k, the kind:
--             'apply' with the arguments of quota_apply (s, a, p, st, en,
--             mx, n, f, now, t, r, m, key, fp, h, he, mk, the arrays in
--             their text form), 'commit' with id, n and now, or 'cancel'
--             with id.
--
-- Before the first call it takes every lock the batch needs, in one global
-- order, so that batches of several processes, and the single calls of
-- quota_apply and quota_commit, never wait for each other in a cycle:
-- first the holds, by id, as quota_commit locks its hold before its
-- counters; then the counters, by subject, action, period (the order of
-- the Period constants: none, hour, day, week, month, year) and start, as
-- quota_apply locks the counters of a use (CounterKey.Less) and
-- quota_commit those of a hold. It creates the counters that do not exist
-- yet first, as quota_apply would, in that order. Only idempotency keys
-- are claimed in call order: two batches that share keys in opposite
-- orders may deadlock, which PostgreSQL breaks by failing one of them,
-- and SQLStore tries that batch again.
--
-- Then it calls quota_apply, quota_commit, or deletes the hold of a
-- cancel, in order, and returns one row per call: o_i, its position from
-- 1; o_status and the columns of quota_apply's result (arrays as text),
-- or of quota_commit's (o_record_id is the record's id), or, for a
-- cancel, o_status 'cancelled' or 'not_found'. None of them raises an
-- error for an outcome of its own (a refusal, a conflict, an unknown
-- hold), and each undoes what it wrote for a refusal, so that a call
-- never affects its neighbours but through the counters it charges. An
-- error fails the whole statement: no call of the batch is applied.
-- quota_period_rank orders periods as the Period constants do.
CREATE FUNCTION quota_period_rank(p text) RETURNS integer LANGUAGE sql IMMUTABLE AS $fn$
    SELECT CASE p WHEN 'none' THEN 0 WHEN 'hour' THEN 1 WHEN 'day' THEN 2 WHEN 'week' THEN 3
                  WHEN 'month' THEN 4 WHEN 'year' THEN 5 ELSE 6 END
$fn$;

CREATE FUNCTION quota_batch(
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

    -- 4. The calls, in order.
    FOR v_op IN SELECT e.value AS e, e.ordinality::integer AS i
                  FROM jsonb_array_elements(p_batch->'ops') WITH ORDINALITY AS e LOOP
        o_i := v_op.i;
        o_status := NULL; o_record_id := NULL; o_hold_id := NULL; o_used := NULL; o_held := NULL;
        o_limits := NULL; o_replay := NULL; o_action := NULL; o_hold_expires := NULL; o_crossed := NULL;
        o_subject := NULL; o_amount := NULL; o_resource_id := NULL; o_metadata := NULL; o_key := NULL; o_time := NULL;
        CASE v_op.e->>'k'
        WHEN 'apply' THEN
            SELECT * INTO v_a FROM quota_apply(
                v_op.e->>'s', v_op.e->>'a', v_op.e->>'p', v_op.e->>'st', v_op.e->>'en', v_op.e->>'mx',
                (v_op.e->>'n')::bigint, (v_op.e->>'f')::boolean, (v_op.e->>'now')::timestamptz,
                (v_op.e->>'t')::timestamptz, v_op.e->>'r', v_op.e->>'m', v_op.e->>'key', v_op.e->>'fp',
                v_op.e->>'h', (v_op.e->>'he')::timestamptz, v_op.e->>'mk');
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
        WHEN 'commit' THEN
            SELECT * INTO v_c FROM quota_commit(v_op.e->>'id', (v_op.e->>'n')::bigint, (v_op.e->>'now')::timestamptz);
            o_status := v_c.o_status;
            o_record_id := v_c.o_id;
            o_subject := v_c.o_subject;
            o_action := v_c.o_action;
            o_amount := v_c.o_amount;
            o_resource_id := v_c.o_resource_id;
            o_metadata := v_c.o_metadata;
            o_key := v_c.o_key;
            o_time := v_c.o_time;
        WHEN 'cancel' THEN
            DELETE FROM quota_holds WHERE id = v_op.e->>'id';
            GET DIAGNOSTICS v_n = ROW_COUNT;
            o_status := CASE WHEN v_n > 0 THEN 'cancelled' ELSE 'not_found' END;
        ELSE
            RAISE EXCEPTION 'quota: unknown call %', v_op.e->>'k';
        END CASE;
        RETURN NEXT;
    END LOOP;
END
$fn$;
