package quota_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quotakit/quota"
)

// countingStore is a MemoryStore that counts the calls of the Store
// contract, by method name.
type countingStore struct {
	*quota.MemoryStore
	mu    sync.Mutex
	calls map[string]int
}

func newCountingStore() *countingStore {
	return &countingStore{MemoryStore: quota.NewMemoryStore(), calls: map[string]int{}}
}

func (s *countingStore) count(method string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[method]++
}

// take returns the calls counted so far and starts counting afresh.
func (s *countingStore) take() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	got := s.calls
	s.calls = map[string]int{}
	return got
}

func (s *countingStore) Apply(ctx context.Context, op *quota.Op) (quota.ApplyResult, error) {
	s.count("Apply")
	return s.MemoryStore.Apply(ctx, op)
}

func (s *countingStore) Commit(ctx context.Context, id string, amount int64, now time.Time) (quota.Record, error) {
	s.count("Commit")
	return s.MemoryStore.Commit(ctx, id, amount, now)
}

func (s *countingStore) Cancel(ctx context.Context, id string, now time.Time) error {
	s.count("Cancel")
	return s.MemoryStore.Cancel(ctx, id, now)
}

func (s *countingStore) Counters(ctx context.Context, keys []quota.CounterKey, now time.Time) ([]quota.Counter, error) {
	s.count("Counters")
	return s.MemoryStore.Counters(ctx, keys, now)
}

func (s *countingStore) PutSubscription(ctx context.Context, sub quota.Subscription) error {
	s.count("PutSubscription")
	return s.MemoryStore.PutSubscription(ctx, sub)
}

func (s *countingStore) GetSubscription(ctx context.Context, subject string) (quota.Subscription, error) {
	s.count("GetSubscription")
	return s.MemoryStore.GetSubscription(ctx, subject)
}

func (s *countingStore) Records(ctx context.Context, q quota.RecordQuery) ([]quota.Record, error) {
	s.count("Records")
	return s.MemoryStore.Records(ctx, q)
}

// callsQuota returns a Quota over a counting store, at mwNow, whose
// subject "team" is on TEAM: two features, a capped allocation, an
// uncapped one that never fills and a monthly count.
func callsQuota(t *testing.T) (*quota.Quota, *countingStore) {
	t.Helper()
	store := newCountingStore()
	q, err := quota.New(store, quota.Config{
		Plans: []quota.Plan{{
			Name:     "TEAM",
			Features: []string{"api_access", "team_collaboration"},
			Limits: map[string][]quota.Limit{
				"storage.bytes":  {quota.Total(1 << 30).WithMaxPerUse(1 << 20)},
				"log.bytes":      {quota.Total(quota.Unlimited)},
				"diagram.upload": {quota.PerMonth(100)},
			},
		}, {
			Name:   "SOLO",
			Limits: map[string][]quota.Limit{"storage.bytes": {quota.Total(10)}},
		}},
		Now: func() time.Time { return mwNow },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	if err := q.Subscribe(context.Background(), quota.Subscription{Subject: "team", Plan: "TEAM", Anchor: mwAnchor}); err != nil {
		t.Fatal(err)
	}
	store.take()
	return q, store
}

// TestHTTPStoreCalls counts the store calls of one request: the
// middleware and the usage handler read the subject's subscription once,
// the feature gate and the per-use cap of a body of unknown length
// included.
func TestHTTPStoreCalls(t *testing.T) {
	features := quota.WithFeatures("api_access", "team_collaboration")
	for _, tt := range []struct {
		name      string
		handler   func(q *quota.Quota) http.Handler
		method    string
		target    string
		body      io.Reader
		wantCode  int
		wantCalls map[string]int
	}{
		{
			name: "two features, chunked body",
			handler: func(q *quota.Quota) http.Handler {
				return quota.Middleware(q, "storage.bytes", mwSubject, features, quota.WithBodyBytes())(readAll(http.StatusCreated))
			},
			method: "POST", target: "/files", body: io.MultiReader(strings.NewReader("0123456789")),
			wantCode:  http.StatusCreated,
			wantCalls: map[string]int{"GetSubscription": 1, "Apply": 1, "Commit": 1},
		},
		{
			name: "two features, declared body",
			handler: func(q *quota.Quota) http.Handler {
				return quota.Middleware(q, "storage.bytes", mwSubject, features, quota.WithBodyBytes())(readAll(http.StatusCreated))
			},
			method: "POST", target: "/files", body: strings.NewReader("0123456789"),
			wantCode:  http.StatusCreated,
			wantCalls: map[string]int{"GetSubscription": 1, "Apply": 1, "Commit": 1},
		},
		{
			name: "chunked body that nothing caps: 411, the hold cancelled",
			handler: func(q *quota.Quota) http.Handler {
				return quota.Middleware(q, "log.bytes", mwSubject, features, quota.WithBodyBytes())(readAll(http.StatusCreated))
			},
			method: "POST", target: "/logs", body: io.MultiReader(strings.NewReader("0123456789")),
			wantCode:  http.StatusLengthRequired,
			wantCalls: map[string]int{"GetSubscription": 1, "Apply": 1, "Cancel": 1},
		},
		{
			name: "a count, features",
			handler: func(q *quota.Quota) http.Handler {
				return quota.Middleware(q, "diagram.upload", mwSubject, features)(readAll(http.StatusOK))
			},
			method: "POST", target: "/diagrams",
			wantCode:  http.StatusOK,
			wantCalls: map[string]int{"GetSubscription": 1, "Apply": 1, "Commit": 1},
		},
		{
			name: "a feature missing",
			handler: func(q *quota.Quota) http.Handler {
				return quota.Middleware(q, "diagram.upload", mwSubject, quota.WithFeatures("api_access", "white_labeling"))(readAll(http.StatusOK))
			},
			method: "POST", target: "/diagrams",
			wantCode:  http.StatusForbidden,
			wantCalls: map[string]int{"GetSubscription": 1},
		},
		{
			name: "empty body: the feature gate alone",
			handler: func(q *quota.Quota) http.Handler {
				return quota.Middleware(q, "storage.bytes", mwSubject, features, quota.WithBodyBytes())(readAll(http.StatusNoContent))
			},
			method: "POST", target: "/files",
			wantCode:  http.StatusNoContent,
			wantCalls: map[string]int{"GetSubscription": 1, "Counters": 1},
		},
		{
			name:    "usage with a daily series",
			handler: func(q *quota.Quota) http.Handler { return quota.UsageHandler(q, mwSubject) },
			method:  "GET", target: "/me/usage?days=7",
			wantCode:  http.StatusOK,
			wantCalls: map[string]int{"GetSubscription": 1, "Counters": 1},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q, store := callsQuota(t)
			h := tt.handler(q)
			req := httptest.NewRequest(tt.method, tt.target, tt.body)
			req.Header.Set("X-User", "team")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.wantCode {
				t.Fatalf("status = %d %s; want %d", rec.Code, rec.Body, tt.wantCode)
			}
			got := store.take()
			// The series' sums come from the store's Summer, or from
			// Records where it has none; neither reads a subscription.
			delete(got, "Records")
			if diff := cmp.Diff(tt.wantCalls, got); diff != "" {
				t.Errorf("store calls (-want +got):\n%s", diff)
			}
		})
	}
}

// readAll is a handler that reads the whole body and answers status.
func readAll(status int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			return
		}
		w.WriteHeader(status)
	})
}

