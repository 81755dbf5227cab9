package quotatest

import (
	"testing"
	"time"

	"github.com/quotakit/quota"
)

// testPeriods checks invariant 6 through the store: each period's window
// holds its own counter, a new window starts from zero at the old one's
// end, the old window's ledger still balances, and months follow the
// billing anchor, clamped to short months.
func testPeriods(t *testing.T, s *suite) {
	e := s.env(t)
	periods := []periodCase{
		{"hourly", quota.PerHour(3), date(2025, 1, 15, 10), date(2025, 1, 15, 11)},
		{"daily", quota.PerDay(3), date(2025, 1, 15, 0), date(2025, 1, 16, 0)},
		{"weekly", quota.PerWeek(3), date(2025, 1, 13, 0), date(2025, 1, 20, 0)}, // Monday to Monday
		{"monthly", quota.PerMonth(3), date(2025, 1, 1, 0), date(2025, 2, 1, 0)},
		{"yearly", quota.PerYear(3), date(2025, 1, 1, 0), date(2026, 1, 1, 0)},
	}
	limits := make(map[string][]quota.Limit)
	for _, p := range periods {
		limits[p.action] = []quota.Limit{p.limit}
	}
	q := e.quota(t, quota.Config{Plans: []quota.Plan{plan("P", limits)}})

	t.Run("Reset", func(t *testing.T) { testPeriodsReset(t, e, q, periods) })
	t.Run("MonthAnchor31", func(t *testing.T) {
		walkMonths(t, e, q, "jan31", date(2025, 1, 31, 15), date(2025, 2, 10, 0), "", []time.Time{
			date(2025, 1, 31, 0), date(2025, 2, 28, 0), date(2025, 3, 31, 0), date(2025, 4, 30, 0), date(2025, 5, 31, 0),
		})
	})
	t.Run("MonthAnchor31Leap", func(t *testing.T) {
		walkMonths(t, e, q, "jan31leap", date(2024, 1, 31, 15), date(2024, 2, 10, 0), "", []time.Time{
			date(2024, 1, 31, 0), date(2024, 2, 29, 0), date(2024, 3, 31, 0),
		})
	})
	t.Run("TimeZone", func(t *testing.T) { testPeriodsTimeZone(t, e, q) })
}

// date returns the hour h of a day in UTC.
func date(y int, m time.Month, d, h int) time.Time { return time.Date(y, m, d, h, 0, 0, 0, time.UTC) }

// periodCase is an action of testPeriods with a limit of 3 a period, and
// the window of that period at t0.
type periodCase struct {
	action     string
	limit      quota.Limit
	start, end time.Time // the window of t0
}

func testPeriodsReset(t *testing.T, e *env, q *quota.Quota, periods []periodCase) {
	subj := e.name("reset")
	e.subscribe(t, q, subj, "P")
	for _, p := range periods {
		e.clock.Set(t0)
		u := quota.Use{Subject: subj, Action: p.action, Amount: 1}
		consume(t, e.ctx, q, u)
		e.clock.Add(time.Microsecond)
		u.Amount = 2
		wantAllowed(t, p.action+": Consume(2) after 1", consume(t, e.ctx, q, u), 3)
		u.Amount = 1
		d := consume(t, e.ctx, q, u)
		wantDenied(t, p.action+": Consume(1) after 3", d, quota.ReasonLimit, 3)
		if !d.PeriodStart.Equal(p.start) || !d.ResetAt.Equal(p.end) {
			t.Errorf("%s at %v: window [%v, %v); want [%v, %v)", p.action, t0, d.PeriodStart, d.ResetAt, p.start, p.end)
		}
		// The last microsecond of the window belongs to it.
		e.clock.Set(p.end.Add(-time.Microsecond))
		wantDenied(t, p.action+": Consume(1) in the last microsecond", consume(t, e.ctx, q, u), quota.ReasonLimit, 3)
		wantAllowed(t, p.action+": Track(1) in the last microsecond", track(t, e.ctx, q, u), 4)
		// The next window starts at its end, from zero.
		e.clock.Set(p.end)
		d = consume(t, e.ctx, q, u)
		wantAllowed(t, p.action+": Consume(1) at the reset", d, 1)
		if !d.PeriodStart.Equal(p.end) {
			t.Errorf("%s at the reset: window starts %v; want %v, the end of the last", p.action, d.PeriodStart, p.end)
		}
		old, oldRecs := e.ledger(t, window{key: quota.CounterKey{Subject: subj, Action: p.action, Period: p.limit.Period, Start: p.start}, end: p.end})
		cur, curRecs := e.ledger(t, windowOf(subj, p.action, d.LimitStatus))
		if old.Used != 4 || len(oldRecs) != 3 || cur.Used != 1 || len(curRecs) != 1 {
			t.Errorf("%s: old window %d used in %d records, new %d in %d; want 4 in 3, 1 in 1", p.action, old.Used, len(oldRecs), cur.Used, len(curRecs))
		}
	}
	e.clock.Set(t0)
}

