package quota_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/quotakit/quota"
)

// TestSQLStorePlanSwitchAcrossPools: three instances over PostgreSQL, each
// with a pool of its own. One moves a subject through twelve plans while
// the two others use its action from 8 goroutines each: a use that begins
// after a switch returned, on any instance, is judged against that plan or
// a later one, never an older one, whatever the instance cached.
func TestSQLStorePlanSwitchAcrossPools(t *testing.T) {
	dsn := newPGSchema(t)
	const plans, goroutines = 12, 8
	cfg := quota.Config{}
	for i := range plans {
		cfg.Plans = append(cfg.Plans, quota.Plan{Name: "P" + strconv.Itoa(i),
			Limits: map[string][]quota.Limit{"api": {quota.PerMonth(quota.Unlimited)}}})
	}
	instance := func(conns int) *quota.Quota {
		return newQuota(t, migrated(t, openPG(t, dsn, conns)), cfg)
	}
	admin, apps := instance(2), []*quota.Quota{instance(8), instance(8)}
	ctx := context.Background()
	if err := admin.Subscribe(ctx, quota.Subscription{Subject: "org", Plan: "P0"}); err != nil {
		t.Fatal(err)
	}
	var switched, uses atomic.Int64
	var done atomic.Bool
	var mu sync.Mutex
	var problems []string
	var wg sync.WaitGroup
	for _, app := range apps {
		for g := range goroutines {
			wg.Go(func() {
				for !done.Load() {
					before := switched.Load()
					u := quota.Use{Subject: "org", Action: "api", Amount: 1}
					var d quota.Decision
					var err error
					if g%2 == 0 {
						d, err = app.Consume(ctx, u)
					} else {
						d, err = app.Track(ctx, u)
					}
					uses.Add(1)
					var p string
					if i, perr := strconv.Atoi(strings.TrimPrefix(d.Plan, "P")); err != nil {
						p = fmt.Sprintf("use failed: %v", err)
					} else if perr != nil || !d.Allowed {
						p = fmt.Sprintf("decision %+v", d)
					} else if int64(i) < before {
						p = fmt.Sprintf("use judged against P%d after the switch to P%d returned", i, before)
					}
					if p != "" {
						mu.Lock()
						problems = append(problems, p)
						mu.Unlock()
						return
					}
				}
			})
		}
	}
	for i := 1; i < plans; i++ {
		for n := uses.Load(); uses.Load() < n+2*goroutines; {
			mu.Lock()
			failed := len(problems) > 0
			mu.Unlock()
			if failed {
				break
			}
		}
		if err := admin.Subscribe(ctx, quota.Subscription{Subject: "org", Plan: "P" + strconv.Itoa(i)}); err != nil {
			t.Fatal(err)
		}
		switched.Store(int64(i))
	}
	done.Store(true)
	wg.Wait()
	for i, p := range problems {
		if i == 5 {
			t.Errorf("... and %d more", len(problems)-5)
			break
		}
		t.Error(p)
	}
	for _, app := range apps {
		d, err := app.Consume(ctx, quota.Use{Subject: "org", Action: "api", Amount: 1})
		if err != nil || d.Plan != "P"+strconv.Itoa(plans-1) {
			t.Errorf("Consume after the last switch: plan %q, %v; want P%d", d.Plan, err, plans-1)
		}
	}
	t.Logf("%d uses during %d plan switches", uses.Load(), plans-1)
}
