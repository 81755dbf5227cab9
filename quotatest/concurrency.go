package quotatest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/quotakit/quota"
)

// testConsumeConcurrency checks invariant 1 (no overshoot) and 2 (the
// ledger balances) under 64 goroutines that Consume 1 at once.
func testConsumeConcurrency(t *testing.T, s *suite) {
	e := s.env(t)
	const limit, goroutines, perG = 5000, 64, 200
	const action = "api.call"
	q := e.quota(t, quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{action: {quota.PerMonth(limit)}})}})
	subj := e.name("s")
	e.subscribe(t, q, subj, "P")

	c, outs := consumeRace(e.ctx, q, subj, action, goroutines, perG)
	reportRace(t, outs, c)
	if c.allowed != limit || c.denied != goroutines*perG-limit || c.errors != 0 {
		t.Errorf("%d goroutines x %d Consume(1) against %d a month: %d allowed, %d denied, %d errors; want %d, %d, 0",
			goroutines, perG, limit, c.allowed, c.denied, c.errors, limit, goroutines*perG-limit)
	}

	// Each use was applied atomically: the counters returned with the
	// allowed uses, taken right after each, show every total from 1 to
	// limit exactly once.
	seen := make(map[int64]int, limit)
	for _, o := range outs {
		if o.err == nil && o.d.Allowed {
			seen[o.d.Used]++
		}
	}
	bad := 0
	for used := int64(1); used <= limit; used++ {
		if seen[used] != 1 {
			if bad++; bad <= 5 {
				t.Errorf("%d allowed Consume calls reported Used %d; want exactly 1 (each use applied atomically)", seen[used], used)
			}
		}
	}

	cnt, recs := e.ledger(t, monthOf(subj, action))
	want := quota.Counter{CounterKey: monthOf(subj, action).key, End: monthOf(subj, action).end, Used: limit, Max: limit}
	if diff := cmp.Diff(want, cnt, cmpTime); diff != "" {
		t.Errorf("counter after the race (-want +got):\n%s", diff)
	}
	_, byID := sumAmounts(recs)
	if diff := cmp.Diff(c.byRecord, byID); diff != "" {
		t.Errorf("records: amounts by ID (-granted +ledger):\n%s", diff)
	}
	rep, err := q.Usage(e.ctx, subj)
	if err != nil {
		t.Fatalf("Usage(%q) = %v", subj, err)
	}
	if len(rep.Actions) != 1 || rep.Actions[0].Used != limit {
		t.Errorf("Usage(%q).Actions = %+v; want one action with Used %d", subj, rep.Actions, limit)
	}
}

// testConsumeVariableAmounts checks invariants 1 and 2 with amounts of 1 to
// 50 from 32 goroutines: nothing granted past the limit, every denial
// justified by the figures it reports, the counter the sum of what was
// granted and of the ledger.
func testConsumeVariableAmounts(t *testing.T, s *suite) {
	e := s.env(t)
	const limit, goroutines, perG, maxAmount = 10_000, 32, 40, 50
	const action = "ai.tokens"
	q := e.quota(t, quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{action: {quota.PerMonth(limit)}})}})
	subj := e.name("s")
	e.subscribe(t, q, subj, "P")

	amounts := make([][]int64, goroutines)
	var demand int64
	for g := range amounts {
		r := rand.New(rand.NewPCG(1, uint64(g)))
		amounts[g] = make([]int64, perG)
		for i := range amounts[g] {
			amounts[g][i] = 1 + r.Int64N(maxAmount)
			demand += amounts[g][i]
		}
	}
	if demand <= limit {
		t.Fatalf("test bug: demand %d does not exceed the limit %d", demand, limit)
	}
	outs := race(goroutines, perG, func(g, i int) outcome {
		u := quota.Use{Subject: subj, Action: action, Amount: amounts[g][i]}
		d, err := q.Consume(e.ctx, u)
		return outcome{use: u, d: d, err: err}
	})
	c := tally(outs)
	reportRace(t, outs, c)
	if c.denied == 0 {
		t.Errorf("no use was denied although %d was asked of %d", demand, limit)
	}

	cnt, recs := e.ledger(t, monthOf(subj, action))
	if cnt.Used != c.granted || cnt.Used > limit || cnt.Used <= limit-maxAmount {
		// A denial of a <= 50 means Used + a > limit then, and Used
		// only grows.
		t.Errorf("counter Used = %d; want the %d granted, at most %d and more than %d", cnt.Used, c.granted, limit, limit-maxAmount)
	}
	if len(recs) != c.allowed {
		t.Errorf("%d records; want one per allowed use, %d", len(recs), c.allowed)
	}
	_, byID := sumAmounts(recs)
	if diff := cmp.Diff(c.byRecord, byID); diff != "" {
		t.Errorf("records: amounts by ID (-granted +ledger):\n%s", diff)
	}
}

