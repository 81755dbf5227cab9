package quota_test

// A model-based test: rapid draws sequences of steps (Check, Consume,
// Track, Reserve, Commit, CommitAmount, Cancel, Subscribe, a clock
// advance), runs each on a quota.Quota over each store (MemoryStore,
// SQLite, PostgreSQL), and compares every outcome with a pure-Go model of
// the documented semantics. After every step an invariant check compares
// Usage and History with the model and sums the History records per
// action and window against Usage; at the end of a sequence, on the SQL
// stores, a query checks straight from the tables that every summary
// equals the sum of its records.
//
// The model's semantics, as the package documents them:
//
//   - Validation comes first: a negative amount on an action without an
//     allocation limit, or on Reserve, is an error matching
//     ErrInvalidAmount, and writes nothing.
//   - Idempotency is looked up before policy (Consume, Track, Reserve; Check
//     never looks a key up). A key is per subject; its payload fingerprint
//     is the mode (consume, track, reserve), action, amount, resource id and
//     metadata, not Use.Features. A key seen with the same payload replays
//     the first outcome whatever the plan, the features or the counters are
//     now: Replayed, Allowed, the same RecordID (or the same reservation ID
//     and expiry), the first decision's figures (Used of its decisive
//     limit, its windows). With another payload it is a *quota.ConflictError.
//     Nothing is written either way. This holds for every keyed use,
//     whatever its Use.Features and the plan's per-use caps.
//   - Then policy, for Consume, Reserve and Check of a positive amount
//     only (Track and releases pass): a feature that Use.Features requires
//     and the plan lacks denies with ReasonFeature (no limit figures); an
//     amount above a limit's MaxPerUse denies with ReasonPerUse on that
//     limit.
//   - Then the admission rule, for each limit of the action in period
//     order, with cur = used + unexpired holds: Consume, Reserve and Check
//     refuse a > 0 with cur + a > Max (Max not Unlimited); every mode
//     refuses a < 0 with used + a < 0 (ReasonBelowZero). The decisive limit
//     of a refusal is the first that refuses, with the figures before the
//     use; that of an allowed use is the most used one (highest percent,
//     first on ties), with the figures after it (Check: before).
//   - A refused use writes nothing and claims no key.
//   - An allowed Consume or Track appends a record (Time = now) and adds
//     its amount to the counters of its windows. An allowed Reserve holds
//     the amount on those counters at once, until now + TTL: a hold counts
//     while its expiry is after now. Commit (full) or CommitAmount (1 to
//     the held amount) appends a record with the Reserve's time, payload
//     and key, charged to the hold's counters; Cancel releases it. A
//     committed, cancelled or unknown reservation is ErrReservationNotFound;
//     one whose expiry has passed fails to commit with
//     ErrReservationExpired and is gone (an expiry at now has passed).
//     Stores sweep expired holds when a use or a settlement of the same
//     subject and action reaches them after the expiry; once that may have
//     happened, the model accepts ErrReservationNotFound as well (as the
//     conformance suite does). (The Quota's own background sweep runs
//     every real minute; a sequence lasts well under a second.) Cancel of
//     an expired hold may return nil or either error.
//   - Subscribe to another plan takes effect at once and keeps the billing
//     anchor: days begin at midnight UTC, months on the anchor's day of
//     month clamped to short months. Every plan of the catalog limits each
//     action with the same periods, so that a counter's records are those
//     of its window whatever plan was in force.
//
// Bounds: at most modelSteps steps per sequence (about 35 on average),
// modelChecksMemory or modelChecksSQL sequences per store, 10 s of
// shrinking after a failure.
// rapid v1.3.0 takes these only from its flags (-rapid.checks,
// -rapid.shrinktime) or its environment (RAPID_CHECKS, ...), so TestModel
// sets the flags for its own run when neither chose them, and restores
// them afterwards; it also sets -rapid.nofailfile, so that a failure
// writes nothing under testdata/ (it prints the -rapid.seed that
// reproduces it).

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/uptrace/bun"
	"pgregory.net/rapid"

	"github.com/quotakit/quota"
)

const (
	modelSteps = 50 // the most steps of one sequence
	modelTTL   = 30 * time.Minute
)

// The sequences per store, unless -rapid.checks or RAPID_CHECKS says
// otherwise: rapid's default of 100 for MemoryStore, fewer for the SQL
// stores, whose steps cost more (SQLite's most, under -race).
const (
	modelChecksMemory = 100
	modelChecksSQL    = 30
)

// The catalog: three plans over three actions.
const (
	mAI      = "ai.analysis"   // PerDay + PerMonth
	mAPI     = "api.call"      // PerMonth: limited, Unlimited, 0
	mStorage = "storage.bytes" // an allocation, with a per-use cap or not
	mFeature = "api_access"    // granted by PRO alone
)

var modelActions = []string{mAI, mAPI, mStorage} // sorted, as Usage lists them

var modelPlans = []quota.Plan{
	{Name: "FREE", Limits: map[string][]quota.Limit{
		mAI:      {quota.PerDay(2), quota.PerMonth(4)},
		mAPI:     {quota.PerMonth(3)},
		mStorage: {quota.Total(12).WithMaxPerUse(4)},
	}},
	{Name: "PRO", Features: []string{mFeature}, Limits: map[string][]quota.Limit{
		mAI:      {quota.PerDay(5), quota.PerMonth(quota.Unlimited)},
		mAPI:     {quota.PerMonth(quota.Unlimited)},
		mStorage: {quota.Total(30)},
	}},
	{Name: "MINI", Limits: map[string][]quota.Limit{
		mAI:      {quota.PerDay(1), quota.PerMonth(1)},
		mAPI:     {quota.PerMonth(0)},
		mStorage: {quota.Total(6).WithMaxPerUse(2)},
	}},
}

// The clock starts near the end of January, so that day and month
// boundaries (alice's anchor on the 31st clamps to 28 February, bob's is
// the 30th) come within a few steps.
var (
	modelT0          = time.Date(2026, time.January, 30, 22, 30, 0, 0, time.UTC)
	modelAliceAnchor = time.Date(2025, time.August, 31, 15, 0, 0, 0, time.UTC)
)