// walkMonths walks a subscription anchored at anchor from the clock at
// from through the windows want (starts, then the last end).
func walkMonths(t *testing.T, e *env, q *quota.Quota, name string, anchor, from time.Time, tz string, want []time.Time) {
	t.Helper()
	defer e.clock.Set(t0)
	subj := e.name(name)
	if err := q.Subscribe(e.ctx, quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor, TimeZone: tz}); err != nil {
		t.Fatalf("Subscribe(anchor %v) = %v", anchor, err)
	}
	e.clock.Set(from)
	for i := 0; i+1 < len(want); i++ {
		u := quota.Use{Subject: subj, Action: "monthly", Amount: 1}
		d := track(t, e.ctx, q, u)
		if !d.PeriodStart.Equal(want[i]) || !d.ResetAt.Equal(want[i+1]) {
			t.Errorf("anchor %v, at %v: window [%v, %v); want [%v, %v)", anchor, e.clock.Now(), d.PeriodStart, d.ResetAt, want[i], want[i+1])
		}
		e.clock.Set(d.ResetAt)
	}
	for i := 0; i+1 < len(want); i++ {
		w := window{key: quota.CounterKey{Subject: subj, Action: "monthly", Period: quota.PeriodMonth, Start: want[i]}, end: want[i+1]}
		if c, recs := e.ledger(t, w); c.Used != 1 || len(recs) != 1 {
			t.Errorf("window from %v: %d used in %d records; want 1 in 1", want[i], c.Used, len(recs))
		}
	}
}

func testPeriodsTimeZone(t *testing.T, e *env, q *quota.Quota) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Skipf("no time zone database: %v", err)
	}
	// Months begin at midnight in New York (05:00 UTC in winter, 04:00
	// in summer).
	walkMonths(t, e, q, "ny", time.Date(2025, 1, 31, 12, 0, 0, 0, ny), date(2025, 2, 10, 0), "America/New_York", []time.Time{
		date(2025, 1, 31, 5), date(2025, 2, 28, 5), date(2025, 3, 31, 4),
	})
	// Days too; 9 March 2025 is 23 hours long there.
	subj := e.name("nyday")
	if err := q.Subscribe(e.ctx, quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor0, TimeZone: "America/New_York"}); err != nil {
		t.Fatalf("Subscribe() = %v", err)
	}
	defer e.clock.Set(t0)
	for _, c := range []struct{ at, start, end time.Time }{
		{date(2025, 1, 15, 3), date(2025, 1, 14, 5), date(2025, 1, 15, 5)},
		{date(2025, 3, 9, 12), date(2025, 3, 9, 5), date(2025, 3, 10, 4)},
	} {
		e.clock.Set(c.at)
		d := track(t, e.ctx, q, quota.Use{Subject: subj, Action: "daily", Amount: 1})
		if !d.PeriodStart.Equal(c.start) || !d.ResetAt.Equal(c.end) {
			t.Errorf("day in New York at %v: [%v, %v); want [%v, %v)", c.at, d.PeriodStart, d.ResetAt, c.start, c.end)
		}
		if cnt, _ := e.ledger(t, windowOf(subj, "daily", d.LimitStatus)); cnt.Used != 1 {
			t.Errorf("day in New York at %v: counter %d; want 1", c.at, cnt.Used)
		}
	}
}

// testPlanChanges checks upgrades (Subscribe, at once, counting what was
// used) and downgrades (SchedulePlan, at the end of the billing month).
func testPlanChanges(t *testing.T, s *suite) {
	e := s.env(t)
	const action = "diagram.upload"
	q := e.quota(t, quota.Config{Plans: []quota.Plan{
		plan("FREE", map[string][]quota.Limit{action: {quota.PerMonth(5)}}),
		plan("PRO", map[string][]quota.Limit{action: {quota.PerMonth(100)}}, "api_access"),
	}})
	subj := e.name("s")
	e.subscribe(t, q, subj, "FREE")
	u := quota.Use{Subject: subj, Action: action, Amount: 1}
	for range 5 {
		consume(t, e.ctx, q, u)
	}
	wantDenied(t, "Consume(1) after 5 of 5 on FREE", consume(t, e.ctx, q, u), quota.ReasonLimit, 5)

	upgrade(t, e, q, u)
	feb := anchor0.AddDate(0, 1, 0)
	downgrade(t, e, q, u, feb)
	afterDowngrade(t, e, q, u, feb)
	resubscribeScheduled(t, e, q, action, feb)
}

