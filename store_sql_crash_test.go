package quota_test

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"github.com/quotakit/quota"
)

// Notifications survive a kill -9: four processes (this test binary run
// again as TestSQLStoreNotificationsKillChild) share one PostgreSQL
// schema, each with a Quota that delivers notifications. One of them
// claims notices and hangs in its Notify hook; it is killed with SIGKILL
// while the others go on. Every crossing written to the outbox must then
// be delivered at least once, by the survivors, with the ID it was
// written with, and the outbox must end empty.

// The child's environment: its role ("hang" or "deliver") marks it as a
// child, and the DSN of the shared schema.
const (
	killChildRole = "QUOTA_TEST_KILL_CHILD_ROLE"
	killChildDSN  = "QUOTA_TEST_KILL_CHILD_DSN"
)

// The child's plan: 20 a month, so marks at 16, 18 and 20.
const killLimit = 20

var killSubjects = []string{"kill-s0", "kill-s1", "kill-s2", "kill-s3"}

// killTables are the test's own tables in the shared schema: what the
// outbox received (filled by a trigger on quota_notices), what the hooks
// delivered, and the notices the hanging child was delivering when it
// hung.
const killTables = `
CREATE TABLE kill_outbox_log (id bigint PRIMARY KEY, subject text NOT NULL, mark integer NOT NULL, used bigint NOT NULL);
CREATE FUNCTION kill_log_notice() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO kill_outbox_log (id, subject, mark, used) VALUES (NEW.id, NEW.subject, NEW.mark, NEW.used);
    RETURN NEW;
END $$;
CREATE TRIGGER kill_log_notice AFTER INSERT ON quota_notices FOR EACH ROW EXECUTE FUNCTION kill_log_notice();
CREATE TABLE kill_deliveries (id text NOT NULL, subject text NOT NULL, level text NOT NULL, used bigint NOT NULL, child text NOT NULL, attempt integer NOT NULL);
CREATE TABLE kill_hung (id text NOT NULL);
`

