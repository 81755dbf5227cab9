package quota_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect"

	"github.com/quotakit/quota"
)

// gooseTable is the version table that SQLMigrations's documentation
// recommends.
const gooseTable = "quota_goose_db_version"

// TestSQLMigrationsFiles checks the files of SQLMigrations against the
// embedded migrations: one per migration, named for goose, holding the
// migration byte for byte as one statement.
func TestSQLMigrationsFiles(t *testing.T) {
	for _, d := range []dialect.Name{dialect.SQLite, dialect.PG} {
		t.Run(d.String(), func(t *testing.T) {
			fsys, err := quota.SQLMigrations(d)
			if err != nil {
				t.Fatal(err)
			}
			dir := path.Join("migrations", d.String())
			src, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, e := range src {
				num, rest, _ := strings.Cut(e.Name(), "_")
				name := "0" + num + "_" + rest // NNNN_x.sql -> 0NNNN_x.sql
				names = append(names, name)
				sql, err := os.ReadFile(path.Join(dir, e.Name()))
				if err != nil {
					t.Fatal(err)
				}
				got, err := fs.ReadFile(fsys, name)
				if err != nil {
					t.Fatal(err)
				}
				up := "\n-- +goose Up\n-- +goose StatementBegin\n" + string(sql) + "-- +goose StatementEnd\n\n-- +goose Down\n"
				if !bytes.Contains(got, []byte(up)) {
					t.Errorf("%s does not hold %s as goose's Up statement:\n%s", name, e.Name(), got)
				}
				if bytes.Contains(sql, []byte("+goose")) {
					t.Errorf("%s mentions +goose, which goose would read as an annotation", e.Name())
				}
			}
			if len(names) == 0 {
				t.Fatalf("no migrations in %s", dir)
			}
			if err := fstest.TestFS(fsys, names...); err != nil {
				t.Error(err)
			}
			entries, err := fs.ReadDir(fsys, ".")
			if err != nil || len(entries) != len(names) {
				t.Errorf("ReadDir(.) = %d entries, %v; want %d", len(entries), err, len(names))
			}
		})
	}
	if _, err := quota.SQLMigrations(dialect.MySQL); err == nil || !strings.Contains(err.Error(), "unsupported dialect mysql") {
		t.Errorf("SQLMigrations(mysql) = %v; want an unsupported dialect error", err)
	}
}

// gooseProvider returns goose's provider of the migrations of
// SQLMigrations over db, as SQLMigrations's documentation makes it, and
// their number.
func gooseProvider(t *testing.T, db *bun.DB) (*goose.Provider, int) {
	t.Helper()
	fsys, err := quota.SQLMigrations(db.Dialect().Name())
	if err != nil {
		t.Fatal(err)
	}
	files, err := fs.ReadDir(fsys, ".")
	if err != nil {
		t.Fatal(err)
	}
	opts := []goose.ProviderOption{goose.WithTableName(gooseTable)}
	gd := goose.DialectSQLite3
	if db.Dialect().Name() == dialect.PG {
		gd = goose.DialectPostgres
		locker, err := lock.NewPostgresSessionLocker()
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, goose.WithSessionLocker(locker))
	}
	p, err := goose.NewProvider(gd, db.DB, fsys, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return p, len(files)
}

// gooseUp applies the migrations of SQLMigrations to db with goose, and
// returns goose's provider and their number.
func gooseUp(t *testing.T, db *bun.DB) (*goose.Provider, int) {
	t.Helper()
	p, n := gooseProvider(t, db)
	res, err := p.Up(t.Context())
	if err != nil {
		t.Fatalf("goose up: %v", err)
	}
	if len(res) != n {
		t.Fatalf("goose up applied %d migrations; want %d", len(res), n)
	}
	for _, r := range res {
		if r.Empty {
			t.Errorf("goose up: %s is empty", r.Source.Path)
		}
	}
	return p, n
}

