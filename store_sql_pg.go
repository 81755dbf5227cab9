// SQLStore on PostgreSQL: its SQL, its encodings, and its writes, each one
// statement; Apply and Commit call the functions of
// migrations/pg/0002_functions.sql, as 0004_generic_marks.sql (marks of
// any width) and 0005_outbox.sql (marks of used kept with the counter,
// the outbox, held amounts read after the locks) redefine them.

package quota

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

var _ sqlDialect = (*pgDialect)(nil)

// pgDialect is the PostgreSQL dialect of SQLStore (any database/sql
// driver; tested with pgx).
//
// Times are timestamptz; placeholders are $1, $2, ...; arrays go as text
// literals cast in SQL (pgTextArray and its kin), so that any driver can
// send them. Every write is one statement, atomic on its own or inside the
// caller's transaction: Apply and Commit call quota_apply and
// quota_commit, which Migrate creates, so each is one round trip. They
// are correct under READ COMMITTED (see migrations/pg/0002_functions.sql).
// Marks go to quota_apply as one array, the same number per counter.
// Statements are not prepared by the store: pgx caches them per
// connection.
type pgDialect struct {
	s *SQLStore
}

// newPGDialect returns the PostgreSQL dialect of s, and turns off the
// statement cache of s.
func newPGDialect(s *SQLStore) *pgDialect {
	s.prep = nil
	return &pgDialect{s: s}
}

func (*pgDialect) tv(t time.Time) any { return t.UTC().Truncate(time.Microsecond) }

func (*pgDialect) param(n int) string { return "$" + strconv.Itoa(n) }

// transient reports a serialization failure or a deadlock, after which the
// transaction rolled back and may be tried again.
func (*pgDialect) transient(err error) bool { return isPGTransient(err) }

var pgText = sqlText{
	putSubscription: `INSERT INTO quota_subscriptions (subject, plan, anchor, time_zone, overrides, next_plan, next_plan_at, version)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (subject) DO UPDATE SET plan = excluded.plan, anchor = excluded.anchor, time_zone = excluded.time_zone,
	overrides = excluded.overrides, next_plan = excluded.next_plan, next_plan_at = excluded.next_plan_at, version = excluded.version`,
	getSubscription: `SELECT plan, anchor, time_zone, overrides, next_plan, next_plan_at, version FROM quota_subscriptions WHERE subject = $1`,
	// Sums cast to bigint (sum gives numeric); subjects tie in byte
	// order, as Go's.
	top: `SELECT subject, sum(amount)::bigint, sum(n)::bigint FROM (
	SELECT subject, amount, 1 AS n FROM quota_records WHERE action = $1 AND recorded_at >= $2 AND recorded_at < $3
	UNION ALL
	SELECT subject, amount, count FROM quota_rollups WHERE action = $4 AND bucket_start >= $5 AND bucket_start < $6
) x
GROUP BY subject ORDER BY 2 DESC, subject COLLATE "C" LIMIT $7`,
	ack:        `DELETE FROM quota_notices WHERE id = $1`,
	retry:      `UPDATE quota_notices SET due_at = $1, claimed_until = NULL, attempts = attempts + 1 WHERE id = $2`,
	migrations: "migrations/pg",
	// One lock per schema, until the end of the transaction.
	migrateLock: `SELECT pg_advisory_xact_lock(hashtextextended('github.com/quotakit/quota migrate ' || coalesce(current_schema(), ''), 0))`,
	migrationsTable: `CREATE TABLE IF NOT EXISTS quota_schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL
)`,
	insertMigration: `INSERT INTO quota_schema_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)`,
}

func (*pgDialect) text() *sqlText { return &pgText }

