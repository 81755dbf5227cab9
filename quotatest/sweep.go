package quotatest

import (
	"errors"
	"testing"
	"time"

	"github.com/quotakit/quota"
)

// testSweep checks Sweeper, for a store that is one: expired holds go in
// batches of at most the limit, unexpired ones stay and count, and a
// swept hold can no longer be committed.
func testSweep(t *testing.T, s *suite) {
	e := s.env(t)
	sw, ok := e.store.(quota.Sweeper)
	if !ok {
		t.Log("the store is not a Sweeper: nothing to check")
		return
	}
	action := e.name("h")
	const ttl = time.Minute
	q := e.quota(t, quota.Config{ReservationTTL: ttl, SweepInterval: -1, Plans: []quota.Plan{plan("P", map[string][]quota.Limit{action: {quota.PerMonth(100)}})}})
	subj := e.name("s")
	e.subscribe(t, q, subj, "P")
	var old []*quota.Reservation
	for range 5 {
		r, err := q.Reserve(e.ctx, quota.Use{Subject: subj, Action: action, Amount: 2})
		if err != nil || !r.Decision.Allowed {
			t.Fatalf("Reserve(2) = %+v, %v", r, err)
		}
		old = append(old, r)
	}
	e.clock.Add(ttl / 2)
	young, err := q.Reserve(e.ctx, quota.Use{Subject: subj, Action: action, Amount: 3})
	if err != nil || !young.Decision.Allowed {
		t.Fatalf("Reserve(3) = %+v, %v", young, err)
	}
	e.clock.Add(ttl/2 + time.Second) // the five expired, the young one not

	var swept int64
	for range 3 {
		n, err := sw.Sweep(e.ctx, e.clock.Now(), 2)
		if err != nil {
			t.Fatalf("Sweep(limit 2) = %v", err)
		}
		if n > 2 {
			t.Errorf("Sweep(limit 2) removed %d holds; want at most 2", n)
		}
		swept += n
	}
	if swept != 5 {
		t.Errorf("three Sweep(limit 2) removed %d holds; want the 5 expired", swept)
	}
	if n, err := sw.Sweep(e.ctx, e.clock.Now(), 10); err != nil || n != 0 {
		t.Errorf("Sweep after all expired were swept = %d, %v; want 0, nil", n, err)
	}
	if _, err := old[0].Commit(e.ctx); !errors.Is(err, quota.ErrReservationNotFound) {
		t.Errorf("Commit of a swept hold = %v; want ErrReservationNotFound", err)
	}
	d := check(t, e.ctx, q, quota.Use{Subject: subj, Action: action, Amount: 1})
	if d.Used != 3 {
		t.Errorf("after the sweep: %d used and held; want the young hold's 3", d.Used)
	}
	if _, err := young.Commit(e.ctx); err != nil {
		t.Errorf("Commit of the unexpired hold = %v; want nil", err)
	}
}
