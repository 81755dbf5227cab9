package quota_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/uptrace/bun"

	"github.com/quotakit/quota"
)

// The tests of group commit: SQLStore writes the Apply, Commit and Cancel
// calls that arrive while it is writing in batches.

// batchCallID is the context key of a call's index in TestSQLStoreBatchDifferential.
type batchCallID struct{}

// batchCall is one call of the differential test and its outcome.
type batchCall struct {
	kind   string // apply, commit, cancel
	op     *quota.Op
	id     string
	amount int64

	res quota.ApplyResult
	rec quota.Record
	err error
}

// batchWorld is the fixed state the differential test draws its calls
// from: subjects, a two-limit action and an allocation, keys and holds.
type batchWorld struct {
	now      time.Time
	subjects []string
	mu       sync.Mutex
	holds    []string
	nextHold int
}

func (w *batchWorld) counters(subject, action string) []quota.CounterOp {
	day := time.Date(w.now.Year(), w.now.Month(), w.now.Day(), 0, 0, 0, 0, time.UTC)
	month := time.Date(w.now.Year(), w.now.Month(), 1, 0, 0, 0, 0, time.UTC)
	if action == "seats" {
		return []quota.CounterOp{{CounterKey: quota.CounterKey{Subject: subject, Action: action, Period: quota.PeriodNone}, Max: 12, Marks: []int64{10, 12}}}
	}
	return []quota.CounterOp{
		{CounterKey: quota.CounterKey{Subject: subject, Action: action, Period: quota.PeriodDay, Start: day}, End: day.AddDate(0, 0, 1), Max: 1200, Marks: []int64{960, 1080, 1200}},
		{CounterKey: quota.CounterKey{Subject: subject, Action: action, Period: quota.PeriodMonth, Start: month}, End: month.AddDate(0, 1, 0), Max: 1500, Marks: []int64{1200, 1350, 1500}},
	}
}

// call draws a random call.
func (w *batchWorld) call(r *mrand.Rand) *batchCall {
	subject := w.subjects[r.IntN(len(w.subjects))]
	switch n := r.IntN(100); {
	case n < 10: // commit a hold, whole or in part, maybe one already gone
		if id, ok := w.hold(r); ok {
			return &batchCall{kind: "commit", id: id, amount: int64(1 + r.IntN(4))}
		}
	case n < 16:
		if id, ok := w.hold(r); ok {
			return &batchCall{kind: "cancel", id: id}
		}
	}
	action := "api"
	if r.IntN(4) == 0 {
		action = "seats"
	}
	op := &quota.Op{
		Counters: w.counters(subject, action),
		Record:   quota.Record{Subject: subject, Action: action, Amount: int64(1 + r.IntN(4)), Time: w.now},
		Enforce:  true,
		Now:      w.now,
	}
	switch n := r.IntN(100); {
	case action == "seats" && n < 45:
		op.Record.Amount = -int64(1 + r.IntN(3)) // a release, refused below zero
	case action == "seats":
	case n < 5:
		op.Enforce = false // Track
	case n < 20:
		w.mu.Lock()
		w.nextHold++
		op.Hold = &quota.Hold{ID: fmt.Sprintf("hold-%05d", w.nextHold), ExpiresAt: w.now.Add(time.Hour)}
		w.mu.Unlock()
	}
	if r.IntN(4) == 0 {
		// A few keys per subject: replays, and conflicts when the
		// payload differs.
		op.Record.Key = fmt.Sprintf("key-%d", r.IntN(60))
		op.Fingerprint = fmt.Sprintf("%s/%d/%t/%t", action, op.Record.Amount, op.Enforce, op.Hold != nil)
	}
	return &batchCall{kind: "apply", op: op}
}

// hold returns a hold id drawn from those created so far.
func (w *batchWorld) hold(r *mrand.Rand) (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.holds) == 0 {
		return "", false
	}
	// Mostly recent ones, which may still be held.
	return w.holds[max(0, len(w.holds)-1-r.IntN(8))], true
}

