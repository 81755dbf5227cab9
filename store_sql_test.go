package quota_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/dialect/sqlitedialect"
	"github.com/uptrace/bun/schema"
	_ "modernc.org/sqlite"

	"github.com/quotakit/quota"
	"github.com/quotakit/quota/quotatest"
)

// Opening the databases.

// sqliteDSN is the DSN the package documents for modernc.org/sqlite: WAL,
// a busy timeout, immediate transactions and foreign keys.
func sqliteDSN(path string) string {
	return "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_txlock=immediate"
}

// openSQLite opens the SQLite database at path, closed when t ends.
func openSQLite(t testing.TB, path string) *bun.DB {
	t.Helper()
	sqldb, err := sql.Open("sqlite", sqliteDSN(path))
	if err != nil {
		t.Fatalf("sql.Open(sqlite): %v", err)
	}
	db := bun.NewDB(sqldb, sqlitedialect.New())
	t.Cleanup(func() { db.Close() })
	return db
}

// newSQLiteDB returns a new, empty SQLite database in t.TempDir().
func newSQLiteDB(t testing.TB) *bun.DB {
	t.Helper()
	return openSQLite(t, filepath.Join(t.TempDir(), "quota.db"))
}

// pgBaseDSN returns QUOTA_TEST_POSTGRES_DSN, skipping t without it, or
// failing t when CI is set.
func pgBaseDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("QUOTA_TEST_POSTGRES_DSN")
	if dsn == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("QUOTA_TEST_POSTGRES_DSN is not set, and CI is: the PostgreSQL tests must run in CI")
		}
		t.Skip("PostgreSQL tests skipped: set QUOTA_TEST_POSTGRES_DSN, e.g. postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	}
	return dsn
}

// newPGSchema creates a fresh schema, dropped with CASCADE when t ends,
// and returns a DSN whose connections work in it (search_path).
func newPGSchema(t testing.TB) string {
	t.Helper()
	base := pgBaseDSN(t)
	var b [6]byte
	rand.Read(b[:])
	name := "quota_t_" + hex.EncodeToString(b[:])
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatalf("sql.Open(pgx): %v", err)
	}
	defer admin.Close()
	if _, err := admin.ExecContext(context.Background(), "CREATE SCHEMA "+name); err != nil {
		t.Fatalf("CREATE SCHEMA: %v", err)
	}
	t.Cleanup(func() {
		admin, err := sql.Open("pgx", base)
		if err != nil {
			t.Errorf("sql.Open(pgx): %v", err)
			return
		}
		defer admin.Close()
		if _, err := admin.ExecContext(context.Background(), "DROP SCHEMA "+name+" CASCADE"); err != nil {
			t.Errorf("DROP SCHEMA %s: %v", name, err)
		}
	})
	return withSearchPath(base, name)
}

func withSearchPath(dsn, schema string) string {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String()
	}
	return dsn + " search_path=" + schema
}

// openPG opens a pool of at most conns connections to dsn, closed when t
// ends (before its schema is dropped).
func openPG(t testing.TB, dsn string, conns int) *bun.DB {
	t.Helper()
	sqldb, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatalf("sql.Open(pgx): %v", err)
	}
	sqldb.SetMaxOpenConns(conns)
	sqldb.SetMaxIdleConns(conns)
	db := bun.NewDB(sqldb, pgdialect.New())
	t.Cleanup(func() { db.Close() })
	return db
}

// A backend makes fresh, empty databases of one dialect.
type backend struct {
	name  string
	newDB func(t testing.TB) *bun.DB
}

var backends = []backend{
	{"sqlite", newSQLiteDB},
	{"pg", func(t testing.TB) *bun.DB { return openPG(t, newPGSchema(t), 16) }},
}

// eachBackend runs f as a subtest per backend.
func eachBackend(t *testing.T, f func(t *testing.T, b backend)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { f(t, b) })
	}
}

// migrated returns a migrated SQLStore over db.
func migrated(t testing.TB, db bun.IDB) *quota.SQLStore {
	t.Helper()
	s, err := quota.NewSQLStore(db)
	if err != nil {
		t.Fatalf("NewSQLStore: %v", err)
	}
	if err := s.Migrate(context.Background()); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	return s
}

// fixedClock returns a clock that stays at t0.
func fixedClock(t0 time.Time) func() time.Time { return func() time.Time { return t0 } }

var sqlT0 = time.Date(2025, time.March, 10, 12, 0, 0, 0, time.UTC)

func newQuota(t testing.TB, st quota.Store, cfg quota.Config) *quota.Quota {
	t.Helper()
	if cfg.Now == nil {
		cfg.Now = fixedClock(sqlT0)
	}
	q, err := quota.New(st, cfg)
	if err != nil {
		t.Fatalf("quota.New: %v", err)
	}
	// Closed before the database (cleanups run last first), so that its
	// janitor never meets a closed database.
	t.Cleanup(func() { q.Close() })
	return q
}

// The conformance suite, on both databases, every case with a fresh
// database (SQLite file or PostgreSQL schema).

func TestSQLStoreConformance(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		quotatest.Run(t, func(t *testing.T) quota.Store { return migrated(t, b.newDB(t)) })
	})
}

// The constructor.

type fakeIDB struct{ bun.IDB }

type mysqlDialect struct{ *sqlitedialect.Dialect }

func (mysqlDialect) Name() dialect.Name { return dialect.MySQL }

var _ schema.Dialect = mysqlDialect{}

