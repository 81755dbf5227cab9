package quota_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/quotakit/quota"
)

// TestMeter drives the framework-neutral core as an adapter does: Begin,
// the handler, then Settle with the outcome the framework reports.
func TestMeter(t *testing.T) {
	for _, tt := range []struct {
		name     string
		action   string
		opts     []quota.MiddlewareOption
		body     string
		read     bool // the handler reads the body
		outcome  quota.HandlerOutcome
		wantUsed int64
		wantCode int // of the recorder: what Settle wrote, 200 if nothing
		wantBody bool
	}{
		{name: "written 201: committed", action: "diagram.upload", outcome: quota.HandlerOutcome{Status: 201, Written: true}, wantUsed: 1, wantCode: 200},
		{name: "nothing written: 200, committed", action: "diagram.upload", wantUsed: 1, wantCode: 200},
		{name: "pending 404 (gin's c.Status): cancelled", action: "diagram.upload", outcome: quota.HandlerOutcome{Status: 404}, wantCode: 200},
		{name: "written 400: cancelled", action: "diagram.upload", outcome: quota.HandlerOutcome{Status: 400, Written: true}, wantCode: 200},
		{name: "failed (echo's error): cancelled", action: "diagram.upload", outcome: quota.HandlerOutcome{Failed: true}, wantCode: 200},
		{name: "failed after a 201 was written: cancelled", action: "diagram.upload", outcome: quota.HandlerOutcome{Status: 201, Written: true, Failed: true}, wantCode: 200},
		{name: "panicked: cancelled, nothing written", action: "diagram.upload", outcome: quota.HandlerOutcome{Status: 201, Panicked: true}, wantCode: 200},
		{
			name: "WithSuccess rejects 202: cancelled", action: "diagram.upload",
			opts:    []quota.MiddlewareOption{quota.WithSuccess(func(s int) bool { return s == 201 })},
			outcome: quota.HandlerOutcome{Status: 202, Written: true}, wantCode: 200,
		},
		{
			name: "body read: its bytes committed", action: "storage.bytes", opts: []quota.MiddlewareOption{quota.WithBodyBytes()},
			body: "0123456789", read: true, outcome: quota.HandlerOutcome{Status: 201, Written: true}, wantUsed: 10, wantCode: 200,
		},
		{
			name: "body over its declared length, failed, nothing written: 413", action: "storage.bytes", opts: []quota.MiddlewareOption{quota.WithBodyBytes()},
			body: "0123456789", read: true, outcome: quota.HandlerOutcome{Failed: true}, wantCode: 413, wantBody: true,
		},
		{
			name: "body over its declared length, panicked: nothing written", action: "storage.bytes", opts: []quota.MiddlewareOption{quota.WithBodyBytes()},
			body: "0123456789", read: true, outcome: quota.HandlerOutcome{Panicked: true}, wantCode: 200,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := mwQuota(t, quota.NewMemoryStore())
			var hooked hookLog
			meter := quota.NewMeter(q, tt.action, append(tt.opts, quota.WithErrorHook(hooked.hook))...)
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			r := httptest.NewRequest("POST", "/", body)
			if strings.Contains(tt.name, "over its declared length") {
				r.ContentLength = 4 // a lie
			}
			w := httptest.NewRecorder()
			m := meter.Begin(w, r, "alice")
			if m == nil {
				t.Fatalf("Begin answered %d %s", w.Code, w.Body)
			}
			req := m.Request()
			if d, ok := quota.FromContext(req.Context()); !ok || !d.Allowed {
				t.Errorf("FromContext = %+v, %t; want the decision", d, ok)
			}
			if _, ok := quota.FromContext(r.Context()); ok || req == r {
				t.Error("Begin modified the request it was given")
			}
			if w.Header().Get(quota.HeaderQuotaLevel) == "" {
				t.Error("no quota header on w")
			}
			if tt.read {
				io.ReadAll(req.Body)
			}
			m.Settle(w, tt.outcome)
			m.Settle(w, quota.HandlerOutcome{Status: 201, Written: true}) // does nothing
			if got := mwUsed(t, q, "alice", tt.action); got != tt.wantUsed {
				t.Errorf("ledger holds %d; want %d", got, tt.wantUsed)
			}
			if w.Code != tt.wantCode || (w.Body.Len() > 0) != tt.wantBody {
				t.Errorf("Settle wrote %d %q; want %d, body %t", w.Code, w.Body, tt.wantCode, tt.wantBody)
			}
			if hooked.len() != 0 {
				t.Errorf("error hook got %v", hooked.errs)
			}
		})
	}
}