// The small sets the payloads are drawn from.
var (
	modelSubjects  = []string{"alice", "bob"}
	modelKeys      = []string{"", "", "", "k1", "k2", "k3"}
	modelResources = []string{"", "doc-1", "doc-2"}
	modelMetas     = []map[string]any{nil, {"n": 1}, {"n": 2, "tag": "x"}}
	modelMetaJSON  = []string{"", `{"n":1}`, `{"n":2,"tag":"x"}`}
	modelFeatures  = [][]string{nil, nil, nil, nil, nil, {mFeature}, {"sso"}}
	modelKinds     = []string{"Check", "Consume", "Consume", "Consume", "Track", "Track", "Reserve", "Reserve",
		"Commit", "CommitAmount", "Cancel", "Subscribe", "Subscribe", "Advance", "Advance"}
)

// The clock advances: short steps, the TTL exactly (a hold expires at its
// expiry), and jumps to the next day or month boundary exactly.
var modelAdvances = []struct {
	name string
	by   func(m *model) time.Duration
}{
	{"1m", func(*model) time.Duration { return time.Minute }},
	{"10m", func(*model) time.Duration { return 10 * time.Minute }},
	{"TTL", func(*model) time.Duration { return modelTTL }},
	{"3h", func(*model) time.Duration { return 3 * time.Hour }},
	{"next midnight", func(m *model) time.Duration {
		_, end := dayWindow(m.now)
		return end.Sub(m.now)
	}},
	{"next month", func(m *model) time.Duration {
		var d time.Duration
		for _, s := range m.subs {
			_, end := monthWindow(s.anchor, m.now)
			if d == 0 || end.Sub(m.now) < d {
				d = end.Sub(m.now)
			}
		}
		return d
	}},
	{"1d1h", func(*model) time.Duration { return 25 * time.Hour }},
	{"9d", func(*model) time.Duration { return 9 * 24 * time.Hour }},
}

// A step is one drawn action of the machine. Its fields index the sets
// above; which of them matter depends on Kind.
type step struct {
	Kind     string
	Subject  int
	Action   int
	Amount   int64
	Key      int
	Reuse    bool // replay the key's first use, if it has one
	Resource int
	Meta     int
	Features int
	Res      int // a reservation: even, an open one; odd, any one (modulo their number)
	Plan     int
	Advance  int
}

func (s step) GoString() string {
	switch s.Kind {
	case "Check", "Consume", "Track", "Reserve":
		var b strings.Builder
		fmt.Fprintf(&b, "%s(%s %s %d", s.Kind, modelSubjects[s.Subject], modelActions[s.Action], s.Amount)
		if k := modelKeys[s.Key]; k != "" {
			fmt.Fprintf(&b, " key=%s", k)
			if s.Reuse {
				b.WriteString(" reuse")
			}
		}
		if r := modelResources[s.Resource]; r != "" {
			fmt.Fprintf(&b, " res=%s", r)
		}
		if s.Meta != 0 {
			fmt.Fprintf(&b, " meta=%s", modelMetaJSON[s.Meta])
		}
		if f := modelFeatures[s.Features]; f != nil {
			fmt.Fprintf(&b, " features=%v", f)
		}
		b.WriteString(")")
		return b.String()
	case "Commit", "Cancel":
		return fmt.Sprintf("%s(res#%d)", s.Kind, s.Res)
	case "CommitAmount":
		return fmt.Sprintf("CommitAmount(res#%d, %d)", s.Res, s.Amount)
	case "Subscribe":
		return fmt.Sprintf("Subscribe(%s %s)", modelSubjects[s.Subject], modelPlans[s.Plan].Name)
	case "Advance":
		return fmt.Sprintf("Advance(%s)", modelAdvances[s.Advance].name)
	}
	return s.Kind
}

// stepGen draws a step. One in 64 is Stop, which ends the sequence (if
// modelSteps did not): sequences average about 35 steps, and shrinking
// shortens them. rapid's integers favour small values, so the stop is six
// fair coins, none of which may come up true.
var stepGen = rapid.Custom(func(t *rapid.T) step {
	stop := true
	for range 6 {
		if rapid.Bool().Draw(t, "more") {
			stop = false
		}
	}
	if stop {
		return step{Kind: "Stop"}
	}
	s := step{Kind: rapid.SampledFrom(modelKinds).Draw(t, "kind")}
	switch s.Kind {
	case "Check", "Consume", "Track", "Reserve":
		s.Subject = rapid.IntRange(0, len(modelSubjects)-1).Draw(t, "subject")
		s.Action = rapid.IntRange(0, len(modelActions)-1).Draw(t, "action")
		s.Amount = int64(rapid.IntRange(1, 6).Draw(t, "amount"))
		// Releases mostly where they make sense; elsewhere (and on
		// Reserve) they test that bad input writes nothing.
		sign := rapid.IntRange(0, 11).Draw(t, "sign")
		if sign == 11 || (sign < 4 && modelActions[s.Action] == mStorage && s.Kind != "Reserve") {
			s.Amount = -s.Amount
		}
		s.Key = rapid.IntRange(0, len(modelKeys)-1).Draw(t, "key")
		if modelKeys[s.Key] != "" && s.Kind != "Check" {
			s.Reuse = rapid.Bool().Draw(t, "reuse")
		}
		s.Resource = rapid.IntRange(0, len(modelResources)-1).Draw(t, "resource")
		s.Meta = rapid.IntRange(0, len(modelMetas)-1).Draw(t, "meta")
		s.Features = rapid.IntRange(0, len(modelFeatures)-1).Draw(t, "features")
	case "Commit", "Cancel":
		s.Res = rapid.IntRange(0, 15).Draw(t, "res")
	case "CommitAmount":
		s.Res = rapid.IntRange(0, 15).Draw(t, "res")
		s.Amount = int64(rapid.IntRange(1, 6).Draw(t, "amount"))
	case "Subscribe":
		s.Subject = rapid.IntRange(0, len(modelSubjects)-1).Draw(t, "subject")
		s.Plan = rapid.IntRange(0, len(modelPlans)-1).Draw(t, "plan")
	case "Advance":
		s.Advance = rapid.IntRange(0, len(modelAdvances)-1).Draw(t, "advance")
	}
	return s
})

