package quotatest

import (
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/quotakit/quota"
)

// pad returns s followed by fill (then "x") up to exactly n bytes.
func pad(s, fill string, n int) string {
	var b strings.Builder
	b.WriteString(s)
	for b.Len()+len(fill) <= n {
		b.WriteString(fill)
	}
	for b.Len() < n {
		b.WriteByte('x')
	}
	return b.String()
}

// filter is the reference implementation of a RecordQuery over recs, in
// ascending ID order.
func filter(recs []quota.Record, rq quota.RecordQuery) []quota.Record {
	var out []quota.Record
	for _, r := range recs {
		switch {
		case rq.Subject != "" && r.Subject != rq.Subject,
			rq.Action != "" && r.Action != rq.Action,
			!rq.From.IsZero() && r.Time.Before(rq.From),
			!rq.To.IsZero() && !r.Time.Before(rq.To),
			r.ID <= rq.AfterID:
			continue
		}
		if rq.Limit > 0 && len(out) == rq.Limit {
			break
		}
		out = append(out, r)
	}
	return out
}

// testRecords checks that records round-trip byte for byte (hostile
// strings, emoji, names of MaxNameLen bytes, metadata of MaxMetadataLen
// bytes) and that every RecordQuery filter selects what it should, in
// ascending ID order.
func testRecords(t *testing.T, s *suite) {
	e := s.env(t)
	// Actions private to this env, so that queries by action alone see
	// only this case's records.
	up, ai := e.name("upload"), e.name("ai")
	long := pad(e.name("é"), "é", quota.MaxNameLen)
	q := e.quota(t, quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{
		up:   {perMonthUnlimited},
		ai:   {perMonthUnlimited},
		long: {quota.Total(quota.Unlimited)},
	})}})
	sA := e.name("a")
	sB := e.name(`x"; DROP TABLE quota_records; --`)
	sC := pad(e.name("😀"), "😀", quota.MaxNameLen)
	for _, subj := range []string{sA, sB, sC} {
		e.subscribe(t, q, subj, "P")
	}
	nasty := map[string]any{
		"sql":    `x"; DROP TABLE quota_records; --`,
		"or":     `' OR 1=1 --`,
		"emoji":  "🎉👩‍👩‍👧",
		"nul":    "a\x00b",
		"html":   "<a href='x'>&amp;</a>",
		"ls":     "\u2028\u2029",
		"bs":     `C:\path\"quoted"`,
		"nested": map[string]any{"list": []any{1, 2.5, "three", nil, true, math.Copysign(0, -1)}, "big": 9007199254740993},
		"empty":  map[string]any{},
	}
	all := writeRecords(t, e, q, []recordUse{
		{sA, up, 1, `' OR 1=1 --`, "k1 😀", nasty, false},
		{sB, ai, 7, "", "", nil, false},
		{sC, long, 3, pad("r", "ü", quota.MaxNameLen), pad("k", "😀", quota.MaxNameLen), map[string]any{"x": strings.Repeat("é", (quota.MaxMetadataLen-8)/2)}, true},
		{sA, ai, 2, "", "", map[string]any{}, false},
		{sA, up, 5, "", `'; DELETE FROM quota_counters; --`, nil, true},
		{sB, up, 4, "日本語/ファイル", "", map[string]any{"list": []any{1, "two", 3.5, false, nil}}, false},
		{sA, up, 1, "", "", nil, false},
	})
	if n := len(all[2].Metadata); n != quota.MaxMetadataLen {
		t.Fatalf("test bug: metadata of %d bytes; want %d", n, quota.MaxMetadataLen)
	}
	for i := 1; i < len(all); i++ {
		if all[i].ID <= all[i-1].ID {
			t.Errorf("RecordID %d after %d; want ascending IDs", all[i].ID, all[i-1].ID)
		}
	}

	wantQueries(t, e, q, all, []quota.RecordQuery{
		{Subject: sA},
		{Subject: sB},
		{Subject: sC},
		{Action: up},
		{Action: ai},
		{Action: long},
		{Subject: sA, Action: up},
		{Subject: sA, Action: long},
		{Subject: sA, From: all[3].Time}, // From is inclusive
		{Subject: sA, To: all[4].Time},   // To is exclusive
		{Action: up, From: all[1].Time, To: all[5].Time},
		{Action: up, From: all[0].Time.Add(time.Microsecond), To: all[5].Time.Add(time.Microsecond)},
		{Subject: sA, AfterID: all[0].ID},
		{Subject: sA, Limit: 2},
		{Action: up, AfterID: all[0].ID, Limit: 1},
		{Subject: sB, AfterID: all[len(all)-1].ID},
		{Subject: sA, From: t0.AddDate(1, 0, 0)},
		{Subject: sA, To: t0},
	})
	wantPages(t, e, all, up)
}