// testTwoLimits checks that a use charged to two limits is charged to both
// or neither, under concurrency: first the day limit binds, then, the next
// day, the month limit.
func testTwoLimits(t *testing.T, s *suite) {
	e := s.env(t)
	const perDay, perMonth, goroutines, perG = 300, 500, 16, 25
	const action = "pdf.export"
	q := e.quota(t, quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{action: {quota.PerMonth(perMonth), quota.PerDay(perDay)}})}})
	subj := e.name("s")
	e.subscribe(t, q, subj, "P")

	day := func(d int) window {
		start := anchor0.AddDate(0, 0, d-1)
		return window{key: quota.CounterKey{Subject: subj, Action: action, Period: quota.PeriodDay, Start: start}, end: start.AddDate(0, 0, 1)}
	}
	phase := func(name string, wantAllowed int, binding quota.Period) {
		t.Helper()
		c, outs := consumeRace(e.ctx, q, subj, action, goroutines, perG)
		reportRace(t, outs, c)
		if c.allowed != wantAllowed || c.denied != goroutines*perG-wantAllowed {
			t.Errorf("%s: %d allowed, %d denied; want %d, %d", name, c.allowed, c.denied, wantAllowed, goroutines*perG-wantAllowed)
		}
		for _, o := range outs {
			if o.err == nil && !o.d.Allowed && o.d.Period != binding {
				t.Errorf("%s: a denial decided by the %s limit (%d used of %d); want the %s limit", name, o.d.Period, o.d.Used, o.d.Limit, binding)
				break
			}
			if o.err == nil && o.d.Allowed && o.d.Limits.Len() != 2 {
				t.Errorf("%s: an allowed decision with %d limits; want 2", name, o.d.Limits.Len())
				break
			}
		}
	}

	phase("15 January", perDay, quota.PeriodDay)
	d15, _ := e.ledger(t, day(15))
	m1, _ := e.ledger(t, monthOf(subj, action))
	if d15.Used != perDay || m1.Used != perDay {
		t.Errorf("15 January: day counter %d, month counter %d; want both %d", d15.Used, m1.Used, perDay)
	}

	e.clock.Add(24 * time.Hour)
	phase("16 January", perMonth-perDay, quota.PeriodMonth)
	d15, _ = e.ledger(t, day(15))
	d16, _ := e.ledger(t, day(16))
	m, recs := e.ledger(t, monthOf(subj, action))
	if d15.Used != perDay || d16.Used != perMonth-perDay || m.Used != perMonth || len(recs) != perMonth {
		t.Errorf("16 January: day counters %d and %d, month counter %d, %d records; want %d, %d, %d, %d",
			d15.Used, d16.Used, m.Used, len(recs), perDay, perMonth-perDay, perMonth, perMonth)
	}
}

// testIdempotency checks invariant 3: replays of a key, concurrent or not,
// count once and return the first outcome; a key reused with another
// payload is a typed conflict that writes nothing.
func testIdempotency(t *testing.T, s *suite) {
	e := s.env(t)
	q := e.quota(t, quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{
		idemAction: {quota.PerMonth(idemKeys * idemAmount)},
		idemOther:  {quota.PerMonth(100)},
	})}})
	subj := e.name("s")
	e.subscribe(t, q, subj, "P")
	ic := &idemCase{e: e, q: q, subj: subj}

	outs := race(idemGoroutines, idemKeys, func(g, i int) outcome {
		u := ic.use((i + 7*g) % idemKeys)
		d, err := q.Consume(e.ctx, u)
		return outcome{use: u, d: d, err: err}
	})
	ic.first = firstUses(t, outs)
	ic.wantReplays(t, outs)
	recs := ic.wantLedger(t)
	ic.replayWhenFull(t)

	t.Run("Conflict", func(t *testing.T) { ic.testConflict(t, recs) })
	t.Run("OtherSubject", ic.testOtherSubject)
	t.Run("Track", ic.testTrack)
	t.Run("ReplayInLaterPeriod", ic.testReplayInLaterPeriod)
}

