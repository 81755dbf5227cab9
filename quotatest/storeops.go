package quotatest

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/quotakit/quota"
)

// testStoreOps checks the semantics of quota.Op and of Commit, Cancel and
// Counters directly on the Store, as documented in store.go.
func testStoreOps(t *testing.T, s *suite) {
	e := s.env(t)
	o := &opsCase{
		t: t, e: e, st: e.store, ctx: e.ctx,
		subj:    e.name("ops"),
		now:     t0,
		feb:     anchor0.AddDate(0, 1, 0),
		day:     anchor0.AddDate(0, 0, 14),
		nextDay: anchor0.AddDate(0, 0, 15),
	}
	o.kDay, o.kMon = o.key("x", quota.PeriodDay), o.key("x", quota.PeriodMonth)
	if !o.kDay.Less(o.kMon) || o.kMon.Less(o.kDay) {
		t.Fatalf("test bug: keys out of order")
	}

	t.Run("Counters", o.testCounters)
	t.Run("Apply", o.testApply)
	t.Run("Release", o.testRelease)
	t.Run("Holds", o.testHolds)
	t.Run("Keys", o.testKeys)
	t.Run("OwnCopies", o.testOwnCopies)
}

// opsCase is the state of testStoreOps that its subtests share: one
// subject's counters of the 15 January 2025 day and of January, written
// through the Store at t0.
type opsCase struct {
	// t is the case's T. The helpers apply, wantResult, wantCounters and
	// nRecords report on it, also when a subtest calls them.
	t            *testing.T
	e            *env
	st           quota.Store
	ctx          context.Context
	subj         string
	now          time.Time
	feb          time.Time // the end of January
	day, nextDay time.Time // 15 January and its end
	kDay, kMon   quota.CounterKey
}

// key returns the counter key of action in period p at now.
func (o *opsCase) key(action string, p quota.Period) quota.CounterKey {
	k := quota.CounterKey{Subject: o.subj, Action: action, Period: p}
	switch p {
	case quota.PeriodDay:
		k.Start = o.day
	case quota.PeriodMonth:
		k.Start = anchor0
	}
	return k
}

// end returns the end of the window of k.
func (o *opsCase) end(k quota.CounterKey) time.Time {
	switch k.Period {
	case quota.PeriodDay:
		return o.nextDay
	case quota.PeriodMonth:
		return o.feb
	}
	return time.Time{}
}

func (o *opsCase) cop(k quota.CounterKey, max int64) quota.CounterOp {
	return quota.CounterOp{CounterKey: k, End: o.end(k), Max: max}
}

func (o *opsCase) counter(k quota.CounterKey, used, held, limit int64) quota.Counter {
	return quota.Counter{CounterKey: k, End: o.end(k), Used: used, Held: held, Max: limit}
}

func (o *opsCase) rec(action string, n int64) quota.Record {
	return quota.Record{Subject: o.subj, Action: action, Amount: n, Time: o.now}
}

// apply applies op to the store, failing the case on an error.
func (o *opsCase) apply(what string, op *quota.Op) quota.ApplyResult {
	o.t.Helper()
	res, err := o.st.Apply(o.ctx, op)
	if err != nil {
		o.t.Fatalf("Store.Apply(%s) = %v", what, err)
	}
	return res
}

func (o *opsCase) wantResult(what string, want, got quota.ApplyResult) {
	o.t.Helper()
	if diff := cmp.Diff(want, got, cmpTime, cmpEmpty); diff != "" {
		o.t.Errorf("Store.Apply(%s) (-want +got):\n%s", what, diff)
	}
}

func (o *opsCase) wantCounters(what string, at time.Time, want ...quota.Counter) {
	o.t.Helper()
	keys := make([]quota.CounterKey, len(want))
	for i, c := range want {
		keys[i] = c.CounterKey
	}
	got, err := o.st.Counters(o.ctx, keys, at)
	if err != nil {
		o.t.Fatalf("Store.Counters(%s) = %v", what, err)
	}
	if diff := cmp.Diff(want, got, cmpTime); diff != "" {
		o.t.Errorf("Store.Counters(%s) (-want +got):\n%s", what, diff)
	}
}

