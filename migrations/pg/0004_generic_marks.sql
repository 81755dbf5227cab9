-- quota_apply with marks of any width: p_marks holds the same number of
-- amounts per counter (Store's CounterOp.Marks, padded with 0), at most
-- 15; o_crossed, per counter, the bits of the marks the use reached first
-- (bit m for mark m). The rest is as in 0002.
CREATE OR REPLACE FUNCTION quota_apply(
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
DECLARE
    v_periods text[]        := p_periods::text[];
    v_starts  timestamptz[] := p_starts::timestamptz[];
    v_ends    timestamptz[] := p_ends::timestamptz[];
    v_maxes   bigint[]      := p_maxes::bigint[];
    v_marks   bigint[]      := p_marks::bigint[];
    v_n       integer       := coalesce(cardinality(v_periods), 0);
    v_w       integer       := CASE WHEN coalesce(cardinality(v_periods), 0) = 0 THEN 0 ELSE coalesce(cardinality(p_marks::bigint[]), 0) / cardinality(v_periods) END;
    v_old     bigint[]      := '{}';
    v_bits    bigint;
    v_hold    integer       := CASE WHEN p_hold_id IS NULL THEN 0 ELSE 1 END;
    v_charge  bigint        := CASE WHEN p_hold_id IS NULL THEN p_amount ELSE 0 END;
    v_seq     bigint[]      := '{}';
    v_snap    boolean       := false;
    v_missing boolean       := false;
    v_done    integer       := 0;
    v_used    bigint;
    v_held    bigint;
    v_limit   bigint;
    v_s       bigint;
    v_m       bigint;
    v_key     quota_idempotency_keys%ROWTYPE;
BEGIN
    o_used := '{}'; o_held := '{}'; o_limits := '{}'; o_crossed := '{}';

    -- 1. A key already used gives the first outcome, or a conflict.
    IF p_key IS NOT NULL THEN
        SELECT * INTO v_key FROM quota_idempotency_keys k
         WHERE k.subject = p_subject AND k.idempotency_key = p_key;
        IF FOUND THEN
            SELECT * INTO o_status, o_record_id, o_hold_id, o_used, o_held, o_limits, o_replay, o_action, o_hold_expires
              FROM quota_replay(p_subject, p_key, p_fingerprint);
            RETURN;
        END IF;
    END IF;

    -- 2. With several counters or a key, read the counters first, without
    -- a lock: a use they refuse is refused before anything is written.
    IF v_n > 1 OR p_key IS NOT NULL THEN
        v_snap := true;
        FOR i IN 1 .. v_n LOOP
            SELECT s.used, s.limit_max, s.hold_seq,
                   (SELECT coalesce(sum(c.amount), 0) FROM quota_hold_counters c
                     WHERE c.subject = p_subject AND c.action = p_action
                       AND c.period = v_periods[i] AND c.period_start = v_starts[i]
                       AND c.expires_at > p_now)::bigint
              INTO v_used, v_limit, v_s, v_held
              FROM quota_summaries s
             WHERE s.subject = p_subject AND s.action = p_action
               AND s.period = v_periods[i] AND s.period_start = v_starts[i];
            IF NOT FOUND THEN
                v_missing := true; -- and no hold: holds charge existing rows
            END IF;
            o_used[i] := coalesce(v_used, 0);
            o_limits[i] := coalesce(v_limit, 0);
            v_seq[i] := coalesce(v_s, 0);
            o_held[i] := coalesce(v_held, 0);
            v_used := NULL; v_limit := NULL; v_s := NULL; v_held := NULL;
        END LOOP;
        o_status := quota_decide(o_used, o_held, v_maxes, p_amount, p_enforce);
        IF o_status IS NOT NULL THEN
            -- Unless a concurrent use of the same key, which this one
            -- repeats, committed since step 1.
            IF p_key IS NOT NULL AND EXISTS (SELECT 1 FROM quota_idempotency_keys k
                                              WHERE k.subject = p_subject AND k.idempotency_key = p_key) THEN
                SELECT * INTO o_status, o_record_id, o_hold_id, o_used, o_held, o_limits, o_replay, o_action, o_hold_expires
                  FROM quota_replay(p_subject, p_key, p_fingerprint);
            END IF;
            RETURN;
        END IF;
    END IF;

    -- 3. Claim the key. ON CONFLICT waits for a concurrent claim to
    -- commit or roll back, so a use with a key is applied at most once.
    IF p_key IS NOT NULL THEN
        INSERT INTO quota_idempotency_keys (subject, idempotency_key, fingerprint, action, created_at)
        VALUES (p_subject, p_key, p_fingerprint, p_action, p_now)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            SELECT * INTO o_status, o_record_id, o_hold_id, o_used, o_held, o_limits, o_replay, o_action, o_hold_expires
              FROM quota_replay(p_subject, p_key, p_fingerprint);
            RETURN;
        END IF;
    END IF;
    IF v_missing THEN
        PERFORM quota_create_counters(p_subject, p_action, v_periods, v_starts, v_ends);
    END IF;

    -- 4. Charge each counter in Op order, if the use still fits its latest
    -- row (the UPDATE waits for a concurrent one and re-checks its WHERE
    -- clause on the new row) with a held amount read from a snapshot and
    -- hold_seq unchanged since.
    IF v_snap THEN
        FOR i IN 1 .. v_n LOOP
            UPDATE quota_summaries s
               SET used = s.used + v_charge, limit_max = v_maxes[i], hold_seq = s.hold_seq + v_hold
             WHERE s.subject = p_subject AND s.action = p_action
               AND s.period = v_periods[i] AND s.period_start = v_starts[i]
               AND s.hold_seq = v_seq[i]
               AND CASE WHEN p_amount > 0
                        THEN s.used <= 9223372036854775807 - o_held[i] - p_amount
                             AND NOT (p_enforce AND v_maxes[i] <> -1 AND s.used + o_held[i] + p_amount > v_maxes[i])
                        ELSE s.used + p_amount >= 0 END
            RETURNING s.used - v_charge, s.marks INTO v_used, v_m;
            EXIT WHEN NOT FOUND;
            o_used[i] := v_used;
            v_old[i] := v_m;
            v_done := i;
        END LOOP;
    ELSIF v_n = 1 THEN
        -- One counter: this statement's snapshot gives hold_seq and the
        -- held amount; no read before.
        UPDATE quota_summaries s
           SET used = s.used + v_charge, limit_max = v_maxes[1], hold_seq = s.hold_seq + v_hold
          FROM (SELECT (SELECT s0.hold_seq FROM quota_summaries s0
                         WHERE s0.subject = p_subject AND s0.action = p_action
                           AND s0.period = v_periods[1] AND s0.period_start = v_starts[1]) AS seq,
                       (SELECT coalesce(sum(c.amount), 0) FROM quota_hold_counters c
                         WHERE c.subject = p_subject AND c.action = p_action
                           AND c.period = v_periods[1] AND c.period_start = v_starts[1]
                           AND c.expires_at > p_now)::bigint AS held) snap
         WHERE s.subject = p_subject AND s.action = p_action
           AND s.period = v_periods[1] AND s.period_start = v_starts[1]
           AND s.hold_seq = snap.seq
           AND CASE WHEN p_amount > 0
                    THEN s.used <= 9223372036854775807 - snap.held - p_amount
                         AND NOT (p_enforce AND v_maxes[1] <> -1 AND s.used + snap.held + p_amount > v_maxes[1])
                    ELSE s.used + p_amount >= 0 END
        RETURNING s.used - v_charge, snap.held, s.marks INTO v_used, v_held, v_m;
        IF FOUND THEN
            o_used[1] := v_used;
            o_held[1] := v_held;
            v_old[1] := v_m;
            v_done := 1;
        ELSE
            -- Read the counter, as step 2 does.
            SELECT s.used, s.limit_max,
                   (SELECT coalesce(sum(c.amount), 0) FROM quota_hold_counters c
                     WHERE c.subject = p_subject AND c.action = p_action
                       AND c.period = v_periods[1] AND c.period_start = v_starts[1]
                       AND c.expires_at > p_now)::bigint
              INTO v_used, v_limit, v_held
              FROM quota_summaries s
             WHERE s.subject = p_subject AND s.action = p_action
               AND s.period = v_periods[1] AND s.period_start = v_starts[1];
            IF NOT FOUND THEN
                v_missing := true;
            END IF;
            o_used[1] := coalesce(v_used, 0);
            o_limits[1] := coalesce(v_limit, 0);
            o_held[1] := coalesce(v_held, 0);
            o_status := quota_decide(o_used, o_held, v_maxes, p_amount, p_enforce);
            IF o_status IS NOT NULL THEN
                RETURN;
            END IF;
            IF v_missing THEN
                PERFORM quota_create_counters(p_subject, p_action, v_periods, v_starts, v_ends);
            END IF;
        END IF;
    END IF;

    IF v_done < v_n THEN
        -- 5. A check failed: undo the charges (no one saw them: this
        -- transaction holds their locks), lock every counter in Op order,
        -- read the held amounts again (a new snapshot, which holds every
        -- committed hold), and decide on that.
        FOR i IN 1 .. v_done LOOP
            UPDATE quota_summaries s
               SET used = s.used - v_charge, hold_seq = s.hold_seq - v_hold
             WHERE s.subject = p_subject AND s.action = p_action
               AND s.period = v_periods[i] AND s.period_start = v_starts[i];
        END LOOP;
        FOR i IN 1 .. v_n LOOP
            SELECT s.used, s.limit_max, s.marks INTO v_used, v_limit, v_m
              FROM quota_summaries s
             WHERE s.subject = p_subject AND s.action = p_action
               AND s.period = v_periods[i] AND s.period_start = v_starts[i]
               FOR UPDATE;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'quota: counter % of % % is missing', v_periods[i], p_subject, p_action;
            END IF;
            o_used[i] := v_used;
            o_limits[i] := coalesce(v_limit, 0);
            v_old[i] := v_m;
        END LOOP;
        FOR i IN 1 .. v_n LOOP
            SELECT coalesce(sum(c.amount), 0)::bigint INTO v_held
              FROM quota_hold_counters c
             WHERE c.subject = p_subject AND c.action = p_action
               AND c.period = v_periods[i] AND c.period_start = v_starts[i]
               AND c.expires_at > p_now;
            o_held[i] := v_held;
        END LOOP;
        o_status := quota_decide(o_used, o_held, v_maxes, p_amount, p_enforce);
        IF o_status IS NOT NULL THEN
            IF p_key IS NOT NULL THEN
                DELETE FROM quota_idempotency_keys
                 WHERE subject = p_subject AND idempotency_key = p_key;
            END IF;
            RETURN;
        END IF;
        FOR i IN 1 .. v_n LOOP
            UPDATE quota_summaries s
               SET used = s.used + v_charge, limit_max = v_maxes[i], hold_seq = s.hold_seq + v_hold
             WHERE s.subject = p_subject AND s.action = p_action
               AND s.period = v_periods[i] AND s.period_start = v_starts[i];
        END LOOP;
    END IF;

    -- 6. Mark the levels the use reached first in each window (the rows
    -- are locked: the marks read above are the latest).
    FOR i IN 1 .. v_n LOOP
        o_used[i] := o_used[i] + v_charge;
        o_held[i] := o_held[i] + p_amount - v_charge;
        v_bits := 0;
        FOR l IN 1 .. v_w LOOP
            IF coalesce(v_marks[v_w * (i - 1) + l], 0) > 0 AND v_marks[v_w * (i - 1) + l] <= o_used[i] + o_held[i] THEN
                v_bits := v_bits | (1 << (l - 1));
            END IF;
        END LOOP;
        v_bits := v_bits & ~coalesce(v_old[i], 0);
        o_crossed[i] := v_bits;
        IF v_bits <> 0 THEN
            UPDATE quota_summaries s
               SET marks = s.marks | v_bits
             WHERE s.subject = p_subject AND s.action = p_action
               AND s.period = v_periods[i] AND s.period_start = v_starts[i];
        END IF;
    END LOOP;
    o_limits := v_maxes;

    -- 7. The record, or the hold.
    IF p_hold_id IS NULL THEN
        INSERT INTO quota_records (subject, action, amount, resource_id, metadata, idempotency_key, recorded_at)
        VALUES (p_subject, p_action, p_amount, p_resource_id, p_metadata::json, p_key, p_time)
        RETURNING id INTO o_record_id;
    ELSE
        -- Sweep the expired holds of this action that no one is committing.
        DELETE FROM quota_holds
         WHERE id IN (SELECT id FROM quota_holds
                       WHERE subject = p_subject AND action = p_action AND expires_at <= p_now
                         FOR UPDATE SKIP LOCKED);
        INSERT INTO quota_holds (id, subject, action, amount, resource_id, metadata, idempotency_key, recorded_at, expires_at)
        VALUES (p_hold_id, p_subject, p_action, p_amount, p_resource_id, p_metadata::json, p_key, p_time, p_hold_expires);
        INSERT INTO quota_hold_counters (hold_id, pos, subject, action, period, period_start, amount, expires_at)
        SELECT p_hold_id, u.i, p_subject, p_action, u.period, u.period_start, p_amount, p_hold_expires
          FROM unnest(v_periods, v_starts) WITH ORDINALITY AS u(period, period_start, i);
        o_hold_id := p_hold_id;
        o_hold_expires := p_hold_expires;
    END IF;

    -- 8. Remember the outcome with the key.
    IF p_key IS NOT NULL THEN
        UPDATE quota_idempotency_keys
           SET record_id = o_record_id,
               hold_id = o_hold_id,
               hold_expires_at = o_hold_expires,
               counters = (SELECT coalesce(json_agg(json_build_object(
                                      'period', u.period,
                                      'start', (extract(epoch FROM u.period_start) * 1000000)::bigint,
                                      'end', (extract(epoch FROM u.period_end) * 1000000)::bigint,
                                      'used', u.used,
                                      'held', u.held,
                                      'limit', u.max) ORDER BY u.i), '[]'::json)
                             FROM unnest(v_periods, v_starts, v_ends, o_used, o_held, v_maxes)
                                  WITH ORDINALITY AS u(period, period_start, period_end, used, held, max, i))
         WHERE subject = p_subject AND idempotency_key = p_key;
    END IF;
    o_status := 'applied';
END
$fn$;

-- quota_create_counters creates the missing counters of a use, in Op
-- order, with limit_max NULL (never written).