// The figures of testIdempotency: idemKeys keys of idemAmount each fill
// the monthly limit of idemAction; idemGoroutines goroutines use them all.
// idemOther has a limit of 100 a month.
const (
	idemKeys, idemGoroutines, idemAmount = 50, 16, 3
	idemAction, idemOther                = "ai.analysis", "diagram.upload"
)

// idemCase is the state of testIdempotency that its steps share.
type idemCase struct {
	e     *env
	q     *quota.Quota
	subj  string
	first map[string]quota.Decision // the first decision of each key
}

// use returns subj's use of key k.
func (ic *idemCase) use(k int) quota.Use {
	return quota.Use{Subject: ic.subj, Action: idemAction, Amount: idemAmount, ResourceID: fmt.Sprintf("doc-%d", k),
		Metadata: map[string]any{"n": k}, Key: fmt.Sprintf("key-%d", k)}
}

var ignoreReplayed = cmpopts.IgnoreFields(quota.Decision{}, "Replayed")

// firstUses checks that every use of the race was allowed and each key
// applied once, and returns the decision of each key's first use.
func firstUses(t *testing.T, outs []outcome) map[string]quota.Decision {
	first := make(map[string]quota.Decision)
	for _, o := range outs {
		switch {
		case o.err != nil:
			t.Fatalf("Consume(key %s) = %v; want nil error", o.use.Key, o.err)
		case !o.d.Allowed:
			t.Fatalf("Consume(key %s) denied (%s, %d used); want allowed: %d keys of %d fit the limit", o.use.Key, o.d.Reason, o.d.Used, idemKeys, idemAmount)
		case !o.d.Replayed:
			if _, dup := first[o.use.Key]; dup {
				t.Errorf("Consume(key %s) applied twice (Replayed false twice)", o.use.Key)
			}
			first[o.use.Key] = o.d
		}
	}
	if len(first) != idemKeys {
		t.Fatalf("%d keys applied; want %d", len(first), idemKeys)
	}
	return first
}

// wantReplays checks that every replay of the race returned the first
// decision of its key.
func (ic *idemCase) wantReplays(t *testing.T, outs []outcome) {
	bad := 0
	for _, o := range outs {
		if o.d.Replayed {
			if diff := cmp.Diff(ic.first[o.use.Key], o.d, ignoreReplayed, cmpTime); diff != "" {
				if bad++; bad <= 3 {
					t.Errorf("replay of %s: decision differs from the first (-first +replay):\n%s", o.use.Key, diff)
				}
			}
		}
	}
}

// wantLedger checks that the race wrote one record for each key, and
// returns the records.
func (ic *idemCase) wantLedger(t *testing.T) []quota.Record {
	cnt, recs := ic.e.ledger(t, monthOf(ic.subj, idemAction))
	if cnt.Used != idemKeys*idemAmount || len(recs) != idemKeys {
		t.Errorf("after %d replays of %d keys: counter %d, %d records; want %d, %d", idemGoroutines, idemKeys, cnt.Used, len(recs), idemKeys*idemAmount, idemKeys)
	}
	for _, r := range recs {
		if d, ok := ic.first[r.Key]; !ok || d.RecordID != r.ID {
			t.Errorf("record %d has key %q; want the RecordID of that key's first use", r.ID, r.Key)
		}
	}
	return recs
}

// replayWhenFull checks that with the limit full, a replay returns the
// first outcome.
func (ic *idemCase) replayWhenFull(t *testing.T) {
	e, q := ic.e, ic.q
	// The limit is now full, yet a replay returns the first outcome.
	d := consume(t, e.ctx, q, quota.Use{Subject: ic.subj, Action: idemAction, Amount: 1})
	wantDenied(t, "Consume(1) with the limit full", d, quota.ReasonLimit, idemKeys*idemAmount)
	d = consume(t, e.ctx, q, ic.use(0))
	if diff := cmp.Diff(ic.first["key-0"], d, ignoreReplayed, cmpTime); diff != "" || !d.Replayed {
		t.Errorf("replay of key-0 with the limit full: Replayed %v; want true; decision (-first +replay):\n%s", d.Replayed, diff)
	}
}

