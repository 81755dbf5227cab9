// What the two dialects of SQLStore share: the type and its constructor,
// Close, the transaction and statement plumbing, validation, encodings,
// the public methods (which validate, then run the dialect's SQL or hand
// over to it) and the migration driver. The dialects live in
// store_sql_sqlite.go and store_sql_pg.go, behind sqlDialect.

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
	_ Store     = (*SQLStore)(nil)
	_ Summer    = (*SQLStore)(nil)
	_ Ranker    = (*SQLStore)(nil)
	_ Pruner    = (*SQLStore)(nil)
	_ Outbox    = (*SQLStore)(nil)
	_ Sweeper   = (*SQLStore)(nil)
	_ Versioned = (*SQLStore)(nil)
)

// sqlMigrations holds the schema migrations, one directory per dialect,
// files named NNNN_name.sql and applied in that order.
//
//go:embed migrations/sqlite/*.sql migrations/pg/*.sql
var sqlMigrations embed.FS

// SQLStore is a Store in a SQLite or PostgreSQL database reached through
// bun. Build one with NewSQLStore and create its tables with Migrate. It
// also implements the optional Summer, Ranker and Pruner, so that
// Quota.Series, Quota.TopSubjects and Quota.Prune run in SQL; Outbox, so
// that Config.Notify works (the notices of a use are written with it);
// and Sweeper, so that expired holds go whatever the traffic.
//
// All tables are named quota_*: quota_records (the ledger),
// quota_summaries (one row per counter window: the per-period summary,
// with the marks set in it and the marks of its last write),
// quota_holds and quota_hold_counters (reservations, with their expiry),
// quota_idempotency_keys, quota_subscriptions, quota_rollups (pruned
// records, per quarter hour), quota_notices (the outbox), and
// quota_schema_migrations (Migrate's own bookkeeping, apart from any bun
// migrations of the app).
//
// Apps whose DDL a migration tool applies (goose, atlas) take the same
// migrations from SQLMigrations, and do not call Migrate.
//
// Every method is atomic in the database:
//
//   - PostgreSQL: Apply and Commit are one statement each, a call to a
//     function that Migrate creates (quota_apply, quota_commit), so one
//     round trip; Cancel and Prune are one statement too, and so is a
//     batch of them (quota_batch, see Batches below). They are correct
//     under READ COMMITTED, the default: a use locks its counter rows in
//     the order of CounterKey.Less and re-checks the limit on their latest
//     version (see migrations/pg/0002_functions.sql, 0004 for marks of
//     any width, and 0005 for the outbox); under stricter levels a
//     conflicting concurrent use fails with a serialization error, to
//     retry. A use refused takes no lock. Claim is one statement too,
//     which skips the notices another process is claiming (FOR UPDATE
//     SKIP LOCKED), and so is Sweep.
//   - SQLite: Apply, Commit, Cancel, Prune, Claim and Sweep each run a few
//     statements in one transaction, which the recommended DSN makes
//     IMMEDIATE: it holds
//     the write lock from its start. The writers of one SQLStore queue in
//     Go for their turn, and its statements are prepared once per
//     connection.
//   - Over a bun.Tx, every method runs inside that transaction (with a
//     SAVEPOINT where it must undo a refused use), so a use commits or
//     rolls back with it, its notices included; the caller then takes the
//     locks of several uses in the order it makes them. Claim returns no
//     notice there: those of the transaction are not committed yet, and a
//     notice is delivered after its use commits, by a Quota over a store
//     of the database (set Notify on that one); Sweep removes nothing
//     there either.
//
// Batches: the Apply, Commit and Cancel calls that reach a store over a
// *bun.DB or a bun.Conn while it is writing queue, and go together as its
// next batch, of at most WithMaxBatch calls: one transaction and one
// commit for all of them (SQLite: BEGIN IMMEDIATE, each call in a
// savepoint, COMMIT; PostgreSQL: one call of quota_batch, which takes the
// locks of the whole batch first, in one global order, and then applies
// the calls in order). A call that finds fewer than WithWriters batches
// being written (one on SQLite) goes at once, alone, on its caller's
// goroutine: there is no timer and no added wait. Each call of a batch
// gets the outcome it would get alone, in the batch's order; a batch that
// fails applies none of its calls and returns the error to each caller,
// after trying it again when it failed with a serialization failure or a
// deadlock (PostgreSQL 40001, 40P01) or SQLITE_BUSY. A caller whose
// context ends while its call waits in the queue takes the call out, and
// gets ctx.Err(): the call is never applied. Once a call is in a batch
// that is being written, its caller waits for the batch's outcome: the
// batch runs until the latest deadline of its callers, not cancelled by
// any one of them. A store over a bun.Tx never batches.
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
	// d is the dialect, chosen once by NewSQLStore.
	d sqlDialect
	// wsem, when not nil, serializes the writes of the store: its
	// writers queue here, in order. The SQLite dialect sets it up for a
	// store that runs its own transactions (see newSQLiteDialect).
	wsem chan struct{}
	// prep, when not nil, prepares the statements of the store, kept in
	// stmts (query -> *sql.Stmt, at most maxStmts). The SQLite dialect
	// keeps it for a store that runs its own transactions; the
	// PostgreSQL dialect drops it (see newPGDialect).
	prep interface {
		PrepareContext(context.Context, string) (*sql.Stmt, error)
	}
	stmts  sync.Map
	nstmts atomic.Int32
	closed atomic.Bool
	// batch queues the writes of a store that runs its own transactions
	// into batches; nil over the caller's transaction, or without
	// batching (WithMaxBatch(1)).
	batch *sqlBatcher
	// observe, when not nil, sees every batch (WithBatchObserver).
	observe func(BatchEvent)
}