func TestNewSQLStore(t *testing.T) {
	db := newSQLiteDB(t)
	other := bun.NewDB(db.DB, mysqlDialect{sqlitedialect.New()})
	tx, err := db.BeginTx(t.Context(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	conn, err := db.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, tc := range []struct {
		name string
		db   bun.IDB
		ok   bool
	}{
		{"*bun.DB", db, true},
		{"bun.Tx", tx, true},
		{"*bun.Tx", &tx, true},
		{"bun.Conn", conn, true},
		{"nil", nil, false},
		{"nil *bun.DB", (*bun.DB)(nil), false},
		{"zero bun.Tx", bun.Tx{}, false},
		{"other IDB", fakeIDB{db}, false},
		{"mysql dialect", other, false},
	} {
		s, err := quota.NewSQLStore(tc.db)
		if (err == nil) != tc.ok || (s != nil) != tc.ok {
			t.Errorf("NewSQLStore(%s) = %v, %v; want ok %v", tc.name, s, err, tc.ok)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "quota: new sql store: ") {
			t.Errorf("NewSQLStore(%s) error %q; want the prefix \"quota: new sql store: \"", tc.name, err)
		}
	}
}

// Migrations: golden DDL, idempotence, concurrency.

func goldenPath(b backend) string { return filepath.Join("testdata", "migrate."+b.name+".sql") }

// dumpSchema returns the DDL of the quota schema as the database has it:
// sqlite_schema for SQLite, the catalogs for PostgreSQL.
func dumpSchema(t testing.TB, db *bun.DB) string {
	t.Helper()
	ctx := context.Background()
	var b strings.Builder
	if db.Dialect().Name() == dialect.SQLite {
		b.WriteString("-- The quota schema after Migrate, as sqlite_schema holds it.\n")
		rows, err := db.DB.QueryContext(ctx, `SELECT type, name, sql FROM sqlite_schema
WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY type = 'index', name`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var typ, name, ddl string
			if err := rows.Scan(&typ, &name, &ddl); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "\n-- %s %s\n%s;\n", typ, name, ddl)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	q := func(query string, args ...any) *sql.Rows {
		t.Helper()
		rows, err := db.DB.QueryContext(ctx, query, args...)
		if err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		return rows
	}
	var schemaName string
	if err := db.DB.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schemaName); err != nil {
		t.Fatal(err)
	}
	b.WriteString("-- The quota schema after Migrate, rebuilt from the PostgreSQL catalogs.\n")
	var tables []string
	rows := q(`SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') ORDER BY 1`)
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, name)
	}
	rows.Close()
	for _, tbl := range tables {
		var lines []string
		rows := q(`SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
	coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attidentity::text
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, tbl)
		for rows.Next() {
			var name, typ, def, ident string
			var notNull bool
			if err := rows.Scan(&name, &typ, &notNull, &def, &ident); err != nil {
				t.Fatal(err)
			}
			l := "    " + name + " " + typ
			switch ident {
			case "d":
				l += " GENERATED BY DEFAULT AS IDENTITY"
			case "a":
				l += " GENERATED ALWAYS AS IDENTITY"
			}
			if notNull {
				l += " NOT NULL"
			}
			if def != "" {
				l += " DEFAULT " + def
			}
			lines = append(lines, l)
		}
		rows.Close()
		rows = q(`SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
WHERE conrelid = $1::text::regclass ORDER BY conname`, tbl)
		for rows.Next() {
			var name, def string
			if err := rows.Scan(&name, &def); err != nil {
				t.Fatal(err)
			}
			lines = append(lines, "    CONSTRAINT "+name+" "+def)
		}
		rows.Close()
		fmt.Fprintf(&b, "\nCREATE TABLE %s (\n%s\n);\n", tbl, strings.Join(lines, ",\n"))
		rows = q(`SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = $1::text::regclass
	AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid)
ORDER BY c.relname`, tbl)
		for rows.Next() {
			var def string
			if err := rows.Scan(&def); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "%s;\n", def)
		}
		rows.Close()
	}
	rows = q(`SELECT pg_get_functiondef(p.oid) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = current_schema() ORDER BY p.proname`)
	for rows.Next() {
		var def string
		if err := rows.Scan(&def); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "\n%s;\n", strings.TrimRight(def, "\n"))
	}
	rows.Close()
	return strings.ReplaceAll(b.String(), schemaName+".", "")
}

// checkGolden compares the schema of db with the golden file of b, or
// rewrites the file with -update.
func checkGolden(t *testing.T, b backend, db *bun.DB) {
	t.Helper()
	got := dumpSchema(t, db)
	path := goldenPath(b)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s", path)
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run TestSQLStoreMigrate -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("schema after Migrate differs from %s (-want +got; go test -run TestSQLStoreMigrate -update rewrites it):\n%s", path, diff)
	}
}

func countRows(t testing.TB, db bun.IDB, table string) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(context.Background(), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatalf("count %s: %v", table, err)
	}
	return n
}

func TestSQLStoreMigrate(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		db := b.newDB(t)
		s, err := quota.NewSQLStore(db)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			if err := s.Migrate(t.Context()); err != nil {
				t.Fatalf("Migrate #%d = %v; want nil", i+1, err)
			}
		}
		checkGolden(t, b, db)
		var versions []int
		rows, err := db.DB.QueryContext(t.Context(), "SELECT version FROM quota_schema_migrations ORDER BY version")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var v int
			rows.Scan(&v)
			versions = append(versions, v)
		}
		rows.Close()
		want := map[string][]int{"sqlite": {1, 2, 3, 4}, "pg": {1, 2, 3, 4, 5, 6, 7}}[b.name]
		if diff := cmp.Diff(want, versions); diff != "" {
			t.Errorf("quota_schema_migrations versions (-want +got):\n%s", diff)
		}

		// A migration edited after it was applied is refused.
		if _, err := db.DB.ExecContext(t.Context(), "UPDATE quota_schema_migrations SET checksum = 'x' WHERE version = 1"); err != nil {
			t.Fatal(err)
		}
		if err := s.Migrate(t.Context()); err == nil || !strings.Contains(err.Error(), "changed since it was applied") {
			t.Errorf("Migrate over an edited migration = %v; want a \"changed since it was applied\" error", err)
		}
	})
}

func TestSQLStoreMigrateConcurrent(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		// Two pools (two "processes") on one empty database, two
		// goroutines each.
		var dbs [2]*bun.DB
		if b.name == "sqlite" {
			path := filepath.Join(t.TempDir(), "quota.db")
			dbs[0], dbs[1] = openSQLite(t, path), openSQLite(t, path)
		} else {
			dsn := newPGSchema(t)
			dbs[0], dbs[1] = openPG(t, dsn, 4), openPG(t, dsn, 4)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for i := range 4 {
			s, err := quota.NewSQLStore(dbs[i%2])
			if err != nil {
				t.Fatal(err)
			}
			wg.Go(func() { errs <- s.Migrate(t.Context()) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("concurrent Migrate = %v; want nil", err)
			}
		}
		checkGolden(t, b, dbs[0])
	})
}

// Differential test: a random sequence of Store calls on a MemoryStore (the
// reference) and an SQLStore must give the same results.

func TestSQLStoreMatchesMemoryStore(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		for seed := range uint64(2) {
			t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
				differential(t, migrated(t, b.newDB(t)), seed, 300)
			})
		}
	})
}

func differential(t *testing.T, sqls quota.Store, seed uint64, steps int) {
	ctx := t.Context()
	mem := quota.NewMemoryStore()
	rng := mrand.New(mrand.NewPCG(seed, 42))
	now := time.Date(2025, time.January, 30, 22, 0, 0, 500, time.UTC).Truncate(time.Microsecond)
	subjects := []string{"s1", "s2"}
	type hold struct {
		id      string
		amount  int64
		expires time.Time
	}
	var holds []hold
	var pruned int64
	crossings := 0
	counterOps := func(subject, action string) []quota.CounterOp {
		if action == "alloc" {
			return []quota.CounterOp{{CounterKey: quota.CounterKey{Subject: subject, Action: action, Period: quota.PeriodNone}, Max: 15, Marks: []int64{12, 0, 15}}}
		}
		day := now.Truncate(24 * time.Hour)
		month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
		dayMax, monthMax := int64(8), int64(20)
		if rng.IntN(5) == 0 {
			dayMax = quota.Unlimited
		}
		if rng.IntN(7) == 0 {
			monthMax = 0
		}
		return []quota.CounterOp{
			{CounterKey: quota.CounterKey{Subject: subject, Action: action, Period: quota.PeriodDay, Start: day}, End: day.Add(24 * time.Hour), Max: dayMax,
				Marks: []int64{int64(rng.IntN(4) + 4), 7, 8}},
			{CounterKey: quota.CounterKey{Subject: subject, Action: action, Period: quota.PeriodMonth, Start: month}, End: month.AddDate(0, 1, 0), Max: monthMax,
				Marks: []int64{16, 18, 20}},
		}
	}
	allKeys := func() []quota.CounterKey {
		var ks []quota.CounterKey
		for _, s := range subjects {
			for _, a := range []string{"use", "alloc"} {
				for _, c := range counterOps(s, a) {
					ks = append(ks, c.CounterKey)
				}
			}
		}
		return ks
	}
	same := func(step int, what string, want, got any, wantErr, gotErr error) {
		t.Helper()
		if (wantErr == nil) != (gotErr == nil) || wantErr != nil && !sameSentinel(wantErr, gotErr) {
			t.Fatalf("step %d %s: error %v; MemoryStore's %v", step, what, gotErr, wantErr)
		}
		if diff := cmp.Diff(want, got, cmpopts.EquateEmpty()); diff != "" {
			t.Fatalf("step %d %s (-MemoryStore +SQLStore):\n%s", step, what, diff)
		}
	}
	for step := range steps {
		now = now.Add(time.Duration(rng.IntN(40*60)) * time.Second)
		subject := subjects[rng.IntN(len(subjects))]
		switch k := rng.IntN(22); {
		case k < 12: // Apply
			action := "use"
			a := int64(rng.IntN(6) + 1)
			if rng.IntN(3) == 0 {
				action = "alloc"
				if rng.IntN(2) == 0 {
					a = -a
				}
			}
			op := &quota.Op{
				Counters: counterOps(subject, action),
				Record:   quota.Record{Subject: subject, Action: action, Amount: a, Time: now},
				Enforce:  rng.IntN(4) != 0,
				Now:      now,
			}
			if rng.IntN(3) == 0 {
				op.Record.Metadata = json.RawMessage(fmt.Sprintf(`{"step": %d}`, step))
			}
			if rng.IntN(4) == 0 {
				op.Record.ResourceID = fmt.Sprint("r", step)
			}
			if rng.IntN(3) == 0 {
				op.Record.Key = fmt.Sprint("k", rng.IntN(6))
				op.Fingerprint = fmt.Sprint("f", rng.IntN(2))
			}
			if a > 0 && rng.IntN(3) == 0 {
				op.Hold = &quota.Hold{ID: fmt.Sprint("h", step), ExpiresAt: now.Add(time.Duration(rng.IntN(90)) * time.Minute)}
			}
			want, werr := mem.Apply(ctx, op)
			got, gerr := sqls.Apply(ctx, op)
			same(step, fmt.Sprintf("Apply(%+v)", *op), want, got, werr, gerr)
			crossings += len(got.Crossed)
			if op.Hold != nil && want.Applied && !want.Replayed {
				holds = append(holds, hold{op.Hold.ID, a, op.Hold.ExpiresAt})
			}
		case k < 15 && len(holds) > 0: // Commit
			h := holds[rng.IntN(len(holds))]
			amount := int64(rng.IntN(int(h.amount)+1) + 1)
			want, werr := mem.Commit(ctx, h.id, amount, now)
			got, gerr := sqls.Commit(ctx, h.id, amount, now)
			if !h.expires.After(now) && (errors.Is(werr, quota.ErrReservationNotFound) || errors.Is(werr, quota.ErrReservationExpired)) &&
				(errors.Is(gerr, quota.ErrReservationNotFound) || errors.Is(gerr, quota.ErrReservationExpired)) {
				// The stores may sweep expired holds at different times.
				continue
			}
			same(step, fmt.Sprintf("Commit(%s, %d)", h.id, amount), want, got, werr, gerr)
		case k < 17 && len(holds) > 0: // Cancel
			h := holds[rng.IntN(len(holds))]
			werr := mem.Cancel(ctx, h.id, now)
			gerr := sqls.Cancel(ctx, h.id, now)
			if !h.expires.After(now) && (werr == nil || errors.Is(werr, quota.ErrReservationNotFound)) &&
				(gerr == nil || errors.Is(gerr, quota.ErrReservationNotFound)) {
				continue
			}
			same(step, "Cancel("+h.id+")", nil, nil, werr, gerr)
		case k < 19: // Counters
			ks := allKeys()
			want, werr := mem.Counters(ctx, ks, now)
			got, gerr := sqls.Counters(ctx, ks, now)
			same(step, "Counters", want, got, werr, gerr)
		case k < 20: // Sums and Top, as Quota.Series and TopSubjects ask
			an, ok := sqls.(interface {
				Sums(context.Context, quota.SumQuery) ([]quota.Sum, error)
				Top(context.Context, quota.TopQuery) ([]quota.SubjectTotal, error)
			})
			if !ok {
				t.Fatalf("%T answers no analytics", sqls)
			}
			sq := quota.SumQuery{ByAction: rng.IntN(2) == 0}
			if rng.IntN(2) == 0 {
				sq.Subject = subject
			}
			if rng.IntN(3) == 0 {
				sq.Action = "use"
			}
			b := now.Add(-time.Duration(rng.IntN(72)) * time.Hour)
			for range rng.IntN(6) + 2 {
				sq.Bounds = append(sq.Bounds, b)
				b = b.Add(time.Duration(rng.IntN(12)+1) * time.Hour)
			}
			want, werr := mem.Sums(ctx, sq)
			got, gerr := an.Sums(ctx, sq)
			same(step, fmt.Sprintf("Sums(%+v)", sq), want, got, werr, gerr)
			tq := quota.TopQuery{Action: "use", From: sq.Bounds[0], To: now.Add(time.Hour), Limit: rng.IntN(3) + 1}
			wantTop, werr := mem.Top(ctx, tq)
			gotTop, gerr := an.Top(ctx, tq)
			same(step, fmt.Sprintf("Top(%+v)", tq), wantTop, gotTop, werr, gerr)
		case k < 21: // Prune
			cutoff, limit := now.Add(-time.Duration(rng.IntN(48))*time.Hour), rng.IntN(5)+1
			want, werr := mem.Prune(ctx, cutoff, limit)
			got, gerr := sqls.(interface {
				Prune(context.Context, time.Time, int) (int64, error)
			}).Prune(ctx, cutoff, limit)
			same(step, fmt.Sprintf("Prune(%v, %d)", cutoff, limit), want, got, werr, gerr)
			pruned += got
		default: // Records
			rq := quota.RecordQuery{AfterID: int64(rng.IntN(5)), Limit: rng.IntN(4), Descending: rng.IntN(2) == 0}
			if rng.IntN(3) == 0 {
				rq.BeforeID = int64(rng.IntN(40) + 1)
			}
			if rng.IntN(2) == 0 {
				rq.Subject = subject
			}
			if rng.IntN(2) == 0 {
				rq.Action = "use"
			}
			if rng.IntN(2) == 0 {
				rq.From = now.Add(-time.Duration(rng.IntN(48)) * time.Hour)
				rq.To = rq.From.Add(24 * time.Hour)
			}
			want, werr := mem.Records(ctx, rq)
			got, gerr := sqls.Records(ctx, rq)
			same(step, fmt.Sprintf("Records(%+v)", rq), want, got, werr, gerr)
		}
	}
	want, werr := mem.Records(ctx, quota.RecordQuery{})
	got, gerr := sqls.Records(ctx, quota.RecordQuery{})
	same(steps, "all Records", want, got, werr, gerr)
	t.Logf("%d records left, %d pruned, %d crossings", len(want), pruned, crossings)
	if int64(len(want))+pruned < int64(steps/10) || pruned == 0 || crossings == 0 {
		t.Errorf("%d records, %d pruned, %d crossings in %d steps: the sequence tests little", len(want), pruned, crossings, steps)
	}
}

func sameSentinel(want, got error) bool {
	for _, e := range []error{quota.ErrOverflow, quota.ErrIdempotencyConflict, quota.ErrReservationNotFound, quota.ErrReservationExpired, quota.ErrInvalidAmount, quota.ErrNoSubscription, quota.ErrClosed} {
		if errors.Is(want, e) {
			return errors.Is(got, e)
		}
	}
	return false
}

// Multi-instance: four pools ("instances") of 16 goroutines on one
// PostgreSQL schema: exactly the limit is granted, and the ledger balances.

var apiPlan = []quota.Plan{{Name: "P", Limits: map[string][]quota.Limit{"api.call": {quota.PerMonth(5000)}}}}

func TestSQLStoreMultiInstance(t *testing.T) {
	dsn := newPGSchema(t)
	const instances, goroutines, attempts, limit = 4, 16, 12800, 5000
	qs := make([]*quota.Quota, instances)
	var stores []*quota.SQLStore
	var dbs []*bun.DB
	for i := range qs {
		db := openPG(t, dsn, goroutines)
		dbs = append(dbs, db)
		st, err := quota.NewSQLStore(db)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Migrate(t.Context()); err != nil {
			t.Fatal(err)
		}
		stores = append(stores, st)
		qs[i] = newQuota(t, st, quota.Config{Plans: apiPlan})
	}
	const subject = "org-1"
	if err := qs[0].Subscribe(t.Context(), quota.Subscription{Subject: subject, Plan: "P", Anchor: sqlT0}); err != nil {
		t.Fatal(err)
	}
	var granted, denied atomic.Int64
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range instances * goroutines {
		q := qs[i%instances]
		wg.Go(func() {
			<-start
			for range attempts / (instances * goroutines) {
				d, err := q.Consume(t.Context(), quota.Use{Subject: subject, Action: "api.call", Amount: 1})
				switch {
				case err != nil:
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				case d.Allowed:
					granted.Add(1)
				default:
					denied.Add(1)
				}
			}
		})
	}
	began := time.Now()
	close(start)
	wg.Wait()
	t.Logf("%d attempts in %v: %d granted, %d denied, %d errors", attempts, time.Since(began), granted.Load(), denied.Load(), len(errs))
	for i, err := range errs {
		if i < 3 {
			t.Errorf("Consume = %v; want no error", err)
		}
	}
	if granted.Load() != limit {
		t.Errorf("granted %d; want exactly %d", granted.Load(), limit)
	}
	if u, err := qs[1].Usage(t.Context(), subject); err != nil || u.Actions[0].Used != limit {
		t.Errorf("Usage = %+v, %v; want %d used", u, err, limit)
	}
	if n := checkBalanced(t, dbs[2]); n != 1 {
		t.Errorf("%d summary rows; want 1", n)
	}
	recs, err := stores[3].Records(t.Context(), quota.RecordQuery{Subject: subject})
	if err != nil || len(recs) != limit {
		t.Errorf("%d records, %v; want %d", len(recs), err, limit)
	}
}

// checkBalanced checks, straight from the tables, that every summary row
// equals the sum of the amounts of its records (the records in its window;
// all of them for period none), and returns how many rows it checked.
func checkBalanced(t testing.TB, db bun.IDB) int {
	t.Helper()
	rows, err := db.QueryContext(context.Background(), `SELECT s.subject, s.action, s.period, s.used,
	CAST(coalesce((SELECT sum(r.amount) FROM quota_records r
	  WHERE r.subject = s.subject AND r.action = s.action
	    AND (s.period = 'none' OR (r.recorded_at >= s.period_start AND r.recorded_at < s.period_end))), 0) AS BIGINT)
FROM quota_summaries s`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var subject, action, period string
		var used, sum int64
		if err := rows.Scan(&subject, &action, &period, &used, &sum); err != nil {
			t.Fatal(err)
		}
		if used != sum {
			t.Errorf("summary %q %q %s: used %d; the sum of its records is %d", subject, action, period, used, sum)
		}
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Errorf("no summary to check")
	}
	return n
}

// SQLite under the same kind of load: several pools on one file, no
// "database is locked".

func TestSQLStoreSQLiteConcurrency(t *testing.T) {
	path := filepath.Join(t.TempDir(), "quota.db")
	const instances, goroutines, attempts, limit = 4, 8, 1600, 700
	plan := []quota.Plan{{Name: "P", Limits: map[string][]quota.Limit{"api.call": {quota.PerMonth(limit)}}}}
	var qs []*quota.Quota
	var last *bun.DB
	for range instances {
		last = openSQLite(t, path)
		qs = append(qs, newQuota(t, migrated(t, last), quota.Config{Plans: plan, DefaultPlan: "P"}))
	}
	var granted atomic.Int64
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for i := range instances * goroutines {
		q := qs[i%instances]
		wg.Go(func() {
			for j := range attempts / (instances * goroutines) {
				// Every other use is keyed and carries metadata, so that
				// the longer transactions run too.
				u := quota.Use{Subject: "org-1", Action: "api.call", Amount: 1}
				if j%2 == 0 {
					u.Key, u.Metadata = fmt.Sprintf("g%d-%d", i, j), map[string]any{"j": j}
				}
				d, err := q.Consume(t.Context(), u)
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				} else if d.Allowed {
					granted.Add(1)
				}
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if i < 3 {
			t.Errorf("Consume = %v; want no error (no \"database is locked\")", err)
		}
	}
	if granted.Load() != limit {
		t.Errorf("granted %d; want exactly %d", granted.Load(), limit)
	}
	checkBalanced(t, last)
}

// The caller's transaction: a use inside it rolls back with it, and
// commits with it.

func TestSQLStoreCallerTx(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		db := b.newDB(t)
		outside := migrated(t, db)
		plan := []quota.Plan{{Name: "P", Limits: map[string][]quota.Limit{"x": {quota.PerDay(2), quota.PerMonth(10)}}}}
		cfg := quota.Config{Plans: plan, DefaultPlan: "P"}
		tables := []string{"quota_records", "quota_summaries", "quota_idempotency_keys", "quota_holds", "quota_hold_counters", "quota_subscriptions", "quota_notices"}
		inTx := func(commit bool, f func(q *quota.Quota)) {
			t.Helper()
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			st, err := quota.NewSQLStore(tx)
			if err != nil {
				t.Fatal(err)
			}
			f(newQuota(t, st, cfg))
			if commit {
				err = tx.Commit()
			} else {
				err = tx.Rollback()
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		use := quota.Use{Subject: "tx-subject", Action: "x", Amount: 1, Key: "k1", Metadata: map[string]any{"a": 1}}

		inTx(false, func(q *quota.Quota) {
			if err := q.Subscribe(ctx, quota.Subscription{Subject: use.Subject, Plan: "P"}); err != nil {
				t.Fatal(err)
			}
			if d, err := q.Consume(ctx, use); err != nil || !d.Allowed {
				t.Fatalf("Consume in tx = %+v, %v", d, err)
			}
			r, err := q.Reserve(ctx, quota.Use{Subject: use.Subject, Action: "x", Amount: 1})
			if err != nil || !r.Decision.Allowed {
				t.Fatalf("Reserve in tx = %+v, %v", r, err)
			}
			// A refused use (the day's limit of 2 is full) undoes its
			// own writes only, and the transaction goes on.
			if d, err := q.Consume(ctx, quota.Use{Subject: use.Subject, Action: "x", Amount: 1}); err != nil || d.Allowed {
				t.Fatalf("Consume past the limit in tx = %+v, %v; want denied", d, err)
			}
			if _, err := r.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		})
		for _, tbl := range tables {
			if n := countRows(t, db, tbl); n != 0 {
				t.Errorf("after rollback: %d rows in %s; want 0", n, tbl)
			}
		}
		q := newQuota(t, outside, cfg)
		// The key is free again: another payload is no conflict.
		other := use
		other.Amount = 2
		if d, err := q.Check(ctx, other); err != nil || d.Used != 0 {
			t.Errorf("Check after rollback = %+v, %v; want nothing used", d, err)
		}

		inTx(true, func(q *quota.Quota) {
			if d, err := q.Consume(ctx, use); err != nil || !d.Allowed {
				t.Fatalf("Consume in tx = %+v, %v", d, err)
			}
			if d, err := q.Consume(ctx, quota.Use{Subject: use.Subject, Action: "x", Amount: 5}); err != nil || d.Allowed {
				t.Fatalf("Consume past the limit in tx = %+v, %v; want denied", d, err)
			}
		})
		recs, err := allRecords(ctx, q, use.Subject, "")
		if err != nil || len(recs) != 1 || recs[0].Key != "k1" || string(recs[0].Metadata) != `{"a":1}` {
			t.Errorf("after commit: records %+v, %v; want the one use", recs, err)
		}
		d, err := q.Consume(ctx, use)
		if err != nil || !d.Replayed {
			t.Errorf("Consume with the committed key = %+v, %v; want replayed", d, err)
		}
		checkBalanced(t, db)
	})
}

// Cancellation at random points of 1000 consumes: only context errors, and
// a balanced ledger.

func TestSQLStoreCancellation(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		db := b.newDB(t)
		st := migrated(t, db)
		plan := []quota.Plan{{Name: "P", Limits: map[string][]quota.Limit{
			"x": {quota.PerDay(300), quota.PerMonth(600)},
			"y": {quota.Total(quota.Unlimited)},
		}}}
		q := newQuota(t, st, quota.Config{Plans: plan, DefaultPlan: "P", ReservationTTL: time.Hour})
		const goroutines, uses = 8, 1000
		var ok, cancelled atomic.Int64
		var mu sync.Mutex
		var bad []error
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Go(func() {
				rng := mrand.New(mrand.NewPCG(uint64(g), 7))
				for i := range uses / goroutines {
					// A quarter of the uses run to the end; the others are
					// cancelled after 0 to 10ms, before, while or after they
					// run (a cancelled PostgreSQL query costs a reconnection).
					ctx, cancel := context.WithCancel(t.Context())
					delay := time.Duration(rng.IntN(10_000)) * time.Microsecond
					if rng.IntN(4) == 0 {
						delay = time.Hour
					}
					timer := time.AfterFunc(delay, cancel)
					u := quota.Use{Subject: fmt.Sprint("c", rng.IntN(4)), Action: "x", Amount: int64(rng.IntN(3) + 1)}
					var err error
					switch i % 4 {
					case 0:
						u.Key, u.Metadata = fmt.Sprintf("k%d-%d", g, i), map[string]any{"i": i}
						_, err = q.Consume(ctx, u)
					case 1:
						u.Action = "y"
						_, err = q.Track(ctx, u)
					case 2:
						var r *quota.Reservation
						if r, err = q.Reserve(ctx, u); err == nil && r.Decision.Allowed {
							_, err = r.Commit(ctx)
						}
					default:
						_, err = q.Consume(ctx, u)
					}
					timer.Stop()
					cancel()
					switch {
					case err == nil:
						ok.Add(1)
					case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
						cancelled.Add(1)
					default:
						mu.Lock()
						bad = append(bad, err)
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
		t.Logf("%d uses: %d completed, %d cancelled", uses, ok.Load(), cancelled.Load())
		if ok.Load() == 0 || cancelled.Load() == 0 {
			t.Errorf("%d completed, %d cancelled; want some of each", ok.Load(), cancelled.Load())
		}
		for i, err := range bad {
			if i < 3 {
				t.Errorf("error %v; want nil, context.Canceled or context.DeadlineExceeded", err)
			}
		}
		checkBalanced(t, db)
		// The pool is still good after the cancellations.
		if d, err := q.Track(t.Context(), quota.Use{Subject: "c0", Action: "y", Amount: 1}); err != nil || !d.Allowed {
			t.Errorf("Track after the cancellations = %+v, %v", d, err)
		}
	})
}

// Hostile values are data: stored and read back byte for byte, and no
// table is dropped.

func TestSQLStoreHostileValues(t *testing.T) {
	hostile := []string{
		`x"; DROP TABLE quota_records; --`,
		`' OR 1=1 --`,
		`back\slash "quoted" {brace,comma} NULL`,
		`日本語 ✓ 'it''s'`,
	}
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		db := b.newDB(t)
		st := migrated(t, db)
		countTables := func() int {
			q := `SELECT count(*) FROM sqlite_schema WHERE type = 'table'`
			if b.name == "pg" {
				q = `SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()`
			}
			var n int
			if err := db.DB.QueryRowContext(ctx, q).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		tables := countTables()
		limits := map[string][]quota.Limit{}
		for _, h := range hostile {
			limits[h] = []quota.Limit{quota.PerDay(100), quota.PerMonth(1000)}
		}
		q := newQuota(t, st, quota.Config{Plans: []quota.Plan{{Name: hostile[1], Limits: limits, Features: hostile}}})
		for i, subject := range hostile {
			action := hostile[(i+1)%len(hostile)]
			other := hostile[(i+2)%len(hostile)]
			sub := quota.Subscription{Subject: subject, Plan: hostile[1], Anchor: sqlT0, Overrides: map[string][]quota.Limit{other: {quota.PerDay(50)}}}
			if err := q.Subscribe(ctx, sub); err != nil {
				t.Fatalf("Subscribe(%q): %v", subject, err)
			}
			got, err := q.Subscription(ctx, subject)
			if err != nil || got.Subject != subject || got.Plan != hostile[1] || len(got.Overrides[other]) != 1 {
				t.Errorf("Subscription(%q) = %+v, %v", subject, got, err)
			}
			use := quota.Use{Subject: subject, Action: action, Amount: 1, ResourceID: other, Key: other,
				Metadata: map[string]any{other: subject, action: []any{other}}}
			if d, err := q.Consume(ctx, use); err != nil || !d.Allowed {
				t.Fatalf("Consume(%+v) = %+v, %v", use, d, err)
			}
			r, err := q.Reserve(ctx, quota.Use{Subject: subject, Action: action, Amount: 2, Key: action, Metadata: use.Metadata, ResourceID: subject})
			if err != nil || !r.Decision.Allowed {
				t.Fatalf("Reserve = %+v, %v", r, err)
			}
			if _, err := r.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if d, err := q.Consume(ctx, use); err != nil || !d.Replayed {
				t.Errorf("Consume again with key %q = %+v, %v; want replayed", use.Key, d, err)
			}
			if d, err := q.Check(ctx, use); err != nil || d.Used != 3 {
				t.Errorf("Check(%q %q) = used %d, %v; want 3", subject, action, d.Used, err)
			}
			if u, err := q.Usage(ctx, subject); err != nil || len(u.Features) != len(hostile) {
				t.Errorf("Usage(%q) = %+v, %v", subject, u, err)
			}
			recs, err := allRecords(ctx, q, subject, action)
			if err != nil || len(recs) != 2 {
				t.Fatalf("Records(%q, %q) = %d records, %v; want 2", subject, action, len(recs), err)
			}
			meta, _ := json.Marshal(use.Metadata)
			for j, r := range recs {
				wantKey, wantRes := other, other
				if j == 1 {
					wantKey, wantRes = action, subject
				}
				if r.Subject != subject || r.Action != action || r.Key != wantKey || r.ResourceID != wantRes || !bytes.Equal(r.Metadata, meta) {
					t.Errorf("record %d = %+v; want subject %q, action %q, key %q, resource %q, metadata %s", j, r, subject, action, wantKey, wantRes, meta)
				}
			}
		}
		if n := countTables(); n != tables {
			t.Errorf("%d tables after the hostile values; want %d", n, tables)
		}
	})
}