// upgrade upgrades u's subject from FREE to PRO mid-period with 5 used of
// u's action.
func upgrade(t *testing.T, e *env, q *quota.Quota, u quota.Use) {
	subj := u.Subject
	// Upgrade mid-period: the uses of the month count against PRO.
	e.clock.Add(time.Hour)
	sub, err := q.Subscription(e.ctx, subj)
	if err != nil {
		t.Fatalf("Subscription(%q) = %v", subj, err)
	}
	sub.Plan = "PRO"
	if err := q.Subscribe(e.ctx, sub); err != nil {
		t.Fatalf("Subscribe(PRO) = %v", err)
	}
	d := check(t, e.ctx, q, u)
	wantAllowed(t, "Check(1) after upgrading with 5 used", d, 5)
	if d.Plan != "PRO" || d.Limit != 100 {
		t.Errorf("Check(1) after upgrading: plan %q, limit %d; want PRO, 100", d.Plan, d.Limit)
	}
	wantAllowed(t, "Consume(1) after upgrading", consume(t, e.ctx, q, u), 6)
}

// downgrade schedules the downgrade of u's subject to FREE at feb, the end
// of the billing month, with 6 used of u's action on PRO, and uses 10
// more just before it.
func downgrade(t *testing.T, e *env, q *quota.Quota, u quota.Use, feb time.Time) {
	subj, action := u.Subject, u.Action
	// Downgrade at the end of the billing month.
	at, err := q.SchedulePlan(e.ctx, subj, "FREE")
	if err != nil || !at.Equal(feb) {
		t.Fatalf("SchedulePlan(FREE) = %v, %v; want %v, nil", at, err, feb)
	}
	stored, err := e.store.GetSubscription(e.ctx, subj)
	if err != nil || stored.Plan != "PRO" || stored.NextPlan != "FREE" || !stored.NextPlanAt.Equal(feb) {
		t.Errorf("Store.GetSubscription after SchedulePlan = %+v, %v; want Plan PRO, NextPlan FREE at %v", stored, err, feb)
	}
	e.clock.Set(feb.Add(-time.Microsecond))
	d := consume(t, e.ctx, q, quota.Use{Subject: subj, Action: action, Amount: 10})
	wantAllowed(t, "Consume(10) just before the downgrade", d, 16)
	if d.Plan != "PRO" || d.Limit != 100 {
		t.Errorf("Consume(10) just before the downgrade: plan %q, limit %d; want PRO, 100", d.Plan, d.Limit)
	}
	if ok, err := q.HasFeature(e.ctx, subj, "api_access"); err != nil || !ok {
		t.Errorf("HasFeature(api_access) just before the downgrade = %v, %v; want true, nil", ok, err)
	}
}

// afterDowngrade checks u's subject from feb, the downgrade to FREE, with
// 16 used of u's action in January.
func afterDowngrade(t *testing.T, e *env, q *quota.Quota, u quota.Use, feb time.Time) {
	subj, action := u.Subject, u.Action
	e.clock.Set(feb)
	d := check(t, e.ctx, q, u)
	wantAllowed(t, "Check(1) at the downgrade", d, 0)
	if d.Plan != "FREE" || d.Limit != 5 || !d.PeriodStart.Equal(feb) {
		t.Errorf("Check(1) at the downgrade: plan %q, limit %d, window from %v; want FREE, 5, %v", d.Plan, d.Limit, d.PeriodStart, feb)
	}
	if ok, err := q.HasFeature(e.ctx, subj, "api_access"); err != nil || ok {
		t.Errorf("HasFeature(api_access) after the downgrade = %v, %v; want false, nil", ok, err)
	}
	for i := range 5 {
		wantAllowed(t, "Consume(1) on FREE", consume(t, e.ctx, q, u), int64(i+1))
	}
	wantDenied(t, "Consume(1) after 5 of 5 on FREE", consume(t, e.ctx, q, u), quota.ReasonLimit, 5)
	if c, _ := e.ledger(t, monthOf(subj, action)); c.Used != 16 {
		t.Errorf("January counter = %d; want 16", c.Used)
	}
	if c, _ := e.ledger(t, window{key: quota.CounterKey{Subject: subj, Action: action, Period: quota.PeriodMonth, Start: feb}, end: feb.AddDate(0, 1, 0)}); c.Used != 5 {
		t.Errorf("February counter = %d; want 5", c.Used)
	}
}

// resubscribeScheduled checks that Subscribe replaces a change of plan
// scheduled for feb.
func resubscribeScheduled(t *testing.T, e *env, q *quota.Quota, action string, feb time.Time) {
	// Subscribe replaces a scheduled change.
	e.clock.Set(t0)
	subj2 := e.name("s2")
	e.subscribe(t, q, subj2, "PRO")
	if _, err := q.SchedulePlan(e.ctx, subj2, "FREE"); err != nil {
		t.Fatalf("SchedulePlan(FREE) = %v", err)
	}
	e.subscribe(t, q, subj2, "PRO")
	e.clock.Set(feb)
	if d := check(t, e.ctx, q, quota.Use{Subject: subj2, Action: action, Amount: 1}); d.Plan != "PRO" {
		t.Errorf("Check after Subscribe replaced a scheduled downgrade: plan %q; want PRO", d.Plan)
	}
	e.clock.Set(t0)
}
