package quota_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/quotakit/quota"
)

// The middleware tests run at mwNow, a week into alice's billing month
// (anchored on mwAnchor): the monthly window is [Jan 1, Feb 1), which
// resets in 23 days 14 h 31 min = 2039460 s and lasts 31 days = 2678400 s.
var (
	mwNow    = time.Date(2026, 1, 8, 9, 29, 0, 0, time.UTC)
	mwAnchor = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	mwFeb1   = time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC)
)

func mwPlans() []quota.Plan {
	return []quota.Plan{
		{Name: "FREE", Limits: map[string][]quota.Limit{
			"diagram.upload": {quota.PerMonth(5)},
			"ai.analysis":    {quota.PerMonth(10)},
			"export.dxf":     {quota.PerMonth(0)},
			"procedure.view": {quota.PerMonth(quota.Unlimited)},
			"storage.bytes":  {quota.Total(1000).WithMaxPerUse(100)},
			"log.bytes":      {quota.PerDay(10000)},
			"api.call":       {quota.PerDay(10), quota.PerMonth(100)},
		}},
		{Name: "PRO", Features: []string{"api_access"}, Limits: map[string][]quota.Limit{
			"diagram.upload": {quota.PerMonth(100)},
			"ai.analysis":    {quota.PerMonth(100)},
			"export.dxf":     {quota.PerMonth(10)},
			"procedure.view": {quota.PerMonth(quota.Unlimited)},
			"storage.bytes":  {quota.Total(100000).WithMaxPerUse(10000)},
			"log.bytes":      {quota.PerDay(100000)},
			"api.call":       {quota.PerDay(10), quota.PerMonth(100)},
		}},
	}
}

// mwQuota returns a Quota over store at mwNow, with alice on FREE and
// paul on PRO.
func mwQuota(t testing.TB, store quota.Store) *quota.Quota {
	t.Helper()
	q, err := quota.New(store, quota.Config{Plans: mwPlans(), Now: func() time.Time { return mwNow }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	for s, p := range map[string]string{"alice": "FREE", "paul": "PRO"} {
		if err := q.Subscribe(context.Background(), quota.Subscription{Subject: s, Plan: p, Anchor: mwAnchor}); err != nil {
			t.Fatal(err)
		}
	}
	return q
}

// mwSubject is the tests' subject function: it trusts the X-User header,
// which only a test (or an app behind an authenticating proxy) may do.
func mwSubject(r *http.Request) (string, error) {
	u := r.Header.Get("X-User")
	if u == "" {
		return "", errors.New("no user")
	}
	return u, nil
}

// mwUsed returns what the ledger holds for subject's action: the sum of
// its records. It also checks that no hold is left: the counter's Used
// (holds included) equals the records' sum.
func mwUsed(t testing.TB, q *quota.Quota, subject, action string) int64 {
	t.Helper()
	ctx := context.Background()
	recs, err := allRecords(ctx, q, subject, action)
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, r := range recs {
		sum += r.Amount
	}
	rep, err := q.Usage(ctx, subject)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range rep.Actions {
		if a.Action != action {
			continue
		}
		for _, l := range a.Limits {
			if l.Used != sum {
				t.Errorf("%s %s: counter used %d (holds included), records %d: a hold was left", subject, action, l.Used, sum)
			}
		}
	}
	return sum
}

// mwFailingStore is a MemoryStore that fails every call while fail is set.
type mwFailingStore struct {
	*quota.MemoryStore
	fail atomic.Bool
}

// errStoreDown carries a secret, to prove that no response shows it.
var errStoreDown = errors.New("store down: dial postgres://app:hunter2@db")

func (s *mwFailingStore) Apply(ctx context.Context, op *quota.Op) (quota.ApplyResult, error) {
	if s.fail.Load() {
		return quota.ApplyResult{}, errStoreDown
	}
	return s.MemoryStore.Apply(ctx, op)
}

func (s *mwFailingStore) Counters(ctx context.Context, keys []quota.CounterKey, now time.Time) ([]quota.Counter, error) {
	if s.fail.Load() {
		return nil, errStoreDown
	}
	return s.MemoryStore.Counters(ctx, keys, now)
}

func (s *mwFailingStore) GetSubscription(ctx context.Context, subject string) (quota.Subscription, error) {
	if s.fail.Load() {
		return quota.Subscription{}, errStoreDown
	}
	return s.MemoryStore.GetSubscription(ctx, subject)
}

// hookLog collects what the error hook is told.
type hookLog struct {
	mu   sync.Mutex
	errs []error
}

func (h *hookLog) hook(r *http.Request, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.errs = append(h.errs, err)
}

func (h *hookLog) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.errs)
}

// header returns the header of the name-value pairs kv, added in order.
func header(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i < len(kv); i += 2 {
		h.Add(kv[i], kv[i+1])
	}
	return h
}

const (
	dxfPolicy    = `"export.dxf/month";q=0;w=2678400`
	uploadPolicy = `"diagram.upload/month";q=5;w=2678400`
	aiPolicy     = `"ai.analysis/month";q=10;w=2678400`
	storePolicy  = `"storage.bytes/total";q=1000;qu="content-bytes"`
)

// mwCase is a case of TestMiddleware: one request through a fresh
// Quota.
type mwCase struct {
	name    string
	action  string
	user    string // X-User; "" for none
	opts    []quota.MiddlewareOption
	pre     int64 // tracked before the request
	body    string
	chunked bool  // send body with no declared length
	declare int64 // if > 0, the declared Content-Length (a lie)
	status  int   // the handler's status; default 200
	// handler replaces the default handler, which reads the whole body
	// (and writes nothing if that fails) and answers status.
	handler http.HandlerFunc

	wantCode    int
	wantHeader  http.Header // exact, but Content-Length (checked against the body)
	wantProblem *quota.Problem
	wantCalled  bool
	wantDecided bool  // the handler found a decision with FromContext
	wantUsed    int64 // the ledger after the request
	wantHooked  int   // errors reported to the hook
}