// recordUse is one use that testRecords makes, through Track or Consume.
type recordUse struct {
	subj, action string
	amount       int64
	res, key     string
	md           map[string]any
	track        bool
}

// writeRecords makes the uses a second (and i microseconds) apart, and
// returns the records they should have written.
func writeRecords(t *testing.T, e *env, q *quota.Quota, uses []recordUse) []quota.Record {
	var all []quota.Record
	for i, st := range uses {
		at := e.clock.Add(time.Second + time.Duration(i)*time.Microsecond)
		u := quota.Use{Subject: st.subj, Action: st.action, Amount: st.amount, ResourceID: st.res, Key: st.key, Metadata: st.md}
		var d quota.Decision
		if st.track {
			d = track(t, e.ctx, q, u)
		} else {
			d = consume(t, e.ctx, q, u)
		}
		if !d.Allowed || d.RecordID <= 0 {
			t.Fatalf("use %d: %+v; want allowed with a RecordID", i, d)
		}
		var md json.RawMessage
		if st.md != nil {
			b, err := json.Marshal(st.md)
			if err != nil {
				t.Fatalf("test bug: %v", err)
			}
			md = b
		}
		all = append(all, quota.Record{ID: d.RecordID, Subject: st.subj, Action: st.action, Amount: st.amount,
			ResourceID: st.res, Metadata: md, Key: st.key, Time: at})
	}
	return all
}

// wantQueries checks that Store.Records, and History where it applies,
// answer each query as filter does over all.
func wantQueries(t *testing.T, e *env, q *quota.Quota, all []quota.Record, queries []quota.RecordQuery) {
	for _, rq := range queries {
		want := filter(all, rq)
		got := e.records(t, rq)
		if diff := cmp.Diff(want, got, cmpTime, cmpEmpty); diff != "" {
			t.Errorf("Store.Records(%+v) (-want +got):\n%s", rq, diff)
		}
		if rq.AfterID != 0 || rq.Limit != 0 {
			continue // History pages newest first, by its own cursor
		}
		p, err := q.History(e.ctx, quota.HistoryQuery{Subject: rq.Subject, Action: rq.Action, From: rq.From, To: rq.To, Limit: quota.MaxHistoryPage})
		if err != nil {
			t.Errorf("History(%+v) = %v", rq, err)
			continue
		}
		slices.Reverse(p.Records)
		if diff := cmp.Diff(want, p.Records, cmpTime, cmpEmpty); diff != "" {
			t.Errorf("History(%+v), oldest first (-want +got):\n%s", rq, diff)
		}
	}
}

// wantPages checks that pages of one record of action up, by AfterID,
// make up the whole.
func wantPages(t *testing.T, e *env, all []quota.Record, up string) {
	var paged []quota.Record
	for after := int64(0); ; {
		page := e.records(t, quota.RecordQuery{Action: up, AfterID: after, Limit: 1})
		if len(page) == 0 {
			break
		}
		if len(page) > 1 || len(paged) > len(all) {
			t.Fatalf("Store.Records(Limit 1) returned %d records; want at most 1", len(page))
		}
		paged = append(paged, page[0])
		after = page[0].ID
	}
	if diff := cmp.Diff(filter(all, quota.RecordQuery{Action: up}), paged, cmpTime, cmpEmpty); diff != "" {
		t.Errorf("pages of Store.Records(Limit 1) (-want +got):\n%s", diff)
	}
}