// testConflict checks uses of key-0 with another payload; recs are the
// records of the race.
func (ic *idemCase) testConflict(t *testing.T, recs []quota.Record) {
	e, q, subj, use := ic.e, ic.q, ic.subj, ic.use
	last := recs[len(recs)-1].ID
	conflicts := []struct {
		name string
		u    func(u *quota.Use)
	}{
		{"amount", func(u *quota.Use) { u.Amount = idemAmount + 1 }},
		{"metadata", func(u *quota.Use) { u.Metadata = map[string]any{"n": -1} }},
		{"no metadata", func(u *quota.Use) { u.Metadata = nil }},
		{"resource id", func(u *quota.Use) { u.ResourceID = "doc-x" }},
		{"no resource id", func(u *quota.Use) { u.ResourceID = "" }},
		{"action", func(u *quota.Use) { u.Action = idemOther }},
	}
	for _, c := range conflicts {
		u := use(0)
		c.u(&u)
		d, err := q.Consume(e.ctx, u)
		if !errors.Is(err, quota.ErrIdempotencyConflict) {
			t.Errorf("Consume(key-0, other %s) = %+v, %v; want an error matching ErrIdempotencyConflict", c.name, d, err)
			continue
		}
		var ce *quota.ConflictError
		if !errors.As(err, &ce) || ce.Subject != subj || ce.Key != "key-0" {
			t.Errorf("Consume(key-0, other %s) = %v; want a *ConflictError{Subject: %q, Key: \"key-0\"}", c.name, err, subj)
		}
	}
	if got := e.since(t, last); len(got) != 0 {
		t.Errorf("conflicting uses wrote %d records: %+v; want none", len(got), got)
	}
	if c := e.counters(t, monthOf(subj, idemAction).key, monthOf(subj, idemOther).key); c[0].Used != idemKeys*idemAmount || c[1].Used != 0 {
		t.Errorf("after conflicts: counters %d and %d; want %d and 0", c[0].Used, c[1].Used, idemKeys*idemAmount)
	}
}

func (ic *idemCase) testOtherSubject(t *testing.T) {
	e, q := ic.e, ic.q
	// Keys are per subject: another subject's key-0 is another use.
	subj2 := e.name("s2")
	e.subscribe(t, q, subj2, "P")
	u := ic.use(0)
	u.Subject = subj2
	d := consume(t, e.ctx, q, u)
	if !d.Allowed || d.Replayed || d.RecordID == ic.first["key-0"].RecordID {
		t.Errorf("Consume(key-0) by another subject = {Allowed %v, Replayed %v, RecordID %d}; want a new use", d.Allowed, d.Replayed, d.RecordID)
	}
	if cnt, _ := e.ledger(t, monthOf(subj2, idemAction)); cnt.Used != idemAmount {
		t.Errorf("counter of the other subject = %d; want %d", cnt.Used, idemAmount)
	}
}

func (ic *idemCase) testTrack(t *testing.T) {
	e, q := ic.e, ic.q
	subj3 := e.name("s3")
	e.subscribe(t, q, subj3, "P")
	u := quota.Use{Subject: subj3, Action: idemOther, Amount: 2, Key: "track-1"}
	d1 := track(t, e.ctx, q, u)
	d2 := track(t, e.ctx, q, u)
	if d1.Replayed || !d2.Replayed || d2.RecordID != d1.RecordID {
		t.Errorf("Track twice with one key: Replayed %v then %v, RecordIDs %d then %d; want false then true, equal", d1.Replayed, d2.Replayed, d1.RecordID, d2.RecordID)
	}
	if cnt, recs := e.ledger(t, monthOf(subj3, idemOther)); cnt.Used != 2 || len(recs) != 1 {
		t.Errorf("Track twice with one key: counter %d, %d records; want 2, 1", cnt.Used, len(recs))
	}
}

