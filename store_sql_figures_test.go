package quota_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/quotakit/quota"
)

// TestSQLStoreReserveFigures checks the figures of granted reservations
// under concurrency: 200 goroutines Reserve(1), then Commit, against a
// limit of 100. Each grant adds exactly 1 to used + held, and a hold's
// Commit moves its 1 from held to used, so the granted decisions' Used
// must be 1 to 100, each once: a decision that counted a concurrent
// Commit twice (its amount in used and still in held) would repeat one
// figure and skip another. Five rounds, each on a fresh subject; half the
// uses carry an idempotency key.
func TestSQLStoreReserveFigures(t *testing.T) {
	const goroutines, limit, rounds = 200, 100, 5
	eachBackend(t, func(t *testing.T, b backend) {
		st := migrated(t, b.newDB(t))
		plan := []quota.Plan{{Name: "P", Limits: map[string][]quota.Limit{"job": {quota.PerMonth(limit)}}}}
		q := newQuota(t, st, quota.Config{Plans: plan, DefaultPlan: "P"})
		bad := 0
		for round := range rounds {
			subject := fmt.Sprint("figures-", round)
			var mu sync.Mutex
			var used []int64
			var errs []error
			var wg sync.WaitGroup
			start := make(chan struct{})
			for g := range goroutines {
				wg.Go(func() {
					<-start
					u := quota.Use{Subject: subject, Action: "job", Amount: 1}
					if g%2 == 1 {
						// A key takes another path on PostgreSQL: the
						// counters are read before they are locked.
						u.Key = fmt.Sprint("k", g)
					}
					r, err := q.Reserve(t.Context(), u)
					if err == nil && r.Decision.Allowed {
						_, err = r.Commit(t.Context())
					}
					mu.Lock()
					defer mu.Unlock()
					if err != nil {
						errs = append(errs, err)
						return
					}
					if r.Decision.Allowed {
						used = append(used, r.Decision.Used)
					}
				})
			}
			close(start)
			wg.Wait()
			for i, err := range errs {
				if i < 3 {
					t.Errorf("round %d: Reserve or Commit = %v; want nil", round, err)
				}
			}
			if repeated, missing := figures(used, limit); len(used) != limit || len(repeated)+len(missing) > 0 {
				bad++
				t.Errorf("round %d: %d granted, Used repeated or out of range %v, missing %v; want %d granted, Used 1 to %d, each once",
					round, len(used), repeated, missing, limit, limit)
			}
		}
		if bad > 0 {
			t.Logf("%d of %d rounds reported wrong figures", bad, rounds)
		}
	})
}

// figures returns the values of used that repeat or fall outside 1 to
// n, and those of 1 to n that are missing, each ascending.
func figures(used []int64, n int64) (repeated, missing []int64) {
	seen := map[int64]int{}
	for _, u := range used {
		seen[u]++
	}
	for u, k := range seen {
		if k > 1 || u < 1 || u > n {
			repeated = append(repeated, u)
		}
	}
	for u := int64(1); u <= n; u++ {
		if seen[u] == 0 {
			missing = append(missing, u)
		}
	}
	slices.Sort(repeated)
	return repeated, missing
}
