package quota_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quotakit/quota"
)

// dashPlans are BASIC, which limits one action, and PRO, with every kind
// of limit: two counters on one action, an allocation with a per-use cap,
// an unlimited counter and an action the plan does not include.
func dashPlans() []quota.Plan {
	return []quota.Plan{{
		Name:   "BASIC",
		Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(3)}},
	}, {
		Name:     "PRO",
		Features: []string{"priority_support", "api_access"},
		Limits: map[string][]quota.Limit{
			"diagram.upload": {quota.PerDay(4), quota.PerMonth(5)},
			"storage.bytes":  {quota.Total(1 << 30).WithMaxPerUse(10 << 20)},
			"procedure.view": {quota.PerMonth(quota.Unlimited)},
			"export.dxf":     {quota.PerMonth(0)},
		},
	}}
}

// dashSubject is the demo subject function: the subject is the
// X-Subject header, "" when absent.
func dashSubject(r *http.Request) (string, error) {
	if s := r.Header.Get("X-Subject"); s != "fail" {
		return s, nil
	}
	return "", errors.New("no session")
}

// dashGet serves method target as subject with h.
func dashGet(h http.Handler, method, target, subject string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	if subject != "" {
		r.Header.Set("X-Subject", subject)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

// dashHistory builds a Quota over store whose subject acme, billed from
// the 15th in Europe/Paris, used things across the change to summer time
// (29 March 2026) and the previous billing month. The clock ends on
// 2026-03-30 10:00 UTC.
func dashHistory(t *testing.T, store quota.Store) (*quota.Quota, *clock) {
	t.Helper()
	ctx := context.Background()
	clk := &clock{t: time.Date(2026, time.January, 15, 9, 0, 0, 0, time.UTC)}
	q, err := quota.New(store, quota.Config{Plans: dashPlans(), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	if err := q.Subscribe(ctx, quota.Subscription{Subject: "acme", Plan: "PRO", TimeZone: "Europe/Paris"}); err != nil {
		t.Fatal(err)
	}
	for _, u := range []struct {
		at     time.Time
		action string
		amount int64
	}{
		{time.Date(2026, time.March, 10, 12, 0, 0, 0, time.UTC), "diagram.upload", 2},  // previous month
		{time.Date(2026, time.March, 28, 22, 30, 0, 0, time.UTC), "diagram.upload", 1}, // 28 March, 23:30 in Paris
		{time.Date(2026, time.March, 28, 10, 0, 0, 0, time.UTC), "storage.bytes", 4096},
		{time.Date(2026, time.March, 29, 22, 30, 0, 0, time.UTC), "diagram.upload", 1}, // 30 March, 00:30 in Paris
		{time.Date(2026, time.March, 30, 9, 0, 0, 0, time.UTC), "diagram.upload", 2},
		{time.Date(2026, time.March, 30, 9, 0, 0, 0, time.UTC), "storage.bytes", -1024},
		{time.Date(2026, time.March, 30, 9, 30, 0, 0, time.UTC), "procedure.view", 3},
	} {
		clk.Set(u.at)
		if _, err := q.Track(ctx, quota.Use{Subject: "acme", Action: u.action, Amount: u.amount}); err != nil {
			t.Fatal(err)
		}
	}
	clk.Set(time.Date(2026, time.March, 30, 10, 0, 0, 0, time.UTC))
	return q, clk
}

// TestUsageHandlerGolden pins the JSON of a response, field names,
// order and values, for a fixed clock. go test -run
// TestUsageHandlerGolden -update rewrites testdata/dashboard.golden.json.
func TestUsageHandlerGolden(t *testing.T) {
	q, _ := dashHistory(t, quota.NewMemoryStore())
	w := dashGet(quota.UsageHandler(q, dashSubject), "GET", "/me/usage?days=3", "acme")
	if w.Code != http.StatusOK {
		t.Fatalf("status %d %s; want 200", w.Code, w.Body)
	}
	var got bytes.Buffer
	if err := json.Indent(&got, w.Body.Bytes(), "", "  "); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "dashboard.golden.json")
	if *update {
		if err := os.WriteFile(path, got.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -run TestUsageHandlerGolden -update creates it)", err)
	}
	if diff := cmp.Diff(string(want), got.String()); diff != "" {
		t.Errorf("body differs from %s (-want +got; -update rewrites it):\n%s", path, diff)
	}
}

// TestUsageHandlerDaily checks the daily series against the history:
// calendar days of the subject's zone, a 23-hour day when clocks change,
// every action of the plan, zeros where nothing was used.
func TestUsageHandlerDaily(t *testing.T) {
	q, _ := dashHistory(t, quota.NewMemoryStore())
	h := quota.UsageHandler(q, dashSubject)
	var res quota.UsageResponse
	w := dashGet(h, "GET", "/me/usage?days=3", "acme")
	if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil {
		t.Fatalf("%v: %s", err, w.Body)
	}
	if res.TimeZone != "Europe/Paris" {
		t.Errorf("time_zone = %q; want Europe/Paris", res.TimeZone)
	}
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		t.Fatal(err)
	}
	day := func(d int) time.Time { return time.Date(2026, time.March, d, 0, 0, 0, 0, paris).UTC() }
	got := map[string][]int64{}
	for _, s := range res.Daily {
		if len(s.Points) != 3 {
			t.Fatalf("%s: %d points; want 3", s.Action, len(s.Points))
		}
		for i, p := range s.Points {
			if !p.Start.Equal(day(28+i)) || !p.End.Equal(day(29+i)) || p.Action != "" {
				t.Errorf("%s point %d = %+v; want [%v, %v) with no action", s.Action, i, p, day(28+i), day(29+i))
			}
			got[s.Action] = append(got[s.Action], p.Amount, p.Count)
		}
	}
	want := map[string][]int64{ // amount, count per day: 28, 29, 30 March
		"diagram.upload": {1, 1, 0, 0, 3, 2},
		"export.dxf":     {0, 0, 0, 0, 0, 0},
		"procedure.view": {0, 0, 0, 0, 3, 1},
		"storage.bytes":  {4096, 1, 0, 0, -1024, 1},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("daily amounts and counts (-want +got):\n%s", diff)
	}
	if d := res.Daily[0].Points[1]; d.End.Sub(d.Start) != 23*time.Hour {
		t.Errorf("29 March lasts %v; want 23h (summer time)", d.End.Sub(d.Start))
	}

	checkDailySpans(t, h, day)
}

// checkDailySpans checks that h serves no series without ?days, and as
// many days as asked for, ending today in Paris, otherwise.
func checkDailySpans(t *testing.T, h http.Handler, day func(int) time.Time) {
	t.Helper()
	// Without days there is no series; with 1 or 366, as many points.
	w := dashGet(h, "GET", "/me/usage", "acme")
	if strings.Contains(w.Body.String(), `"daily"`) {
		t.Errorf("daily without ?days: %s", w.Body)
	}
	for _, n := range []int{1, 30, 366} {
		var res quota.UsageResponse
		w := dashGet(h, "GET", "/me/usage?days="+strconv.Itoa(n), "acme")
		if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil || w.Code != 200 {
			t.Fatalf("days=%d: %d %v", n, w.Code, err)
		}
		if len(res.Daily) != 4 {
			t.Fatalf("days=%d: %d series; want 4", n, len(res.Daily))
		}
		for _, s := range res.Daily {
			if len(s.Points) != n {
				t.Errorf("days=%d: %s has %d points", n, s.Action, len(s.Points))
			}
			if last := s.Points[len(s.Points)-1]; !last.Start.Equal(day(30)) || !last.End.Equal(day(31)) {
				t.Errorf("days=%d: %s's last day is [%v, %v); want today in Paris", n, s.Action, last.Start, last.End)
			}
		}
	}
}

// TestUsageHandlerDailyOverrides: an action that only the subject's
// overrides limit has a daily series too, in action order.
func TestUsageHandlerDailyOverrides(t *testing.T) {
	ctx := context.Background()
	q, err := quota.New(quota.NewMemoryStore(), quota.Config{Plans: dashPlans()})
	if err != nil {
		t.Fatal(err)
	}
	err = q.Subscribe(ctx, quota.Subscription{
		Subject:   "solo",
		Plan:      "BASIC",
		Overrides: map[string][]quota.Limit{"procedure.view": {quota.PerDay(10)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Track(ctx, quota.Use{Subject: "solo", Action: "diagram.upload", Amount: 2}); err != nil {
		t.Fatal(err)
	}
	var res quota.UsageResponse
	w := dashGet(quota.UsageHandler(q, dashSubject), "GET", "/?days=2", "solo")
	if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil || w.Code != 200 {
		t.Fatalf("%d %s: %v", w.Code, w.Body, err)
	}
	var got []string
	for _, s := range res.Daily {
		var amounts []string
		for _, p := range s.Points {
			amounts = append(amounts, strconv.FormatInt(p.Amount, 10))
		}
		got = append(got, s.Action+"="+strings.Join(amounts, ","))
	}
	if want := []string{"diagram.upload=0,2", "procedure.view=0,0"}; !slices.Equal(got, want) {
		t.Errorf("daily = %q; want %q", got, want)
	}
	var actions []string
	for _, a := range res.Actions {
		actions = append(actions, a.Action)
	}
	if want := []string{"diagram.upload", "procedure.view"}; !slices.Equal(actions, want) {
		t.Errorf("actions = %q; want %q", actions, want)
	}
}

// dashHooks collects what the error hook is told.
type dashHooks struct {
	mu   sync.Mutex
	errs []error
}

func (h *dashHooks) hook(_ *http.Request, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.errs = append(h.errs, err)
}

func (h *dashHooks) len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.errs)
}

// dashFailing is a MemoryStore whose reads fail while fail is set.
type dashFailing struct {
	*quota.MemoryStore
	fail bool
}

// errDashDown carries a secret, to prove that no response shows it.
var errDashDown = errors.New("store down: dial postgres://app:hunter2@db")

func (s *dashFailing) Counters(ctx context.Context, keys []quota.CounterKey, now time.Time) ([]quota.Counter, error) {
	if s.fail {
		return nil, errDashDown
	}
	return s.MemoryStore.Counters(ctx, keys, now)
}

// usageSetup is the Quota of a TestUsageHandlerStatus case and its
// error hook.
type usageSetup struct {
	q     *quota.Quota
	hooks *dashHooks
}

// usageStatusCase is a case of TestUsageHandlerStatus: one request and
// what it answers.
type usageStatusCase struct {
	name    string
	setup   func(t *testing.T) usageSetup
	method  string
	target  string
	subject string
	status  int
	problem string // the problem's type; "" for a 200
	hooks   int
	header  map[string]string
}

func TestUsageHandlerStatus(t *testing.T) {
	history := func(t *testing.T, store quota.Store) usageSetup {
		q, _ := dashHistory(t, store)
		return usageSetup{q: q, hooks: &dashHooks{}}
	}
	for _, tt := range []usageStatusCase{
		{name: "get", method: "GET", target: "/", subject: "acme", status: 200},
		{name: "get days", method: "GET", target: "/?days=30", subject: "acme", status: 200},
		{name: "head", method: "HEAD", target: "/?days=7", subject: "acme", status: 200},
		{name: "other parameters ignored", method: "GET", target: "/?action=x&days=2&x=1", subject: "acme", status: 200},
		{name: "post", method: "POST", target: "/", subject: "acme", status: 405, problem: "about:blank", header: map[string]string{"Allow": "GET, HEAD"}},
		{name: "put unauthenticated", method: "PUT", target: "/", status: 405, problem: "about:blank", header: map[string]string{"Allow": "GET, HEAD"}},
		{name: "delete", method: "DELETE", target: "/", subject: "acme", status: 405, problem: "about:blank"},
		{name: "options", method: "OPTIONS", target: "/", subject: "acme", status: 405, problem: "about:blank"},
		{name: "no subject", method: "GET", target: "/", status: 401, problem: "about:blank"},
		{name: "subject fails", method: "GET", target: "/", subject: "fail", status: 401, problem: "about:blank"},
		{name: "invalid subject", method: "GET", target: "/", subject: "a\x7fb", status: 401, problem: "about:blank"},
		{name: "unauthenticated with bad days", method: "GET", target: "/?days=0", status: 401, problem: "about:blank"},
		{name: "days 0", method: "GET", target: "/?days=0", subject: "acme", status: 400, problem: "about:blank"},
		{name: "days 367", method: "GET", target: "/?days=367", subject: "acme", status: 400, problem: "about:blank"},
		{name: "days 1000", method: "GET", target: "/?days=1000", subject: "acme", status: 400, problem: "about:blank"},
		{name: "days negative", method: "GET", target: "/?days=-1", subject: "acme", status: 400, problem: "about:blank"},
		{name: "days signed", method: "GET", target: "/?days=%2B5", subject: "acme", status: 400, problem: "about:blank"},
		{name: "days leading zero", method: "GET", target: "/?days=05", subject: "acme", status: 400, problem: "about:blank"},
		{name: "days empty", method: "GET", target: "/?days=", subject: "acme", status: 400, problem: "about:blank"},
		{name: "days text", method: "GET", target: "/?days=week", subject: "acme", status: 400, problem: "about:blank"},
		{name: "days decimal", method: "GET", target: "/?days=1.5", subject: "acme", status: 400, problem: "about:blank"},
		{name: "days exponent", method: "GET", target: "/?days=1e2", subject: "acme", status: 400, problem: "about:blank"},
		{name: "days twice", method: "GET", target: "/?days=3&days=3", subject: "acme", status: 400, problem: "about:blank"},
		{name: "no subscription", method: "GET", target: "/", subject: "nobody", status: 403, problem: quota.ProblemTypeNoSubscription},
		{name: "no subscription with days", method: "GET", target: "/?days=3", subject: "nobody", status: 403, problem: quota.ProblemTypeNoSubscription},
		{
			name: "plan gone", method: "GET", target: "/", subject: "acme", status: 403, problem: quota.ProblemTypeNoSubscription, hooks: 1,
			setup: func(t *testing.T) usageSetup {
				store := quota.NewMemoryStore()
				if err := store.PutSubscription(context.Background(), quota.Subscription{Subject: "acme", Plan: "GOLD", Anchor: time.Now()}); err != nil {
					t.Fatal(err)
				}
				q, err := quota.New(store, quota.Config{Plans: dashPlans()})
				if err != nil {
					t.Fatal(err)
				}
				return usageSetup{q: q, hooks: &dashHooks{}}
			},
		},
		{
			name: "store down", method: "GET", target: "/?days=3", subject: "acme", status: 503, problem: "about:blank", hooks: 1,
			header: map[string]string{"Retry-After": "5"},
			setup: func(t *testing.T) usageSetup {
				store := &dashFailing{MemoryStore: quota.NewMemoryStore()}
				s := history(t, store)
				store.fail = true
				return s
			},
		},
		{
			name: "closed", method: "GET", target: "/", subject: "acme", status: 503, problem: "about:blank", hooks: 1,
			setup: func(t *testing.T) usageSetup {
				s := history(t, quota.NewMemoryStore())
				s.q.Close()
				return s
			},
		},
		{
			name: "default plan", method: "GET", target: "/?days=2", subject: "newcomer", status: 200,
			setup: func(t *testing.T) usageSetup {
				q, err := quota.New(quota.NewMemoryStore(), quota.Config{Plans: dashPlans(), DefaultPlan: "PRO"})
				if err != nil {
					t.Fatal(err)
				}
				return usageSetup{q: q, hooks: &dashHooks{}}
			},
		},
	} {
		t.Run(tt.name, tt.run)
	}
}

// run sends tt's request and checks the answer.
func (tt *usageStatusCase) run(t *testing.T) {
	var s usageSetup
	if tt.setup != nil {
		s = tt.setup(t)
	} else {
		q, _ := dashHistory(t, quota.NewMemoryStore())
		s = usageSetup{q: q, hooks: &dashHooks{}}
	}
	h := quota.UsageHandler(s.q, dashSubject, quota.WithErrorHook(s.hooks.hook))
	w := dashGet(h, tt.method, tt.target, tt.subject)
	if w.Code != tt.status {
		t.Fatalf("status %d %s; want %d", w.Code, w.Body, tt.status)
	}
	if got := w.Header().Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control = %q; want no-store", got)
	}
	if got := w.Header().Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("X-Content-Type-Options = %q; want nosniff", got)
	}
	for k, v := range tt.header {
		if got := w.Header().Get(k); got != v {
			t.Errorf("%s = %q; want %q", k, got, v)
		}
	}
	if got := s.hooks.len(); got != tt.hooks {
		t.Errorf("error hook called %d times; want %d", got, tt.hooks)
	}
	if strings.Contains(w.Body.String(), "hunter2") || strings.Contains(w.Body.String(), "analytics") {
		t.Errorf("the body shows an error's text: %s", w.Body)
	}
	switch {
	case tt.problem != "":
		tt.checkProblem(t, w)
	case tt.method == "HEAD":
		tt.checkHead(t, h, w)
	default:
		tt.checkReport(t, w)
	}
}

func (tt *usageStatusCase) checkProblem(t *testing.T, w *httptest.ResponseRecorder) {
	if ct := w.Header().Get("Content-Type"); ct != quota.ContentTypeProblem {
		t.Errorf("Content-Type = %q; want %q", ct, quota.ContentTypeProblem)
	}
	var p quota.Problem
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil {
		t.Fatalf("problem %q: %v", w.Body, err)
	}
	if p.Type != tt.problem || p.Status != tt.status || p.Title == "" || p.Detail == "" {
		t.Errorf("problem = %+v; want type %s, status %d", p, tt.problem, tt.status)
	}
}

func (tt *usageStatusCase) checkHead(t *testing.T, h http.Handler, w *httptest.ResponseRecorder) {
	if w.Body.Len() != 0 {
		t.Errorf("HEAD has a body: %q", w.Body)
	}
	get := dashGet(h, "GET", tt.target, tt.subject)
	if got, want := w.Header().Get("Content-Length"), strconv.Itoa(get.Body.Len()); got != want {
		t.Errorf("HEAD Content-Length = %s; want %s, as GET", got, want)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q; want application/json", ct)
	}
}

func (tt *usageStatusCase) checkReport(t *testing.T, w *httptest.ResponseRecorder) {
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q; want application/json", ct)
	}
	var res quota.UsageResponse
	if err := json.Unmarshal(w.Body.Bytes(), &res); err != nil {
		t.Fatalf("body %q: %v", w.Body, err)
	}
	if res.Subject != tt.subject || res.Plan != "PRO" || len(res.Actions) != 4 {
		t.Errorf("response = %s", w.Body)
	}
	if tt.subject == "newcomer" && res.TimeZone != "UTC" {
		t.Errorf("time_zone of the default plan = %q; want UTC", res.TimeZone)
	}
}

func TestUsageHandlerUnauthorizedOption(t *testing.T) {
	q, _ := dashHistory(t, quota.NewMemoryStore())
	login := http.RedirectHandler("/login", http.StatusSeeOther)
	h := quota.UsageHandler(q, dashSubject, quota.WithUnauthorized(login), nil)
	for _, subject := range []string{"", "fail"} {
		if w := dashGet(h, "GET", "/", subject); w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/login" {
			t.Errorf("subject %q: %d %v; want the redirect to /login", subject, w.Code, w.Header())
		}
	}
	if w := dashGet(h, "GET", "/", "acme"); w.Code != 200 {
		t.Errorf("acme: %d; want 200", w.Code)
	}
}

