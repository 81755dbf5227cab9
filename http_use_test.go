package quota_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/quotakit/quota"
)

// useRecords returns the records of subject's action, failing t.
func useRecords(t *testing.T, q *quota.Quota, subject, action string) []quota.Record {
	t.Helper()
	recs, err := allRecords(context.Background(), q, subject, action)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

// keyed sends a POST as user through h, with the Idempotency-Key values
// keys.
func keyed(h http.Handler, target, user string, keys ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest("POST", target, nil)
	req.Header.Set("X-User", user)
	for _, k := range keys {
		req.Header.Add("Idempotency-Key", k)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// answer201 answers 201.
var answer201 = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusCreated) })

// queryAmount charges ?n=N, 1 by default.
var queryAmount = quota.WithAmountFunc(func(r *http.Request) (int64, error) {
	if n := r.URL.Query().Get("n"); n != "" {
		return strconv.ParseInt(n, 10, 64)
	}
	return 1, nil
})

// TestMiddlewareKeyHeaderOff: without WithIdempotencyKeyHeader, a
// client's Idempotency-Key is ignored.
func TestMiddlewareKeyHeaderOff(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	h := quota.Middleware(q, "ai.analysis", mwSubject)(answer201)
	for range 2 {
		if rec := keyed(h, "/", "alice", "k1"); rec.Code != http.StatusCreated {
			t.Fatalf("status %d %s", rec.Code, rec.Body)
		}
	}
	recs := useRecords(t, q, "alice", "ai.analysis")
	if len(recs) != 2 || recs[0].Key != "" || recs[1].Key != "" {
		t.Errorf("records %+v; want two, without a key", recs)
	}
}

// TestMiddlewareKeyHeaderRetry: a retry with the key is charged once and
// seen as a replay; the key with another amount is a 422; another
// subject's key is its own.
func TestMiddlewareKeyHeaderRetry(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	var hooked hookLog
	var replays []bool
	h := quota.Middleware(q, "ai.analysis", mwSubject, queryAmount,
		quota.WithIdempotencyKeyHeader("Idempotency-Key"), quota.WithErrorHook(hooked.hook),
	)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, _ := quota.FromContext(r.Context())
		replays = append(replays, d.Replayed)
		w.WriteHeader(http.StatusCreated)
	}))
	for _, key := range []string{"k1", "k1", "k1", ""} {
		var keys []string
		if key != "" {
			keys = []string{key}
		}
		if rec := keyed(h, "/?n=2", "alice", keys...); rec.Code != http.StatusCreated {
			t.Fatalf("key %q: status %d %s", key, rec.Code, rec.Body)
		}
	}
	if diff := cmp.Diff([]bool{false, true, true, false}, replays); diff != "" {
		t.Errorf("Decision.Replayed (-want +got):\n%s", diff)
	}
	recs := useRecords(t, q, "alice", "ai.analysis")
	if len(recs) != 2 || recs[0].Key != "ai.analysis:k1" || recs[0].Amount != 2 || recs[1].Key != "" {
		t.Errorf("records %+v; want the keyed use once, then the unkeyed one", recs)
	}
	if hooked.len() != 0 {
		t.Errorf("error hook got %v; want nothing: a replay's commit finds its hold settled", hooked.errs)
	}
	// The key with another amount is another request: 422.
	rec := keyed(h, "/?n=3", "alice", "k1")
	if p := mwProblem(t, rec); rec.Code != http.StatusUnprocessableEntity || p.Status != 422 || rec.Header().Get(quota.HeaderQuotaLevel) != "" {
		t.Errorf("key reused: %d %s %v; want a 422 problem without quota headers", rec.Code, rec.Body, rec.Header())
	}
	// Another subject's key is its own.
	if rec := keyed(h, "/?n=3", "paul", "k1"); rec.Code != http.StatusCreated {
		t.Errorf("paul with alice's key: %d; want 201", rec.Code)
	}
	if got := mwUsed(t, q, "alice", "ai.analysis"); got != 4 {
		t.Errorf("ledger holds %d; want 4", got)
	}
}

// TestMiddlewareKeyHeaderMalformed: a key sent twice, too long or with a
// control character answers 400 before any store call.
func TestMiddlewareKeyHeaderMalformed(t *testing.T) {
	q, store := callsQuota(t)
	h := quota.Middleware(q, "diagram.upload", mwSubject, quota.WithIdempotencyKeyHeader("Idempotency-Key"))(answer201)
	want := quota.Problem{Type: "about:blank", Title: "Bad Request", Status: 400, Detail: "The idempotency key, resource or metadata of this request is invalid."}
	for name, keys := range map[string][]string{
		"twice":    {"a", "b"},
		"too long": {strings.Repeat("k", quota.MaxNameLen)},
		"control":  {"a\tb"},
	} {
		rec := keyed(h, "/", "team", keys...)
		if diff := cmp.Diff(want, mwProblem(t, rec)); rec.Code != 400 || diff != "" {
			t.Errorf("%s: %d (-want +got):\n%s", name, rec.Code, diff)
		}
	}
	if calls := store.take(); len(calls) != 0 {
		t.Errorf("store calls %v; want none", calls)
	}
}