const (
	pgApply = `SELECT o_status, o_record_id, o_hold_id, o_used::text, o_held::text, o_limits::text, o_replay::text, o_action, o_hold_expires, o_crossed::text
FROM quota_use($18, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)`
	// pgCommit commits, and marks the key of the hold settled (see
	// migrations/pg/0007).
	pgCommit = `WITH c AS (SELECT * FROM quota_commit($1, $2, $3)),
k AS (UPDATE quota_idempotency_keys k SET settled = true FROM c
	WHERE c.o_status = 'committed' AND k.subject = c.o_subject AND k.idempotency_key = c.o_key AND k.hold_id = $1)
SELECT o_status, o_id, o_subject, o_action, o_amount, o_resource_id, o_metadata, o_key, o_time FROM c`
	pgBatch = `SELECT o_i, o_status, o_record_id, o_hold_id, o_used, o_held, o_limits, o_replay, o_action, o_hold_expires, o_crossed,
	o_subject, o_amount, o_resource_id, o_metadata, o_key, o_time
FROM quota_batch($1::jsonb)`
	// The hold's counters go with it (ON DELETE CASCADE).
	pgCancel = `DELETE FROM quota_holds WHERE id = $1`
	// pgCounter reads one counter: used, limit_max, period_end, held and
	// marks.
	pgCounter = `SELECT s.used, s.limit_max, s.period_end,
	(SELECT coalesce(sum(c.amount), 0) FROM quota_hold_counters c
	  WHERE c.subject = $1 AND c.action = $2 AND c.period = $3 AND c.period_start = $4 AND c.expires_at > $5)::bigint,
	s.marks
FROM quota_summaries s
WHERE s.subject = $1 AND s.action = $2 AND s.period = $3 AND s.period_start = $4 AND s.limit_max IS NOT NULL`
	// pgCounters reads several counters, given as arrays, each with its
	// position.
	pgCounters = `SELECT k.i, s.used, s.limit_max, s.period_end,
	(SELECT coalesce(sum(c.amount), 0) FROM quota_hold_counters c
	  WHERE c.subject = s.subject AND c.action = s.action AND c.period = s.period
	    AND c.period_start = s.period_start AND c.expires_at > $5)::bigint,
	s.marks
FROM unnest($1::text::text[], $2::text::text[], $3::text::text[], $4::text::timestamptz[])
	WITH ORDINALITY AS k(subject, action, period, period_start, i)
JOIN quota_summaries s ON s.subject = k.subject AND s.action = k.action
	AND s.period = k.period AND s.period_start = k.period_start
WHERE s.limit_max IS NOT NULL`
	// pgClaim claims the due notices that no lease holds, oldest first:
	// the rows are locked as they are chosen, and rows that a concurrent
	// claim has locked are skipped, so that two claims never wait for each
	// other nor return the same notice. A row claimed and committed since
	// the snapshot is re-checked on its latest version, and left out.
	pgClaim = `UPDATE quota_notices n SET claimed_until = $2
FROM (SELECT id FROM quota_notices
	   WHERE due_at <= $1 AND (claimed_until IS NULL OR claimed_until <= $1)
	   ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) c
WHERE n.id = c.id
RETURNING n.id, n.subject, n.action, n.period, n.period_start, n.period_end, n.mark, n.used, n.limit_max, n.recorded_at, n.attempts`
	// pgSweep deletes expired holds (their counters go with them, ON
	// DELETE CASCADE), skipping those a Commit or Cancel has locked.
	pgSweep = `WITH d AS (
	DELETE FROM quota_holds
	 WHERE id IN (SELECT id FROM quota_holds WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)
	RETURNING 1
)
SELECT count(*) FROM d`
	// pgPrune deletes the records and adds them to their rollups (the
	// quarter hours of date_bin) in one statement.
	pgPrune = `WITH d AS (
	DELETE FROM quota_records
	 WHERE id IN (SELECT id FROM quota_records WHERE recorded_at < $1 ORDER BY id LIMIT $2)
	RETURNING subject, action, amount, recorded_at
), r AS (
	INSERT INTO quota_rollups AS u (subject, action, bucket_start, amount, count)
	SELECT subject, action, date_bin('15 minutes', recorded_at, timestamptz '1970-01-01 00:00:00+00'), sum(amount), count(*)
	  FROM d GROUP BY 1, 2, 3
	ON CONFLICT (subject, action, bucket_start) DO UPDATE
	   SET amount = u.amount + excluded.amount, count = u.count + excluded.count
)
SELECT count(*) FROM d`
)