// sqlDialect is one SQL dialect of SQLStore. It owns its SQL text, its
// placeholders, its encodings of times and arrays and its migrations, and
// performs the writes that differ in more than their SQL. SQLStore
// validates every input before it calls its dialect, and wraps the errors
// the dialect returns. NewSQLStore chooses the dialect once, by bun's
// dialect name: sqliteDialect (store_sql_sqlite.go) or pgDialect
// (store_sql_pg.go).
type sqlDialect interface {
	// writeBatch performs the valid Apply, Commit and Cancel calls of
	// calls, atomically and in their order, each with the outcome it
	// would have alone in that order (see sqlCall), in one transaction
	// of the store's own, or in the caller's (then calls has one call).
	// An error fails the whole batch: none of its calls is applied.
	writeBatch(ctx context.Context, calls []*sqlCall) error
	// prune performs SQLStore.Prune for a valid cutoff and limit.
	prune(ctx context.Context, before time.Time, limit int) (int64, error)
	// sweep performs SQLStore.Sweep for a valid now and limit.
	sweep(ctx context.Context, now time.Time, limit int) (int64, error)
	// claim claims up to limit notices due at now and not claimed past
	// it, oldest first, until until, atomically, and returns them in any
	// order, as scanNotices reads them. It runs in a transaction of the
	// store's own, never in the caller's (see SQLStore.Claim).
	claim(ctx context.Context, now, until time.Time, limit int) ([]Notice, error)

	// countersSQL returns the statement that reads the counters of keys
	// (at least one) at now, as readCounters runs it.
	countersSQL(keys []CounterKey, now time.Time) (query string, args []any)
	// sumsSQL returns the statement of SQLStore.Sums for a valid q: rows
	// of bucket, action, amount and count, in the order Sums returns.
	sumsSQL(q SumQuery) (query string, args []any)
	// text returns the SQL of the statements that SQLStore runs the same
	// way on either dialect.
	text() *sqlText
	// param returns the placeholder of the nth argument (from 1) of a
	// statement built in Go.
	param(n int) string
	// tv encodes t as the dialect stores times.
	tv(t time.Time) any
	// transient reports whether Migrate should try again after err.
	transient(err error) bool
}

