package quotatest

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/quotakit/quota"
)

// testTrack checks that Track records past the limit (billing must see
// it), and that Consume, Check and Reserve are denied after it.
func testTrack(t *testing.T, s *suite) {
	e := s.env(t)
	const action = "ai.analysis"
	q := e.quota(t, quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{action: {quota.PerMonth(5)}})}})
	subj := e.name("s")
	e.subscribe(t, q, subj, "P")
	u := quota.Use{Subject: subj, Action: action, Amount: 3}
	wantAllowed(t, "Track(3) of 5", track(t, e.ctx, q, u), 3)
	got := track(t, e.ctx, q, u)
	st := quota.LimitStatus{Period: quota.PeriodMonth, Limit: 5, Used: 6, Remaining: 0, Percent: 120, Level: quota.LevelExceeded,
		PeriodStart: anchor0, ResetAt: anchor0.AddDate(0, 1, 0)}
	want := quota.Decision{Allowed: true, Subject: subj, Action: action, Plan: "P", Amount: 3, LimitStatus: st,
		Limits: quota.LimitStatusesOf(st), RecordID: got.RecordID}
	if diff := cmp.Diff(want, got, cmpTime); diff != "" || got.RecordID == 0 {
		t.Errorf("Track(3) with 3 of 5 used (-want +got):\n%s", diff)
	}
	u.Amount = 1
	wantDenied(t, "Consume(1) with 6 of 5 used", consume(t, e.ctx, q, u), quota.ReasonLimit, 6)
	wantDenied(t, "Check(1) with 6 of 5 used", check(t, e.ctx, q, u), quota.ReasonLimit, 6)
	r, err := q.Reserve(e.ctx, u)
	if err != nil {
		t.Fatalf("Reserve(1) = %v", err)
	}
	wantDenied(t, "Reserve(1) with 6 of 5 used", r.Decision, quota.ReasonLimit, 6)
	if c, recs := e.ledger(t, monthOf(subj, action)); c.Used != 6 || len(recs) != 2 || c.Held != 0 {
		t.Errorf("counter {Used %d, Held %d}, %d records; want {6, 0}, 2", c.Used, c.Held, len(recs))
	}
}