// TestHTTPOptionsShared: one HTTPOption value configures both
// constructors, and an option of Middleware alone is not a
// UsageHandlerOption.
func TestHTTPOptionsShared(t *testing.T) {
	store := &mwFailingStore{MemoryStore: quota.NewMemoryStore()}
	q := mwQuota(t, store)
	store.fail.Store(true)
	var hooked hookLog
	shared := []quota.HTTPOption{
		quota.WithErrorHook(hooked.hook),
		quota.WithUnavailableRetryAfter(90 * time.Second),
		quota.WithUnauthorized(http.RedirectHandler("/login", http.StatusSeeOther)),
	}
	var mwOpts []quota.MiddlewareOption
	var usageOpts []quota.UsageHandlerOption
	for _, o := range shared {
		mwOpts = append(mwOpts, o)
		usageOpts = append(usageOpts, o)
	}
	handlers := map[string]http.Handler{
		"Middleware":   quota.Middleware(q, "diagram.upload", mwSubject, mwOpts...)(http.NotFoundHandler()),
		"UsageHandler": quota.UsageHandler(q, mwSubject, usageOpts...),
	}
	for name, h := range handlers {
		for _, user := range []string{"", "alice"} {
			req := httptest.NewRequest("GET", "/", nil)
			if user != "" {
				req.Header.Set("X-User", user)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			switch {
			case user == "" && (rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/login"):
				t.Errorf("%s, no user: %d %v; want WithUnauthorized's redirect", name, rec.Code, rec.Header())
			case user != "" && (rec.Code != http.StatusServiceUnavailable || rec.Header().Get(quota.HeaderRetryAfter) != "90"):
				t.Errorf("%s, store down: %d, Retry-After %q; want 503, 90", name, rec.Code, rec.Header().Get(quota.HeaderRetryAfter))
			}
		}
	}
	if n := hooked.len(); n != 2 {
		t.Errorf("error hook called %d times; want 2, once per handler", n)
	}
	for _, o := range []quota.MiddlewareOption{
		quota.WithAmount(1), quota.WithAmountFunc(nil), quota.WithBodyBytes(), quota.WithMaxBodyBytes(1),
		quota.WithFeatures("x"), quota.WithSuccess(nil), quota.WithMessage(nil), quota.WithProblemType("x"),
		quota.WithLegacyHeaders(), quota.WithFailOpen(), quota.WithSettleTimeout(time.Second),
		quota.WithMaxRetryAfter(time.Hour), quota.WithIdempotencyKeyHeader("Idempotency-Key"), quota.WithUse(nil),
	} {
		if _, ok := o.(quota.UsageHandlerOption); ok {
			t.Errorf("%T is a UsageHandlerOption; want Middleware's alone", o)
		}
	}
	for name, f := range map[string]func(){
		"Middleware": func() {
			quota.Middleware(q, "diagram.upload", mwSubject, quota.WithUnavailableRetryAfter(-time.Second))
		},
		"UsageHandler": func() { quota.UsageHandler(q, mwSubject, quota.WithUnavailableRetryAfter(-time.Second)) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic on a negative Retry-After", name)
				}
			}()
			f()
		}()
	}
}