func TestMiddleware(t *testing.T) {
	okHeader := func(kv ...string) http.Header {
		return header(append([]string{"Content-Type", "text/plain; charset=utf-8"}, kv...)...)
	}
	problemHeader := func(kv ...string) http.Header {
		return header(append([]string{"Content-Type", quota.ContentTypeProblem, "X-Content-Type-Options", "nosniff"}, kv...)...)
	}
	uploadUsage := func(used int64) *quota.ProblemUsage {
		return &quota.ProblemUsage{Action: "diagram.upload", Plan: "FREE", Used: used, Limit: 5, Remaining: max(0, 5-used), Percent: float64(used) * 20, Level: quota.LevelExceeded, ResetAt: mwFeb1}
	}
	full := func(status int) *quota.Problem {
		return &quota.Problem{
			Type: quota.DefaultProblemType, Title: "Quota exceeded", Status: status,
			Detail:       "The FREE plan allows 5 diagram.upload per month; 5 are used. The limit resets at 2026-02-01T00:00:00Z.",
			ProblemUsage: uploadUsage(5),
		}
	}
	unauthorized := &quota.Problem{Type: "about:blank", Title: "Unauthorized", Status: 401, Detail: "This request needs valid credentials."}
	tooLarge := func(used int64) *quota.Problem {
		return &quota.Problem{
			Type: quota.ProblemTypeTooLarge, Title: "Content Too Large", Status: 413,
			Detail:       "The FREE plan allows at most 100 storage.bytes per use.",
			ProblemUsage: &quota.ProblemUsage{Action: "storage.bytes", Plan: "FREE", Used: used, Limit: 1000, Remaining: 1000 - used, Percent: float64(used) / 10, MaxPerUse: 100},
		}
	}
	body150 := strings.Repeat("x", 150)

	tests := []mwCase{
		{
			name: "allowed", action: "diagram.upload", user: "alice",
			wantCode: 200, wantCalled: true, wantDecided: true, wantUsed: 1,
			wantHeader: okHeader(
				quota.HeaderRateLimitPolicy, uploadPolicy,
				quota.HeaderRateLimit, `"diagram.upload/month";r=4;t=2039460`,
				quota.HeaderQuotaLevel, "ok"),
		},
		{
			name: "allowed, legacy headers", action: "diagram.upload", user: "alice", pre: 2,
			opts:     []quota.MiddlewareOption{quota.WithLegacyHeaders()},
			wantCode: 200, wantCalled: true, wantDecided: true, wantUsed: 3,
			wantHeader: okHeader(
				quota.HeaderRateLimitPolicy, uploadPolicy,
				quota.HeaderRateLimit, `"diagram.upload/month";r=2;t=2039460`,
				quota.HeaderQuotaLevel, "ok",
				quota.HeaderXRateLimitLimit, "5",
				quota.HeaderXRateLimitRemaining, "2",
				quota.HeaderXRateLimitReset, strconv.FormatInt(mwFeb1.Unix(), 10)),
		},
		{
			name: "allowed at 80 %: warning", action: "ai.analysis", user: "alice", pre: 7,
			wantCode: 200, wantCalled: true, wantDecided: true, wantUsed: 8,
			wantHeader: okHeader(quota.HeaderRateLimitPolicy, aiPolicy, quota.HeaderRateLimit, `"ai.analysis/month";r=2;t=2039460`, quota.HeaderQuotaLevel, "warning"),
		},
		{
			name: "allowed at 90 %: critical", action: "ai.analysis", user: "alice", pre: 8,
			wantCode: 200, wantCalled: true, wantDecided: true, wantUsed: 9,
			wantHeader: okHeader(quota.HeaderRateLimitPolicy, aiPolicy, quota.HeaderRateLimit, `"ai.analysis/month";r=1;t=2039460`, quota.HeaderQuotaLevel, "critical"),
		},
		{
			name: "allowed at 100 %: exceeded", action: "ai.analysis", user: "alice", pre: 9,
			wantCode: 200, wantCalled: true, wantDecided: true, wantUsed: 10,
			wantHeader: okHeader(quota.HeaderRateLimitPolicy, aiPolicy, quota.HeaderRateLimit, `"ai.analysis/month";r=0;t=2039460`, quota.HeaderQuotaLevel, "exceeded"),
		},
		{
			name: "two limits: two policies", action: "api.call", user: "paul", pre: 9,
			wantCode: 200, wantCalled: true, wantDecided: true, wantUsed: 10,
			wantHeader: okHeader(
				quota.HeaderRateLimitPolicy, `"api.call/day";q=10;w=86400, "api.call/month";q=100;w=2678400`,
				quota.HeaderRateLimit, `"api.call/day";r=0;t=52260, "api.call/month";r=90;t=2039460`,
				quota.HeaderQuotaLevel, "exceeded"),
		},
		{
			name: "unlimited: no RateLimit fields, still counted", action: "procedure.view", user: "alice", pre: 1000,
			wantCode: 200, wantCalled: true, wantDecided: true, wantUsed: 1001,
			wantHeader: okHeader(quota.HeaderQuotaLevel, "ok"),
		},
		{
			name: "handler writes nothing: 200, committed", action: "diagram.upload", user: "alice",
			handler:  func(w http.ResponseWriter, r *http.Request) {},
			wantCode: 200, wantCalled: true, wantDecided: true, wantUsed: 1,
			wantHeader: header(
				quota.HeaderRateLimitPolicy, uploadPolicy,
				quota.HeaderRateLimit, `"diagram.upload/month";r=4;t=2039460`,
				quota.HeaderQuotaLevel, "ok"),
		},
		{
			// The month resets in 23 days, past DefaultMaxRetryAfter: no
			// Retry-After, the reset in RateLimit and in the body.
			name: "denied: 429", action: "diagram.upload", user: "alice", pre: 5,
			wantCode: 429, wantUsed: 5,
			wantHeader: problemHeader(
				quota.HeaderRateLimitPolicy, uploadPolicy,
				quota.HeaderRateLimit, `"diagram.upload/month";r=0;t=2039460`,
				quota.HeaderQuotaLevel, "exceeded"),
			wantProblem: full(429),
		},
		{
			name: "denied: 429, reset within WithMaxRetryAfter: Retry-After", action: "diagram.upload", user: "alice", pre: 5,
			opts:     []quota.MiddlewareOption{quota.WithMaxRetryAfter(31 * 24 * time.Hour)},
			wantCode: 429, wantUsed: 5,
			wantHeader: problemHeader(
				quota.HeaderRateLimitPolicy, uploadPolicy,
				quota.HeaderRateLimit, `"diagram.upload/month";r=0;t=2039460`,
				quota.HeaderQuotaLevel, "exceeded",
				quota.HeaderRetryAfter, "2039460"),
			wantProblem: full(429),
		},
		{
			name: "denied: 429, legacy headers, app's message and type", action: "diagram.upload", user: "alice", pre: 5,
			opts: []quota.MiddlewareOption{
				quota.WithLegacyHeaders(),
				quota.WithProblemType("https://example.com/upgrade"),
				quota.WithMessage(func(d quota.Decision) string {
					return map[string]string{"FREE/diagram.upload": "Upgrade to PRO for 100 uploads a month."}[d.Plan+"/"+d.Action]
				}),
			},
			wantCode: 429, wantUsed: 5,
			wantHeader: problemHeader(
				quota.HeaderRateLimitPolicy, uploadPolicy,
				quota.HeaderRateLimit, `"diagram.upload/month";r=0;t=2039460`,
				quota.HeaderQuotaLevel, "exceeded",
				quota.HeaderXRateLimitLimit, "5",
				quota.HeaderXRateLimitRemaining, "0",
				quota.HeaderXRateLimitReset, strconv.FormatInt(mwFeb1.Unix(), 10)),
			wantProblem: &quota.Problem{
				Type: "https://example.com/upgrade", Title: "Quota exceeded", Status: 429,
				Detail:       "Upgrade to PRO for 100 uploads a month.",
				ProblemUsage: uploadUsage(5),
			},
		},
		{
			name: "denied: allocation full, 429 without Retry-After", action: "storage.bytes", user: "alice", pre: 950,
			opts: []quota.MiddlewareOption{quota.WithBodyBytes()}, body: strings.Repeat("x", 60),
			wantCode: 429, wantUsed: 950,
			wantHeader: problemHeader(
				quota.HeaderRateLimitPolicy, storePolicy,
				quota.HeaderRateLimit, `"storage.bytes/total";r=50`,
				quota.HeaderQuotaLevel, "critical"),
			wantProblem: &quota.Problem{
				Type: quota.DefaultProblemType, Title: "Quota exceeded", Status: 429,
				Detail:       "The FREE plan allows 1000 storage.bytes in total; 950 are used and this request needs 60.",
				ProblemUsage: &quota.ProblemUsage{Action: "storage.bytes", Plan: "FREE", Used: 950, Limit: 1000, Remaining: 50, Percent: 95, Level: quota.LevelCritical},
			},
		},
		{
			name: "no subject: 401", action: "diagram.upload",
			wantCode: 401, wantHeader: problemHeader(), wantProblem: unauthorized,
		},
		{
			name: "invalid subject: 401", action: "diagram.upload", user: "al\x7fice",
			wantCode: 401, wantHeader: problemHeader(), wantProblem: unauthorized,
		},
		{
			name: "no subscription: 403", action: "diagram.upload", user: "nobody",
			wantCode: 403, wantHeader: problemHeader(),
			wantProblem: &quota.Problem{Type: quota.ProblemTypeNoSubscription, Title: "No subscription", Status: 403, Detail: "You have no plan that includes this."},
		},
		{
			name: "feature missing: 403", action: "api.call", user: "alice",
			opts:     []quota.MiddlewareOption{quota.WithFeatures("api_access")},
			wantCode: 403, wantHeader: problemHeader(),
			wantProblem: &quota.Problem{Type: quota.ProblemTypeNotInPlan, Title: "Feature not in plan", Status: 403, Detail: `Your plan does not include the feature "api_access".`, Feature: "api_access"},
		},
		{
			name: "feature present", action: "api.call", user: "paul",
			opts:     []quota.MiddlewareOption{quota.WithFeatures("api_access")},
			wantCode: 200, wantCalled: true, wantDecided: true, wantUsed: 1,
			wantHeader: okHeader(
				quota.HeaderRateLimitPolicy, `"api.call/day";q=10;w=86400, "api.call/month";q=100;w=2678400`,
				quota.HeaderRateLimit, `"api.call/day";r=9;t=52260, "api.call/month";r=99;t=2039460`,
				quota.HeaderQuotaLevel, "ok"),
		},
		{
			name: "limit of 0: 403 not in plan", action: "export.dxf", user: "alice",
			wantCode: 403,
			wantHeader: problemHeader(
				quota.HeaderRateLimitPolicy, dxfPolicy,
				quota.HeaderRateLimit, `"export.dxf/month";r=0;t=2039460`,
				quota.HeaderQuotaLevel, "exceeded"),
			wantProblem: &quota.Problem{
				Type: quota.ProblemTypeNotInPlan, Title: "Not in plan", Status: 403,
				Detail:       "The FREE plan does not include export.dxf.",
				ProblemUsage: &quota.ProblemUsage{Action: "export.dxf", Plan: "FREE", Limit: 0, Percent: 100, Level: quota.LevelExceeded, ResetAt: mwFeb1},
			},
		},
		{
			name: "declared body over the per-use cap: 413", action: "storage.bytes", user: "alice", pre: 10,
			opts: []quota.MiddlewareOption{quota.WithBodyBytes()}, body: body150,
			wantCode: 413, wantUsed: 10,
			wantHeader: problemHeader(
				quota.HeaderRateLimitPolicy, storePolicy,
				quota.HeaderRateLimit, `"storage.bytes/total";r=990`,
				quota.HeaderQuotaLevel, "ok"),
			wantProblem: tooLarge(10),
		},
		{
			name: "chunked body over the per-use cap: 413, hold released", action: "storage.bytes", user: "alice", pre: 10,
			opts: []quota.MiddlewareOption{quota.WithBodyBytes()}, body: body150, chunked: true,
			wantCode: 413, wantCalled: true, wantDecided: true, wantUsed: 10,
			// The quota headers were set before the handler ran: they
			// count the hold of the cap (100 bytes) that was released.
			wantHeader: problemHeader(
				quota.HeaderRateLimitPolicy, storePolicy,
				quota.HeaderRateLimit, `"storage.bytes/total";r=890`,
				quota.HeaderQuotaLevel, "ok"),
			wantProblem: tooLarge(110),
		},
		{
			name: "body longer than its declared length: 413", action: "storage.bytes", user: "alice",
			opts: []quota.MiddlewareOption{quota.WithBodyBytes()}, body: body150, declare: 50,
			wantCode: 413, wantCalled: true, wantDecided: true, wantUsed: 0,
			wantHeader: problemHeader(
				quota.HeaderRateLimitPolicy, storePolicy,
				quota.HeaderRateLimit, `"storage.bytes/total";r=950`,
				quota.HeaderQuotaLevel, "ok"),
			wantProblem: &quota.Problem{
				Type: quota.ProblemTypeTooLarge, Title: "Content Too Large", Status: 413,
				Detail:       "The FREE plan allows at most 50 storage.bytes per use.",
				ProblemUsage: &quota.ProblemUsage{Action: "storage.bytes", Plan: "FREE", Used: 50, Limit: 1000, Remaining: 950, Percent: 5, MaxPerUse: 50},
			},
		},
		{
			name: "over the cap, handler answered itself: its answer stands, hold released", action: "storage.bytes", user: "alice",
			opts: []quota.MiddlewareOption{quota.WithBodyBytes()}, body: body150, chunked: true,
			handler: func(w http.ResponseWriter, r *http.Request) {
				if _, err := io.ReadAll(r.Body); err != nil {
					http.Error(w, "too big", http.StatusBadRequest)
				}
			},
			wantCode: 400, wantCalled: true, wantDecided: true, wantUsed: 0,
			wantHeader: header(
				"Content-Type", "text/plain; charset=utf-8",
				"X-Content-Type-Options", "nosniff",
				quota.HeaderRateLimitPolicy, storePolicy,
				quota.HeaderRateLimit, `"storage.bytes/total";r=900`,
				quota.HeaderQuotaLevel, "ok"),
		},
		{
			name: "declared body: bytes read are charged", action: "storage.bytes", user: "alice",
			opts: []quota.MiddlewareOption{quota.WithBodyBytes()}, body: strings.Repeat("x", 60),
			wantCode: 200, wantCalled: true, wantDecided: true, wantUsed: 60,
			wantHeader: okHeader(quota.HeaderRateLimitPolicy, storePolicy, quota.HeaderRateLimit, `"storage.bytes/total";r=940`, quota.HeaderQuotaLevel, "ok"),
		},
		{
			name: "chunked body: the cap is held, bytes read are charged", action: "storage.bytes", user: "alice",
			opts: []quota.MiddlewareOption{quota.WithBodyBytes()}, body: strings.Repeat("x", 60), chunked: true,
			wantCode: 200, wantCalled: true, wantDecided: true, wantUsed: 60,
			wantHeader: okHeader(quota.HeaderRateLimitPolicy, storePolicy, quota.HeaderRateLimit, `"storage.bytes/total";r=900`, quota.HeaderQuotaLevel, "ok"),
		},
		{
			name: "handler reads part of the body: that part is charged", action: "storage.bytes", user: "alice",
			opts: []quota.MiddlewareOption{quota.WithBodyBytes()}, body: strings.Repeat("x", 60),
			handler: func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.ReadFull(r.Body, make([]byte, 25))
				w.WriteHeader(http.StatusCreated)
			},
			wantCode: 201, wantCalled: true, wantDecided: true, wantUsed: 25,
			wantHeader: header(quota.HeaderRateLimitPolicy, storePolicy, quota.HeaderRateLimit, `"storage.bytes/total";r=940`, quota.HeaderQuotaLevel, "ok"),
		},
		{
			name: "empty body: unmetered", action: "storage.bytes", user: "alice",
			opts:     []quota.MiddlewareOption{quota.WithBodyBytes()},
			wantCode: 200, wantCalled: true, wantUsed: 0, wantHeader: okHeader(),
		},
		{
			name: "chunked body of 0 bytes: hold released", action: "storage.bytes", user: "alice",
			opts: []quota.MiddlewareOption{quota.WithBodyBytes()}, chunked: true,
			wantCode: 200, wantCalled: true, wantDecided: true, wantUsed: 0,
			wantHeader: okHeader(quota.HeaderRateLimitPolicy, storePolicy, quota.HeaderRateLimit, `"storage.bytes/total";r=900`, quota.HeaderQuotaLevel, "ok"),
		},
		{
			name: "chunked body, no cap: 411", action: "log.bytes", user: "alice",
			opts: []quota.MiddlewareOption{quota.WithBodyBytes()}, body: "x", chunked: true,
			wantCode: 411, wantHeader: problemHeader(),
			wantProblem: &quota.Problem{Type: "about:blank", Title: "Length Required", Status: 411, Detail: "This request needs a Content-Length."},
		},
		{
			name: "chunked body, WithMaxBodyBytes caps it", action: "log.bytes", user: "alice",
			opts: []quota.MiddlewareOption{quota.WithBodyBytes(), quota.WithMaxBodyBytes(30)}, body: "xyz", chunked: true,
			wantCode: 200, wantCalled: true, wantDecided: true, wantUsed: 3,
			wantHeader: okHeader(quota.HeaderRateLimitPolicy, `"log.bytes/day";q=10000;qu="content-bytes";w=86400`, quota.HeaderRateLimit, `"log.bytes/day";r=9970;t=52260`, quota.HeaderQuotaLevel, "ok"),
		},
		{
			name: "declared body over WithMaxBodyBytes: 413 before any store call", action: "log.bytes", user: "alice",
			opts: []quota.MiddlewareOption{quota.WithBodyBytes(), quota.WithMaxBodyBytes(30)}, body: strings.Repeat("x", 31),
			wantCode: 413, wantHeader: problemHeader(),
			wantProblem: &quota.Problem{Type: quota.ProblemTypeTooLarge, Title: "Content Too Large", Status: 413, Detail: "The request body is larger than the 30 bytes allowed."},
		},
		{
			name: "fixed amount over the per-use cap: 413", action: "storage.bytes", user: "alice",
			opts:     []quota.MiddlewareOption{quota.WithAmount(101)},
			wantCode: 413,
			wantHeader: problemHeader(
				quota.HeaderRateLimitPolicy, `"storage.bytes/total";q=1000`,
				quota.HeaderRateLimit, `"storage.bytes/total";r=1000`,
				quota.HeaderQuotaLevel, "ok"),
			wantProblem: &quota.Problem{
				Type: quota.ProblemTypeTooLarge, Title: "Content Too Large", Status: 413,
				Detail:       "The FREE plan allows at most 100 storage.bytes per use.",
				ProblemUsage: &quota.ProblemUsage{Action: "storage.bytes", Plan: "FREE", Limit: 1000, Remaining: 1000, MaxPerUse: 100},
			},
		},
		{
			name: "computed amount", action: "ai.analysis", user: "alice",
			opts: []quota.MiddlewareOption{quota.WithAmountFunc(func(r *http.Request) (int64, error) {
				return strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
			})},
			wantCode: 200, wantCalled: true, wantDecided: true, wantUsed: 3,
			wantHeader: okHeader(quota.HeaderRateLimitPolicy, aiPolicy, quota.HeaderRateLimit, `"ai.analysis/month";r=7;t=2039460`, quota.HeaderQuotaLevel, "ok"),
		},
		{
			name: "handler answers 500: hold released", action: "diagram.upload", user: "alice", status: 500,
			wantCode: 500, wantCalled: true, wantDecided: true, wantUsed: 0,
			wantHeader: okHeader(quota.HeaderRateLimitPolicy, uploadPolicy, quota.HeaderRateLimit, `"diagram.upload/month";r=4;t=2039460`, quota.HeaderQuotaLevel, "ok"),
		},
		{
			name: "handler answers 404: hold released", action: "diagram.upload", user: "alice", status: 404,
			wantCode: 404, wantCalled: true, wantDecided: true, wantUsed: 0,
			wantHeader: okHeader(quota.HeaderRateLimitPolicy, uploadPolicy, quota.HeaderRateLimit, `"diagram.upload/month";r=4;t=2039460`, quota.HeaderQuotaLevel, "ok"),
		},
		{
			name: "WithSuccess: only 201 commits", action: "diagram.upload", user: "alice", status: 200,
			opts:     []quota.MiddlewareOption{quota.WithSuccess(func(s int) bool { return s == http.StatusCreated })},
			wantCode: 200, wantCalled: true, wantDecided: true, wantUsed: 0,
			wantHeader: okHeader(quota.HeaderRateLimitPolicy, uploadPolicy, quota.HeaderRateLimit, `"diagram.upload/month";r=4;t=2039460`, quota.HeaderQuotaLevel, "ok"),
		},
		{
			name: "WithUnauthorized", action: "diagram.upload",
			opts: []quota.MiddlewareOption{quota.WithUnauthorized(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="demo"`)
				w.WriteHeader(http.StatusUnauthorized)
			}))},
			wantCode: 401, wantHeader: http.Header{"Www-Authenticate": {`Bearer realm="demo"`}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.run(t)
		})
	}
}

// run sends tt's request through a fresh Quota and checks the outcome.
func (tt *mwCase) run(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	ctx := context.Background()
	if tt.pre > 0 {
		if _, err := q.Track(ctx, quota.Use{Subject: tt.user, Action: tt.action, Amount: tt.pre}); err != nil {
			t.Fatal(err)
		}
	}
	var hooked hookLog
	called, decided := false, false
	opts := append([]quota.MiddlewareOption{quota.WithErrorHook(hooked.hook)}, tt.opts...)
	mw := quota.Middleware(q, tt.action, mwSubject, opts...)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		called = true
		d, ok := quota.FromContext(r.Context())
		decided = ok
		if ok && (!d.Allowed || d.Action != tt.action || d.Subject != tt.user) {
			t.Errorf("FromContext = %+v; want an allowed decision of %s for %s", d, tt.action, tt.user)
		}
		tt.handle(w, r)
	}))
	rec := httptest.NewRecorder()
	mw.ServeHTTP(rec, tt.request())
	tt.checkResponse(t, rec.Result())

	if called != tt.wantCalled {
		t.Errorf("handler called = %t; want %t", called, tt.wantCalled)
	}
	if decided != tt.wantDecided {
		t.Errorf("FromContext ok = %t; want %t", decided, tt.wantDecided)
	}
	if tt.user != "" && !strings.ContainsRune(tt.user, 0x7f) && tt.user != "nobody" {
		if used := mwUsed(t, q, tt.user, tt.action) - tt.pre; used+tt.pre != tt.wantUsed {
			t.Errorf("ledger holds %d; want %d", used+tt.pre, tt.wantUsed)
		}
	}
	if n := hooked.len(); n != tt.wantHooked {
		t.Errorf("error hook called %d times (%v); want %d", n, hooked.errs, tt.wantHooked)
	}
}

// handle is tt's handler: tt.handler, or by default one that reads the
// whole body (and writes nothing if that fails) and answers tt.status.
func (tt *mwCase) handle(w http.ResponseWriter, r *http.Request) {
	if tt.handler != nil {
		tt.handler(w, r)
		return
	}
	if _, err := io.ReadAll(r.Body); err != nil {
		return // leave the answer to the middleware
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	status := tt.status
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
	io.WriteString(w, "done\n")
}

// request returns tt's request.
func (tt *mwCase) request() *http.Request {
	var body io.Reader
	if tt.body != "" || tt.chunked {
		body = strings.NewReader(tt.body)
		if tt.chunked {
			body = io.MultiReader(body) // no length: NewRequest sets -1
		}
	}
	req := httptest.NewRequest("POST", "/x?n=3", body)
	if tt.declare > 0 {
		req.ContentLength = tt.declare
	}
	if tt.user != "" {
		req.Header.Set("X-User", tt.user)
	}
	return req
}

// checkResponse checks res against tt's status, header and problem.
func (tt *mwCase) checkResponse(t *testing.T, res *http.Response) {
	t.Helper()
	got, _ := io.ReadAll(res.Body)
	if res.StatusCode != tt.wantCode {
		t.Errorf("status = %d; want %d (body %s)", res.StatusCode, tt.wantCode, got)
	}
	hdr := res.Header.Clone()
	if cl := hdr.Get("Content-Length"); cl != "" && cl != strconv.Itoa(len(got)) {
		t.Errorf("Content-Length = %s; want %d", cl, len(got))
	}
	hdr.Del("Content-Length")
	if diff := cmp.Diff(tt.wantHeader, hdr); diff != "" {
		t.Errorf("header (-want +got):\n%s", diff)
	}
	if tt.wantProblem != nil {
		var p quota.Problem
		if err := json.Unmarshal(got, &p); err != nil {
			t.Fatalf("body %q: %v", got, err)
		}
		if diff := cmp.Diff(tt.wantProblem, &p); diff != "" {
			t.Errorf("problem (-want +got):\n%s", diff)
		}
	}
	if strings.Contains(string(got), "hunter2") {
		t.Errorf("body %s shows an error's text", got)
	}
}

// TestMiddlewareDeniedBody checks the 429 body member by member, as a
// client that knows nothing of the Problem type decodes it.
func TestMiddlewareDeniedBody(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	if _, err := q.Track(context.Background(), quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 4}); err != nil {
		t.Fatal(err)
	}
	h := quota.Middleware(q, "diagram.upload", mwSubject, quota.WithAmount(2))(http.NotFoundHandler())
	req := httptest.NewRequest("POST", "/diagrams", nil)
	req.Header.Set("X-User", "alice")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 429 {
		t.Fatalf("status = %d; want 429", rec.Code)
	}
	var got map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"type":      "https://quotakit.dev/problems/quota-exceeded",
		"title":     "Quota exceeded",
		"status":    429.0,
		"detail":    "The FREE plan allows 5 diagram.upload per month; 4 are used. The limit resets at 2026-02-01T00:00:00Z.",
		"action":    "diagram.upload",
		"plan":      "FREE",
		"used":      4.0,
		"limit":     5.0,
		"remaining": 1.0,
		"percent":   80.0,
		"level":     "warning",
		"reset_at":  "2026-02-01T00:00:00Z",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("body (-want +got):\n%s", diff)
	}
	// The month resets in 23 days, past DefaultMaxRetryAfter.
	if got := rec.Header().Get(quota.HeaderRetryAfter); got != "" {
		t.Errorf("Retry-After = %q; want none", got)
	}
}

// TestMiddlewareStoreFailure covers the store failing at each step:
// closed by default (503, no handler call), open on request (the handler
// runs unmetered and the hook hears of every such request).
func TestMiddlewareStoreFailure(t *testing.T) {
	for _, tt := range []struct {
		name     string
		action   string
		opts     []quota.MiddlewareOption
		chunked  bool
		failOpen bool
		wantCode int
	}{
		{name: "reserve, fail closed", action: "diagram.upload", wantCode: 503},
		{name: "feature gate, fail closed", action: "api.call", opts: []quota.MiddlewareOption{quota.WithFeatures("api_access")}, wantCode: 503},
		{name: "cap lookup, fail closed", action: "storage.bytes", opts: []quota.MiddlewareOption{quota.WithBodyBytes()}, chunked: true, wantCode: 503},
		{name: "reserve, fail open", action: "diagram.upload", failOpen: true, wantCode: 200},
		{name: "feature gate, fail open", action: "api.call", opts: []quota.MiddlewareOption{quota.WithFeatures("api_access")}, failOpen: true, wantCode: 200},
		{name: "cap lookup, fail open", action: "storage.bytes", opts: []quota.MiddlewareOption{quota.WithBodyBytes()}, chunked: true, failOpen: true, wantCode: 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			store := &mwFailingStore{MemoryStore: quota.NewMemoryStore()}
			q := mwQuota(t, store)
			store.fail.Store(true)
			var hooked hookLog
			opts := append([]quota.MiddlewareOption{quota.WithErrorHook(hooked.hook)}, tt.opts...)
			if tt.failOpen {
				opts = append(opts, quota.WithFailOpen())
			}
			calls := 0
			h := quota.Middleware(q, tt.action, mwSubject, opts...)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls++
				if _, ok := quota.FromContext(r.Context()); ok {
					t.Error("FromContext ok in a failed-open request")
				}
				io.Copy(io.Discard, r.Body)
			}))
			const n = 3
			for range n {
				var body io.Reader
				if tt.chunked {
					body = io.MultiReader(strings.NewReader("abc"))
				}
				req := httptest.NewRequest("POST", "/", body)
				req.Header.Set("X-User", "paul")
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != tt.wantCode {
					t.Fatalf("status = %d; want %d", rec.Code, tt.wantCode)
				}
				hdr := rec.Header().Clone()
				hdr.Del("Content-Length")
				want := http.Header{}
				if !tt.failOpen {
					want = http.Header{
						"Content-Type":           {quota.ContentTypeProblem},
						"X-Content-Type-Options": {"nosniff"},
						"Retry-After":            {"5"},
					}
					var p quota.Problem
					if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
						t.Fatal(err)
					}
					wantP := quota.Problem{Type: "about:blank", Title: "Service Unavailable", Status: 503, Detail: "Usage cannot be checked right now; try again later."}
					if diff := cmp.Diff(wantP, p); diff != "" {
						t.Errorf("problem (-want +got):\n%s", diff)
					}
				}
				if diff := cmp.Diff(want, hdr); diff != "" {
					t.Errorf("header (-want +got):\n%s", diff)
				}
			}
			wantCalls := 0
			if tt.failOpen {
				wantCalls = n
			}
			if calls != wantCalls {
				t.Errorf("handler called %d times; want %d", calls, wantCalls)
			}
			if hooked.len() != n {
				t.Errorf("hook called %d times; want %d", hooked.len(), n)
			}
			for _, err := range hooked.errs {
				if !errors.Is(err, errStoreDown) {
					t.Errorf("hook got %v; want the store's error", err)
				}
			}
			store.fail.Store(false)
			if got := mwUsed(t, q, "paul", tt.action); got != 0 {
				t.Errorf("ledger holds %d; want 0", got)
			}
		})
	}
}

// TestMiddlewareCommitFailure: a store that fails after the handler ran
// cannot change the response; the hook hears of it.
func TestMiddlewareCommitFailure(t *testing.T) {
	store := &mwFailingStore{MemoryStore: quota.NewMemoryStore()}
	q := mwQuota(t, store)
	var hooked hookLog
	h := quota.Middleware(q, "diagram.upload", mwSubject, quota.WithErrorHook(hooked.hook))(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q.Close() // every later call fails with ErrClosed
		w.WriteHeader(http.StatusCreated)
	}))
	req := httptest.NewRequest("POST", "/", nil)
	req.Header.Set("X-User", "alice")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusCreated {
		t.Errorf("status = %d; want 201", rec.Code)
	}
	if hooked.len() != 1 || !errors.Is(hooked.errs[0], quota.ErrClosed) {
		t.Errorf("hook got %v; want one ErrClosed", hooked.errs)
	}
}

// TestMiddlewareClientGone: a request whose context is cancelled while
// the handler runs is still committed: the use happened.
func TestMiddlewareClientGone(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	ctx, cancel := context.WithCancel(context.Background())
	h := quota.Middleware(q, "diagram.upload", mwSubject)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cancel()
		<-r.Context().Done()
	}))
	req := httptest.NewRequestWithContext(ctx, "POST", "/", nil)
	req.Header.Set("X-User", "alice")
	h.ServeHTTP(httptest.NewRecorder(), req)
	if got := mwUsed(t, q, "alice", "diagram.upload"); got != 1 {
		t.Errorf("ledger holds %d; want 1", got)
	}
}

// TestMiddlewarePanic: a panicking handler releases its hold, and the
// panic goes on with its value, http.ErrAbortHandler included.
func TestMiddlewarePanic(t *testing.T) {
	for _, value := range []any{http.ErrAbortHandler, "boom"} {
		t.Run(fmt.Sprint(value), func(t *testing.T) {
			q := mwQuota(t, quota.NewMemoryStore())
			h := quota.Middleware(q, "storage.bytes", mwSubject, quota.WithBodyBytes())(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.ReadAll(r.Body)
				if d, _ := quota.FromContext(r.Context()); d.Used != 40 {
					t.Errorf("held %d; want 40", d.Used)
				}
				panic(value)
			}))
			req := httptest.NewRequest("POST", "/", strings.NewReader(strings.Repeat("x", 40)))
			req.Header.Set("X-User", "alice")
			func() {
				defer func() {
					if got := recover(); got != value {
						t.Errorf("recovered %v; want %v", got, value)
					}
				}()
				h.ServeHTTP(httptest.NewRecorder(), req)
			}()
			if got := mwUsed(t, q, "alice", "storage.bytes"); got != 0 {
				t.Errorf("ledger holds %d; want 0", got)
			}
		})
	}
}

// TestMiddlewarePanicOverHTTP: through a real server, an aborted handler
// leaves nothing held.
func TestMiddlewarePanicOverHTTP(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	h := quota.Middleware(q, "diagram.upload", mwSubject)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		panic(http.ErrAbortHandler)
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	req, _ := http.NewRequest("POST", srv.URL, nil)
	req.Header.Set("X-User", "alice")
	if res, err := srv.Client().Do(req); err == nil {
		res.Body.Close()
		t.Fatalf("status %d; want the connection aborted", res.StatusCode)
	}
	if got := mwUsed(t, q, "alice", "diagram.upload"); got != 0 {
		t.Errorf("ledger holds %d; want 0", got)
	}
}

// TestMiddlewareConcurrency: with a limit of 100 and 200 concurrent
// requests whose handler takes 50 ms, exactly 100 reach the handler and
// 100 are answered 429; the ledger holds 100. The bubble's fake clock
// makes the 50 ms instant and the overlap certain.
func TestMiddlewareConcurrency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		plans := []quota.Plan{{Name: "P", Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(100)}}}}
		q, err := quota.New(quota.NewMemoryStore(), quota.Config{Plans: plans})
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		if err := q.Subscribe(context.Background(), quota.Subscription{Subject: "alice", Plan: "P"}); err != nil {
			t.Fatal(err)
		}
		var calls, inside, maxInside atomic.Int64
		h := quota.Middleware(q, "diagram.upload", mwSubject)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			calls.Add(1)
			n := inside.Add(1)
			for m := maxInside.Load(); n > m && !maxInside.CompareAndSwap(m, n); m = maxInside.Load() {
			}
			time.Sleep(50 * time.Millisecond)
			inside.Add(-1)
			w.WriteHeader(http.StatusCreated)
		}))
		var wg sync.WaitGroup
		var codes sync.Map
		for range 200 {
			wg.Go(func() {
				req := httptest.NewRequest("POST", "/diagrams", nil)
				req.Header.Set("X-User", "alice")
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				c, _ := codes.LoadOrStore(rec.Code, new(atomic.Int64))
				c.(*atomic.Int64).Add(1)
			})
		}
		wg.Wait()
		count := func(code int) int64 {
			if c, ok := codes.Load(code); ok {
				return c.(*atomic.Int64).Load()
			}
			return 0
		}
		if calls.Load() != 100 || count(201) != 100 || count(429) != 100 {
			t.Errorf("handler calls %d, 201 %d, 429 %d; want 100, 100, 100", calls.Load(), count(201), count(429))
		}
		if maxInside.Load() != 100 {
			t.Errorf("at most %d handlers ran at once; want 100 (the overlap the test needs)", maxInside.Load())
		}
		recs, err := allRecords(context.Background(), q, "alice", "")
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) != 100 {
			t.Errorf("ledger holds %d records; want 100", len(recs))
		}
	})
}

// TestMiddlewareRouteVariants sends variants of protected routes through
// an http.ServeMux: whatever reaches the handler went through the
// middleware, so no more than the quota of 5 ever does.
func TestMiddlewareRouteVariants(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	var calls atomic.Int64
	protect := quota.Middleware(q, "diagram.upload", mwSubject)
	h := func(w http.ResponseWriter, r *http.Request) { calls.Add(1) }
	mux := http.NewServeMux()
	mux.Handle("POST /diagrams", protect(http.HandlerFunc(h)))
	mux.Handle("GET /diagrams/{id}", protect(http.HandlerFunc(h))) // HEAD too
	mux.Handle("/files/", protect(http.HandlerFunc(h)))            // a subtree, any method

	variants := []struct{ method, target string }{
		{"POST", "/diagrams"},
		{"POST", "/diagrams/"},
		{"POST", "/./diagrams"},
		{"POST", "/x/../diagrams"},
		{"POST", "//diagrams"},
		{"POST", "/DIAGRAMS"},
		{"post", "/diagrams"},
		{"POST", "/diagrams?x=1&x=2"},
		{"POST", "/%64iagrams"},
		{"HEAD", "/diagrams/7"},
		{"GET", "/diagrams/7/"},
		{"GET", "/diagrams/./7"},
		{"GET", "/diagrams/7?download=1"},
		{"PUT", "/files/a"},
		{"DELETE", "/files/a/../b"},
		{"OPTIONS", "/files/"},
		{"GET", "/files"},
	}
	reached, denied := 0, 0
	for round := 0; round < 3; round++ {
		for _, v := range variants {
			req := httptest.NewRequest(v.method, v.target, nil)
			req.Header.Set("X-User", "alice")
			rec := httptest.NewRecorder()
			before := calls.Load()
			mux.ServeHTTP(rec, req)
			if calls.Load() > before {
				reached++
				if rec.Code != http.StatusOK {
					t.Errorf("%s %s reached the handler but answered %d", v.method, v.target, rec.Code)
				}
			}
			if rec.Code == http.StatusOK && calls.Load() == before {
				t.Errorf("%s %s answered 200 without the handler", v.method, v.target)
			}
			if rec.Code == http.StatusTooManyRequests {
				denied++
			}
		}
	}
	if reached != 5 || calls.Load() != 5 {
		t.Errorf("handler reached %d times; want exactly the quota, 5", calls.Load())
	}
	// Seven variants match a route (the exact ones, HEAD, a query, an
	// escaped letter, the subtree): 21 tries, so the quota, not the mux,
	// stopped most of them.
	if denied < 10 {
		t.Errorf("%d variants answered 429; want the matching ones past the quota", denied)
	}
	if got := mwUsed(t, q, "alice", "diagram.upload"); got != 5 {
		t.Errorf("ledger holds %d; want 5", got)
	}
}

// TestMiddlewareChi shows the middleware on a chi router, per route and
// per group.
func TestMiddlewareChi(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	r := chi.NewRouter()
	r.With(quota.Middleware(q, "diagram.upload", mwSubject)).Post("/diagrams", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
	})
	r.Group(func(r chi.Router) {
		r.Use(quota.Middleware(q, "export.dxf", mwSubject))
		r.Get("/diagrams/{id}/export.dxf", func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "DXF of "+chi.URLParam(r, "id"))
		})
	})
	srv := httptest.NewServer(r)
	defer srv.Close()
	do := func(method, path, user string) int {
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		req.Header.Set("X-User", user)
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res.StatusCode
	}
	var got []int
	for range 6 {
		got = append(got, do("POST", "/diagrams", "alice"))
	}
	got = append(got, do("GET", "/diagrams/7/export.dxf", "alice"), do("GET", "/diagrams/7/export.dxf", "paul"))
	want := []int{201, 201, 201, 201, 201, 429, 403, 200}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("statuses (-want +got):\n%s", diff)
	}
}

// TestMiddlewareChained meters one upload on two actions, a count and
// the bytes: a denial of the inner one releases the outer hold, and the
// response carries both policies and the higher level.
func TestMiddlewareChained(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	ctx := context.Background()
	if _, err := q.Track(ctx, quota.Use{Subject: "alice", Action: "storage.bytes", Amount: 950}); err != nil {
		t.Fatal(err)
	}
	count := quota.Middleware(q, "diagram.upload", mwSubject)
	bytes := quota.Middleware(q, "storage.bytes", mwSubject, quota.WithBodyBytes())
	h := count(bytes(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusCreated)
	})))
	send := func(size int) *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", "/diagrams", strings.NewReader(strings.Repeat("x", size)))
		req.Header.Set("X-User", "alice")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	if rec := send(40); rec.Code != 201 {
		t.Fatalf("first upload: %d; want 201", rec.Code)
	}
	rec := send(40) // 990 + 40 > 1000
	if rec.Code != 429 {
		t.Fatalf("second upload: %d; want 429", rec.Code)
	}
	wantHdr := header(
		quota.HeaderRateLimitPolicy, uploadPolicy,
		quota.HeaderRateLimitPolicy, storePolicy,
		quota.HeaderRateLimit, `"diagram.upload/month";r=3;t=2039460`,
		quota.HeaderRateLimit, `"storage.bytes/total";r=10`,
		quota.HeaderQuotaLevel, "critical")
	got := http.Header{}
	for k := range wantHdr {
		got[k] = rec.Header()[k]
	}
	if diff := cmp.Diff(wantHdr, got); diff != "" {
		t.Errorf("header (-want +got):\n%s", diff)
	}
	if u, b := mwUsed(t, q, "alice", "diagram.upload"), mwUsed(t, q, "alice", "storage.bytes"); u != 1 || b != 990 {
		t.Errorf("ledger: %d uploads, %d bytes; want 1, 990", u, b)
	}
}

// TestMiddlewareRequestUntouched: the caller's request keeps its body
// and context.
func TestMiddlewareRequestUntouched(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	h := quota.Middleware(q, "storage.bytes", mwSubject, quota.WithBodyBytes())(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
	}))
	req := httptest.NewRequest("POST", "/", strings.NewReader("abc"))
	req.Header.Set("X-User", "alice")
	body, ctx, hdr, url := req.Body, req.Context(), req.Header.Clone(), *req.URL
	h.ServeHTTP(httptest.NewRecorder(), req)
	if req.Body != body || req.Context() != ctx || !cmp.Equal(hdr, req.Header) || *req.URL != url {
		t.Error("the caller's request was modified")
	}
	if _, ok := quota.FromContext(req.Context()); ok {
		t.Error("the caller's context holds a decision")
	}
}

// TestMiddlewareResponseWriter: the wrapped writer keeps flushing,
// hijacking and http.ResponseController working.
func TestMiddlewareResponseWriter(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	mux := http.NewServeMux()
	protect := quota.Middleware(q, "ai.analysis", mwSubject)
	mux.Handle("/flush", protect(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "part 1\n")
		w.(http.Flusher).Flush()
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("ResponseController.Flush: %v", err)
		}
		if err := http.NewResponseController(w).SetWriteDeadline(time.Now().Add(time.Minute)); err != nil {
			t.Errorf("ResponseController.SetWriteDeadline: %v", err)
		}
	})))
	mux.Handle("/hijack", protect(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Errorf("Hijack: %v", err)
			return
		}
		defer conn.Close()
		buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nraw")
		buf.Flush()
	})))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	req, _ := http.NewRequest("GET", srv.URL+"/flush", nil)
	req.Header.Set("X-User", "alice")
	res, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || string(b) != "part 1\n" || res.Header.Get(quota.HeaderQuotaLevel) != "ok" {
		t.Errorf("flush: %d %q %v", res.StatusCode, b, res.Header)
	}

	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "GET /hijack HTTP/1.1\r\nHost: x\r\nX-User: alice\r\n\r\n")
	res, err = http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(res.Body)
	if string(b) != "raw" {
		t.Errorf("hijacked response %q; want raw", b)
	}
	// Both handlers succeeded: two analyses are recorded. The hijacking
	// handler may still be closing: wait for its commit.
	deadline := time.Now().Add(5 * time.Second)
	for mwUsedQuiet(q, "alice", "ai.analysis") != 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := mwUsed(t, q, "alice", "ai.analysis"); got != 2 {
		t.Errorf("ledger holds %d; want 2", got)
	}
}

func mwUsedQuiet(q *quota.Quota, subject, action string) int64 {
	recs, _ := allRecords(context.Background(), q, subject, action)
	var sum int64
	for _, r := range recs {
		sum += r.Amount
	}
	return sum
}

// TestMiddlewareConfigPanics: a misconfiguration fails at start, not on
// a request.
func TestMiddlewareConfigPanics(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	for name, f := range map[string]func(){
		"nil quota":      func() { quota.Middleware(nil, "diagram.upload", mwSubject) },
		"nil subject":    func() { quota.Middleware(q, "diagram.upload", nil) },
		"empty action":   func() { quota.Middleware(q, "", mwSubject) },
		"unknown action": func() { quota.Middleware(q, "nope", mwSubject) },
		"amount 0":       func() { quota.Middleware(q, "diagram.upload", mwSubject, quota.WithAmount(0)) },
		"bad feature":    func() { quota.Middleware(q, "diagram.upload", mwSubject, quota.WithFeatures("")) },
		"negative max":   func() { quota.Middleware(q, "diagram.upload", mwSubject, quota.WithMaxBodyBytes(-1)) },
		"negative settle": func() {
			quota.Middleware(q, "diagram.upload", mwSubject, quota.WithSettleTimeout(-time.Second))
		},
		"negative Retry-After bound": func() {
			quota.Middleware(q, "diagram.upload", mwSubject, quota.WithMaxRetryAfter(-time.Second))
		},
		"empty key header": func() { quota.Middleware(q, "diagram.upload", mwSubject, quota.WithIdempotencyKeyHeader("")) },
		"nil handler":      func() { quota.Middleware(q, "diagram.upload", mwSubject)(nil) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
			}()
			f()
		})
	}
}

// TestMiddlewareBadAmount: a computed amount that fails or is out of
// range answers 400 and holds nothing.
func TestMiddlewareBadAmount(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	h := quota.Middleware(q, "ai.analysis", mwSubject, quota.WithAmountFunc(func(r *http.Request) (int64, error) {
		return strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
	}))(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { t.Error("handler called") }))
	for _, target := range []string{"/?n=x", "/?n=0", "/?n=-2", "/?n=99999999999999999"} {
		req := httptest.NewRequest("POST", target, nil)
		req.Header.Set("X-User", "alice")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 400 {
			t.Errorf("%s: status %d; want 400", target, rec.Code)
		}
	}
	if got := mwUsed(t, q, "alice", "ai.analysis"); got != 0 {
		t.Errorf("ledger holds %d; want 0", got)
	}
}

// TestMiddlewareReservationExpired: a handler that outlasts the
// reservation's TTL loses its hold; the failed commit goes to the hook.
func TestMiddlewareReservationExpired(t *testing.T) {
	var now atomic.Int64
	now.Store(mwNow.UnixNano())
	q, err := quota.New(quota.NewMemoryStore(), quota.Config{
		Plans:          mwPlans(),
		Now:            func() time.Time { return time.Unix(0, now.Load()).UTC() },
		ReservationTTL: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Subscribe(context.Background(), quota.Subscription{Subject: "alice", Plan: "FREE", Anchor: mwAnchor}); err != nil {
		t.Fatal(err)
	}
	var hooked hookLog
	h := quota.Middleware(q, "diagram.upload", mwSubject, quota.WithErrorHook(hooked.hook))(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now.Add(int64(2 * time.Minute))
		w.WriteHeader(http.StatusCreated)
	}))
	req := httptest.NewRequest("POST", "/", nil)
	req.Header.Set("X-User", "alice")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusCreated {
		t.Errorf("status = %d; want 201", rec.Code)
	}
	if hooked.len() != 1 || !errors.Is(hooked.errs[0], quota.ErrReservationExpired) {
		t.Errorf("hook got %v; want one ErrReservationExpired", hooked.errs)
	}
	if got := mwUsed(t, q, "alice", "diagram.upload"); got != 0 {
		t.Errorf("ledger holds %d; want 0", got)
	}
}

// mwServe sends a POST of body (nil for none) as user through h.
func mwServe(h http.Handler, target, user string, body io.Reader) *httptest.ResponseRecorder {
	req := httptest.NewRequest("POST", target, body)
	req.Header.Set("X-User", user)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// mwProblem decodes the problem of rec.
func mwProblem(t *testing.T, rec *httptest.ResponseRecorder) quota.Problem {
	t.Helper()
	var p quota.Problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatalf("body %q: %v", rec.Body, err)
	}
	return p
}

// TestMiddlewareFeatureGateFirst: a request that reserves nothing (an
// empty body, an invalid amount, a declared body over the bound) still
// meets the feature gate first, as the documented order says.
func TestMiddlewareFeatureGateFirst(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	gate := quota.WithFeatures("api_access")
	badAmount := quota.WithAmountFunc(func(*http.Request) (int64, error) { return 0, errors.New("no amount") })
	for _, tt := range []struct {
		name   string
		action string
		opts   []quota.MiddlewareOption
		body   string
		paul   int // the status of paul, whose plan has the feature
	}{
		{name: "empty body", action: "storage.bytes", opts: []quota.MiddlewareOption{gate, quota.WithBodyBytes()}, paul: http.StatusNoContent},
		{name: "invalid amount", action: "ai.analysis", opts: []quota.MiddlewareOption{gate, badAmount}, paul: http.StatusBadRequest},
		{name: "declared body over the bound", action: "log.bytes", opts: []quota.MiddlewareOption{gate, quota.WithBodyBytes(), quota.WithMaxBodyBytes(3)}, body: "abcd", paul: http.StatusRequestEntityTooLarge},
	} {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			h := quota.Middleware(q, tt.action, mwSubject, tt.opts...)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls++
				if _, ok := quota.FromContext(r.Context()); ok {
					t.Error("FromContext ok in an unmetered request")
				}
				w.WriteHeader(http.StatusNoContent)
			}))
			body := func() io.Reader {
				if tt.body == "" {
					return nil
				}
				return strings.NewReader(tt.body)
			}
			rec := mwServe(h, "/", "alice", body())
			want := quota.Problem{Type: quota.ProblemTypeNotInPlan, Title: "Feature not in plan", Status: 403, Detail: `Your plan does not include the feature "api_access".`, Feature: "api_access"}
			if diff := cmp.Diff(want, mwProblem(t, rec)); rec.Code != 403 || diff != "" {
				t.Errorf("alice: %d (-want +got):\n%s", rec.Code, diff)
			}
			if rec := mwServe(h, "/", "paul", body()); rec.Code != tt.paul {
				t.Errorf("paul: %d %s; want %d", rec.Code, rec.Body, tt.paul)
			}
			if wantCalls := map[bool]int{true: 1}[tt.paul == http.StatusNoContent]; calls != wantCalls {
				t.Errorf("handler called %d times; want %d", calls, wantCalls)
			}
			if got := mwUsed(t, q, "paul", tt.action); got != 0 {
				t.Errorf("ledger holds %d; want 0", got)
			}
		})
	}
}

// TestMiddlewareUnknownLength: a body of unknown length is refused for a
// full limit as a use of 1 would be, refused for lack of room for its
// cap otherwise, and answered 411 when nothing caps it, leaving no hold.
func TestMiddlewareUnknownLength(t *testing.T) {
	for _, tt := range []struct {
		name       string
		action     string
		opts       []quota.MiddlewareOption
		pre        int64
		wantCode   int
		wantDetail string
		wantRetry  string
	}{
		{
			name: "no cap, limit full: 429 for the full limit", action: "log.bytes", pre: 10000,
			wantCode:   429,
			wantDetail: "The FREE plan allows 10000 log.bytes per day; 10000 are used. The limit resets at 2026-01-09T00:00:00Z.",
		},
		{
			name: "no cap, limit full, reset within WithMaxRetryAfter: Retry-After", action: "log.bytes", pre: 10000,
			opts:       []quota.MiddlewareOption{quota.WithMaxRetryAfter(24 * time.Hour)},
			wantCode:   429,
			wantDetail: "The FREE plan allows 10000 log.bytes per day; 10000 are used. The limit resets at 2026-01-09T00:00:00Z.",
			wantRetry:  "52260",
		},
		{name: "no cap, room left: 411", action: "log.bytes", pre: 9999, wantCode: 411},
		{name: "no cap, unlimited: 411, the hold cancelled", action: "procedure.view", wantCode: 411},
		{name: "limit of 0: 403", action: "export.dxf", wantCode: 403, wantDetail: "The FREE plan does not include export.dxf."},
		{
			name: "cap, allocation full: 429 as for 1", action: "storage.bytes", pre: 1000,
			wantCode:   429,
			wantDetail: "The FREE plan allows 1000 storage.bytes in total; 1000 are used and this request needs 1.",
		},
		{
			name: "cap, less than the cap left: 429 for the cap", action: "storage.bytes", pre: 950,
			wantCode:   429,
			wantDetail: "The FREE plan allows 1000 storage.bytes in total; 950 are used and this request needs 100.",
		},
		{
			name: "WithMaxBodyBytes, less than it left: 429 for it", action: "log.bytes", pre: 9990,
			opts:       []quota.MiddlewareOption{quota.WithMaxBodyBytes(20)},
			wantCode:   429,
			wantDetail: "The FREE plan allows 10000 log.bytes per day; 9990 are used. The limit resets at 2026-01-09T00:00:00Z.",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := mwQuota(t, quota.NewMemoryStore())
			if tt.pre > 0 {
				if _, err := q.Track(context.Background(), quota.Use{Subject: "alice", Action: tt.action, Amount: tt.pre}); err != nil {
					t.Fatal(err)
				}
			}
			var hooked hookLog
			opts := append([]quota.MiddlewareOption{quota.WithBodyBytes(), quota.WithErrorHook(hooked.hook)}, tt.opts...)
			h := quota.Middleware(q, tt.action, mwSubject, opts...)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				t.Error("handler called")
			}))
			rec := mwServe(h, "/", "alice", io.MultiReader(strings.NewReader("abc")))
			if rec.Code != tt.wantCode {
				t.Fatalf("status = %d %s; want %d", rec.Code, rec.Body, tt.wantCode)
			}
			if p := mwProblem(t, rec); tt.wantDetail != "" && p.Detail != tt.wantDetail {
				t.Errorf("detail = %q; want %q", p.Detail, tt.wantDetail)
			}
			if got := rec.Header().Get(quota.HeaderRetryAfter); got != tt.wantRetry {
				t.Errorf("Retry-After = %q; want %q", got, tt.wantRetry)
			}
			if rec.Code == 411 && rec.Header().Get(quota.HeaderQuotaLevel) != "" {
				t.Errorf("411 with quota headers: %v", rec.Header())
			}
			if got := mwUsed(t, q, "alice", tt.action); got != tt.pre {
				t.Errorf("ledger holds %d; want %d", got, tt.pre)
			}
			if hooked.len() != 0 {
				t.Errorf("error hook got %v", hooked.errs)
			}
		})
	}
}
