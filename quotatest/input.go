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
	cfg := quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{
		badCalls:   {quota.PerMonth(100)},
		badStorage: {quota.Total(1000)},
	}, "api_access")}}
	q := e.quota(t, cfg)
	subj, stranger := e.name("s"), e.name("stranger")
	e.subscribe(t, q, subj, "P")
	track(t, e.ctx, q, quota.Use{Subject: subj, Action: badCalls, Amount: 1})
	b := &badCase{e: e, q: q, cfg: cfg, subj: subj, stranger: stranger}
	// A marker: every record after it was written by this case.
	b.mark = consume(t, e.ctx, q, quota.Use{Subject: subj, Action: badStorage, Amount: 500}).RecordID
	b.keys = []quota.CounterKey{
		monthOf(subj, badCalls).key, allocOf(subj, badStorage).key,
		monthOf(stranger, badCalls).key, allocOf(stranger, badStorage).key,
	}
	b.before = e.counters(t, b.keys...)
	var err error
	b.wantSub, err = e.store.GetSubscription(e.ctx, subj)
	if err != nil {
		t.Fatalf("Store.GetSubscription(%q) = %v", subj, err)
	}

	var cases []badCall
	for _, n := range badNames {
		cases = append(cases, b.badNameCalls(n.what, n.s)...)
	}
	cases = append(cases, b.badAmountCalls()...)
	cases = append(cases, b.otherBadCalls()...)
	for _, c := range cases {
		if err := c.do(e.ctx); !errors.Is(err, c.want) {
			t.Errorf("%s = %v; want an error matching %v", c.what, err, c.want)
		}
		b.nothingWritten(t, c.what)
	}
	cancelled, cancel := context.WithCancel(e.ctx)
	cancel()
	b.badContexts(t, cancelled)
	b.badStoreContexts(t, cancelled)

	// Controls: good input writes, as the checks above would see.
	t.Run("Control", b.testControl)
	t.Run("DefaultPlan", b.testDefaultPlan)
}

// The actions of testBadInput: badCalls has a limit of 100 a month,
// badStorage is an allocation of 1000.
const badCalls, badStorage = "api.call", "storage.bytes"

// badCase is the state of testBadInput that its steps share: a subject
// subscribed to plan P, with a use of each action, and a stranger without
// subscription; and what the store held after those uses.
type badCase struct {
	e              *env
	q              *quota.Quota
	cfg            quota.Config
	subj, stranger string
	mark           int64              // the ID of the last record of the setup
	keys           []quota.CounterKey // the counters of both subjects
	before         []quota.Counter    // the counters of keys
	wantSub        quota.Subscription // subj's subscription
}

// badCall is a call with bad input: do must fail with an error matching
// want.
type badCall struct {
	what string
	do   func(ctx context.Context) error
	want error
}

// nothingWritten fails t if the store changed since the setup: a record
// after the marker, a counter, or a subscription.
func (b *badCase) nothingWritten(t *testing.T, what string) {
	t.Helper()
	e := b.e
	if got := e.since(t, b.mark); len(got) != 0 {
		t.Errorf("%s wrote records %+v; want none", what, got)
	}
	if diff := cmp.Diff(b.before, e.counters(t, b.keys...), cmpTime); diff != "" {
		t.Errorf("%s changed counters (-before +after):\n%s", what, diff)
	}
	got, err := e.store.GetSubscription(e.ctx, b.subj)
	if diff := cmp.Diff(b.wantSub, got, cmpTime, cmpEmpty); diff != "" || err != nil {
		t.Errorf("%s changed the subscription: %v (-before +after):\n%s", what, err, diff)
	}
	if _, err := e.store.GetSubscription(e.ctx, b.stranger); !errors.Is(err, quota.ErrNoSubscription) {
		t.Errorf("%s: Store.GetSubscription(stranger) = %v; want ErrNoSubscription", what, err)
	}
}

// useCalls returns the calls of u through Consume, Track, Check and
// Reserve (unless skipped).
func (b *badCase) useCalls(what string, want error, u quota.Use, skip ...string) []badCall {
	q := b.q
	ops := []struct {
		name string
		do   func(ctx context.Context, u quota.Use) error
	}{
		{"Consume", func(ctx context.Context, u quota.Use) error { _, err := q.Consume(ctx, u); return err }},
		{"Track", func(ctx context.Context, u quota.Use) error { _, err := q.Track(ctx, u); return err }},
		{"Check", func(ctx context.Context, u quota.Use) error { _, err := q.Check(ctx, u); return err }},
		{"Reserve", func(ctx context.Context, u quota.Use) error { _, err := q.Reserve(ctx, u); return err }},
	}
	var cases []badCall
next:
	for _, op := range ops {
		for _, s := range skip {
			if s == op.name {
				continue next
			}
		}
		cases = append(cases, badCall{op.name + " with " + what, func(ctx context.Context) error { return op.do(ctx, u) }, want})
	}
	return cases
}