// apply calls quota_apply.
func (d *pgDialect) apply(ctx context.Context, op *Op) (ApplyResult, error) {
	var row pgApplyRow
	err := d.s.q.QueryRowContext(ctx, pgApply, d.applyArgs(op)...).Scan(&row.status, &row.recordID, &row.hold,
		&row.used, &row.held, &row.limits, &row.replay, &row.action, sqlTime{&row.holdExp}, &row.crossed)
	if err != nil {
		return ApplyResult{}, err
	}
	return row.result(op)
}

// applyArgs returns the arguments of quota_use for op: those of
// quota_apply, then op.Version.
func (d *pgDialect) applyArgs(op *Op) []any {
	r := &op.Record
	periods, starts, ends, maxes, marks := pgCounterArrays(op.Counters)
	var holdID, holdExpires any
	if op.Hold != nil {
		holdID, holdExpires = op.Hold.ID, d.tv(op.Hold.ExpiresAt)
	}
	var fingerprint any
	if r.Key != "" {
		fingerprint = op.Fingerprint
	}
	return []any{
		r.Subject, r.Action, periods, starts, ends, maxes,
		r.Amount, op.Enforce, d.tv(op.Now), d.tv(r.Time), nullString(r.ResourceID), nullJSON(r.Metadata),
		nullString(r.Key), fingerprint, holdID, holdExpires, marks, op.Version,
	}
}

// pgCounterArrays returns the counters of an Op as quota_apply takes
// them: arrays of periods, starts, ends and maxes, one element per
// counter, and the marks, as many per counter (padded with 0, which
// marks nothing).
func pgCounterArrays(cs []CounterOp) (periods, starts, ends, maxes, marks string) {
	n := len(cs)
	ps := make([]string, n)
	ss := make([]time.Time, n)
	es := make([]time.Time, n)
	ms := make([]int64, n)
	w := 0
	for _, c := range cs {
		w = max(w, min(len(c.Marks), MaxMarks))
	}
	mk := make([]int64, w*n)
	for i, c := range cs {
		ps[i], ss[i], es[i], ms[i] = c.Period.String(), c.Start, c.End, c.Max
		copy(mk[i*w:(i+1)*w], c.Marks)
	}
	return pgTextArray(ps), pgTimeArray(ss), pgTimeArray(es), pgIntArray(ms), pgIntArray(mk)
}

// pgApplyRow is the row quota_apply returns; arrays in their text form.
type pgApplyRow struct {
	status             string
	recordID           sql.NullInt64
	hold               sql.NullString
	used, held, limits sql.NullString
	replay             sql.NullString
	action             sql.NullString
	holdExp            time.Time
	crossed            sql.NullString
}

// result turns the row into the result of op.
func (row *pgApplyRow) result(op *Op) (ApplyResult, error) {
	switch row.status {
	case "replayed":
		return replay(op, op.Fingerprint, row.action.String, row.recordID, row.hold, row.holdExp, row.replay)
	case "stale":
		return ApplyResult{}, fmt.Errorf("%w: %q", ErrSubscriptionChanged, op.Record.Subject)
	case "conflict":
		return ApplyResult{}, fmt.Errorf("%w: key %q of %q", ErrIdempotencyConflict, op.Record.Key, op.Record.Subject)
	case "applied", "refused", "overflow":
	default:
		return ApplyResult{}, fmt.Errorf("quota_apply returned status %q", row.status)
	}
	cs, err := row.counters(op)
	if err != nil {
		return ApplyResult{}, err
	}
	if row.status != "applied" {
		return refusal(op, cs)
	}
	res := ApplyResult{Applied: true, Counters: cs, RecordID: row.recordID.Int64, HoldID: row.hold.String, HoldExpiresAt: row.holdExp}
	if row.crossed.Valid {
		bits, err := parsePGIntArray(row.crossed.String)
		if err != nil {
			return ApplyResult{}, err
		}
		res.Crossed = crossings(bits)
	}
	return res, nil
}

