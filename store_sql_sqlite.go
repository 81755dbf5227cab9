// SQLStore on SQLite: its SQL, its encodings, and its writes, each a few
// statements in one transaction that holds the write lock; the tables of
// migrations/sqlite (0003_outbox.sql adds the outbox and the marks kept
// with each counter).

package quota

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"time"
)

var _ sqlDialect = (*sqliteDialect)(nil)

// sqliteDialect is the SQLite dialect of SQLStore (modernc.org/sqlite).
//
// Times are INTEGER microseconds since the Unix epoch; placeholders are ?
// (?NNN where a statement uses an argument twice). Every write runs in one
// transaction: with the recommended DSN it is IMMEDIATE, so it holds the
// write lock from BEGIN, nothing changes between a read and a write, and a
// refusal reports the figures it was decided on. A store that runs its own
// transactions queues its writers in Go (SQLStore.wsem), rather than let
// them poll SQLite's lock (busy_timeout), which favours no one and can
// starve a writer past the timeout under load; and it prepares its
// statements once per connection (SQLStore.prep).
type sqliteDialect struct {
	s *SQLStore
}

// newSQLiteDialect returns the SQLite dialect of s. When s runs its own
// transactions it sets up their writer queue and keeps the statement
// cache; over the caller's transaction it has neither.
func newSQLiteDialect(s *SQLStore) *sqliteDialect {
	if s.begin != nil {
		s.wsem = make(chan struct{}, 1)
	} else {
		s.prep = nil
	}
	return &sqliteDialect{s: s}
}

func (*sqliteDialect) tv(t time.Time) any { return t.UnixMicro() }

func (*sqliteDialect) param(int) string { return "?" }

// transient reports SQLITE_BUSY: processes that open a new SQLite file at
// the same moment race to switch it to WAL, and SQLite answers the loser
// SQLITE_BUSY at once, without waiting out busy_timeout.
func (*sqliteDialect) transient(err error) bool { return isSQLiteBusy(err) }

// isSQLiteBusy reports whether err is SQLite's SQLITE_BUSY (or one of its
// extended codes), as modernc.org/sqlite's errors report their code.
func isSQLiteBusy(err error) bool {
	var coded interface{ Code() int }
	return errors.As(err, &coded) && coded.Code()&0xff == 5
}

var sqliteText = sqlText{
	putSubscription: `INSERT INTO quota_subscriptions (subject, plan, anchor, time_zone, overrides, next_plan, next_plan_at, version)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (subject) DO UPDATE SET plan = excluded.plan, anchor = excluded.anchor, time_zone = excluded.time_zone,
	overrides = excluded.overrides, next_plan = excluded.next_plan, next_plan_at = excluded.next_plan_at, version = excluded.version`,
	getSubscription: `SELECT plan, anchor, time_zone, overrides, next_plan, next_plan_at, version FROM quota_subscriptions WHERE subject = ?`,
	top: `SELECT subject, sum(amount), sum(n) FROM (
	SELECT subject, amount, 1 AS n FROM quota_records WHERE action = ? AND recorded_at >= ? AND recorded_at < ?
	UNION ALL
	SELECT subject, amount, count FROM quota_rollups WHERE action = ? AND bucket_start >= ? AND bucket_start < ?
) x
GROUP BY subject ORDER BY 2 DESC, subject LIMIT ?`,
	ack:        `DELETE FROM quota_notices WHERE id = ?`,
	retry:      `UPDATE quota_notices SET due_at = ?, claimed_until = NULL, attempts = attempts + 1 WHERE id = ?`,
	migrations: "migrations/sqlite",
	// No lock: the immediate transaction of the recommended DSN
	// serializes Migrate.
	migrationsTable: `CREATE TABLE IF NOT EXISTS quota_schema_migrations (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    checksum   TEXT    NOT NULL,
    applied_at INTEGER NOT NULL
) STRICT`,
	insertMigration: `INSERT INTO quota_schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)`,
}

func (*sqliteDialect) text() *sqlText { return &sqliteText }