func (o *opsCase) nRecords(action string) int {
	o.t.Helper()
	return len(o.e.records(o.t, quota.RecordQuery{Subject: o.subj, Action: action}))
}

func (o *opsCase) testCounters(t *testing.T) {
	// Never written: zero, in the order asked.
	ks := []quota.CounterKey{o.kMon, o.key("y", quota.PeriodNone), o.kDay}
	for _, c := range o.e.counters(t, ks...) {
		if c.Used != 0 || c.Held != 0 || c.Max != 0 {
			t.Errorf("Store.Counters(never written %v) = %+v; want zero Used, Held and Limit", c.CounterKey, c)
		}
	}
	if cs, err := o.st.Counters(o.ctx, nil, o.now); err != nil || len(cs) != 0 {
		t.Errorf("Store.Counters(no keys) = %v, %v; want none, nil", cs, err)
	}
}

func (o *opsCase) testApply(t *testing.T) {
	e, now, kDay, kMon, cop, counter, rec := o.e, o.now, o.kDay, o.kMon, o.cop, o.counter, o.rec
	ops := func(dayMax, monMax int64) []quota.CounterOp {
		return []quota.CounterOp{cop(kDay, dayMax), cop(kMon, monMax)}
	}
	res := o.apply("3 of 5 and 10", &quota.Op{Counters: ops(5, 10), Record: rec("x", 3), Enforce: true, Now: now})
	o.wantResult("3 of 5 and 10", quota.ApplyResult{Applied: true, RecordID: res.RecordID,
		Counters: []quota.Counter{counter(kDay, 3, 0, 5), counter(kMon, 3, 0, 10)}}, res)
	first := rec("x", 3)
	first.ID = res.RecordID
	if diff := cmp.Diff([]quota.Record{first}, e.records(t, quota.RecordQuery{Subject: o.subj}), cmpTime, cmpEmpty); diff != "" || res.RecordID <= 0 {
		t.Errorf("records after Apply (-want +got):\n%s", diff)
	}

	// Refused by the day limit: nothing written, counters as they are.
	res = o.apply("3 more of 5", &quota.Op{Counters: ops(5, 10), Record: rec("x", 3), Enforce: true, Now: now})
	o.wantResult("3 more of 5", quota.ApplyResult{Counters: []quota.Counter{counter(kDay, 3, 0, 5), counter(kMon, 3, 0, 10)}}, res)
	// Not enforced: past Max.
	res = o.apply("3 more of 5, not enforced", &quota.Op{Counters: ops(5, 10), Record: rec("x", 3), Now: now})
	o.wantResult("3 more of 5, not enforced", quota.ApplyResult{Applied: true, RecordID: res.RecordID,
		Counters: []quota.Counter{counter(kDay, 6, 0, 5), counter(kMon, 6, 0, 10)}}, res)
	// Unlimited never refuses; up to Max exactly is allowed; Limit is
	// the Max of the last write.
	res = o.apply("100 unlimited", &quota.Op{Counters: ops(quota.Unlimited, quota.Unlimited), Record: rec("x", 100), Enforce: true, Now: now})
	o.wantResult("100 unlimited", quota.ApplyResult{Applied: true, RecordID: res.RecordID,
		Counters: []quota.Counter{counter(kDay, 106, 0, quota.Unlimited), counter(kMon, 106, 0, quota.Unlimited)}}, res)
	res = o.apply("4 of 110", &quota.Op{Counters: ops(quota.Unlimited, 110), Record: rec("x", 4), Enforce: true, Now: now})
	o.wantResult("4 of 110", quota.ApplyResult{Applied: true, RecordID: res.RecordID,
		Counters: []quota.Counter{counter(kDay, 110, 0, quota.Unlimited), counter(kMon, 110, 0, 110)}}, res)
	res = o.apply("1 of 110", &quota.Op{Counters: ops(quota.Unlimited, 110), Record: rec("x", 1), Enforce: true, Now: now})
	o.wantResult("1 of 110", quota.ApplyResult{Counters: []quota.Counter{counter(kDay, 110, 0, quota.Unlimited), counter(kMon, 110, 0, 110)}}, res)
	res = o.apply("1 of 0", &quota.Op{Counters: ops(quota.Unlimited, 0), Record: rec("x", 1), Enforce: true, Now: now})
	if res.Applied {
		t.Errorf("Store.Apply(1 of a Max of 0) applied; want refused")
	}
	o.wantCounters("after Apply", now, counter(kDay, 110, 0, quota.Unlimited), counter(kMon, 110, 0, 110))
	if n := o.nRecords("x"); n != 4 {
		t.Errorf("%d records; want 4", n)
	}
	e.ledger(t, window{kDay, o.nextDay})
	e.ledger(t, window{kMon, o.feb})
}

