package quota_test

import (
	"context"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/quotakit/quota"
)

// hookStore is a MemoryStore (Versioned) whose Apply calls before, when
// set, and then answers with what before returns, if not nil.
type hookStore struct {
	*quota.MemoryStore
	applies atomic.Int64
	before  func(n int64, op *quota.Op) error
}

func (s *hookStore) Apply(ctx context.Context, op *quota.Op) (quota.ApplyResult, error) {
	n := s.applies.Add(1)
	if s.before != nil {
		if err := s.before(n, op); err != nil {
			return quota.ApplyResult{}, err
		}
	}
	return s.MemoryStore.Apply(ctx, op)
}

// TestSubscriptionChangedRetries: a use that the store refuses because
// the subscription changed is judged again under the new one; one that
// keeps being refused fails with ErrSubscriptionChanged, not as a store
// failure, after 64 retries.
func TestSubscriptionChangedRetries(t *testing.T) {
	ctx := context.Background()
	store := &hookStore{MemoryStore: quota.NewMemoryStore()}
	q, err := quota.New(store, quota.Config{Plans: testPlans})
	if err != nil {
		t.Fatal(err)
	}
	if !isVersioned(store) {
		t.Fatal("hookStore is not Versioned")
	}
	admin, err := quota.New(store.MemoryStore, quota.Config{Plans: testPlans})
	if err != nil {
		t.Fatal(err)
	}
	subscribe(t, admin, quota.Subscription{Subject: "alice", Plan: "FREE"})
	u := quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 1}

	// The plan changes between the read of the subscription and the use.
	var versions []int64
	store.before = func(n int64, op *quota.Op) error {
		versions = append(versions, op.Version)
		if n == 1 {
			subscribe(t, admin, quota.Subscription{Subject: "alice", Plan: "PRO"})
		}
		return nil
	}
	d := consume(t, q, u)
	if d.Plan != "PRO" || d.Limit != 100 || store.applies.Load() != 2 {
		t.Errorf("Consume with a plan change before its Apply = plan %q, limit %d after %d Applies; want PRO, 100 after 2", d.Plan, d.Limit, store.applies.Load())
	}
	if len(versions) != 2 || versions[0] <= 0 || versions[1] <= 0 || versions[0] == versions[1] {
		t.Errorf("Op.Version of the two Applies = %v; want two different positive versions", versions)
	}

	// Refused every time.
	for _, call := range []struct {
		name string
		f    func() error
	}{
		{"Consume", func() error { _, err := q.Consume(ctx, u); return err }},
		{"Track", func() error { _, err := q.Track(ctx, u); return err }},
		{"Reserve", func() error { _, err := q.Reserve(ctx, u); return err }},
	} {
		store.applies.Store(0)
		store.before = func(int64, *quota.Op) error { return quota.ErrSubscriptionChanged }
		err := call.f()
		if !errors.Is(err, quota.ErrSubscriptionChanged) || errors.Is(err, quota.ErrStoreUnavailable) {
			t.Errorf("%s refused at every Apply = %v; want an error matching ErrSubscriptionChanged alone", call.name, err)
		}
		if n := store.applies.Load(); n != 65 {
			t.Errorf("%s refused at every Apply: %d Applies; want 65 (64 retries)", call.name, n)
		}
	}
}

// TestOpVersionDefaultPlan: a use judged against the default plan
// carries VersionNone; over a store that is not Versioned, 0.
func TestOpVersionDefaultPlan(t *testing.T) {
	for _, tt := range []struct {
		name  string
		store func(*hookStore) quota.Store
		want  int64
	}{
		{"Versioned", func(s *hookStore) quota.Store { return s }, quota.VersionNone},
		{"not Versioned", func(s *hookStore) quota.Store { return minimalStore{s} }, 0},
	} {
		s := &hookStore{MemoryStore: quota.NewMemoryStore()}
		var got []int64
		s.before = func(_ int64, op *quota.Op) error { got = append(got, op.Version); return nil }
		q, err := quota.New(tt.store(s), quota.Config{Plans: testPlans, DefaultPlan: "FREE"})
		if err != nil {
			t.Fatal(err)
		}
		consume(t, q, quota.Use{Subject: "bob", Action: "diagram.upload", Amount: 1})
		if len(got) != 1 || got[0] != tt.want {
			t.Errorf("%s: Op.Version of a use on the default plan = %v; want [%d]", tt.name, got, tt.want)
		}
	}
}

func isVersioned(s quota.Store) bool {
	v, ok := s.(quota.Versioned)
	return ok && v.Versioned()
}

// TestPlanSwitchAppliedUses: over MemoryStore, which numbers records in
// the order it applies uses, no use applied after a plan change returned
// is judged against the plan it replaced, even one that began before it
// (and was judged, first, against a cached plan).
func TestPlanSwitchAppliedUses(t *testing.T) {
	const plans, goroutines = 16, 6
	ctx := context.Background()
	store := quota.NewMemoryStore()
	var cfg quota.Config
	for i := range plans {
		cfg.Plans = append(cfg.Plans, quota.Plan{Name: "P" + strconv.Itoa(i), Limits: map[string][]quota.Limit{"a": {quota.PerMonth(quota.Unlimited)}}})
	}
	admin, err := quota.New(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	app, err := quota.New(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	subscribe(t, admin, quota.Subscription{Subject: "s", Plan: "P0"})

	type use struct {
		record int64
		plan   int
	}
	var done atomic.Bool
	var uses atomic.Int64
	got := make([][]use, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for !done.Load() {
				d, err := app.Consume(ctx, quota.Use{Subject: "s", Action: "a", Amount: 1})
				if err != nil {
					t.Error(err)
					return
				}
				p, _ := strconv.Atoi(strings.TrimPrefix(d.Plan, "P"))
				got[g] = append(got[g], use{d.RecordID, p})
				uses.Add(1)
			}
		})
	}
	// after[i] is the last record applied when the change to plan i
	// returned: records after it were applied after the change.
	after := make([]int64, plans)
	for i := 1; i < plans; i++ {
		for n := uses.Load(); uses.Load() < n+goroutines; {
			runtime.Gosched()
		}
		subscribe(t, admin, quota.Subscription{Subject: "s", Plan: "P" + strconv.Itoa(i)})
		last, err := store.Records(ctx, quota.RecordQuery{Descending: true, Limit: 1})
		if err != nil || len(last) != 1 {
			t.Fatalf("Records(last) = %v, %v", last, err)
		}
		after[i] = last[0].ID
	}
	done.Store(true)
	wg.Wait()
	bad := 0
	for _, us := range got {
		for _, u := range us {
			for i := 1; i < plans; i++ {
				if u.record > after[i] && u.plan < i {
					if bad++; bad <= 5 {
						t.Errorf("record %d, applied after the change to P%d returned (record %d), judged against P%d", u.record, i, after[i], u.plan)
					}
				}
			}
		}
	}
	t.Logf("%d uses during %d plan changes", uses.Load(), plans-1)
}