// TestModel runs the machine as a subtest per store.
func TestModel(t *testing.T) {
	rapidDefaults(t, map[string]string{
		"rapid.shrinktime": "10s",
		// No fail files in testdata/rapid: -rapid.seed, which a failure
		// prints, reproduces it.
		"rapid.nofailfile": "true",
	})
	type storeCase struct {
		name   string
		checks int
		open   func(t *testing.T) (quota.Store, bun.IDB)
	}
	cases := []storeCase{{"memory", modelChecksMemory, func(*testing.T) (quota.Store, bun.IDB) { return quota.NewMemoryStore(), nil }}}
	for _, b := range backends {
		cases = append(cases, storeCase{b.name, modelChecksSQL, func(t *testing.T) (quota.Store, bun.IDB) {
			db := b.newDB(t) // a fresh SQLite file or PostgreSQL schema
			return migrated(t, db), db
		}})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rapidDefaults(t, map[string]string{"rapid.checks": strconv.Itoa(c.checks)})
			st, db := c.open(t)
			// One store for every sequence; each sequence has subjects of
			// its own, so sequences share nothing but the record IDs.
			run, seen := 0, make(map[string]int)
			start := time.Now()
			rapid.Check(t, func(rt *rapid.T) {
				run++
				runMachine(rt, st, db, fmt.Sprintf("m%d.", run), seen)
			})
			t.Logf("%d sequences (shrinking included) in %v; outcomes: %v", run, time.Since(start).Round(time.Millisecond), seen)
		})
	}
}

// rapidDefaults sets rapid's flags to values for the duration of t,
// each unless the command line (-rapid.checks=...) or the environment
// (RAPID_CHECKS=...) chose it. rapid v1.3.0 reads these settings from its
// flags alone.
func rapidDefaults(t *testing.T, values map[string]string) {
	set := make(map[string]bool)
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for name, v := range values {
		env := "RAPID_" + strings.ToUpper(strings.TrimPrefix(name, "rapid."))
		f := flag.Lookup(name)
		if f == nil || set[name] || os.Getenv(env) != "" {
			continue
		}
		old := f.Value.String()
		if err := f.Value.Set(v); err != nil {
			t.Fatalf("-%s=%s: %v", name, v, err)
		}
		t.Cleanup(func() { f.Value.Set(old) })
	}
}

// machine is the system under test with its model.
//
// Sequences share one store, so each has subjects of its own (prefix) and
// meets record IDs that earlier sequences left behind. For rapid to
// shrink, a failure must read the same when a sequence runs again: the
// machine names records and holds by their order in the sequence (record
// 1, hold h1), and failure messages drop the prefix.
type machine struct {
	ctx      context.Context
	q        *quota.Quota
	db       bun.IDB // nil for MemoryStore
	clk      *clock
	prefix   string
	subjects []string
	m        *model
	res      []*quota.Reservation // every Reservation returned, denied ones included
	recIDs   map[int64]int64      // store record ID -> record number in this sequence
	holdIDs  map[string]string    // store reservation ID -> h1, h2, ...
	lastRaw  int64                // the newest store record ID seen
	seen     map[string]int       // outcomes, counted for the log
}

func runMachine(rt *rapid.T, st quota.Store, db bun.IDB, prefix string, seen map[string]int) {
	clk := &clock{t: modelT0}
	q, err := quota.New(st, quota.Config{Plans: modelPlans, Now: clk.Now, ReservationTTL: modelTTL})
	if err != nil {
		rt.Fatalf("quota.New: %v", err)
	}
	defer q.Close()
	mc := &machine{
		ctx: context.Background(), q: q, db: db, clk: clk, prefix: prefix, m: newModel(modelT0),
		recIDs: make(map[int64]int64), holdIDs: make(map[string]string), seen: seen,
	}
	for _, s := range modelSubjects {
		mc.subjects = append(mc.subjects, prefix+s)
	}
	// alice: FREE, anchored on the 31st; bob: PRO, anchored now (the 30th).
	if err := q.Subscribe(mc.ctx, quota.Subscription{Subject: mc.subjects[0], Plan: "FREE", Anchor: modelAliceAnchor}); err != nil {
		mc.fatalf(rt, "Subscribe: %v", err)
	}
	mc.m.subs[mc.subjects[0]] = &mSub{plan: "FREE", anchor: modelAliceAnchor}
	if err := q.Subscribe(mc.ctx, quota.Subscription{Subject: mc.subjects[1], Plan: "PRO"}); err != nil {
		mc.fatalf(rt, "Subscribe: %v", err)
	}
	mc.m.subs[mc.subjects[1]] = &mSub{plan: "PRO", anchor: modelT0}

	mc.invariants(rt)
	for i := range modelSteps {
		s := stepGen.Draw(rt, fmt.Sprintf("step %d", i))
		if s.Kind == "Stop" {
			break
		}
		mc.seen["steps"]++
		mc.run(rt, s)
		mc.invariants(rt)
	}
	// Straight from the tables, once a sequence (the query costs more
	// than a step): an imbalance, once made, stays until the end.
	if mc.db != nil {
		if err := modelBalanced(mc.ctx, mc.db, mc.subjects); err != nil {
			mc.fatalf(rt, "%v", err)
		}
	}
}

// clean makes text the same whenever the sequence runs.
func (mc *machine) clean(text string) string {
	text = strings.ReplaceAll(text, mc.prefix, "")
	for raw, local := range mc.holdIDs {
		text = strings.ReplaceAll(text, raw, local)
	}
	return text
}

func (mc *machine) fatalf(rt *rapid.T, format string, args ...any) {
	rt.Helper()
	rt.Fatal(mc.clean(fmt.Sprintf(format, args...)))
}

func (mc *machine) logf(rt *rapid.T, format string, args ...any) {
	rt.Helper()
	rt.Log(mc.clean(fmt.Sprintf(format, args...)))
}

// recordNo returns the number in this sequence of the store's record raw,
// numbering the unknown ones as they come; 0 for 0.
func (mc *machine) recordNo(raw int64) int64 {
	if raw == 0 {
		return 0
	}
	if n, ok := mc.recIDs[raw]; ok {
		return n
	}
	n := int64(len(mc.recIDs) + 1)
	mc.recIDs[raw] = n
	return n
}