func (o *opsCase) testRelease(t *testing.T) {
	k := o.key("y", quota.PeriodNone)
	op := func(n int64, enforce bool) *quota.Op {
		return &quota.Op{Counters: []quota.CounterOp{o.cop(k, 10)}, Record: o.rec("y", n), Enforce: enforce, Now: o.now}
	}
	o.apply("+5", op(5, true))
	for _, enforce := range []bool{true, false} {
		res := o.apply("-6 of 5", op(-6, enforce))
		o.wantResult("-6 of 5", quota.ApplyResult{Counters: []quota.Counter{o.counter(k, 5, 0, 10)}}, res)
	}
	res := o.apply("-5 of 5", op(-5, true))
	o.wantResult("-5 of 5", quota.ApplyResult{Applied: true, RecordID: res.RecordID, Counters: []quota.Counter{o.counter(k, 0, 0, 10)}}, res)
	if c, recs := o.e.ledger(t, window{key: k}); c.Used != 0 || len(recs) != 2 {
		t.Errorf("allocation: counter %d, %d records; want 0, 2", c.Used, len(recs))
	}
}

func (o *opsCase) testHolds(t *testing.T) {
	e, st, ctx, now, counter := o.e, o.st, o.ctx, o.now, o.counter
	k := o.key("h", quota.PeriodMonth)
	hold := func(id string, n int64, exp time.Time, at time.Time) *quota.Op {
		return &quota.Op{Counters: []quota.CounterOp{o.cop(k, 10)}, Record: o.rec("h", n), Enforce: true,
			Hold: &quota.Hold{ID: e.name(id), ExpiresAt: exp}, Now: at}
	}
	exp := now.Add(time.Minute)
	res := o.apply("hold 4", hold("h1", 4, exp, now))
	o.wantResult("hold 4", quota.ApplyResult{Applied: true, HoldID: e.name("h1"), HoldExpiresAt: exp, Counters: []quota.Counter{counter(k, 0, 4, 10)}}, res)
	if n := o.nRecords("h"); n != 0 {
		t.Errorf("a hold wrote %d records; want none until Commit", n)
	}
	o.wantCounters("a microsecond before the expiry", exp.Add(-time.Microsecond), counter(k, 0, 4, 10))
	o.wantCounters("at the expiry", exp, counter(k, 0, 0, 10))
	o.wantCounters("now", now, counter(k, 0, 4, 10))
	got, err := st.Commit(ctx, e.name("h1"), 3, now.Add(30*time.Second))
	want := o.rec("h", 3)
	want.ID = got.ID
	if diff := cmp.Diff(want, got, cmpTime, cmpEmpty); diff != "" || err != nil || got.ID <= 0 {
		t.Errorf("Store.Commit(3 of 4) = %v, (-want +got):\n%s", err, diff)
	}
	o.wantCounters("after Commit(3 of 4)", now, counter(k, 3, 0, 10))
	if diff := cmp.Diff([]quota.Record{want}, e.records(t, quota.RecordQuery{Subject: o.subj, Action: "h"}), cmpTime, cmpEmpty); diff != "" {
		t.Errorf("records after Commit (-want +got):\n%s", diff)
	}
	_, err = st.Commit(ctx, e.name("h1"), 1, now)
	wantErr(t, "second Store.Commit", err, quota.ErrReservationNotFound)
	wantErr(t, "Store.Cancel after Commit", st.Cancel(ctx, e.name("h1"), now), quota.ErrReservationNotFound)

	o.apply("hold 5", hold("h2", 5, exp, now))
	if err := st.Cancel(ctx, e.name("h2"), now); err != nil {
		t.Errorf("Store.Cancel = %v; want nil", err)
	}
	o.wantCounters("after Cancel", now, counter(k, 3, 0, 10))
	wantErr(t, "second Store.Cancel", st.Cancel(ctx, e.name("h2"), now), quota.ErrReservationNotFound)
	_, err = st.Commit(ctx, e.name("h2"), 1, now)
	wantErr(t, "Store.Commit after Cancel", err, quota.ErrReservationNotFound)
	_, err = st.Commit(ctx, e.name("nope"), 1, now)
	wantErr(t, "Store.Commit(unknown)", err, quota.ErrReservationNotFound)
	wantErr(t, "Store.Cancel(unknown)", st.Cancel(ctx, e.name("nope"), now), quota.ErrReservationNotFound)

	// Holds count against the limit until they expire.
	o.apply("hold 6", hold("h3", 6, exp, now))
	res = o.apply("hold 2 more", hold("h4", 2, exp, now))
	o.wantResult("hold 2 more with 3 used and 6 held of 10", quota.ApplyResult{Counters: []quota.Counter{counter(k, 3, 6, 10)}}, res)
	_, err = st.Commit(ctx, e.name("h3"), 1, exp)
	wantErr(t, "Store.Commit at the expiry", err, quota.ErrReservationExpired)
	_, err = st.Commit(ctx, e.name("h3"), 1, exp)
	wantErr(t, "second Store.Commit after the expiry", err, quota.ErrReservationNotFound)
	o.wantCounters("after the expiry", now, counter(k, 3, 0, 10))

	o.apply("hold 7", hold("h5", 7, exp, now))
	res = o.apply("7 at the expiry of a hold of 7", &quota.Op{Counters: []quota.CounterOp{o.cop(k, 10)}, Record: o.rec("h", 7), Enforce: true, Now: exp})
	o.wantResult("7 at the expiry of a hold of 7", quota.ApplyResult{Applied: true, RecordID: res.RecordID, Counters: []quota.Counter{counter(k, 10, 0, 10)}}, res)
	if _, err := st.Commit(ctx, e.name("h5"), 7, exp); !errors.Is(err, quota.ErrReservationExpired) && !errors.Is(err, quota.ErrReservationNotFound) {
		t.Errorf("Store.Commit after the expiry = %v; want ErrReservationExpired or ErrReservationNotFound", err)
	}
	if c, recs := e.ledger(t, window{k, o.feb}); c.Used != 10 || c.Held != 0 || len(recs) != 2 {
		t.Errorf("after holds: counter {Used %d, Held %d}, %d records; want {10, 0}, 2", c.Used, c.Held, len(recs))
	}
}