// TestMiddlewareKeyHeaderNested: nested middlewares keep a key each, so
// one header keys both uses without a conflict.
func TestMiddlewareKeyHeaderNested(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	key := quota.WithIdempotencyKeyHeader("Idempotency-Key")
	h := quota.Middleware(q, "diagram.upload", mwSubject, key)(
		quota.Middleware(q, "storage.bytes", mwSubject, key, quota.WithBodyBytes())(readAll(http.StatusCreated)))
	for range 2 {
		req := httptest.NewRequest("POST", "/", strings.NewReader("0123456789"))
		req.Header.Set("X-User", "alice")
		req.Header.Set("Idempotency-Key", "upload-7")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusCreated {
			t.Fatalf("status %d %s", rec.Code, rec.Body)
		}
	}
	if u, b := mwUsed(t, q, "alice", "diagram.upload"), mwUsed(t, q, "alice", "storage.bytes"); u != 1 || b != 10 {
		t.Errorf("ledger: %d uploads, %d bytes; want 1, 10", u, b)
	}
}

// TestMiddlewareKeyHeaderInFlight: a retry while the first request runs
// is a replay; its failure (the handler's 409, as the draft asks) does
// not cancel the first request's hold, which the first commits.
func TestMiddlewareKeyHeaderInFlight(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	var hooked hookLog
	inFirst, release := make(chan struct{}), make(chan struct{})
	var mu sync.Mutex
	running := map[string]bool{}
	h := quota.Middleware(q, "ai.analysis", mwSubject,
		quota.WithIdempotencyKeyHeader("Idempotency-Key"), quota.WithErrorHook(hooked.hook),
	)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("Idempotency-Key")
		mu.Lock()
		busy := running[key]
		running[key] = true
		mu.Unlock()
		if d, _ := quota.FromContext(r.Context()); d.Replayed && busy {
			w.WriteHeader(http.StatusConflict)
			return
		}
		close(inFirst)
		<-release
		w.WriteHeader(http.StatusCreated)
	}))
	first := make(chan int)
	go func() { first <- keyed(h, "/", "alice", "k1").Code }()
	<-inFirst
	if rec := keyed(h, "/", "alice", "k1"); rec.Code != http.StatusConflict {
		t.Errorf("retry: %d; want the handler's 409", rec.Code)
	}
	close(release)
	if code := <-first; code != http.StatusCreated {
		t.Errorf("first: %d; want 201", code)
	}
	if got := mwUsed(t, q, "alice", "ai.analysis"); got != 1 {
		t.Errorf("ledger holds %d; want 1: the retry's 409 does not cancel the first request's hold", got)
	}
	if hooked.len() != 0 {
		t.Errorf("error hook got %v", hooked.errs)
	}
}

// TestMiddlewareKeyHeaderAfterFailure: a request whose hold was cancelled
// (the handler failed) used nothing, so a retry with its key is a new
// use, charged once when it succeeds, and replayed after that. (The
// store kept such a key, and the retry replayed a hold that was gone: it
// was not charged.)
func TestMiddlewareKeyHeaderAfterFailure(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	var hooked hookLog
	status := http.StatusInternalServerError
	var replays []bool
	h := quota.Middleware(q, "ai.analysis", mwSubject,
		quota.WithIdempotencyKeyHeader("Idempotency-Key"), quota.WithErrorHook(hooked.hook),
	)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, _ := quota.FromContext(r.Context())
		replays = append(replays, d.Replayed)
		w.WriteHeader(status)
	}))
	keyed(h, "/", "alice", "k1")
	status = http.StatusCreated
	keyed(h, "/", "alice", "k1")
	if got := mwUsed(t, q, "alice", "ai.analysis"); got != 1 {
		t.Errorf("ledger holds %d after a failed request and its retry; want 1", got)
	}
	keyed(h, "/", "alice", "k1")
	if got := mwUsed(t, q, "alice", "ai.analysis"); got != 1 {
		t.Errorf("ledger holds %d after a replay of the retry; want 1", got)
	}
	if diff := cmp.Diff([]bool{false, false, true}, replays); diff != "" {
		t.Errorf("Decision.Replayed of the three requests (-want +got):\n%s", diff)
	}
	if hooked.len() != 0 {
		t.Errorf("error hook got %v", hooked.errs)
	}
}

// describeUse is the WithUse of the tests: the diagram and the model
// from the query, a key from X-Request-Key; it tries to change what is
// the middleware's.
var describeUse = quota.WithUse(func(r *http.Request, u *quota.Use) error {
	id := r.URL.Query().Get("diagram")
	if id == "" {
		return errors.New("no diagram: postgres://app:hunter2@db")
	}
	u.ResourceID = id
	u.Metadata = map[string]any{"model": r.URL.Query().Get("model")}
	if k := r.Header.Get("X-Request-Key"); k != "" {
		u.Key = "analysis-" + k
	}
	u.Subject, u.Amount, u.Action = "mallory", 99, "diagram.upload" // ignored
	return nil
})