// holdName returns the name in this sequence of the store's reservation
// raw, naming the unknown ones as they come; "" for "".
func (mc *machine) holdName(raw string) string {
	if raw == "" {
		return ""
	}
	if n, ok := mc.holdIDs[raw]; ok {
		return n
	}
	n := "h" + strconv.Itoa(len(mc.holdIDs)+1)
	mc.holdIDs[raw] = n
	return n
}

// newRecord checks that raw is a record ID the store never returned
// before, and returns its number.
func (mc *machine) newRecord(rt *rapid.T, call string, raw int64) int64 {
	rt.Helper()
	if _, ok := mc.recIDs[raw]; ok || raw <= mc.lastRaw {
		mc.fatalf(rt, "%s: record ID %d; want a new one, after %d", call, raw, mc.lastRaw)
	}
	mc.lastRaw = raw
	return mc.recordNo(raw)
}

func (mc *machine) run(rt *rapid.T, s step) {
	switch s.Kind {
	case "Check", "Consume", "Track", "Reserve":
		mc.use(rt, s)
	case "Commit", "CommitAmount", "Cancel":
		mc.settle(rt, s)
	case "Subscribe":
		subject, plan := mc.subjects[s.Subject], modelPlans[s.Plan].Name
		if err := mc.q.Subscribe(mc.ctx, quota.Subscription{Subject: subject, Plan: plan}); err != nil {
			mc.fatalf(rt, "Subscribe(%s %s): %v", subject, plan, err)
		}
		mc.m.subs[subject].plan = plan
		mc.logf(rt, "  %s: %s now", subject, plan)
	case "Advance":
		d := modelAdvances[s.Advance].by(mc.m)
		mc.m.now = mc.m.now.Add(d)
		mc.clk.Set(mc.m.now)
		mc.logf(rt, "  now %s", mc.m.now.Format(time.DateTime))
	}
}

// use runs a Check, Consume, Track or Reserve step.
func (mc *machine) use(rt *rapid.T, s step) {
	mode := strings.ToLower(s.Kind)
	u := quota.Use{
		Subject:    mc.subjects[s.Subject],
		Action:     modelActions[s.Action],
		Amount:     s.Amount,
		ResourceID: modelResources[s.Resource],
		Metadata:   modelMetas[s.Meta],
		Key:        modelKeys[s.Key],
		Features:   modelFeatures[s.Features],
	}
	meta := s.Meta
	if s.Reuse {
		if o := mc.m.keys[[2]string{u.Subject, u.Key}]; o != nil {
			p := o.payload
			mode, u.Action, u.Amount, u.ResourceID, meta = p.mode, p.action, p.amount, p.resource, p.meta
			u.Metadata = modelMetas[meta]
		}
	}
	call := fmt.Sprintf("%s(%s %s %d key=%q res=%q meta=%s features=%v)", mode, u.Subject, u.Action, u.Amount, u.Key, u.ResourceID, modelMetaJSON[meta], u.Features)
	exp := mc.m.expectUse(mode, u, meta)

	var got quota.Decision
	var r *quota.Reservation
	var err error
	switch mode {
	case "check":
		got, err = mc.q.Check(mc.ctx, u)
	case "consume":
		got, err = mc.q.Consume(mc.ctx, u)
	case "track":
		got, err = mc.q.Track(mc.ctx, u)
	case "reserve":
		r, err = mc.q.Reserve(mc.ctx, u)
		if r != nil {
			got = r.Decision
			mc.res = append(mc.res, r)
		}
	}
	if mode != "check" {
		mc.m.touched[[2]string{u.Subject, u.Action}] = mc.m.now
	}
	// A new record is checked to be new below; other IDs are numbered
	// (a denial's 0 stays 0) so that a diff shows them.
	raw := got.RecordID
	newRec := exp.apply && mode != "reserve" && err == nil && got.Allowed && !got.Replayed
	if !newRec {
		got.RecordID = mc.recordNo(raw)
	}

	switch {
	case exp.conflict:
		var ce *quota.ConflictError
		if !errors.As(err, &ce) || ce.Subject != u.Subject || ce.Key != u.Key || !errors.Is(err, quota.ErrIdempotencyConflict) {
			mc.fatalf(rt, "%s = %s, %v; want a *quota.ConflictError: key %q was first used by %s", call, describe(got), err, u.Key, exp.first)
		}
		mc.logf(rt, "  %s: conflict", call)
		mc.seen[mode+" conflict"]++
		return
	case exp.err != nil:
		if !errors.Is(err, exp.err) {
			mc.fatalf(rt, "%s = %s, %v; want an error matching %v", call, describe(got), err, exp.err)
		}
		mc.logf(rt, "  %s: %v", call, exp.err)
		mc.seen[mode+" error"]++
		return
	case err != nil:
		mc.fatalf(rt, "%s: unexpected error %v; want %s", call, err, describe(exp.dec))
	}

	want := exp.dec
	holdID, holdExp := "", time.Time{}
	switch {
	case exp.first != nil: // a replay
		want.RecordID = exp.first.dec.RecordID
		if mode == "reserve" {
			if name := mc.holdName(r.ID); name != exp.first.holdID || !r.ExpiresAt.Equal(exp.first.holdExpires) {
				mc.fatalf(rt, "%s: replayed reservation %q expiring %v; want the first, %q expiring %v", call, name, r.ExpiresAt, exp.first.holdID, exp.first.holdExpires)
			}
		}
		got = withoutPerUse(got)
	case exp.apply && mode == "reserve" && got.Allowed && !got.Replayed:
		if _, seen := mc.holdIDs[r.ID]; r.ID == "" || seen {
			mc.fatalf(rt, "%s: reservation ID %q; want a new one", call, r.ID)
		}
		if want := mc.m.now.Add(modelTTL); !r.ExpiresAt.Equal(want) {
			mc.fatalf(rt, "%s: reservation expires at %v; want %v", call, r.ExpiresAt, want)
		}
		holdID, holdExp = mc.holdName(r.ID), r.ExpiresAt
	case newRec:
		got.RecordID = mc.newRecord(rt, call, raw)
		want.RecordID = got.RecordID
	case mode == "reserve" && !got.Allowed && r.ID != "":
		mc.fatalf(rt, "%s: denied, with reservation ID %q", call, mc.holdName(r.ID))
	}
	if diff := modelDiff(normDecision(want), normDecision(got)); diff != "" {
		mc.fatalf(rt, "%s: decision (-want +got):\n%s", call, diff)
	}
	if holdID != "" {
		mc.logf(rt, "  %s: %s, hold %s", call, describe(got), holdID)
	} else {
		mc.logf(rt, "  %s: %s", call, describe(got))
	}
	switch {
	case got.Replayed:
		mc.seen[mode+" replayed"]++
	case got.Allowed:
		mc.seen[mode+" allowed"]++
	default:
		mc.seen[mode+" "+string(got.Reason)]++
	}
	if exp.apply { // the decision matched, so the use was applied
		mc.m.applyUse(mode, u, meta, exp, want, holdID, holdExp)
	}
}