func (o *opsCase) testKeys(t *testing.T) {
	e, now := o.e, o.now
	k := o.key("k", quota.PeriodMonth)
	op := func(subject string, n int64, key, fp string) *quota.Op {
		r := o.rec("k", n)
		r.Subject, r.Key = subject, key
		return &quota.Op{Counters: []quota.CounterOp{o.cop(k, 10)}, Record: r, Fingerprint: fp, Enforce: true, Now: now}
	}
	subj := o.subj
	first := o.apply("keyed 2", op(subj, 2, "key1", "f1"))
	again := op(subj, 2, "key1", "f1")
	again.Now = now.Add(time.Hour)
	res := o.apply("keyed 2 again", again)
	o.wantResult("keyed 2 again", quota.ApplyResult{Applied: true, Replayed: true, RecordID: first.RecordID, Counters: first.Counters}, res)
	_, err := o.st.Apply(o.ctx, op(subj, 2, "key1", "f2"))
	wantErr(t, "Store.Apply(key1 with another fingerprint)", err, quota.ErrIdempotencyConflict)
	o.wantCounters("after replays", now, o.counter(k, 2, 0, 10))
	if n := o.nRecords("k"); n != 1 {
		t.Errorf("%d records after replays; want 1", n)
	}
	// A refused use does not take its key.
	res = o.apply("keyed 20 of 10", op(subj, 20, "key2", "f1"))
	if res.Applied || res.Replayed {
		t.Errorf("Store.Apply(keyed 20 of 10) = %+v; want refused", res)
	}
	if res = o.apply("keyed 1, key of a refused use", op(subj, 1, "key2", "f2")); !res.Applied || res.Replayed {
		t.Errorf("Store.Apply(the key of a refused use, another fingerprint) = %+v; want applied, not replayed", res)
	}
	// Keys are per subject. The other subject's counter is its own.
	other := e.name("other")
	ot := op(other, 2, "key1", "f9")
	ot.Counters[0].Subject = other
	if res = o.apply("key1 of another subject", ot); !res.Applied || res.Replayed {
		t.Errorf("Store.Apply(key1 of another subject) = %+v; want applied, not replayed", res)
	}
	// A keyed hold replays its hold.
	h := op(subj, 1, "key3", "f1")
	h.Hold = &quota.Hold{ID: e.name("kh1"), ExpiresAt: now.Add(time.Hour)}
	o.apply("keyed hold", h)
	h.Hold = &quota.Hold{ID: e.name("kh2"), ExpiresAt: now.Add(2 * time.Hour)}
	if res = o.apply("keyed hold again", h); !res.Replayed || res.HoldID != e.name("kh1") || !res.HoldExpiresAt.Equal(now.Add(time.Hour)) || res.RecordID != 0 {
		t.Errorf("Store.Apply(keyed hold again) = %+v; want Replayed, HoldID %q expiring at %v", res, e.name("kh1"), now.Add(time.Hour))
	}
	o.wantCounters("after a keyed hold and its replay", now, o.counter(k, 3, 1, 10))
}

