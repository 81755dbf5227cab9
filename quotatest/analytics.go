package quotatest

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/quotakit/quota"
)

// testAnalytics checks Series and TopSubjects against figures written out
// by hand: usage across a month boundary and the spring DST change of a
// subject in New York, by day, by month, by action, dense and sparse, for
// one subject and for all, and the top subjects of an action.
func testAnalytics(t *testing.T, s *suite) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Skipf("no time zone database: %v", err)
	}
	e := s.env(t)
	a, b, unused := e.name("a"), e.name("b"), e.name("unused")
	q := e.quota(t, quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{
		a: {perMonthUnlimited}, b: {perMonthUnlimited}, unused: {quota.PerMonth(5)},
	})}})
	subj, other := e.name("s"), e.name("other")
	for _, sub := range []string{subj, other} {
		if err := q.Subscribe(e.ctx, quota.Subscription{Subject: sub, Plan: "P", Anchor: anchor0, TimeZone: "America/New_York"}); err != nil {
			t.Fatalf("Subscribe(%q) = %v", sub, err)
		}
	}
	c := &analyticsCase{e: e, q: q, ny: ny, a: a, b: b, unused: unused, subj: subj, other: other}
	at := c.at
	uses := []struct {
		at      time.Time
		subject string
		action  string
		amount  int64
	}{
		{at(time.February, 28, 23, 30), subj, a, 1}, // 1 March in UTC
		{at(time.March, 1, 0, 30), subj, a, 2},
		{at(time.March, 7, 12, 0), subj, b, 4},
		{at(time.March, 8, 1, 30), subj, a, 8},  // EST, before the clocks spring forward
		{at(time.March, 8, 3, 30), subj, a, 16}, // EDT, after
		{at(time.March, 9, 0, 0), subj, b, 32},  // the first instant of 9 March
		{at(time.March, 8, 12, 0), other, a, 64},
		{at(time.March, 10, 0, 0), other, a, 128}, // past the ranges below
	}
	for _, u := range uses {
		e.clock.Set(u.at)
		track(t, e.ctx, q, quota.Use{Subject: u.subject, Action: u.action, Amount: u.amount})
	}

	// 8 March lasts 23 hours in New York: [05:00 UTC, 04:00 UTC next day).
	if start, end := c.day(8); end.Sub(start) != 23*time.Hour {
		t.Fatalf("8 March 2026 in New York: %v to %v; want 23 hours", start, end)
	}
	from, to := at(time.February, 28, 0, 0), at(time.March, 10, 0, 0)
	c.seriesByDay(t, from, to)
	c.seriesByMonthAndWeek(t)
	c.topSubjects(t)
	c.badSeries(t, from, to)
}

// analyticsCase is the state of testAnalytics that its steps share: the
// uses of subj and other, both subscribed to P in New York, of actions a
// and b; P has a third action, unused.
type analyticsCase struct {
	e            *env
	q            *quota.Quota
	ny           *time.Location
	a, b, unused string
	subj, other  string
}

// at returns a time of 2026 in New York.
func (c *analyticsCase) at(month time.Month, day, hour, min int) time.Time {
	return time.Date(2026, month, day, hour, min, 0, 0, c.ny)
}

// day returns the day d of March 2026 in New York (or 28 February, for d
// 28), in UTC.
func (c *analyticsCase) day(d int) (time.Time, time.Time) {
	if d == 28 {
		return c.at(time.February, 28, 0, 0).UTC(), c.at(time.March, 1, 0, 0).UTC()
	}
	return c.at(time.March, d, 0, 0).UTC(), c.at(time.March, d+1, 0, 0).UTC()
}

// pt returns the Point of day d.
func (c *analyticsCase) pt(d int, action string, amount, count int64) quota.Point {
	start, end := c.day(d)
	return quota.Point{Start: start, End: end, Action: action, Amount: amount, Count: count}
}

// series fails t unless Series(sq), named name, returns want.
func (c *analyticsCase) series(t *testing.T, name string, sq quota.SeriesQuery, want []quota.Point) {
	t.Helper()
	got, err := c.q.Series(c.e.ctx, sq)
	if err != nil {
		t.Fatalf("Series(%s) = %v", name, err)
	}
	if sq.Subject == "" && sq.Action == "" {
		// Other cases may share the store: keep this case's actions.
		got = filterActions(got, c.a, c.b)
	}
	if diff := cmp.Diff(want, got, cmpTime, cmpEmpty); diff != "" {
		t.Errorf("Series(%s) (-want +got):\n%s", name, diff)
	}
}

// seriesByDay checks subj's Series by day, in its zone, from from to to.
func (c *analyticsCase) seriesByDay(t *testing.T, from, to time.Time) {
	subj, b, pt := c.subj, c.b, c.pt
	c.series(t, "sparse, by day, in the subject's zone", quota.SeriesQuery{Subject: subj, From: from, To: to}, []quota.Point{
		pt(28, "", 1, 1), pt(1, "", 2, 1), pt(7, "", 4, 1), pt(8, "", 24, 2), pt(9, "", 32, 1),
	})
	c.series(t, "dense, by day and action", quota.SeriesQuery{Subject: subj, From: from, To: to, ByAction: true, Dense: true}, c.dense())
	c.series(t, "one action, by day, sparse", quota.SeriesQuery{Subject: subj, Action: b, From: from, To: to}, []quota.Point{
		pt(7, "", 4, 1), pt(9, "", 32, 1),
	})
}

