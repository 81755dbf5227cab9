package quota_test

import (
	"bytes"
	"io/fs"
	"os"
	"path"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/uptrace/bun/dialect"

	"github.com/quotakit/quota"
)

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