// SQLite statements of the write transactions, prepared once per
// connection (see SQLStore.warm).
const (
	sqliteClaimKey = `INSERT INTO quota_idempotency_keys (subject, idempotency_key, fingerprint, action, created_at)
VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`
	// sqliteReleaseKey releases the key ?1, ?2 when its hold was
	// cancelled or expired (at ?3) uncommitted.
	sqliteReleaseKey = `DELETE FROM quota_idempotency_keys
WHERE subject = ?1 AND idempotency_key = ?2 AND hold_id IS NOT NULL AND settled = 0
  AND NOT EXISTS (SELECT 1 FROM quota_holds h WHERE h.id = quota_idempotency_keys.hold_id AND h.expires_at > ?3)`
	// sqliteSettleKey marks the key of a committed hold ?3.
	sqliteSettleKey = `UPDATE quota_idempotency_keys SET settled = 1 WHERE subject = ? AND idempotency_key = ? AND hold_id = ?`
	sqliteReadKey   = `SELECT fingerprint, action, record_id, hold_id, hold_expires_at, counters
FROM quota_idempotency_keys WHERE subject = ? AND idempotency_key = ?`
	sqliteUpdateKey = `UPDATE quota_idempotency_keys SET record_id = ?, hold_id = ?, hold_expires_at = ?, counters = ?
WHERE subject = ? AND idempotency_key = ?`
	sqliteCounter = `SELECT s.used, s.limit_max, s.period_end,
	(SELECT ifnull(sum(c.amount), 0) FROM quota_hold_counters c
	  WHERE c.subject = ?1 AND c.action = ?2 AND c.period = ?3 AND c.period_start = ?4 AND c.expires_at > ?5),
	s.marks
FROM quota_summaries s
WHERE s.subject = ?1 AND s.action = ?2 AND s.period = ?3 AND s.period_start = ?4 AND s.limit_max IS NOT NULL`
	// sqliteCharge1 adds ?10 (0 for a hold) to the used of one counter,
	// if the subscription is still the one ?13 names (sqliteVersionIs),
	// and sets its limit_max to ?9 and its mark_amounts to ?12, if a use
	// of ?6 fits: with ?7 the bound (Max if enforced, else MaxInt64),
	// used + held + ?6 <= ?7 for ?6 > 0, used + ?6 >= 0 otherwise. The
	// counter is created if it is missing and the use fits a new one. It
	// returns used, held and marks (which it leaves alone), or no row
	// when it wrote nothing. Every sum stays inside int64 (a REAL would
	// fail the INTEGER columns of the STRICT table anyway).
	sqliteCharge1 = `INSERT INTO quota_summaries AS s (subject, action, period, period_start, period_end, used, limit_max, mark_amounts)
SELECT ?1, ?2, ?3, ?4, ?5, ?11, ?9, ?12
WHERE ?6 <= ?7 AND (?6 >= 0 OR EXISTS (SELECT 1 FROM quota_summaries
	WHERE subject = ?1 AND action = ?2 AND period = ?3 AND period_start = ?4)) AND (` + sqliteVersionIs + `)
ON CONFLICT (subject, action, period, period_start) DO UPDATE
SET used = s.used + ?10, limit_max = excluded.limit_max, mark_amounts = excluded.mark_amounts
WHERE CASE WHEN ?6 > 0 THEN s.used <= ?7 - ` + sqliteHeldOf + ` - ?6 ELSE s.used + ?6 >= 0 END AND (` + sqliteVersionIs + `)
RETURNING used, ` + sqliteHeldOf + `, marks`
	// sqliteVersionIs holds when the subscription of ?1 is the one that
	// ?13 names (Op.Version, step 0): 0 for any, VersionNone for none.
	sqliteVersionIs = `?13 = 0 OR (?13 = -1 AND NOT EXISTS (SELECT 1 FROM quota_subscriptions WHERE subject = ?1))
	OR EXISTS (SELECT 1 FROM quota_subscriptions WHERE subject = ?1 AND version = ?13)`
	// sqliteHeldOf is the held amount of counter ?1 to ?4 at ?8.
	sqliteHeldOf = `(SELECT ifnull(sum(c.amount), 0) FROM quota_hold_counters c
	WHERE c.subject = ?1 AND c.action = ?2 AND c.period = ?3 AND c.period_start = ?4 AND c.expires_at > ?8)`
	sqliteSubscriptionVersion = `SELECT version FROM quota_subscriptions WHERE subject = ?`
	sqliteInsertRecord        = `INSERT INTO quota_records (subject, action, amount, resource_id, metadata, idempotency_key, recorded_at)
VALUES (?, ?, ?, ?, ?, ?, ?)`
	sqliteSweepLinks = `DELETE FROM quota_hold_counters WHERE hold_id IN
(SELECT id FROM quota_holds WHERE subject = ?1 AND action = ?2 AND expires_at <= ?3)`
	sqliteSweepHolds = `DELETE FROM quota_holds WHERE subject = ?1 AND action = ?2 AND expires_at <= ?3`
	sqliteInsertHold = `INSERT INTO quota_holds (id, subject, action, amount, resource_id, metadata, idempotency_key, recorded_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`
	sqliteTakeLinks = `DELETE FROM quota_hold_counters WHERE hold_id = ? RETURNING period, period_start`
	sqliteTakeHold  = `DELETE FROM quota_holds WHERE id = ?
RETURNING subject, action, amount, resource_id, metadata, idempotency_key, recorded_at, expires_at`
	// sqliteChargeUsed adds a committed amount to a counter, and returns
	// what chargeHold needs to set its marks.
	sqliteChargeUsed = `UPDATE quota_summaries SET used = used + ?
WHERE subject = ? AND action = ? AND period = ? AND period_start = ?
RETURNING used, limit_max, marks, mark_amounts, period_end`
	sqliteDropLinks = `DELETE FROM quota_hold_counters WHERE hold_id = ?`
	sqliteMark      = `UPDATE quota_summaries SET marks = marks | ?
WHERE subject = ? AND action = ? AND period = ? AND period_start = ?`
	sqliteDropHold = `DELETE FROM quota_holds WHERE id = ?`
	// sqliteInsertNotice adds a notice to the outbox, due at once.
	sqliteInsertNotice = `INSERT INTO quota_notices (subject, action, period, period_start, period_end, mark, used, limit_max, recorded_at, due_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`
	// sqliteClaim claims the due notices that no lease holds, oldest
	// first, until ?2; the rows come back in any order.
	sqliteClaim = `UPDATE quota_notices SET claimed_until = ?2
WHERE id IN (SELECT id FROM quota_notices
	WHERE due_at <= ?1 AND (claimed_until IS NULL OR claimed_until <= ?1)
	ORDER BY id LIMIT ?3)
RETURNING ` + noticeColumns
	// sqliteSweepExpiredLinks and sqliteSweepExpired delete the counters
	// of the first ?2 holds expired at ?1, then those holds (the same
	// ones: the transaction holds the write lock).
	sqliteSweepExpiredLinks = `DELETE FROM quota_hold_counters WHERE hold_id IN
(SELECT id FROM quota_holds WHERE expires_at <= ?1 ORDER BY expires_at, id LIMIT ?2)`
	sqliteSweepExpired = `DELETE FROM quota_holds WHERE id IN
(SELECT id FROM quota_holds WHERE expires_at <= ?1 ORDER BY expires_at, id LIMIT ?2)`
)

