package quotatest

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quotakit/quota"
)

// testVersions checks that a plan change is seen at once by every Quota
// sharing the store: after Subscribe or SchedulePlan returns, no use made
// through any Quota is judged against the old plan, whatever the Quotas
// cached. On a quota.Versioned store it also checks Subscription.Version
// and Op.Version on the store directly.
func testVersions(t *testing.T, s *suite) {
	t.Run("TwoQuotas", func(t *testing.T) { testVersionsTwoQuotas(t, s) })
	t.Run("PlanSwitches", func(t *testing.T) { testVersionsPlanSwitches(t, s) })
	t.Run("Store", func(t *testing.T) { testVersionsStore(t, s) })
}

// versioned reports whether st keeps subscription versions, and logs it
// when it does not.
func versioned(t *testing.T, st quota.Store) bool {
	t.Helper()
	if isVersioned(st) {
		return true
	}
	t.Logf("the store does not version subscriptions (quota.Versioned): Subscription.Version and Op.Version not checked")
	return false
}

func isVersioned(st quota.Store) bool {
	v, ok := st.(quota.Versioned)
	return ok && v.Versioned()
}

// testVersionsTwoQuotas makes plan changes through one Quota and uses
// through another, over one store.
func testVersionsTwoQuotas(t *testing.T, s *suite) {
	e := s.env(t)
	const action, seats = "a", "seats"
	cfg := quota.Config{
		Plans: []quota.Plan{
			plan("FREE", map[string][]quota.Limit{action: {quota.PerMonth(3)}, seats: {quota.PerMonth(5)}}),
			plan("PRO", map[string][]quota.Limit{action: {quota.PerMonth(100)}, seats: {quota.Total(10)}}, "export"),
		},
		DefaultPlan: "FREE",
	}
	admin, app := e.quota(t, cfg), e.quota(t, cfg)
	subj := e.name("s")
	u := quota.Use{Subject: subj, Action: action, Amount: 1}
	versioned(t, e.store)
	wantPlan := func(what string, d quota.Decision, plan string, limit int64) {
		t.Helper()
		if d.Plan != plan || d.Limit != limit {
			t.Errorf("%s: plan %q, limit %d; want %q, %d", what, d.Plan, d.Limit, plan, limit)
		}
	}

	// Each change below is made through admin while app holds the old
	// plan: what app decides by a plan it cached (an error, a denial by
	// a feature, a use) must follow the plan stored.
	//
	// No subscription: the default plan, FREE. It lacks export, and
	// counts seats by the month: a release of seats is an error.
	withFeature := u
	withFeature.Features = []string{"export"}
	release := quota.Use{Subject: subj, Action: seats, Amount: -1}
	wantPlan("Consume with no subscription", consume(t, e.ctx, app, u), "FREE", 3)
	if d := consume(t, e.ctx, app, withFeature); d.Allowed || d.Reason != quota.ReasonFeature {
		t.Errorf("Consume(export) with no subscription = {Allowed %v, Reason %q}; want denied by the feature", d.Allowed, d.Reason)
	}
	_, err := app.Consume(e.ctx, release)
	wantErr(t, "Consume(-1 seat) on FREE", err, quota.ErrInvalidAmount)

	// PRO allocates seats: a release is judged, not an error.
	e.subscribe(t, admin, subj, "PRO")
	versions := []int64{wantVersion(t, e, admin, subj, nil)}
	if d, err := app.Consume(e.ctx, release); err != nil || d.Reason != quota.ReasonBelowZero || d.Plan != "PRO" {
		t.Errorf("Consume(-1 seat) after Subscribe(PRO) through the other Quota = %+v, %v; want denied below zero on PRO", d, err)
	}
	// Back to FREE, then PRO again: PRO has export.
	e.subscribe(t, admin, subj, "FREE")
	versions = append(versions, wantVersion(t, e, admin, subj, versions))
	wantPlan("Consume after Subscribe(FREE) through the other Quota", consume(t, e.ctx, app, u), "FREE", 3)
	e.subscribe(t, admin, subj, "PRO")
	versions = append(versions, wantVersion(t, e, admin, subj, versions))
	wantAllowed(t, "Consume(export) after Subscribe(PRO) through the other Quota", consume(t, e.ctx, app, withFeature), 3)
	wantPlan("Consume after Subscribe(PRO) through the other Quota", consume(t, e.ctx, app, u), "PRO", 100)

	// A feature that the new plan lacks: denied at once.
	e.subscribe(t, admin, subj, "FREE")
	versions = append(versions, wantVersion(t, e, admin, subj, versions))
	if d := consume(t, e.ctx, app, withFeature); d.Allowed || d.Reason != quota.ReasonFeature || d.Plan != "FREE" {
		t.Errorf("Consume(export) after Subscribe(FREE) through the other Quota = {Allowed %v, Reason %q, Plan %q}; want denied by the feature on FREE", d.Allowed, d.Reason, d.Plan)
	}
	// 4 used of FREE's 3: Consume and Reserve are denied, Track counts.
	wantDenied(t, "Consume(1) after the downgrade", consume(t, e.ctx, app, u), quota.ReasonLimit, 4)
	if r, err := app.Reserve(e.ctx, u); err != nil || r.Decision.Allowed || r.Decision.Plan != "FREE" {
		t.Errorf("Reserve(1) after the downgrade = %+v, %v; want denied on FREE", r, err)
	}
	wantPlan("Track after the downgrade", track(t, e.ctx, app, u), "FREE", 3)

	// A scheduled change, then its time.
	e.subscribe(t, admin, subj, "PRO")
	versions = append(versions, wantVersion(t, e, admin, subj, versions))
	r, err := app.Reserve(e.ctx, u)
	if err != nil || !r.Decision.Allowed || r.Decision.Plan != "PRO" {
		t.Fatalf("Reserve(1) after the upgrade = %+v, %v; want allowed on PRO", r, err)
	}
	if _, err := r.Commit(e.ctx); err != nil {
		t.Fatalf("Commit = %v", err)
	}
	feb, err := admin.SchedulePlan(e.ctx, subj, "FREE")
	if err != nil {
		t.Fatalf("SchedulePlan(FREE) = %v", err)
	}
	wantVersion(t, e, admin, subj, versions)
	wantPlan("Consume after SchedulePlan(FREE), before it takes effect", consume(t, e.ctx, app, u), "PRO", 100)
	e.clock.Set(feb)
	wantPlan("Consume when the scheduled FREE takes effect", consume(t, e.ctx, app, u), "FREE", 3)
}