// sqlText holds the SQL of a dialect for the statements whose arguments
// and results are the same on both.
type sqlText struct {
	// putSubscription upserts a subscription: subject, plan, anchor,
	// time_zone, overrides, next_plan, next_plan_at.
	putSubscription string
	// getSubscription reads the subscription of a subject: plan, anchor,
	// time_zone, overrides, next_plan, next_plan_at.
	getSubscription string
	// top ranks the subjects of an action: arguments action, from, to,
	// action, from, to, limit; rows subject, amount, count.
	top string
	// ack deletes the notice of an id.
	ack string
	// retry makes the notice of an id (the second argument) due at the
	// first argument, unclaimed, with one more attempt.
	retry string

	// migrations is the directory of the dialect in sqlMigrations.
	migrations string
	// migrateLock, when not empty, serializes concurrent Migrate calls
	// until the end of the transaction.
	migrateLock string
	// migrationsTable creates quota_schema_migrations if it is missing.
	migrationsTable string
	// insertMigration records an applied migration: version, name,
	// checksum, applied_at.
	insertMigration string
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
// the first use, unless a migration tool applies SQLMigrations. Close
// never closes db.
func NewSQLStore(db bun.IDB, opts ...SQLOption) (*SQLStore, error) {
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
		s.d = newPGDialect(s)
	case dialect.SQLite:
		s.d = newSQLiteDialect(s)
	default:
		return nil, fmt.Errorf("quota: new sql store: unsupported dialect %s (want sqlite or pg)", name)
	}
	s.q = sqlConn{s: s, q: s.q}
	o := sqlOptions{maxBatch: DefaultMaxBatch, writers: 2}
	for _, opt := range opts {
		if opt != nil {
			opt(&o)
		}
	}
	s.observe = o.observe
	if s.begin != nil && o.maxBatch > 1 {
		if s.wsem != nil {
			o.writers = 1 // SQLite: one writer at a time
		}
		s.batch = &sqlBatcher{s: s, max: o.maxBatch, writers: o.writers}
	}
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

// writer waits for the turn of a writer (see wsem) and returns the
// function that ends it.
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
	known := isAny(err, ErrOverflow, ErrIdempotencyConflict, ErrReservationNotFound, ErrReservationExpired, ErrNoSubscription,
		ErrInvalidAmount, ErrSubscriptionChanged, ErrClosed, ErrNilContext, context.Canceled, context.DeadlineExceeded)
	if !known && ctx != nil && ctx.Err() != nil {
		return fmt.Errorf("quota: sql %s: %w", op, ctx.Err())
	}
	return fmt.Errorf("quota: sql %s: %w", op, err)
}