// Statements whose text depends on a number of counters, built once for
// up to four.
var (
	sqliteCharges   = buildSQL(sqliteCharge)
	sqliteLinks     = buildSQL(sqliteLinksQuery)
	sqliteCountersN = buildSQL(sqliteCountersQuery)
)

func buildSQL(build func(int) string) (qs [5]string) {
	for n := 1; n < len(qs); n++ {
		qs[n] = build(n)
	}
	return qs
}

func cachedSQL(cache *[5]string, n int, build func(int) string) string {
	if n > 0 && n < len(cache) {
		return cache[n]
	}
	return build(n)
}

// sqliteWrites are the statements that warm prepares for the SQLite write
// transactions.
var sqliteWrites = func() []string {
	qs := []string{sqliteClaimKey, sqliteReadKey, sqliteUpdateKey, sqliteCounter, sqliteCharge1, sqliteInsertRecord,
		sqliteSweepLinks, sqliteSweepHolds, sqliteInsertHold, sqliteTakeLinks, sqliteTakeHold,
		sqliteChargeUsed, sqliteDropLinks, sqliteDropHold, sqliteMark, sqliteInsertNotice, sqliteClaim,
		sqliteSweepExpiredLinks, sqliteSweepExpired, sqliteSavepoint, sqliteRollbackTo, sqliteRelease, sqliteSubscriptionVersion,
		sqliteReleaseKey, sqliteSettleKey}
	qs = append(qs, sqliteRecordsSQL[:]...)
	for n := 1; n < 5; n++ {
		qs = append(qs, sqliteCharges[n], sqliteLinks[n], sqliteCountersN[n])
	}
	return qs
}()

func sqliteLinksQuery(n int) string {
	var b strings.Builder
	b.WriteString("INSERT INTO quota_hold_counters (hold_id, pos, subject, action, period, period_start, amount, expires_at) VALUES ")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?, ?, ?, ?, ?, ?)")
	}
	return b.String()
}

func sqliteCountersQuery(n int) string {
	var b strings.Builder
	b.WriteString("WITH k(i, subject, action, period, period_start) AS (VALUES ")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?, ?, ?)")
	}
	b.WriteString(`)
SELECT k.i, s.used, s.limit_max, s.period_end,
	(SELECT ifnull(sum(c.amount), 0) FROM quota_hold_counters c
	  WHERE c.subject = s.subject AND c.action = s.action AND c.period = s.period
	    AND c.period_start = s.period_start AND c.expires_at > ?),
	s.marks
FROM k JOIN quota_summaries s ON s.subject = k.subject AND s.action = k.action
	AND s.period = k.period AND s.period_start = k.period_start
WHERE s.limit_max IS NOT NULL`)
	return b.String()
}

// sqliteCharge returns the statement that adds the last argument to used
// and sets limit_max and mark_amounts on n counters, creating the missing
// ones with used from their row of values. (SQLite checks used >= 0 on
// the row of values before it resolves the conflict, so a release must
// not appear there.)
func sqliteCharge(n int) string {
	var b strings.Builder
	b.WriteString("INSERT INTO quota_summaries (subject, action, period, period_start, period_end, used, limit_max, mark_amounts) VALUES ")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?, ?, ?, ?, ?, ?)")
	}
	b.WriteString(` ON CONFLICT (subject, action, period, period_start) DO UPDATE
SET used = used + ?, limit_max = excluded.limit_max, mark_amounts = excluded.mark_amounts`)
	return b.String()
}

func (d *sqliteDialect) countersSQL(keys []CounterKey, now time.Time) (string, []any) {
	if len(keys) == 1 {
		k := keys[0]
		return sqliteCounter, []any{k.Subject, k.Action, k.Period.String(), d.tv(k.Start), d.tv(now)}
	}
	args := make([]any, 0, 5*len(keys)+1)
	for i, k := range keys {
		args = append(args, i+1, k.Subject, k.Action, k.Period.String(), d.tv(k.Start))
	}
	args = append(args, d.tv(now))
	return cachedSQL(&sqliteCountersN, len(keys), sqliteCountersQuery), args
}

// sumsSQL reads each bucket's records as a range of an index: the bounds
// come as a JSON array, which json_each turns into the rows of b, joined
// with the records (and the rollups) in range.
func (d *sqliteDialect) sumsSQL(q SumQuery) (string, []any) {
	a := sqlArgs{param: d.param}
	j := make([]byte, 0, 20*len(q.Bounds))
	j = append(j, '[')
	for i, t := range q.Bounds {
		if i > 0 {
			j = append(j, ',')
		}
		j = strconv.AppendInt(j, t.UnixMicro(), 10)
	}
	var b strings.Builder
	b.WriteString(`WITH t AS (SELECT CAST(key AS INTEGER) AS i, value AS t FROM json_each(` + a.bind(string(append(j, ']'))) + `)),
b AS (SELECT i AS bucket, t AS lo, lead(t) OVER (ORDER BY i) AS hi FROM t)`)
	branch := func(alias, table, timeCol, count string) {
		fmt.Fprintf(&b, "\nSELECT b.bucket, %s AS action, %s.amount AS amount, %s AS n\nFROM b JOIN %s %s ON %s.%s >= b.lo AND %s.%s < b.hi",
			sumAction(q, alias), alias, count, table, alias, alias, timeCol, alias, timeCol)
		sumFilter(&b, &a, q, alias)
		b.WriteString("\nWHERE b.hi IS NOT NULL")
	}
	b.WriteString("\nSELECT bucket, action, sum(amount), sum(n) FROM (")
	branch("r", "quota_records", "recorded_at", "1")
	b.WriteString("\nUNION ALL")
	branch("u", "quota_rollups", "bucket_start", "u.count")
	b.WriteString("\n) x\nGROUP BY bucket, action\nORDER BY bucket, action")
	return b.String(), a.vals
}