// sendUse sends a POST to target as team through h, with X-Request-Key
// key unless it is empty.
func sendUse(h http.Handler, target, key string) *httptest.ResponseRecorder {
	req := httptest.NewRequest("POST", target, nil)
	req.Header.Set("X-User", "team")
	if key != "" {
		req.Header.Set("X-Request-Key", key)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestMiddlewareWithUse: the resource id, metadata and key that WithUse
// sets reach the record (a retry with the key counts once); what it
// sets in the middleware's fields is ignored.
func TestMiddlewareWithUse(t *testing.T) {
	q, _ := callsQuota(t)
	h := quota.Middleware(q, "diagram.upload", mwSubject, describeUse)(readAll(http.StatusCreated))
	for range 2 {
		if rec := sendUse(h, "/?diagram=d-7&model=fast", "r1"); rec.Code != http.StatusCreated {
			t.Fatalf("status %d %s", rec.Code, rec.Body)
		}
	}
	recs := useRecords(t, q, "team", "diagram.upload")
	want := []quota.Record{{Subject: "team", Action: "diagram.upload", Amount: 1, ResourceID: "d-7", Metadata: json.RawMessage(`{"model":"fast"}`), Key: "analysis-r1"}}
	if diff := cmp.Diff(want, recs, cmp.FilterPath(func(p cmp.Path) bool {
		s := p.String()
		return s == "ID" || s == "Time"
	}, cmp.Ignore())); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
}

// TestMiddlewareWithUseInvalid: a WithUse that fails, or sets what the
// engine refuses, answers 400 without the error's text and before any
// store call.
func TestMiddlewareWithUseInvalid(t *testing.T) {
	q, store := callsQuota(t)
	h := quota.Middleware(q, "diagram.upload", mwSubject, describeUse)(readAll(http.StatusCreated))
	bad := quota.Problem{Type: "about:blank", Title: "Bad Request", Status: 400, Detail: "The idempotency key, resource or metadata of this request is invalid."}
	for _, tt := range []struct{ name, target, key string }{
		{"WithUse fails", "/", ""},
		{"invalid resource id", "/?diagram=d%007", ""},
		{"invalid metadata", "/?diagram=d-8&model=%ff", ""},
		{"key over MaxNameLen", "/?diagram=d-9", strings.Repeat("k", quota.MaxNameLen)},
		{"key with a control character", "/?diagram=d-10", "a\x01b"},
	} {
		rec := sendUse(h, tt.target, tt.key)
		if diff := cmp.Diff(bad, mwProblem(t, rec)); rec.Code != 400 || diff != "" {
			t.Errorf("%s: %d (-want +got):\n%s", tt.name, rec.Code, diff)
		}
		if strings.Contains(rec.Body.String(), "hunter2") {
			t.Errorf("%s: the body shows the error's text: %s", tt.name, rec.Body)
		}
		if calls := store.take(); len(calls) != 0 {
			t.Errorf("%s: store calls %v; want none", tt.name, calls)
		}
	}
}

// TestMiddlewareWithUseOrder: the feature gate comes before WithUse's
// 400; WithUse sees the header's key and may replace it; an empty body
// under WithBodyBytes is unmetered, and WithUse does not run for it.
func TestMiddlewareWithUseOrder(t *testing.T) {
	q, _ := callsQuota(t)
	gated := quota.Middleware(q, "diagram.upload", mwSubject, describeUse, quota.WithFeatures("white_labeling"))(readAll(http.StatusCreated))
	if rec := sendUse(gated, "/", ""); rec.Code != http.StatusForbidden {
		t.Errorf("WithUse fails, feature missing: %d; want 403", rec.Code)
	}
	var seen string
	h := quota.Middleware(q, "diagram.upload", mwSubject, quota.WithIdempotencyKeyHeader("Idempotency-Key"),
		quota.WithUse(func(r *http.Request, u *quota.Use) error { seen = u.Key; u.Key = "mine"; return nil }),
	)(readAll(http.StatusCreated))
	if rec := keyed(h, "/", "team", "k9"); rec.Code != http.StatusCreated || seen != "diagram.upload:k9" {
		t.Errorf("status %d, WithUse saw key %q; want 201, %q", rec.Code, seen, "diagram.upload:k9")
	}
	if recs := useRecords(t, q, "team", "diagram.upload"); len(recs) != 1 || recs[0].Key != "mine" {
		t.Errorf("records %+v; want one, with WithUse's key", recs)
	}
	calls := 0
	h = quota.Middleware(q, "storage.bytes", mwSubject, quota.WithBodyBytes(),
		quota.WithUse(func(*http.Request, *quota.Use) error { calls++; return errors.New("no") }),
	)(readAll(http.StatusNoContent))
	if rec := mwServe(h, "/", "team", nil); rec.Code != http.StatusNoContent || calls != 0 {
		t.Errorf("empty body: %d, WithUse called %d times; want 204, 0", rec.Code, calls)
	}
}