// use returns subj's use of 1 badCalls, changed by f.
func (b *badCase) use(f func(u *quota.Use)) quota.Use {
	u := quota.Use{Subject: b.subj, Action: badCalls, Amount: 1}
	f(&u)
	return u
}

// badNameCalls returns the calls with the bad name s (one of badNames,
// which is what) in each place a name goes.
func (b *badCase) badNameCalls(what, s string) []badCall {
	q, subj, use := b.q, b.subj, b.use
	var cases []badCall
	uses := func(what string, want error, u quota.Use, skip ...string) {
		cases = append(cases, b.useCalls(what, want, u, skip...)...)
	}
	uses(what+" subject", quota.ErrInvalidSubject, use(func(u *quota.Use) { u.Subject = s }))
	uses(what+" action", quota.ErrInvalidAction, use(func(u *quota.Use) { u.Action = s }))
	if s != "" { // no key and no resource id are fine
		uses(what+" key", quota.ErrInvalidKey, use(func(u *quota.Use) { u.Key = s }))
		uses(what+" resource id", quota.ErrInvalidName, use(func(u *quota.Use) { u.ResourceID = s }))
		cases = append(cases,
			badCall{"History with " + what + " subject", func(ctx context.Context) error {
				_, err := q.History(ctx, quota.HistoryQuery{Subject: s})
				return err
			}, quota.ErrInvalidSubject},
			badCall{"History with " + what + " action", func(ctx context.Context) error {
				_, err := q.History(ctx, quota.HistoryQuery{Action: s})
				return err
			}, quota.ErrInvalidAction},
		)
	}
	cases = append(cases,
		badCall{"Subscribe with " + what + " subject", func(ctx context.Context) error {
			return q.Subscribe(ctx, quota.Subscription{Subject: s, Plan: "P", Anchor: anchor0})
		}, quota.ErrInvalidSubject},
		badCall{"SchedulePlan with " + what + " subject", func(ctx context.Context) error {
			_, err := q.SchedulePlan(ctx, s, "P")
			return err
		}, quota.ErrInvalidSubject},
		badCall{"Subscription with " + what + " subject", func(ctx context.Context) error {
			_, err := q.Subscription(ctx, s)
			return err
		}, quota.ErrInvalidSubject},
		badCall{"Usage with " + what + " subject", func(ctx context.Context) error {
			_, err := q.Usage(ctx, s)
			return err
		}, quota.ErrInvalidSubject},
		badCall{"HasFeature with " + what + " subject", func(ctx context.Context) error {
			_, err := q.HasFeature(ctx, s, "api_access")
			return err
		}, quota.ErrInvalidSubject},
		badCall{"HasFeature with " + what + " feature", func(ctx context.Context) error {
			_, err := q.HasFeature(ctx, subj, s)
			return err
		}, quota.ErrInvalidName},
	)
	if s != "" { // no time zone means UTC
		cases = append(cases, badCall{"Subscribe with " + what + " time zone", func(ctx context.Context) error {
			return q.Subscribe(ctx, quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor0, TimeZone: s})
		}, quota.ErrInvalidSubscription})
	}
	return cases
}

// badAmountCalls returns the uses with a bad amount, an unknown action,
// no subscription or bad metadata.
func (b *badCase) badAmountCalls() []badCall {
	use, stranger := b.use, b.stranger
	var cases []badCall
	uses := func(what string, want error, u quota.Use, skip ...string) {
		cases = append(cases, b.useCalls(what, want, u, skip...)...)
	}
	amount := func(action string, n int64) quota.Use {
		return use(func(u *quota.Use) { u.Action, u.Amount = action, n })
	}
	uses("zero amount", quota.ErrInvalidAmount, amount(badCalls, 0))
	uses("zero amount on an allocation", quota.ErrInvalidAmount, amount(badStorage, 0))
	uses("negative amount on a counter", quota.ErrInvalidAmount, amount(badCalls, -1))
	uses("MinInt64 on a counter", quota.ErrInvalidAmount, amount(badCalls, math.MinInt64))
	uses("MaxAmount+1", quota.ErrInvalidAmount, amount(badCalls, quota.MaxAmount+1))
	uses("MaxInt64", quota.ErrInvalidAmount, amount(badCalls, math.MaxInt64))
	uses("MaxAmount+1 on an allocation", quota.ErrInvalidAmount, amount(badStorage, quota.MaxAmount+1))
	uses("-MaxAmount-1 on an allocation", quota.ErrInvalidAmount, amount(badStorage, -quota.MaxAmount-1), "Reserve")
	uses("MinInt64 on an allocation", quota.ErrInvalidAmount, amount(badStorage, math.MinInt64), "Reserve")
	uses("negative amount", quota.ErrInvalidAmount, amount(badStorage, -1), "Consume", "Track", "Check")
	uses("unknown action", quota.ErrUnknownAction, amount("no.such.action", 1))
	uses("no subscription", quota.ErrNoSubscription, use(func(u *quota.Use) { u.Subject = stranger }))
	uses("no subscription, on an allocation", quota.ErrNoSubscription, use(func(u *quota.Use) { u.Subject, u.Action = stranger, badStorage }))
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
	return cases
}