// TestSQLMigrationsGoose applies SQLMigrations with goose: goose runs
// every file, again finds nothing to do, and refuses to go down; Migrate
// refuses the schema, changing nothing, as goose refuses Migrate's; a
// store works on it without Migrate; and the schema is the one Migrate
// makes (the golden files'), but for the bookkeeping table of each.
func TestSQLMigrationsGoose(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		db := b.newDB(t)
		p, n := gooseUp(t, db)
		if res, err := p.Up(ctx); err != nil || len(res) != 0 {
			t.Errorf("goose up again = %d migrations, %v; want none", len(res), err)
		}
		if _, err := p.Down(ctx); err == nil || !strings.Contains(err.Error(), "quota_has_no_down_migrations") {
			t.Errorf("goose down = %v; want the error of quota_has_no_down_migrations", err)
		}
		if v, err := p.GetDBVersion(ctx); err != nil || v != int64(n) {
			t.Errorf("goose version after down = %d, %v; want %d", v, err, n)
		}

		st, err := quota.NewSQLStore(db)
		if err != nil {
			t.Fatal(err)
		}
		before := dumpSchema(t, db)
		if err := st.Migrate(ctx); err == nil {
			t.Error("Migrate over goose's schema = nil; want an error")
		}
		if after := dumpSchema(t, db); after != before {
			t.Errorf("Migrate over goose's schema changed it:\n%s", after)
		}
		exerciseStore(t, st)

		// goose over the schema of Migrate fails, and changes nothing
		// but its own version table.
		ref := b.newDB(t)
		migrated(t, ref)
		before = dumpSchema(t, ref)
		refp, _ := gooseProvider(t, ref)
		if _, err := refp.Up(ctx); err == nil {
			t.Error("goose up over Migrate's schema = nil; want an error")
		}
		dropTable(t, ref, gooseTable)
		if after := dumpSchema(t, ref); after != before {
			t.Errorf("goose up over Migrate's schema changed it:\n%s", after)
		}

		dropTable(t, ref, "quota_schema_migrations")
		dropTable(t, db, gooseTable)
		if diff := cmp.Diff(dumpSchema(t, ref), dumpSchema(t, db)); diff != "" {
			t.Errorf("schema, Migrate (-) and goose (+), bookkeeping aside:\n%s", diff)
		}
	})
}

func dropTable(t *testing.T, db *bun.DB, table string) {
	t.Helper()
	if _, err := db.DB.ExecContext(t.Context(), "DROP TABLE "+table); err != nil {
		t.Fatal(err)
	}
}

// exerciseStore calls every method of st but Migrate, each of which must
// succeed, on subjects of its own, and closes st.
func exerciseStore(t *testing.T, st *quota.SQLStore) {
	t.Helper()
	ctx := t.Context()
	t0 := sqlT0
	month := time.Date(t0.Year(), t0.Month(), 1, 0, 0, 0, 0, time.UTC)
	key := quota.CounterKey{Subject: "ex", Action: "api", Period: quota.PeriodMonth, Start: month}
	op := func(amount int64, hold *quota.Hold, idem string) *quota.Op {
		o := &quota.Op{
			Counters: []quota.CounterOp{{CounterKey: key, End: month.AddDate(0, 1, 0), Max: 10, Marks: []int64{8, 9, 10}}},
			Record:   quota.Record{Subject: "ex", Action: "api", Amount: amount, Key: idem, Time: t0},
			Enforce:  true,
			Hold:     hold,
			Now:      t0,
		}
		if idem != "" {
			o.Fingerprint = fmt.Sprint(amount)
		}
		return o
	}
	apply := func(o *quota.Op, applied, replayed bool) {
		t.Helper()
		res, err := st.Apply(ctx, o)
		if err != nil || res.Applied != applied || res.Replayed != replayed {
			t.Fatalf("Apply(%d, hold %v, key %q) = %+v, %v; want applied %t, replayed %t",
				o.Record.Amount, o.Hold != nil, o.Record.Key, res, err, applied, replayed)
		}
	}
	hold := func(id string, d time.Duration) *quota.Hold { return &quota.Hold{ID: id, ExpiresAt: t0.Add(d)} }

	apply(op(8, nil, "k1"), true, false) // crosses the warning: a notice
	apply(op(8, nil, "k1"), true, true)  // replayed
	apply(op(3, nil, ""), false, false)  // refused: 11 > 10
	apply(op(1, hold("ex-commit", time.Hour), ""), true, false)
	if r, err := st.Commit(ctx, "ex-commit", 1, t0); err != nil || r.Amount != 1 {
		t.Fatalf("Commit = %+v, %v", r, err) // crosses the critical level: a notice
	}
	apply(op(1, hold("ex-cancel", time.Hour), ""), true, false)
	if err := st.Cancel(ctx, "ex-cancel", t0); err != nil {
		t.Fatalf("Cancel = %v", err)
	}
	apply(op(1, hold("ex-expire", time.Minute), ""), true, false)
	if n, err := st.Sweep(ctx, t0.Add(time.Hour), 10); err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v; want 1", n, err)
	}
	if cs, err := st.Counters(ctx, []quota.CounterKey{key}, t0); err != nil || len(cs) != 1 || cs[0].Used != 9 || cs[0].Held != 0 {
		t.Fatalf("Counters = %+v, %v; want used 9, held 0", cs, err)
	}

	sub := quota.Subscription{Subject: "ex", Plan: "pro", Anchor: month, TimeZone: "UTC"}
	if err := st.PutSubscription(ctx, sub); err != nil {
		t.Fatalf("PutSubscription = %v", err)
	}
	if got, err := st.GetSubscription(ctx, "ex"); err != nil || got.Plan != "pro" {
		t.Fatalf("GetSubscription = %+v, %v; want plan pro", got, err)
	}

	if rs, err := st.Records(ctx, quota.RecordQuery{Subject: "ex"}); err != nil || len(rs) != 2 {
		t.Fatalf("Records = %+v, %v; want 2 records", rs, err)
	}
	sums := func() {
		t.Helper()
		got, err := st.Sums(ctx, quota.SumQuery{Subject: "ex", Bounds: []time.Time{month, month.AddDate(0, 1, 0)}})
		if err != nil || len(got) != 1 || got[0].Amount != 9 || got[0].Count != 2 {
			t.Fatalf("Sums = %+v, %v; want 9 in 2 uses", got, err)
		}
		top, err := st.Top(ctx, quota.TopQuery{Action: "api", From: month, To: month.AddDate(0, 1, 0), Limit: 10})
		if err != nil || len(top) != 1 || top[0] != (quota.SubjectTotal{Subject: "ex", Amount: 9, Count: 2}) {
			t.Fatalf("Top = %+v, %v; want ex: 9 in 2 uses", top, err)
		}
	}
	sums()

	ns, err := st.Claim(ctx, t0, time.Minute, 10)
	if err != nil || len(ns) != 2 {
		t.Fatalf("Claim = %+v, %v; want 2 notices", ns, err)
	}
	if err := st.Retry(ctx, ns[0].ID, t0.Add(time.Hour)); err != nil {
		t.Fatalf("Retry = %v", err)
	}
	if err := st.Ack(ctx, ns[1].ID); err != nil {
		t.Fatalf("Ack = %v", err)
	}

	if n, err := st.Prune(ctx, t0.Add(time.Hour), 100); err != nil || n != 2 {
		t.Fatalf("Prune = %d, %v; want 2", n, err)
	}
	sums() // from the rollups now
	if err := st.Close(); err != nil {
		t.Fatalf("Close = %v", err)
	}
}

