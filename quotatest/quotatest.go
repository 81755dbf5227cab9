// Package quotatest is a conformance suite for implementations of
// quota.Store. A store's own tests run it with a factory:
//
//	func TestConformance(t *testing.T) {
//		quotatest.Run(t, func(t *testing.T) quota.Store {
//			return mystore.New(...)
//		})
//	}
//
// Every case is a subtest with a fresh store from the factory. It drives
// the store through a quota.Quota built over it (with an injected clock),
// and through the Store interface directly where an invariant is about the
// store itself. Together the cases cover the invariants of the design: no
// overshoot under concurrency, a ledger that balances, idempotency, typed
// errors for bad input that write nothing, periods, reservations, and
// Close.
//
// What the suite expects of a store, beyond the documentation of
// quota.Store:
//
//   - The factory may return stores that share a database. Each case uses
//     its own subjects (and, where it queries by action alone, its own
//     action names), and reads back only what it wrote. Cases do not run
//     in parallel, so a store that serializes writers (SQLite) passes; but
//     no other process should write to a shared database while the suite
//     runs.
//   - Times handed to the store are whole microseconds; a store may keep
//     times at microsecond precision, not coarser.
//   - Names of up to quota.MaxNameLen bytes (multi-byte characters
//     included) and metadata of up to quota.MaxMetadataLen bytes come back
//     byte for byte, so metadata cannot go through a column type that
//     reformats JSON (PostgreSQL's jsonb) or rejects the \u0000 escape.
//   - Op amounts and counters range over the whole of int64: the overflow
//     case applies Ops of up to 1<<62 directly.
//   - The optional interfaces quota.Summer, quota.Ranker and quota.Pruner
//     are checked when the store has them: analytics must answer as the
//     Quota answers from Store.Records, and without Pruner, Quota.Prune
//     must refuse with errors.ErrUnsupported and change nothing.
//   - Store.Close is called by the suite at the end of each case (and in
//     the case about Close); the factory may register its own cleanup.
//
// The heaviest case makes 12,800 Consume calls from 64 goroutines.
package quotatest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/quotakit/quota"
)

// Run runs every conformance case against stores made by newStore, each case (subtest) with a fresh store.
func Run(t *testing.T, newStore func(t *testing.T) quota.Store) {
	t.Helper()
	s := &suite{newStore: newStore, run: newRunID()}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, s) })
	}
}

// cases lists the conformance cases in the order Run runs them.
var cases = []struct {
	name string
	fn   func(*testing.T, *suite)
}{
	{"ConsumeConcurrency", testConsumeConcurrency},
	{"ConsumeVariableAmounts", testConsumeVariableAmounts},
	{"TwoLimitsConcurrency", testTwoLimits},
	{"Idempotency", testIdempotency},
	{"ReplayAfterPlanChange", testReplayAfterPlanChange},
	{"Reservations", testReservations},
	{"Sweep", testSweep},
	{"Allocations", testAllocations},
	{"Track", testTrack},
	{"Periods", testPeriods},
	{"PlanChanges", testPlanChanges},
	{"Versions", testVersions},
	{"BadInput", testBadInput},
	{"CancelledContexts", testCancelledContexts},
	{"Records", testRecords},
	{"Subscriptions", testSubscriptions},
	{"Usage", testUsage},
	{"StoreOps", testStoreOps},
	{"Close", testClose},
	{"Overflow", testOverflow},
	{"Analytics", testAnalytics},
	{"Notifications", testNotifications},
	{"NotificationsTrue", testNotificationsTrue},
	{"History", testHistory},
	{"Retention", testRetention},
}

// suite is the state shared by the cases of one Run.
type suite struct {
	newStore func(t *testing.T) quota.Store
	run      string       // random, so that runs sharing a database never meet
	seq      atomic.Int64 // numbers the envs of this run
}

func newRunID() string {
	var b [5]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// t0 is the injected clock's first reading: Wednesday 15 January 2025,
// whole microseconds. anchor0 is the billing anchor of most
// subscriptions, so that t0's month is January.
var (
	t0      = time.Date(2025, time.January, 15, 10, 30, 0, 123456000, time.UTC)
	anchor0 = time.Date(2025, time.January, 1, 0, 0, 0, 0, time.UTC)
)

// env is one fresh store with a clock and a namespace for names.
type env struct {
	ctx   context.Context
	store quota.Store
	clock *clock
	ns    string // prefix of this env's subjects (and private actions)
}

// env returns a fresh store from the factory, closed when t ends.
func (s *suite) env(t *testing.T) *env {
	t.Helper()
	st := s.newStore(t)
	if st == nil {
		t.Fatal("newStore returned a nil Store")
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("Store.Close() at the end of the case = %v; want nil", err)
		}
	})
	return &env{
		ctx:   t.Context(),
		store: st,
		clock: &clock{now: t0},
		ns:    fmt.Sprintf("qt-%s-%d", s.run, s.seq.Add(1)),
	}
}