// dense returns subj's Points by day and action from 28 February to 9
// March, dense.
func (c *analyticsCase) dense() []quota.Point {
	a, b := c.a, c.b
	var dense []quota.Point
	for _, d := range []int{28, 1, 2, 3, 4, 5, 6, 7, 8, 9} {
		want := map[string][2]int64{}
		switch d {
		case 28:
			want[a] = [2]int64{1, 1}
		case 1:
			want[a] = [2]int64{2, 1}
		case 7:
			want[b] = [2]int64{4, 1}
		case 8:
			want[a] = [2]int64{24, 2}
		case 9:
			want[b] = [2]int64{32, 1}
		}
		// Dense by action: every action of the subject's plan, in order.
		for _, act := range []string{a, b, c.unused} {
			dense = append(dense, c.pt(d, act, want[act][0], want[act][1]))
		}
	}
	return dense
}

var (
	utcFeb = time.Date(2026, time.February, 1, 0, 0, 0, 0, time.UTC)
	utcMar = time.Date(2026, time.March, 1, 0, 0, 0, 0, time.UTC)
	utcApr = time.Date(2026, time.April, 1, 0, 0, 0, 0, time.UTC)
)

// seriesByMonthAndWeek checks Series by month in UTC, and by week in New
// York.
func (c *analyticsCase) seriesByMonthAndWeek(t *testing.T) {
	a, b, subj, at := c.a, c.b, c.subj, c.at
	// In UTC the first use falls in March; a range that starts mid-bucket
	// is clipped to it.
	c.series(t, "by month in UTC", quota.SeriesQuery{Subject: subj, From: utcFeb, To: utcApr, Step: quota.PeriodMonth, TimeZone: "UTC", Dense: true}, []quota.Point{
		{Start: utcFeb, End: utcMar},
		{Start: utcMar, End: utcApr, Amount: 63, Count: 6},
	})
	mid := time.Date(2026, time.March, 8, 12, 0, 0, 0, time.UTC)
	c.series(t, "by month from mid-March, both subjects of the action", quota.SeriesQuery{Action: a, From: mid, To: utcApr, Step: quota.PeriodMonth, TimeZone: "UTC"}, []quota.Point{
		{Start: mid, End: utcApr, Amount: 64 + 128, Count: 2},
	})
	c.series(t, "every subject, by action, by week in New York", quota.SeriesQuery{From: at(time.March, 2, 0, 0), To: at(time.March, 16, 0, 0), Step: quota.PeriodWeek, TimeZone: "America/New_York", ByAction: true}, []quota.Point{
		{Start: at(time.March, 2, 0, 0).UTC(), End: at(time.March, 9, 0, 0).UTC(), Action: a, Amount: 8 + 16 + 64, Count: 3},
		{Start: at(time.March, 2, 0, 0).UTC(), End: at(time.March, 9, 0, 0).UTC(), Action: b, Amount: 4, Count: 1},
		{Start: at(time.March, 9, 0, 0).UTC(), End: at(time.March, 16, 0, 0).UTC(), Action: a, Amount: 128, Count: 1},
		{Start: at(time.March, 9, 0, 0).UTC(), End: at(time.March, 16, 0, 0).UTC(), Action: b, Amount: 32, Count: 1},
	})
}

// topSubjects checks the TopSubjects of a in March.
func (c *analyticsCase) topSubjects(t *testing.T) {
	e, q, a, subj, other := c.e, c.q, c.a, c.subj, c.other
	top, err := q.TopSubjects(e.ctx, quota.TopQuery{Action: a, From: utcMar, To: utcApr})
	if err != nil {
		t.Fatalf("TopSubjects = %v", err)
	}
	want := []quota.SubjectTotal{{Subject: other, Amount: 192, Count: 2}, {Subject: subj, Amount: 27, Count: 4}}
	if diff := cmp.Diff(want, top); diff != "" {
		t.Errorf("TopSubjects(%s, March) (-want +got):\n%s", a, diff)
	}
	top, err = q.TopSubjects(e.ctx, quota.TopQuery{Action: a, From: utcMar, To: c.at(time.March, 9, 0, 0), Limit: 1})
	if err != nil {
		t.Fatalf("TopSubjects = %v", err)
	}
	if diff := cmp.Diff([]quota.SubjectTotal{{Subject: other, Amount: 64, Count: 1}}, top); diff != "" {
		t.Errorf("TopSubjects(%s, to 9 March, limit 1) (-want +got):\n%s", a, diff)
	}
}

// badSeries checks that bad Series queries fail.
func (c *analyticsCase) badSeries(t *testing.T, from, to time.Time) {
	subj := c.subj
	for name, sq := range map[string]quota.SeriesQuery{
		"empty range": {Subject: subj, From: to, To: from},
		"year step":   {Subject: subj, From: from, To: to, Step: quota.PeriodYear},
		"bad subject": {Subject: "\x00", From: from, To: to},
		"bad zone":    {Subject: subj, From: from, To: to, TimeZone: "Mars/Base"},
		"too many":    {From: from, To: from.AddDate(10, 0, 0), Step: quota.PeriodHour},
	} {
		if _, err := c.q.Series(c.e.ctx, sq); err == nil {
			t.Errorf("Series(%s) = nil error; want an error", name)
		}
	}
}

// filterActions returns the points of the named actions.
func filterActions(ps []quota.Point, actions ...string) []quota.Point {
	keep := map[string]bool{}
	for _, a := range actions {
		keep[a] = true
	}
	var out []quota.Point
	for _, p := range ps {
		if keep[p.Action] {
			out = append(out, p)
		}
	}
	return out
}