// counters returns the counters of op as the row gives them.
func (row *pgApplyRow) counters(op *Op) ([]Counter, error) {
	n := len(op.Counters)
	u, err1 := parsePGIntArray(row.used.String)
	h, err2 := parsePGIntArray(row.held.String)
	l, err3 := parsePGIntArray(row.limits.String)
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, err
	}
	if len(u) != n || len(h) != n || len(l) != n {
		return nil, fmt.Errorf("quota_apply returned %d, %d and %d counters for %d", len(u), len(h), len(l), n)
	}
	cs := make([]Counter, n)
	for i, c := range op.Counters {
		cs[i] = Counter{CounterKey: c.CounterKey, End: c.End, Used: u[i], Held: h[i], Max: l[i]}
	}
	return cs, nil
}

// refusal returns the result of a refused op from the counters as they
// are, or ErrOverflow when one of them cannot take the amount.
func refusal(op *Op, cs []Counter) (ApplyResult, error) {
	a := op.Record.Amount
	for i := range cs {
		cs[i].End = op.Counters[i].End
		if cur := cs[i].Used + cs[i].Held; a > 0 && cur > math.MaxInt64-a {
			c := op.Counters[i]
			return ApplyResult{}, fmt.Errorf("%w: %s of %q", ErrOverflow, c.Action, c.Subject)
		}
	}
	return ApplyResult{Counters: cs}, nil
}

// commit calls quota_commit.
func (d *pgDialect) commit(ctx context.Context, id string, amount int64, now time.Time) (Record, error) {
	var row pgCommitRow
	err := d.s.q.QueryRowContext(ctx, pgCommit, id, amount, d.tv(now)).Scan(&row.status, &row.id, &row.subject, &row.action,
		&row.amount, &row.resource, &row.meta, &row.key, sqlTime{&row.at})
	if err != nil {
		return Record{}, err
	}
	return row.record(amount)
}

// pgCommitRow is the row quota_commit returns.
type pgCommitRow struct {
	status              string
	id, amount          sql.NullInt64
	subject, action     sql.NullString
	resource, key, meta sql.NullString
	at                  time.Time
}

// record returns the record of a commit of amount, or its outcome.
func (row *pgCommitRow) record(amount int64) (Record, error) {
	switch row.status {
	case "committed":
	case "not_found":
		return Record{}, ErrReservationNotFound
	case "expired":
		return Record{}, ErrReservationExpired
	case "too_large":
		return Record{}, fmt.Errorf("%w: commit of %d on a hold of %d", ErrInvalidAmount, amount, row.amount.Int64)
	default:
		return Record{}, fmt.Errorf("quota_commit returned status %q", row.status)
	}
	rec := Record{ID: row.id.Int64, Subject: row.subject.String, Action: row.action.String, Amount: row.amount.Int64,
		ResourceID: row.resource.String, Key: row.key.String, Time: row.at}
	if row.meta.Valid && row.meta.String != "" {
		rec.Metadata = json.RawMessage(row.meta.String)
	}
	return rec, nil
}