// Times: microseconds, UTC, and keys found again at their Start.

func TestSQLStoreTimes(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		st := migrated(t, b.newDB(t))
		paris, err := time.LoadLocation("Europe/Paris")
		if err != nil {
			t.Skip(err)
		}
		now := time.Date(2025, 3, 10, 12, 0, 0, 123456789, paris) // nanoseconds, not UTC
		key := quota.CounterKey{Subject: "s", Action: "a", Period: quota.PeriodDay, Start: now.Add(-time.Hour)}
		op := &quota.Op{
			Counters: []quota.CounterOp{{CounterKey: key, End: now.Add(time.Hour), Max: 10}},
			Record:   quota.Record{Subject: "s", Action: "a", Amount: 2, Time: now},
			Enforce:  true,
			Now:      now,
		}
		if res, err := st.Apply(ctx, op); err != nil || !res.Applied {
			t.Fatalf("Apply = %+v, %v", res, err)
		}
		cs, err := st.Counters(ctx, []quota.CounterKey{key}, now)
		if err != nil || cs[0].Used != 2 || !cs[0].Start.Equal(key.Start) {
			t.Errorf("Counters(the key with nanoseconds) = %+v, %v; want 2 used at the same Start", cs, err)
		}
		if got, want := cs[0].End, now.Add(time.Hour).Truncate(time.Microsecond).UTC(); got != want {
			t.Errorf("Counter.End = %v; want %v (UTC, microseconds)", got, want)
		}
		recs, err := st.Records(ctx, quota.RecordQuery{})
		if err != nil || len(recs) != 1 {
			t.Fatalf("Records = %v, %v", recs, err)
		}
		if got, want := recs[0].Time, now.Truncate(time.Microsecond).UTC(); got != want || got.Location() != time.UTC {
			t.Errorf("Record.Time = %v (%v); want %v in UTC", got, got.Location(), want)
		}

		// Through the engine, with a nanosecond clock in a time zone.
		q := newQuota(t, st, quota.Config{Plans: apiPlan, DefaultPlan: "P", Now: func() time.Time { return now }})
		for range 3 {
			if _, err := q.Consume(ctx, quota.Use{Subject: "s", Action: "api.call", Amount: 1}); err != nil {
				t.Fatal(err)
			}
		}
		if d, err := q.Check(ctx, quota.Use{Subject: "s", Action: "api.call", Amount: 1}); err != nil || d.Used != 3 {
			t.Errorf("Check after 3 uses = used %d, %v; want 3", d.Used, err)
		}
	})
}

