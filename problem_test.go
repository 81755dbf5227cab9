package quota_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/quotakit/quota"
)

// TestProblemDetailAllocation: the default detail of a denial states an
// allocation's limit "in total", never "per none", whatever the path
// that refused it.
func TestProblemDetailAllocation(t *testing.T) {
	q, err := quota.New(quota.NewMemoryStore(), quota.Config{
		Plans: []quota.Plan{{Name: "FREE", Limits: map[string][]quota.Limit{
			"storage.bytes": {quota.Total(1 << 30).WithMaxPerUse(10 << 20)},
			"team.seats":    {quota.Total(1)},
			"export.dxf":    {quota.Total(0)},
		}}},
		Now: func() time.Time { return mwNow },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ctx := context.Background()
	if err := q.Subscribe(ctx, quota.Subscription{Subject: "alice", Plan: "FREE", Anchor: mwAnchor}); err != nil {
		t.Fatal(err)
	}
	for action, used := range map[string]int64{"storage.bytes": 1<<30 - 5, "team.seats": 1} {
		if _, err := q.Track(ctx, quota.Use{Subject: "alice", Action: action, Amount: used}); err != nil {
			t.Fatal(err)
		}
	}
	bytes := quota.WithBodyBytes()
	for _, tt := range []struct {
		name   string
		action string
		opts   []quota.MiddlewareOption
		body   io.Reader
		want   string
	}{
		{
			name: "declared body", action: "storage.bytes", opts: []quota.MiddlewareOption{bytes}, body: strings.NewReader("0123456789"),
			want: "The FREE plan allows 1073741824 storage.bytes in total; 1073741819 are used and this request needs 10.",
		},
		{
			name: "chunked body", action: "storage.bytes", opts: []quota.MiddlewareOption{bytes}, body: io.MultiReader(strings.NewReader("0123456789")),
			want: "The FREE plan allows 1073741824 storage.bytes in total; 1073741819 are used and this request needs 10485760.",
		},
		{
			name: "fixed amount", action: "team.seats",
			want: "The FREE plan allows 1 team.seats in total; 1 are used and this request needs 1.",
		},
		{
			name: "not in plan", action: "export.dxf",
			want: "The FREE plan does not include export.dxf.",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := quota.Middleware(q, tt.action, mwSubject, tt.opts...)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				t.Error("handler called")
			}))
			rec := mwServe(h, "/", "alice", tt.body)
			if rec.Code != http.StatusTooManyRequests && rec.Code != http.StatusForbidden {
				t.Fatalf("status = %d %s; want a denial", rec.Code, rec.Body)
			}
			p := mwProblem(t, rec)
			if p.Detail != tt.want || strings.Contains(p.Detail, "per none") {
				t.Errorf("detail = %q; want %q", p.Detail, tt.want)
			}
			if !p.ResetAt.IsZero() || rec.Header().Get(quota.HeaderRetryAfter) != "" {
				t.Errorf("reset_at %v, Retry-After %q; want neither for an allocation", p.ResetAt, rec.Header().Get(quota.HeaderRetryAfter))
			}
		})
	}
}