func (ic *idemCase) testReplayInLaterPeriod(t *testing.T) {
	e, q := ic.e, ic.q
	// The repeat returns the first outcome, also once the window of
	// the first use has closed.
	subj4 := e.name("s4")
	e.subscribe(t, q, subj4, "P")
	u := quota.Use{Subject: subj4, Action: idemOther, Amount: 1, Key: "late"}
	d1 := consume(t, e.ctx, q, u)
	e.clock.Set(anchor0.AddDate(0, 1, 3))
	defer e.clock.Set(t0)
	d2 := consume(t, e.ctx, q, u)
	if diff := cmp.Diff(d1, d2, ignoreReplayed, cmpTime); diff != "" || !d2.Replayed {
		t.Errorf("replay a month later: Replayed %v; want true; decision (-first +replay):\n%s", d2.Replayed, diff)
	}
	feb := window{key: quota.CounterKey{Subject: subj4, Action: idemOther, Period: quota.PeriodMonth, Start: anchor0.AddDate(0, 1, 0)}, end: anchor0.AddDate(0, 2, 0)}
	if cnt, _ := e.ledger(t, feb); cnt.Used != 0 {
		t.Errorf("replay a month later charged the new month: counter %d; want 0", cnt.Used)
	}
}

// testAllocations checks allocation limits (period none) under concurrent
// uses and releases, releases below zero, and per-use caps.
func testAllocations(t *testing.T, s *suite) {
	e := s.env(t)
	q := e.quota(t, quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{
		allocStorage: {quota.Total(allocLimit)},
		allocFile:    {quota.PerMonth(allocLimit).WithMaxPerUse(100)},
		allocSeats:   {quota.Total(5).WithMaxPerUse(2)},
	})}})

	t.Run("Concurrent", func(t *testing.T) { testAllocationsConcurrent(t, e, q) })
	t.Run("BelowZero", func(t *testing.T) { testAllocationsBelowZero(t, e, q) })
	t.Run("PerUseCap", func(t *testing.T) { testAllocationsPerUseCap(t, e, q) })
}

// The actions of testAllocations: allocStorage is an allocation of
// allocLimit; allocFile has allocLimit a month, at most 100 a use;
// allocSeats is an allocation of 5, at most 2 a use.
const (
	allocLimit                          = 1000
	allocStorage, allocFile, allocSeats = "storage.bytes", "file.upload", "team.seats"
)

func testAllocationsConcurrent(t *testing.T, e *env, q *quota.Quota) {
	const goroutines, perG = 32, 30
	subj := e.name("race")
	e.subscribe(t, q, subj, "P")
	amounts := make([][]int64, goroutines)
	for g := range amounts {
		r := rand.New(rand.NewPCG(2, uint64(g)))
		amounts[g] = make([]int64, perG)
		for i := range amounts[g] {
			if i == 0 || r.IntN(3) == 0 {
				amounts[g][i] = -(1 + r.Int64N(60))
			} else {
				amounts[g][i] = 1 + r.Int64N(100)
			}
		}
	}
	outs := race(goroutines, perG, func(g, i int) outcome {
		u := quota.Use{Subject: subj, Action: allocStorage, Amount: amounts[g][i]}
		d, err := q.Consume(e.ctx, u)
		return outcome{use: u, d: d, err: err}
	})
	c := tally(outs)
	reportRace(t, outs, c)
	deniedUp := 0
	for _, o := range outs {
		if o.err == nil && !o.d.Allowed && o.use.Amount > 0 {
			deniedUp++
		}
	}
	if deniedUp == 0 {
		t.Errorf("no use was denied; want the limit of %d reached", allocLimit)
	}
	cnt, recs := e.ledger(t, allocOf(subj, allocStorage))
	if cnt.Used != c.granted || cnt.Used < 0 || cnt.Used > allocLimit {
		t.Errorf("counter Used = %d; want the net %d granted, within [0, %d]", cnt.Used, c.granted, allocLimit)
	}
	_, byID := sumAmounts(recs)
	if diff := cmp.Diff(c.byRecord, byID); diff != "" {
		t.Errorf("records: amounts by ID (-granted +ledger):\n%s", diff)
	}
}