// Metadata comes back byte for byte, whitespace, key order and escapes
// included (PostgreSQL's jsonb would rewrite them).

func TestSQLStoreMetadata(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		st := migrated(t, b.newDB(t))
		for i, md := range []string{
			`{"b": 1,  "aa":[1, 2.50, {"z":null}], "a":"\u0000é\"\\"}`,
			`{"zz":1,"a":2}`,
			`{}`,
			"{\n\t\"k\" : \"v\"\n}",
		} {
			op := &quota.Op{
				Counters: []quota.CounterOp{{CounterKey: quota.CounterKey{Subject: "m", Action: "a", Period: quota.PeriodNone}, Max: quota.Unlimited}},
				Record:   quota.Record{Subject: "m", Action: "a", Amount: 1, Metadata: json.RawMessage(md), Time: sqlT0},
				Now:      sqlT0,
			}
			if i%2 == 1 {
				op.Hold = &quota.Hold{ID: fmt.Sprint("h", i), ExpiresAt: sqlT0.Add(time.Hour)}
			}
			res, err := st.Apply(ctx, op)
			if err != nil || !res.Applied {
				t.Fatalf("Apply(metadata %s) = %+v, %v", md, res, err)
			}
			if op.Hold != nil {
				r, err := st.Commit(ctx, op.Hold.ID, 1, sqlT0)
				if err != nil || string(r.Metadata) != md {
					t.Errorf("Commit returned metadata %q, %v; want %q", r.Metadata, err, md)
				}
			}
			recs, err := st.Records(ctx, quota.RecordQuery{AfterID: res.RecordID - 1, Limit: 1})
			if op.Hold == nil && (err != nil || len(recs) != 1 || string(recs[0].Metadata) != md) {
				t.Errorf("Records returned %v, %v; want metadata %q", recs, err, md)
			}
		}
		// Invalid metadata never reaches SQL.
		op := &quota.Op{Record: quota.Record{Subject: "m", Action: "a", Amount: 1, Metadata: json.RawMessage(`{"a":`), Time: sqlT0}, Now: sqlT0}
		if _, err := st.Apply(ctx, op); !errors.Is(err, quota.ErrInvalidMetadata) {
			t.Errorf("Apply(invalid JSON) = %v; want ErrInvalidMetadata", err)
		}
	})
}