func (o *opsCase) testOwnCopies(t *testing.T) {
	// The store keeps its own copy of what it is given, and returns
	// copies of what it keeps.
	e, now := o.e, o.now
	k := o.key("m", quota.PeriodMonth)
	md := []byte(`{"a":1}`)
	r := o.rec("m", 1)
	r.Metadata = md
	o.apply("with metadata", &quota.Op{Counters: []quota.CounterOp{o.cop(k, quota.Unlimited)}, Record: r, Now: now})
	md[2] = 'X'
	r2 := o.rec("m", 2)
	r2.Metadata = []byte(`{"b":2}`)
	o.apply("hold with metadata", &quota.Op{Counters: []quota.CounterOp{o.cop(k, quota.Unlimited)}, Record: r2, Now: now,
		Hold: &quota.Hold{ID: e.name("mh"), ExpiresAt: now.Add(time.Hour)}})
	r2.Metadata[2] = 'X'
	got, err := o.st.Commit(o.ctx, e.name("mh"), 2, now)
	if err != nil {
		t.Fatalf("Store.Commit = %v", err)
	}
	if string(got.Metadata) != `{"b":2}` {
		t.Errorf("Store.Commit returned metadata %s; want {\"b\":2}, as given to Apply", got.Metadata)
	}
	if len(got.Metadata) > 2 {
		got.Metadata[2] = 'Y'
	}
	recs := e.records(t, quota.RecordQuery{Subject: o.subj, Action: "m"})
	if len(recs) != 2 || string(recs[0].Metadata) != `{"a":1}` || string(recs[1].Metadata) != `{"b":2}` {
		t.Fatalf("records = %+v; want metadata {\"a\":1} and {\"b\":2}, as given to Apply", recs)
	}
	recs[0].Metadata[2] = 'Z'
	again := e.records(t, quota.RecordQuery{Subject: o.subj, Action: "m"})
	if string(again[0].Metadata) != `{"a":1}` {
		t.Errorf("records after changing what Records returned: metadata %s; want {\"a\":1}", again[0].Metadata)
	}
}

