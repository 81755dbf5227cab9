package quota_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quotakit/quota"
)

// sliceDecision is Decision as it was with Limits a []LimitStatus: the
// JSON form that LimitStatuses must keep byte for byte.
type sliceDecision struct {
	Allowed bool         `json:"allowed"`
	Reason  quota.Reason `json:"reason,omitempty"`
	Subject string       `json:"subject"`
	Action  string       `json:"action"`
	Plan    string       `json:"plan"`
	Amount  int64        `json:"amount"`
	quota.LimitStatus
	Limits   []quota.LimitStatus `json:"limits"`
	RecordID int64               `json:"record_id,omitempty"`
	Replayed bool                `json:"replayed,omitempty"`
	Feature  string              `json:"feature,omitempty"`
}

func sliceDecisionOf(d quota.Decision) sliceDecision {
	return sliceDecision{
		Allowed: d.Allowed, Reason: d.Reason, Subject: d.Subject, Action: d.Action, Plan: d.Plan, Amount: d.Amount,
		LimitStatus: d.LimitStatus, Limits: d.Limits.AsSlice(), RecordID: d.RecordID, Replayed: d.Replayed, Feature: d.Feature,
	}
}

// TestDecisionJSON checks that the decisions of the engine encode as they
// did when Decision.Limits was a slice, and decode back.
func TestDecisionJSON(t *testing.T) {
	q, _ := newTestQuota(t, quota.Config{})
	ctx := context.Background()
	subscribe(t, q, quota.Subscription{Subject: "alice", Plan: "FREE"})
	uses := []struct {
		name string
		use  quota.Use
	}{
		{"two limits", quota.Use{Subject: "alice", Action: "ai.analysis", Amount: 1}},
		{"denied", quota.Use{Subject: "alice", Action: "ai.analysis", Amount: 3}},
		{"per-use cap", quota.Use{Subject: "alice", Action: "storage.bytes", Amount: 101}},
		{"unlimited", quota.Use{Subject: "alice", Action: "procedure.view", Amount: 1}},
		{"feature", quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 1, Features: []string{"api_access"}}},
		{"keyed", quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 1, Key: "k1"}},
		{"replayed", quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 1, Key: "k1"}},
	}
	for _, u := range uses {
		d, err := q.Consume(ctx, u.use)
		if err != nil {
			t.Fatalf("%s: Consume = %v", u.name, err)
		}
		got, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("%s: json.Marshal(Decision) = %v", u.name, err)
		}
		want, _ := json.Marshal(sliceDecisionOf(d))
		if string(got) != string(want) {
			t.Errorf("%s: json.Marshal(Decision) =\n%s\nwant\n%s", u.name, got, want)
		}
		var back quota.Decision
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%s: json.Unmarshal(%s) = %v", u.name, got, err)
		}
		if diff := cmp.Diff(d, back); diff != "" {
			t.Errorf("%s: Decision after a JSON round trip (-want +got):\n%s", u.name, diff)
		}
	}
}