// Names are validated before SQL.

func TestSQLStoreValidatesNames(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		st := migrated(t, b.newDB(t))
		for _, bad := range []string{"", "a\x00b", "\xff\xfe", strings.Repeat("x", quota.MaxNameLen+1), "tab\tname"} {
			op := &quota.Op{Record: quota.Record{Subject: bad, Action: "a", Amount: 1, Time: sqlT0}, Now: sqlT0}
			if _, err := st.Apply(ctx, op); !errors.Is(err, quota.ErrInvalidSubject) {
				t.Errorf("Apply(subject %q) = %v; want ErrInvalidSubject", bad, err)
			}
			if bad != "" {
				op = &quota.Op{Record: quota.Record{Subject: "s", Action: "a", Amount: 1, Key: bad, Time: sqlT0}, Fingerprint: "f", Now: sqlT0}
				if _, err := st.Apply(ctx, op); !errors.Is(err, quota.ErrInvalidKey) {
					t.Errorf("Apply(key %q) = %v; want ErrInvalidKey", bad, err)
				}
			}
			if _, err := st.GetSubscription(ctx, bad); !errors.Is(err, quota.ErrInvalidSubject) {
				t.Errorf("GetSubscription(%q) = %v; want ErrInvalidSubject", bad, err)
			}
			if _, err := st.Counters(ctx, []quota.CounterKey{{Subject: bad, Action: "a"}}, sqlT0); !errors.Is(err, quota.ErrInvalidSubject) {
				t.Errorf("Counters(subject %q) = %v; want ErrInvalidSubject", bad, err)
			}
		}
		if recs, err := st.Records(ctx, quota.RecordQuery{}); err != nil || len(recs) != 0 {
			t.Errorf("Records after bad input = %d records, %v; want none", len(recs), err)
		}
	})
}