func (d *pgDialect) cancel(ctx context.Context, id string) (found bool, err error) {
	res, err := d.s.q.ExecContext(ctx, pgCancel, id)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// writeBatch writes one call with its own statement, and several with one
// call of quota_batch (migrations/pg/0006_batch.sql): one round trip, one
// transaction.
func (d *pgDialect) writeBatch(ctx context.Context, calls []*sqlCall) error {
	if len(calls) == 1 {
		return d.writeOne(ctx, calls[0])
	}
	sortApplies(calls)
	arg, err := d.batchArg(calls)
	if err != nil {
		return err
	}
	rows, err := d.s.q.QueryContext(ctx, pgBatch, arg)
	if err != nil {
		return err
	}
	n := 0
	for rows.Next() {
		var i int
		var a pgApplyRow
		var c pgCommitRow
		if err := rows.Scan(&i, &a.status, &a.recordID, &a.hold, &a.used, &a.held, &a.limits, &a.replay, &a.action,
			sqlTime{&a.holdExp}, &a.crossed, &c.subject, &c.amount, &c.resource, &c.meta, &c.key, sqlTime{&c.at}); err != nil {
			rows.Close()
			return err
		}
		if i != n+1 || i > len(calls) {
			rows.Close()
			return fmt.Errorf("quota_batch returned call %d after %d of %d", i, n, len(calls))
		}
		n = i
		d.batchOutcome(calls[i-1], &a, &c)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return err
	}
	if n != len(calls) {
		return fmt.Errorf("quota_batch returned %d calls of %d", n, len(calls))
	}
	return nil
}

// batchOutcome sets the outcome of c from its row of quota_batch.
func (d *pgDialect) batchOutcome(c *sqlCall, a *pgApplyRow, cr *pgCommitRow) {
	switch c.kind {
	case callApply:
		c.res, c.err = a.result(c.op)
	case callCommit:
		cr.status, cr.id, cr.action = a.status, a.recordID, a.action
		c.rec, c.err = cr.record(c.amount)
	case callCancel:
		c.found = a.status == "cancelled"
	}
}

// writeOne writes one call with its own statement.
func (d *pgDialect) writeOne(ctx context.Context, c *sqlCall) (err error) {
	switch c.kind {
	case callApply:
		c.res, err = d.apply(ctx, c.op)
	case callCommit:
		c.rec, err = d.commit(ctx, c.id, c.amount, c.now)
	case callCancel:
		c.found, err = d.cancel(ctx, c.id)
	}
	if err != nil && isOutcome(err) {
		c.err, err = err, nil
	}
	return err
}

// pgBatchCall is a call as quota_batch reads it (see 0006_batch.sql).
type pgBatchCall struct {
	Kind        string  `json:"k"`
	Subject     string  `json:"s,omitempty"`
	Action      string  `json:"a,omitempty"`
	Periods     string  `json:"p,omitempty"`
	Starts      string  `json:"st,omitempty"`
	Ends        string  `json:"en,omitempty"`
	Maxes       string  `json:"mx,omitempty"`
	Amount      int64   `json:"n"`
	Enforce     bool    `json:"f,omitempty"`
	Now         string  `json:"now,omitempty"`
	Time        string  `json:"t,omitempty"`
	ResourceID  *string `json:"r,omitempty"`
	Metadata    *string `json:"m,omitempty"`
	Key         *string `json:"key,omitempty"`
	Fingerprint *string `json:"fp,omitempty"`
	HoldID      *string `json:"h,omitempty"`
	HoldExpires string  `json:"he,omitempty"`
	Marks       string  `json:"mk,omitempty"`
	Version     int64   `json:"v,omitempty"`
	ID          string  `json:"id,omitempty"`
}

// pgBatchCounter is a counter of an apply, as quota_batch reads it.
type pgBatchCounter struct {
	Subject string `json:"s"`
	Action  string `json:"a"`
	Period  string `json:"p"`
	Start   string `json:"st"`
	End     string `json:"en"`
}

// sortApplies sorts a batch of applies alone by subject and action, in
// byte order, keeping the order of the calls of each subject and action:
// those of different ones touch different rows (counters, keys, holds),
// so the outcomes are those of the order of arrival, and the calls lock
// their counters in the global order (see 0007). The batcher reports
// the order applied. A batch with commits or cancels, whose subjects
// are not known before quota_batch reads their holds, keeps its order,
// and quota_batch locks its rows first instead.
func sortApplies(calls []*sqlCall) {
	for _, c := range calls {
		if c.kind != callApply {
			return
		}
	}
	sort.SliceStable(calls, func(i, j int) bool {
		a, b := &calls[i].op.Record, &calls[j].op.Record
		if a.Subject != b.Subject {
			return a.Subject < b.Subject
		}
		return a.Action < b.Action
	})
}

// batchArg returns the argument of quota_batch for calls.
func (d *pgDialect) batchArg(calls []*sqlCall) (string, error) {
	var arg struct {
		Lock     bool             `json:"lock"`
		Holds    []string         `json:"holds"`
		Counters []pgBatchCounter `json:"counters"`
		Ops      []pgBatchCall    `json:"ops"`
	}
	arg.Holds, arg.Counters, arg.Ops = []string{}, []pgBatchCounter{}, make([]pgBatchCall, len(calls))
	for _, c := range calls {
		arg.Lock = arg.Lock || c.kind != callApply
	}
	for i, c := range calls {
		switch c.kind {
		case callCommit:
			arg.Ops[i] = pgBatchCall{Kind: "commit", ID: c.id, Amount: c.amount, Now: pgTime(c.now)}
			arg.Holds = append(arg.Holds, c.id)
		case callCancel:
			arg.Ops[i] = pgBatchCall{Kind: "cancel", ID: c.id}
			arg.Holds = append(arg.Holds, c.id)
		case callApply:
			arg.Ops[i] = d.batchApply(c.op)
			if !arg.Lock {
				continue
			}
			for _, co := range c.op.Counters {
				arg.Counters = append(arg.Counters, pgBatchCounter{Subject: co.Subject, Action: co.Action,
					Period: co.Period.String(), Start: pgTime(co.Start), End: pgTime(co.End)})
			}
		}
	}
	b, err := json.Marshal(&arg)
	return string(b), err
}

// batchApply returns the call of quota_apply for op, with the arguments
// of applyArgs.
func (d *pgDialect) batchApply(op *Op) pgBatchCall {
	r := &op.Record
	orNil := func(s string) *string {
		if s == "" {
			return nil
		}
		return &s
	}
	call := pgBatchCall{Kind: "apply", Subject: r.Subject, Action: r.Action, Amount: r.Amount, Enforce: op.Enforce,
		Now: pgTime(op.Now), Time: pgTime(r.Time), ResourceID: orNil(r.ResourceID), Metadata: orNil(string(r.Metadata)),
		Key: orNil(r.Key), Version: op.Version}
	call.Periods, call.Starts, call.Ends, call.Maxes, call.Marks = pgCounterArrays(op.Counters)
	if r.Key != "" {
		call.Fingerprint = &op.Fingerprint
	}
	if op.Hold != nil {
		call.HoldID, call.HoldExpires = &op.Hold.ID, pgTime(op.Hold.ExpiresAt)
	}
	return call
}

// pgTime is t as quota_batch and the time arrays carry it.
func pgTime(t time.Time) string {
	return t.UTC().Truncate(time.Microsecond).Format("2006-01-02T15:04:05.999999Z")
}

func (d *pgDialect) prune(ctx context.Context, before time.Time, limit int) (int64, error) {
	var n int64
	err := d.s.q.QueryRowContext(ctx, pgPrune, d.tv(before), limit).Scan(&n)
	return n, err
}

func (d *pgDialect) sweep(ctx context.Context, now time.Time, limit int) (int64, error) {
	var n int64
	err := d.s.q.QueryRowContext(ctx, pgSweep, d.tv(now), limit).Scan(&n)
	return n, err
}

func (d *pgDialect) claim(ctx context.Context, now, until time.Time, limit int) ([]Notice, error) {
	rows, err := d.s.q.QueryContext(ctx, pgClaim, d.tv(now), d.tv(until), limit)
	if err != nil {
		return nil, err
	}
	return scanNotices(rows)
}

func (d *pgDialect) countersSQL(keys []CounterKey, now time.Time) (string, []any) {
	if len(keys) == 1 {
		k := keys[0]
		return pgCounter, []any{k.Subject, k.Action, k.Period.String(), d.tv(k.Start), d.tv(now)}
	}
	subjects, actions, periods := make([]string, len(keys)), make([]string, len(keys)), make([]string, len(keys))
	starts := make([]time.Time, len(keys))
	for i, k := range keys {
		subjects[i], actions[i], periods[i], starts[i] = k.Subject, k.Action, k.Period.String(), k.Start
	}
	return pgCounters, []any{pgTextArray(subjects), pgTextArray(actions), pgTextArray(periods), pgTimeArray(starts), d.tv(now)}
}

// sumsSQL reads the whole range once and finds each row's bucket with
// width_bucket, a binary search in the bounds, so that no plan (a generic
// plan of a prepared statement included) can compare every row with every
// bucket. The bounds sit in a subquery, so that they are cast once (an
// InitPlan), not once per row.
func (d *pgDialect) sumsSQL(q SumQuery) (string, []any) {
	a := sqlArgs{param: d.param}
	bounds := pgTimeArray(q.Bounds)
	lo, hi := d.tv(q.Bounds[0]), d.tv(q.Bounds[len(q.Bounds)-1])
	var b strings.Builder
	branch := func(alias, table, timeCol, count string) {
		fmt.Fprintf(&b, "\nSELECT width_bucket(%s.%s, (SELECT %s::text::timestamptz[])) - 1 AS bucket, %s AS action, %s.amount AS amount, %s AS n\nFROM %s %s WHERE %s.%s >= %s AND %s.%s < %s",
			alias, timeCol, a.bind(bounds), sumAction(q, alias), alias, count, table, alias, alias, timeCol, a.bind(lo), alias, timeCol, a.bind(hi))
		sumFilter(&b, &a, q, alias)
	}
	// Sums cast to bigint (sum gives numeric); actions in byte order, as
	// Go's.
	b.WriteString("\nSELECT bucket, action, sum(amount)::bigint, sum(n)::bigint FROM (")
	branch("r", "quota_records", "recorded_at", "1")
	b.WriteString("\nUNION ALL")
	branch("u", "quota_rollups", "bucket_start", "u.count")
	b.WriteString("\n) x\nGROUP BY bucket, action\nORDER BY bucket, action COLLATE \"C\"")
	return b.String(), a.vals
}

// PostgreSQL array literals, passed as text and cast in SQL, so that any
// driver can send them.

func pgTextArray(ss []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, s := range ss {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for j := 0; j < len(s); j++ {
			if s[j] == '"' || s[j] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(s[j])
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

func pgTimeArray(ts []time.Time) string {
	ss := make([]string, len(ts))
	for i, t := range ts {
		ss[i] = pgTime(t)
	}
	return pgTextArray(ss)
}

func pgIntArray(ns []int64) string {
	b := make([]byte, 0, 4*len(ns)+2)
	b = append(b, '{')
	for i, n := range ns {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, n, 10)
	}
	return string(append(b, '}'))
}

// parsePGIntArray parses the text form of a one-dimensional bigint[]
// without NULLs.
func parsePGIntArray(s string) ([]int64, error) {
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return nil, fmt.Errorf("not an array: %q", s)
	}
	s = s[1 : len(s)-1]
	if s == "" {
		return []int64{}, nil
	}
	parts := strings.Split(s, ",")
	out := make([]int64, len(parts))
	for i, p := range parts {
		n, err := strconv.ParseInt(p, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("array element %q: %w", p, err)
		}
		out[i] = n
	}
	return out, nil
}