// name returns a subject (or action) name private to e.
func (e *env) name(s string) string { return e.ns + "." + s }

// quota returns a Quota over e's store with cfg; cfg.Now defaults to e's
// clock.
func (e *env) quota(t *testing.T, cfg quota.Config) *quota.Quota {
	t.Helper()
	if cfg.Now == nil {
		cfg.Now = e.clock.Now
	}
	q, err := quota.New(e.store, cfg)
	if err != nil {
		t.Fatalf("quota.New() = %v", err)
	}
	return q
}

// subscribe subscribes subject to plan, anchored at anchor0 in UTC.
func (e *env) subscribe(t *testing.T, q *quota.Quota, subject, plan string) {
	t.Helper()
	if err := q.Subscribe(e.ctx, quota.Subscription{Subject: subject, Plan: plan, Anchor: anchor0}); err != nil {
		t.Fatalf("Subscribe(%q, %q) = %v", subject, plan, err)
	}
}

// clock is an injected clock, safe for concurrent use.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func (c *clock) Add(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// Options for cmp.Diff: times compare as instants, and nil equals empty
// (a store may return either for no metadata or no overrides). Metadata
// compares byte for byte, as a whole (element by element is slow for 16
// KiB).
var (
	cmpTime  = cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })
	cmpEmpty = cmp.Options{
		cmp.FilterPath(func(p cmp.Path) bool { return p.Last().Type() != reflect.TypeFor[json.RawMessage]() }, cmpopts.EquateEmpty()),
		cmp.Comparer(func(a, b json.RawMessage) bool { return bytes.Equal(a, b) }),
	}
	// anyVersion ignores Subscription.Version, which the Quota draws at
	// random and a store that is not quota.Versioned does not keep; the
	// Versions case checks it.
	anyVersion = cmpopts.IgnoreFields(quota.Subscription{}, "Version")
)

func plan(name string, limits map[string][]quota.Limit, features ...string) quota.Plan {
	return quota.Plan{Name: name, Limits: limits, Features: features}
}

// perMonthUnlimited is an unlimited monthly limit: counted, never blocks.
var perMonthUnlimited = quota.Limit{Max: quota.Unlimited, Period: quota.PeriodMonth}

// consume calls q.Consume and fails t on an error.
func consume(t *testing.T, ctx context.Context, q *quota.Quota, u quota.Use) quota.Decision {
	t.Helper()
	d, err := q.Consume(ctx, u)
	if err != nil {
		t.Fatalf("Consume(%s %s %d) = %v; want nil error", u.Subject, u.Action, u.Amount, err)
	}
	return d
}

// track calls q.Track and fails t on an error.
func track(t *testing.T, ctx context.Context, q *quota.Quota, u quota.Use) quota.Decision {
	t.Helper()
	d, err := q.Track(ctx, u)
	if err != nil {
		t.Fatalf("Track(%s %s %d) = %v; want nil error", u.Subject, u.Action, u.Amount, err)
	}
	return d
}

// check calls q.Check and fails t on an error.
func check(t *testing.T, ctx context.Context, q *quota.Quota, u quota.Use) quota.Decision {
	t.Helper()
	d, err := q.Check(ctx, u)
	if err != nil {
		t.Fatalf("Check(%s %s %d) = %v; want nil error", u.Subject, u.Action, u.Amount, err)
	}
	return d
}

// wantAllowed fails t unless d allows its use with used counted after it
// (or before it, for Check).
func wantAllowed(t *testing.T, what string, d quota.Decision, used int64) {
	t.Helper()
	if !d.Allowed || d.Reason != quota.ReasonNone || d.Used != used {
		t.Errorf("%s = {Allowed %v, Reason %q, Used %d}; want {Allowed true, Reason \"\", Used %d}", what, d.Allowed, d.Reason, d.Used, used)
	}
}

// wantDenied fails t unless d denies its use for reason with used counted.
func wantDenied(t *testing.T, what string, d quota.Decision, reason quota.Reason, used int64) {
	t.Helper()
	if d.Allowed || d.Reason != reason || d.Used != used || d.RecordID != 0 {
		t.Errorf("%s = {Allowed %v, Reason %q, Used %d, RecordID %d}; want {Allowed false, Reason %q, Used %d, RecordID 0}", what, d.Allowed, d.Reason, d.Used, d.RecordID, reason, used)
	}
}