// Errors: context, Close, sentinels, and never a DSN or a password.

func TestSQLStoreErrors(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		db := b.newDB(t)
		st := migrated(t, db)
		op := func() *quota.Op {
			return &quota.Op{
				Counters: []quota.CounterOp{{CounterKey: quota.CounterKey{Subject: "e", Action: "a", Period: quota.PeriodNone}, Max: 5}},
				Record:   quota.Record{Subject: "e", Action: "a", Amount: 1, Time: sqlT0},
				Enforce:  true,
				Now:      sqlT0,
			}
		}
		cancelled, cancel := context.WithCancel(t.Context())
		cancel()
		if _, err := st.Apply(cancelled, op()); !errors.Is(err, context.Canceled) || !strings.HasPrefix(err.Error(), "quota: sql apply: ") {
			t.Errorf("Apply(cancelled context) = %v; want context.Canceled, prefixed \"quota: sql apply: \"", err)
		}
		if _, err := st.GetSubscription(t.Context(), "nobody"); !errors.Is(err, quota.ErrNoSubscription) {
			t.Errorf("GetSubscription(nobody) = %v; want ErrNoSubscription", err)
		}
		if _, err := st.Commit(t.Context(), "nohold", 1, sqlT0); !errors.Is(err, quota.ErrReservationNotFound) {
			t.Errorf("Commit(unknown) = %v; want ErrReservationNotFound", err)
		}
		h := op()
		h.Hold = &quota.Hold{ID: "h1", ExpiresAt: sqlT0.Add(time.Minute)}
		if _, err := st.Apply(t.Context(), h); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Commit(t.Context(), "h1", 2, sqlT0); !errors.Is(err, quota.ErrInvalidAmount) {
			t.Errorf("Commit(2 of a hold of 1) = %v; want ErrInvalidAmount", err)
		}
		if _, err := st.Commit(t.Context(), "h1", 1, sqlT0.Add(time.Minute)); !errors.Is(err, quota.ErrReservationExpired) {
			t.Errorf("Commit(at the expiry) = %v; want ErrReservationExpired", err)
		}

		// Close: idempotent, ErrClosed after, the database left open.
		for range 2 {
			if err := st.Close(); err != nil {
				t.Errorf("Close = %v; want nil", err)
			}
		}
		if _, err := st.Apply(t.Context(), op()); !errors.Is(err, quota.ErrClosed) {
			t.Errorf("Apply after Close = %v; want ErrClosed", err)
		}
		if err := st.Migrate(t.Context()); !errors.Is(err, quota.ErrClosed) {
			t.Errorf("Migrate after Close = %v; want ErrClosed", err)
		}
		if err := db.PingContext(t.Context()); err != nil {
			t.Errorf("the caller's database after Close: Ping = %v; want nil", err)
		}

		// A failing database: the error names the operation, matches
		// nothing it should not, and shows no DSN or password.
		var dsn string
		var bad *bun.DB
		if b.name == "pg" {
			pgBaseDSN(t)
			dsn = "postgres://quota:s3cr3t-pw@127.0.0.1:1/nowhere?sslmode=disable&connect_timeout=2"
			sqldb, _ := sql.Open("pgx", dsn)
			bad = bun.NewDB(sqldb, pgdialect.New())
		} else {
			dsn = sqliteDSN(filepath.Join(t.TempDir(), "no", "such", "dir", "s3cr3t-pw.db"))
			sqldb, _ := sql.Open("sqlite", dsn)
			bad = bun.NewDB(sqldb, sqlitedialect.New())
		}
		defer bad.Close()
		bs, err := quota.NewSQLStore(bad)
		if err != nil {
			t.Fatal(err)
		}
		_, err = bs.Apply(t.Context(), op())
		if err == nil || !strings.HasPrefix(err.Error(), "quota: sql apply: ") || strings.Contains(err.Error(), "s3cr3t") || strings.Contains(err.Error(), dsn) {
			t.Errorf("Apply on a failing database = %v; want an error prefixed \"quota: sql apply: \" without the DSN or password", err)
		}
		if errors.Is(err, context.Canceled) || errors.Is(err, quota.ErrOverflow) {
			t.Errorf("Apply on a failing database = %v; matches a sentinel it should not", err)
		}
		if err := bs.Migrate(t.Context()); err == nil || strings.Contains(err.Error(), "s3cr3t") {
			t.Errorf("Migrate on a failing database = %v; want an error without the password", err)
		}
	})
}