// TestSQLMigrationsLeastPrivilege applies SQLMigrations with goose as the
// owner of a schema, and grants a new role exactly what the README says
// (the same statements as SQLMigrations's documentation), in a database
// that no longer grants EXECUTE on the schema's functions to PUBLIC.
// Connected as that role, a store works: every method, and a batch of
// concurrent calls (quota_batch); DDL and Migrate fail.
func TestSQLMigrationsLeastPrivilege(t *testing.T) {
	ctx := t.Context()
	dsn := newPGSchema(t)
	u, err := url.Parse(dsn)
	if err != nil || u.User == nil {
		t.Skipf("QUOTA_TEST_POSTGRES_DSN is not a URL with a user: %v", err)
	}
	schema := u.Query().Get("search_path")
	owner := openPG(t, dsn, 4)
	gooseUp(t, owner)

	var rb [6]byte
	rand.Read(rb[:])
	role := "quota_t_app_" + hex.EncodeToString(rb[:])
	admin := openPG(t, pgBaseDSN(t), 1)
	if _, err := admin.DB.ExecContext(ctx, "CREATE ROLE "+role+" LOGIN"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Before the schema goes: what was granted to the role, then
		// the role (roles are the cluster's).
		if _, err := admin.DB.ExecContext(context.Background(), "DROP OWNED BY "+role); err != nil {
			t.Errorf("DROP OWNED BY %s: %v", role, err)
		}
		if _, err := admin.DB.ExecContext(context.Background(), "DROP ROLE "+role); err != nil {
			t.Errorf("DROP ROLE %s: %v", role, err)
		}
	})
	if _, err := owner.DB.ExecContext(ctx, "REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA "+schema+" FROM PUBLIC"); err != nil {
		t.Fatal(err)
	}
	grants := readmeGrants(t)
	grants = strings.ReplaceAll(grants, "SCHEMA quota ", "SCHEMA "+schema+" ")
	grants = strings.ReplaceAll(grants, "quota.quota_", schema+".quota_")
	grants = strings.ReplaceAll(grants, " TO app;", " TO "+role+";")
	if strings.Contains(grants, "quota.") || strings.Contains(grants, " app;") {
		t.Fatalf("the README's grants name other objects than the schema quota and the role app:\n%s", grants)
	}
	if _, err := owner.DB.ExecContext(ctx, grants); err != nil {
		t.Fatalf("the README's grants: %v\n%s", err, grants)
	}

	u.User = url.User(role)
	app := openPG(t, u.String(), 8)
	var who string
	if err := app.DB.QueryRowContext(ctx, "SELECT current_user").Scan(&who); err != nil || who != role {
		t.Fatalf("connected as %q, %v; want %s", who, err, role)
	}
	st, err := quota.NewSQLStore(app)
	if err != nil {
		t.Fatal(err)
	}
	exerciseStore(t, st)
	leastPrivilegeBatch(t, admin, owner, app, role)

	for _, ddl := range []string{
		"CREATE TABLE quota_extra (id bigint)",
		"CREATE TABLE public.quota_extra (id bigint)",
		"ALTER TABLE quota_records ADD COLUMN extra bigint",
		"CREATE INDEX quota_records_extra ON quota_records (amount)",
		"DROP TABLE quota_notices",
		"TRUNCATE quota_records",
		"CREATE OR REPLACE FUNCTION quota_period_rank(p text) RETURNS integer LANGUAGE sql AS 'SELECT 0'",
	} {
		_, err := app.DB.ExecContext(ctx, ddl)
		if pe := (*pgconn.PgError)(nil); !errors.As(err, &pe) || pe.Code != "42501" {
			t.Errorf("as the app's role, %s = %v; want insufficient_privilege (42501)", ddl, err)
		}
	}
	st, err = quota.NewSQLStore(app)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Migrate(ctx); err == nil {
		t.Error("Migrate as the app's role = nil; want an error: it has no DDL rights")
	}
}