// wantErr fails t unless err matches want.
func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s = %v; want an error matching %v", what, err, want)
	}
}

// records reads records from the store, failing t on an error, and checks
// that their IDs ascend and their times are in UTC.
func (e *env) records(t *testing.T, rq quota.RecordQuery) []quota.Record {
	t.Helper()
	recs, err := e.store.Records(e.ctx, rq)
	if err != nil {
		t.Fatalf("Store.Records(%+v) = %v", rq, err)
	}
	for i, r := range recs {
		if i > 0 && r.ID <= recs[i-1].ID {
			t.Errorf("Store.Records(%+v): ID %d after ID %d; want ascending IDs", rq, r.ID, recs[i-1].ID)
		}
		if _, off := r.Time.Zone(); off != 0 {
			t.Errorf("Store.Records(%+v): record %d Time %v; want UTC", rq, r.ID, r.Time)
		}
	}
	return recs
}

// counters reads counters from the store, failing t on an error.
func (e *env) counters(t *testing.T, keys ...quota.CounterKey) []quota.Counter {
	t.Helper()
	cs, err := e.store.Counters(e.ctx, keys, e.clock.Now())
	if err != nil {
		t.Fatalf("Store.Counters(%v) = %v", keys, err)
	}
	if len(cs) != len(keys) {
		t.Fatalf("Store.Counters(%d keys) returned %d counters", len(keys), len(cs))
	}
	for i := range keys {
		if diff := cmp.Diff(keys[i], cs[i].CounterKey, cmpTime); diff != "" {
			t.Errorf("Store.Counters: counter %d has key (-want +got):\n%s", i, diff)
		}
	}
	return cs
}

// window is one counter and its end.
type window struct {
	key quota.CounterKey
	end time.Time
}

// windowOf returns the window of one limit of a decision (or report).
func windowOf(subject, action string, ls quota.LimitStatus) window {
	return window{
		key: quota.CounterKey{Subject: subject, Action: action, Period: ls.Period, Start: ls.PeriodStart},
		end: ls.ResetAt,
	}
}

// monthOf returns the January 2025 window of subject's action.
func monthOf(subject, action string) window {
	return window{
		key: quota.CounterKey{Subject: subject, Action: action, Period: quota.PeriodMonth, Start: anchor0},
		end: anchor0.AddDate(0, 1, 0),
	}
}

// allocOf returns the allocation counter of subject's action.
func allocOf(subject, action string) window {
	return window{key: quota.CounterKey{Subject: subject, Action: action, Period: quota.PeriodNone}}
}

// ledger checks invariant 2 on w: its counter's Used equals the sum of
// the amounts of the records of its subject and action in [start, end).
// It returns the counter and the records.
func (e *env) ledger(t *testing.T, w window) (quota.Counter, []quota.Record) {
	t.Helper()
	c := e.counters(t, w.key)[0]
	rq := quota.RecordQuery{Subject: w.key.Subject, Action: w.key.Action}
	if w.key.Period != quota.PeriodNone {
		rq.From, rq.To = w.key.Start, w.end
		if c.Used != 0 && !c.End.Equal(w.end) {
			t.Errorf("counter %v: End = %v; want %v", w.key, c.End, w.end)
		}
	}
	recs := e.records(t, rq)
	var sum int64
	for _, r := range recs {
		sum += r.Amount
	}
	if sum != c.Used {
		t.Errorf("ledger of %s %s %s window %v: counter Used = %d; want the sum of its %d records, %d",
			w.key.Subject, w.key.Action, w.key.Period, w.key.Start, c.Used, len(recs), sum)
	}
	return c, recs
}

// since returns the records written after the record afterID that belong
// to this env: whose subject carries its namespace or is not a valid name
// at all (which no other case writes either).
func (e *env) since(t *testing.T, afterID int64) []quota.Record {
	t.Helper()
	var out []quota.Record
	for _, r := range e.records(t, quota.RecordQuery{AfterID: afterID}) {
		if strings.HasPrefix(r.Subject, e.ns) || quota.ValidateName(r.Subject) != nil {
			out = append(out, r)
		}
	}
	return out
}

// sumAmounts returns the total of recs and their amounts by ID.
func sumAmounts(recs []quota.Record) (int64, map[int64]int64) {
	var sum int64
	byID := make(map[int64]int64, len(recs))
	for _, r := range recs {
		sum += r.Amount
		byID[r.ID] = r.Amount
	}
	return sum, byID
}

// second returns the error of a call that returns a value and an error.
func second[T any](_ T, err error) error { return err }
