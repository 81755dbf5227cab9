package quotatest

import (
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/quotakit/quota"
)

// testHistory checks History: newest first, filters, and pages that
// return every record that existed when the walk began exactly once while
// other goroutines keep adding records.
func testHistory(t *testing.T, s *suite) {
	e := s.env(t)
	a, b := e.name("a"), e.name("b")
	q := e.quota(t, quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{a: {perMonthUnlimited}, b: {perMonthUnlimited}})}})
	subj := e.name("s")
	e.subscribe(t, q, subj, "P")
	for i := range 230 {
		act := a
		if i%3 == 0 {
			act = b
		}
		e.clock.Add(time.Minute)
		track(t, e.ctx, q, quota.Use{Subject: subj, Action: act, Amount: int64(i + 1), ResourceID: "r"})
	}
	before := e.records(t, quota.RecordQuery{Subject: subj})
	if len(before) != 230 {
		t.Fatalf("%d records; want 230", len(before))
	}

	walked := historyWalk(t, e, q, subj, a)
	wantWalked(t, before, walked)
	historyFilters(t, e, q, subj, b, before)
}

// historyWalk walks subj's History in pages of 40 while 4 goroutines add
// 25 records each of action a, and returns the records walked.
func historyWalk(t *testing.T, e *env, q *quota.Quota, subj, a string) []quota.Record {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 25 {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := q.Track(e.ctx, quota.Use{Subject: subj, Action: a, Amount: 1000}); err != nil {
					t.Errorf("Track during the walk = %v", err)
					return
				}
			}
		})
	}
	var walked []quota.Record
	cursor, pages := "", 0
	for {
		p, err := q.History(e.ctx, quota.HistoryQuery{Subject: subj, Limit: 40, Cursor: cursor})
		if err != nil {
			t.Fatalf("History(page %d) = %v", pages+1, err)
		}
		pages++
		walked = append(walked, p.Records...)
		if p.Next == "" {
			break
		}
		if pages > 20 {
			t.Fatalf("History did not end after %d pages", pages)
		}
		cursor = p.Next
	}
	close(stop)
	wg.Wait()
	return walked
}

// wantWalked checks that a walk returned records newest first, and each of
// the records before it once and whole.
func wantWalked(t *testing.T, before, walked []quota.Record) {
	seen := map[int64]int{}
	for i, r := range walked {
		seen[r.ID]++
		if i > 0 && r.ID >= walked[i-1].ID {
			t.Errorf("History: record %d after %d; want newest (highest ID) first", r.ID, walked[i-1].ID)
		}
	}
	for _, r := range before {
		if seen[r.ID] != 1 {
			t.Errorf("History walk returned record %d %d times; want once", r.ID, seen[r.ID])
		}
	}
	// The pre-existing records come back whole, newest first.
	var old []quota.Record
	for _, r := range walked {
		if r.ID <= before[len(before)-1].ID {
			old = append(old, r)
		}
	}
	want := slices.Clone(before)
	slices.Reverse(want)
	if diff := cmp.Diff(want, old, cmpTime, cmpEmpty); diff != "" {
		t.Errorf("History walk, the records that existed before it (-want +got):\n%s", diff)
	}
}

// historyFilters checks History's filters, a last page, and bad cursors
// and limits, on subj's records before (every third of action b).
func historyFilters(t *testing.T, e *env, q *quota.Quota, subj, b string, before []quota.Record) {
	// Filters and the last page.
	from, to := before[10].Time, before[20].Time
	p, err := q.History(e.ctx, quota.HistoryQuery{Subject: subj, Action: b, From: from, To: to})
	if err != nil {
		t.Fatalf("History(filtered) = %v", err)
	}
	var wantIDs, gotIDs []int64
	for i := 19; i >= 10; i-- {
		if before[i].Action == b {
			wantIDs = append(wantIDs, before[i].ID)
		}
	}
	for _, r := range p.Records {
		gotIDs = append(gotIDs, r.ID)
	}
	if diff := cmp.Diff(wantIDs, gotIDs); diff != "" || p.Next != "" {
		t.Errorf("History(action b, records 10 to 19) (-want +got):\n%s\nNext %q; want none", diff, p.Next)
	}
	for _, c := range []string{"x", "r1.", "r1.-5", "r1.zzzzzzzzzzzzzzzzzz"} {
		if _, err := q.History(e.ctx, quota.HistoryQuery{Subject: subj, Cursor: c}); !errors.Is(err, quota.ErrInvalidCursor) {
			t.Errorf("History(cursor %q) = %v; want ErrInvalidCursor", c, err)
		}
	}
	for _, l := range []int{-1, quota.MaxHistoryPage + 1} {
		if _, err := q.History(e.ctx, quota.HistoryQuery{Subject: subj, Limit: l}); err == nil {
			t.Errorf("History(limit %d) = nil error; want an error", l)
		}
	}
}

