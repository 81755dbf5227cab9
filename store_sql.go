package quota

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect"
)

var (
	_ Store  = (*SQLStore)(nil)
	_ Summer = (*SQLStore)(nil)
	_ Ranker = (*SQLStore)(nil)
	_ Pruner = (*SQLStore)(nil)
)

// sqlMigrations holds the schema migrations, one directory per dialect,
// files named NNNN_name.sql and applied in that order.
//
//go:embed migrations/sqlite/*.sql migrations/pg/*.sql
var sqlMigrations embed.FS

// SQLStore is a Store in a SQLite or PostgreSQL database reached through
// bun. Build one with NewSQLStore and create its tables with Migrate. It
// also answers Quota.Series and Quota.TopSubjects (Sums, Top) and
// Quota.Prune (Prune).
//
// All tables are named quota_*: quota_records (the ledger),
// quota_summaries (one row per counter window: the per-period summary),
// quota_holds and quota_hold_counters (reservations, with their expiry),
// quota_idempotency_keys, quota_subscriptions, quota_rollups (pruned
// records, per quarter hour), and quota_schema_migrations (Migrate's own
// bookkeeping, apart from any bun migrations of the app).
//
// Every method is atomic in the database:
//
//   - PostgreSQL: Apply and Commit are one statement each, a call to a
//     function that Migrate creates (quota_apply, quota_commit), so one
//     round trip; Cancel and Prune are one statement too. They are correct
//     under READ COMMITTED, the default: a use locks its counter rows in
//     the order of CounterKey.Less and re-checks the limit on their latest
//     version (see migrations/pg/0002_functions.sql); under stricter
//     levels a conflicting concurrent use fails with a serialization
//     error, to retry. A use refused takes no lock.
//   - SQLite: Apply, Commit, Cancel and Prune each run a few statements in
//     one transaction, which the recommended DSN makes IMMEDIATE: it holds
//     the write lock from its start. The writers of one SQLStore queue in
//     Go for their turn, and its statements are prepared once per
//     connection.
//   - Over a bun.Tx, every method runs inside that transaction (with a
//     SAVEPOINT where it must undo a refused use), so a use commits or
//     rolls back with it; the caller then takes the locks of several uses
//     in the order it makes them.
//
// A cancelled context returns an error matching ctx.Err() and leaves
// nothing half done. Names are validated before any SQL; values are bound
// as parameters, never spliced into SQL.
//
// Times are stored in UTC with microsecond precision: nanoseconds are
// truncated on the way in, consistently, so a counter written at Start is
// found again at Start, and times read back (Record.Time, Subscription
// anchors) have microseconds. Metadata is stored and returned byte for
// byte (a json column on PostgreSQL: jsonb would reformat it). Counter
// rows are never deleted; PostgreSQL may keep one with limit_max NULL, for
// a first use that was refused, which reads as never written.
//
// SQLite: open the database with modernc.org/sqlite (driver "sqlite") and a
// DSN that sets WAL, a busy timeout, immediate transactions and foreign
// keys, so that concurrent writers, in other processes too, wait for each
// other instead of failing with "database is locked":
//
//	file:/path/quota.db?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_txlock=immediate
//
// PostgreSQL: any database/sql driver; tested with pgx (driver "pgx").
//
// The statements of SQLStore bypass bun's query builder and hooks: they go
// to the database/sql handle under the bun.IDB with the driver's own
// placeholders, so that each is prepared once per connection.
//
// An SQLStore over a *bun.DB is safe for concurrent use; over a bun.Tx it
// is as safe as that transaction.
type SQLStore struct {
	// q runs statements outside a transaction of the store's own.
	q sqlQuerier
	// begin starts a transaction; nil when q is the caller's transaction,
	// in which savepoints stand for transactions.
	begin func(ctx context.Context) (*sql.Tx, error)
	pg    bool
	// wsem serializes the writes of an SQLite store that runs its own
	// transactions: its writers queue here, in order, rather than poll
	// SQLite's lock (busy_timeout), which favours no one and can starve a
	// writer past the timeout under load. Nil otherwise.
	wsem chan struct{}
	// prep prepares the statements of an SQLite store that runs its own
	// transactions, kept in stmts (query -> *sql.Stmt, at most
	// maxStmts). PostgreSQL needs none: pgx caches prepared statements
	// per connection. Nil otherwise.
	prep interface {
		PrepareContext(context.Context, string) (*sql.Stmt, error)
	}
	stmts  sync.Map
	nstmts atomic.Int32
	closed atomic.Bool
}

const maxStmts = 256

// sqlConn runs statements on q (tx when it is a transaction of the
// store's own), with the store's prepared statements where it has them.
type sqlConn struct {
	s  *SQLStore
	q  sqlQuerier
	tx *sql.Tx
}

func (c sqlConn) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st := c.s.stmt(ctx, c.tx, query); st != nil {
		return st.ExecContext(ctx, args...)
	}
	return c.q.ExecContext(ctx, query, args...)
}

func (c sqlConn) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := c.s.stmt(ctx, c.tx, query); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return c.q.QueryContext(ctx, query, args...)
}

func (c sqlConn) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st := c.s.stmt(ctx, c.tx, query); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return c.q.QueryRowContext(ctx, query, args...)
}

// stmt returns the prepared statement of query, bound to tx if not nil,
// or nil to run query as it is. It prepares a statement only outside a
// transaction, where it can take a connection of its own (a pool of one
// connection holds it in the transaction); warm does that before a
// transaction begins.
func (s *SQLStore) stmt(ctx context.Context, tx *sql.Tx, query string) *sql.Stmt {
	if s.prep == nil {
		return nil
	}
	v, ok := s.stmts.Load(query)
	if !ok {
		if tx != nil || s.nstmts.Load() >= maxStmts || s.closed.Load() {
			return nil
		}
		st, err := s.prep.PrepareContext(ctx, query)
		if err != nil {
			return nil // the statement itself reports the error
		}
		if v, ok = s.stmts.LoadOrStore(query, st); ok {
			st.Close()
		} else {
			s.nstmts.Add(1)
			v = st
		}
	}
	if tx != nil {
		return tx.StmtContext(ctx, v.(*sql.Stmt))
	}
	return v.(*sql.Stmt)
}

// warm prepares queries, so that a transaction finds them prepared.
func (s *SQLStore) warm(ctx context.Context, queries ...string) {
	if s.prep == nil {
		return
	}
	for _, q := range queries {
		s.stmt(ctx, nil, q)
	}
}

// sqlQuerier is what *sql.DB, *sql.Conn and *sql.Tx have in common.
type sqlQuerier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// NewSQLStore returns a Store over db: a *bun.DB, a bun.Conn or a bun.Tx
// (or a pointer to one). It chooses its SQL by db.Dialect().Name(), which
// must be dialect.SQLite or dialect.PG. It does no I/O: call Migrate before
// the first use. Close never closes db.
func NewSQLStore(db bun.IDB) (*SQLStore, error) {
	s := &SQLStore{}
	switch d := db.(type) {
	case *bun.DB:
		if d == nil || d.DB == nil {
			return nil, errors.New("quota: new sql store: nil *bun.DB")
		}
		s.q, s.prep, s.begin = d.DB, d.DB, func(ctx context.Context) (*sql.Tx, error) { return d.DB.BeginTx(ctx, nil) }
	case bun.Conn:
		if d.Conn == nil {
			return nil, errors.New("quota: new sql store: nil bun.Conn")
		}
		s.q, s.prep, s.begin = d.Conn, d.Conn, func(ctx context.Context) (*sql.Tx, error) { return d.Conn.BeginTx(ctx, nil) }
	case *bun.Conn:
		if d == nil {
			return nil, errors.New("quota: new sql store: nil *bun.Conn")
		}
		return NewSQLStore(*d)
	case bun.Tx:
		if d.Tx == nil {
			return nil, errors.New("quota: new sql store: nil bun.Tx")
		}
		s.q = d.Tx
	case *bun.Tx:
		if d == nil {
			return nil, errors.New("quota: new sql store: nil *bun.Tx")
		}
		return NewSQLStore(*d)
	case nil:
		return nil, errors.New("quota: new sql store: nil bun.IDB")
	default:
		return nil, fmt.Errorf("quota: new sql store: unsupported bun.IDB %T (want *bun.DB, bun.Conn or bun.Tx)", db)
	}
	switch name := db.Dialect().Name(); name {
	case dialect.PG:
		s.pg = true
	case dialect.SQLite:
		if s.begin != nil {
			s.wsem = make(chan struct{}, 1)
		}
	default:
		return nil, fmt.Errorf("quota: new sql store: unsupported dialect %s (want sqlite or pg)", name)
	}
	if s.pg || s.begin == nil {
		s.prep = nil
	}
	s.q = sqlConn{s: s, q: s.q}
	return s, nil
}