func TestLimitStatuses(t *testing.T) {
	month := quota.LimitStatus{Period: quota.PeriodMonth, Limit: 5, Used: 2, Remaining: 3, Percent: 40,
		PeriodStart: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC), ResetAt: time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC)}
	day := quota.LimitStatus{Period: quota.PeriodDay, Limit: 1, Used: 1, Percent: 100, Level: quota.LevelExceeded}
	s := quota.LimitStatusesOf(day, month)
	if s.Len() != 2 || s.At(0) != day || s.At(1) != month {
		t.Errorf("LimitStatusesOf(day, month) = %v; want [day month]", s)
	}
	var got []quota.LimitStatus
	for i, st := range s.All() {
		if st != s.At(i) {
			t.Errorf("All() yields %d: %v; want At(%d) = %v", i, st, i, s.At(i))
		}
		got = append(got, st)
		break // the iterator stops
	}
	if len(got) != 1 {
		t.Errorf("All() yielded %d after a break; want 1", len(got))
	}
	if sl := s.AsSlice(); len(sl) != 2 || sl[0] != day {
		t.Errorf("AsSlice() = %v; want [day month]", sl)
	} else if sl[0].Used = 9; s.At(0).Used != 1 {
		t.Errorf("AsSlice() shares its memory with the LimitStatuses")
	}

	// Equal compares times as instants.
	paris := month
	paris.PeriodStart = month.PeriodStart.In(time.FixedZone("CET", 3600))
	if !s.Equal(quota.LimitStatusesOf(day, paris)) || s.Equal(quota.LimitStatusesOf(day)) || s.Equal(quota.LimitStatusesOf(month, day)) {
		t.Errorf("Equal: wrong answer")
	}

	// JSON: an array, [] for none, null decodes as none.
	for _, tt := range []struct {
		s    quota.LimitStatuses
		want []quota.LimitStatus
	}{{quota.LimitStatuses{}, []quota.LimitStatus{}}, {s, []quota.LimitStatus{day, month}}} {
		b, _ := json.Marshal(tt.s)
		w, _ := json.Marshal(tt.want)
		if string(b) != string(w) {
			t.Errorf("json.Marshal(%v) = %s; want %s", tt.s, b, w)
		}
	}
	var none quota.LimitStatuses
	if err := json.Unmarshal([]byte("null"), &none); err != nil || none.Len() != 0 {
		t.Errorf("json.Unmarshal(null) = %v, %v; want none", none, err)
	}
	six, _ := json.Marshal(make([]quota.LimitStatus, quota.MaxLimits+1))
	if err := json.Unmarshal(six, &none); err == nil {
		t.Errorf("json.Unmarshal(%d statuses) = nil; want an error", quota.MaxLimits+1)
	}
	defer func() {
		if recover() == nil {
			t.Errorf("LimitStatusesOf(%d statuses) did not panic", quota.MaxLimits+1)
		}
	}()
	quota.LimitStatusesOf(make([]quota.LimitStatus, quota.MaxLimits+1)...)
}

// TestConsumeAllocations keeps Consume over MemoryStore, without metadata
// or key, free of allocations, the ledger's own growth aside.
func TestConsumeAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("allocations are not counted under the race detector")
	}
	plans := append([]quota.Plan{{Name: "ALL", Limits: map[string][]quota.Limit{"api.call": {
		quota.PerHour(quota.MaxAmount), quota.PerDay(quota.MaxAmount), quota.PerWeek(quota.MaxAmount),
		quota.PerMonth(quota.MaxAmount), quota.PerYear(quota.MaxAmount),
	}}}}, testPlans...)
	q, _ := newTestQuota(t, quota.Config{Plans: plans})
	ctx := context.Background()
	subscribe(t, q, quota.Subscription{Subject: "alice", Plan: "PRO"})
	subscribe(t, q, quota.Subscription{Subject: "bob", Plan: "ALL"})
	var d quota.Decision
	for _, u := range []quota.Use{
		{Subject: "alice", Action: "procedure.view", Amount: 1},
		{Subject: "bob", Action: "api.call", Amount: 1}, // MaxLimits limits
	} {
		allocs := testing.AllocsPerRun(500, func() { d, _ = q.Consume(ctx, u) })
		if allocs != 0 || !d.Allowed {
			t.Errorf("Consume(%s): %v allocations a use, allowed %v; want 0, true", u.Action, allocs, d.Allowed)
		}
	}
	var n int
	allocs := testing.AllocsPerRun(100, func() {
		for _, st := range d.Limits.All() {
			n += int(st.Used)
		}
	})
	if allocs != 0 {
		t.Errorf("ranging over Decision.Limits.All(): %v allocations; want 0", allocs)
	}
}

// TestTooManyLimits: a subscription written to the store directly, not
// by Subscribe, may carry more limits than an action can; a use of that
// action fails rather than overflow Decision.Limits.
func TestTooManyLimits(t *testing.T) {
	store := quota.NewMemoryStore()
	q, err := quota.New(store, quota.Config{Plans: testPlans})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	six := make([]quota.Limit, quota.MaxLimits+1)
	for i := range six {
		six[i] = quota.PerDay(10)
	}
	sub := quota.Subscription{Subject: "alice", Plan: "FREE", Anchor: time.Now(), Overrides: map[string][]quota.Limit{"diagram.upload": six}}
	if err := store.PutSubscription(ctx, sub); err != nil {
		t.Fatal(err)
	}
	u := quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 1}
	if _, err := q.Consume(ctx, u); !errors.Is(err, quota.ErrInvalidSubscription) {
		t.Errorf("Consume with %d limits = %v; want ErrInvalidSubscription", len(six), err)
	}
	if _, err := q.Check(ctx, u); !errors.Is(err, quota.ErrInvalidSubscription) {
		t.Errorf("Check with %d limits = %v; want ErrInvalidSubscription", len(six), err)
	}
}