// settle runs a Commit, CommitAmount or Cancel step.
func (mc *machine) settle(rt *rapid.T, s step) {
	var open []int
	for i, r := range mc.res {
		if h := mc.m.holds[mc.holdName(r.ID)]; h != nil && !h.gone {
			open = append(open, i)
		}
	}
	var i int
	switch {
	case s.Res%2 == 0 && len(open) > 0:
		i = open[s.Res/2%len(open)]
	case len(mc.res) > 0:
		i = s.Res / 2 % len(mc.res)
	default:
		mc.logf(rt, "  no reservation yet")
		return
	}
	r := mc.res[i]
	id := mc.holdName(r.ID)
	call := fmt.Sprintf("%s(res#%d %q of %d)", s.Kind, i, id, r.Decision.Amount)
	if s.Kind == "CommitAmount" {
		call = fmt.Sprintf("CommitAmount(res#%d %q of %d, %d)", i, id, r.Decision.Amount, s.Amount)
	}
	h := mc.m.holds[id]
	var exp settleExpect
	switch {
	case s.Kind == "CommitAmount" && s.Amount > r.Decision.Amount:
		exp = settleExpect{errs: []error{quota.ErrInvalidAmount}, after: func() {}}
	case s.Kind == "Cancel":
		exp = mc.m.expectCancel(id)
	case s.Kind == "Commit":
		exp = mc.m.expectCommit(id, r.Decision.Amount)
	default:
		exp = mc.m.expectCommit(id, s.Amount)
	}
	var rec quota.Record
	var err error
	switch s.Kind {
	case "Commit":
		rec, err = r.Commit(mc.ctx)
	case "CommitAmount":
		rec, err = r.CommitAmount(mc.ctx, s.Amount)
	case "Cancel":
		err = r.Cancel(mc.ctx)
	}
	if h != nil {
		mc.m.touched[[2]string{h.subject, h.action}] = mc.m.now
	}
	if exp.errs != nil {
		ok := slices.ContainsFunc(exp.errs, func(e error) bool { return e == nil && err == nil || e != nil && errors.Is(err, e) })
		if !ok {
			rec.ID = mc.recordNo(rec.ID)
			mc.fatalf(rt, "%s = %+v, %v; want one of %v", call, rec, err, exp.errs)
		}
		mc.logf(rt, "  %s: %v", call, err)
		mc.seen[strings.ToLower(s.Kind)+" "+errorName(err)]++
		exp.after()
		return
	}
	if err != nil {
		mc.fatalf(rt, "%s: unexpected error %v", call, err)
	}
	if s.Kind == "Cancel" {
		mc.logf(rt, "  %s: cancelled", call)
		mc.seen["cancel ok"]++
		exp.after()
		return
	}
	rec.ID = mc.newRecord(rt, call, rec.ID)
	want := *exp.rec
	want.ID = rec.ID
	if diff := modelDiff(normRecord(want), normRecord(rec)); diff != "" {
		mc.fatalf(rt, "%s: record (-want +got):\n%s", call, diff)
	}
	mc.logf(rt, "  %s: record %d", call, rec.ID)
	mc.seen[strings.ToLower(s.Kind)+" ok"]++
	exp.after()
	mc.m.records = append(mc.m.records, want)
}

// invariants compares Usage and History with the model, and checks that
// History sums to Usage per action and window.
func (mc *machine) invariants(rt *rapid.T) {
	for _, subject := range mc.subjects {
		rep, err := mc.q.Usage(mc.ctx, subject)
		if err != nil {
			mc.fatalf(rt, "Usage(%s): %v", subject, err)
		}
		if diff := modelDiff(normReport(mc.m.report(subject)), normReport(rep)); diff != "" {
			mc.fatalf(rt, "Usage(%s) (-model +got):\n%s", subject, diff)
		}
		recs, err := allRecords(mc.ctx, mc.q, subject, "")
		if err != nil {
			mc.fatalf(rt, "History(%s): %v", subject, err)
		}
		for i := range recs {
			recs[i].ID = mc.recordNo(recs[i].ID)
		}
		want := mc.m.recordsOf(subject)
		if len(want) != len(recs) {
			mc.fatalf(rt, "History(%s) (-model +got):\n%s", subject, cmp.Diff(want, recs, cmpopts.EquateEmpty()))
		}
		for i := range want {
			want[i], recs[i] = normRecord(want[i]), normRecord(recs[i])
		}
		if diff := modelDiff(want, recs); diff != "" {
			mc.fatalf(rt, "History(%s) (-model +got):\n%s", subject, diff)
		}
		// The library's own figures: Usage, less the model's holds,
		// is the sum of the library's records in each window.
		for _, au := range rep.Actions {
			for j, ls := range au.Limits {
				held := mc.m.held(counterOf(subject, au.Action, ls.Period, ls.PeriodStart))
				sum := sumRecords(recs, au.Action, ls.Period, ls.PeriodStart, ls.ResetAt)
				if ls.Used-held != sum {
					mc.fatalf(rt, "Usage(%s) %s per %s [%v, %v): used %d (%d held); its records sum to %d", subject, au.Action, ls.Period, ls.PeriodStart, ls.ResetAt, ls.Used, held, sum)
				}
				if ls.Period == quota.PeriodNone {
					continue
				}
				pv := au.Previous[j]
				if sum := sumRecords(recs, au.Action, ls.Period, pv.Start, pv.End); pv.Used != sum {
					mc.fatalf(rt, "Usage(%s) %s per %s, previous window [%v, %v): used %d; its records sum to %d", subject, au.Action, ls.Period, pv.Start, pv.End, pv.Used, sum)
				}
			}
		}
	}
}

