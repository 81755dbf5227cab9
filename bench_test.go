package quota_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/quotakit/quota"
)

// The benchmarks of this file measure the engine over MemoryStore.
// BenchmarkRateAllow is the yardstick the engine is compared with:
// golang.org/x/time/rate's Limiter.Allow, measured in the same run.

func BenchmarkRateAllow(b *testing.B) {
	l := rate.NewLimiter(rate.Every(time.Microsecond), 1000)
	for b.Loop() {
		l.Allow()
	}
}

func benchQuota(b *testing.B, subjects int) (*quota.Quota, []string) {
	b.Helper()
	q, err := quota.New(quota.NewMemoryStore(), quota.Config{
		Plans: []quota.Plan{{Name: "PRO", Limits: map[string][]quota.Limit{
			"api.call": {quota.PerMonth(quota.MaxAmount)},
		}}},
		DefaultPlan: "PRO",
	})
	if err != nil {
		b.Fatal(err)
	}
	names := make([]string, subjects)
	for i := range names {
		names[i] = "subject-" + strconv.Itoa(i)
	}
	return q, names
}

func benchUse(b *testing.B, subjects int, parallel bool, f func(*quota.Quota, context.Context, quota.Use) (quota.Decision, error)) {
	q, names := benchQuota(b, subjects)
	ctx := context.Background()
	if !parallel {
		i := 0
		for b.Loop() {
			d, err := f(q, ctx, quota.Use{Subject: names[i%len(names)], Action: "api.call", Amount: 1})
			if err != nil || !d.Allowed {
				b.Fatalf("decision %+v, error %v", d, err)
			}
			i++
		}
		return
	}
	var next atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(1)) * 7919
		for pb.Next() {
			d, err := f(q, ctx, quota.Use{Subject: names[i%len(names)], Action: "api.call", Amount: 1})
			if err != nil || !d.Allowed {
				b.Errorf("decision %+v, error %v", d, err)
				return
			}
			i++
		}
	})
}

func BenchmarkMemory(b *testing.B) {
	ops := []struct {
		name string
		f    func(*quota.Quota, context.Context, quota.Use) (quota.Decision, error)
	}{
		{"Consume", (*quota.Quota).Consume},
		{"Check", (*quota.Quota).Check},
	}
	for _, op := range ops {
		for _, subjects := range []int{1, 10_000} {
			name := op.name + "/hot"
			if subjects > 1 {
				name = op.name + "/subjects=" + strconv.Itoa(subjects)
			}
			b.Run(name+"/serial", func(b *testing.B) { benchUse(b, subjects, false, op.f) })
			b.Run(name+"/parallel", func(b *testing.B) { benchUse(b, subjects, true, op.f) })
		}
	}
}
