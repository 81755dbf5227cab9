// Command saas is a small JSON API for a diagram SaaS whose plans are
// enforced by quota: upload diagrams (monthly uploads, storage bytes and a
// file-size cap per plan), ask the AI teammate, read procedures, export
// PDF and DXF, call the API, and read your usage, as JSON or on a
// dashboard page (/dashboard). See README.md.
//
// It runs on an SQLite file (a new temporary one unless -db names one)
// or, with -postgres or QUOTA_POSTGRES_DSN, on PostgreSQL, through a pool
// of at most -pg-max-conns (QUOTA_POSTGRES_MAX_CONNS, default 10)
// connections.
package main

import (
	"context"
	"database/sql"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/dialect/sqlitedialect"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/quotakit/quota"
)

// plansYAML is a copy of the repository's testdata/plans.yaml (a test
// keeps them equal), so the example runs from anywhere.
//
//go:embed plans.yaml
var plansYAML []byte

func main() {
	if err := run(context.Background(), os.Args[1:], nil); err != nil {
		fmt.Fprintln(os.Stderr, "saas:", err)
		os.Exit(1)
	}
}

// run runs the app until ctx is done or a signal stops it. ready, if not
// nil, is called with the listening address once the app serves.
func run(ctx context.Context, args []string, ready func(net.Addr)) error {
	fs := flag.NewFlagSet("saas", flag.ContinueOnError)
	addr := fs.String("addr", "localhost:8080", "listen address")
	dbPath := fs.String("db", "", "SQLite file to keep the data in (default: a new temporary file, removed on exit)")
	pgDSN := fs.String("postgres", os.Getenv("QUOTA_POSTGRES_DSN"), "PostgreSQL DSN, instead of SQLite (default $QUOTA_POSTGRES_DSN)")
	pgConns := fs.Int("pg-max-conns", defaultPGMaxConns, "most connections open to PostgreSQL, idle ones included; $QUOTA_POSTGRES_MAX_CONNS when the flag is not set")
	plansFile := fs.String("plans", "", "plan catalog, .yaml or .json (default: the embedded copy of testdata/plans.yaml)")
	users := fs.String("users", "alice=FREE,bob=PROFESSIONAL,carol=ENTERPRISE", "demo users and the plan each starts on")
	admin := fs.String("admin-token", "admin", "bearer token of the admin routes (demo only)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	maxConns, err := poolSize(fs, *pgConns, os.Getenv("QUOTA_POSTGRES_MAX_CONNS"))
	if err != nil {
		return err
	}

	plans, err := loadPlans(*plansFile)
	if err != nil {
		return err
	}
	userPlans, err := parseUsers(*users)
	if err != nil {
		return err
	}
	db, where, cleanup, err := openDB(*dbPath, *pgDSN, maxConns)
	if err != nil {
		return err
	}
	defer cleanup()

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	store, err := quota.NewSQLStore(db)
	if err != nil {
		return err
	}
	defer store.Close()
	if err := store.Migrate(ctx); err != nil {
		return err
	}
	app, err := NewApp(ctx, db, store, plans, Config{Users: userPlans, AdminToken: *admin})
	if err != nil {
		return err
	}
	defer app.Close()

	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: app.Handler(), ReadHeaderTimeout: 10 * time.Second}
	slog.Info("saas demo listening", "addr", "http://"+ln.Addr().String(), "db", where, "users", *users)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	if ready != nil {
		ready(ln.Addr())
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func loadPlans(file string) ([]quota.Plan, error) {
	if file != "" {
		return quota.LoadPlans(file)
	}
	return quota.ParsePlansYAML(plansYAML)
}

// parseUsers parses "alice=FREE,bob=PROFESSIONAL".
func parseUsers(s string) (map[string]string, error) {
	users := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		user, plan, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || user == "" || plan == "" {
			return nil, fmt.Errorf("-users: %q is not user=PLAN", kv)
		}
		users[user] = plan
	}
	return users, nil
}

// defaultPGMaxConns is the size of the PostgreSQL pool unless
// -pg-max-conns or QUOTA_POSTGRES_MAX_CONNS sets it: enough for
// thousands of metered requests a second (a store call holds a
// connection for one round trip), and room for ten instances under
// PostgreSQL's default max_connections of 100. See the root README's
// Stores section.
const defaultPGMaxConns = 10

// poolSize returns the size of the PostgreSQL pool: the -pg-max-conns
// flag when it was set, else env ($QUOTA_POSTGRES_MAX_CONNS) when it is
// not empty, else flagValue, the flag's default.
func poolSize(fs *flag.FlagSet, flagValue int, env string) (int, error) {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == "pg-max-conns" })
	n := flagValue
	if !set && env != "" {
		v, err := strconv.Atoi(env)
		if err != nil {
			return 0, fmt.Errorf("QUOTA_POSTGRES_MAX_CONNS=%q: not a number", env)
		}
		n = v
	}
	if n < 1 {
		return 0, fmt.Errorf("-pg-max-conns %d: want at least 1", n)
	}
	return n, nil
}

// openDB opens PostgreSQL if dsn is set, with a pool of at most maxConns
// connections, else the SQLite file path (a new temporary file if path is
// empty). It returns where the data lives, for the log, and a function
// that closes the database (and removes the temporary file).
func openDB(path, dsn string, maxConns int) (*bun.DB, string, func(), error) {
	if dsn != "" {
		sqldb, err := sql.Open("pgx", dsn)
		if err != nil {
			return nil, "", nil, err
		}
		boundPool(sqldb, maxConns)
		db := bun.NewDB(sqldb, pgdialect.New())
		return db, "postgres", func() { db.Close() }, nil
	}
	remove := func() {}
	if path == "" {
		dir, err := os.MkdirTemp("", "quota-saas-")
		if err != nil {
			return nil, "", nil, err
		}
		path = filepath.Join(dir, "saas.db")
		remove = func() { os.RemoveAll(dir) }
	}
	db, err := openSQLite(path)
	if err != nil {
		remove()
		return nil, "", nil, err
	}
	return db, path, func() { db.Close(); remove() }, nil
}

// openSQLite opens the SQLite file path as SQLStore advises (WAL, a busy
// timeout, immediate transactions, foreign keys), so that concurrent
// requests wait for each other instead of failing.
func openSQLite(path string) (*bun.DB, error) {
	dsn := "file:" + filepath.ToSlash(path) + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_txlock=immediate"
	sqldb, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, err
	}
	return bun.NewDB(sqldb, sqlitedialect.New()), nil
}

// boundPool bounds db's pool to n connections, idle ones included, so
// that a burst of requests waits for a connection (within the Quota's
// StoreTimeout) instead of opening one per request: database/sql's
// default is no bound, and 200 requests in flight then meet PostgreSQL's
// max_connections ("too many clients") and answer 503. Idle connections
// are kept up to the same bound, so that a burst reuses them, and closed
// after 5 idle minutes.
func boundPool(db *sql.DB, n int) {
	db.SetMaxOpenConns(n)
	db.SetMaxIdleConns(n)
	db.SetConnMaxIdleTime(5 * time.Minute)
}
