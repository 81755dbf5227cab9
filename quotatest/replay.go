package quotatest

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/quotakit/quota"
)

// testReplayAfterPlanChange checks that a use repeated with its key after
// the subject's plan changed returns the first outcome, whatever the new
// plan's limits, per-use caps or features: the key is looked up before any
// policy is applied, and nothing is written again.
func testReplayAfterPlanChange(t *testing.T, s *suite) {
	e := s.env(t)
	act, alloc := e.name("call"), e.name("bytes")
	q := e.quota(t, quota.Config{Plans: []quota.Plan{
		plan("TWO", map[string][]quota.Limit{act: {quota.PerDay(5), quota.PerMonth(10)}, alloc: {quota.Total(100)}}, "export"),
		plan("ONE", map[string][]quota.Limit{act: {perMonthUnlimited}, alloc: {quota.Total(100).WithMaxPerUse(15)}}),
	}})
	subj := e.name("u")
	e.subscribe(t, q, subj, "TWO")

	uses := []struct {
		what string
		u    quota.Use
	}{
		{"two limits, then one", quota.Use{Subject: subj, Action: act, Amount: 1, Key: "k1"}},
		{"no cap, then a cap of 15", quota.Use{Subject: subj, Action: alloc, Amount: 20, Key: "k2"}},
		{"a feature, then none", quota.Use{Subject: subj, Action: act, Amount: 1, Key: "k3", Features: []string{"export"}}},
	}
	first := make([]quota.Decision, len(uses))
	for i, c := range uses {
		first[i] = consume(t, e.ctx, q, c.u)
		if !first[i].Allowed {
			t.Fatalf("%s: first Consume = %+v; want allowed", c.what, first[i])
		}
	}
	reserved, err := q.Reserve(e.ctx, quota.Use{Subject: subj, Action: act, Amount: 2, Key: "k4", Features: []string{"export"}})
	if err != nil || !reserved.Decision.Allowed {
		t.Fatalf("Reserve(k4) = %+v, %v; want allowed", reserved, err)
	}
	before := len(e.records(t, quota.RecordQuery{Subject: subj}))

	e.subscribe(t, q, subj, "ONE")
	for i, c := range uses {
		d, err := q.Consume(e.ctx, c.u)
		if err != nil {
			t.Errorf("%s: Consume(%s) after the plan change = %v; want the first outcome", c.what, c.u.Key, err)
			continue
		}
		if !d.Replayed || !d.Allowed || d.RecordID != first[i].RecordID {
			t.Errorf("%s: Consume(%s) after the plan change = allowed %t, replayed %t, record %d; want allowed, replayed, record %d", c.what, c.u.Key, d.Allowed, d.Replayed, d.RecordID, first[i].RecordID)
		}
		if diff := cmp.Diff(periodsOf(first[i].Limits), periodsOf(d.Limits)); diff != "" {
			t.Errorf("%s: replayed limits are not the first use's (-first +replay):\n%s", c.what, diff)
		}
		for j := range min(d.Limits.Len(), first[i].Limits.Len()) {
			if got, want := d.Limits.At(j).Used, first[i].Limits.At(j).Used; got != want {
				t.Errorf("%s: replayed limit %d used %d; want the first outcome's %d", c.what, j, got, want)
			}
		}
	}
	again, err := q.Reserve(e.ctx, quota.Use{Subject: subj, Action: act, Amount: 2, Key: "k4", Features: []string{"export"}})
	if err != nil || !again.Decision.Replayed || again.ID != reserved.ID {
		t.Errorf("Reserve(k4) after the plan change = %+v, %v; want the first hold %s, replayed", again, err, reserved.ID)
	}
	if after := len(e.records(t, quota.RecordQuery{Subject: subj})); after != before {
		t.Errorf("replays wrote records: %d before, %d after", before, after)
	}
}

// periodsOf lists the periods and maxima of limits.
func periodsOf(ls quota.LimitStatuses) []string {
	out := make([]string, ls.Len())
	for i, l := range ls.All() {
		out[i] = l.Period.String() + ":" + quota.PerMonth(l.Limit).String()
	}
	return out
}