// wantVersion checks, on a Versioned store, that the subscription of subj
// has a positive Version that none of before had, and that the Quota
// reports it too; it returns it.
func wantVersion(t *testing.T, e *env, q *quota.Quota, subj string, before []int64) int64 {
	t.Helper()
	stored, err := e.store.GetSubscription(e.ctx, subj)
	if err != nil {
		t.Fatalf("Store.GetSubscription(%q) = %v", subj, err)
	}
	if !isVersioned(e.store) {
		return stored.Version
	}
	if stored.Version <= 0 {
		t.Errorf("Store.GetSubscription after a write by the Quota: Version %d; want a positive Version", stored.Version)
	}
	for _, v := range before {
		if v == stored.Version {
			t.Errorf("Store.GetSubscription after a write: Version %d, as before it; want a new Version", v)
		}
	}
	if got, err := q.Subscription(e.ctx, subj); err != nil || got.Version != stored.Version {
		t.Errorf("Subscription(%q) = Version %d, %v; want the stored %d", subj, got.Version, err, stored.Version)
	}
	return stored.Version
}

// testVersionsPlanSwitches has goroutines use an action through one Quota
// while another moves the subject through a series of plans: a use that
// begins after the switch to plan i returned is judged against plan i or
// a later one.
func testVersionsPlanSwitches(t *testing.T, s *suite) {
	e := s.env(t)
	const action, plans, goroutines = "a", 12, 6
	cfg := quota.Config{}
	for i := range plans {
		cfg.Plans = append(cfg.Plans, plan("P"+strconv.Itoa(i), map[string][]quota.Limit{action: {perMonthUnlimited}}))
	}
	admin, app := e.quota(t, cfg), e.quota(t, cfg)
	subj := e.name("s")
	e.subscribe(t, admin, subj, "P0")

	var switched atomic.Int64 // the last plan whose Subscribe returned
	var done atomic.Bool
	var mu sync.Mutex
	var problems []string
	var uses, alive atomic.Int64
	var wg sync.WaitGroup
	alive.Store(goroutines)
	for g := range goroutines {
		wg.Go(func() {
			defer alive.Add(-1)
			for !done.Load() || uses.Load() < 2*goroutines {
				before := switched.Load()
				u := quota.Use{Subject: subj, Action: action, Amount: 1}
				var d quota.Decision
				var err error
				if g%2 == 0 {
					d, err = app.Consume(e.ctx, u)
				} else {
					d, err = app.Track(e.ctx, u)
				}
				after := switched.Load()
				uses.Add(1)
				i, perr := strconv.Atoi(strings.TrimPrefix(d.Plan, "P"))
				var p string
				switch {
				case err != nil:
					p = fmt.Sprintf("use failed: %v", err)
				case perr != nil || !d.Allowed:
					p = fmt.Sprintf("decision %+v; want allowed on a plan P<n>", d)
				case int64(i) < before:
					p = fmt.Sprintf("use judged against P%d after the switch to P%d returned", i, before)
				case int64(i) > after+1:
					p = fmt.Sprintf("use judged against P%d before the switch to it began (P%d was the last)", i, after)
				}
				if p != "" {
					mu.Lock()
					problems = append(problems, p)
					mu.Unlock()
					return
				}
			}
		})
	}
	for i := 1; i < plans; i++ {
		// Let uses run between switches.
		for n := uses.Load(); uses.Load() < n+goroutines && alive.Load() > 0; {
			runtime.Gosched()
		}
		e.subscribe(t, admin, subj, "P"+strconv.Itoa(i))
		switched.Store(int64(i))
	}
	done.Store(true)
	wg.Wait()
	for i, p := range problems {
		if i == 5 {
			t.Errorf("... and %d more", len(problems)-5)
			break
		}
		t.Error(p)
	}
	if d := consume(t, e.ctx, app, quota.Use{Subject: subj, Action: action, Amount: 1}); d.Plan != "P"+strconv.Itoa(plans-1) {
		t.Errorf("Consume after the last switch: plan %q; want P%d", d.Plan, plans-1)
	}
	t.Logf("%d uses during %d plan switches", uses.Load(), plans-1)
}

