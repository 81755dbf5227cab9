// The schema migrations of SQLStore as files that other migration tools
// run: goose, and atlas, which reads goose's format.

package quota

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/uptrace/bun/dialect"
)

// SQLMigrations returns the schema migrations of SQLStore for the dialect
// d, dialect.PG or dialect.SQLite (db.Dialect().Name()), as a directory
// of SQL files in goose's format, for teams that apply DDL with a
// migration tool rather than with Migrate. Any other dialect is an error.
// The files are made, at each call, from the migrations that Migrate
// applies: the same SQL, in the same order, to the same schema.
//
// The directory is flat: one file per migration, NNNNN_name.sql
// (00001_init.sql, ...), whose number is its version in Migrate. Its Up
// section holds the migration as one statement (StatementBegin ...
// StatementEnd, since the PL/pgSQL functions hold semicolons), which
// goose runs in a transaction, so that a migration applies whole or not
// at all. Its Down section fails on purpose: there is no down migration,
// so goose down leaves the schema, and goose's version, as they are.
//
// With goose's library, in a version table of quota's own (goose keeps
// one sequence of versions per table, and the app's own migrations have
// theirs), and a session lock so that instances starting together take
// turns:
//
//	fsys, err := quota.SQLMigrations(dialect.PG)
//	if err != nil {
//		return err
//	}
//	locker, err := lock.NewPostgresSessionLocker()
//	if err != nil {
//		return err
//	}
//	p, err := goose.NewProvider(goose.DialectPostgres, sqldb, fsys,
//		goose.WithTableName("quota_goose_db_version"), goose.WithSessionLocker(locker))
//	if err != nil {
//		return err
//	}
//	_, err = p.Up(ctx)
//
// On SQLite: dialect.SQLite, goose.DialectSQLite3, no locker. For goose's
// command line, or atlas (which reads goose's format, checks the
// directory against the atlas.sum that migrate hash writes, and ignores
// the Down sections), write the files to a directory with os.CopyFS:
//
//	goose -dir DIR -table quota_goose_db_version postgres "$DSN" up
//	atlas migrate hash --dir "file://DIR?format=goose"
//	atlas migrate apply --dir "file://DIR?format=goose" --url "$URL"
//
// A schema is managed by Migrate or by a tool, not both. Migrate keeps
// its own bookkeeping (quota_schema_migrations): on a schema a tool
// migrated it finds nothing applied, fails on the existing tables and
// changes nothing (one transaction); without DDL rights it fails at once.
// goose on a schema that Migrate created fails on 00001 the same way,
// leaving only its version table. An app whose migrations a tool applies
// does not call Migrate: NewSQLStore does no I/O, and a store needs only
// the tables and, on PostgreSQL, the functions.
//
// Its database account then needs no DDL right. On PostgreSQL, with the
// tables in the schema quota and the app's role app, the role that
// applied the migrations grants exactly this:
//
//	GRANT USAGE ON SCHEMA quota TO app;
//	GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE
//	    quota.quota_records, quota.quota_summaries, quota.quota_rollups,
//	    quota.quota_holds, quota.quota_hold_counters,
//	    quota.quota_idempotency_keys, quota.quota_subscriptions,
//	    quota.quota_notices
//	    TO app;
//	GRANT EXECUTE ON FUNCTION
//	    quota.quota_use, quota.quota_apply, quota.quota_commit,
//	    quota.quota_batch, quota.quota_replay, quota.quota_decide,
//	    quota.quota_create_counters, quota.quota_period_rank,
//	    quota.quota_release_key
//	    TO app;
//
// The app's connections find the tables through their search_path (with
// pgx, search_path=quota in the DSN). The functions run with their
// caller's privileges (they are not SECURITY DEFINER), hence the grants
// on the tables. PostgreSQL grants EXECUTE on new functions to PUBLIC unless
// that default was revoked; the grant above does not rely on it. The
// sequences of the identity columns (quota_records.id, quota_notices.id)
// need no grant, nor does the tool's version table or
// quota_schema_migrations. The list holds the objects of this release's
// migrations: check it again after an upgrade whose migrations add a
// table or a function (or, in a schema of quota's own, let ALTER DEFAULT
// PRIVILEGES grant the same on what the migrating role creates). On
// SQLite, the app's rights are those on the database file.
//
// SQLMigrations is safe for concurrent use; each call returns a new,
// read-only fs.FS, whose directory is ".".
func SQLMigrations(d dialect.Name) (fs.FS, error) {
	var dir string
	switch d {
	case dialect.PG:
		dir = pgText.migrations
	case dialect.SQLite:
		dir = sqliteText.migrations
	default:
		return nil, fmt.Errorf("quota: sql migrations: unsupported dialect %s (want sqlite or pg)", d)
	}
	ms, err := loadMigrations(dir)
	if err != nil {
		return nil, fmt.Errorf("quota: sql migrations: %w", err)
	}
	files := make(memFS, len(ms))
	for _, m := range ms {
		_, name, _ := strings.Cut(m.name, "_")
		files[fmt.Sprintf("%05d_%s.sql", m.version, name)] = gooseFile(dir, m)
	}
	return files, nil
}