// otherBadCalls returns the other calls with bad input: reservations
// that do not exist, plans, time zones and overrides that do not fit, and
// a missing subscription or store.
func (b *badCase) otherBadCalls() []badCall {
	q, cfg, subj, stranger := b.q, b.cfg, b.subj, b.stranger
	return []badCall{
		{"CommitReservation of 0", func(ctx context.Context) error {
			_, err := q.CommitReservation(ctx, "no-such-hold", 0)
			return err
		}, quota.ErrInvalidAmount},
		{"CommitReservation of MaxAmount+1", func(ctx context.Context) error {
			_, err := q.CommitReservation(ctx, "no-such-hold", quota.MaxAmount+1)
			return err
		}, quota.ErrInvalidAmount},
		{"CommitReservation of no ID", func(ctx context.Context) error {
			_, err := q.CommitReservation(ctx, "", 1)
			return err
		}, quota.ErrReservationNotFound},
		{"CommitReservation of an unknown ID", func(ctx context.Context) error {
			_, err := q.CommitReservation(ctx, "no-such-hold", 1)
			return err
		}, quota.ErrReservationNotFound},
		{"CancelReservation of no ID", func(ctx context.Context) error { return q.CancelReservation(ctx, "") }, quota.ErrReservationNotFound},
		{"CancelReservation of an unknown ID", func(ctx context.Context) error { return q.CancelReservation(ctx, "no-such-hold") }, quota.ErrReservationNotFound},
		{"Subscribe to an unknown plan", func(ctx context.Context) error {
			return q.Subscribe(ctx, quota.Subscription{Subject: subj, Plan: "NOPE", Anchor: anchor0})
		}, quota.ErrUnknownPlan},
		{"Subscribe a stranger to an unknown plan", func(ctx context.Context) error {
			return q.Subscribe(ctx, quota.Subscription{Subject: stranger, Plan: "NOPE"})
		}, quota.ErrUnknownPlan},
		{"Subscribe with an unknown time zone", func(ctx context.Context) error {
			return q.Subscribe(ctx, quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor0, TimeZone: "Mars/Olympus_Mons"})
		}, quota.ErrInvalidSubscription},
		{"Subscribe with an override of an unknown action", func(ctx context.Context) error {
			return q.Subscribe(ctx, quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor0,
				Overrides: map[string][]quota.Limit{"no.such.action": {quota.PerDay(1)}}})
		}, quota.ErrUnknownAction},
		{"Subscribe with a negative override", func(ctx context.Context) error {
			return q.Subscribe(ctx, quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor0,
				Overrides: map[string][]quota.Limit{badCalls: {quota.PerDay(-5)}}})
		}, quota.ErrInvalidSubscription},
		{"Subscribe with an empty override", func(ctx context.Context) error {
			return q.Subscribe(ctx, quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor0,
				Overrides: map[string][]quota.Limit{badCalls: {}}})
		}, quota.ErrInvalidSubscription},
		{"SchedulePlan of an unknown plan", func(ctx context.Context) error {
			_, err := q.SchedulePlan(ctx, subj, "NOPE")
			return err
		}, quota.ErrUnknownPlan},
		{"SchedulePlan without subscription", func(ctx context.Context) error {
			_, err := q.SchedulePlan(ctx, stranger, "P")
			return err
		}, quota.ErrNoSubscription},
		{"Subscription without subscription", func(ctx context.Context) error {
			_, err := q.Subscription(ctx, stranger)
			return err
		}, quota.ErrNoSubscription},
		{"Usage without subscription", func(ctx context.Context) error {
			_, err := q.Usage(ctx, stranger)
			return err
		}, quota.ErrNoSubscription},
		{"HasFeature without subscription", func(ctx context.Context) error {
			_, err := q.HasFeature(ctx, stranger, "api_access")
			return err
		}, quota.ErrNoSubscription},
		{"New with a nil store", func(context.Context) error {
			_, err := quota.New(nil, cfg)
			return err
		}, quota.ErrNilStore},
	}
}