// testVersionsStore checks Subscription.Version and Op.Version (Op, step
// 0) on a Versioned store directly.
func testVersionsStore(t *testing.T, s *suite) {
	e := s.env(t)
	if !versioned(t, e.store) {
		return
	}
	st, ctx := e.store, e.ctx
	subj, stranger := e.name("s"), e.name("stranger")
	w := monthOf(subj, "x")
	op := func(version int64, key string, hold *quota.Hold) *quota.Op {
		o := &quota.Op{
			Counters: []quota.CounterOp{{CounterKey: w.key, End: w.end, Max: 100}},
			Record:   quota.Record{Subject: subj, Action: "x", Amount: 1, Key: key, Time: t0},
			Enforce:  true, Hold: hold, Version: version, Now: t0,
		}
		if key != "" {
			o.Fingerprint = "f"
		}
		return o
	}
	put := func(version int64) {
		t.Helper()
		in := quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor0, Version: version}
		if err := st.PutSubscription(ctx, in); err != nil {
			t.Fatalf("Store.PutSubscription(Version %d) = %v", version, err)
		}
		if got, err := st.GetSubscription(ctx, subj); err != nil || got.Version != version {
			t.Fatalf("Store.GetSubscription after PutSubscription(Version %d) = Version %d, %v; want %d", version, got.Version, err, version)
		}
	}
	type state struct {
		used, held int64
		records    int
	}
	now := func() state {
		c := e.counters(t, w.key)[0]
		return state{c.Used, c.Held, len(e.records(t, quota.RecordQuery{Subject: subj}))}
	}
	apply := func(what string, o *quota.Op) quota.ApplyResult {
		t.Helper()
		res, err := st.Apply(ctx, o)
		if err != nil || !res.Applied {
			t.Fatalf("Store.Apply(%s) = %+v, %v; want applied", what, res, err)
		}
		return res
	}
	refused := func(what string, o *quota.Op) {
		t.Helper()
		before := now()
		_, err := st.Apply(ctx, o)
		wantErr(t, "Store.Apply("+what+")", err, quota.ErrSubscriptionChanged)
		if after := now(); after != before {
			t.Errorf("Store.Apply(%s) wrote: {Used, Held, records} %v before, %v after", what, before, after)
		}
	}

	// No subscription: VersionNone applies, any other Version is refused.
	apply("VersionNone, no subscription", op(quota.VersionNone, "", nil))
	refused("Version 7, no subscription", op(7, "", nil))
	put(7)
	refused("VersionNone with a subscription", op(quota.VersionNone, "", nil))
	apply("Version 7 of 7", op(7, "", nil))
	apply("Version 0 checks nothing", op(0, "", nil))
	put(9)
	refused("Version 7 of 9", op(7, "", nil))
	notEnforced := op(7, "", nil)
	notEnforced.Enforce = false
	refused("Version 7 of 9, not enforced", notEnforced)
	refused("a hold, Version 7 of 9", op(7, "", &quota.Hold{ID: e.name("h1"), ExpiresAt: t0.Add(time.Hour)}))
	wantErr(t, "Store.Cancel of the hold of a refused Apply", st.Cancel(ctx, e.name("h1"), t0), quota.ErrReservationNotFound)

	// A refused use claims no key; the check comes before the key's
	// lookup, so a replay is refused too.
	refused("key k, Version 7 of 9", op(7, "k", nil))
	first := apply("key k, Version 9 of 9", op(9, "k", nil))
	if first.Replayed {
		t.Errorf("Store.Apply(key k) after a refused use of k: Replayed; want the first use")
	}
	refused("replay of k, Version 7 of 9", op(7, "k", nil))
	again := apply("replay of k, Version 9 of 9", op(9, "k", nil))
	if !again.Replayed || again.RecordID != first.RecordID {
		t.Errorf("Store.Apply(replay of k) = {Replayed %v, RecordID %d}; want the first outcome, record %d", again.Replayed, again.RecordID, first.RecordID)
	}
	if got := now(); got != (state{used: 4, records: 4}) {
		t.Errorf("after the uses: {Used, Held, records} = %v; want {4 0 4}", got)
	}

	// Another subject's subscription is not this one's.
	if err := st.PutSubscription(ctx, quota.Subscription{Subject: stranger, Plan: "P", Anchor: anchor0, Version: 9}); err != nil {
		t.Fatal(err)
	}
	strangerOp := op(quota.VersionNone, "", nil)
	strangerOp.Record.Subject = stranger
	strangerOp.Counters[0].Subject = stranger
	refused("VersionNone of a subscribed stranger", strangerOp)
	strangerOp.Version = 9
	apply("Version 9 of a stranger's 9", strangerOp)

	// Version 0 is kept as 0: a store may hold subscriptions written
	// without one.
	put(0)
	refused("Version 9 of 0", op(9, "", nil))
	apply("Version 0 of 0", op(0, "", nil))
	if got := now(); got != (state{used: 5, records: 5}) {
		t.Errorf("at the end: {Used, Held, records} = %v; want {5 0 5}", got)
	}
}