// testClose checks that after Close every method of the Quota, and of the
// Store, returns an error matching ErrClosed, and that Close is
// idempotent.
func testClose(t *testing.T, s *suite) {
	const action = "api.call"
	cfg := quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{action: {quota.PerMonth(10)}}, "api_access")}}
	setup := func(t *testing.T) (*env, *quota.Quota, string, *quota.Reservation) {
		e := s.env(t)
		q := e.quota(t, cfg)
		subj := e.name("s")
		e.subscribe(t, q, subj, "P")
		consume(t, e.ctx, q, quota.Use{Subject: subj, Action: action, Amount: 1})
		r, err := q.Reserve(e.ctx, quota.Use{Subject: subj, Action: action, Amount: 1})
		if err != nil || r.ID == "" {
			t.Fatalf("Reserve(1) = %+v, %v", r, err)
		}
		return e, q, subj, r
	}
	quotaMethods := func(ctx context.Context, q *quota.Quota, subj, hold string) map[string]error {
		u := quota.Use{Subject: subj, Action: action, Amount: 1}
		errs := make(map[string]error)
		_, errs["Consume"] = q.Consume(ctx, u)
		_, errs["Track"] = q.Track(ctx, u)
		_, errs["Check"] = q.Check(ctx, u)
		_, errs["Reserve"] = q.Reserve(ctx, u)
		_, errs["CommitReservation"] = q.CommitReservation(ctx, hold, 1)
		errs["CancelReservation"] = q.CancelReservation(ctx, hold)
		errs["Subscribe"] = q.Subscribe(ctx, quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor0})
		_, errs["SchedulePlan"] = q.SchedulePlan(ctx, subj, "P")
		_, errs["Subscription"] = q.Subscription(ctx, subj)
		_, errs["Usage"] = q.Usage(ctx, subj)
		_, errs["HasFeature"] = q.HasFeature(ctx, subj, "api_access")
		_, errs["History"] = q.History(ctx, quota.HistoryQuery{Subject: subj})
		return errs
	}

	t.Run("Quota", func(t *testing.T) {
		e, q, subj, r := setup(t)
		before := e.records(t, quota.RecordQuery{Subject: subj})
		for i := range 2 {
			if err := q.Close(); err != nil {
				t.Errorf("Quota.Close() #%d = %v; want nil", i+1, err)
			}
		}
		for name, err := range quotaMethods(e.ctx, q, subj, r.ID) {
			wantErr(t, "closed Quota."+name, err, quota.ErrClosed)
		}
		// The store stays open: the Quota did not open it.
		if diff := cmp.Diff(before, e.records(t, quota.RecordQuery{Subject: subj}), cmpTime, cmpEmpty); diff != "" {
			t.Errorf("records after calls to a closed Quota (-before +after):\n%s", diff)
		}
		if c := e.counters(t, monthOf(subj, action).key)[0]; c.Used != 1 || c.Held != 1 {
			t.Errorf("counter after calls to a closed Quota: {Used %d, Held %d}; want {1, 1}", c.Used, c.Held)
		}
	})

	t.Run("Store", func(t *testing.T) {
		e, q, subj, r := setup(t)
		for i := range 2 {
			if err := e.store.Close(); err != nil {
				t.Errorf("Store.Close() #%d = %v; want nil", i+1, err)
			}
		}
		ctx, st := e.ctx, e.store
		w := monthOf(subj, action)
		op := &quota.Op{Counters: []quota.CounterOp{{CounterKey: w.key, End: w.end, Max: 10}},
			Record: quota.Record{Subject: subj, Action: action, Amount: 1, Time: t0}, Enforce: true, Now: t0}
		errs := make(map[string]error)
		_, errs["Apply"] = st.Apply(ctx, op)
		_, errs["Commit"] = st.Commit(ctx, r.ID, 1, t0)
		errs["Cancel"] = st.Cancel(ctx, r.ID, t0)
		_, errs["Counters"] = st.Counters(ctx, []quota.CounterKey{w.key}, t0)
		errs["PutSubscription"] = st.PutSubscription(ctx, quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor0})
		_, errs["GetSubscription"] = st.GetSubscription(ctx, subj)
		_, errs["Records"] = st.Records(ctx, quota.RecordQuery{Subject: subj})
		for name, err := range errs {
			wantErr(t, "closed Store."+name, err, quota.ErrClosed)
		}
		// Every method of a Quota reaches the store, and so fails.
		for name, err := range quotaMethods(ctx, q, subj, r.ID) {
			wantErr(t, "Quota."+name+" over a closed Store", err, quota.ErrClosed)
		}
	})
}