func (w *batchWorld) addHold(id string) {
	w.mu.Lock()
	w.holds = append(w.holds, id)
	w.mu.Unlock()
}

// do performs c on st.
func (c *batchCall) do(ctx context.Context, st quota.Store, now time.Time) {
	switch c.kind {
	case "apply":
		c.res, c.err = st.Apply(ctx, c.op)
	case "commit":
		c.rec, c.err = st.Commit(ctx, c.id, c.amount, now)
	case "cancel":
		c.err = st.Cancel(ctx, c.id, now)
	}
}

// TestSQLStoreBatchDifferential issues 10,000 random calls from 64
// goroutines to a batching SQLStore, records the order in which its
// batches applied them, applies them one by one in that order to a
// MemoryStore, and checks that every outcome, counter and record is the
// same.
func TestSQLStoreBatchDifferential(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		var observed, observedBatches atomic.Int64
		st, err := quota.NewSQLStore(b.newDB(t), quota.WithWriters(1), quota.WithBatchObserver(func(e quota.BatchEvent) {
			if e.Err != nil || e.Calls < 1 || e.Duration < 0 || e.Start.IsZero() {
				t.Errorf("batch observed: %+v", e)
			}
			observed.Add(int64(e.Calls))
			observedBatches.Add(1)
		}))
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Migrate(t.Context()); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var order []int
		batches := map[int]int{}
		quota.SetBatchHook(st, func(calls []context.Context) {
			mu.Lock()
			defer mu.Unlock()
			batches[len(calls)]++
			for _, ctx := range calls {
				order = append(order, ctx.Value(batchCallID{}).(int))
			}
		})
		w := &batchWorld{now: sqlT0, subjects: []string{"org-a", "org-b", "org-c", "org-d", "org-e"}}
		const total, goroutines = 10_000, 64
		calls := make([]*batchCall, total)
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Go(func() {
				r := mrand.New(mrand.NewPCG(uint64(g), 7))
				for i := g; i < total; i += goroutines {
					c := w.call(r)
					calls[i] = c
					c.do(context.WithValue(t.Context(), batchCallID{}, i), st, w.now)
					if c.err == nil && c.res.HoldID != "" && !c.res.Replayed {
						w.addHold(c.res.HoldID)
					}
				}
			})
		}
		wg.Wait()
		if len(order) != total {
			t.Fatalf("the batches applied %d calls of %d", len(order), total)
		}
		var nb int64
		for _, k := range batches {
			nb += int64(k)
		}
		if observed.Load() != total || observedBatches.Load() != nb {
			t.Errorf("WithBatchObserver saw %d calls in %d batches; want %d in %d", observed.Load(), observedBatches.Load(), total, nb)
		}
		multi := 0
		for n, k := range batches {
			if n > 1 {
				multi += k
			}
		}
		t.Logf("batch sizes (size: batches): %v", batches)
		if multi == 0 {
			t.Errorf("no batch of more than one call: the test did not exercise batching")
		}

		// The same calls, one at a time, in the order applied.
		mem := quota.NewMemoryStore()
		for _, i := range order {
			got := calls[i]
			want := &batchCall{kind: got.kind, op: got.op, id: got.id, amount: got.amount}
			want.do(t.Context(), mem, w.now)
			if diff := compareBatchCalls(want, got); diff != "" {
				t.Fatalf("call %d (%s %+v %s): memory store (-) and batch (+) differ:\n%s", i, got.kind, got.op, got.id, diff)
			}
		}
		compareStores(t, w, mem, st)
		checkBatchMix(t, calls)
	})
}