// badContexts checks that every method, with arguments that would write,
// fails on a nil or a cancelled context and writes nothing.
func (b *badCase) badContexts(t *testing.T, cancelled context.Context) {
	q, subj, stranger := b.q, b.subj, b.stranger
	good := quota.Use{Subject: subj, Action: badCalls, Amount: 1, Key: "k"}
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
	for _, m := range methods {
		wantErr(t, m.name+"(nil context)", m.do(nilCtx), quota.ErrNilContext)
		b.nothingWritten(t, m.name+"(nil context)")
		wantErr(t, m.name+"(cancelled context)", m.do(cancelled), context.Canceled)
		b.nothingWritten(t, m.name+"(cancelled context)")
	}
}

// badStoreContexts checks that the store itself, given a cancelled
// context, fails and writes nothing.
func (b *badCase) badStoreContexts(t *testing.T, cancelled context.Context) {
	e, subj, stranger, keys := b.e, b.subj, b.stranger, b.keys
	op := &quota.Op{
		Counters: []quota.CounterOp{{CounterKey: monthOf(subj, badCalls).key, End: monthOf(subj, badCalls).end, Max: 100}},
		Record:   quota.Record{Subject: subj, Action: badCalls, Amount: 1, Time: t0},
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
		b.nothingWritten(t, "Store."+m.name+"(cancelled context)")
	}
	if c := e.counters(t, keys[0])[0]; c.Held != 0 {
		t.Errorf("Store.Apply of a hold with a cancelled context: Held %d; want 0", c.Held)
	}
}

func (b *badCase) testControl(t *testing.T) {
	e, q, subj := b.e, b.q, b.subj
	d := consume(t, e.ctx, q, quota.Use{Subject: subj, Action: badCalls, Amount: 2})
	if got := e.since(t, b.mark); len(got) != 1 || got[0].ID != d.RecordID {
		t.Errorf("Consume(2) wrote %+v; want one record with ID %d", got, d.RecordID)
	}
	if c := e.counters(t, b.keys[0])[0]; c.Used != b.before[0].Used+2 {
		t.Errorf("Consume(2): counter %d; want %d", c.Used, b.before[0].Used+2)
	}
	// Boundaries that are valid: a name of exactly MaxNameLen bytes,
	// metadata of exactly MaxMetadataLen bytes, MaxAmount.
	long := strings.Repeat("😀", quota.MaxNameLen/4)
	md := map[string]any{"x": strings.Repeat("a", quota.MaxMetadataLen-8)}
	d = track(t, e.ctx, q, quota.Use{Subject: subj, Action: badCalls, Amount: quota.MaxAmount, Key: long, ResourceID: long, Metadata: md})
	if !d.Allowed || d.RecordID == 0 {
		t.Errorf("Track(MaxAmount, 256-byte key and resource id, 16 KiB metadata) = %+v; want allowed and recorded", d)
	}
	wantAllowed(t, "Check(-500) of 500 on an allocation", check(t, e.ctx, q, quota.Use{Subject: subj, Action: badStorage, Amount: -500}), 500)
}

func (b *badCase) testDefaultPlan(t *testing.T) {
	e := b.e
	// With a default plan, a subject without subscription works, on
	// calendar months in UTC, and is not subscribed by it.
	cfg := b.cfg
	cfg.DefaultPlan = "P"
	q := e.quota(t, cfg)
	subj := e.name("default")
	d := consume(t, e.ctx, q, quota.Use{Subject: subj, Action: badCalls, Amount: 3})
	wantAllowed(t, "Consume(3) on the default plan", d, 3)
	if d.Plan != "P" || !d.PeriodStart.Equal(anchor0) {
		t.Errorf("Consume(3) on the default plan: plan %q, window from %v; want P, %v", d.Plan, d.PeriodStart, anchor0)
	}
	if c, recs := e.ledger(t, monthOf(subj, badCalls)); c.Used != 3 || len(recs) != 1 {
		t.Errorf("default plan: counter %d, %d records; want 3, 1", c.Used, len(recs))
	}
	if _, err := q.Subscription(e.ctx, subj); !errors.Is(err, quota.ErrNoSubscription) {
		t.Errorf("Subscription() of a subject on the default plan = %v; want ErrNoSubscription", err)
	}
	cfg.DefaultPlan = "NOPE"
	if _, err := quota.New(e.store, cfg); !errors.Is(err, quota.ErrUnknownPlan) {
		t.Errorf("New(DefaultPlan: unknown) = %v; want ErrUnknownPlan", err)
	}
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
