package quota_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/quotakit/quota"
)

func ExampleMiddleware() {
	ctx := context.Background()
	now := time.Date(2026, 1, 8, 9, 29, 0, 0, time.UTC) // a fixed clock, for the output
	q, err := quota.New(quota.NewMemoryStore(), quota.Config{
		Plans: []quota.Plan{
			{Name: "FREE", Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(3)}}},
			{Name: "PRO", Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(100)}}},
		},
		Now: func() time.Time { return now },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()
	err = q.Subscribe(ctx, quota.Subscription{Subject: "alice", Plan: "FREE", Anchor: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		log.Fatal(err)
	}

	// The app says who the subject is; here a demo bearer token names
	// the user. Real apps verify a session or a signed token.
	subject := func(r *http.Request) (string, error) {
		user, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			return "", errors.New("no bearer token")
		}
		return user, nil
	}
	upgrade := func(d quota.Decision) string {
		if d.Plan == "FREE" {
			return "You have used all 3 uploads of the FREE plan this month. Upgrade to PRO for 100."
		}
		return "" // the default text
	}

	mux := http.NewServeMux()
	mux.Handle("POST /diagrams", quota.Middleware(q, "diagram.upload", subject, quota.WithMessage(upgrade))(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			d, _ := quota.FromContext(r.Context())
			w.WriteHeader(http.StatusCreated)
			fmt.Fprintf(w, "uploaded; %d of %d used\n", d.Used, d.Limit)
		})))

	for i := 1; i <= 4; i++ {
		req := httptest.NewRequest("POST", "/diagrams", nil)
		req.Header.Set("Authorization", "Bearer alice")
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		fmt.Printf("upload %d: %d %s", i, rec.Code, rec.Body)
		fmt.Printf("  %s: %s\n", quota.HeaderRateLimit, rec.Header().Get(quota.HeaderRateLimit))
		fmt.Printf("  %s: %s\n", quota.HeaderQuotaLevel, rec.Header().Get(quota.HeaderQuotaLevel))
		if rec.Code == http.StatusTooManyRequests && rec.Header().Get(quota.HeaderRetryAfter) == "" {
			// The month resets in 23 days: past an hour, the wait is in
			// reset_at and RateLimit, not in Retry-After, which
			// retrying clients would sleep through.
			fmt.Printf("  no %s\n", quota.HeaderRetryAfter)
		}
	}
	// Output:
	// upload 1: 201 uploaded; 1 of 3 used
	//   RateLimit: "diagram.upload/month";r=2;t=2039460
	//   Quota-Level: ok
	// upload 2: 201 uploaded; 2 of 3 used
	//   RateLimit: "diagram.upload/month";r=1;t=2039460
	//   Quota-Level: ok
	// upload 3: 201 uploaded; 3 of 3 used
	//   RateLimit: "diagram.upload/month";r=0;t=2039460
	//   Quota-Level: exceeded
	// upload 4: 429 {"type":"https://quotakit.dev/problems/quota-exceeded","title":"Quota exceeded","status":429,"detail":"You have used all 3 uploads of the FREE plan this month. Upgrade to PRO for 100.","action":"diagram.upload","plan":"FREE","used":3,"limit":3,"remaining":0,"percent":100,"level":"exceeded","reset_at":"2026-02-01T00:00:00Z"}
	//   RateLimit: "diagram.upload/month";r=0;t=2039460
	//   Quota-Level: exceeded
	//   no Retry-After
}