// testOverflow checks that a use that would take a counter past the range
// of int64 is an error matching ErrOverflow and writes nothing, and that
// counters hold values up to math.MaxInt64.
func testOverflow(t *testing.T, s *suite) {
	e := s.env(t)
	const action, held = "big", "held"
	q := e.quota(t, quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{
		action: {quota.Total(quota.Unlimited)},
		held:   {quota.Total(quota.Unlimited)},
	})}})
	subj := e.name("s")
	e.subscribe(t, q, subj, "P")
	w := allocOf(subj, action)
	op := func(n int64, h *quota.Hold, a string) *quota.Op {
		return &quota.Op{Counters: []quota.CounterOp{{CounterKey: allocOf(subj, a).key, Max: quota.Unlimited}},
			Record: quota.Record{Subject: subj, Action: a, Amount: n, Time: t0}, Hold: h, Enforce: true, Now: t0}
	}
	// Bring the counter to MaxInt64 - MaxAmount + 1 with two large Ops:
	// one more MaxAmount would overflow.
	near := int64(math.MaxInt64 - quota.MaxAmount + 1)
	for _, n := range []int64{1 << 62, near - 1<<62} {
		if res, err := e.store.Apply(e.ctx, op(n, nil, action)); err != nil || !res.Applied {
			t.Fatalf("Store.Apply(%d) = %+v, %v; want applied", n, res, err)
		}
	}
	if c, _ := e.ledger(t, w); c.Used != near {
		t.Fatalf("counter = %d; want %d", c.Used, near)
	}
	u := quota.Use{Subject: subj, Action: action, Amount: quota.MaxAmount}
	_, err := q.Track(e.ctx, u)
	wantErr(t, "Track(MaxAmount) one short of overflow", err, quota.ErrOverflow)
	_, err = q.Consume(e.ctx, u)
	wantErr(t, "Consume(MaxAmount) one short of overflow", err, quota.ErrOverflow)
	_, err = q.Reserve(e.ctx, u)
	wantErr(t, "Reserve(MaxAmount) one short of overflow", err, quota.ErrOverflow)
	if c, recs := e.ledger(t, w); c.Used != near || c.Held != 0 || len(recs) != 2 {
		t.Errorf("after overflows: counter {Used %d, Held %d}, %d records; want {%d, 0}, 2", c.Used, c.Held, len(recs), near)
	}
	u.Amount = quota.MaxAmount - 1
	wantAllowed(t, "Track(MaxAmount-1) up to MaxInt64", track(t, e.ctx, q, u), math.MaxInt64)
	u.Amount = 1
	_, err = q.Track(e.ctx, u)
	wantErr(t, "Track(1) at MaxInt64", err, quota.ErrOverflow)
	u.Amount = -quota.MaxAmount
	wantAllowed(t, "Consume(-MaxAmount) at MaxInt64", consume(t, e.ctx, q, u), math.MaxInt64-quota.MaxAmount)
	if c, recs := e.ledger(t, w); c.Used != math.MaxInt64-quota.MaxAmount || len(recs) != 4 {
		t.Errorf("counter %d, %d records; want %d, 4", c.Used, len(recs), int64(math.MaxInt64-quota.MaxAmount))
	}

	// Held amounts count too.
	hw := allocOf(subj, held)
	if res, err := e.store.Apply(e.ctx, op(math.MaxInt64-5, &quota.Hold{ID: e.name("h"), ExpiresAt: t0.Add(time.Hour)}, held)); err != nil || !res.Applied {
		t.Fatalf("Store.Apply(hold of MaxInt64-5) = %+v, %v; want applied", res, err)
	}
	_, err = e.store.Apply(e.ctx, op(6, nil, held))
	wantErr(t, "Store.Apply(6) with MaxInt64-5 held", err, quota.ErrOverflow)
	_, err = q.Track(e.ctx, quota.Use{Subject: subj, Action: held, Amount: 6})
	wantErr(t, "Track(6) with MaxInt64-5 held", err, quota.ErrOverflow)
	wantAllowed(t, "Track(5) with MaxInt64-5 held", track(t, e.ctx, q, quota.Use{Subject: subj, Action: held, Amount: 5}), math.MaxInt64)
	if c, recs := e.ledger(t, hw); c.Used != 5 || c.Held != math.MaxInt64-5 || len(recs) != 1 {
		t.Errorf("counter {Used %d, Held %d}, %d records; want {5, %d}, 1", c.Used, c.Held, len(recs), int64(math.MaxInt64-5))
	}
}