// checkBatchMix checks that the calls had every kind of outcome, so that
// the comparison covers them all.
func checkBatchMix(t *testing.T, calls []*batchCall) {
	t.Helper()
	mix := map[string]int{}
	for _, c := range calls {
		switch {
		case errors.Is(c.err, quota.ErrIdempotencyConflict):
			mix["conflict"]++
		case errors.Is(c.err, quota.ErrReservationNotFound):
			mix[c.kind+" not found"]++
		case errors.Is(c.err, quota.ErrInvalidAmount):
			mix["commit too large"]++
		case c.err != nil:
			t.Errorf("%s: %v", c.kind, c.err)
		case c.kind != "apply":
			mix[c.kind]++
		case c.res.Replayed:
			mix["replayed"]++
		case !c.res.Applied && c.op.Record.Amount < 0:
			mix["release refused"]++
		case !c.res.Applied:
			mix["refused"]++
		case c.op.Hold != nil:
			mix["held"]++
		case !c.op.Enforce:
			mix["tracked"]++
		case len(c.res.Crossed) > 0:
			mix["crossed a mark"]++
		default:
			mix["consumed"]++
		}
	}
	t.Logf("outcomes: %v", mix)
	for _, k := range []string{"conflict", "commit not found", "cancel not found", "commit too large", "commit", "cancel",
		"replayed", "release refused", "refused", "held", "tracked", "crossed a mark", "consumed"} {
		if mix[k] == 0 {
			t.Errorf("no call had the outcome %q", k)
		}
	}
}

// compareBatchCalls compares the outcomes of one call on two stores:
// record ids aside, which each store numbers its own way.
func compareBatchCalls(want, got *batchCall) string {
	if (want.err == nil) != (got.err == nil) {
		return fmt.Sprintf("error %v, want %v", got.err, want.err)
	}
	if want.err != nil {
		for _, e := range []error{quota.ErrReservationNotFound, quota.ErrReservationExpired, quota.ErrInvalidAmount, quota.ErrIdempotencyConflict, quota.ErrOverflow} {
			if errors.Is(want.err, e) != errors.Is(got.err, e) {
				return fmt.Sprintf("error %v, want %v", got.err, want.err)
			}
		}
		return ""
	}
	opts := cmp.Options{
		cmpopts.IgnoreFields(quota.ApplyResult{}, "RecordID"),
		cmpopts.IgnoreFields(quota.Record{}, "ID"),
		cmpopts.EquateEmpty(),
		cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) }),
	}
	if d := cmp.Diff(want.res, got.res, opts); d != "" {
		return d
	}
	if (want.res.RecordID == 0) != (got.res.RecordID == 0) {
		return fmt.Sprintf("record id %d, want one: %t", got.res.RecordID, want.res.RecordID != 0)
	}
	return cmp.Diff(want.rec, got.rec, opts)
}

// compareStores compares the counters and the records of two stores.
func compareStores(t *testing.T, w *batchWorld, want, got quota.Store) {
	t.Helper()
	var keys []quota.CounterKey
	for _, s := range w.subjects {
		for _, a := range []string{"api", "seats"} {
			for _, c := range w.counters(s, a) {
				keys = append(keys, c.CounterKey)
			}
		}
	}
	wc, err1 := want.Counters(t.Context(), keys, w.now)
	gc, err2 := got.Counters(t.Context(), keys, w.now)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	// A refused first use may leave a counter row that reads as zero:
	// compare the figures.
	figures := func(cs []quota.Counter) [][3]int64 {
		out := make([][3]int64, len(cs))
		for i, c := range cs {
			out[i] = [3]int64{c.Used, c.Held, c.Max}
		}
		return out
	}
	if diff := cmp.Diff(figures(wc), figures(gc)); diff != "" {
		t.Errorf("counters (used, held, max), memory store (-) and batch (+):\n%s", diff)
	}
	wr, err1 := want.Records(t.Context(), quota.RecordQuery{})
	gr, err2 := got.Records(t.Context(), quota.RecordQuery{})
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(wr, gr, cmpopts.IgnoreFields(quota.Record{}, "ID"), cmpopts.EquateEmpty(),
		cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); diff != "" {
		t.Errorf("records in order, memory store (-) and batch (+):\n%s", diff)
	}
}