// testSubscriptions checks that subscriptions round-trip through the store
// (overrides, time zone, anchor at microsecond precision, a scheduled
// change) and that overrides apply.
func testSubscriptions(t *testing.T, s *suite) {
	e := s.env(t)
	q := e.quota(t, quota.Config{Plans: []quota.Plan{
		plan("P", map[string][]quota.Limit{"a": {quota.PerMonth(10)}, "e": {quota.Total(100)}}),
		plan("PRO", map[string][]quota.Limit{"a": {quota.PerMonth(1000)}, "e": {quota.Total(1000)}}),
	}})
	tz, loc := "Europe/Paris", time.UTC
	if l, err := time.LoadLocation(tz); err == nil {
		loc = l
	} else {
		tz = "UTC"
	}
	subj := e.name(`o'brien "😀"`)
	anchor := time.Date(2024, 3, 31, 13, 45, 7, 123456000, time.FixedZone("UTC+3", 3*3600))
	subscribeOverrides(t, e, q, subj, anchor, tz)
	wantOverrides(t, e, q, subj, loc)
	resubscribe(t, e, q, subj, anchor)

	t.Run("Store", func(t *testing.T) { testSubscriptionsStore(t, e) })
}

// subscribeOverrides subscribes subj to P with overrides, anchored at
// anchor in time zone tz, and checks the subscription stored.
func subscribeOverrides(t *testing.T, e *env, q *quota.Quota, subj string, anchor time.Time, tz string) {
	in := quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor, TimeZone: tz, Overrides: map[string][]quota.Limit{
		"a": {quota.PerMonth(500), quota.PerDay(50).WithMaxPerUse(7)},
		"e": {quota.Total(quota.Unlimited)},
	}}
	if err := q.Subscribe(e.ctx, in); err != nil {
		t.Fatalf("Subscribe(%+v) = %v", in, err)
	}
	want := quota.Subscription{Subject: subj, Plan: "P", Anchor: anchor.UTC(), TimeZone: tz, Overrides: map[string][]quota.Limit{
		"a": {quota.PerDay(50).WithMaxPerUse(7), quota.PerMonth(500)}, // sorted by period
		"e": {quota.Total(quota.Unlimited)},
	}}
	got, err := e.store.GetSubscription(e.ctx, subj)
	if err != nil {
		t.Fatalf("Store.GetSubscription(%q) = %v", subj, err)
	}
	if diff := cmp.Diff(want, got, cmpTime, cmpEmpty, anyVersion); diff != "" {
		t.Errorf("Store.GetSubscription after Subscribe (-want +got):\n%s", diff)
	}
	if got, err := q.Subscription(e.ctx, subj); err != nil {
		t.Errorf("Subscription(%q) = %v", subj, err)
	} else if diff := cmp.Diff(want, got, cmpTime, cmpEmpty, anyVersion); diff != "" {
		t.Errorf("Subscription after Subscribe (-want +got):\n%s", diff)
	}
}

// wantOverrides checks that the overrides of subscribeOverrides apply, in
// the subscription's location loc.
func wantOverrides(t *testing.T, e *env, q *quota.Quota, subj string, loc *time.Location) {
	// The overrides apply, and months follow the anchor's day in its
	// time zone: the 31st at midnight.
	d := check(t, e.ctx, q, quota.Use{Subject: subj, Action: "a", Amount: 8})
	wantDenied(t, "Check(8) with an override capped at 7", d, quota.ReasonPerUse, 0)
	d = check(t, e.ctx, q, quota.Use{Subject: subj, Action: "a", Amount: 1})
	start := time.Date(2024, 12, 31, 0, 0, 0, 0, loc).UTC()
	if d.Limits.Len() != 2 || d.Limits.At(0).Limit != 50 || d.Limits.At(1).Limit != 500 || !d.Limits.At(1).PeriodStart.Equal(start) {
		t.Errorf("Check(1) with overrides: limits %+v; want 50 a day and 500 a month from %v", d.Limits, start)
	}
	d = consume(t, e.ctx, q, quota.Use{Subject: subj, Action: "e", Amount: 1_000_000})
	if !d.Allowed || d.Limit != quota.Unlimited || d.Used != 1_000_000 {
		t.Errorf("Consume(1e6) with an unlimited override = {Allowed %v, Limit %d, Used %d}; want {true, -1, 1000000}", d.Allowed, d.Limit, d.Used)
	}
}

