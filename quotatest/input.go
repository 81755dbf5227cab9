package quotatest

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/quotakit/quota"
)

// badNames are names that break quota.ValidateName, each with what is
// wrong. The empty name is first.
var badNames = []struct{ what, s string }{
	{"empty", ""},
	{"257 bytes", strings.Repeat("a", quota.MaxNameLen+1)},
	{"257 bytes of emoji and a", strings.Repeat("😀", quota.MaxNameLen/4) + "a"},
	{"invalid UTF-8", "ab\xffcd"},
	{"truncated UTF-8", "ab\xe2\x82"},
	{"NUL", "a\x00b"},
	{"newline", "a\nb"},
	{"tab", "a\tb"},
	{"escape", "a\x1b[31mb"},
	{"DEL", "a\x7fb"},
	{"C1 control", "a\u0085b"},
}

// testBadInput checks invariant 5: every class of bad input gets its typed
// error and writes nothing (no record, no counter change, no
// subscription); and invariant 7's other half: a nil or cancelled context
// is an error.
func testBadInput(t *testing.T, s *suite) {
	e := s.env(t)
	const calls, storage = "api.call", "storage.bytes"
	cfg := quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{
		calls:   {quota.PerMonth(100)},
		storage: {quota.Total(1000)},
	}, "api_access")}}
	q := e.quota(t, cfg)
	subj, stranger := e.name("s"), e.name("stranger")
	e.subscribe(t, q, subj, "P")
	track(t, e.ctx, q, quota.Use{Subject: subj, Action: calls, Amount: 1})
	// A marker: every record after it was written by this case.
	mark := consume(t, e.ctx, q, quota.Use{Subject: subj, Action: storage, Amount: 500}).RecordID
	keys := []quota.CounterKey{
		monthOf(subj, calls).key, allocOf(subj, storage).key,
		monthOf(stranger, calls).key, allocOf(stranger, storage).key,
	}
	before := e.counters(t, keys...)
	wantSub, err := e.store.GetSubscription(e.ctx, subj)
	if err != nil {
		t.Fatalf("Store.GetSubscription(%q) = %v", subj, err)
	}
	nothingWritten := func(what string) {
		t.Helper()
		if got := e.since(t, mark); len(got) != 0 {
			t.Errorf("%s wrote records %+v; want none", what, got)
		}
		if diff := cmp.Diff(before, e.counters(t, keys...), cmpTime); diff != "" {
			t.Errorf("%s changed counters (-before +after):\n%s", what, diff)
		}
		got, err := e.store.GetSubscription(e.ctx, subj)
		if diff := cmp.Diff(wantSub, got, cmpTime, cmpEmpty); diff != "" || err != nil {
			t.Errorf("%s changed the subscription: %v (-before +after):\n%s", what, err, diff)
		}
		if _, err := e.store.GetSubscription(e.ctx, stranger); !errors.Is(err, quota.ErrNoSubscription) {
			t.Errorf("%s: Store.GetSubscription(stranger) = %v; want ErrNoSubscription", what, err)
		}
	}
	type bad struct {
		what string
		do   func(ctx context.Context) error
		want error
	}
	var cases []bad
	// uses adds u to cases through Consume, Track, Check and Reserve
	// (unless skipped).
	uses := func(what string, want error, u quota.Use, skip ...string) {
		ops := []struct {
			name string
			do   func(ctx context.Context, u quota.Use) error
		}{
			{"Consume", func(ctx context.Context, u quota.Use) error { _, err := q.Consume(ctx, u); return err }},
			{"Track", func(ctx context.Context, u quota.Use) error { _, err := q.Track(ctx, u); return err }},
			{"Check", func(ctx context.Context, u quota.Use) error { _, err := q.Check(ctx, u); return err }},
			{"Reserve", func(ctx context.Context, u quota.Use) error { _, err := q.Reserve(ctx, u); return err }},
		}
	next:
		for _, op := range ops {
			for _, s := range skip {
				if s == op.name {
					continue next
				}
			}
			cases = append(cases, bad{op.name + " with " + what, func(ctx context.Context) error { return op.do(ctx, u) }, want})
		}
	}
	use := func(f func(u *quota.Use)) quota.Use {
		u := quota.Use{Subject: subj, Action: calls, Amount: 1}
		f(&u)
		return u
	}

	for _, n := range badNames {
		uses(n.what+" subject", quota.ErrInvalidSubject, use(func(u *quota.Use) { u.Subject = n.s }))
		uses(n.what+" action", quota.ErrInvalidAction, use(func(u *quota.Use) { u.Action = n.s }))
		if n.s != "" { // no key and no resource id are fine
			uses(n.what+" key", quota.ErrInvalidKey, use(func(u *quota.Use) { u.Key = n.s }))
			uses(n.what+" resource id", quota.ErrInvalidName, use(func(u *quota.Use) { u.ResourceID = n.s }))
			cases = append(cases,
				bad{"History with " + n.what + " subject", func(ctx context.Context) error {
					_, err := q.History(ctx, quota.HistoryQuery{Subject: n.s})
					return err
				}, quota.ErrInvalidSubject},
				bad{"History with " + n.what + " action", func(ctx context.Context) error {
					_, err := q.History(ctx, quota.HistoryQuery{Action: n.s})
					return err
				}, quota.ErrInvalidAction},
			)
		}
		cases = append(cases,
			bad{"Subscribe with " + n.what + " subject", func(ctx context.Context) error {
				return q.Subscribe(ctx, quota.Subscription{Subject: n.s, Plan: "P", Anchor: anchor0})
			}, quota.ErrInvalidSubject},
			bad{"SchedulePlan with " + n.what + " subject", func(ctx context.Context) error {
				_, err := q.SchedulePlan(ctx, n.s, "P")
				return err
			}, quota.ErrInvalidSubject},
			bad{"Subscription with " + n.what + " subject", func(ctx context.Context) error {
				_, err := q.Subscription(ctx, n.s)
				return err
			}, quota.ErrInvalidSubject},
			bad{"Usage with " + n.what + " subject", func(ctx context.Context) error {
				_, err := q.Usage(ctx, n.s)
				return err
			}, quota.ErrInvalidSubject},
			bad{"HasFeature with " + n.what + " subject", func(ctx context.Context) error {
				_, err := q.HasFeature(ctx, n.s, "api_access")
				return err
			}, quota.ErrInvalidSubject},
			bad{"HasFeature with " + n.what + " feature", func(ctx context.Context) error {
				_, err := q.HasFeature(ctx, subj, n.s)
				return err
			}, quota.ErrInvalidName},
		)
		if n.s != "" { // no time zone means UTC
			cases = append(cases, bad{"Subscribe with " + n.what + " time zone", func(ctx context.Context) error {
				return q.Subscribe(ctx, quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor0, TimeZone: n.s})
			}, quota.ErrInvalidSubscription})
		}
	}

	amount := func(action string, n int64) quota.Use {
		return use(func(u *quota.Use) { u.Action, u.Amount = action, n })
	}
	uses("zero amount", quota.ErrInvalidAmount, amount(calls, 0))
	uses("zero amount on an allocation", quota.ErrInvalidAmount, amount(storage, 0))
	uses("negative amount on a counter", quota.ErrInvalidAmount, amount(calls, -1))
	uses("MinInt64 on a counter", quota.ErrInvalidAmount, amount(calls, math.MinInt64))
	uses("MaxAmount+1", quota.ErrInvalidAmount, amount(calls, quota.MaxAmount+1))
	uses("MaxInt64", quota.ErrInvalidAmount, amount(calls, math.MaxInt64))
	uses("MaxAmount+1 on an allocation", quota.ErrInvalidAmount, amount(storage, quota.MaxAmount+1))
	uses("-MaxAmount-1 on an allocation", quota.ErrInvalidAmount, amount(storage, -quota.MaxAmount-1), "Reserve")
	uses("MinInt64 on an allocation", quota.ErrInvalidAmount, amount(storage, math.MinInt64), "Reserve")
	uses("negative amount", quota.ErrInvalidAmount, amount(storage, -1), "Consume", "Track", "Check")
	uses("unknown action", quota.ErrUnknownAction, amount("no.such.action", 1))
	uses("no subscription", quota.ErrNoSubscription, use(func(u *quota.Use) { u.Subject = stranger }))
	uses("no subscription, on an allocation", quota.ErrNoSubscription, use(func(u *quota.Use) { u.Subject, u.Action = stranger, storage }))
	for what, md := range map[string]map[string]any{
		"channel metadata":       {"c": make(chan int)},
		"function metadata":      {"f": func() {}},
		"NaN metadata":           {"x": math.NaN()},
		"infinite metadata":      {"x": math.Inf(-1)},
		"nested NaN metadata":    {"x": []any{1, map[string]any{"y": math.NaN()}}},
		"metadata over the size": {"x": strings.Repeat("a", quota.MaxMetadataLen-7)}, // {"x":"..."} is 8 bytes more
	} {
		uses(what, quota.ErrInvalidMetadata, use(func(u *quota.Use) { u.Metadata = md }))
	}
	cases = append(cases,
		bad{"CommitReservation of 0", func(ctx context.Context) error {
			_, err := q.CommitReservation(ctx, "no-such-hold", 0)
			return err
		}, quota.ErrInvalidAmount},
		bad{"CommitReservation of MaxAmount+1", func(ctx context.Context) error {
			_, err := q.CommitReservation(ctx, "no-such-hold", quota.MaxAmount+1)
			return err
		}, quota.ErrInvalidAmount},
		bad{"CommitReservation of no ID", func(ctx context.Context) error {
			_, err := q.CommitReservation(ctx, "", 1)
			return err
		}, quota.ErrReservationNotFound},
		bad{"CommitReservation of an unknown ID", func(ctx context.Context) error {
			_, err := q.CommitReservation(ctx, "no-such-hold", 1)
			return err
		}, quota.ErrReservationNotFound},
		bad{"CancelReservation of no ID", func(ctx context.Context) error { return q.CancelReservation(ctx, "") }, quota.ErrReservationNotFound},
		bad{"CancelReservation of an unknown ID", func(ctx context.Context) error { return q.CancelReservation(ctx, "no-such-hold") }, quota.ErrReservationNotFound},
		bad{"Subscribe to an unknown plan", func(ctx context.Context) error {
			return q.Subscribe(ctx, quota.Subscription{Subject: subj, Plan: "NOPE", Anchor: anchor0})
		}, quota.ErrUnknownPlan},
		bad{"Subscribe a stranger to an unknown plan", func(ctx context.Context) error {
			return q.Subscribe(ctx, quota.Subscription{Subject: stranger, Plan: "NOPE"})
		}, quota.ErrUnknownPlan},
		bad{"Subscribe with an unknown time zone", func(ctx context.Context) error {
			return q.Subscribe(ctx, quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor0, TimeZone: "Mars/Olympus_Mons"})
		}, quota.ErrInvalidSubscription},
		bad{"Subscribe with an override of an unknown action", func(ctx context.Context) error {
			return q.Subscribe(ctx, quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor0,
				Overrides: map[string][]quota.Limit{"no.such.action": {quota.PerDay(1)}}})
		}, quota.ErrUnknownAction},
		bad{"Subscribe with a negative override", func(ctx context.Context) error {
			return q.Subscribe(ctx, quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor0,
				Overrides: map[string][]quota.Limit{calls: {quota.PerDay(-5)}}})
		}, quota.ErrInvalidSubscription},
		bad{"Subscribe with an empty override", func(ctx context.Context) error {
			return q.Subscribe(ctx, quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor0,
				Overrides: map[string][]quota.Limit{calls: {}}})
		}, quota.ErrInvalidSubscription},
		bad{"SchedulePlan of an unknown plan", func(ctx context.Context) error {
			_, err := q.SchedulePlan(ctx, subj, "NOPE")
			return err
		}, quota.ErrUnknownPlan},
		bad{"SchedulePlan without subscription", func(ctx context.Context) error {
			_, err := q.SchedulePlan(ctx, stranger, "P")
			return err
		}, quota.ErrNoSubscription},
		bad{"Subscription without subscription", func(ctx context.Context) error {
			_, err := q.Subscription(ctx, stranger)
			return err
		}, quota.ErrNoSubscription},
		bad{"Usage without subscription", func(ctx context.Context) error {
			_, err := q.Usage(ctx, stranger)
			return err
		}, quota.ErrNoSubscription},
		bad{"HasFeature without subscription", func(ctx context.Context) error {
			_, err := q.HasFeature(ctx, stranger, "api_access")
			return err
		}, quota.ErrNoSubscription},
		bad{"New with a nil store", func(context.Context) error {
			_, err := quota.New(nil, cfg)
			return err
		}, quota.ErrNilStore},
	)
	for _, c := range cases {
		if err := c.do(e.ctx); !errors.Is(err, c.want) {
			t.Errorf("%s = %v; want an error matching %v", c.what, err, c.want)
		}
		nothingWritten(c.what)
	}

	// Every method, with arguments that would write, fails on a nil or a
	// cancelled context and writes nothing.
	good := quota.Use{Subject: subj, Action: calls, Amount: 1, Key: "k"}
	methods := []struct {
		name string
		do   func(ctx context.Context) error
	}{
		{"Consume", func(ctx context.Context) error { _, err := q.Consume(ctx, good); return err }},
		{"Track", func(ctx context.Context) error { _, err := q.Track(ctx, good); return err }},
		{"Check", func(ctx context.Context) error { _, err := q.Check(ctx, good); return err }},
		{"Reserve", func(ctx context.Context) error { _, err := q.Reserve(ctx, good); return err }},
		{"CommitReservation", func(ctx context.Context) error { _, err := q.CommitReservation(ctx, "no-such-hold", 1); return err }},
		{"CancelReservation", func(ctx context.Context) error { return q.CancelReservation(ctx, "no-such-hold") }},
		{"Subscribe", func(ctx context.Context) error {
			return q.Subscribe(ctx, quota.Subscription{Subject: stranger, Plan: "P", Anchor: anchor0})
		}},
		{"SchedulePlan", func(ctx context.Context) error { _, err := q.SchedulePlan(ctx, subj, "P"); return err }},
		{"Subscription", func(ctx context.Context) error { _, err := q.Subscription(ctx, subj); return err }},
		{"Usage", func(ctx context.Context) error { _, err := q.Usage(ctx, subj); return err }},
		{"HasFeature", func(ctx context.Context) error { _, err := q.HasFeature(ctx, subj, "api_access"); return err }},
		{"History", func(ctx context.Context) error {
			_, err := q.History(ctx, quota.HistoryQuery{Subject: subj})
			return err
		}},
	}
	var nilCtx context.Context
	cancelled, cancel := context.WithCancel(e.ctx)
	cancel()
	for _, m := range methods {
		wantErr(t, m.name+"(nil context)", m.do(nilCtx), quota.ErrNilContext)
		nothingWritten(m.name + "(nil context)")
		wantErr(t, m.name+"(cancelled context)", m.do(cancelled), context.Canceled)
		nothingWritten(m.name + "(cancelled context)")
	}

	// The store itself, given a cancelled context, fails and writes
	// nothing.
	op := &quota.Op{
		Counters: []quota.CounterOp{{CounterKey: monthOf(subj, calls).key, End: monthOf(subj, calls).end, Max: 100}},
		Record:   quota.Record{Subject: subj, Action: calls, Amount: 1, Time: t0},
		Enforce:  true,
		Now:      t0,
	}
	store := []struct {
		name string
		do   func(ctx context.Context) error
	}{
		{"Apply", func(ctx context.Context) error { _, err := e.store.Apply(ctx, op); return err }},
		{"Apply of a hold", func(ctx context.Context) error {
			op := *op
			op.Hold = &quota.Hold{ID: e.name("hold"), ExpiresAt: t0.Add(time.Hour)}
			_, err := e.store.Apply(ctx, &op)
			return err
		}},
		{"Counters", func(ctx context.Context) error { _, err := e.store.Counters(ctx, keys, t0); return err }},
		{"PutSubscription", func(ctx context.Context) error {
			return e.store.PutSubscription(ctx, quota.Subscription{Subject: stranger, Plan: "P", Anchor: anchor0})
		}},
		{"GetSubscription", func(ctx context.Context) error { _, err := e.store.GetSubscription(ctx, subj); return err }},
		{"Records", func(ctx context.Context) error {
			_, err := e.store.Records(ctx, quota.RecordQuery{Subject: subj})
			return err
		}},
	}
	for _, m := range store {
		wantErr(t, "Store."+m.name+"(cancelled context)", m.do(cancelled), context.Canceled)
		nothingWritten("Store." + m.name + "(cancelled context)")
	}
	if c := e.counters(t, keys[0])[0]; c.Held != 0 {
		t.Errorf("Store.Apply of a hold with a cancelled context: Held %d; want 0", c.Held)
	}

	// Controls: good input writes, as the checks above would see.
	t.Run("Control", func(t *testing.T) {
		d := consume(t, e.ctx, q, quota.Use{Subject: subj, Action: calls, Amount: 2})
		if got := e.since(t, mark); len(got) != 1 || got[0].ID != d.RecordID {
			t.Errorf("Consume(2) wrote %+v; want one record with ID %d", got, d.RecordID)
		}
		if c := e.counters(t, keys[0])[0]; c.Used != before[0].Used+2 {
			t.Errorf("Consume(2): counter %d; want %d", c.Used, before[0].Used+2)
		}
		// Boundaries that are valid: a name of exactly MaxNameLen bytes,
		// metadata of exactly MaxMetadataLen bytes, MaxAmount.
		long := strings.Repeat("😀", quota.MaxNameLen/4)
		md := map[string]any{"x": strings.Repeat("a", quota.MaxMetadataLen-8)}
		d = track(t, e.ctx, q, quota.Use{Subject: subj, Action: calls, Amount: quota.MaxAmount, Key: long, ResourceID: long, Metadata: md})
		if !d.Allowed || d.RecordID == 0 {
			t.Errorf("Track(MaxAmount, 256-byte key and resource id, 16 KiB metadata) = %+v; want allowed and recorded", d)
		}
		wantAllowed(t, "Check(-500) of 500 on an allocation", check(t, e.ctx, q, quota.Use{Subject: subj, Action: storage, Amount: -500}), 500)
	})

	t.Run("DefaultPlan", func(t *testing.T) {
		// With a default plan, a subject without subscription works, on
		// calendar months in UTC, and is not subscribed by it.
		cfg := cfg
		cfg.DefaultPlan = "P"
		q := e.quota(t, cfg)
		subj := e.name("default")
		d := consume(t, e.ctx, q, quota.Use{Subject: subj, Action: calls, Amount: 3})
		wantAllowed(t, "Consume(3) on the default plan", d, 3)
		if d.Plan != "P" || !d.PeriodStart.Equal(anchor0) {
			t.Errorf("Consume(3) on the default plan: plan %q, window from %v; want P, %v", d.Plan, d.PeriodStart, anchor0)
		}
		if c, recs := e.ledger(t, monthOf(subj, calls)); c.Used != 3 || len(recs) != 1 {
			t.Errorf("default plan: counter %d, %d records; want 3, 1", c.Used, len(recs))
		}
		if _, err := q.Subscription(e.ctx, subj); !errors.Is(err, quota.ErrNoSubscription) {
			t.Errorf("Subscription() of a subject on the default plan = %v; want ErrNoSubscription", err)
		}
		cfg.DefaultPlan = "NOPE"
		if _, err := quota.New(e.store, cfg); !errors.Is(err, quota.ErrUnknownPlan) {
			t.Errorf("New(DefaultPlan: unknown) = %v; want ErrUnknownPlan", err)
		}
	})
}