// write runs f in a write transaction, in the writer's turn, with the
// write statements prepared.
func (d *sqliteDialect) write(ctx context.Context, f func(q sqlQuerier) (keep bool, err error)) error {
	done, err := d.s.writer(ctx)
	if err != nil {
		return err
	}
	defer done()
	d.s.warm(ctx, sqliteWrites...)
	return d.s.atomically(ctx, f)
}

// reached returns the bits of the marks that cur has reached.
func reached(marks []int64, cur int64) int64 {
	var set int64
	for m, v := range marks[:min(len(marks), MaxMarks)] {
		if v > 0 && v <= cur {
			set |= 1 << m
		}
	}
	return set
}

// sqliteMarks encodes marks (at most MaxMarks of them) as the
// mark_amounts column holds them: a JSON array, or NULL for none.
func sqliteMarks(marks []int64) any {
	marks = marks[:min(len(marks), MaxMarks)]
	if len(marks) == 0 {
		return nil
	}
	b := make([]byte, 0, 8*len(marks))
	b = append(b, '[')
	for i, m := range marks {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, m, 10)
	}
	return string(append(b, ']'))
}

// parseSQLiteMarks decodes a mark_amounts column.
func parseSQLiteMarks(s sql.NullString) ([]int64, error) {
	if !s.Valid || s.String == "" {
		return nil, nil
	}
	var marks []int64
	if err := json.Unmarshal([]byte(s.String), &marks); err != nil {
		return nil, fmt.Errorf("mark_amounts: %w", err)
	}
	return marks, nil
}

// setMarks sets the marks bits (not 0) on the counter c, which now has
// c.Used, and adds a notice for the highest of them, timed at (the time
// of the record) and due at now.
func (d *sqliteDialect) setMarks(ctx context.Context, q sqlQuerier, c *Counter, marks int64, at, now time.Time) error {
	period, start := c.Period.String(), d.tv(c.Start)
	if _, err := q.ExecContext(ctx, sqliteMark, marks, c.Subject, c.Action, period, start); err != nil {
		return err
	}
	top := bits.Len64(uint64(marks)) - 1
	_, err := q.ExecContext(ctx, sqliteInsertNotice, c.Subject, c.Action, period, start, d.tv(c.End), top, c.Used, c.Max, d.tv(at), d.tv(now))
	return err
}

// The savepoint of a call in a batch.
const (
	sqliteSavepoint  = "SAVEPOINT quota_call"
	sqliteRollbackTo = "ROLLBACK TO quota_call"
	sqliteRelease    = "RELEASE quota_call"
)

// writeBatch writes calls in one write transaction, each in a savepoint
// of its own, which its outcome keeps or rolls back; one call alone needs
// no savepoint.
func (d *sqliteDialect) writeBatch(ctx context.Context, calls []*sqlCall) error {
	return d.write(ctx, func(q sqlQuerier) (bool, error) {
		if len(calls) == 1 {
			return d.writeCall(ctx, q, calls[0], nil)
		}
		bt := &sqliteBatch{versions: make(map[string]int64)}
		for _, c := range calls {
			if !needsSavepoint(c) {
				if _, err := d.writeCall(ctx, q, c, bt); err != nil {
					return false, err
				}
				continue
			}
			// The call writes a record of its own at once: the
			// records of the calls before it go first.
			if err := bt.flush(ctx, d, q); err != nil {
				return false, err
			}
			if _, err := q.ExecContext(ctx, sqliteSavepoint); err != nil {
				return false, err
			}
			keep, err := d.writeCall(ctx, q, c, bt)
			if err != nil {
				return false, err
			}
			if !keep {
				if _, err := q.ExecContext(ctx, sqliteRollbackTo); err != nil {
					return false, err
				}
			}
			if _, err := q.ExecContext(ctx, sqliteRelease); err != nil {
				return false, err
			}
		}
		return true, bt.flush(ctx, d, q)
	})
}

// sqliteBatch is what the calls of a batch share in its transaction,
// which holds the write lock throughout.
type sqliteBatch struct {
	// versions holds the subscription versions read so far, by subject
	// (-1 for none): no subscription changes while the batch holds the
	// write lock.
	versions map[string]int64
	// pending are the calls whose record is still to be inserted, in
	// order; flush inserts them, a few statements for all of them.
	pending []*sqlCall
}

// Record inserts of a batch go by chunks of these sizes, largest first,
// each one prepared statement.
var sqliteRecordChunks = [...]int{64, 16, 4, 1}

// sqliteInsertRecords returns the statement that inserts n records.
func sqliteInsertRecords(n int) string {
	var b strings.Builder
	b.WriteString(`INSERT INTO quota_records (subject, action, amount, resource_id, metadata, idempotency_key, recorded_at) VALUES `)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("(?, ?, ?, ?, ?, ?, ?)")
	}
	return b.String()
}

var sqliteRecordsSQL = func() (qs [len(sqliteRecordChunks)]string) {
	for i, n := range sqliteRecordChunks {
		qs[i] = sqliteInsertRecords(n)
	}
	return qs
}()