// leastPrivilegeBatch writes a batch of Applies, a Commit and a Cancel
// through app, in one call of quota_batch: a first call waits for a
// counter that owner locks, and the others queue behind it; admin sees
// the first one, of role, wait.
func leastPrivilegeBatch(t *testing.T, admin, owner, app *bun.DB, role string) {
	t.Helper()
	ctx := t.Context()
	st, err := quota.NewSQLStore(app, quota.WithWriters(1))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var mu sync.Mutex
	var sizes []int
	quota.SetBatchHook(st, func(calls []context.Context) {
		mu.Lock()
		sizes = append(sizes, len(calls))
		mu.Unlock()
	})
	op := func(subject string, hold string) *quota.Op {
		o := batchOp(subject)
		if hold != "" {
			o.Hold = &quota.Hold{ID: hold, ExpiresAt: sqlT0.Add(time.Hour)}
		}
		return o
	}
	for _, o := range []*quota.Op{op("org-a", ""), op("org-b", "b-commit"), op("org-b", "b-cancel")} {
		if res, err := st.Apply(ctx, o); err != nil || !res.Applied {
			t.Fatalf("Apply = %+v, %v", res, err)
		}
	}

	conn, err := owner.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN; SELECT 1 FROM quota_summaries WHERE subject = 'org-a' FOR UPDATE"); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 5)
	var wg sync.WaitGroup
	applyErr := func(o *quota.Op) error {
		res, err := st.Apply(ctx, o)
		if err == nil && !res.Applied {
			err = fmt.Errorf("apply for %s refused", o.Record.Subject)
		}
		return err
	}
	wg.Go(func() { errs <- applyErr(op("org-a", "")) })
	waitFor(t, "the first call to wait for the lock", func() bool {
		var n int
		err := admin.DB.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE usename = $1 AND wait_event_type = 'Lock'`, role).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n > 0
	})
	wg.Go(func() { errs <- applyErr(op("org-a", "")) })
	wg.Go(func() { errs <- applyErr(op("org-c", "")) })
	wg.Go(func() {
		_, err := st.Commit(ctx, "b-commit", 1, sqlT0)
		errs <- err
	})
	wg.Go(func() { errs <- st.Cancel(ctx, "b-cancel", sqlT0) })
	waitFor(t, "four calls to queue", func() bool { return quota.Queued(st) == 4 })
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("a call of the batch: %v", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []int{1, 1, 1, 1, 4}; fmt.Sprint(sizes) != fmt.Sprint(want) {
		t.Errorf("batch sizes %v; want %v (the last one by quota_batch)", sizes, want)
	}
}

// readmeGrants returns the GRANT statements of the README, and checks that
// SQLMigrations's documentation has the same.
func readmeGrants(t *testing.T) string {
	t.Helper()
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	const first = "GRANT USAGE ON SCHEMA quota TO app;\n"
	_, block, ok := strings.Cut(string(readme), "```sql\n"+first)
	if !ok {
		t.Fatal("README.md has no sql block that begins with " + first)
	}
	block, _, _ = strings.Cut(block, "```")
	block = first + block

	src, err := os.ReadFile("store_sql_migrations.go")
	if err != nil {
		t.Fatal(err)
	}
	_, doc, ok := strings.Cut(string(src), "//\t"+first)
	if !ok {
		t.Fatal("SQLMigrations's documentation has no grants that begin with " + first)
	}
	doc, _, _ = strings.Cut(doc, "//\n")
	doc = first + strings.ReplaceAll(doc, "//\t", "")
	if doc != block {
		t.Errorf("the grants of README.md and of SQLMigrations's documentation differ.\nREADME:\n%s\ndoc:\n%s", block, doc)
	}
	return block
}