// testCancelledContexts checks invariant 2 when contexts are cancelled in
// flight: a call either fails with context.Canceled or gives a decision,
// and whatever the store did, the ledger balances and the limit holds.
func testCancelledContexts(t *testing.T, s *suite) {
	e := s.env(t)
	const limit, goroutines, perG = 100, 16, 12
	const action = "api.call"
	q := e.quota(t, quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{action: {quota.PerMonth(limit)}})}})
	subj := e.name("s")
	e.subscribe(t, q, subj, "P")
	outs := race(goroutines, perG, func(g, i int) outcome {
		ctx, cancel := context.WithCancel(e.ctx)
		var wg sync.WaitGroup
		switch (g + i) % 3 {
		case 0:
			cancel()
		case 1:
			wg.Go(cancel) // races the call
		}
		u := quota.Use{Subject: subj, Action: action, Amount: 1}
		d, err := q.Consume(ctx, u)
		wg.Wait()
		cancel()
		return outcome{use: u, d: d, err: err}
	})
	var cancelled []outcome
	var rest []outcome
	for _, o := range outs {
		if o.err != nil && errors.Is(o.err, context.Canceled) {
			cancelled = append(cancelled, o)
		} else {
			rest = append(rest, o)
		}
	}
	c := tally(rest)
	reportRace(t, rest, c)
	if len(cancelled) < goroutines*perG/3 {
		t.Errorf("%d calls cancelled; want at least the %d cancelled before the call", len(cancelled), goroutines*perG/3)
	}
	cnt, recs := e.ledger(t, monthOf(subj, action))
	_, byID := sumAmounts(recs)
	for id := range c.byRecord {
		if _, ok := byID[id]; !ok {
			t.Errorf("allowed use with RecordID %d is not in the ledger", id)
		}
	}
	// A call cancelled in flight may have been applied; no other.
	if n := len(recs); n < c.allowed || n > c.allowed+len(cancelled) || cnt.Used > limit {
		t.Errorf("%d records, counter %d; want %d to %d records (allowed, plus cancelled in flight), at most %d",
			n, cnt.Used, c.allowed, c.allowed+len(cancelled), limit)
	}
}