// modelDiff is cmp.Diff, whose reflection would take most of the test's
// time, after a reflect.DeepEqual of values normalized as below (times in
// UTC, without a monotonic reading; empty slices nil).
func modelDiff[V any](want, got V) string {
	if reflect.DeepEqual(want, got) {
		return ""
	}
	return cmp.Diff(want, got, cmpopts.EquateEmpty())
}

func normStatus(ls quota.LimitStatus) quota.LimitStatus {
	ls.PeriodStart, ls.ResetAt = ls.PeriodStart.UTC(), ls.ResetAt.UTC()
	return ls
}

func normStatuses(ls []quota.LimitStatus) []quota.LimitStatus {
	if len(ls) == 0 {
		return nil
	}
	out := make([]quota.LimitStatus, len(ls))
	for i, l := range ls {
		out[i] = normStatus(l)
	}
	return out
}

func normDecision(d quota.Decision) quota.Decision {
	d.LimitStatus = normStatus(d.LimitStatus)
	d.Limits = quota.LimitStatusesOf(normStatuses(d.Limits.AsSlice())...)
	return d
}

func normRecord(r quota.Record) quota.Record {
	r.Time = r.Time.UTC()
	if len(r.Metadata) == 0 {
		r.Metadata = nil
	}
	return r
}

func normReport(r quota.Report) quota.Report {
	r.At = r.At.UTC()
	if len(r.Features) == 0 {
		r.Features = nil
	}
	acts := make([]quota.ActionUsage, len(r.Actions))
	for i, a := range r.Actions {
		a.LimitStatus = normStatus(a.LimitStatus)
		a.Limits = normStatuses(a.Limits)
		a.Previous = slices.Clone(a.Previous)
		for j := range a.Previous {
			a.Previous[j].Start, a.Previous[j].End = a.Previous[j].Start.UTC(), a.Previous[j].End.UTC()
		}
		acts[i] = a
	}
	r.Actions = acts
	return r
}

func sumRecords(recs []quota.Record, action string, p quota.Period, start, end time.Time) int64 {
	var n int64
	for _, r := range recs {
		if r.Action == action && (p == quota.PeriodNone || !r.Time.Before(start) && r.Time.Before(end)) {
			n += r.Amount
		}
	}
	return n
}