// flush inserts the pending records, in order, and sets the RecordID of
// their calls: the ids of the rows of one INSERT are consecutive, the
// last one LastInsertId (the table is AUTOINCREMENT, and the batch holds
// the write lock).
func (bt *sqliteBatch) flush(ctx context.Context, d *sqliteDialect, q sqlQuerier) error {
	if bt == nil {
		return nil
	}
	for len(bt.pending) > 0 {
		k := len(sqliteRecordChunks) - 1
		for i, n := range sqliteRecordChunks {
			if n <= len(bt.pending) {
				k = i
				break
			}
		}
		chunk := bt.pending[:sqliteRecordChunks[k]]
		args := make([]any, 0, 7*len(chunk))
		for _, c := range chunk {
			r := &c.op.Record
			args = append(args, r.Subject, r.Action, r.Amount, nullString(r.ResourceID), nullJSON(r.Metadata), nullString(r.Key), d.tv(r.Time))
		}
		res, err := q.ExecContext(ctx, sqliteRecordsSQL[k], args...)
		if err != nil {
			return err
		}
		last, err := res.LastInsertId()
		if err != nil {
			return err
		}
		for i, c := range chunk {
			c.res.RecordID = last - int64(len(chunk)-1-i)
		}
		bt.pending = bt.pending[len(chunk):]
	}
	return nil
}

// needsSavepoint reports whether c may write before it learns that its
// writes are not to be kept: a use with a key claims the key first, a
// commit takes the hold's counters first. A use without a key writes
// nothing when it is refused or replayed, and a cancel deletes nothing
// when it finds no hold; an error fails the whole batch.
func needsSavepoint(c *sqlCall) bool {
	switch c.kind {
	case callApply:
		return c.op.Record.Key != ""
	case callCommit:
		return true
	}
	return false
}

// writeCall performs c in the transaction q, sets its outcome, and
// reports whether its writes are to be kept; bt is the batch of c, or nil
// for a call written alone. An error is a failure of
// the transaction; an outcome of c's own (isOutcome) goes to c.err.
func (d *sqliteDialect) writeCall(ctx context.Context, q sqlQuerier, c *sqlCall, bt *sqliteBatch) (keep bool, err error) {
	switch c.kind {
	case callApply:
		u := &sqliteUse{d: d, q: q, op: c.op, now: d.tv(c.op.Now), batch: bt}
		keep, err = u.run(ctx)
		c.res, c.err = u.res, u.keyErr
		if u.deferred && err == nil {
			bt.pending = append(bt.pending, c)
		}
	case callCommit:
		keep, c.rec, c.err, err = d.commitIn(ctx, q, c.id, c.amount, c.now)
	case callCancel:
		c.found, err = d.cancelIn(ctx, q, c.id)
		keep = c.found
	}
	if err != nil && isOutcome(err) {
		c.err, err, keep = err, nil, false
	}
	return keep, err
}

// sqliteUse is one Op applied in one SQLite write transaction, step by
// step: look up its key, read its counters, admit it, write it, set the
// marks it reaches first, and record or hold it. The transaction holds the
// write lock throughout, so what a step reads is still true in the next.
type sqliteUse struct {
	d   *sqliteDialect
	q   sqlQuerier
	op  *Op
	now any // op.Now, encoded
	// cs are the counters: before the use, then after it (settle).
	cs []Counter
	// marks are the bits of the marks already set on each counter.
	marks []int64
	// res is the result; keyErr the outcome of a key seen before.
	res    ApplyResult
	keyErr error
	// batch is the batch of the use, or nil; deferred reports that the
	// use left its record to the batch's flush (record).
	batch    *sqliteBatch
	deferred bool
}

// run performs the steps; it returns keep false to roll back, for a
// replay or a refusal too.
func (u *sqliteUse) run(ctx context.Context) (keep bool, err error) {
	checked, err := u.stepZero(ctx)
	if err != nil {
		return false, err
	}
	if replayed, err := u.lookupKey(ctx); err != nil || replayed {
		return false, err
	}
	// One counter (the usual case): one statement reads, admits and
	// writes. Else, and when that statement refuses the use, the steps
	// one by one.
	charged, err := u.chargeOne(ctx, checked)
	if err == nil && !checked {
		err = u.afterCharge(ctx, charged)
	}
	if err != nil {
		return false, err
	}
	if !charged {
		if err := u.readCounters(ctx); err != nil {
			return false, err
		}
		if admitted, err := u.admit(); err != nil || !admitted {
			return false, err
		}
		if err := u.write(ctx); err != nil {
			return false, err
		}
	}
	u.settle()
	crossed, err := u.mark(ctx)
	if err != nil {
		return false, err
	}
	u.res = ApplyResult{Applied: true, Counters: u.cs, Crossed: crossed}
	if u.op.Hold != nil {
		err = u.hold(ctx)
	} else {
		err = u.record(ctx)
	}
	if err != nil {
		return false, err
	}
	return true, u.rememberKey(ctx)
}

// stepZero performs step 0 of Op first, as Op orders, and reports
// whether it did; but a use of one counter without a key (the usual
// case) leaves it to the statement that charges the counter (chargeOne),
// which then saves a statement.
func (u *sqliteUse) stepZero(ctx context.Context) (checked bool, err error) {
	checked, err = u.versionKnown()
	if err != nil || checked || (u.op.Record.Key == "" && len(u.op.Counters) == 1) {
		return checked, err
	}
	return true, u.checkVersion(ctx)
}

// afterCharge completes step 0 after a chargeOne that checked it: a
// charge proves the version (the batch remembers it); no charge may be
// for a changed subscription, which checkVersion tells.
func (u *sqliteUse) afterCharge(ctx context.Context, charged bool) error {
	if !charged {
		return u.checkVersion(ctx)
	}
	if u.batch != nil {
		u.batch.versions[u.op.Record.Subject] = u.op.Version
	}
	return nil
}