// testUsage checks the usage report (every action of the plan with its
// figures, the features) and the levels at default and custom thresholds.
func testUsage(t *testing.T, s *suite) {
	e := s.env(t)
	cat := []quota.Plan{
		plan("P", map[string][]quota.Limit{
			"a": {quota.PerMonth(100)},
			"b": {quota.PerDay(10), quota.PerMonth(50)},
			"c": {perMonthUnlimited},
			"d": {quota.Total(0)},
			"e": {quota.Total(1000).WithMaxPerUse(100)},
		}, "team", "api_access"),
		plan("Q", map[string][]quota.Limit{"z": {quota.PerMonth(1)}}),
	}
	q := e.quota(t, quota.Config{Plans: cat})
	subj := e.name("s")
	e.subscribe(t, q, subj, "P")
	for _, u := range []struct {
		action string
		n      int64
	}{{"a", 80}, {"b", 9}, {"c", 7}, {"e", 1000}} {
		track(t, e.ctx, q, quota.Use{Subject: subj, Action: u.action, Amount: u.n})
	}
	// Reservations count as used.
	if r, err := q.Reserve(e.ctx, quota.Use{Subject: subj, Action: "a", Amount: 5}); err != nil || !r.Decision.Allowed {
		t.Fatalf("Reserve(5) = %+v, %v", r, err)
	}
	e.clock.Add(time.Minute)
	got, err := q.Usage(e.ctx, subj)
	if err != nil {
		t.Fatalf("Usage(%q) = %v", subj, err)
	}
	feb := anchor0.AddDate(0, 1, 0)
	day, nextDay := anchor0.AddDate(0, 0, 14), anchor0.AddDate(0, 0, 15)
	month := func(limit, used, remaining int64, pct float64, lv quota.Level) quota.LimitStatus {
		return quota.LimitStatus{Period: quota.PeriodMonth, Limit: limit, Used: used, Remaining: remaining, Percent: pct, Level: lv, PeriodStart: anchor0, ResetAt: feb}
	}
	bDay := quota.LimitStatus{Period: quota.PeriodDay, Limit: 10, Used: 9, Remaining: 1, Percent: 90, Level: quota.LevelCritical, PeriodStart: day, ResetAt: nextDay}
	a := month(100, 85, 15, 85, quota.LevelWarning)
	c := month(quota.Unlimited, 7, quota.Unlimited, 0, quota.LevelOK)
	d := quota.LimitStatus{Period: quota.PeriodNone, Limit: 0, Percent: 100, Level: quota.LevelExceeded}
	ee := quota.LimitStatus{Period: quota.PeriodNone, Limit: 1000, MaxPerUse: 100, Used: 1000, Percent: 100, Level: quota.LevelExceeded}
	// Nothing was used in the windows before the current ones.
	lastMonth := quota.WindowUsage{Start: anchor0.AddDate(0, -1, 0), End: anchor0}
	lastDay := quota.WindowUsage{Start: anchor0.AddDate(0, 0, 13), End: day}
	want := quota.Report{Subject: subj, Plan: "P", At: e.clock.Now(), TimeZone: "UTC", Features: []string{"api_access", "team"}, Actions: []quota.ActionUsage{
		{Action: "a", LimitStatus: a, Limits: []quota.LimitStatus{a}, Previous: []quota.WindowUsage{lastMonth}},
		{Action: "b", LimitStatus: bDay, Limits: []quota.LimitStatus{bDay, month(50, 9, 41, 18, quota.LevelOK)}, Previous: []quota.WindowUsage{lastDay, lastMonth}},
		{Action: "c", LimitStatus: c, Limits: []quota.LimitStatus{c}, Previous: []quota.WindowUsage{lastMonth}},
		{Action: "d", LimitStatus: d, Limits: []quota.LimitStatus{d}, Previous: []quota.WindowUsage{{}}},
		{Action: "e", LimitStatus: ee, Limits: []quota.LimitStatus{ee}, Previous: []quota.WindowUsage{{}}},
	}}
	if diff := cmp.Diff(want, got, cmpTime); diff != "" {
		t.Errorf("Usage(%q) (-want +got):\n%s", subj, diff)
	}
	for f, want := range map[string]bool{"api_access": true, "team": true, "white_label": false} {
		if got, err := q.HasFeature(e.ctx, subj, f); err != nil || got != want {
			t.Errorf("HasFeature(%q) = %v, %v; want %v, nil", f, got, err, want)
		}
	}

	levels := func(t *testing.T, q *quota.Quota, tag string, rows []struct {
		used int64
		want quota.Level
	}) {
		for _, r := range rows {
			subj := e.name(fmt.Sprintf("level-%s-%d", tag, r.used))
			e.subscribe(t, q, subj, "P")
			if r.used > 0 {
				track(t, e.ctx, q, quota.Use{Subject: subj, Action: "a", Amount: r.used})
			}
			d := check(t, e.ctx, q, quota.Use{Subject: subj, Action: "a", Amount: 1})
			rep, err := q.Usage(e.ctx, subj)
			if err != nil {
				t.Fatalf("Usage(%q) = %v", subj, err)
			}
			if d.Level != r.want || d.Percent != float64(r.used) || rep.Actions[0].Level != r.want {
				t.Errorf("%d of 100 used: Check level %v (%v %%), Usage level %v; want %v (%d %%)", r.used, d.Level, d.Percent, rep.Actions[0].Level, r.want, r.used)
			}
		}
	}
	t.Run("DefaultThresholds", func(t *testing.T) {
		levels(t, q, "default", []struct {
			used int64
			want quota.Level
		}{{0, quota.LevelOK}, {79, quota.LevelOK}, {80, quota.LevelWarning}, {89, quota.LevelWarning}, {90, quota.LevelCritical},
			{99, quota.LevelCritical}, {100, quota.LevelExceeded}, {150, quota.LevelExceeded}})
	})
	t.Run("CustomThresholds", func(t *testing.T) {
		q := e.quota(t, quota.Config{Plans: cat, Thresholds: quota.Thresholds{Warning: 50, Critical: 75, Exceeded: 95}})
		levels(t, q, "custom", []struct {
			used int64
			want quota.Level
		}{{49, quota.LevelOK}, {50, quota.LevelWarning}, {74, quota.LevelWarning}, {75, quota.LevelCritical},
			{94, quota.LevelCritical}, {95, quota.LevelExceeded}})
	})
}
