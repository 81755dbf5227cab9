package quota_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/quotakit/quota"
)

// newExampleQuota returns a Quota over the plans of testdata/plans.yaml
// with a fixed clock, for the examples.
func newExampleQuota(cfg quota.Config) (*quota.Quota, func(time.Time)) {
	plans, err := quota.LoadPlans("testdata/plans.yaml")
	if err != nil {
		log.Fatal(err)
	}
	now := time.Date(2026, time.March, 20, 9, 0, 0, 0, time.UTC)
	cfg.Plans = plans
	cfg.Now = func() time.Time { return now }
	q, err := quota.New(quota.NewMemoryStore(), cfg)
	if err != nil {
		log.Fatal(err)
	}
	return q, func(t time.Time) { now = t }
}

// Usage reports what a dashboard shows: every action of the plan with its
// figures and level, and last month beside this one.
func ExampleQuota_Usage() {
	ctx := context.Background()
	q, _ := newExampleQuota(quota.Config{})
	err := q.Subscribe(ctx, quota.Subscription{Subject: "alice", Plan: "FREE", Anchor: time.Date(2026, time.January, 5, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		log.Fatal(err)
	}
	for _, u := range []quota.Use{
		{Subject: "alice", Action: "diagram.upload", Amount: 4},
		{Subject: "alice", Action: "ai.analysis", Amount: 1},
		{Subject: "alice", Action: "storage.bytes", Amount: 6 << 20},
	} {
		if _, err := q.Consume(ctx, u); err != nil {
			log.Fatal(err)
		}
	}
	r, err := q.Usage(ctx, "alice")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("plan:", r.Plan, "features:", r.Features)
	for _, a := range r.Actions {
		limit := "unlimited"
		if a.Limit != quota.Unlimited {
			limit = fmt.Sprint(a.Limit)
		}
		resets := "never"
		if !a.ResetAt.IsZero() {
			resets = a.ResetAt.Format(time.DateOnly)
		}
		fmt.Printf("%-15s %9d / %-10s %-8s resets %s\n", a.Action, a.Used, limit, a.Level, resets)
	}
	// Output:
	// plan: FREE features: []
	// ai.analysis             1 / 3          ok       resets 2026-04-05
	// api.call                0 / 0          exceeded resets 2026-04-05
	// diagram.upload          4 / 5          warning  resets 2026-04-05
	// export.dxf              0 / 0          exceeded resets 2026-04-05
	// export.pdf              0 / 0          exceeded resets 2026-04-05
	// procedure.view          0 / unlimited  ok       resets 2026-04-05
	// storage.bytes     6291456 / 1073741824 ok       resets never
	// team.seats              0 / 1          ok       resets never
}

// Series sums usage over time: here one subject's daily uploads in its
// time zone, with days without usage included.
func ExampleQuota_Series() {
	ctx := context.Background()
	q, setNow := newExampleQuota(quota.Config{})
	err := q.Subscribe(ctx, quota.Subscription{Subject: "bob", Plan: "PROFESSIONAL", TimeZone: "America/New_York"})
	if err != nil {
		log.Fatal(err)
	}
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		log.Fatal(err)
	}
	for _, at := range []time.Time{
		time.Date(2026, time.March, 18, 23, 30, 0, 0, ny),
		time.Date(2026, time.March, 19, 0, 30, 0, 0, ny),
		time.Date(2026, time.March, 19, 17, 0, 0, 0, ny),
	} {
		setNow(at)
		if _, err := q.Consume(ctx, quota.Use{Subject: "bob", Action: "diagram.upload", Amount: 1}); err != nil {
			log.Fatal(err)
		}
	}
	points, err := q.Series(ctx, quota.SeriesQuery{
		Subject: "bob",
		Action:  "diagram.upload",
		From:    time.Date(2026, time.March, 17, 0, 0, 0, 0, ny),
		To:      time.Date(2026, time.March, 20, 0, 0, 0, 0, ny),
		Step:    quota.PeriodDay,
		Dense:   true,
	})
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range points {
		fmt.Println(p.Start.In(ny).Format(time.DateOnly), p.Amount)
	}
	// Output:
	// 2026-03-17 0
	// 2026-03-18 1
	// 2026-03-19 2
}

// Notify is called once per subject, limit, window and level, on the
// Quota's own goroutine: a toast at 80 %, a banner at 90 %, a modal or an
// email at 100 %.
func ExampleConfig_notify() {
	ctx := context.Background()
	q, _ := newExampleQuota(quota.Config{
		Notify: func(ctx context.Context, n quota.Notification) error {
			fmt.Printf("%s reached %s on %s: %d of %d this %s\n", n.Subject, n.Level, n.Action, n.Used, n.Limit, n.Period)
			return nil
		},
	})
	if err := q.Subscribe(ctx, quota.Subscription{Subject: "carol", Plan: "PROFESSIONAL"}); err != nil {
		log.Fatal(err)
	}
	for range 11 { // the eleventh is refused, and notifies nothing
		if _, err := q.Consume(ctx, quota.Use{Subject: "carol", Action: "ai.analysis", Amount: 10}); err != nil {
			log.Fatal(err)
		}
	}
	q.Close() // delivers the queued notifications
	// Output:
	// carol reached warning on ai.analysis: 80 of 100 this month
	// carol reached critical on ai.analysis: 90 of 100 this month
	// carol reached exceeded on ai.analysis: 100 of 100 this month
}