// versionKnown reports whether step 0 of Op is settled without a
// statement: no version to check, or the subscription version that the
// batch read before; the latter may refuse the use.
func (u *sqliteUse) versionKnown() (bool, error) {
	if u.op.Version == 0 {
		return true, nil
	}
	if u.batch == nil {
		return false, nil
	}
	v, ok := u.batch.versions[u.op.Record.Subject]
	if ok && v != u.op.Version {
		return false, fmt.Errorf("%w: %q", ErrSubscriptionChanged, u.op.Record.Subject)
	}
	return ok, nil
}

// checkVersion performs step 0 of Op: a use judged against another
// subscription than the one stored is refused with ErrSubscriptionChanged.
// The transaction holds the write lock, which PutSubscription takes too.
func (u *sqliteUse) checkVersion(ctx context.Context) error {
	if u.op.Version == 0 {
		return nil
	}
	subject := u.op.Record.Subject
	v, ok := int64(0), false
	if u.batch != nil {
		v, ok = u.batch.versions[subject]
	}
	if !ok {
		err := u.q.QueryRowContext(ctx, sqliteSubscriptionVersion, subject).Scan(&v)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			v = VersionNone
		case err != nil:
			return err
		}
		if u.batch != nil {
			u.batch.versions[subject] = v
		}
	}
	if v == u.op.Version {
		return nil
	}
	return fmt.Errorf("%w: %q", ErrSubscriptionChanged, subject)
}

// charge is what the use adds to Used now: its amount, or 0 for a hold,
// which adds to Held instead.
func (u *sqliteUse) charge() int64 {
	if u.op.Hold != nil {
		return 0
	}
	return u.op.Record.Amount
}

// lookupKey claims the key of the use, if it has one. A key claimed
// before gives its first outcome (or a conflict) in res and keyErr, and
// replayed true.
func (u *sqliteUse) lookupKey(ctx context.Context) (replayed bool, err error) {
	r := &u.op.Record
	if r.Key == "" {
		return false, nil
	}
	if _, err := u.q.ExecContext(ctx, sqliteReleaseKey, r.Subject, r.Key, u.now); err != nil {
		return false, err
	}
	k, err := u.q.ExecContext(ctx, sqliteClaimKey, r.Subject, r.Key, u.op.Fingerprint, r.Action, u.now)
	if err != nil {
		return false, err
	}
	if n, err := k.RowsAffected(); err != nil || n > 0 {
		return false, err
	}
	var fp, action string
	var recordID sql.NullInt64
	var holdID, counters sql.NullString
	var holdExp time.Time
	err = u.q.QueryRowContext(ctx, sqliteReadKey, r.Subject, r.Key).Scan(&fp, &action, &recordID, &holdID, sqlTime{&holdExp}, &counters)
	if err != nil {
		return false, err
	}
	u.res, u.keyErr = replay(u.op, fp, action, recordID, holdID, holdExp, counters)
	return true, nil
}

// chargeOne charges the counter of a use of one counter, in one
// statement, if the use fits it (and, unless checked, if step 0 of Op
// passes), and reads the counter as it was before
// into cs and marks. It writes nothing, and returns charged false, when
// the use does not fit or has not one counter.
func (u *sqliteUse) chargeOne(ctx context.Context, checked bool) (charged bool, err error) {
	if len(u.op.Counters) != 1 {
		return false, nil
	}
	version := u.op.Version
	if checked {
		version = 0
	}
	c := &u.op.Counters[0]
	bound := int64(math.MaxInt64)
	if u.op.Enforce && c.Max != Unlimited {
		bound = c.Max
	}
	charge := u.charge()
	var used, held, mk int64
	err = u.q.QueryRowContext(ctx, sqliteCharge1, c.Subject, c.Action, c.Period.String(), u.d.tv(c.Start), u.d.tv(c.End),
		u.op.Record.Amount, bound, u.now, c.Max, charge, max(charge, 0), sqliteMarks(c.Marks), version).Scan(&used, &held, &mk)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, nil
	case err != nil:
		return false, err
	}
	u.cs, u.marks = []Counter{{Used: used - charge, Held: held}}, []int64{mk}
	return true, nil
}

// readCounters reads the counters of the use, and their marks, into cs
// and marks.
func (u *sqliteUse) readCounters(ctx context.Context) (err error) {
	keys := make([]CounterKey, len(u.op.Counters))
	for i, c := range u.op.Counters {
		keys[i] = c.CounterKey
	}
	u.cs, u.marks, err = u.d.s.readCounters(ctx, u.q, keys, u.op.Now)
	return err
}

// admit decides on the use from cs, by Admit. A refusal leaves its
// result in res.
func (u *sqliteUse) admit() (admitted bool, err error) {
	refused, err := Admit(u.op, u.cs)
	if err != nil {
		return false, err
	}
	if refused {
		for i := range u.cs {
			u.cs[i].End = u.op.Counters[i].End
		}
		u.res = ApplyResult{Counters: u.cs}
		return false, nil
	}
	if len(u.op.Counters) == 1 {
		r := &u.op.Record
		return false, fmt.Errorf("counter of %q %q: the statement refused a use that fits", r.Subject, r.Action)
	}
	return true, nil
}

// write charges the counters of an admitted use of several counters, in
// one statement. (chargeOne charged a use of one; none takes nothing.)
func (u *sqliteUse) write(ctx context.Context) error {
	n := len(u.op.Counters)
	if n < 2 {
		return nil
	}
	charge := u.charge()
	args := make([]any, 0, 8*n+1)
	for _, c := range u.op.Counters {
		args = append(args, c.Subject, c.Action, c.Period.String(), u.d.tv(c.Start), u.d.tv(c.End), max(charge, 0), c.Max, sqliteMarks(c.Marks))
	}
	args = append(args, charge)
	_, err := u.q.ExecContext(ctx, cachedSQL(&sqliteCharges, n, sqliteCharge), args...)
	return err
}

