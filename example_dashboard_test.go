package quota_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/quotakit/quota"
)

// UsageHandler serves the signed-in subject's usage to a dashboard: every
// action's figures and level, and with ?days=N the daily usage of the
// last N days in the subject's time zone.
func ExampleUsageHandler() {
	ctx := context.Background()
	now := time.Date(2026, time.March, 30, 10, 0, 0, 0, time.UTC)
	q, err := quota.New(quota.NewMemoryStore(), quota.Config{
		Plans: []quota.Plan{{Name: "FREE", Limits: map[string][]quota.Limit{
			"diagram.upload": {quota.PerMonth(5)},
			"storage.bytes":  {quota.Total(1 << 30)},
		}}},
		Now: func() time.Time { return now },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()
	if err := q.Subscribe(ctx, quota.Subscription{Subject: "alice", Plan: "FREE", TimeZone: "Europe/Paris"}); err != nil {
		log.Fatal(err)
	}
	for range 4 {
		if _, err := q.Track(ctx, quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 1}); err != nil {
			log.Fatal(err)
		}
	}

	// The app's session decides who asks; here, a demo header.
	subject := func(r *http.Request) (string, error) {
		if user := r.Header.Get("X-User"); user != "" {
			return user, nil
		}
		return "", errors.New("not signed in")
	}
	mux := http.NewServeMux()
	mux.Handle("/me/usage", quota.UsageHandler(q, subject))

	r := httptest.NewRequest("GET", "/me/usage?days=3", nil)
	r.Header.Set("X-User", "alice")
	w := httptest.NewRecorder()
	mux.ServeHTTP(w, r)

	fmt.Println(w.Code, w.Header().Get("Content-Type"))
	var res quota.UsageResponse
	if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Subject, res.Plan, res.TimeZone)
	// Show times in the subject's zone, where its days and months begin.
	loc, err := time.LoadLocation(res.TimeZone)
	if err != nil {
		log.Fatal(err)
	}
	for _, a := range res.Actions {
		line := fmt.Sprintf("%s: %d of %d, %s", a.Action, a.Used, a.Limit, a.Level)
		if !a.ResetAt.IsZero() { // an allocation never resets
			line += ", resets " + a.ResetAt.In(loc).Format("2 Jan 15:04 MST")
		}
		fmt.Println(line)
	}
	for _, s := range res.Daily {
		var days []string
		for _, p := range s.Points {
			days = append(days, fmt.Sprintf("%s=%d", p.Start.In(loc).Format("2 Jan"), p.Amount))
		}
		fmt.Printf("%s daily: %s\n", s.Action, strings.Join(days, ", "))
	}
	// Output:
	// 200 application/json
	// alice FREE Europe/Paris
	// diagram.upload: 4 of 5, warning, resets 30 Apr 00:00 CEST
	// storage.bytes: 0 of 1073741824, ok
	// diagram.upload daily: 28 Mar=0, 29 Mar=0, 30 Mar=4
	// storage.bytes daily: 28 Mar=0, 29 Mar=0, 30 Mar=0
}