// gooseFile returns m, of the directory dir, as a goose SQL migration.
func gooseFile(dir string, m sqlMigration) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "-- %s/%s.sql of github.com/quotakit/quota, as quota.SQLMigrations gives it.\n\n", dir, m.name)
	b.WriteString("-- +goose Up\n-- +goose StatementBegin\n")
	b.WriteString(m.sql)
	if !strings.HasSuffix(m.sql, "\n") {
		b.WriteByte('\n')
	}
	b.WriteString("-- +goose StatementEnd\n\n-- +goose Down\n")
	b.WriteString("-- There is no down migration: this statement fails, and goose leaves the\n")
	b.WriteString("-- schema and its version table as they are.\n")
	b.WriteString("SELECT 1 FROM quota_has_no_down_migrations;\n")
	return b.Bytes()
}

// memFS is a flat, read-only directory of files held in memory: file name
// to content.
type memFS map[string][]byte

func (m memFS) Open(name string) (fs.File, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrInvalid}
	}
	if name == "." {
		names := slices.Sorted(maps.Keys(m))
		d := &memDir{entries: make([]fs.DirEntry, len(names))}
		for i, n := range names {
			d.entries[i] = fs.FileInfoToDirEntry(memInfo{name: n, size: int64(len(m[n]))})
		}
		return d, nil
	}
	b, ok := m[name]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return &memFile{info: memInfo{name: name, size: int64(len(b))}, r: bytes.NewReader(b)}, nil
}

// memInfo describes a file of a memFS, or its directory (name ".").
type memInfo struct {
	name string
	size int64
}

func (i memInfo) Name() string       { return i.name }
func (i memInfo) Size() int64        { return i.size }
func (i memInfo) ModTime() time.Time { return time.Time{} }
func (i memInfo) IsDir() bool        { return i.name == "." }
func (i memInfo) Sys() any           { return nil }

func (i memInfo) Mode() fs.FileMode {
	if i.IsDir() {
		return fs.ModeDir | 0o555
	}
	return 0o444
}

type memFile struct {
	info memInfo
	r    *bytes.Reader
}

func (f *memFile) Stat() (fs.FileInfo, error) { return f.info, nil }
func (f *memFile) Read(p []byte) (int, error) { return f.r.Read(p) }
func (f *memFile) Close() error               { return nil }

type memDir struct {
	entries []fs.DirEntry
	off     int
}

func (d *memDir) Stat() (fs.FileInfo, error) { return memInfo{name: "."}, nil }
func (d *memDir) Close() error               { return nil }

func (d *memDir) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: ".", Err: errors.New("is a directory")}
}

func (d *memDir) ReadDir(n int) ([]fs.DirEntry, error) {
	rest := d.entries[d.off:]
	if n <= 0 {
		d.off = len(d.entries)
		return rest, nil
	}
	if len(rest) == 0 {
		return nil, io.EOF
	}
	n = min(n, len(rest))
	d.off += n
	return rest[:n], nil
}