// settle turns cs into the counters after the use.
func (u *sqliteUse) settle() {
	a := u.op.Record.Amount
	for i, c := range u.op.Counters {
		u.cs[i] = Counter{CounterKey: c.CounterKey, End: c.End, Used: u.cs[i].Used, Held: u.cs[i].Held, Max: c.Max}
		if u.op.Hold != nil {
			u.cs[i].Held += a
		} else {
			u.cs[i].Used += a
		}
	}
}

// mark sets the marks that Used reached first, adds a notice for the
// highest of them on each counter, and returns them: the transaction
// holds the write lock, so the marks read before are the latest. A hold
// sets none: its commit does.
func (u *sqliteUse) mark(ctx context.Context) ([]Crossing, error) {
	if u.op.Hold != nil {
		return nil, nil
	}
	var crossed []Crossing
	for i, c := range u.op.Counters {
		set := reached(c.Marks, u.cs[i].Used) &^ u.marks[i]
		if set == 0 {
			continue
		}
		if err := u.d.setMarks(ctx, u.q, &u.cs[i], set, u.op.Record.Time, u.op.Now); err != nil {
			return nil, err
		}
		for _, x := range crossings([]int64{set}) {
			crossed = append(crossed, Crossing{Counter: i, Mark: x.Mark})
		}
	}
	return crossed, nil
}

// record appends the record of the use, and sets res.RecordID.
func (u *sqliteUse) record(ctx context.Context) error {
	r := &u.op.Record
	if u.batch != nil && r.Key == "" {
		// A use without a key: nothing needs its record id before the
		// batch ends.
		u.deferred = true
		return nil
	}
	ins, err := u.q.ExecContext(ctx, sqliteInsertRecord, r.Subject, r.Action, r.Amount, nullString(r.ResourceID), nullJSON(r.Metadata), nullString(r.Key), u.d.tv(r.Time))
	if err != nil {
		return err
	}
	u.res.RecordID, err = ins.LastInsertId() // the rowid, which id is
	return err
}

// hold sweeps the expired holds of the use's action, creates the hold of
// the use on its counters, and sets res.HoldID and res.HoldExpiresAt.
func (u *sqliteUse) hold(ctx context.Context) error {
	op, r := u.op, &u.op.Record
	if _, err := u.q.ExecContext(ctx, sqliteSweepLinks, r.Subject, r.Action, u.now); err != nil {
		return err
	}
	if _, err := u.q.ExecContext(ctx, sqliteSweepHolds, r.Subject, r.Action, u.now); err != nil {
		return err
	}
	exp := u.d.tv(op.Hold.ExpiresAt)
	if _, err := u.q.ExecContext(ctx, sqliteInsertHold, op.Hold.ID, r.Subject, r.Action, r.Amount, nullString(r.ResourceID), nullJSON(r.Metadata), nullString(r.Key), u.d.tv(r.Time), exp); err != nil {
		return err
	}
	u.res.HoldID, u.res.HoldExpiresAt = op.Hold.ID, utcTime(op.Hold.ExpiresAt.Truncate(time.Microsecond))
	if len(op.Counters) == 0 {
		return nil
	}
	args := make([]any, 0, 8*len(op.Counters))
	for i, c := range op.Counters {
		args = append(args, op.Hold.ID, i+1, c.Subject, c.Action, c.Period.String(), u.d.tv(c.Start), r.Amount, exp)
	}
	_, err := u.q.ExecContext(ctx, cachedSQL(&sqliteLinks, len(op.Counters), sqliteLinksQuery), args...)
	return err
}

// rememberKey stores the outcome of the use with its key, if it has one.
func (u *sqliteUse) rememberKey(ctx context.Context) error {
	r := &u.op.Record
	if r.Key == "" {
		return nil
	}
	out, err := encodeOutcome(u.cs)
	if err != nil {
		return err
	}
	_, err = u.q.ExecContext(ctx, sqliteUpdateKey, nullInt(u.res.RecordID), nullString(u.res.HoldID), u.d.s.tvOrNull(u.res.HoldExpiresAt), out, r.Subject, r.Key)
	return err
}

// sqliteLink is a counter that a hold is charged to.
type sqliteLink struct {
	period string
	start  int64
}

// commitIn takes the hold id and its counters, charges the counters and
// appends the record, in the transaction q. A hold not found, expired
// (then deleted: keep), or smaller than amount is the outcome.
func (d *sqliteDialect) commitIn(ctx context.Context, q sqlQuerier, id string, amount int64, now time.Time) (keep bool, rec Record, outcome, err error) {
	// The counters first: deleting the hold would cascade to them.
	links, err := takeLinks(ctx, q, id)
	if err != nil {
		return false, Record{}, nil, err
	}
	var held int64
	var resource, key, meta sql.NullString
	var expires time.Time
	err = q.QueryRowContext(ctx, sqliteTakeHold, id).
		Scan(&rec.Subject, &rec.Action, &held, &resource, &meta, &key, sqlTime{&rec.Time}, sqlTime{&expires})
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return false, Record{}, ErrReservationNotFound, nil
	case err != nil:
		return false, Record{}, nil, err
	case !expires.After(now):
		return true, Record{}, ErrReservationExpired, nil // the hold is gone
	case amount > held:
		return false, Record{}, fmt.Errorf("%w: commit of %d on a hold of %d", ErrInvalidAmount, amount, held), nil
	}
	if err := d.chargeHold(ctx, q, &rec, links, amount, now); err != nil {
		return false, Record{}, nil, err
	}
	rec.Amount, rec.ResourceID, rec.Key = amount, resource.String, key.String
	if meta.Valid && meta.String != "" {
		rec.Metadata = json.RawMessage(meta.String)
	}
	ins, err := q.ExecContext(ctx, sqliteInsertRecord, rec.Subject, rec.Action, amount, resource, meta, key, d.tv(rec.Time))
	if err == nil {
		rec.ID, err = ins.LastInsertId()
	}
	if err == nil && key.Valid && key.String != "" {
		_, err = q.ExecContext(ctx, sqliteSettleKey, rec.Subject, key.String, id)
	}
	if err != nil {
		return false, Record{}, nil, err
	}
	return true, rec, nil, nil
}

