// Command saas is a small JSON API for a diagram SaaS whose plans are
// enforced by quota: upload diagrams (monthly uploads, storage bytes and a
// file-size cap per plan), ask the AI teammate, read procedures, export
// PDF and DXF, call the API, and read your usage, as JSON or on a
// dashboard page (/dashboard). See README.md.
//
// It runs on an SQLite file (a new temporary one unless -db names one)
// or, with -postgres or QUOTA_POSTGRES_DSN, on PostgreSQL.
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
	plansFile := fs.String("plans", "", "plan catalog, .yaml or .json (default: the embedded copy of testdata/plans.yaml)")
	users := fs.String("users", "alice=FREE,bob=PROFESSIONAL,carol=ENTERPRISE", "demo users and the plan each starts on")
	admin := fs.String("admin-token", "admin", "bearer token of the admin routes (demo only)")
	if err := fs.Parse(args); err != nil {
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
	db, where, cleanup, err := openDB(*dbPath, *pgDSN)
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

// openDB opens PostgreSQL if dsn is set, else the SQLite file path (a new
// temporary file if path is empty). It returns where the data lives, for
// the log, and a function that closes the database (and removes the
// temporary file).
func openDB(path, dsn string) (*bun.DB, string, func(), error) {
	if dsn != "" {
		sqldb, err := sql.Open("pgx", dsn)
		if err != nil {
			return nil, "", nil, err
		}
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
