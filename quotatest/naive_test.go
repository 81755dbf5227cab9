package quotatest

import (
	"context"
	"runtime"
	"testing"

	"github.com/quotakit/quota"
)

// naiveStore is a deliberately broken Store: it checks the limits by
// reading the counters, yields, and then writes without enforcement, so
// that concurrent uses can pass a limit together. Everything else is a
// MemoryStore's.
type naiveStore struct {
	*quota.MemoryStore
}

func (s naiveStore) Apply(ctx context.Context, op *quota.Op) (quota.ApplyResult, error) {
	if !op.Enforce || op.Hold != nil || op.Record.Key != "" || op.Record.Amount < 0 {
		return s.MemoryStore.Apply(ctx, op)
	}
	keys := make([]quota.CounterKey, len(op.Counters))
	for i, c := range op.Counters {
		keys[i] = c.CounterKey
	}
	cs, err := s.Counters(ctx, keys, op.Now)
	if err != nil {
		return quota.ApplyResult{}, err
	}
	for i, c := range op.Counters {
		if c.Max != quota.Unlimited && cs[i].Used+cs[i].Held+op.Record.Amount > c.Max {
			return quota.ApplyResult{Counters: cs}, nil
		}
	}
	runtime.Gosched() // the window a real store's round trip would open
	unchecked := *op
	unchecked.Enforce = false
	return s.MemoryStore.Apply(ctx, &unchecked)
}

// TestNaiveStoreOvershoots is the negative control of the concurrency
// harness: against a read-then-write store, it must see more granted than
// the limit, proving that the ConsumeConcurrency case can fail.
func TestNaiveStoreOvershoots(t *testing.T) {
	const limit, goroutines, perG = 5000, 64, 200
	const action = "api.call"
	s := &suite{newStore: func(*testing.T) quota.Store { return naiveStore{quota.NewMemoryStore()} }, run: newRunID()}
	e := s.env(t)
	q := e.quota(t, quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{action: {quota.PerMonth(limit)}})}})
	subj := e.name("s")
	e.subscribe(t, q, subj, "P")

	c, _ := consumeRace(e.ctx, q, subj, action, goroutines, perG)
	if c.errors != 0 {
		t.Fatalf("%d errors; the first: %v", c.errors, c.firstErr)
	}
	if c.allowed <= limit {
		t.Errorf("naive store: %d allowed of a limit of %d; want more (overshoot), or the harness cannot catch a racy store", c.allowed, limit)
	}
	cnt := e.counters(t, monthOf(subj, action).key)[0]
	if cnt.Used <= limit {
		t.Errorf("naive store: counter %d; want more than %d", cnt.Used, limit)
	}
	t.Logf("naive store: %d allowed of %d; counter %d", c.allowed, limit, cnt.Used)
}
