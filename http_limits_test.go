package quota_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quotakit/quota"
)

// TestQuotaLimits: Limits returns the limits in force for a subject's action
// (its plan's, its override, the scheduled plan once in effect, the
// default plan, a blocked action) with one subscription read and no
// counter read, so that a chunked upload can learn its cap first.
func TestQuotaLimits(t *testing.T) {
	store := newCountingStore()
	var now atomic.Int64
	now.Store(mwNow.UnixNano())
	q, err := quota.New(store, quota.Config{
		Plans: append(mwPlans(), quota.Plan{Name: "VIEWER", Limits: map[string][]quota.Limit{
			"procedure.view": {quota.PerMonth(quota.Unlimited)},
		}}),
		DefaultPlan: "VIEWER",
		Now:         func() time.Time { return time.Unix(0, now.Load()).UTC() },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ctx := context.Background()
	for _, s := range []quota.Subscription{
		{Subject: "alice", Plan: "FREE", Anchor: mwAnchor},
		{Subject: "olga", Plan: "FREE", Anchor: mwAnchor, Overrides: map[string][]quota.Limit{
			"storage.bytes": {quota.Total(5000).WithMaxPerUse(2000)},
		}},
		{Subject: "sam", Plan: "FREE", Anchor: mwAnchor},
	} {
		if err := q.Subscribe(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	at, err := q.SchedulePlan(ctx, "sam", "PRO")
	if err != nil {
		t.Fatal(err)
	}
	store.take()

	check := func(name, subject, action string, want []quota.Limit) {
		t.Helper()
		got, err := q.Limits(ctx, subject, action)
		if err != nil {
			t.Fatalf("%s: Limits(%q, %q) = %v", name, subject, action, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: Limits(%q, %q) (-want +got):\n%s", name, subject, action, diff)
		}
		if diff := cmp.Diff(map[string]int{"GetSubscription": 1}, store.take()); diff != "" {
			t.Errorf("%s: store calls (-want +got):\n%s", name, diff)
		}
	}
	check("the plan's cap", "alice", "storage.bytes", []quota.Limit{quota.Total(1000).WithMaxPerUse(100)})
	check("two limits, in period order", "alice", "api.call", []quota.Limit{quota.PerDay(10), quota.PerMonth(100)})
	check("an override", "olga", "storage.bytes", []quota.Limit{quota.Total(5000).WithMaxPerUse(2000)})
	check("the plan, beside an override", "olga", "diagram.upload", []quota.Limit{quota.PerMonth(5)})
	check("a scheduled plan, before it takes effect", "sam", "storage.bytes", []quota.Limit{quota.Total(1000).WithMaxPerUse(100)})
	check("the default plan", "nobody", "procedure.view", []quota.Limit{quota.PerMonth(quota.Unlimited)})
	check("an action the plan omits: blocked", "nobody", "diagram.upload", []quota.Limit{quota.Total(0)})
	now.Store(at.UnixNano())
	check("a scheduled plan, in effect", "sam", "storage.bytes", []quota.Limit{quota.Total(100000).WithMaxPerUse(10000)})

	// The slice is the caller's.
	got, _ := q.Limits(ctx, "alice", "storage.bytes")
	got[0].Max = 1
	if again, _ := q.Limits(ctx, "alice", "storage.bytes"); again[0].Max != 1000 {
		t.Errorf("Limits after the caller changed its slice: Max %d; want 1000", again[0].Max)
	}
	// A Check agrees with Limits on the cap.
	if d, err := q.Check(ctx, quota.Use{Subject: "alice", Action: "storage.bytes", Amount: 101}); err != nil || d.Reason != quota.ReasonPerUse || d.MaxPerUse != 100 {
		t.Errorf("Check over the cap = %+v, %v; want a per-use denial at 100", d, err)
	}
	store.take()

	for _, tt := range []struct {
		name            string
		subject, action string
		want            error
	}{
		{"unknown action", "alice", "nope", quota.ErrUnknownAction},
		{"invalid action", "alice", "", quota.ErrInvalidAction},
		{"invalid subject", "al\x00ice", "diagram.upload", quota.ErrInvalidSubject},
	} {
		if _, err := q.Limits(ctx, tt.subject, tt.action); !errors.Is(err, tt.want) {
			t.Errorf("%s: Limits = %v; want %v", tt.name, err, tt.want)
		}
	}
	if calls := store.take(); len(calls) != 0 {
		t.Errorf("invalid input: store calls %v; want none", calls)
	}

	noDefault := mwQuota(t, quota.NewMemoryStore())
	if _, err := noDefault.Limits(ctx, "nobody", "diagram.upload"); !errors.Is(err, quota.ErrNoSubscription) {
		t.Errorf("no subscription: Limits = %v; want ErrNoSubscription", err)
	}
	noDefault.Close()
	if _, err := noDefault.Limits(ctx, "alice", "diagram.upload"); !errors.Is(err, quota.ErrClosed) {
		t.Errorf("after Close: Limits = %v; want ErrClosed", err)
	}
}