// Close marks s closed: every later call but Close returns an error
// matching ErrClosed. It does not close the database handle, which the
// caller owns. Close returns nil, also when called again.
func (s *SQLStore) Close() error {
	if !s.closed.Swap(true) {
		s.stmts.Range(func(k, v any) bool {
			v.(*sql.Stmt).Close() // once no call uses it
			s.stmts.Delete(k)
			return true
		})
	}
	return nil
}

func (s *SQLStore) enter(ctx context.Context) error {
	if ctx == nil {
		return ErrNilContext
	}
	if s.closed.Load() {
		return ErrClosed
	}
	return ctx.Err()
}

// writer waits for the turn of an SQLite writer (see wsem) and returns
// the function that ends it.
func (s *SQLStore) writer(ctx context.Context) (done func(), err error) {
	if s.wsem == nil {
		return func() {}, nil
	}
	select {
	case s.wsem <- struct{}{}:
		return func() { <-s.wsem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// fail wraps err from operation op. An error caused by the cancellation of
// ctx becomes ctx.Err(), whatever the driver made of it.
func (s *SQLStore) fail(ctx context.Context, op string, err error) error {
	for _, e := range []error{ErrOverflow, ErrIdempotencyConflict, ErrReservationNotFound, ErrReservationExpired, ErrNoSubscription, ErrInvalidAmount, ErrClosed, ErrNilContext, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, e) {
			return fmt.Errorf("quota: sql %s: %w", op, err)
		}
	}
	if ctx != nil && ctx.Err() != nil {
		return fmt.Errorf("quota: sql %s: %w", op, ctx.Err())
	}
	return fmt.Errorf("quota: sql %s: %w", op, err)
}

// atomically runs f in a transaction, or in a savepoint of the caller's
// transaction, and commits it if f returns keep; otherwise it rolls back.
func (s *SQLStore) atomically(ctx context.Context, f func(q sqlQuerier) (keep bool, err error)) error {
	if s.begin == nil {
		if _, err := s.q.ExecContext(ctx, "SAVEPOINT quota_sp"); err != nil {
			return err
		}
		keep, err := f(s.q)
		if err == nil && keep {
			_, err = s.q.ExecContext(ctx, "RELEASE SAVEPOINT quota_sp")
			if err == nil {
				return nil
			}
		}
		// Undo even when ctx is done: the caller's transaction goes on.
		bg := context.WithoutCancel(ctx)
		if _, rerr := s.q.ExecContext(bg, "ROLLBACK TO SAVEPOINT quota_sp"); rerr == nil {
			_, rerr = s.q.ExecContext(bg, "RELEASE SAVEPOINT quota_sp")
			if err == nil {
				err = rerr
			}
		} else if err == nil {
			err = rerr
		}
		return err
	}
	tx, err := s.begin(ctx)
	if err != nil {
		return err
	}
	keep, err := f(sqlConn{s: s, q: tx, tx: tx})
	if err == nil && keep {
		return tx.Commit()
	}
	if rerr := tx.Rollback(); err == nil && rerr != nil && !errors.Is(rerr, sql.ErrTxDone) {
		err = rerr
	}
	return err
}

// Time values. SQLite keeps INTEGER microseconds since the Unix epoch;
// PostgreSQL keeps timestamptz, which has microseconds too.

func (s *SQLStore) tv(t time.Time) any {
	if s.pg {
		return t.UTC().Truncate(time.Microsecond)
	}
	return t.UnixMicro()
}

func (s *SQLStore) tvOrNull(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return s.tv(t)
}

// sqlTime scans a time of either dialect into UTC; NULL is the zero time.
type sqlTime struct{ t *time.Time }

func (d sqlTime) Scan(v any) error {
	switch x := v.(type) {
	case nil:
		*d.t = time.Time{}
	case int64:
		*d.t = fromMicros(x)
	case time.Time:
		*d.t = utcTime(x)
	default:
		return fmt.Errorf("quota: cannot scan %T as a time", v)
	}
	return nil
}

func fromMicros(us int64) time.Time { return utcTime(time.UnixMicro(us)) }

// utcTime returns t in UTC, and the zero time as time.Time{}.
func utcTime(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC()
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func nullJSON(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return string(b)
}

func checkTime(what string, t time.Time) error {
	if y := t.UTC().Year(); y < 1 || y > 9999 {
		return fmt.Errorf("%s %v is out of range (years 1 to 9999)", what, t)
	}
	return nil
}

// validateOp checks op before any SQL: the engine validated it already,
// but bun and the drivers must never see a name that would be rewritten or
// truncated, nor an amount that could overflow in SQL.
func validateOp(op *Op) error {
	if op == nil {
		return errors.New("nil op")
	}
	r := &op.Record
	if err := checkName(r.Subject, ErrInvalidSubject); err != nil {
		return err
	}
	if err := checkName(r.Action, ErrInvalidAction); err != nil {
		return err
	}
	if r.Key != "" {
		if err := checkName(r.Key, ErrInvalidKey); err != nil {
			return err
		}
		if err := checkName(op.Fingerprint, ErrInvalidKey); err != nil {
			return fmt.Errorf("fingerprint: %w", err)
		}
	}
	if r.ResourceID != "" {
		if err := checkName(r.ResourceID, ErrInvalidName); err != nil {
			return fmt.Errorf("resource id: %w", err)
		}
	}
	if err := checkMetadata(r.Metadata); err != nil {
		return err
	}
	if op.Hold != nil && r.Amount <= 0 {
		return fmt.Errorf("%w: cannot hold %d", ErrInvalidAmount, r.Amount)
	}
	if op.Hold != nil {
		if err := checkName(op.Hold.ID, ErrInvalidName); err != nil {
			return fmt.Errorf("hold id: %w", err)
		}
		if err := checkTime("hold expiry", op.Hold.ExpiresAt); err != nil {
			return err
		}
	}
	if err := checkTime("now", op.Now); err != nil {
		return err
	}
	if err := checkTime("record time", r.Time); err != nil {
		return err
	}
	for i, c := range op.Counters {
		if c.Subject != r.Subject || c.Action != r.Action {
			return fmt.Errorf("counter %d is for %q %q, not the record's %q %q", i, c.Subject, c.Action, r.Subject, r.Action)
		}
		if !c.Period.valid() {
			return fmt.Errorf("counter %d: invalid period %d", i, c.Period)
		}
		if c.Max < Unlimited || c.Max > maxLimit {
			return fmt.Errorf("counter %d: max %d out of range", i, c.Max)
		}
		if err := checkTime("counter start", c.Start); err != nil {
			return err
		}
		if err := checkTime("counter end", c.End); err != nil {
			return err
		}
		if i > 0 && !op.Counters[i-1].CounterKey.Less(c.CounterKey) {
			return fmt.Errorf("counters not sorted by CounterKey.Less or not distinct at %d", i)
		}
	}
	return nil
}

func checkMetadata(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if len(b) > MaxMetadataLen {
		return fmt.Errorf("%w: %d bytes, more than %d", ErrInvalidMetadata, len(b), MaxMetadataLen)
	}
	if !utf8.Valid(b) || !json.Valid(b) {
		return fmt.Errorf("%w: not valid UTF-8 JSON", ErrInvalidMetadata)
	}
	return nil
}

// sqlOutcome is one counter of the first outcome of a keyed use, as the
// counters column of quota_idempotency_keys holds it (a JSON array). Times
// are microseconds since the Unix epoch.
type sqlOutcome struct {
	Period string `json:"period"`
	Start  int64  `json:"start"`
	End    int64  `json:"end"`
	Used   int64  `json:"used"`
	Held   int64  `json:"held"`
	Limit  int64  `json:"limit"`
}

func encodeOutcome(cs []Counter) (string, error) {
	out := make([]sqlOutcome, len(cs))
	for i, c := range cs {
		out[i] = sqlOutcome{Period: c.Period.String(), Start: c.Start.UnixMicro(), End: c.End.UnixMicro(), Used: c.Used, Held: c.Held, Limit: c.Max}
	}
	b, err := json.Marshal(out)
	return string(b), err
}

func decodeOutcome(subject, action, s string) ([]Counter, error) {
	var in []sqlOutcome
	if err := json.Unmarshal([]byte(s), &in); err != nil {
		return nil, fmt.Errorf("idempotency outcome: %w", err)
	}
	cs := make([]Counter, len(in))
	for i, o := range in {
		p, err := ParsePeriod(o.Period)
		if err != nil {
			return nil, fmt.Errorf("idempotency outcome: %w", err)
		}
		cs[i] = Counter{
			CounterKey: CounterKey{Subject: subject, Action: action, Period: p, Start: fromMicros(o.Start)},
			End:        fromMicros(o.End),
			Used:       o.Used,
			Held:       o.Held,
			Max:        o.Limit,
		}
	}
	return cs, nil
}

// Apply implements Store.
func (s *SQLStore) Apply(ctx context.Context, op *Op) (ApplyResult, error) {
	if err := s.enter(ctx); err != nil {
		return ApplyResult{}, s.fail(ctx, "apply", err)
	}
	if err := validateOp(op); err != nil {
		return ApplyResult{}, fmt.Errorf("quota: sql apply: %w", err)
	}
	var res ApplyResult
	var err error
	if s.pg {
		res, err = s.applyPG(ctx, op)
	} else if done, werr := s.writer(ctx); werr != nil {
		err = werr
	} else {
		s.warm(ctx, sqliteWrites...)
		res, err = s.applySQLite(ctx, op)
		done()
	}
	if err != nil {
		return ApplyResult{}, s.fail(ctx, "apply", err)
	}
	return res, nil
}

// crossings lists the marks of bits (bit m for mark m, per counter),
// ordered by counter and mark.
func crossings(bits []int64) []Crossing {
	var out []Crossing
	for i, b := range bits {
		for m := range MaxMarks {
			if b&(1<<m) != 0 {
				out = append(out, Crossing{Counter: i, Mark: m})
			}
		}
	}
	return out
}

// reached returns the bits of the marks that cur has reached.
func reached(marks []int64, cur int64) int64 {
	var bits int64
	for m, v := range marks[:min(len(marks), MaxMarks)] {
		if v > 0 && v <= cur {
			bits |= 1 << m
		}
	}
	return bits
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

func (s *SQLStore) replay(op *Op, fingerprint, action string, recordID sql.NullInt64, holdID sql.NullString, holdExpires time.Time, counters sql.NullString) (ApplyResult, error) {
	if fingerprint != op.Fingerprint {
		return ApplyResult{}, fmt.Errorf("%w: key %q of %q", ErrIdempotencyConflict, op.Record.Key, op.Record.Subject)
	}
	cs, err := decodeOutcome(op.Record.Subject, action, counters.String)
	if err != nil {
		return ApplyResult{}, err
	}
	return ApplyResult{Applied: true, Replayed: true, Counters: cs, RecordID: recordID.Int64, HoldID: holdID.String, HoldExpiresAt: holdExpires}, nil
}

const pgApply = `SELECT o_status, o_record_id, o_hold_id, o_used::text, o_held::text, o_limits::text, o_replay::text, o_action, o_hold_expires, o_crossed::text
FROM quota_apply($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)`

func (s *SQLStore) applyPG(ctx context.Context, op *Op) (ApplyResult, error) {
	r := &op.Record
	n := len(op.Counters)
	periods := make([]string, n)
	starts := make([]time.Time, n)
	ends := make([]time.Time, n)
	maxes := make([]int64, n)
	// The marks, as many per counter: padded with 0, which marks nothing.
	w := 0
	for _, c := range op.Counters {
		w = max(w, min(len(c.Marks), MaxMarks))
	}
	marks := make([]int64, w*n)
	for i, c := range op.Counters {
		periods[i], starts[i], ends[i], maxes[i] = c.Period.String(), c.Start, c.End, c.Max
		copy(marks[i*w:(i+1)*w], c.Marks)
	}
	var holdID, holdExpires any
	if op.Hold != nil {
		holdID, holdExpires = op.Hold.ID, s.tv(op.Hold.ExpiresAt)
	}
	var fingerprint any
	if r.Key != "" {
		fingerprint = op.Fingerprint
	}
	var (
		status             string
		recordID           sql.NullInt64
		hold               sql.NullString
		used, held, limits sql.NullString
		replay             sql.NullString
		action             sql.NullString
		holdExp            time.Time
		crossed            sql.NullString
	)
	err := s.q.QueryRowContext(ctx, pgApply,
		r.Subject, r.Action, pgTextArray(periods), pgTimeArray(starts), pgTimeArray(ends), pgIntArray(maxes),
		r.Amount, op.Enforce, s.tv(op.Now), s.tv(r.Time), nullString(r.ResourceID), nullJSON(r.Metadata),
		nullString(r.Key), fingerprint, holdID, holdExpires, pgIntArray(marks),
	).Scan(&status, &recordID, &hold, &used, &held, &limits, &replay, &action, sqlTime{&holdExp}, &crossed)
	if err != nil {
		return ApplyResult{}, err
	}
	switch status {
	case "replayed":
		return s.replay(op, op.Fingerprint, action.String, recordID, hold, holdExp, replay)
	case "conflict":
		return ApplyResult{}, fmt.Errorf("%w: key %q of %q", ErrIdempotencyConflict, r.Key, r.Subject)
	case "applied", "refused", "overflow":
	default:
		return ApplyResult{}, fmt.Errorf("quota_apply returned status %q", status)
	}
	cs := make([]Counter, n)
	u, err1 := parsePGIntArray(used.String)
	h, err2 := parsePGIntArray(held.String)
	l, err3 := parsePGIntArray(limits.String)
	if err := errors.Join(err1, err2, err3); err != nil {
		return ApplyResult{}, err
	}
	if len(u) != n || len(h) != n || len(l) != n {
		return ApplyResult{}, fmt.Errorf("quota_apply returned %d, %d and %d counters for %d", len(u), len(h), len(l), n)
	}
	for i, c := range op.Counters {
		cs[i] = Counter{CounterKey: c.CounterKey, End: c.End, Used: u[i], Held: h[i], Max: l[i]}
	}
	if status != "applied" {
		return refusal(op, cs)
	}
	res := ApplyResult{Applied: true, Counters: cs, RecordID: recordID.Int64, HoldID: hold.String, HoldExpiresAt: holdExp}
	if crossed.Valid {
		bits, err := parsePGIntArray(crossed.String)
		if err != nil {
			return ApplyResult{}, err
		}
		res.Crossed = crossings(bits)
	}
	return res, nil
}

// pgCounter reads one counter, as sqliteCounter does.
const pgCounter = `SELECT s.used, s.limit_max, s.period_end,
	(SELECT coalesce(sum(c.amount), 0) FROM quota_hold_counters c
	  WHERE c.subject = $1 AND c.action = $2 AND c.period = $3 AND c.period_start = $4 AND c.expires_at > $5)::bigint,
	s.marks
FROM quota_summaries s
WHERE s.subject = $1 AND s.action = $2 AND s.period = $3 AND s.period_start = $4 AND s.limit_max IS NOT NULL`

// SQLite statements of the write transactions, prepared once per
// connection (see warm).
const (
	sqliteClaimKey = `INSERT INTO quota_idempotency_keys (subject, idempotency_key, fingerprint, action, created_at)
VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`
	sqliteReadKey = `SELECT fingerprint, action, record_id, hold_id, hold_expires_at, counters
FROM quota_idempotency_keys WHERE subject = ? AND idempotency_key = ?`
	sqliteUpdateKey = `UPDATE quota_idempotency_keys SET record_id = ?, hold_id = ?, hold_expires_at = ?, counters = ?
WHERE subject = ? AND idempotency_key = ?`
	sqliteCounter = `SELECT s.used, s.limit_max, s.period_end,
	(SELECT ifnull(sum(c.amount), 0) FROM quota_hold_counters c
	  WHERE c.subject = ?1 AND c.action = ?2 AND c.period = ?3 AND c.period_start = ?4 AND c.expires_at > ?5),
	s.marks
FROM quota_summaries s
WHERE s.subject = ?1 AND s.action = ?2 AND s.period = ?3 AND s.period_start = ?4 AND s.limit_max IS NOT NULL`
	// sqliteCharge1 adds ?10 (0 for a hold) to the used of one counter
	// and sets its limit_max to ?9, if a use of ?6 fits: with ?7 the
	// bound (Max if enforced, else MaxInt64), used + held + ?6 <= ?7 for
	// ?6 > 0, used + ?6 >= 0 otherwise. The counter is created if it is
	// missing and the use fits a new one. It returns used, held and marks
	// (which it leaves alone), or no row when it wrote nothing. Every sum stays inside int64 (a REAL
	// would fail the INTEGER columns of the STRICT table anyway).
	sqliteCharge1 = `INSERT INTO quota_summaries AS s (subject, action, period, period_start, period_end, used, limit_max)
SELECT ?1, ?2, ?3, ?4, ?5, ?11, ?9
WHERE ?6 <= ?7 AND (?6 >= 0 OR EXISTS (SELECT 1 FROM quota_summaries
	WHERE subject = ?1 AND action = ?2 AND period = ?3 AND period_start = ?4))
ON CONFLICT (subject, action, period, period_start) DO UPDATE
SET used = s.used + ?10, limit_max = excluded.limit_max
WHERE CASE WHEN ?6 > 0 THEN s.used <= ?7 - ` + sqliteHeldOf + ` - ?6 ELSE s.used + ?6 >= 0 END
RETURNING used, ` + sqliteHeldOf + `, marks`
	// sqliteHeldOf is the held amount of counter ?1 to ?4 at ?8.
	sqliteHeldOf = `(SELECT ifnull(sum(c.amount), 0) FROM quota_hold_counters c
	WHERE c.subject = ?1 AND c.action = ?2 AND c.period = ?3 AND c.period_start = ?4 AND c.expires_at > ?8)`
	sqliteInsertRecord = `INSERT INTO quota_records (subject, action, amount, resource_id, metadata, idempotency_key, recorded_at)
VALUES (?, ?, ?, ?, ?, ?, ?)`
	sqliteSweepLinks = `DELETE FROM quota_hold_counters WHERE hold_id IN
(SELECT id FROM quota_holds WHERE subject = ?1 AND action = ?2 AND expires_at <= ?3)`
	sqliteSweepHolds = `DELETE FROM quota_holds WHERE subject = ?1 AND action = ?2 AND expires_at <= ?3`
	sqliteInsertHold = `INSERT INTO quota_holds (id, subject, action, amount, resource_id, metadata, idempotency_key, recorded_at, expires_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`
	sqliteTakeLinks = `DELETE FROM quota_hold_counters WHERE hold_id = ? RETURNING period, period_start`
	sqliteTakeHold  = `DELETE FROM quota_holds WHERE id = ?
RETURNING subject, action, amount, resource_id, metadata, idempotency_key, recorded_at, expires_at`
	sqliteChargeUsed = `UPDATE quota_summaries SET used = used + ?
WHERE subject = ? AND action = ? AND period = ? AND period_start = ?`
	sqliteDropLinks = `DELETE FROM quota_hold_counters WHERE hold_id = ?`
	sqliteMark      = `UPDATE quota_summaries SET marks = marks | ?
WHERE subject = ? AND action = ? AND period = ? AND period_start = ?`
	sqliteDropHold = `DELETE FROM quota_holds WHERE id = ?`
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
		sqliteChargeUsed, sqliteDropLinks, sqliteDropHold, sqliteMark}
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
// and sets limit_max on n counters, creating the missing ones with used
// from their row of values. (SQLite checks used >= 0 on the row of values
// before it resolves the conflict, so a release must not appear there.)
func sqliteCharge(n int) string {
	var b strings.Builder
	b.WriteString("INSERT INTO quota_summaries (subject, action, period, period_start, period_end, used, limit_max) VALUES ")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?, ?, ?, ?, ?)")
	}
	b.WriteString(` ON CONFLICT (subject, action, period, period_start) DO UPDATE
SET used = used + ?, limit_max = excluded.limit_max`)
	return b.String()
}

// applySQLite reads the counters, decides and writes, in one transaction.
// With the recommended DSN that transaction is IMMEDIATE: it holds
// SQLite's write lock from BEGIN, so nothing changes between the read and
// the write, and a refusal reports the figures it was decided on.
func (s *SQLStore) applySQLite(ctx context.Context, op *Op) (ApplyResult, error) {
	r := &op.Record
	a := r.Amount
	now := s.tv(op.Now)
	keys := make([]CounterKey, len(op.Counters))
	for i, c := range op.Counters {
		keys[i] = c.CounterKey
	}
	var (
		res     ApplyResult
		keyErr  error
		crossed []Crossing
	)
	err := s.atomically(ctx, func(q sqlQuerier) (bool, error) {
		crossed = nil
		if r.Key != "" {
			k, err := q.ExecContext(ctx, sqliteClaimKey, r.Subject, r.Key, op.Fingerprint, r.Action, now)
			if err != nil {
				return false, err
			}
			if n, err := k.RowsAffected(); err != nil {
				return false, err
			} else if n == 0 {
				var fp, action string
				var recordID sql.NullInt64
				var holdID, counters sql.NullString
				var holdExp time.Time
				err := q.QueryRowContext(ctx, sqliteReadKey, r.Subject, r.Key).Scan(&fp, &action, &recordID, &holdID, sqlTime{&holdExp}, &counters)
				if err != nil {
					return false, err
				}
				res, keyErr = s.replay(op, fp, action, recordID, holdID, holdExp, counters)
				return false, nil
			}
		}
		charge := a
		if op.Hold != nil {
			charge = 0
		}
		var cs []Counter
		var marks []int64
		if len(op.Counters) == 1 {
			// One counter (the usual case): one statement charges it if
			// the use fits; else it writes nothing, and the counter is
			// read below, still under the write lock.
			c := &op.Counters[0]
			bound := int64(math.MaxInt64)
			if op.Enforce && c.Max != Unlimited {
				bound = c.Max
			}
			var used, held, mk int64
			err := q.QueryRowContext(ctx, sqliteCharge1, c.Subject, c.Action, c.Period.String(), s.tv(c.Start), s.tv(c.End),
				a, bound, now, c.Max, charge, max(charge, 0)).Scan(&used, &held, &mk)
			switch {
			case err == nil:
				cs, marks = []Counter{{Used: used - charge, Held: held}}, []int64{mk}
			case !errors.Is(err, sql.ErrNoRows):
				return false, err
			}
		}
		if cs == nil {
			var err error
			if cs, marks, err = s.readCountersMarks(ctx, q, keys, op.Now); err != nil {
				return false, err
			}
			refused, err := Admit(op, cs)
			if err != nil {
				return false, err
			}
			if !refused && len(op.Counters) == 1 {
				return false, fmt.Errorf("counter of %q %q: the statement refused a use that fits", r.Subject, r.Action)
			}
			if refused {
				for i := range cs {
					cs[i].End = op.Counters[i].End
				}
				res = ApplyResult{Counters: cs}
				return false, nil
			}
		}
		if n := len(op.Counters); n > 1 {
			stmt := cachedSQL(&sqliteCharges, n, sqliteCharge)
			args := make([]any, 0, 7*n+1)
			for _, c := range op.Counters {
				args = append(args, c.Subject, c.Action, c.Period.String(), s.tv(c.Start), s.tv(c.End), max(charge, 0), c.Max)
			}
			args = append(args, charge)
			if _, err := q.ExecContext(ctx, stmt, args...); err != nil {
				return false, err
			}
		}
		for i, c := range op.Counters {
			cs[i] = Counter{CounterKey: c.CounterKey, End: c.End, Used: cs[i].Used, Held: cs[i].Held, Max: c.Max}
			if op.Hold != nil {
				cs[i].Held += a
			} else {
				cs[i].Used += a
			}
		}
		// Set the marks reached first: this transaction holds the write
		// lock, so the marks read above are the latest.
		for i, c := range op.Counters {
			if bits := reached(c.Marks, cs[i].Used+cs[i].Held) &^ marks[i]; bits != 0 {
				if _, err := q.ExecContext(ctx, sqliteMark, bits, c.Subject, c.Action, c.Period.String(), s.tv(c.Start)); err != nil {
					return false, err
				}
				for _, x := range crossings([]int64{bits}) {
					crossed = append(crossed, Crossing{Counter: i, Mark: x.Mark})
				}
			}
		}
		res = ApplyResult{Applied: true, Counters: cs, Crossed: crossed}
		if op.Hold != nil {
			if err := s.sqliteHoldRows(ctx, q, op); err != nil {
				return false, err
			}
			res.HoldID, res.HoldExpiresAt = op.Hold.ID, utcTime(op.Hold.ExpiresAt.Truncate(time.Microsecond))
		} else {
			ins, err := q.ExecContext(ctx, sqliteInsertRecord, r.Subject, r.Action, a, nullString(r.ResourceID), nullJSON(r.Metadata), nullString(r.Key), s.tv(r.Time))
			if err != nil {
				return false, err
			}
			if res.RecordID, err = ins.LastInsertId(); err != nil { // the rowid, which id is
				return false, err
			}
		}
		if r.Key != "" {
			out, err := encodeOutcome(cs)
			if err != nil {
				return false, err
			}
			if _, err := q.ExecContext(ctx, sqliteUpdateKey, nullInt(res.RecordID), nullString(res.HoldID), s.tvOrNull(res.HoldExpiresAt), out, r.Subject, r.Key); err != nil {
				return false, err
			}
		}
		return true, nil
	})
	if err != nil {
		return ApplyResult{}, err
	}
	return res, keyErr
}

func nullInt(n int64) any {
	if n == 0 {
		return nil
	}
	return n
}

func (s *SQLStore) sqliteHoldRows(ctx context.Context, q sqlQuerier, op *Op) error {
	r := &op.Record
	now := s.tv(op.Now)
	// Sweep the expired holds of this action.
	if _, err := q.ExecContext(ctx, sqliteSweepLinks, r.Subject, r.Action, now); err != nil {
		return err
	}
	if _, err := q.ExecContext(ctx, sqliteSweepHolds, r.Subject, r.Action, now); err != nil {
		return err
	}
	exp := s.tv(op.Hold.ExpiresAt)
	if _, err := q.ExecContext(ctx, sqliteInsertHold, op.Hold.ID, r.Subject, r.Action, r.Amount, nullString(r.ResourceID), nullJSON(r.Metadata), nullString(r.Key), s.tv(r.Time), exp); err != nil {
		return err
	}
	if len(op.Counters) == 0 {
		return nil
	}
	args := make([]any, 0, 8*len(op.Counters))
	for i, c := range op.Counters {
		args = append(args, op.Hold.ID, i+1, c.Subject, c.Action, c.Period.String(), s.tv(c.Start), r.Amount, exp)
	}
	_, err := q.ExecContext(ctx, cachedSQL(&sqliteLinks, len(op.Counters), sqliteLinksQuery), args...)
	return err
}

// Commit implements Store.
func (s *SQLStore) Commit(ctx context.Context, id string, amount int64, now time.Time) (Record, error) {
	if err := s.enter(ctx); err != nil {
		return Record{}, s.fail(ctx, "commit", err)
	}
	if id == "" {
		return Record{}, fmt.Errorf("quota: sql commit: %w: empty id", ErrReservationNotFound)
	}
	if err := checkName(id, ErrInvalidName); err != nil {
		return Record{}, fmt.Errorf("quota: sql commit: %w", err)
	}
	if amount <= 0 {
		return Record{}, fmt.Errorf("quota: sql commit %s: %w: %d", id, ErrInvalidAmount, amount)
	}
	if err := checkTime("now", now); err != nil {
		return Record{}, fmt.Errorf("quota: sql commit %s: %w", id, err)
	}
	var rec Record
	var err error
	if s.pg {
		rec, err = s.commitPG(ctx, id, amount, now)
	} else if done, werr := s.writer(ctx); werr != nil {
		err = werr
	} else {
		s.warm(ctx, sqliteWrites...)
		rec, err = s.commitSQLite(ctx, id, amount, now)
		done()
	}
	if err != nil {
		return Record{}, s.fail(ctx, "commit "+id, err)
	}
	return rec, nil
}

func (s *SQLStore) commitPG(ctx context.Context, id string, amount int64, now time.Time) (Record, error) {
	var (
		status        string
		recID, amt    sql.NullInt64
		subject, act  sql.NullString
		resource, key sql.NullString
		meta          sql.NullString
		at            time.Time
	)
	err := s.q.QueryRowContext(ctx, `SELECT o_status, o_id, o_subject, o_action, o_amount, o_resource_id, o_metadata, o_key, o_time
FROM quota_commit($1, $2, $3)`, id, amount, s.tv(now)).Scan(&status, &recID, &subject, &act, &amt, &resource, &meta, &key, sqlTime{&at})
	if err != nil {
		return Record{}, err
	}
	switch status {
	case "committed":
	case "not_found":
		return Record{}, ErrReservationNotFound
	case "expired":
		return Record{}, ErrReservationExpired
	case "too_large":
		return Record{}, fmt.Errorf("%w: commit of %d on a hold of %d", ErrInvalidAmount, amount, amt.Int64)
	default:
		return Record{}, fmt.Errorf("quota_commit returned status %q", status)
	}
	rec := Record{ID: recID.Int64, Subject: subject.String, Action: act.String, Amount: amt.Int64, ResourceID: resource.String, Key: key.String, Time: at}
	if meta.Valid && meta.String != "" {
		rec.Metadata = json.RawMessage(meta.String)
	}
	return rec, nil
}

func (s *SQLStore) commitSQLite(ctx context.Context, id string, amount int64, now time.Time) (Record, error) {
	var rec Record
	var outcome error
	err := s.atomically(ctx, func(q sqlQuerier) (bool, error) {
		// The counters first: deleting the hold would cascade to them.
		rows, err := q.QueryContext(ctx, sqliteTakeLinks, id)
		if err != nil {
			return false, err
		}
		type link struct {
			period string
			start  int64
		}
		var links []link
		for rows.Next() {
			var l link
			if err := rows.Scan(&l.period, &l.start); err != nil {
				rows.Close()
				return false, err
			}
			links = append(links, l)
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return false, err
		}
		var held int64
		var resource, key, meta sql.NullString
		var expires time.Time
		err = q.QueryRowContext(ctx, sqliteTakeHold, id).
			Scan(&rec.Subject, &rec.Action, &held, &resource, &meta, &key, sqlTime{&rec.Time}, sqlTime{&expires})
		switch {
		case errors.Is(err, sql.ErrNoRows):
			outcome = ErrReservationNotFound
			return false, nil
		case err != nil:
			return false, err
		case !expires.After(now):
			outcome = ErrReservationExpired
			return true, nil // the hold is gone
		case amount > held:
			outcome = fmt.Errorf("%w: commit of %d on a hold of %d", ErrInvalidAmount, amount, held)
			return false, nil
		}
		for _, l := range links {
			if _, err := q.ExecContext(ctx, sqliteChargeUsed, amount, rec.Subject, rec.Action, l.period, l.start); err != nil {
				return false, err
			}
		}
		rec.Amount, rec.ResourceID, rec.Key = amount, resource.String, key.String
		if meta.Valid && meta.String != "" {
			rec.Metadata = json.RawMessage(meta.String)
		}
		ins, err := q.ExecContext(ctx, sqliteInsertRecord, rec.Subject, rec.Action, amount, resource, meta, key, s.tv(rec.Time))
		if err == nil {
			rec.ID, err = ins.LastInsertId()
		}
		return err == nil, err
	})
	if err != nil {
		return Record{}, err
	}
	if outcome != nil {
		return Record{}, outcome
	}
	return rec, nil
}

// Cancel implements Store.
func (s *SQLStore) Cancel(ctx context.Context, id string, now time.Time) error {
	if err := s.enter(ctx); err != nil {
		return s.fail(ctx, "cancel", err)
	}
	if id == "" {
		return fmt.Errorf("quota: sql cancel: %w: empty id", ErrReservationNotFound)
	}
	if err := checkName(id, ErrInvalidName); err != nil {
		return fmt.Errorf("quota: sql cancel: %w", err)
	}
	var found bool
	var err error
	if s.pg {
		// The hold's counters go with it (ON DELETE CASCADE).
		var res sql.Result
		if res, err = s.q.ExecContext(ctx, `DELETE FROM quota_holds WHERE id = $1`, id); err == nil {
			var n int64
			n, err = res.RowsAffected()
			found = n > 0
		}
	} else if done, werr := s.writer(ctx); werr != nil {
		err = werr
	} else {
		s.warm(ctx, sqliteWrites...)
		err = s.atomically(ctx, func(q sqlQuerier) (bool, error) {
			if _, err := q.ExecContext(ctx, sqliteDropLinks, id); err != nil {
				return false, err
			}
			res, err := q.ExecContext(ctx, sqliteDropHold, id)
			if err != nil {
				return false, err
			}
			n, err := res.RowsAffected()
			found = n > 0
			return found, err
		})
		done()
	}
	if err == nil && !found {
		err = ErrReservationNotFound
	}
	if err != nil {
		return s.fail(ctx, "cancel "+id, err)
	}
	return nil
}

// Counters implements Store.
func (s *SQLStore) Counters(ctx context.Context, keys []CounterKey, now time.Time) ([]Counter, error) {
	if err := s.enter(ctx); err != nil {
		return nil, s.fail(ctx, "counters", err)
	}
	for _, k := range keys {
		if err := errors.Join(checkName(k.Subject, ErrInvalidSubject), checkName(k.Action, ErrInvalidAction), checkTime("counter start", k.Start)); err != nil {
			return nil, fmt.Errorf("quota: sql counters: %w", err)
		}
		if !k.Period.valid() {
			return nil, fmt.Errorf("quota: sql counters: invalid period %d", k.Period)
		}
	}
	if err := checkTime("now", now); err != nil {
		return nil, fmt.Errorf("quota: sql counters: %w", err)
	}
	cs, err := s.readCounters(ctx, s.q, keys, now)
	if err != nil {
		return nil, s.fail(ctx, "counters", err)
	}
	return cs, nil
}

// readCounters reads keys with q in one statement, so from one snapshot.
// A row never written (limit_max NULL) reads as no row.
func (s *SQLStore) readCounters(ctx context.Context, q sqlQuerier, keys []CounterKey, now time.Time) ([]Counter, error) {
	cs, _, err := s.readCountersMarks(ctx, q, keys, now)
	return cs, err
}

// readCountersMarks is readCounters, with the marks of the counters.
func (s *SQLStore) readCountersMarks(ctx context.Context, q sqlQuerier, keys []CounterKey, now time.Time) ([]Counter, []int64, error) {
	out := make([]Counter, len(keys))
	marks := make([]int64, len(keys))
	for i, k := range keys {
		out[i].CounterKey = k
	}
	if len(keys) == 0 {
		return out, marks, nil
	}
	var rows *sql.Rows
	var err error
	if len(keys) == 1 {
		k := keys[0]
		c := &out[0]
		query := sqliteCounter
		if s.pg {
			query = pgCounter
		}
		err := q.QueryRowContext(ctx, query, k.Subject, k.Action, k.Period.String(), s.tv(k.Start), s.tv(now)).Scan(&c.Used, &c.Max, sqlTime{&c.End}, &c.Held, &marks[0])
		if errors.Is(err, sql.ErrNoRows) {
			err = nil
		}
		return out, marks, err
	}
	if s.pg {
		subjects, actions, periods := make([]string, len(keys)), make([]string, len(keys)), make([]string, len(keys))
		starts := make([]time.Time, len(keys))
		for i, k := range keys {
			subjects[i], actions[i], periods[i], starts[i] = k.Subject, k.Action, k.Period.String(), k.Start
		}
		rows, err = q.QueryContext(ctx, `SELECT k.i, s.used, s.limit_max, s.period_end,
	(SELECT coalesce(sum(c.amount), 0) FROM quota_hold_counters c
	  WHERE c.subject = s.subject AND c.action = s.action AND c.period = s.period
	    AND c.period_start = s.period_start AND c.expires_at > $5)::bigint,
	s.marks
FROM unnest($1::text::text[], $2::text::text[], $3::text::text[], $4::text::timestamptz[])
	WITH ORDINALITY AS k(subject, action, period, period_start, i)
JOIN quota_summaries s ON s.subject = k.subject AND s.action = k.action
	AND s.period = k.period AND s.period_start = k.period_start
WHERE s.limit_max IS NOT NULL`,
			pgTextArray(subjects), pgTextArray(actions), pgTextArray(periods), pgTimeArray(starts), s.tv(now))
	} else {
		args := make([]any, 0, 5*len(keys)+1)
		for i, k := range keys {
			args = append(args, i+1, k.Subject, k.Action, k.Period.String(), s.tv(k.Start))
		}
		args = append(args, s.tv(now))
		rows, err = q.QueryContext(ctx, cachedSQL(&sqliteCountersN, len(keys), sqliteCountersQuery), args...)
	}
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var i int
		var c Counter
		var m int64
		if err := rows.Scan(&i, &c.Used, &c.Max, sqlTime{&c.End}, &c.Held, &m); err != nil {
			return nil, nil, err
		}
		if i < 1 || i > len(out) {
			return nil, nil, fmt.Errorf("counter index %d out of range", i)
		}
		out[i-1].End, out[i-1].Used, out[i-1].Held, out[i-1].Max = c.End, c.Used, c.Held, c.Max
		marks[i-1] = m
	}
	return out, marks, rows.Err()
}

// PutSubscription implements Store.
func (s *SQLStore) PutSubscription(ctx context.Context, sub Subscription) error {
	if err := s.enter(ctx); err != nil {
		return s.fail(ctx, "put subscription", err)
	}
	if err := checkName(sub.Subject, ErrInvalidSubject); err != nil {
		return fmt.Errorf("quota: sql put subscription: %w", err)
	}
	for _, n := range []string{sub.Plan, sub.TimeZone, sub.NextPlan} {
		if n == "" {
			continue
		}
		if err := checkName(n, ErrInvalidSubscription); err != nil {
			return fmt.Errorf("quota: sql put subscription %q: %w", sub.Subject, err)
		}
	}
	if sub.Plan == "" {
		return fmt.Errorf("quota: sql put subscription %q: %w: no plan", sub.Subject, ErrInvalidSubscription)
	}
	if err := errors.Join(checkTime("anchor", sub.Anchor), checkTime("next plan time", sub.NextPlanAt)); err != nil {
		return fmt.Errorf("quota: sql put subscription %q: %w: %w", sub.Subject, ErrInvalidSubscription, err)
	}
	var overrides any
	if len(sub.Overrides) > 0 {
		b, err := json.Marshal(sub.Overrides)
		if err != nil {
			return fmt.Errorf("quota: sql put subscription %q: %w: %w", sub.Subject, ErrInvalidSubscription, err)
		}
		overrides = string(b)
	}
	q := `INSERT INTO quota_subscriptions (subject, plan, anchor, time_zone, overrides, next_plan, next_plan_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (subject) DO UPDATE SET plan = excluded.plan, anchor = excluded.anchor, time_zone = excluded.time_zone,
	overrides = excluded.overrides, next_plan = excluded.next_plan, next_plan_at = excluded.next_plan_at`
	if s.pg {
		q = pgPlaceholders(q)
	}
	done, err := s.writer(ctx)
	if err == nil {
		_, err = s.q.ExecContext(ctx, q, sub.Subject, sub.Plan, s.tv(sub.Anchor), sub.TimeZone, overrides,
			nullString(sub.NextPlan), s.tvOrNull(sub.NextPlanAt))
		done()
	}
	if err != nil {
		return s.fail(ctx, fmt.Sprintf("put subscription %q", sub.Subject), err)
	}
	return nil
}

// GetSubscription implements Store.
func (s *SQLStore) GetSubscription(ctx context.Context, subject string) (Subscription, error) {
	if err := s.enter(ctx); err != nil {
		return Subscription{}, s.fail(ctx, "get subscription", err)
	}
	if err := checkName(subject, ErrInvalidSubject); err != nil {
		return Subscription{}, fmt.Errorf("quota: sql get subscription: %w", err)
	}
	q := `SELECT plan, anchor, time_zone, overrides, next_plan, next_plan_at FROM quota_subscriptions WHERE subject = ?`
	if s.pg {
		q = pgPlaceholders(q)
	}
	sub := Subscription{Subject: subject}
	var overrides, next sql.NullString
	err := s.q.QueryRowContext(ctx, q, subject).Scan(&sub.Plan, sqlTime{&sub.Anchor}, &sub.TimeZone, &overrides, &next, sqlTime{&sub.NextPlanAt})
	if errors.Is(err, sql.ErrNoRows) {
		err = ErrNoSubscription
	}
	if err != nil {
		return Subscription{}, s.fail(ctx, fmt.Sprintf("get subscription %q", subject), err)
	}
	sub.NextPlan = next.String
	if overrides.Valid && overrides.String != "" {
		if err := json.Unmarshal([]byte(overrides.String), &sub.Overrides); err != nil {
			return Subscription{}, fmt.Errorf("quota: sql get subscription %q: overrides: %w", subject, err)
		}
	}
	return sub, nil
}

// Records implements Store.
func (s *SQLStore) Records(ctx context.Context, rq RecordQuery) ([]Record, error) {
	if err := s.enter(ctx); err != nil {
		return nil, s.fail(ctx, "records", err)
	}
	var where []string
	var args []any
	if rq.Subject != "" {
		if err := checkName(rq.Subject, ErrInvalidSubject); err != nil {
			return nil, fmt.Errorf("quota: sql records: %w", err)
		}
		where, args = append(where, "subject = ?"), append(args, rq.Subject)
	}
	if rq.Action != "" {
		if err := checkName(rq.Action, ErrInvalidAction); err != nil {
			return nil, fmt.Errorf("quota: sql records: %w", err)
		}
		where, args = append(where, "action = ?"), append(args, rq.Action)
	}
	if !rq.From.IsZero() {
		if err := checkTime("from", rq.From); err != nil {
			return nil, fmt.Errorf("quota: sql records: %w", err)
		}
		where, args = append(where, "recorded_at >= ?"), append(args, s.tv(rq.From))
	}
	if !rq.To.IsZero() {
		if err := checkTime("to", rq.To); err != nil {
			return nil, fmt.Errorf("quota: sql records: %w", err)
		}
		where, args = append(where, "recorded_at < ?"), append(args, s.tv(rq.To))
	}
	if rq.AfterID > 0 {
		where, args = append(where, "id > ?"), append(args, rq.AfterID)
	}
	if rq.BeforeID != 0 {
		where, args = append(where, "id < ?"), append(args, rq.BeforeID)
	}
	if rq.Limit < 0 || rq.AfterID < 0 || rq.BeforeID < 0 {
		return nil, errors.New("quota: sql records: negative limit or cursor")
	}
	var b strings.Builder
	b.WriteString("SELECT id, subject, action, amount, resource_id, metadata, idempotency_key, recorded_at FROM quota_records")
	if len(where) > 0 {
		b.WriteString(" WHERE ")
		b.WriteString(strings.Join(where, " AND "))
	}
	b.WriteString(" ORDER BY id")
	if rq.Descending {
		b.WriteString(" DESC")
	}
	if rq.Limit > 0 {
		b.WriteString(" LIMIT ?")
		args = append(args, rq.Limit)
	}
	q := b.String()
	if s.pg {
		q = pgPlaceholders(q)
	}
	rows, err := s.q.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, s.fail(ctx, "records", err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		var r Record
		var resource, key, meta sql.NullString
		if err := rows.Scan(&r.ID, &r.Subject, &r.Action, &r.Amount, &resource, &meta, &key, sqlTime{&r.Time}); err != nil {
			return nil, s.fail(ctx, "records", err)
		}
		r.ResourceID, r.Key = resource.String, key.String
		if meta.Valid && meta.String != "" {
			r.Metadata = json.RawMessage(meta.String)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(ctx, "records", err)
	}
	return out, nil
}

// Sums adds up the records that q selects, and the rollups of pruned
// records, per bucket (and action), for Quota.Series: one statement. On
// SQLite it reads each bucket's records as a range of an index; on
// PostgreSQL it reads the whole range once and finds each row's bucket
// with width_bucket, a binary search in the bounds, so that no plan (a
// generic plan of a prepared statement included) can compare every row
// with every bucket.
func (s *SQLStore) Sums(ctx context.Context, q SumQuery) ([]Sum, error) {
	if err := s.enter(ctx); err != nil {
		return nil, s.fail(ctx, "sums", err)
	}
	if len(q.Bounds) < 2 {
		return nil, fmt.Errorf("quota: sql sums: %d bounds, want at least 2", len(q.Bounds))
	}
	for i, b := range q.Bounds {
		if err := checkTime("bound", b); err != nil {
			return nil, fmt.Errorf("quota: sql sums: %w", err)
		}
		if i > 0 && !q.Bounds[i-1].Before(b) {
			return nil, fmt.Errorf("quota: sql sums: bounds not ascending at %d", i)
		}
	}
	var filter []string
	var fargs []any
	if q.Subject != "" {
		if err := checkName(q.Subject, ErrInvalidSubject); err != nil {
			return nil, fmt.Errorf("quota: sql sums: %w", err)
		}
		filter, fargs = append(filter, "subject = ?"), append(fargs, q.Subject)
	}
	if q.Action != "" {
		if err := checkName(q.Action, ErrInvalidAction); err != nil {
			return nil, fmt.Errorf("quota: sql sums: %w", err)
		}
		filter, fargs = append(filter, "action = ?"), append(fargs, q.Action)
	}
	var args []any
	var b strings.Builder
	if !s.pg {
		j := make([]byte, 0, 20*len(q.Bounds))
		j = append(j, '[')
		for i, t := range q.Bounds {
			if i > 0 {
				j = append(j, ',')
			}
			j = strconv.AppendInt(j, t.UnixMicro(), 10)
		}
		args = append(args, string(append(j, ']')))
		b.WriteString(`WITH t AS (SELECT CAST(key AS INTEGER) AS i, value AS t FROM json_each(?)),
b AS (SELECT i AS bucket, t AS lo, lead(t) OVER (ORDER BY i) AS hi FROM t)`)
	}
	var bounds string
	if s.pg {
		bounds = pgTimeArray(q.Bounds)
	}
	branch := func(alias, table, timeCol, count string) {
		action := "CAST('' AS TEXT)"
		if q.ByAction {
			action = alias + ".action"
		}
		if s.pg {
			// The bounds in a subquery: cast once (an InitPlan), not
			// once per row.
			fmt.Fprintf(&b, "\nSELECT width_bucket(%s.%s, (SELECT ?::text::timestamptz[])) - 1 AS bucket, %s AS action, %s.amount AS amount, %s AS n\nFROM %s %s WHERE %s.%s >= ? AND %s.%s < ?",
				alias, timeCol, action, alias, count, table, alias, alias, timeCol, alias, timeCol)
			args = append(args, bounds, s.tv(q.Bounds[0]), s.tv(q.Bounds[len(q.Bounds)-1]))
		} else {
			fmt.Fprintf(&b, "\nSELECT b.bucket, %s AS action, %s.amount AS amount, %s AS n\nFROM b JOIN %s %s ON %s.%s >= b.lo AND %s.%s < b.hi",
				action, alias, count, table, alias, alias, timeCol, alias, timeCol)
		}
		for _, f := range filter {
			b.WriteString(" AND " + alias + "." + f)
		}
		if !s.pg {
			b.WriteString("\nWHERE b.hi IS NOT NULL")
		}
		args = append(args, fargs...)
	}
	sum, order := "sum(amount), sum(n)", "bucket, action"
	if s.pg {
		sum, order = "sum(amount)::bigint, sum(n)::bigint", `bucket, action COLLATE "C"` // byte order, as Go's
	}
	b.WriteString("\nSELECT bucket, action, " + sum + " FROM (")
	branch("r", "quota_records", "recorded_at", "1")
	b.WriteString("\nUNION ALL")
	branch("u", "quota_rollups", "bucket_start", "u.count")
	b.WriteString("\n) x\nGROUP BY bucket, action\nORDER BY " + order)
	query := b.String()
	if s.pg {
		query = pgPlaceholders(query)
	}
	rows, err := s.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, s.fail(ctx, "sums", err)
	}
	defer rows.Close()
	var out []Sum
	for rows.Next() {
		var sum Sum
		if err := rows.Scan(&sum.Bucket, &sum.Action, &sum.Amount, &sum.Count); err != nil {
			return nil, s.fail(ctx, "sums", err)
		}
		out = append(out, sum)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(ctx, "sums", err)
	}
	return out, nil
}

// Top returns the subjects with the largest totals of q.Action in
// [q.From, q.To), records and rollups of pruned records alike, largest
// first, ties by subject (in byte order), at most q.Limit of them, for
// Quota.TopSubjects.
func (s *SQLStore) Top(ctx context.Context, q TopQuery) ([]SubjectTotal, error) {
	if err := s.enter(ctx); err != nil {
		return nil, s.fail(ctx, "top", err)
	}
	if err := checkName(q.Action, ErrInvalidAction); err != nil {
		return nil, fmt.Errorf("quota: sql top: %w", err)
	}
	if err := errors.Join(checkTime("from", q.From), checkTime("to", q.To)); err != nil {
		return nil, fmt.Errorf("quota: sql top: %w", err)
	}
	if q.Limit <= 0 {
		return nil, fmt.Errorf("quota: sql top: limit %d", q.Limit)
	}
	query := `SELECT subject, sum(amount), sum(n) FROM (
	SELECT subject, amount, 1 AS n FROM quota_records WHERE action = ? AND recorded_at >= ? AND recorded_at < ?
	UNION ALL
	SELECT subject, amount, count FROM quota_rollups WHERE action = ? AND bucket_start >= ? AND bucket_start < ?
) x
GROUP BY subject ORDER BY 2 DESC, subject LIMIT ?`
	if s.pg {
		query = strings.Replace(query, "sum(amount), sum(n)", "sum(amount)::bigint, sum(n)::bigint", 1)
		query = strings.Replace(query, "ORDER BY 2 DESC, subject", `ORDER BY 2 DESC, subject COLLATE "C"`, 1)
		query = pgPlaceholders(query)
	}
	from, to := s.tv(q.From), s.tv(q.To)
	rows, err := s.q.QueryContext(ctx, query, q.Action, from, to, q.Action, from, to, q.Limit)
	if err != nil {
		return nil, s.fail(ctx, "top", err)
	}
	defer rows.Close()
	var out []SubjectTotal
	for rows.Next() {
		var st SubjectTotal
		if err := rows.Scan(&st.Subject, &st.Amount, &st.Count); err != nil {
			return nil, s.fail(ctx, "top", err)
		}
		out = append(out, st)
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail(ctx, "top", err)
	}
	return out, nil
}

// Prune deletes up to limit records whose Time is before the cutoff,
// lowest IDs first, and folds each into the rollup of its subject, action
// and quarter hour (RollupStep), in one atomic step, for Quota.Prune. It
// returns how many records it deleted. Counters are not touched.
func (s *SQLStore) Prune(ctx context.Context, before time.Time, limit int) (int64, error) {
	if err := s.enter(ctx); err != nil {
		return 0, s.fail(ctx, "prune", err)
	}
	if err := checkTime("cutoff", before); err != nil {
		return 0, fmt.Errorf("quota: sql prune: %w", err)
	}
	if limit <= 0 {
		return 0, fmt.Errorf("quota: sql prune: limit %d", limit)
	}
	var n int64
	if s.pg {
		err := s.q.QueryRowContext(ctx, `WITH d AS (
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
SELECT count(*) FROM d`, s.tv(before), limit).Scan(&n)
		if err != nil {
			return 0, s.fail(ctx, "prune", err)
		}
		return n, nil
	}
	done, err := s.writer(ctx)
	if err != nil {
		return 0, s.fail(ctx, "prune", err)
	}
	defer done()
	const step = int64(RollupStep / time.Microsecond)
	err = s.atomically(ctx, func(q sqlQuerier) (bool, error) {
		if _, err := q.ExecContext(ctx, `INSERT INTO quota_rollups AS u (subject, action, bucket_start, amount, count)
SELECT subject, action, bucket, sum(amount), count(*) FROM (
	SELECT subject, action, recorded_at - ((recorded_at % ?3) + ?3) % ?3 AS bucket, amount
	  FROM quota_records WHERE recorded_at < ?1 ORDER BY id LIMIT ?2)
WHERE true GROUP BY subject, action, bucket
ON CONFLICT (subject, action, bucket_start) DO UPDATE
SET amount = u.amount + excluded.amount, count = u.count + excluded.count`, s.tv(before), limit, step); err != nil {
			return false, err
		}
		res, err := q.ExecContext(ctx, `DELETE FROM quota_records
WHERE id IN (SELECT id FROM quota_records WHERE recorded_at < ?1 ORDER BY id LIMIT ?2)`, s.tv(before), limit)
		if err != nil {
			return false, err
		}
		n, err = res.RowsAffected()
		return err == nil, err
	})
	if err != nil {
		return 0, s.fail(ctx, "prune", err)
	}
	return n, nil
}

// pgPlaceholders rewrites the ? placeholders of q as $1, $2, ... The
// queries it serves hold no other question mark.
func pgPlaceholders(q string) string {
	var b strings.Builder
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
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
		ss[i] = t.UTC().Truncate(time.Microsecond).Format("2006-01-02T15:04:05.999999Z")
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

// Migrations.

type sqlMigration struct {
	version  int
	name     string
	sql      string
	checksum string
}

func (s *SQLStore) migrationDir() string {
	if s.pg {
		return "migrations/pg"
	}
	return "migrations/sqlite"
}

func loadMigrations(dir string) ([]sqlMigration, error) {
	entries, err := fs.ReadDir(sqlMigrations, dir)
	if err != nil {
		return nil, err
	}
	var ms []sqlMigration
	for _, e := range entries {
		name := e.Name()
		num, rest, ok := strings.Cut(strings.TrimSuffix(name, ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || len(num) != 4 || rest == "" || !strings.HasSuffix(name, ".sql") {
			return nil, fmt.Errorf("migration %s: want NNNN_name.sql", name)
		}
		b, err := fs.ReadFile(sqlMigrations, path.Join(dir, name))
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(b)
		ms = append(ms, sqlMigration{version: v, name: strings.TrimSuffix(name, ".sql"), sql: string(b), checksum: hex.EncodeToString(sum[:])})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].version < ms[j].version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: want version %04d", m.name, i+1)
		}
	}
	return ms, nil
}

// Migrate creates or upgrades the schema: it applies, in order and in one
// transaction, the migrations that quota_schema_migrations does not list,
// and records them there. It is idempotent, and safe when several
// processes run it at once: on PostgreSQL an advisory lock (one per
// schema) serializes them; on SQLite the immediate transaction of the
// recommended DSN does. A migration changed since it was applied is an
// error; versions newer than this package knows are left alone. Over a
// bun.Tx it runs in a savepoint of that transaction.
func (s *SQLStore) Migrate(ctx context.Context) error {
	if err := s.enter(ctx); err != nil {
		return s.fail(ctx, "migrate", err)
	}
	if s.pg {
		return s.migrate(ctx)
	}
	// Processes that open a new SQLite file at the same moment race to
	// switch it to WAL, and SQLite answers the loser SQLITE_BUSY at once,
	// without waiting out busy_timeout. Migrate runs once at start: it
	// tries again, a little later each time, for up to about 10 seconds.
	wait := 5 * time.Millisecond
	for try := 1; ; try++ {
		err := s.migrate(ctx)
		if err == nil || !isSQLiteBusy(err) || try == 20 {
			return err
		}
		select {
		case <-ctx.Done():
			return s.fail(ctx, "migrate", ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// isSQLiteBusy reports whether err is SQLite's SQLITE_BUSY (or one of its
// extended codes), as modernc.org/sqlite's errors report their code.
func isSQLiteBusy(err error) bool {
	var coded interface{ Code() int }
	return errors.As(err, &coded) && coded.Code()&0xff == 5
}

func (s *SQLStore) migrate(ctx context.Context) error {
	ms, err := loadMigrations(s.migrationDir())
	if err != nil {
		return fmt.Errorf("quota: sql migrate: %w", err)
	}
	done, err := s.writer(ctx)
	if err != nil {
		return s.fail(ctx, "migrate", err)
	}
	defer done()
	var step string
	err = s.atomically(ctx, func(q sqlQuerier) (bool, error) {
		var ddl, ins string
		if s.pg {
			step = "lock"
			if _, err := q.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('github.com/quotakit/quota migrate ' || coalesce(current_schema(), ''), 0))`); err != nil {
				return false, err
			}
			ddl = `CREATE TABLE IF NOT EXISTS quota_schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL
)`
			ins = `INSERT INTO quota_schema_migrations (version, name, checksum, applied_at) VALUES ($1, $2, $3, $4)`
		} else {
			ddl = `CREATE TABLE IF NOT EXISTS quota_schema_migrations (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    checksum   TEXT    NOT NULL,
    applied_at INTEGER NOT NULL
) STRICT`
			ins = `INSERT INTO quota_schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, ?)`
		}
		step = "bookkeeping"
		if _, err := q.ExecContext(ctx, ddl); err != nil {
			return false, err
		}
		applied := map[int]string{}
		rows, err := q.QueryContext(ctx, `SELECT version, checksum FROM quota_schema_migrations`)
		if err != nil {
			return false, err
		}
		for rows.Next() {
			var v int
			var sum string
			if err := rows.Scan(&v, &sum); err != nil {
				rows.Close()
				return false, err
			}
			applied[v] = sum
		}
		if err := errors.Join(rows.Err(), rows.Close()); err != nil {
			return false, err
		}
		for _, m := range ms {
			step = m.name
			if sum, ok := applied[m.version]; ok {
				if sum != m.checksum {
					return false, errors.New("changed since it was applied")
				}
				continue
			}
			if _, err := q.ExecContext(ctx, m.sql); err != nil {
				return false, err
			}
			if _, err := q.ExecContext(ctx, ins, m.version, m.name, m.checksum, s.tv(time.Now())); err != nil {
				return false, err
			}
		}
		return true, nil
	})
	if err != nil {
		if step != "" {
			return s.fail(ctx, "migrate: "+step, err)
		}
		return s.fail(ctx, "migrate", err)
	}
	return nil
}