// Round trips on PostgreSQL: Apply, Commit and Cancel are one statement
// each, with no BEGIN or COMMIT; so is a batch of them. A Consume, Track
// or Reserve of a subject whose subscription the Quota has cached is one
// (Apply, which checks the cached version); the first use of a subject
// reads its subscription first; Check reads it always.

func TestSQLStoreRoundTrips(t *testing.T) {
	dsn := newPGSchema(t)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	var counter statementCounter
	cfg.Tracer = &counter
	sqldb := stdlib.OpenDB(*cfg)
	sqldb.SetMaxOpenConns(4)
	sqldb.SetMaxIdleConns(4)
	db := bun.NewDB(sqldb, pgdialect.New())
	defer db.Close()
	st := migrated(t, db)
	var batches atomic.Int64
	quota.SetBatchHook(st, func([]context.Context) { batches.Add(1) })
	plans := []quota.Plan{{Name: "P", Limits: map[string][]quota.Limit{"x": {quota.PerDay(10), quota.PerMonth(100)}}},
		{Name: "BIG", Limits: map[string][]quota.Limit{"x": {quota.PerMonth(quota.Unlimited)}}}}
	q := newQuota(t, st, quota.Config{Plans: plans, DefaultPlan: "P"})
	ctx := t.Context()
	statements := func(what string, want int64, f func()) {
		t.Helper()
		before := counter.n.Load()
		f()
		if got := counter.n.Load() - before; got != want {
			t.Errorf("%s took %d statements; want %d", what, got, want)
		}
	}
	statements("first Consume of a subject", 2, func() { q.Consume(ctx, quota.Use{Subject: "warm", Action: "x", Amount: 1}) })
	statements("Consume", 1, func() {
		q.Consume(ctx, quota.Use{Subject: "warm", Action: "x", Amount: 1, Key: "k", Metadata: map[string]any{"a": 1}})
	})
	statements("Consume refused", 1, func() { q.Consume(ctx, quota.Use{Subject: "warm", Action: "x", Amount: 50}) })
	statements("Track", 1, func() { q.Track(ctx, quota.Use{Subject: "warm", Action: "x", Amount: 1}) })
	statements("Check", 2, func() { q.Check(ctx, quota.Use{Subject: "warm", Action: "x", Amount: 1}) })
	var r *quota.Reservation
	statements("Reserve", 1, func() { r, _ = q.Reserve(ctx, quota.Use{Subject: "warm", Action: "x", Amount: 1}) })
	statements("Commit", 1, func() { r.Commit(ctx) })
	statements("Reserve", 1, func() { r, _ = q.Reserve(ctx, quota.Use{Subject: "warm", Action: "x", Amount: 1}) })
	statements("Cancel", 1, func() { r.Cancel(ctx) })

	// A subscription written by this instance, then by another: the
	// first use after each reads it again.
	// Subscribe reads the subscription for its anchor, then writes it.
	statements("Subscribe", 2, func() { q.Subscribe(ctx, quota.Subscription{Subject: "org", Plan: "P"}) })
	statements("first Consume after Subscribe", 2, func() { q.Consume(ctx, quota.Use{Subject: "org", Action: "x", Amount: 1}) })
	statements("Consume", 1, func() { q.Consume(ctx, quota.Use{Subject: "org", Action: "x", Amount: 1}) })
	other := newQuota(t, migrated(t, openPG(t, dsn, 1)), quota.Config{Plans: plans, DefaultPlan: "P"})
	if err := other.Subscribe(ctx, quota.Subscription{Subject: "org", Plan: "BIG"}); err != nil {
		t.Fatal(err)
	}
	statements("Consume after another instance's Subscribe (refused stale, read, applied)", 3, func() {
		if d, err := q.Consume(ctx, quota.Use{Subject: "org", Action: "x", Amount: 1}); err != nil || d.Plan != "BIG" {
			t.Errorf("Consume after another instance's Subscribe = plan %q, %v; want BIG", d.Plan, err)
		}
	})

	// Concurrent uses of subjects the Quota has cached: one statement
	// per batch.
	for i := range 8 {
		q.Consume(ctx, quota.Use{Subject: fmt.Sprintf("org-%d", i), Action: "x", Amount: 1})
	}
	before, b0 := counter.n.Load(), batches.Load()
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := range 20 {
				if _, err := q.Consume(ctx, quota.Use{Subject: fmt.Sprintf("org-%d", (g+i)%8), Action: "x", Amount: 1}); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	got, nb := counter.n.Load()-before, batches.Load()-b0
	if got != nb {
		t.Errorf("640 concurrent Consumes took %d statements in %d batches; want one per batch", got, nb)
	}
	if nb >= 640 {
		t.Errorf("640 concurrent Consumes in %d batches; want fewer", nb)
	}
	t.Logf("640 concurrent Consumes: %d statements, %d batches", got, nb)
}

// statementCounter counts the statements pgx sends, BEGIN and COMMIT
// included.
type statementCounter struct{ n atomic.Int64 }

func (c *statementCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.n.Add(1)
	return ctx
}

func (c *statementCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// Notifications across instances: 4 separately opened pools, each with a
// Quota of its own and its own hook, 64 goroutines pushing one subject
// from 0 to 120 % of a limit, a quarter of them with Reserve and Commit
// (a reservation notifies when committed): each level is notified exactly
// once in all, at the use that reached it, each notice delivered once with
// its own ID, and the outbox is empty after.
func TestSQLStoreNotificationsAcrossInstances(t *testing.T) {
	dsn := newPGSchema(t)
	const instances, goroutines, limit, uses = 4, 64, 1000, 1200
	var mu sync.Mutex
	var notes []quota.Notification
	qs := make([]*quota.Quota, instances)
	var db *bun.DB
	for i := range qs {
		db = openPG(t, dsn, goroutines/instances)
		st, err := quota.NewSQLStore(db)
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Migrate(t.Context()); err != nil {
			t.Fatal(err)
		}
		qs[i] = newQuota(t, st, quota.Config{
			Plans: []quota.Plan{{Name: "P", Limits: map[string][]quota.Limit{"api.call": {quota.PerMonth(limit)}}}},
			Notify: func(_ context.Context, n quota.Notification) error {
				mu.Lock()
				defer mu.Unlock()
				notes = append(notes, n)
				return nil
			},
		})
	}
	const subject = "org-notify"
	if err := qs[0].Subscribe(t.Context(), quota.Subscription{Subject: subject, Plan: "P", Anchor: sqlT0}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var failed atomic.Int64
	start := make(chan struct{})
	for g := range goroutines {
		q := qs[g%instances]
		wg.Go(func() {
			<-start
			for range uses / goroutines {
				u := quota.Use{Subject: subject, Action: "api.call", Amount: 1}
				var err error
				if (g/instances)%4 == 1 { // on every instance
					var r *quota.Reservation
					if r, err = q.Reserve(t.Context(), u); err == nil && r.Decision.Allowed {
						_, err = r.Commit(t.Context())
					}
				} else {
					_, err = q.Track(t.Context(), u)
				}
				if err != nil {
					failed.Add(1)
					t.Errorf("Track or Reserve and Commit = %v", err)
					return
				}
			}
		})
	}
	close(start)
	wg.Wait()
	for _, q := range qs {
		q.Close() // delivers what is queued
	}
	if failed.Load() != 0 {
		t.FailNow()
	}
	mu.Lock()
	defer mu.Unlock()
	got := map[quota.Level][]int64{}
	ids := map[string]int{}
	for _, n := range notes {
		got[n.Level] = append(got[n.Level], n.Used)
		ids[n.ID]++
		if n.Attempt != 0 || n.Subject != subject || n.Limit != limit {
			t.Errorf("notification %+v; want attempt 0, subject %q, limit %d", n, subject, limit)
		}
	}
	want := map[quota.Level][]int64{quota.LevelWarning: {800}, quota.LevelCritical: {900}, quota.LevelExceeded: {1000}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("notifications from %d instances (-want +got):\n%s", instances, diff)
	}
	for id, n := range ids {
		if id == "" || n != 1 {
			t.Errorf("notification ID %q delivered %d times; want a non-empty ID, once", id, n)
		}
	}
	if n := countRows(t, db, "quota_notices"); n != 0 {
		t.Errorf("%d notices left in the outbox; want 0", n)
	}
}
