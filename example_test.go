package quota_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/quotakit/quota"
)

func Example() {
	ctx := context.Background()

	// FREE allows 5 diagram uploads a month; PRO allows 100.
	q, err := quota.New(quota.NewMemoryStore(), quota.Config{
		Plans: []quota.Plan{
			{Name: "FREE", Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(5)}}},
			{Name: "PRO", Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(100)}}},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()

	if err := q.Subscribe(ctx, quota.Subscription{Subject: "alice", Plan: "FREE"}); err != nil {
		log.Fatal(err)
	}
	for i := 1; i <= 6; i++ {
		// Consume checks and records in one atomic step.
		d, err := q.Consume(ctx, quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 1})
		if err != nil {
			log.Fatal(err) // a failure, never a denial
		}
		fmt.Printf("upload %d: allowed=%t used=%d/%d level=%s\n", i, d.Allowed, d.Used, d.Limit, d.Level)
	}
	// Output:
	// upload 1: allowed=true used=1/5 level=ok
	// upload 2: allowed=true used=2/5 level=ok
	// upload 3: allowed=true used=3/5 level=ok
	// upload 4: allowed=true used=4/5 level=warning
	// upload 5: allowed=true used=5/5 level=exceeded
	// upload 6: allowed=false used=5/5 level=exceeded
}

// The FREE plan of testdata/plans.yaml allows five diagram uploads a
// billing month. The subject's month is anchored on 31 January, so in
// February it ends on the 28th.
func Example_freePlan() {
	ctx := context.Background()
	plans, err := quota.LoadPlans("testdata/plans.yaml")
	if err != nil {
		log.Fatal(err)
	}
	now := time.Date(2026, time.February, 10, 9, 30, 0, 0, time.UTC)
	q, err := quota.New(quota.NewMemoryStore(), quota.Config{
		Plans: plans,
		Now:   func() time.Time { return now },
	})
	if err != nil {
		log.Fatal(err)
	}
	err = q.Subscribe(ctx, quota.Subscription{
		Subject: "alice",
		Plan:    "FREE",
		Anchor:  time.Date(2026, time.January, 31, 0, 0, 0, 0, time.UTC),
	})
	if err != nil {
		log.Fatal(err)
	}
	for range 5 {
		if _, err := q.Consume(ctx, quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 1}); err != nil {
			log.Fatal(err)
		}
	}
	d, err := q.Consume(ctx, quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 1})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("allowed:", d.Allowed, d.Reason)
	fmt.Println("used:", d.Used, "limit:", d.Limit, "remaining:", d.Remaining)
	fmt.Println("level:", d.Level)
	fmt.Println("period:", d.PeriodStart.Format(time.DateOnly), "to", d.ResetAt.Format(time.DateOnly))
	fmt.Println("retry after:", d.RetryAfter(now))
	fmt.Println("as an error:", errors.Is(d.Err(), quota.ErrExceeded))
	// Output:
	// allowed: false limit_exceeded
	// used: 5 limit: 5 remaining: 0
	// level: exceeded
	// period: 2026-01-31 to 2026-02-28
	// retry after: 422h30m0s
	// as an error: true
}

// Reserve holds an amount while the work runs; Commit records the use,
// Cancel gives the amount back.
func ExampleQuota_Reserve() {
	ctx := context.Background()
	q, err := quota.New(quota.NewMemoryStore(), quota.Config{
		Plans: []quota.Plan{{
			Name:   "FREE",
			Limits: map[string][]quota.Limit{"ai.analysis": {quota.PerMonth(3)}},
		}},
		DefaultPlan: "FREE",
	})
	if err != nil {
		log.Fatal(err)
	}
	use := quota.Use{Subject: "bob", Action: "ai.analysis", Amount: 1}

	ok, err := q.Reserve(ctx, use)
	if err != nil {
		log.Fatal(err)
	}
	failed, err := q.Reserve(ctx, use)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("two held:", ok.Decision.Allowed, failed.Decision.Allowed, failed.Decision.Used)

	if _, err := ok.Commit(ctx); err != nil { // the analysis succeeded
		log.Fatal(err)
	}
	if err := failed.Cancel(ctx); err != nil { // this one failed: give it back
		log.Fatal(err)
	}
	r, err := q.Usage(ctx, "bob")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("used after commit and cancel:", r.Actions[0].Used)
	page, err := q.History(ctx, quota.HistoryQuery{Subject: "bob"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("records:", len(page.Records))
	// Output:
	// two held: true true 2
	// used after commit and cancel: 1
	// records: 1
}

// A use with an idempotency key counts once, however often it is retried.
func ExampleUse_key() {
	ctx := context.Background()
	q, err := quota.New(quota.NewMemoryStore(), quota.Config{
		Plans:       []quota.Plan{{Name: "FREE", Limits: map[string][]quota.Limit{"export.pdf": {quota.PerDay(10)}}}},
		DefaultPlan: "FREE",
	})
	if err != nil {
		log.Fatal(err)
	}
	use := quota.Use{Subject: "carol", Action: "export.pdf", Amount: 1, Key: "req-7f3a"}
	for range 3 {
		d, err := q.Consume(ctx, use)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println("used:", d.Used, "replayed:", d.Replayed)
	}
	use.Amount = 2
	_, err = q.Consume(ctx, use)
	fmt.Println(errors.Is(err, quota.ErrIdempotencyConflict))
	// Output:
	// used: 1 replayed: false
	// used: 1 replayed: true
	// used: 1 replayed: true
	// true
}