// batchOp is a Consume of 1 on the monthly counter of subject.
func batchOp(subject string) *quota.Op {
	month := time.Date(sqlT0.Year(), sqlT0.Month(), 1, 0, 0, 0, 0, time.UTC)
	return &quota.Op{
		Counters: []quota.CounterOp{{CounterKey: quota.CounterKey{Subject: subject, Action: "api", Period: quota.PeriodMonth, Start: month},
			End: month.AddDate(0, 1, 0), Max: 1000}},
		Record:  quota.Record{Subject: subject, Action: "api", Amount: 1, Time: sqlT0},
		Enforce: true,
		Now:     sqlT0,
	}
}

// countRecords returns the number of records in db.
func countRecords(t *testing.T, db bun.IDB) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(context.Background(), "SELECT count(*) FROM quota_records").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitFor polls cond every 10 ms until it holds, failing t after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pgWaiting returns the number of backends running a statement that
// contains text and waiting for a lock that the backend blocker holds.
func pgWaiting(t *testing.T, db *bun.DB, blocker int, text string) int {
	t.Helper()
	var n int
	err := db.DB.QueryRowContext(context.Background(), `SELECT count(*) FROM pg_stat_activity
WHERE $1::int = ANY (pg_blocking_pids(pid)) AND query LIKE '%' || $2 || '%'`, blocker, text).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// backendPID returns the process id of the PostgreSQL backend of q.
func backendPID(t *testing.T, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) int {
	t.Helper()
	var pid int
	if err := q.QueryRowContext(context.Background(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestSQLStoreBatchQueueCancel: a call whose context ends while it waits in
// the queue leaves it with the context's error and is never applied.
func TestSQLStoreBatchQueueCancel(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		db := b.newDB(t)
		migrated(t, db)
		st, err := quota.NewSQLStore(db, quota.WithWriters(1))
		if err != nil {
			t.Fatal(err)
		}
		ctx := t.Context()
		if _, err := st.Apply(ctx, batchOp("org-a")); err != nil {
			t.Fatal(err)
		}
		// Block the store's writer: a transaction of another
		// connection holds the counter (PostgreSQL) or the write lock
		// (SQLite).
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if b.name == "pg" {
			_, err = conn.ExecContext(ctx, "BEGIN; SELECT 1 FROM quota_summaries WHERE subject = 'org-a' FOR UPDATE")
		} else {
			_, err = conn.ExecContext(ctx, "BEGIN IMMEDIATE")
		}
		if err != nil {
			t.Fatal(err)
		}
		first := make(chan error, 1)
		go func() {
			_, err := st.Apply(ctx, batchOp("org-a"))
			first <- err
		}()
		if b.name == "pg" {
			admin, pid := openPGAdmin(t), backendPID(t, conn)
			waitFor(t, "the first call to wait for the lock", func() bool { return pgWaiting(t, admin, pid, "quota_") > 0 })
		} else {
			time.Sleep(100 * time.Millisecond) // the first call waits in busy_timeout
		}
		qctx, cancel := context.WithCancel(ctx)
		queued := make(chan error, 1)
		go func() {
			_, err := st.Apply(qctx, batchOp("org-b"))
			queued <- err
		}()
		waitFor(t, "the second call to queue", func() bool { return quota.Queued(st) == 1 })
		cancel()
		select {
		case err := <-queued:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("queued call: %v; want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the cancelled call did not leave the queue")
		}
		if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
			t.Fatal(err)
		}
		if err := <-first; err != nil {
			t.Fatalf("first call: %v", err)
		}
		if n := countRecords(t, db); n != 2 {
			t.Errorf("%d records; want 2: the cancelled call was applied", n)
		}
		checkBalanced(t, db)
	})
}

// openPGAdmin opens a pool of one connection to the base DSN.
func openPGAdmin(t *testing.T) *bun.DB {
	t.Helper()
	return openPG(t, pgBaseDSN(t), 1)
}

// tcpProxy forwards the connections it accepts to a target, until cut.
type tcpProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	cut    bool
}

func startTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target}
	t.Cleanup(p.cutAll)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				c.Close()
				s.Close()
				continue
			}
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { io.Copy(s, c); s.Close() }()
			go func() { io.Copy(c, s); c.Close() }()
		}
	}()
	return p
}

// cutAll closes the listener and every connection.
func (p *tcpProxy) cutAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	p.ln.Close()
	for _, c := range p.conns {
		c.Close()
	}
}

// TestSQLStoreBatchConnectionCut cuts the connection of a PostgreSQL batch
// while the batch waits for a lock: none of its calls is applied, each of
// its callers gets an error, and the ledger balances.
func TestSQLStoreBatchConnectionCut(t *testing.T) {
	dsn := newPGSchema(t)
	direct := openPG(t, dsn, 4)
	migrated(t, direct)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("QUOTA_TEST_POSTGRES_DSN must be a URL for this test: %v", err)
	}
	proxy := startTCPProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()
	q := u.Query()
	// The server notices a client gone while it waits for a lock.
	q.Set("client_connection_check_interval", "100")
	u.RawQuery = q.Encode()
	st, err := quota.NewSQLStore(openPG(t, u.String(), 8), quota.WithWriters(1))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	const n = 10
	for i := range n {
		if _, err := st.Apply(ctx, batchOp(fmt.Sprintf("org-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	blocker, err := direct.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback()
	if _, err := blocker.ExecContext(ctx, "SELECT 1 FROM quota_summaries WHERE subject = 'org-0' FOR UPDATE"); err != nil {
		t.Fatal(err)
	}
	pid := backendPID(t, blocker)
	// A first call takes the writer and waits for the lock; n calls
	// queue behind it; cancelling the first sends them as one batch,
	// which waits for the lock too.
	fctx, cancel := context.WithCancel(ctx)
	first := make(chan error, 1)
	go func() {
		_, err := st.Apply(fctx, batchOp("org-0"))
		first <- err
	}()
	waitFor(t, "the first call to wait for the lock", func() bool { return pgWaiting(t, direct, pid, "quota_use") > 0 })
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := st.Apply(ctx, batchOp(fmt.Sprintf("org-%d", i)))
			errs <- err
		}()
	}
	waitFor(t, "the calls to queue", func() bool { return quota.Queued(st) == n })
	cancel()
	if err := <-first; err == nil {
		t.Fatal("the cancelled first call succeeded")
	}
	waitFor(t, "the batch to wait for the lock", func() bool { return pgWaiting(t, direct, pid, "quota_batch") > 0 })
	proxy.cutAll()
	for range n {
		select {
		case err := <-errs:
			if err == nil {
				t.Error("a call of the cut batch succeeded")
			} else if !strings.Contains(err.Error(), "batch of 10") {
				t.Errorf("error %v; want one of the batch of 10", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a call of the cut batch did not return")
		}
	}
	waitFor(t, "the server to end the cut batch", func() bool { return pgWaiting(t, direct, pid, "quota_batch") == 0 })
	if err := blocker.Rollback(); err != nil {
		t.Fatal(err)
	}
	if got := countRecords(t, direct); got != n {
		t.Errorf("%d records; want the %d written before the batch", got, n)
	}
	checkBalanced(t, direct)
}

// TestSQLStoreBatchCallerTx: stores over callers' transactions, used while
// a batching store of the same database is busy, never commit another
// caller's use, nor lose their own.
func TestSQLStoreBatchCallerTx(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		db := b.newDB(t)
		shared := migrated(t, db)
		ctx := t.Context()
		var wg sync.WaitGroup
		var sharedOK atomic.Int64
		stop := make(chan struct{})
		for range 8 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					res, err := shared.Apply(ctx, batchOp("org-shared"))
					if err != nil {
						t.Error(err)
						return
					}
					if res.Applied {
						sharedOK.Add(1)
					}
				}
			})
		}
		waitFor(t, "the shared store to be busy", func() bool { return sharedOK.Load() >= 20 })
		var txUses, kept atomic.Int64
		var txg sync.WaitGroup
		for g := range 4 {
			txg.Go(func() {
				for round := range 5 {
					tx, err := db.BeginTx(ctx, nil)
					if err != nil {
						t.Error(err)
						return
					}
					st, err := quota.NewSQLStore(tx)
					if err != nil {
						t.Error(err)
						return
					}
					subject := fmt.Sprintf("org-tx-%d", g)
					for range 3 {
						if res, err := st.Apply(ctx, batchOp(subject)); err != nil || !res.Applied {
							t.Errorf("use in a transaction: %+v, %v", res, err)
						}
						txUses.Add(1)
					}
					if round%2 == 0 {
						err = tx.Commit()
						kept.Add(3)
					} else {
						err = tx.Rollback()
					}
					if err != nil {
						t.Error(err)
					}
				}
			})
		}
		txg.Wait()
		close(stop)
		wg.Wait()
		var perSubject = map[string]int64{}
		rows, err := db.QueryContext(ctx, "SELECT subject, count(*) FROM quota_records GROUP BY subject")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var s string
			var n int64
			if err := rows.Scan(&s, &n); err != nil {
				t.Fatal(err)
			}
			perSubject[s] = n
		}
		rows.Close()
		want := map[string]int64{"org-shared": sharedOK.Load()}
		for g := range 4 {
			want[fmt.Sprintf("org-tx-%d", g)] = 9 // 3 rounds of 3 committed
		}
		if diff := cmp.Diff(want, perSubject); diff != "" {
			t.Errorf("records per subject (-want +got):\n%s", diff)
		}
		t.Logf("%d shared uses; %d uses in transactions, %d committed", sharedOK.Load(), txUses.Load(), kept.Load())
		checkBalanced(t, db)
	})
}