// resubscribe subscribes subj to PRO, anchored at anchor, and checks that
// this replaced the whole subscription.
func resubscribe(t *testing.T, e *env, q *quota.Quota, subj string, anchor time.Time) {
	// Subscribe replaces the whole subscription.
	if err := q.Subscribe(e.ctx, quota.Subscription{Subject: subj, Plan: "PRO", Anchor: anchor}); err != nil {
		t.Fatalf("Subscribe(PRO) = %v", err)
	}
	want := quota.Subscription{Subject: subj, Plan: "PRO", Anchor: anchor.UTC()}
	if got, err := e.store.GetSubscription(e.ctx, subj); err != nil {
		t.Errorf("Store.GetSubscription = %v", err)
	} else if diff := cmp.Diff(want, got, cmpTime, cmpEmpty, anyVersion); diff != "" {
		t.Errorf("Store.GetSubscription after a second Subscribe (-want +got):\n%s", diff)
	}
	if d := check(t, e.ctx, q, quota.Use{Subject: subj, Action: "a", Amount: 8}); !d.Allowed || d.Limit != 1000 {
		t.Errorf("Check(8) without the override = {Allowed %v, Limit %d}; want {true, 1000}", d.Allowed, d.Limit)
	}
}

func testSubscriptionsStore(t *testing.T, e *env) {
	// Every field, set directly.
	subj := e.name("direct")
	in := quota.Subscription{
		Subject:  subj,
		Plan:     "P",
		Anchor:   time.Date(2023, 2, 28, 23, 59, 59, 999999000, time.UTC),
		TimeZone: "Asia/Kolkata",
		Overrides: map[string][]quota.Limit{
			"a": {quota.PerHour(1), quota.PerDay(quota.Unlimited), quota.PerWeek(0), quota.PerMonth(1 << 62).WithMaxPerUse(quota.MaxAmount), quota.PerYear(9)},
			"e": {quota.Total(5).WithMaxPerUse(2)},
		},
		NextPlan:   "PRO",
		NextPlanAt: time.Date(2023, 3, 28, 0, 0, 0, 0, time.UTC),
	}
	want := in
	want.Overrides = map[string][]quota.Limit{"a": append([]quota.Limit(nil), in.Overrides["a"]...), "e": append([]quota.Limit(nil), in.Overrides["e"]...)}
	if err := e.store.PutSubscription(e.ctx, in); err != nil {
		t.Fatalf("Store.PutSubscription(%+v) = %v", in, err)
	}
	in.Overrides["a"][0].Max = 99 // the store keeps its own copy
	delete(in.Overrides, "e")
	got, err := e.store.GetSubscription(e.ctx, subj)
	if err != nil {
		t.Fatalf("Store.GetSubscription(%q) = %v", subj, err)
	}
	if diff := cmp.Diff(want, got, cmpTime, cmpEmpty); diff != "" {
		t.Errorf("Store.GetSubscription after PutSubscription (-want +got):\n%s", diff)
	}
	if len(got.Overrides["a"]) > 0 {
		got.Overrides["a"][0].Max = 77
	}
	got2, err := e.store.GetSubscription(e.ctx, subj)
	if err != nil {
		t.Fatalf("Store.GetSubscription(%q) = %v", subj, err)
	}
	if diff := cmp.Diff(want, got2, cmpTime, cmpEmpty); diff != "" {
		t.Errorf("Store.GetSubscription after changing what it returned (-want +got):\n%s", diff)
	}
	// Replace, with nothing optional.
	in = quota.Subscription{Subject: subj, Plan: "PRO", Anchor: anchor0}
	if err := e.store.PutSubscription(e.ctx, in); err != nil {
		t.Fatalf("Store.PutSubscription(%+v) = %v", in, err)
	}
	if got, err := e.store.GetSubscription(e.ctx, subj); err != nil {
		t.Errorf("Store.GetSubscription = %v", err)
	} else if diff := cmp.Diff(in, got, cmpTime, cmpEmpty); diff != "" {
		t.Errorf("Store.GetSubscription after replacing (-want +got):\n%s", diff)
	}
	if _, err := e.store.GetSubscription(e.ctx, e.name("nobody")); !errors.Is(err, quota.ErrNoSubscription) {
		t.Errorf("Store.GetSubscription(nobody) = %v; want ErrNoSubscription", err)
	}
}