// atomically runs f in a transaction, or in a savepoint of the caller's
// transaction, and commits it if f returns keep; otherwise it rolls back.
func (s *SQLStore) atomically(ctx context.Context, f func(q sqlQuerier) (keep bool, err error)) error {
	if s.begin == nil {
		return s.inSavepoint(ctx, f)
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

// inSavepoint is atomically in the caller's transaction.
func (s *SQLStore) inSavepoint(ctx context.Context, f func(q sqlQuerier) (keep bool, err error)) error {
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

// sqlArgs collects the arguments of a statement built in Go, with the
// placeholders of its dialect.
type sqlArgs struct {
	param func(n int) string
	vals  []any
}

// bind adds v and returns its placeholder.
func (a *sqlArgs) bind(v any) string {
	a.vals = append(a.vals, v)
	return a.param(len(a.vals))
}

// Values. Times are encoded by the dialect (sqlDialect.tv); sqlTime reads
// them back from either.

func (s *SQLStore) tvOrNull(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return s.d.tv(t)
}

// sqlTime scans a time of either dialect into UTC: INTEGER microseconds
// since the Unix epoch (SQLite) or a timestamptz (PostgreSQL). NULL is the
// zero time.
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

func nullInt(n int64) any {
	if n == 0 {
		return nil
	}
	return n
}

// Validation, before any SQL: the engine validated its input already, but
// bun and the drivers must never see a name that would be rewritten or
// truncated, nor an amount that could overflow in SQL.

func checkTime(what string, t time.Time) error {
	if y := t.UTC().Year(); y < 1 || y > 9999 {
		return fmt.Errorf("%s %v is out of range (years 1 to 9999)", what, t)
	}
	return nil
}

// validateOp checks op: its record, its hold and its counters.
func validateOp(op *Op) error {
	if op == nil {
		return errors.New("nil op")
	}
	if err := validateRecord(op); err != nil {
		return err
	}
	if err := validateHold(op); err != nil {
		return err
	}
	if err := checkTime("now", op.Now); err != nil {
		return err
	}
	if err := checkTime("record time", op.Record.Time); err != nil {
		return err
	}
	return validateCounters(op)
}

// validateRecord checks the names and metadata of op's record, and its
// fingerprint.
func validateRecord(op *Op) error {
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
	return checkMetadata(r.Metadata)
}

// validateHold checks op's hold, if it has one.
func validateHold(op *Op) error {
	if op.Hold == nil {
		return nil
	}
	if op.Record.Amount <= 0 {
		return fmt.Errorf("%w: cannot hold %d", ErrInvalidAmount, op.Record.Amount)
	}
	if err := checkName(op.Hold.ID, ErrInvalidName); err != nil {
		return fmt.Errorf("hold id: %w", err)
	}
	return checkTime("hold expiry", op.Hold.ExpiresAt)
}

// validateCounters checks that op's counters are the record's, in range,
// sorted and distinct.
func validateCounters(op *Op) error {
	r := &op.Record
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

// The first outcome of a keyed use.

// sqlOutcome is one counter of the first outcome of a keyed use, as the
// counters column of quota_idempotency_keys holds it (a JSON array). Times
// are microseconds since the Unix epoch. SQLite's apply writes it with
// encodeOutcome, PostgreSQL's quota_apply in SQL; both read it with
// decodeOutcome.
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

// replay returns the first outcome of op's key, as quota_idempotency_keys
// holds it, or an error matching ErrIdempotencyConflict when fingerprint
// is not op's.
func replay(op *Op, fingerprint, action string, recordID sql.NullInt64, holdID sql.NullString, holdExpires time.Time, counters sql.NullString) (ApplyResult, error) {
	if fingerprint != op.Fingerprint {
		return ApplyResult{}, fmt.Errorf("%w: key %q of %q", ErrIdempotencyConflict, op.Record.Key, op.Record.Subject)
	}
	cs, err := decodeOutcome(op.Record.Subject, action, counters.String)
	if err != nil {
		return ApplyResult{}, err
	}
	return ApplyResult{Applied: true, Replayed: true, Counters: cs, RecordID: recordID.Int64, HoldID: holdID.String, HoldExpiresAt: holdExpires}, nil
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

// Apply implements Store.
func (s *SQLStore) Apply(ctx context.Context, op *Op) (ApplyResult, error) {
	if err := s.enter(ctx); err != nil {
		return ApplyResult{}, s.fail(ctx, "apply", err)
	}
	if err := validateOp(op); err != nil {
		return ApplyResult{}, fmt.Errorf("quota: sql apply: %w", err)
	}
	c := &sqlCall{ctx: ctx, kind: callApply, op: op}
	s.run(c)
	if c.err != nil {
		return ApplyResult{}, s.fail(ctx, "apply", c.err)
	}
	return c.res, nil
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
	c := &sqlCall{ctx: ctx, kind: callCommit, id: id, amount: amount, now: now}
	s.run(c)
	if c.err != nil {
		return Record{}, s.fail(ctx, "commit "+id, c.err)
	}
	return c.rec, nil
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
	c := &sqlCall{ctx: ctx, kind: callCancel, id: id}
	s.run(c)
	if c.err == nil && !c.found {
		c.err = ErrReservationNotFound
	}
	if c.err != nil {
		return s.fail(ctx, "cancel "+id, c.err)
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
	cs, _, err := s.readCounters(ctx, s.q, keys, now)
	if err != nil {
		return nil, s.fail(ctx, "counters", err)
	}
	return cs, nil
}

// readCounters reads the counters of keys with q in one statement of the
// dialect (countersSQL), so from one snapshot, and the marks set on each.
// A row never written (limit_max NULL) reads as no row: a zero counter.
func (s *SQLStore) readCounters(ctx context.Context, q sqlQuerier, keys []CounterKey, now time.Time) ([]Counter, []int64, error) {
	out := make([]Counter, len(keys))
	marks := make([]int64, len(keys))
	for i, k := range keys {
		out[i].CounterKey = k
	}
	if len(keys) == 0 {
		return out, marks, nil
	}
	query, args := s.d.countersSQL(keys, now)
	if len(keys) == 1 {
		// One row of used, limit_max, period_end, held and marks, or none.
		c := &out[0]
		err := q.QueryRowContext(ctx, query, args...).Scan(&c.Used, &c.Max, sqlTime{&c.End}, &c.Held, &marks[0])
		if errors.Is(err, sql.ErrNoRows) {
			err = nil
		}
		return out, marks, err
	}
	// A row per counter written: its position in keys (from 1), then as
	// above.
	rows, err := q.QueryContext(ctx, query, args...)
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
	overrides, err := checkSubscription(sub)
	if err != nil {
		return err
	}
	done, err := s.writer(ctx)
	if err == nil {
		_, err = s.q.ExecContext(ctx, s.d.text().putSubscription, sub.Subject, sub.Plan, s.d.tv(sub.Anchor), sub.TimeZone, overrides,
			nullString(sub.NextPlan), s.tvOrNull(sub.NextPlanAt), sub.Version)
		done()
	}
	if err != nil {
		return s.fail(ctx, fmt.Sprintf("put subscription %q", sub.Subject), err)
	}
	return nil
}

// checkSubscription validates sub and returns its overrides as JSON text,
// or nil for none.
func checkSubscription(sub Subscription) (overrides any, err error) {
	if err := checkName(sub.Subject, ErrInvalidSubject); err != nil {
		return nil, fmt.Errorf("quota: sql put subscription: %w", err)
	}
	for _, n := range []string{sub.Plan, sub.TimeZone, sub.NextPlan} {
		if n == "" {
			continue
		}
		if err := checkName(n, ErrInvalidSubscription); err != nil {
			return nil, fmt.Errorf("quota: sql put subscription %q: %w", sub.Subject, err)
		}
	}
	if sub.Plan == "" {
		return nil, fmt.Errorf("quota: sql put subscription %q: %w: no plan", sub.Subject, ErrInvalidSubscription)
	}
	if err := errors.Join(checkTime("anchor", sub.Anchor), checkTime("next plan time", sub.NextPlanAt)); err != nil {
		return nil, fmt.Errorf("quota: sql put subscription %q: %w: %w", sub.Subject, ErrInvalidSubscription, err)
	}
	if len(sub.Overrides) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(sub.Overrides)
	if err != nil {
		return nil, fmt.Errorf("quota: sql put subscription %q: %w: %w", sub.Subject, ErrInvalidSubscription, err)
	}
	return string(b), nil
}

// Versioned implements Versioned: an SQLStore keeps Subscription.Version
// and honours Op.Version, in the statement (PostgreSQL) or the
// transaction (SQLite) of the use.
func (s *SQLStore) Versioned() bool { return true }

// GetSubscription implements Store.
func (s *SQLStore) GetSubscription(ctx context.Context, subject string) (Subscription, error) {
	if err := s.enter(ctx); err != nil {
		return Subscription{}, s.fail(ctx, "get subscription", err)
	}
	if err := checkName(subject, ErrInvalidSubject); err != nil {
		return Subscription{}, fmt.Errorf("quota: sql get subscription: %w", err)
	}
	sub := Subscription{Subject: subject}
	var overrides, next sql.NullString
	err := s.q.QueryRowContext(ctx, s.d.text().getSubscription, subject).Scan(&sub.Plan, sqlTime{&sub.Anchor}, &sub.TimeZone, &overrides, &next, sqlTime{&sub.NextPlanAt}, &sub.Version)
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
	if err := checkRecordQuery(rq); err != nil {
		return nil, fmt.Errorf("quota: sql records: %w", err)
	}
	query, args := s.recordsSQL(rq)
	rows, err := s.q.QueryContext(ctx, query, args...)
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

// checkRecordQuery validates the names, times, cursors and limit of rq.
func checkRecordQuery(rq RecordQuery) error {
	if rq.Subject != "" {
		if err := checkName(rq.Subject, ErrInvalidSubject); err != nil {
			return err
		}
	}
	if rq.Action != "" {
		if err := checkName(rq.Action, ErrInvalidAction); err != nil {
			return err
		}
	}
	if !rq.From.IsZero() {
		if err := checkTime("from", rq.From); err != nil {
			return err
		}
	}
	if !rq.To.IsZero() {
		if err := checkTime("to", rq.To); err != nil {
			return err
		}
	}
	if rq.Limit < 0 || rq.AfterID < 0 || rq.BeforeID < 0 {
		return errors.New("negative limit or cursor")
	}
	return nil
}

// recordsSQL returns the statement of Records for a valid rq: the same
// standard SQL on both dialects, with the dialect's placeholders and
// times.
func (s *SQLStore) recordsSQL(rq RecordQuery) (string, []any) {
	a := sqlArgs{param: s.d.param}
	var where []string
	if rq.Subject != "" {
		where = append(where, "subject = "+a.bind(rq.Subject))
	}
	if rq.Action != "" {
		where = append(where, "action = "+a.bind(rq.Action))
	}
	if !rq.From.IsZero() {
		where = append(where, "recorded_at >= "+a.bind(s.d.tv(rq.From)))
	}
	if !rq.To.IsZero() {
		where = append(where, "recorded_at < "+a.bind(s.d.tv(rq.To)))
	}
	if rq.AfterID > 0 {
		where = append(where, "id > "+a.bind(rq.AfterID))
	}
	if rq.BeforeID != 0 {
		where = append(where, "id < "+a.bind(rq.BeforeID))
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
		b.WriteString(" LIMIT " + a.bind(rq.Limit))
	}
	return b.String(), a.vals
}

// Sums implements Summer: it adds up the records that q selects, and the
// rollups of pruned records, per bucket (and action), for Quota.Series,
// in one statement. On SQLite it reads each bucket's records as a range
// of an index; on PostgreSQL it reads the whole range once and finds each
// row's bucket with width_bucket, a binary search in the bounds, so that
// no plan (a generic plan of a prepared statement included) can compare
// every row with every bucket.
func (s *SQLStore) Sums(ctx context.Context, q SumQuery) ([]Sum, error) {
	if err := s.enter(ctx); err != nil {
		return nil, s.fail(ctx, "sums", err)
	}
	if err := checkSumQuery(q); err != nil {
		return nil, fmt.Errorf("quota: sql sums: %w", err)
	}
	query, args := s.d.sumsSQL(q)
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

// checkSumQuery validates the bounds and names of q.
func checkSumQuery(q SumQuery) error {
	if len(q.Bounds) < 2 {
		return fmt.Errorf("%d bounds, want at least 2", len(q.Bounds))
	}
	for i, b := range q.Bounds {
		if err := checkTime("bound", b); err != nil {
			return err
		}
		if i > 0 && !q.Bounds[i-1].Before(b) {
			return fmt.Errorf("bounds not ascending at %d", i)
		}
	}
	if q.Subject != "" {
		if err := checkName(q.Subject, ErrInvalidSubject); err != nil {
			return err
		}
	}
	if q.Action != "" {
		if err := checkName(q.Action, ErrInvalidAction); err != nil {
			return err
		}
	}
	return nil
}

// sumAction is the action column of a branch of the Sums statement over
// the table alias: the action with q.ByAction, else the empty text.
func sumAction(q SumQuery, alias string) string {
	if q.ByAction {
		return alias + ".action"
	}
	return "CAST('' AS TEXT)"
}

// sumFilter writes the conditions on subject and action of q, on the
// table alias, to b.
func sumFilter(b *strings.Builder, a *sqlArgs, q SumQuery, alias string) {
	if q.Subject != "" {
		b.WriteString(" AND " + alias + ".subject = " + a.bind(q.Subject))
	}
	if q.Action != "" {
		b.WriteString(" AND " + alias + ".action = " + a.bind(q.Action))
	}
}

// Top implements Ranker: it returns the subjects with the largest totals
// of q.Action in [q.From, q.To), records and rollups of pruned records
// alike, largest first, ties by subject (in byte order), at most q.Limit
// of them, for Quota.TopSubjects.
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
	from, to := s.d.tv(q.From), s.d.tv(q.To)
	rows, err := s.q.QueryContext(ctx, s.d.text().top, q.Action, from, to, q.Action, from, to, q.Limit)
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

// Prune implements Pruner: it deletes up to limit records whose Time is
// before the cutoff, lowest IDs first, and folds each into the rollup of
// its subject, action and quarter hour (RollupStep), in one atomic step,
// for Quota.Prune. It returns how many records it deleted. Counters are
// not touched.
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
	n, err := s.d.prune(ctx, before, limit)
	if err != nil {
		return 0, s.fail(ctx, "prune", err)
	}
	return n, nil
}

// Sweep implements Sweeper: it deletes up to limit holds that expired at
// or before now, of any subject, with their counters, and returns how
// many it deleted. On PostgreSQL it skips the holds that a concurrent
// Commit or Cancel has locked: that call removes them. Over a caller's
// bun.Tx it deletes nothing and returns 0: the Quota calls Sweep from a
// goroutine of its own, which must not run statements in the caller's
// transaction (a store over the database sweeps every subject's holds).
func (s *SQLStore) Sweep(ctx context.Context, now time.Time, limit int) (int64, error) {
	if err := s.enter(ctx); err != nil {
		return 0, s.fail(ctx, "sweep", err)
	}
	if err := checkTime("now", now); err != nil {
		return 0, fmt.Errorf("quota: sql sweep: %w", err)
	}
	if limit <= 0 || s.begin == nil {
		return 0, nil
	}
	n, err := s.d.sweep(ctx, now, limit)
	if err != nil {
		return 0, s.fail(ctx, "sweep", err)
	}
	return n, nil
}

// The outbox: quota_notices holds a row per notice, written by Apply and
// Commit with the use that set the mark; Claim leases rows, Ack deletes
// them, Retry makes them due again.

// Claim implements Outbox: it returns up to limit notices due at now and
// not claimed past it, oldest (lowest ID) first, and claims them until
// now + lease, in one atomic step. Processes sharing the database claim
// different notices (on PostgreSQL, FOR UPDATE SKIP LOCKED lets
// concurrent claims pass each other). Over a caller's bun.Tx it returns
// no notice: the notices of that transaction are not committed yet, and
// a notice must be delivered after its use commits (nor may the Quota's
// notifier, a goroutine of its own, run statements in the caller's
// transaction).
func (s *SQLStore) Claim(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]Notice, error) {
	if err := s.enter(ctx); err != nil {
		return nil, s.fail(ctx, "claim", err)
	}
	until := now.Add(lease)
	if err := errors.Join(checkTime("now", now), checkTime("lease end", until)); err != nil {
		return nil, fmt.Errorf("quota: sql claim: %w", err)
	}
	if limit <= 0 || s.begin == nil {
		return nil, nil
	}
	ns, err := s.d.claim(ctx, now, until, limit)
	if err != nil {
		return nil, s.fail(ctx, "claim", err)
	}
	sort.Slice(ns, func(i, j int) bool { return ns[i].ID < ns[j].ID })
	return ns, nil
}

// Ack implements Outbox: it deletes the notice id. An unknown id is not an
// error.
func (s *SQLStore) Ack(ctx context.Context, id int64) error {
	return s.notice(ctx, "ack", id, s.d.text().ack, id)
}

// Retry implements Outbox: it makes the notice id due at at, unclaimed,
// with one more attempt counted. An unknown id is not an error.
func (s *SQLStore) Retry(ctx context.Context, id int64, at time.Time) error {
	if err := checkTime("retry time", at); err != nil {
		return fmt.Errorf("quota: sql retry %d: %w", id, err)
	}
	return s.notice(ctx, "retry", id, s.d.text().retry, s.d.tv(at), id)
}

// notice runs query with args, a write of the notice id (Ack, Retry), in
// the writer's turn.
func (s *SQLStore) notice(ctx context.Context, op string, id int64, query string, args ...any) error {
	if err := s.enter(ctx); err != nil {
		return s.fail(ctx, op, err)
	}
	done, err := s.writer(ctx)
	if err == nil {
		_, err = s.q.ExecContext(ctx, query, args...)
		done()
	}
	if err != nil {
		return s.fail(ctx, fmt.Sprintf("%s %d", op, id), err)
	}
	return nil
}

// noticeColumns are the columns of quota_notices that scanNotices reads,
// in its order.
const noticeColumns = "id, subject, action, period, period_start, period_end, mark, used, limit_max, recorded_at, attempts"

// scanNotices reads the notices of rows (noticeColumns) and closes rows.
func scanNotices(rows *sql.Rows) ([]Notice, error) {
	defer rows.Close()
	var out []Notice
	for rows.Next() {
		var n Notice
		var period string
		c := &n.Counter
		if err := rows.Scan(&n.ID, &c.Subject, &c.Action, &period, sqlTime{&c.Start}, sqlTime{&c.End}, &n.Mark, &c.Used, &c.Max,
			sqlTime{&n.At}, &n.Attempts); err != nil {
			return nil, err
		}
		p, err := ParsePeriod(period)
		if err != nil {
			return nil, fmt.Errorf("notice %d: %w", n.ID, err)
		}
		c.Period = p
		out = append(out, n)
	}
	return out, errors.Join(rows.Err(), rows.Close())
}

// Migrations.

type sqlMigration struct {
	version  int
	name     string
	sql      string
	checksum string
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
	// Migrate runs once at start, where a dialect may meet errors that
	// pass (see sqlDialect.transient): it tries again, a little later
	// each time, for up to about 10 seconds.
	wait := 5 * time.Millisecond
	for try := 1; ; try++ {
		err := s.migrate(ctx)
		if err == nil || !s.d.transient(err) || try == 20 {
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

func (s *SQLStore) migrate(ctx context.Context) error {
	text := s.d.text()
	ms, err := loadMigrations(text.migrations)
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
		if text.migrateLock != "" {
			step = "lock"
			if _, err := q.ExecContext(ctx, text.migrateLock); err != nil {
				return false, err
			}
		}
		step = "bookkeeping"
		applied, err := s.appliedMigrations(ctx, q)
		if err != nil {
			return false, err
		}
		for _, m := range ms {
			step = m.name
			if err := s.applyMigration(ctx, q, m, applied); err != nil {
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

// appliedMigrations creates quota_schema_migrations if it is missing, and
// returns the checksums of the migrations it lists, by version.
func (s *SQLStore) appliedMigrations(ctx context.Context, q sqlQuerier) (map[int]string, error) {
	if _, err := q.ExecContext(ctx, s.d.text().migrationsTable); err != nil {
		return nil, err
	}
	applied := map[int]string{}
	rows, err := q.QueryContext(ctx, `SELECT version, checksum FROM quota_schema_migrations`)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var v int
		var sum string
		if err := rows.Scan(&v, &sum); err != nil {
			rows.Close()
			return nil, err
		}
		applied[v] = sum
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, err
	}
	return applied, nil
}

// applyMigration applies m and records it, unless applied lists it: then
// it checks that m has not changed since.
func (s *SQLStore) applyMigration(ctx context.Context, q sqlQuerier, m sqlMigration, applied map[int]string) error {
	if sum, ok := applied[m.version]; ok {
		if sum != m.checksum {
			return errors.New("changed since it was applied")
		}
		return nil
	}
	if _, err := q.ExecContext(ctx, m.sql); err != nil {
		return err
	}
	_, err := q.ExecContext(ctx, s.d.text().insertMigration, m.version, m.name, m.checksum, s.d.tv(time.Now()))
	return err
}
