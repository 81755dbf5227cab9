package quota_test

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

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
		st, err := quota.NewSQLStore(b.newDB(t), quota.WithWriters(1))
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
