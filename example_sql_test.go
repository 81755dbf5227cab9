package quota_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
	"github.com/uptrace/bun/dialect/sqlitedialect"
	_ "modernc.org/sqlite" // the driver "sqlite"

	"github.com/quotakit/quota"
)

// SQLite is the embedded default, for an app that runs as one instance
// (or several processes on one machine): a file, opened with
// modernc.org/sqlite (pure Go, driver "sqlite") and the DSN the package
// recommends.
func ExampleNewSQLStore_sqlite() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "quota-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// WAL: readers never wait for the writer. busy_timeout: a writer of
	// another process waits for the lock instead of failing with
	// "database is locked". _txlock=immediate: transactions take the
	// write lock when they begin. foreign_keys: enforce the schema's
	// references.
	dsn := "file:" + filepath.Join(dir, "quota.db") +
		"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=foreign_keys(1)&_txlock=immediate"
	sqldb, err := sql.Open("sqlite", dsn)
	if err != nil {
		log.Fatal(err)
	}
	db := bun.NewDB(sqldb, sqlitedialect.New())
	defer db.Close() // the store never closes the database

	store, err := quota.NewSQLStore(db)
	if err != nil {
		log.Fatal(err)
	}
	if err := store.Migrate(ctx); err != nil { // creates or upgrades the quota_* tables
		log.Fatal(err)
	}
	q, err := quota.New(store, quota.Config{
		Plans:       []quota.Plan{{Name: "FREE", Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(5)}}}},
		DefaultPlan: "FREE",
	})
	if err != nil {
		log.Fatal(err)
	}
	d, err := q.Consume(ctx, quota.Use{Subject: "user-1", Action: "diagram.upload", Amount: 1})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(d.Allowed, d.Used, d.Remaining)
	// Output: true 1 4
}

// PostgreSQL is for many app instances sharing one quota. Open it with
// pgx's database/sql driver, registered as "pgx" by
//
//	import _ "github.com/jackc/pgx/v5/stdlib"
//
// A use can also go inside the app's own transaction, over a store built
// on the bun.Tx: it then commits or rolls back with the app's writes.
func ExampleNewSQLStore_postgres() {
	ctx := context.Background()
	sqldb, err := sql.Open("pgx", os.Getenv("DATABASE_URL")) // postgres://user:password@host:5432/db
	if err != nil {
		log.Fatal(err)
	}
	db := bun.NewDB(sqldb, pgdialect.New())
	defer db.Close()

	store, err := quota.NewSQLStore(db)
	if err != nil {
		log.Fatal(err)
	}
	if err := store.Migrate(ctx); err != nil { // safe from every instance at once
		log.Fatal(err)
	}
	cfg := quota.Config{
		Plans:       []quota.Plan{{Name: "FREE", Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(5)}}}},
		DefaultPlan: "FREE",
	}
	q, err := quota.New(store, cfg)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := q.Consume(ctx, quota.Use{Subject: "user-1", Action: "diagram.upload", Amount: 1}); err != nil {
		log.Fatal(err)
	}

	// In the app's transaction.
	err = db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		txStore, err := quota.NewSQLStore(tx)
		if err != nil {
			return err
		}
		tq, err := quota.New(txStore, cfg)
		if err != nil {
			return err
		}
		d, err := tq.Consume(ctx, quota.Use{Subject: "user-1", Action: "diagram.upload", Amount: 1})
		if err != nil {
			return err
		}
		if !d.Allowed {
			return d.Err() // rolls back; errors.Is(err, quota.ErrExceeded)
		}
		// ... the app's own writes, in tx ...
		return nil
	})
	if err != nil {
		log.Print(err)
	}
}