// testRetention checks Prune: records before the cutoff go, in batches;
// counters stay; Series and TopSubjects answer the same from rollups.
func testRetention(t *testing.T, s *suite) {
	e := s.env(t)
	a, b := e.name("a"), e.name("b")
	q := e.quota(t, quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{a: {quota.PerMonth(1 << 40)}, b: {quota.PerDay(1 << 40)}})}})
	subjects := []string{e.name("s1"), e.name("s2")}
	for _, sub := range subjects {
		e.subscribe(t, q, sub, "P")
	}
	start := time.Date(2025, time.January, 20, 0, 0, 0, 0, time.UTC)
	// Uses every 37 minutes over four days: not on quarter hours.
	var total int64
	for i := range 150 {
		e.clock.Set(start.Add(time.Duration(i) * 37 * time.Minute))
		act := a
		if i%4 == 0 {
			act = b
		}
		track(t, e.ctx, q, quota.Use{Subject: subjects[i%2], Action: act, Amount: int64(i%7 + 1)})
		total++
	}
	cutoff := start.Add(50 * time.Hour)
	rc := &retentionCase{e: e, q: q, a: a, b: b, subjects: subjects, from: start, to: start.Add(5 * 24 * time.Hour)}
	before := rc.snapshot(t)
	old := rc.countOld(t, cutoff, total)

	if _, ok := e.store.(quota.Pruner); !ok {
		rc.refusedPrune(t, cutoff, total)
		return
	}
	rc.prune(t, cutoff, old, before)
}

// retentionCase is the state of testRetention that its steps share: two
// subjects with uses of a and b from from, over four days.
type retentionCase struct {
	e        *env
	q        *quota.Quota
	a, b     string
	subjects []string
	from, to time.Time // the range of the analytics
}

// retentionSnapshot is what snapshot reads from the Quota.
type retentionSnapshot struct {
	series, hourly []quota.Point
	top            []quota.SubjectTotal
	report         quota.Report
}

// snapshot reads the daily Series of a, the hourly Series of the first
// subject, the TopSubjects of b, and the Usage of the second subject.
func (rc *retentionCase) snapshot(t *testing.T) (snap retentionSnapshot) {
	t.Helper()
	e, q, a, b, subjects, from, to := rc.e, rc.q, rc.a, rc.b, rc.subjects, rc.from, rc.to
	var err error
	if snap.series, err = q.Series(e.ctx, quota.SeriesQuery{Action: a, From: from, To: to, TimeZone: "UTC", Dense: true}); err != nil {
		t.Fatalf("Series = %v", err)
	}
	if snap.hourly, err = q.Series(e.ctx, quota.SeriesQuery{Subject: subjects[0], From: from, To: to, Step: quota.PeriodHour, ByAction: true}); err != nil {
		t.Fatalf("Series(hourly) = %v", err)
	}
	if snap.top, err = q.TopSubjects(e.ctx, quota.TopQuery{Action: b, From: from, To: to}); err != nil {
		t.Fatalf("TopSubjects = %v", err)
	}
	if snap.report, err = q.Usage(e.ctx, subjects[1]); err != nil {
		t.Fatalf("Usage = %v", err)
	}
	return snap
}

// countOld returns the number of records before cutoff, failing t unless
// some of the total records are, and not all.
func (rc *retentionCase) countOld(t *testing.T, cutoff time.Time, total int64) int64 {
	e, subjects := rc.e, rc.subjects
	all := e.records(t, quota.RecordQuery{Subject: subjects[0]})
	all = append(all, e.records(t, quota.RecordQuery{Subject: subjects[1]})...)
	var old int64
	for _, r := range all {
		if r.Time.Before(cutoff) {
			old++
		}
	}
	if old == 0 || old == total {
		t.Fatalf("%d of %d records before the cutoff; want some, not all", old, total)
	}
	return old
}

// refusedPrune checks that without a Pruner, Prune refuses and leaves the
// total records alone.
func (rc *retentionCase) refusedPrune(t *testing.T, cutoff time.Time, total int64) {
	e, q, subjects := rc.e, rc.q, rc.subjects
	// Prune is optional: without it nothing may change.
	n, err := q.Prune(e.ctx, cutoff, 7)
	if n != 0 || !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Prune of a store that is not a Pruner = %d, %v; want 0 and an error matching errors.ErrUnsupported", n, err)
	}
	if got := int64(len(e.records(t, quota.RecordQuery{Subject: subjects[0]})) + len(e.records(t, quota.RecordQuery{Subject: subjects[1]}))); got != total {
		t.Fatalf("after a refused Prune: %d records; want %d", got, total)
	}
}

// prune checks that Prune removes the old records before cutoff, in
// batches, and leaves the analytics as they were before.
func (rc *retentionCase) prune(t *testing.T, cutoff time.Time, old int64, before retentionSnapshot) {
	e, q := rc.e, rc.q
	n, err := q.Prune(e.ctx, cutoff, 7)
	if err != nil || n != old {
		t.Fatalf("Prune(cutoff, batches of 7) = %d, %v; want %d, nil", n, err, old)
	}
	for _, sub := range rc.subjects {
		for _, r := range e.records(t, quota.RecordQuery{Subject: sub}) {
			if r.Time.Before(cutoff) {
				t.Errorf("record %d at %v survived Prune(%v)", r.ID, r.Time, cutoff)
			}
		}
	}
	after := rc.snapshot(t)
	for _, d := range []struct {
		name      string
		want, got any
	}{{"daily Series of a", before.series, after.series}, {"hourly Series of s1", before.hourly, after.hourly}, {"TopSubjects of b", before.top, after.top}, {"Usage of s2", before.report, after.report}} {
		if diff := cmp.Diff(d.want, d.got, cmpTime); diff != "" {
			t.Errorf("%s changed by Prune (-before +after):\n%s", d.name, diff)
		}
	}
	if n, err := q.Prune(e.ctx, cutoff, 0); err != nil || n != 0 {
		t.Errorf("second Prune = %d, %v; want 0, nil", n, err)
	}
}