// TestSQLStoreBatchManyInstances: three instances over PostgreSQL, each
// writing two batches at a time, use 40 subjects in random orders, some
// with two counters, some with holds committed or cancelled: no call
// fails (no deadlock is left unresolved), and the ledger balances.
func TestSQLStoreBatchManyInstances(t *testing.T) {
	dsn := newPGSchema(t)
	var retries, batches atomic.Int64
	var stores []*quota.SQLStore
	for range 3 {
		st, err := quota.NewSQLStore(openPG(t, dsn, 6), quota.WithBatchObserver(func(e quota.BatchEvent) {
			retries.Add(int64(e.Retries))
			batches.Add(1)
		}))
		if err != nil {
			t.Fatal(err)
		}
		stores = append(stores, st)
	}
	if err := stores[0].Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	w := &batchWorld{now: sqlT0}
	for i := range 40 {
		w.subjects = append(w.subjects, fmt.Sprintf("org-%02d", i))
	}
	var wg sync.WaitGroup
	for g := range 48 {
		wg.Go(func() {
			r := mrand.New(mrand.NewPCG(uint64(g), 11))
			st := stores[g%len(stores)]
			for range 60 {
				c := w.call(r)
				c.do(t.Context(), st, w.now)
				switch {
				case errors.Is(c.err, quota.ErrReservationNotFound), errors.Is(c.err, quota.ErrIdempotencyConflict), errors.Is(c.err, quota.ErrInvalidAmount):
				case c.err != nil:
					t.Errorf("%s: %v", c.kind, c.err)
					return
				case c.res.HoldID != "" && !c.res.Replayed:
					w.addHold(c.res.HoldID)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("%d batches, %d retried after a deadlock or a serialization failure", batches.Load(), retries.Load())
	checkBalanced(t, openPG(t, dsn, 1))
}