func TestSQLStoreNotificationsKill(t *testing.T) {
	if os.Getenv(killChildRole) != "" {
		t.Skip("in a child process")
	}
	dsn := newPGSchema(t)
	db := openPG(t, dsn, 2)
	migrated(t, db)
	if _, err := db.ExecContext(t.Context(), killTables); err != nil {
		t.Fatalf("creating the test's tables: %v", err)
	}

	// The hanging child first, alone, so that it claims the notices of
	// its own uses: it hangs delivering the first.
	hang := startKillChild(t, "hang", dsn)
	hang.expect(t, "ready", 30*time.Second)
	hang.send(t, "use kill-h")
	hang.expect(t, "used", 30*time.Second)
	hung := hang.expect(t, "hung", 30*time.Second)
	t.Logf("the hanging child hangs delivering notice %s", hung)

	// Three survivors join; all four make uses of the same subjects.
	var survivors []*killChild
	for i := range 3 {
		c := startKillChild(t, fmt.Sprint("deliver-", i), dsn)
		c.expect(t, "ready", 30*time.Second)
		survivors = append(survivors, c)
	}
	all := append([]*killChild{hang}, survivors...)
	for _, c := range all {
		c.send(t, "use "+strings.Join(killSubjects, " "))
	}
	for _, c := range all {
		c.expect(t, "used", 60*time.Second)
	}

	// kill -9, between the uses and the delivery of their notices.
	if err := hang.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill the hanging child: %v", err)
	}
	killed := time.Now()
	if err := hang.wait(10 * time.Second); err == nil {
		t.Errorf("the hanging child exited cleanly; want killed")
	}

	// The survivors deliver everything, the notices leased to the dead
	// one too once their lease (NotifyTimeout + 5 s) ends.
	var missing []int64
	for deadline := time.Now().Add(60 * time.Second); ; {
		missing = undelivered(t, db)
		if len(missing) == 0 && countRows(t, db, "quota_notices") == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("60 s after the kill: notices %v not delivered, %d left in the outbox", missing, countRows(t, db, "quota_notices"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("everything delivered %v after the kill", time.Since(killed).Round(time.Millisecond))
	for _, c := range survivors {
		c.closeInput(t)
	}
	for _, c := range survivors {
		if err := c.wait(30 * time.Second); err != nil {
			t.Errorf("survivor %s: %v\n%s", c.role, err, c.stderr.String())
		}
	}
	checkKillDeliveries(t, db, hung)
}

// undelivered returns the IDs of the notices written to the outbox that
// no survivor delivered.
func undelivered(t *testing.T, db *bun.DB) []int64 {
	t.Helper()
	rows, err := db.QueryContext(t.Context(), `SELECT l.id FROM kill_outbox_log l
WHERE NOT EXISTS (SELECT 1 FROM kill_deliveries d WHERE d.id = l.id::text) ORDER BY l.id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

// checkKillDeliveries checks the outbox log and the deliveries: three
// crossings per subject, at 16, 18 and 20; each delivered, by survivors
// only, with its ID, subject, level and used; nothing delivered that the
// outbox did not hold; the hung notice among them.
func checkKillDeliveries(t *testing.T, db *bun.DB, hung string) {
	t.Helper()
	type notice struct {
		subject, level string
		used           int64
	}
	written := map[string]notice{}
	perSubject := map[string][]int64{}
	rows, err := db.QueryContext(t.Context(), `SELECT id, subject, mark, used FROM kill_outbox_log ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		var n notice
		var mark int
		if err := rows.Scan(&id, &n.subject, &mark, &n.used); err != nil {
			t.Fatal(err)
		}
		n.level = quota.Level(min(mark, 2) + 1).String()
		written[strconv.FormatInt(id, 10)] = n
		perSubject[n.subject] = append(perSubject[n.subject], n.used)
	}
	rows.Close()
	for _, s := range append([]string{"kill-h"}, killSubjects...) {
		if got := perSubject[s]; len(got) != 3 || got[0] != 16 || got[1] != 18 || got[2] != 20 {
			t.Errorf("crossings of %s written to the outbox, used = %v; want [16 18 20]", s, got)
		}
	}
	if _, ok := written[hung]; !ok {
		t.Errorf("the hung notice %s is not in the outbox log", hung)
	}

	delivered := map[string]int{}
	rows, err = db.QueryContext(t.Context(), `SELECT id, subject, level, used, child FROM kill_deliveries`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var id, child string
		var n notice
		if err := rows.Scan(&id, &n.subject, &n.level, &n.used, &child); err != nil {
			t.Fatal(err)
		}
		delivered[id]++
		if w, ok := written[id]; !ok || w != n {
			t.Errorf("delivered %s %+v by %s; the outbox had %+v (%v)", id, n, child, w, ok)
		}
		if child == "hang" {
			t.Errorf("notice %s delivered by the hanging child", id)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	repeats := 0
	for id := range written {
		if delivered[id] == 0 {
			t.Errorf("notice %s %+v never delivered", id, written[id])
		}
		repeats += max(delivered[id]-1, 0)
	}
	if delivered[hung] == 0 {
		t.Errorf("the hung notice %s was not delivered by a survivor", hung)
	}
	t.Logf("%d notices written, delivered with %d repeats", len(written), repeats)
}

// killChild is a child process and its pipes.
type killChild struct {
	role   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // the protocol lines of its stdout, "child: " cut
	early  []string    // lines read before their expect
	stderr *syncBuffer
	done   chan error // the result of Wait, once
}

// startKillChild runs this test binary again as a child of role, on the
// schema of dsn. The child is killed when t ends, if it still runs.
func startKillChild(t *testing.T, role, dsn string) *killChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSQLStoreNotificationsKillChild$", "-test.count=1", "-test.timeout=3m")
	cmd.Env = append(os.Environ(), killChildRole+"="+role, killChildDSN+"="+dsn)
	c := &killChild{role: role, cmd: cmd, lines: make(chan string, 64), stderr: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = c.stderr
	var err error
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start child %s: %v", role, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), "child: "); ok {
				c.lines <- line
			} else {
				c.stderr.WriteString(sc.Text() + "\n")
			}
		}
		close(c.lines)
		c.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Kill() // an error: it exited already
		c.wait(10 * time.Second)
	})
	return c
}

// expect waits up to d for a protocol line of the child that starts with
// word, and returns the rest of it. Lines that come first wait for their
// own expect.
func (c *killChild) expect(t *testing.T, word string, d time.Duration) string {
	t.Helper()
	timeout := time.After(d)
	for {
		for i, line := range c.early {
			if rest, ok := strings.CutPrefix(line, word); ok {
				c.early = append(c.early[:i], c.early[i+1:]...)
				return strings.TrimSpace(rest)
			}
		}
		select {
		case line, ok := <-c.lines:
			if !ok {
				t.Fatalf("child %s exited, waiting for %q:\n%s", c.role, word, c.stderr.String())
			}
			if strings.HasPrefix(line, "error") || strings.HasPrefix(line, "watchdog") {
				t.Fatalf("child %s: %s", c.role, line)
			}
			c.early = append(c.early, line)
		case <-timeout:
			t.Fatalf("child %s: no %q within %v:\n%s", c.role, word, d, c.stderr.String())
		}
	}
}