// TestMeterBegin: Begin answers what Middleware answers and returns nil,
// or returns an unmetered request that Settle leaves alone.
func TestMeterBegin(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	if _, err := q.Track(t.Context(), quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 5}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, subject, action string
		opts                  []quota.MiddlewareOption
		wantCode              int
	}{
		{name: "no subject: 401", subject: "", action: "diagram.upload", wantCode: 401},
		{name: "invalid subject: 401", subject: "a\x00", action: "diagram.upload", wantCode: 401},
		{name: "denied: 429", subject: "alice", action: "diagram.upload", wantCode: 429},
		{name: "not in plan: 403", subject: "alice", action: "export.dxf", wantCode: 403},
		{name: "no subscription: 403", subject: "nobody", action: "diagram.upload", wantCode: 403},
	} {
		w := httptest.NewRecorder()
		if m := quota.NewMeter(q, tt.action, tt.opts...).Begin(w, httptest.NewRequest("POST", "/", nil), tt.subject); m != nil || w.Code != tt.wantCode {
			t.Errorf("%s: Begin = %v, %d; want nil, %d", tt.name, m, w.Code, tt.wantCode)
		}
	}

	// The same 429, byte for byte, as Middleware's.
	w1 := httptest.NewRecorder()
	quota.NewMeter(q, "diagram.upload").Begin(w1, httptest.NewRequest("POST", "/", nil), "alice")
	w2 := mwServe(quota.Middleware(q, "diagram.upload", mwSubject)(http.NotFoundHandler()), "/", "alice", nil)
	if diff := cmp.Diff(w2.Header(), w1.Header()); diff != "" || w1.Body.String() != w2.Body.String() {
		t.Errorf("Meter's 429 differs from Middleware's (-Middleware +Meter):\n%s\n%s\n%s", diff, w2.Body, w1.Body)
	}

	// An empty body is unmetered: the request is passed on as is.
	r := httptest.NewRequest("POST", "/", nil)
	w := httptest.NewRecorder()
	m := quota.NewMeter(q, "storage.bytes", quota.WithBodyBytes()).Begin(w, r, "alice")
	if m == nil || m.Request() != r {
		t.Fatalf("empty body: Begin = %v; want the request unmetered", m)
	}
	m.Settle(w, quota.HandlerOutcome{Status: 201, Written: true})
	if got := mwUsed(t, q, "alice", "storage.bytes"); got != 0 || len(w.Header()) != 0 {
		t.Errorf("empty body: ledger %d, headers %v; want 0, none", got, w.Header())
	}

	// A store failure with WithFailOpen: unmetered too, the hook told.
	store := &mwFailingStore{MemoryStore: quota.NewMemoryStore()}
	fq := mwQuota(t, store)
	store.fail.Store(true)
	var hooked hookLog
	m = quota.NewMeter(fq, "diagram.upload", quota.WithFailOpen(), quota.WithErrorHook(hooked.hook)).Begin(httptest.NewRecorder(), r, "alice")
	if m == nil || m.Request() != r || hooked.len() != 1 || !errors.Is(hooked.errs[0], errStoreDown) {
		t.Errorf("fail open: Begin = %v, hook %v; want the request unmetered, the store's error", m, hooked.errs)
	}
}

// TestNewMeterPanics: NewMeter refuses what Middleware refuses, naming
// itself.
func TestNewMeterPanics(t *testing.T) {
	q := mwQuota(t, quota.NewMemoryStore())
	for name, f := range map[string]func(){
		"nil quota":      func() { quota.NewMeter(nil, "diagram.upload") },
		"unknown action": func() { quota.NewMeter(q, "nope") },
		"amount 0":       func() { quota.NewMeter(q, "diagram.upload", quota.WithAmount(0)) },
	} {
		func() {
			defer func() {
				if r := recover(); r == nil || !strings.Contains(r.(string), "quota: NewMeter: ") {
					t.Errorf("%s: recovered %v; want a panic naming NewMeter", name, r)
				}
			}()
			f()
		}()
	}
}