// modelBalanced is checkBalanced for the subjects of one sequence, as an
// error.
func modelBalanced(ctx context.Context, db bun.IDB, subjects []string) error {
	rows, err := db.QueryContext(ctx, `SELECT s.subject, s.action, s.period, s.used,
	CAST(coalesce((SELECT sum(r.amount) FROM quota_records r
	  WHERE r.subject = s.subject AND r.action = s.action
	    AND (s.period = 'none' OR (r.recorded_at >= s.period_start AND r.recorded_at < s.period_end))), 0) AS BIGINT)
FROM quota_summaries s WHERE s.subject IN (?, ?)`, subjects[0], subjects[1])
	if err != nil {
		return err
	}
	defer rows.Close()
	var bad []string
	for rows.Next() {
		var subject, action, period string
		var used, sum int64
		if err := rows.Scan(&subject, &action, &period, &used, &sum); err != nil {
			return err
		}
		if used != sum {
			bad = append(bad, fmt.Sprintf("summary %q %q %s: used %d; the sum of its records is %d", subject, action, period, used, sum))
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if bad != nil {
		return errors.New(strings.Join(bad, "\n"))
	}
	return nil
}

// errorName names the sentinel that err matches, for the log.
func errorName(err error) string {
	for _, e := range []struct {
		name string
		err  error
	}{{"not found", quota.ErrReservationNotFound}, {"expired", quota.ErrReservationExpired}, {"invalid amount", quota.ErrInvalidAmount}} {
		if errors.Is(err, e.err) {
			return e.name
		}
	}
	if err == nil {
		return "nil"
	}
	return "other error"
}

func describe(d quota.Decision) string {
	if d.Allowed {
		s := fmt.Sprintf("allowed, used %d/%d per %s", d.Used, d.Limit, d.Period)
		if d.Replayed {
			s += fmt.Sprintf(", replayed record %d", d.RecordID)
		} else if d.RecordID != 0 {
			s += fmt.Sprintf(", record %d", d.RecordID)
		}
		return s
	}
	if d.Reason == quota.ReasonFeature {
		return "denied: " + string(d.Reason) + " " + d.Feature
	}
	return fmt.Sprintf("denied: %s, used %d/%d per %s", d.Reason, d.Used, d.Limit, d.Period)
}

// withoutPerUse clears MaxPerUse, which a replayed decision takes from
// the plan in force now (when a limit is unchanged) rather than from the
// first use.
func withoutPerUse(d quota.Decision) quota.Decision {
	d.MaxPerUse = 0
	ls := d.Limits.AsSlice()
	for i := range ls {
		ls[i].MaxPerUse = 0
	}
	d.Limits = quota.LimitStatusesOf(ls...)
	return d
}

// The model.

type mPayload struct {
	mode     string // consume, track, reserve
	action   string
	amount   int64
	resource string
	meta     int
}

// mOutcome is the first outcome of a key.
type mOutcome struct {
	payload     mPayload
	dec         quota.Decision // RecordID included, MaxPerUse cleared
	holdID      string
	holdExpires time.Time
}

func (o *mOutcome) String() string {
	p := o.payload
	s := fmt.Sprintf("%s(%s %d res=%q meta=%s): %s", p.mode, p.action, p.amount, p.resource, modelMetaJSON[p.meta], describe(o.dec))
	if o.holdID != "" {
		s += ", hold " + o.holdID
	}
	return s
}

// mCounter identifies a counter; start is in Unix seconds, 0 for an
// allocation.
type mCounter struct {
	subject, action string
	period          quota.Period
	start           int64
}

func counterOf(subject, action string, p quota.Period, start time.Time) mCounter {
	c := mCounter{subject: subject, action: action, period: p}
	if p != quota.PeriodNone {
		c.start = start.Unix()
	}
	return c
}

type mHold struct {
	id, subject, action string
	resource, key       string
	meta                int
	amount              int64
	at, expires         time.Time
	counters            []mCounter
	gone                bool // committed, cancelled, or removed expired
	committed           bool
}

type mSub struct {
	plan   string
	anchor time.Time
}

type model struct {
	now     time.Time
	subs    map[string]*mSub
	used    map[mCounter]int64
	holds   map[string]*mHold
	keys    map[[2]string]*mOutcome // (subject, key)
	records []quota.Record          // in the order of their IDs
	// touched is when a use or a settlement of (subject, action) last
	// reached the store, which may then sweep expired holds.
	touched map[[2]string]time.Time
}

func newModel(now time.Time) *model {
	return &model{
		now:     now,
		subs:    make(map[string]*mSub),
		used:    make(map[mCounter]int64),
		holds:   make(map[string]*mHold),
		keys:    make(map[[2]string]*mOutcome),
		touched: make(map[[2]string]time.Time),
	}
}

func planNamed(name string) *quota.Plan {
	for i := range modelPlans {
		if modelPlans[i].Name == name {
			return &modelPlans[i]
		}
	}
	panic("no plan " + name)
}

// limits returns the limits of subject's action, in period order.
func (m *model) limits(subject, action string) []quota.Limit {
	ls := slices.Clone(planNamed(m.subs[subject].plan).Limits[action])
	slices.SortStableFunc(ls, func(a, b quota.Limit) int { return int(a.Period) - int(b.Period) })
	return ls
}

func dayWindow(t time.Time) (time.Time, time.Time) {
	y, mo, d := t.UTC().Date()
	start := time.Date(y, mo, d, 0, 0, 0, 0, time.UTC)
	return start, start.AddDate(0, 0, 1)
}

// monthWindow returns the billing month holding t: it begins on the
// anchor's day of month, clamped to the month's length, at midnight UTC.
func monthWindow(anchor, t time.Time) (time.Time, time.Time) {
	day := anchor.UTC().Day()
	begin := func(y int, mo time.Month, k int) time.Time {
		first := time.Date(y, mo+time.Month(k), 1, 0, 0, 0, 0, time.UTC)
		days := first.AddDate(0, 1, -1).Day()
		return first.AddDate(0, 0, min(day, days)-1)
	}
	y, mo, _ := t.UTC().Date()
	k := 0
	if begin(y, mo, 0).After(t) {
		k = -1
	}
	return begin(y, mo, k), begin(y, mo, k+1)
}

func (m *model) window(subject string, p quota.Period, t time.Time) (time.Time, time.Time) {
	switch p {
	case quota.PeriodNone:
		return time.Time{}, time.Time{}
	case quota.PeriodDay:
		return dayWindow(t)
	case quota.PeriodMonth:
		return monthWindow(m.subs[subject].anchor, t)
	}
	panic("period not modelled: " + p.String())
}

// held is what the unexpired open holds on c amount to.
func (m *model) held(c mCounter) int64 {
	var n int64
	for _, h := range m.holds {
		if !h.gone && h.expires.After(m.now) && slices.Contains(h.counters, c) {
			n += h.amount
		}
	}
	return n
}

// status is the documented LimitStatus of l with used (holds included).
func status(l quota.Limit, used int64, start, end time.Time) quota.LimitStatus {
	st := quota.LimitStatus{Period: l.Period, Limit: l.Max, MaxPerUse: l.MaxPerUse, Used: used, PeriodStart: start, ResetAt: end}
	switch {
	case l.IsUnlimited():
		st.Remaining = quota.Unlimited
	case l.Max == 0:
		st.Percent = 100
	default:
		st.Remaining = max(0, l.Max-used)
		st.Percent = float64(used) * 100 / float64(l.Max)
	}
	t := quota.DefaultThresholds
	switch {
	case st.Percent >= t.Exceeded:
		st.Level = quota.LevelExceeded
	case st.Percent >= t.Critical:
		st.Level = quota.LevelCritical
	case st.Percent >= t.Warning:
		st.Level = quota.LevelWarning
	}
	return st
}

// mostUsed returns the index of the highest percent, the first on ties.
func mostUsed(ls []quota.LimitStatus) int {
	best := 0
	for i := range ls {
		if ls[i].Percent > ls[best].Percent {
			best = i
		}
	}
	return best
}

type useExpect struct {
	err      error     // an error matching it
	conflict bool      // a *quota.ConflictError
	first    *mOutcome // a replay of it
	dec      quota.Decision
	apply    bool // a new record (or hold) on counters
	counters []mCounter
}

// expectUse is what mode (check, consume, track, reserve) does with u.
func (m *model) expectUse(mode string, u quota.Use, meta int) useExpect {
	plan := planNamed(m.subs[u.Subject].plan)
	limits := m.limits(u.Subject, u.Action)
	switch {
	case u.Amount < 0 && mode == "reserve":
		return useExpect{err: quota.ErrInvalidAmount}
	case u.Amount < 0 && limits[0].Period != quota.PeriodNone:
		return useExpect{err: quota.ErrInvalidAmount}
	}
	base := quota.Decision{Subject: u.Subject, Action: u.Action, Plan: plan.Name, Amount: u.Amount}

	// Idempotency before policy.
	if u.Key != "" && mode != "check" {
		m.releaseKey(u.Subject, u.Key)
		if o := m.keys[[2]string{u.Subject, u.Key}]; o != nil {
			if o.payload != (mPayload{mode, u.Action, u.Amount, u.ResourceID, meta}) {
				return useExpect{conflict: true, first: o}
			}
			d := o.dec
			d.Plan, d.Amount, d.Replayed = plan.Name, u.Amount, true
			return useExpect{first: o, dec: d}
		}
	}

	missing := ""
	for _, f := range u.Features {
		if !plan.HasFeature(f) {
			missing = f
			break
		}
	}
	counters := make([]mCounter, len(limits))
	before := make([]quota.LimitStatus, len(limits))
	after := make([]quota.LimitStatus, len(limits))
	refusing, capped := -1, -1
	for i, l := range limits {
		start, end := m.window(u.Subject, l.Period, m.now)
		counters[i] = counterOf(u.Subject, u.Action, l.Period, start)
		used := m.used[counters[i]]
		cur := used + m.held(counters[i])
		before[i] = status(l, cur, start, end)
		after[i] = status(l, cur+u.Amount, start, end)
		refuse := u.Amount > 0 && mode != "track" && !l.IsUnlimited() && cur+u.Amount > l.Max ||
			u.Amount < 0 && used+u.Amount < 0
		if refuse && refusing < 0 {
			refusing = i
		}
		if u.Amount > 0 && l.MaxPerUse > 0 && u.Amount > l.MaxPerUse && capped < 0 {
			capped = i
		}
	}
	if mode != "track" && u.Amount > 0 {
		if missing != "" {
			d := base
			d.Reason, d.Feature = quota.ReasonFeature, missing
			return useExpect{dec: d}
		}
		if capped >= 0 {
			d := base
			d.Reason, d.Limits, d.LimitStatus = quota.ReasonPerUse, quota.LimitStatusesOf(before...), before[capped]
			return useExpect{dec: d}
		}
	}
	d := base
	if refusing >= 0 {
		d.Reason, d.Limits, d.LimitStatus = quota.ReasonLimit, quota.LimitStatusesOf(before...), before[refusing]
		if u.Amount < 0 {
			d.Reason = quota.ReasonBelowZero
		}
		return useExpect{dec: d}
	}
	d.Allowed = true
	if mode == "check" {
		d.Limits, d.LimitStatus = quota.LimitStatusesOf(before...), before[mostUsed(before)]
		return useExpect{dec: d}
	}
	d.Limits, d.LimitStatus = quota.LimitStatusesOf(after...), after[mostUsed(after)]
	return useExpect{dec: d, apply: true, counters: counters}
}

// applyUse records the effects of an allowed use whose decision was dec.
func (m *model) applyUse(mode string, u quota.Use, meta int, exp useExpect, dec quota.Decision, holdID string, holdExp time.Time) {
	if mode == "reserve" {
		m.holds[holdID] = &mHold{
			id: holdID, subject: u.Subject, action: u.Action, resource: u.ResourceID, key: u.Key, meta: meta,
			amount: u.Amount, at: m.now, expires: holdExp, counters: exp.counters,
		}
	} else {
		for _, c := range exp.counters {
			m.used[c] += u.Amount
		}
		r := m.record(u.Subject, u.Action, u.Amount, u.ResourceID, meta, u.Key, m.now)
		r.ID = dec.RecordID
		m.records = append(m.records, r)
	}
	if u.Key != "" {
		m.keys[[2]string{u.Subject, u.Key}] = &mOutcome{
			payload: mPayload{mode, u.Action, u.Amount, u.ResourceID, meta},
			dec:     withoutPerUse(dec), holdID: holdID, holdExpires: holdExp,
		}
	}
}

func (m *model) record(subject, action string, amount int64, resource string, meta int, key string, at time.Time) quota.Record {
	r := quota.Record{Subject: subject, Action: action, Amount: amount, ResourceID: resource, Key: key, Time: at}
	if meta != 0 {
		r.Metadata = []byte(modelMetaJSON[meta])
	}
	return r
}

type settleExpect struct {
	errs  []error       // one of them (nil: success without a record)
	rec   *quota.Record // the record of a commit, its ID unknown
	after func()        // the model's effects, once the outcome matched
}

// releaseKey forgets the key of subject whose first use was a hold that
// was cancelled, or expired, uncommitted: it was never used, and the next
// use of the key claims it anew.
func (m *model) releaseKey(subject, key string) {
	o := m.keys[[2]string{subject, key}]
	if o == nil || o.holdID == "" {
		return
	}
	if h := m.holds[o.holdID]; h != nil && !h.committed && (h.gone || !h.expires.After(m.now)) {
		delete(m.keys, [2]string{subject, key})
	}
}

// swept reports whether the store may have removed h, expired, already.
func (m *model) swept(h *mHold) bool {
	t, ok := m.touched[[2]string{h.subject, h.action}]
	return ok && !t.Before(h.expires)
}

func (m *model) expectCommit(id string, amount int64) settleExpect {
	h := m.holds[id]
	switch {
	case h == nil || h.gone:
		return settleExpect{errs: []error{quota.ErrReservationNotFound}, after: func() {}}
	case !h.expires.After(m.now):
		errs := []error{quota.ErrReservationExpired}
		if m.swept(h) {
			errs = append(errs, quota.ErrReservationNotFound)
		}
		return settleExpect{errs: errs, after: func() { h.gone = true }}
	}
	r := m.record(h.subject, h.action, amount, h.resource, h.meta, h.key, h.at)
	return settleExpect{rec: &r, after: func() {
		h.gone, h.committed = true, true
		for _, c := range h.counters {
			m.used[c] += amount
		}
	}}
}

func (m *model) expectCancel(id string) settleExpect {
	h := m.holds[id]
	switch {
	case h == nil || h.gone:
		return settleExpect{errs: []error{quota.ErrReservationNotFound}, after: func() {}}
	case !h.expires.After(m.now):
		return settleExpect{errs: []error{nil, quota.ErrReservationNotFound, quota.ErrReservationExpired}, after: func() { h.gone = true }}
	}
	return settleExpect{after: func() { h.gone = true }}
}

// report is the Usage the model expects for subject.
func (m *model) report(subject string) quota.Report {
	plan := planNamed(m.subs[subject].plan)
	r := quota.Report{Subject: subject, Plan: plan.Name, At: m.now, TimeZone: "UTC", Features: slices.Sorted(slices.Values(plan.Features))}
	for _, a := range modelActions {
		limits := m.limits(subject, a)
		au := quota.ActionUsage{Action: a}
		for _, l := range limits {
			start, end := m.window(subject, l.Period, m.now)
			c := counterOf(subject, a, l.Period, start)
			au.Limits = append(au.Limits, status(l, m.used[c]+m.held(c), start, end))
			var prev quota.WindowUsage
			if l.Period != quota.PeriodNone {
				ps, pe := m.window(subject, l.Period, start.Add(-time.Second))
				prev = quota.WindowUsage{Start: ps, End: pe, Used: m.used[counterOf(subject, a, l.Period, ps)]}
			}
			au.Previous = append(au.Previous, prev)
		}
		au.LimitStatus = au.Limits[mostUsed(au.Limits)]
		r.Actions = append(r.Actions, au)
	}
	return r
}

func (m *model) recordsOf(subject string) []quota.Record {
	var out []quota.Record
	for _, r := range m.records {
		if r.Subject == subject {
			out = append(out, r)
		}
	}
	return out
}