func (c *killChild) send(t *testing.T, cmd string) {
	t.Helper()
	if _, err := io.WriteString(c.stdin, cmd+"\n"); err != nil {
		t.Fatalf("child %s: %v", c.role, err)
	}
}

// closeInput tells the child to close its Quota and exit.
func (c *killChild) closeInput(t *testing.T) {
	t.Helper()
	if err := c.stdin.Close(); err != nil {
		t.Errorf("child %s: close stdin: %v", c.role, err)
	}
}

// wait waits up to d for the child to exit, and returns its Wait error;
// past d, it kills the child.
func (c *killChild) wait(d time.Duration) error {
	select {
	case err := <-c.done:
		c.done <- err // for a later wait
		return err
	case <-time.After(d):
		c.cmd.Process.Kill()
		return fmt.Errorf("still running after %v: killed", d)
	}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) WriteString(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.b.WriteString(s)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestSQLStoreNotificationsKillChild is the child process of
// TestSQLStoreNotificationsKill; without its environment it skips. It
// runs a Quota with Notify, on the real clock, over the parent's schema,
// and answers the parent's commands on stdin, line by line:
//
//	use S...  tracks 8 uses of 1 of each subject S, at once (20 of the
//	          first, one at a time, for the hanging child): "used"
//	(EOF)     closes the Quota, which delivers what is due, and exits
//
// It says "ready" once its Quota runs. Its hook records each delivery in
// kill_deliveries; the hanging child's hook records the notice in
// kill_hung, says "hung <ID>", and sleeps until the child is killed.
func TestSQLStoreNotificationsKillChild(t *testing.T) {
	role := os.Getenv(killChildRole)
	if role == "" {
		return // run only as a child process of TestSQLStoreNotificationsKill
	}
	// Whatever happens, a child does not outlive its parent's patience.
	watchdog := time.AfterFunc(2*time.Minute, func() {
		fmt.Println("child: watchdog")
		os.Exit(3)
	})
	defer watchdog.Stop()
	sqldb, err := sql.Open("pgx", os.Getenv(killChildDSN))
	if err != nil {
		t.Fatal(err)
	}
	sqldb.SetMaxOpenConns(8)
	db := bun.NewDB(sqldb, pgdialect.New())
	defer db.Close()
	st, err := quota.NewSQLStore(db)
	if err != nil {
		t.Fatal(err)
	}
	var hangOnce sync.Once
	hook := func(ctx context.Context, n quota.Notification) error {
		if role == "hang" {
			hangOnce.Do(func() {
				if _, err := sqldb.ExecContext(ctx, `INSERT INTO kill_hung (id) VALUES ($1)`, n.ID); err != nil {
					fmt.Println("child: error", err)
				}
				fmt.Println("child: hung", n.ID)
			})
			time.Sleep(time.Hour) // until kill -9
			return errors.New("woke up")
		}
		_, err := sqldb.ExecContext(ctx, `INSERT INTO kill_deliveries (id, subject, level, used, child, attempt) VALUES ($1, $2, $3, $4, $5, $6)`,
			n.ID, n.Subject, n.Level.String(), n.Used, role, n.Attempt)
		return err
	}
	q, err := quota.New(st, quota.Config{
		Plans:         []quota.Plan{{Name: "P", Limits: map[string][]quota.Limit{"job": {quota.PerMonth(killLimit)}}}},
		DefaultPlan:   "P",
		Notify:        hook,
		NotifyPoll:    50 * time.Millisecond,
		NotifyTimeout: time.Second,
		OnError:       func(err error) { fmt.Fprintln(os.Stderr, "notify:", err) },
	})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("child: ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		subjects, ok := strings.CutPrefix(in.Text(), "use ")
		if !ok {
			t.Fatalf("unknown command %q", in.Text())
		}
		if err := killUses(t.Context(), q, role, strings.Fields(subjects)); err != nil {
			t.Fatal(err)
		}
		fmt.Println("child: used")
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
}

// killUses tracks uses of 1 of the subjects: 20 of the first, one at a
// time, for "use kill-h" of the hanging child; else 8 of each, at once.
func killUses(ctx context.Context, q *quota.Quota, role string, subjects []string) error {
	if len(subjects) == 1 && subjects[0] == "kill-h" {
		for range killLimit {
			if _, err := q.Track(ctx, quota.Use{Subject: "kill-h", Action: "job", Amount: 1}); err != nil {
				return err
			}
		}
		return nil
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(subjects)*8)
	for _, s := range subjects {
		for range 8 {
			wg.Go(func() {
				if _, err := q.Track(ctx, quota.Use{Subject: s, Action: "job", Amount: 1}); err != nil {
					errs <- fmt.Errorf("%s: track %s: %w", role, s, err)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	return <-errs
}