func testAllocationsBelowZero(t *testing.T, e *env, q *quota.Quota) {
	subj := e.name("release")
	e.subscribe(t, q, subj, "P")
	d := consume(t, e.ctx, q, quota.Use{Subject: subj, Action: allocStorage, Amount: 10})
	wantAllowed(t, "Consume(+10)", d, 10)
	last := d.RecordID
	rel := quota.Use{Subject: subj, Action: allocStorage, Amount: -11}
	wantDenied(t, "Consume(-11) of 10", consume(t, e.ctx, q, rel), quota.ReasonBelowZero, 10)
	wantDenied(t, "Track(-11) of 10", track(t, e.ctx, q, rel), quota.ReasonBelowZero, 10)
	wantDenied(t, "Check(-11) of 10", check(t, e.ctx, q, rel), quota.ReasonBelowZero, 10)
	if got := e.since(t, last); len(got) != 0 {
		t.Errorf("releases below zero wrote %+v; want nothing", got)
	}
	if cnt, _ := e.ledger(t, allocOf(subj, allocStorage)); cnt.Used != 10 {
		t.Errorf("counter after releases below zero = %d; want 10", cnt.Used)
	}
	rel.Amount = -10
	wantAllowed(t, "Consume(-10) of 10", consume(t, e.ctx, q, rel), 0)
	rel.Amount = -1
	wantDenied(t, "Consume(-1) of 0", consume(t, e.ctx, q, rel), quota.ReasonBelowZero, 0)
	if cnt, recs := e.ledger(t, allocOf(subj, allocStorage)); cnt.Used != 0 || len(recs) != 2 {
		t.Errorf("counter %d with %d records; want 0 with 2", cnt.Used, len(recs))
	}
}

func testAllocationsPerUseCap(t *testing.T, e *env, q *quota.Quota) {
	subj := e.name("cap")
	e.subscribe(t, q, subj, "P")
	big := quota.Use{Subject: subj, Action: allocFile, Amount: 101}
	d := consume(t, e.ctx, q, big)
	wantDenied(t, "Consume(101) capped at 100, nothing used", d, quota.ReasonPerUse, 0)
	if d.MaxPerUse != 100 {
		t.Errorf("Consume(101).MaxPerUse = %d; want 100", d.MaxPerUse)
	}
	wantDenied(t, "Check(101) capped at 100", check(t, e.ctx, q, big), quota.ReasonPerUse, 0)
	r, err := q.Reserve(e.ctx, big)
	if err != nil {
		t.Fatalf("Reserve(101) = %v", err)
	}
	wantDenied(t, "Reserve(101) capped at 100", r.Decision, quota.ReasonPerUse, 0)
	if r.ID != "" {
		t.Errorf("Reserve(101) denied with ID %q; want none", r.ID)
	}
	if recs := e.records(t, quota.RecordQuery{Subject: subj}); len(recs) != 0 {
		t.Errorf("capped uses wrote %+v; want nothing", recs)
	}
	if c := e.counters(t, monthOf(subj, allocFile).key)[0]; c.Used != 0 || c.Held != 0 {
		t.Errorf("capped uses: counter Used %d Held %d; want 0, 0", c.Used, c.Held)
	}

	wantAllowed(t, "Consume(100) capped at 100", consume(t, e.ctx, q, quota.Use{Subject: subj, Action: allocFile, Amount: 100}), 100)
	// Track records what happened: caps do not apply.
	wantAllowed(t, "Track(895) capped at 100", track(t, e.ctx, q, quota.Use{Subject: subj, Action: allocFile, Amount: 895}), 995)
	wantDenied(t, "Consume(101) with 5 left", consume(t, e.ctx, q, big), quota.ReasonPerUse, 995)
	wantDenied(t, "Consume(6) with 5 left", consume(t, e.ctx, q, quota.Use{Subject: subj, Action: allocFile, Amount: 6}), quota.ReasonLimit, 995)
	wantAllowed(t, "Consume(5) with 5 left", consume(t, e.ctx, q, quota.Use{Subject: subj, Action: allocFile, Amount: 5}), allocLimit)
	if cnt, recs := e.ledger(t, monthOf(subj, allocFile)); cnt.Used != allocLimit || len(recs) != 3 {
		t.Errorf("counter %d with %d records; want %d with 3", cnt.Used, len(recs), allocLimit)
	}

	// A cap on an allocation bounds uses, not releases.
	seat := func(n int64) quota.Use { return quota.Use{Subject: subj, Action: allocSeats, Amount: n} }
	wantDenied(t, "Consume(3 seats) capped at 2", consume(t, e.ctx, q, seat(3)), quota.ReasonPerUse, 0)
	wantAllowed(t, "Consume(2 seats)", consume(t, e.ctx, q, seat(2)), 2)
	wantAllowed(t, "Consume(2 seats)", consume(t, e.ctx, q, seat(2)), 4)
	wantAllowed(t, "Consume(-3 seats)", consume(t, e.ctx, q, seat(-3)), 1)
	if cnt, _ := e.ledger(t, allocOf(subj, allocSeats)); cnt.Used != 1 {
		t.Errorf("seats counter = %d; want 1", cnt.Used)
	}
}