// chargeHold adds the amount committed on a hold of rec's subject and
// action to its counters, links, and sets the marks that their Used then
// reaches first, with the marks of their last write (Op, step 4).
func (d *sqliteDialect) chargeHold(ctx context.Context, q sqlQuerier, rec *Record, links []sqliteLink, amount int64, now time.Time) error {
	for _, l := range links {
		c := Counter{CounterKey: CounterKey{Subject: rec.Subject, Action: rec.Action, Start: fromMicros(l.start)}}
		var limit sql.NullInt64
		var marked int64
		var amounts sql.NullString
		err := q.QueryRowContext(ctx, sqliteChargeUsed, amount, rec.Subject, rec.Action, l.period, l.start).
			Scan(&c.Used, &limit, &marked, &amounts, sqlTime{&c.End})
		if err != nil {
			return err
		}
		marks, err := parseSQLiteMarks(amounts)
		if err != nil {
			return err
		}
		set := reached(marks, c.Used) &^ marked
		if set == 0 {
			continue
		}
		if c.Period, err = ParsePeriod(l.period); err != nil {
			return err
		}
		c.Max = limit.Int64
		if err := d.setMarks(ctx, q, &c, set, rec.Time, now); err != nil {
			return err
		}
	}
	return nil
}

// takeLinks deletes the counters of the hold id and returns them.
func takeLinks(ctx context.Context, q sqlQuerier, id string) ([]sqliteLink, error) {
	rows, err := q.QueryContext(ctx, sqliteTakeLinks, id)
	if err != nil {
		return nil, err
	}
	var links []sqliteLink
	for rows.Next() {
		var l sqliteLink
		if err := rows.Scan(&l.period, &l.start); err != nil {
			rows.Close()
			return nil, err
		}
		links = append(links, l)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, err
	}
	return links, nil
}

// cancelIn deletes the hold id and its counters in the transaction q, and
// reports whether there was one.
func (d *sqliteDialect) cancelIn(ctx context.Context, q sqlQuerier, id string) (found bool, err error) {
	if _, err := q.ExecContext(ctx, sqliteDropLinks, id); err != nil {
		return false, err
	}
	res, err := q.ExecContext(ctx, sqliteDropHold, id)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// sweep deletes the counters of the first limit expired holds, then those
// holds, in one transaction.
func (d *sqliteDialect) sweep(ctx context.Context, now time.Time, limit int) (int64, error) {
	var n int64
	err := d.write(ctx, func(q sqlQuerier) (bool, error) {
		if _, err := q.ExecContext(ctx, sqliteSweepExpiredLinks, d.tv(now), limit); err != nil {
			return false, err
		}
		res, err := q.ExecContext(ctx, sqliteSweepExpired, d.tv(now), limit)
		if err != nil {
			return false, err
		}
		n, err = res.RowsAffected()
		return err == nil && n > 0, err
	})
	return n, err
}

// claim claims the notices in one write transaction: no other claim runs
// meanwhile, in this process or another.
func (d *sqliteDialect) claim(ctx context.Context, now, until time.Time, limit int) ([]Notice, error) {
	var ns []Notice
	err := d.write(ctx, func(q sqlQuerier) (bool, error) {
		rows, err := q.QueryContext(ctx, sqliteClaim, d.tv(now), d.tv(until), limit)
		if err != nil {
			return false, err
		}
		ns, err = scanNotices(rows)
		return err == nil, err
	})
	return ns, err
}

// prune adds the records to their rollups, then deletes them, in one
// transaction. The bucket of a record is its time rounded down to a
// multiple of RollupStep (also before 1970).
func (d *sqliteDialect) prune(ctx context.Context, before time.Time, limit int) (int64, error) {
	done, err := d.s.writer(ctx)
	if err != nil {
		return 0, err
	}
	defer done()
	const step = int64(RollupStep / time.Microsecond)
	var n int64
	err = d.s.atomically(ctx, func(q sqlQuerier) (bool, error) {
		if _, err := q.ExecContext(ctx, `INSERT INTO quota_rollups AS u (subject, action, bucket_start, amount, count)
SELECT subject, action, bucket, sum(amount), count(*) FROM (
	SELECT subject, action, recorded_at - ((recorded_at % ?3) + ?3) % ?3 AS bucket, amount
	  FROM quota_records WHERE recorded_at < ?1 ORDER BY id LIMIT ?2)
WHERE true GROUP BY subject, action, bucket
ON CONFLICT (subject, action, bucket_start) DO UPDATE
SET amount = u.amount + excluded.amount, count = u.count + excluded.count`, d.tv(before), limit, step); err != nil {
			return false, err
		}
		res, err := q.ExecContext(ctx, `DELETE FROM quota_records
WHERE id IN (SELECT id FROM quota_records WHERE recorded_at < ?1 ORDER BY id LIMIT ?2)`, d.tv(before), limit)
		if err != nil {
			return false, err
		}
		n, err = res.RowsAffected()
		return err == nil, err
	})
	return n, err
}