func TestUsageHandlerPanics(t *testing.T) {
	q, _ := dashHistory(t, quota.NewMemoryStore())
	for name, f := range map[string]func(){
		"nil quota":   func() { quota.UsageHandler(nil, dashSubject) },
		"nil subject": func() { quota.UsageHandler(q, nil) },
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

// TestUsageHandlerDocumented checks that UsageHandler's documentation
// describes every member of its JSON, as "name (type)", so that a field
// added to the report cannot go undocumented.
func TestUsageHandlerDocumented(t *testing.T) {
	q, _ := dashHistory(t, quota.NewMemoryStore())
	w := dashGet(quota.UsageHandler(q, dashSubject), "GET", "/?days=2", "acme")
	var v any
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				keys[k] = true
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(v)

	f, err := parser.ParseFile(token.NewFileSet(), "dashboard.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	var doc string
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Name.Name == "UsageHandler" && fd.Recv == nil {
			doc = fd.Doc.Text()
		}
	}
	if doc == "" {
		t.Fatal("UsageHandler has no doc comment")
	}
	var missing []string
	for k := range keys {
		if !regexp.MustCompile(`(^|[^a-z_])` + regexp.QuoteMeta(k) + ` \(`).MatchString(doc) {
			missing = append(missing, k)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("UsageHandler's doc does not name the JSON members %q", missing)
	}
	for _, status := range []string{"200", "400", "401", "403", "405", "503"} {
		if !strings.Contains(doc, status) {
			t.Errorf("UsageHandler's doc does not name the status %s", status)
		}
	}
}
