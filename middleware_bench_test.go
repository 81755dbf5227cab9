package quota_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/quotakit/quota"
)

// BenchmarkMiddleware measures what the middleware adds to a request
// over MemoryStore: "bare" is the handler alone, the yardstick measured in
// the same run; "count" meters one use a request (Reserve, then Commit);
// "feature" adds a feature gate, which rides on the same Reserve
// (Use.Features); "bytes" charges a 1 KiB declared body
// (Reserve of the length, CommitAmount of the bytes read). Each request
// goes through an httptest.ResponseRecorder, whose cost is in "bare".
func BenchmarkMiddleware(b *testing.B) {
	plans := []quota.Plan{{
		Name:     "P",
		Features: []string{"api_access"},
		Limits: map[string][]quota.Limit{
			"api.call":      {quota.PerMonth(quota.Unlimited)},
			"storage.bytes": {quota.Total(quota.Unlimited).WithMaxPerUse(1 << 20)},
		},
	}}
	body := strings.Repeat("x", 1024)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusOK)
	})
	subject := func(*http.Request) (string, error) { return "alice", nil }
	for _, bc := range []struct {
		name   string
		action string
		opts   []quota.MiddlewareOption
		body   bool
		bare   bool
	}{
		{name: "bare", bare: true},
		{name: "count", action: "api.call"},
		{name: "feature", action: "api.call", opts: []quota.MiddlewareOption{quota.WithFeatures("api_access")}},
		{name: "bare-body", bare: true, body: true},
		{name: "bytes", action: "storage.bytes", opts: []quota.MiddlewareOption{quota.WithBodyBytes()}, body: true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			q, err := quota.New(quota.NewMemoryStore(), quota.Config{Plans: plans})
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			if err := q.Subscribe(context.Background(), quota.Subscription{Subject: "alice", Plan: "P"}); err != nil {
				b.Fatal(err)
			}
			var h http.Handler = handler
			if !bc.bare {
				h = quota.Middleware(q, bc.action, subject, bc.opts...)(handler)
			}
			b.ReportAllocs()
			for b.Loop() {
				var r *http.Request
				if bc.body {
					r = httptest.NewRequest("POST", "/", strings.NewReader(body))
				} else {
					r = httptest.NewRequest("GET", "/", nil)
				}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				if w.Code != http.StatusOK {
					b.Fatalf("status %d", w.Code)
				}
			}
		})
	}
}
