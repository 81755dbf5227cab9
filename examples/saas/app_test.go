package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"

	"github.com/quotakit/quota"
)

// testApp is the app over a fresh SQLite file, served by httptest.
type testApp struct {
	t   *testing.T
	srv *httptest.Server
	app *App
}

// newTestApp starts the app over a fresh SQLite file; opts adjust its
// Config (a fixed clock, say).
func newTestApp(t *testing.T, opts ...func(*Config)) *testApp {
	t.Helper()
	db, err := openSQLite(filepath.Join(t.TempDir(), "saas.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return newTestAppDB(t, db, opts...)
}

func newTestAppDB(t *testing.T, db *bun.DB, opts ...func(*Config)) *testApp {
	t.Helper()
	ctx := context.Background()
	store, err := quota.NewSQLStore(db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	if err := store.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	plans, err := quota.ParsePlansYAML(plansYAML)
	if err != nil {
		t.Fatal(err)
	}
	users, _ := parseUsers("alice=FREE,bob=PROFESSIONAL,carol=ENTERPRISE")
	cfg := Config{Users: users, AdminToken: "admin"}
	for _, o := range opts {
		o(&cfg)
	}
	app, err := NewApp(ctx, db, store, plans, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	srv := httptest.NewServer(app.Handler())
	t.Cleanup(srv.Close)
	return &testApp{t: t, srv: srv, app: app}
}

// response is what a test reads of a response.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("body %q: %v", r.body, err)
	}
}

// do sends a request as user ("" for none); body may be a string, a
// []byte or an io.Reader (sent chunked).
func (a *testApp) do(method, path, user string, body any) response {
	a.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	case io.Reader:
		rd = b
	}
	req, err := http.NewRequest(method, a.srv.URL+path, rd)
	if err != nil {
		a.t.Fatal(err)
	}
	if user != "" {
		req.Header.Set("Authorization", "Bearer "+user)
	}
	res, err := a.srv.Client().Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		a.t.Fatal(err)
	}
	return response{res.StatusCode, res.Header, b}
}

func (a *testApp) upload(user, name string, body any) response {
	a.t.Helper()
	return a.do("POST", "/diagrams?name="+name, user, body)
}

// used returns user's usage of action, from GET /me/usage.
func (a *testApp) used(user, action string) int64 {
	a.t.Helper()
	res := a.do("GET", "/me/usage", user, nil)
	if res.status != 200 {
		a.t.Fatalf("GET /me/usage: %d %s", res.status, res.body)
	}
	var rep quota.Report
	res.json(a.t, &rep)
	for _, au := range rep.Actions {
		if au.Action == action {
			return au.Used
		}
	}
	a.t.Fatalf("usage has no %s: %s", action, res.body)
	return 0
}

func TestUploadUntil429ThenUpgrade(t *testing.T) {
	a := newTestApp(t)
	for i := 1; i <= 5; i++ {
		res := a.upload("alice", fmt.Sprintf("pump-%d.png", i), strings.Repeat("x", 100*i))
		if res.status != http.StatusCreated {
			t.Fatalf("upload %d: %d %s", i, res.status, res.body)
		}
		var d Diagram
		res.json(t, &d)
		if d.Size != int64(100*i) || d.Name != fmt.Sprintf("pump-%d.png", i) {
			t.Errorf("upload %d: %+v", i, d)
		}
	}
	check429(t, a.upload("alice", "pump-6.png", "xyz"))
	if got := a.used("alice", "diagram.upload"); got != 5 {
		t.Errorf("uploads used %d; want 5", got)
	}
	if got := a.used("alice", "storage.bytes"); got != 1500 {
		t.Errorf("storage used %d; want 1500", got)
	}

	// Only the admin token may change a plan.
	if res := a.do("PUT", "/admin/users/alice/plan", "alice", `{"plan":"PROFESSIONAL"}`); res.status != http.StatusUnauthorized {
		t.Errorf("upgrade as alice: %d; want 401", res.status)
	}
	if res := a.do("PUT", "/admin/users/alice/plan", "admin", `{"plan":"GOLD"}`); res.status != http.StatusBadRequest {
		t.Errorf("upgrade to GOLD: %d; want 400", res.status)
	}
	if res := a.do("PUT", "/admin/users/alice/plan", "admin", `{"plan":"PROFESSIONAL"}`); res.status != http.StatusOK {
		t.Fatalf("upgrade: %d %s", res.status, res.body)
	}
	res := a.upload("alice", "pump-6.png", "xyz")
	if res.status != http.StatusCreated {
		t.Fatalf("upload after the upgrade: %d %s; want 201", res.status, res.body)
	}
	if got, want := res.header.Values(quota.HeaderRateLimitPolicy)[0], `"diagram.upload/month";q=100;w=`; !strings.HasPrefix(got, want) {
		t.Errorf("RateLimit-Policy = %q; want prefix %q", got, want)
	}
	if got, want := res.header.Values(quota.HeaderRateLimit)[0], `"diagram.upload/month";r=94;t=`; !strings.HasPrefix(got, want) {
		t.Errorf("RateLimit = %q; want prefix %q", got, want)
	}
}

// check429 checks the answer to FREE alice's sixth upload of the month:
// a 429 problem with the upgrade message, the figures and the reset.
func check429(t *testing.T, res response) {
	t.Helper()
	if res.status != http.StatusTooManyRequests {
		t.Fatalf("upload 6: %d %s; want 429", res.status, res.body)
	}
	if ct := res.header.Get("Content-Type"); ct != quota.ContentTypeProblem {
		t.Errorf("Content-Type = %q; want %q", ct, quota.ContentTypeProblem)
	}
	var p quota.Problem
	res.json(t, &p)
	if p.ProblemUsage == nil {
		t.Fatalf("problem without figures: %s", res.body)
	}
	want := quota.Problem{
		Type: quota.DefaultProblemType, Title: "Quota exceeded", Status: 429,
		Detail: upgrades["FREE/diagram.upload"],
		ProblemUsage: &quota.ProblemUsage{
			Action: "diagram.upload", Plan: "FREE", Used: 5, Limit: 5, Remaining: 0, Percent: 100,
			Level: quota.LevelExceeded, ResetAt: p.ResetAt,
		},
	}
	if diff := cmp.Diff(want, p); diff != "" {
		t.Errorf("problem (-want +got):\n%s", diff)
	}
	if now := time.Now().UTC(); !p.ResetAt.After(now) || p.ResetAt.Day() != 1 || p.ResetAt.Sub(now) > 32*24*time.Hour {
		t.Errorf("reset_at %v; want the 1st of next month", p.ResetAt)
	}
	// The month resets in more than an hour (but in its last one): no
	// Retry-After for a retrying client to sleep through.
	if ra := res.header.Get(quota.HeaderRetryAfter); ra != "" && time.Until(p.ResetAt) > time.Hour {
		t.Errorf("429 with Retry-After %s, the month resetting at %v", ra, p.ResetAt)
	}
}

func TestDeleteFreesStorage(t *testing.T) {
	a := newTestApp(t)
	res := a.upload("alice", "big.png", strings.Repeat("x", 4000))
	if res.status != http.StatusCreated {
		t.Fatalf("upload: %d %s", res.status, res.body)
	}
	var d Diagram
	res.json(t, &d)
	a.upload("alice", "small.png", "abc")
	if got := a.used("alice", "storage.bytes"); got != 4003 {
		t.Errorf("storage used %d; want 4003", got)
	}
	path := fmt.Sprintf("/diagrams/%d", d.ID)
	if res := a.do("DELETE", path, "bob", nil); res.status != http.StatusNotFound {
		t.Errorf("bob deletes alice's diagram: %d; want 404", res.status)
	}
	if res := a.do("DELETE", path, "alice", nil); res.status != http.StatusNoContent {
		t.Fatalf("delete: %d %s", res.status, res.body)
	}
	if got := a.used("alice", "storage.bytes"); got != 3 {
		t.Errorf("storage used after delete %d; want 3", got)
	}
	if res := a.do("DELETE", path, "alice", nil); res.status != http.StatusNotFound {
		t.Errorf("second delete: %d; want 404", res.status)
	}
	if got := a.used("alice", "storage.bytes"); got != 3 {
		t.Errorf("storage used after a second delete %d; want 3", got)
	}
	// Deleting frees storage, not the monthly upload count.
	if got := a.used("alice", "diagram.upload"); got != 2 {
		t.Errorf("uploads used %d; want 2", got)
	}
	var list []Diagram
	a.do("GET", "/diagrams", "alice", nil).json(t, &list)
	if len(list) != 1 || list[0].Name != "small.png" {
		t.Errorf("diagrams = %+v; want small.png alone", list)
	}
}

func TestUploadTooLarge(t *testing.T) {
	a := newTestApp(t)
	const freeCap = 10 << 20 // FREE: files up to 10 MiB
	big := bytes.Repeat([]byte("x"), freeCap+1)
	for name, body := range map[string]any{
		"declared": big,
		"chunked":  io.MultiReader(bytes.NewReader(big)), // no Content-Length
	} {
		t.Run(name, func(t *testing.T) {
			res := a.upload("alice", "huge.png", body)
			if res.status != http.StatusRequestEntityTooLarge {
				t.Fatalf("status %d %s; want 413", res.status, res.body)
			}
			var p quota.Problem
			res.json(t, &p)
			if p.Type != quota.ProblemTypeTooLarge || p.ProblemUsage == nil || p.MaxPerUse != freeCap || p.Detail != upgrades["FREE/storage.bytes"] {
				t.Errorf("problem = %s", res.body)
			}
		})
	}
	if got := a.used("alice", "storage.bytes"); got != 0 {
		t.Errorf("storage used %d; want 0", got)
	}
	if got := a.used("alice", "diagram.upload"); got != 0 {
		t.Errorf("uploads used %d; want 0: a refused upload is not counted", got)
	}
	// Exactly the cap is fine, and bob's PROFESSIONAL cap is larger.
	if res := a.upload("alice", "max.png", big[:freeCap]); res.status != http.StatusCreated {
		t.Errorf("upload of the cap: %d; want 201", res.status)
	}
	if res := a.upload("bob", "huge.png", big); res.status != http.StatusCreated {
		t.Errorf("bob's upload: %d; want 201", res.status)
	}
}

func TestExports(t *testing.T) {
	a := newTestApp(t)
	ids := map[string]int64{}
	for _, u := range []string{"alice", "bob", "carol"} {
		var d Diagram
		a.upload(u, "pid.png", "diagram").json(t, &d)
		ids[u] = d.ID
	}
	for _, tt := range []struct {
		user, format string
		want         int
	}{
		{"alice", "pdf", 403}, {"alice", "dxf", 403},
		{"bob", "pdf", 200}, {"bob", "dxf", 403},
		{"carol", "pdf", 200}, {"carol", "dxf", 200},
	} {
		res := a.do("GET", fmt.Sprintf("/diagrams/%d/export.%s", ids[tt.user], tt.format), tt.user, nil)
		if res.status != tt.want {
			t.Errorf("%s exports %s: %d %s; want %d", tt.user, tt.format, res.status, res.body, tt.want)
			continue
		}
		if tt.want == 403 {
			var p quota.Problem
			res.json(t, &p)
			key := map[string]string{"alice": "FREE", "bob": "PROFESSIONAL"}[tt.user] + "/export." + tt.format
			if p.Type != quota.ProblemTypeNotInPlan || p.Detail != upgrades[key] || p.ProblemUsage == nil || p.Limit != 0 {
				t.Errorf("%s exports %s: problem %s", tt.user, tt.format, res.body)
			}
		}
	}
	// An export of a diagram that does not exist is not counted.
	if res := a.do("GET", "/diagrams/999/export.pdf", "bob", nil); res.status != 404 {
		t.Errorf("export of a missing diagram: %d; want 404", res.status)
	}
	if got := a.used("bob", "export.pdf"); got != 1 {
		t.Errorf("bob's PDF exports %d; want 1", got)
	}
}

func TestAPIAccess(t *testing.T) {
	a := newTestApp(t)
	a.upload("carol", "pid.png", "diagram")
	for user, want := range map[string]int{"alice": 403, "bob": 403, "carol": 200} {
		res := a.do("GET", "/api/v1/diagrams", user, nil)
		if res.status != want {
			t.Errorf("%s: %d %s; want %d", user, res.status, res.body, want)
		}
		if want == 403 {
			var p quota.Problem
			res.json(t, &p)
			if p.Feature != "api_access" {
				t.Errorf("%s: problem %s; want the feature api_access", user, res.body)
			}
		}
	}
	if got := a.used("carol", "api.call"); got != 1 {
		t.Errorf("carol's API calls %d; want 1 (unlimited, still counted)", got)
	}
}

func TestAIAnalysesAndProcedures(t *testing.T) {
	a := newTestApp(t)
	for i := 1; i <= 3; i++ {
		res := a.do("POST", "/ai/ask", "alice", `{"question":"Why does the pump cavitate?"}`)
		if res.status != 200 {
			t.Fatalf("question %d: %d %s", i, res.status, res.body)
		}
		var out struct {
			Left float64 `json:"analyses_left"`
		}
		res.json(t, &out)
		if out.Left != float64(3-i) {
			t.Errorf("question %d: %v left; want %d", i, out.Left, 3-i)
		}
	}
	if res := a.do("POST", "/ai/ask", "alice", `{"question":"And now?"}`); res.status != 429 {
		t.Errorf("question 4: %d; want 429", res.status)
	}
	if res := a.do("POST", "/ai/ask", "bob", `not json`); res.status != 400 {
		t.Errorf("bad question: %d; want 400", res.status)
	}
	if got := a.used("bob", "ai.analysis"); got != 0 {
		t.Errorf("a bad question was counted: %d", got)
	}
	for range 30 {
		if res := a.do("GET", "/procedures/1", "alice", nil); res.status != 200 {
			t.Fatalf("procedure: %d %s", res.status, res.body)
		}
	}
	if got := a.used("alice", "procedure.view"); got != 30 {
		t.Errorf("procedure views %d; want 30", got)
	}
}

func TestUsageJSON(t *testing.T) {
	a := newTestApp(t)
	a.upload("alice", "a.png", "12345")
	a.do("POST", "/ai/ask", "alice", `{"question":"q"}`)
	res := a.do("GET", "/me/usage", "alice", nil)
	if res.status != 200 || res.header.Get("Content-Type") != "application/json" {
		t.Fatalf("usage: %d %v %s", res.status, res.header, res.body)
	}
	var rep struct {
		Subject  string   `json:"subject"`
		Plan     string   `json:"plan"`
		Features []string `json:"features"`
		Actions  []struct {
			Action    string  `json:"action"`
			Used      int64   `json:"used"`
			Limit     int64   `json:"limit"`
			Remaining int64   `json:"remaining"`
			Percent   float64 `json:"percent"`
			Level     string  `json:"level"`
		} `json:"actions"`
	}
	res.json(t, &rep)
	if rep.Subject != "alice" || rep.Plan != "FREE" || len(rep.Features) != 0 {
		t.Errorf("usage = %s", res.body)
	}
	got := map[string]string{}
	for _, au := range rep.Actions {
		got[au.Action] = fmt.Sprintf("%d/%d %s", au.Used, au.Limit, au.Level)
	}
	want := map[string]string{
		"ai.analysis":    "1/3 ok",
		"api.call":       "0/0 exceeded",
		"diagram.upload": "1/5 ok",
		"export.dxf":     "0/0 exceeded",
		"export.pdf":     "0/0 exceeded",
		"procedure.view": "0/-1 ok",
		"storage.bytes":  "5/1073741824 ok",
		"team.seats":     "0/1 ok",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("usage (-want +got):\n%s", diff)
	}

	res = a.do("GET", "/me/usage?action=storage.bytes", "alice", nil)
	var one quota.Report
	res.json(t, &one)
	if res.status != 200 || len(one.Actions) != 1 || one.Actions[0].Action != "storage.bytes" || one.Actions[0].Used != 5 {
		t.Errorf("usage of storage.bytes: %d %s", res.status, res.body)
	}
	if res := a.do("GET", "/me/usage?action=nope", "alice", nil); res.status != 404 {
		t.Errorf("usage of an unknown action: %d; want 404", res.status)
	}
}

func TestUnauthorized(t *testing.T) {
	a := newTestApp(t)
	for _, user := range []string{"", "mallory"} {
		for _, r := range []struct{ method, path string }{
			{"POST", "/diagrams?name=x"}, {"GET", "/me/usage"}, {"POST", "/ai/ask"}, {"GET", "/api/v1/diagrams"},
		} {
			res := a.do(r.method, r.path, user, "x")
			if res.status != 401 || res.header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s %s as %q: %d %v; want 401 with WWW-Authenticate", r.method, r.path, user, res.status, res.header)
			}
		}
	}
}

// TestConcurrentUploads races 20 uploads of a FREE user on SQLite: the
// quota of 5 holds.
func TestConcurrentUploads(t *testing.T) {
	a := newTestApp(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for i := range 20 {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", fmt.Sprintf("%s/diagrams?name=d%d.png", a.srv.URL, i), strings.NewReader("diagram"))
			req.Header.Set("Authorization", "Bearer alice")
			res, err := a.srv.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			mu.Lock()
			codes[res.StatusCode]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if codes[201] != 5 || codes[429] != 15 {
		t.Errorf("statuses %v; want 5 × 201 and 15 × 429", codes)
	}
	if got := a.used("alice", "diagram.upload"); got != 5 {
		t.Errorf("uploads used %d; want 5", got)
	}
	if got := a.used("alice", "storage.bytes"); got != 5*int64(len("diagram")) {
		t.Errorf("storage used %d; want %d", got, 5*len("diagram"))
	}
}

// TestRestartKeepsPlans: a second start on the same file keeps usage and
// the plans changed by the admin.
func TestRestartKeepsPlans(t *testing.T) {
	path := filepath.Join(t.TempDir(), "saas.db")
	open := func() *testApp {
		db, err := openSQLite(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		return newTestAppDB(t, db)
	}
	a := open()
	a.upload("alice", "a.png", "abc")
	a.do("PUT", "/admin/users/alice/plan", "admin", `{"plan":"ENTERPRISE"}`)
	a.srv.Close()
	b := open()
	if got := b.used("alice", "diagram.upload"); got != 1 {
		t.Errorf("uploads after restart %d; want 1", got)
	}
	var rep quota.Report
	b.do("GET", "/me/usage", "alice", nil).json(t, &rep)
	if rep.Plan != "ENTERPRISE" {
		t.Errorf("plan after restart %q; want ENTERPRISE", rep.Plan)
	}
}

// TestPlansCopy keeps the embedded catalog equal to the repository's.
func TestPlansCopy(t *testing.T) {
	orig, err := os.ReadFile("../../testdata/plans.yaml")
	if err != nil {
		t.Skip("repository's testdata not found:", err)
	}
	if !bytes.Equal(orig, plansYAML) {
		t.Error("plans.yaml differs from ../../testdata/plans.yaml: copy it again")
	}
}

func TestParseUsers(t *testing.T) {
	got, err := parseUsers("alice=FREE, bob=PROFESSIONAL")
	if err != nil || fmt.Sprint(got) != "map[alice:FREE bob:PROFESSIONAL]" {
		t.Errorf("parseUsers = %v, %v", got, err)
	}
	for _, bad := range []string{"alice", "=FREE", "alice=", ""} {
		if _, err := parseUsers(bad); err == nil {
			t.Errorf("parseUsers(%q) = nil error", bad)
		}
	}
}

// TestRun starts the command as the README does, on a temporary SQLite
// file and the embedded plans, and asks for alice's usage.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	addrc := make(chan string, 1)
	go func() {
		errc <- run(ctx, []string{"-addr", "127.0.0.1:0", "-postgres", ""}, func(a net.Addr) { addrc <- a.String() })
	}()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-errc:
		t.Fatalf("run: %v", err)
	}
	req, _ := http.NewRequest("GET", "http://"+addr+"/me/usage", nil)
	req.Header.Set("Authorization", "Bearer alice")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var rep quota.Report
	if err := json.NewDecoder(res.Body).Decode(&rep); err != nil || rep.Plan != "FREE" {
		t.Errorf("usage: %d %+v %v", res.StatusCode, rep, err)
	}
	res.Body.Close()
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("run returned %v", err)
	}
}

// pgSchemaDSN returns a DSN whose connections work in a new schema,
// dropped when t ends, of the server that QUOTA_TEST_POSTGRES_DSN (as CI
// sets it) or QUOTA_POSTGRES_DSN names; it skips t without one.
func pgSchemaDSN(t *testing.T) string {
	t.Helper()
	dsn := cmpOr(os.Getenv("QUOTA_TEST_POSTGRES_DSN"), os.Getenv("QUOTA_POSTGRES_DSN"))
	if dsn == "" {
		t.Skip("neither QUOTA_TEST_POSTGRES_DSN nor QUOTA_POSTGRES_DSN is set")
	}
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	schema := fmt.Sprintf("saas_test_%d", time.Now().UnixNano())
	if _, err := admin.Exec("CREATE SCHEMA " + schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Exec("DROP SCHEMA " + schema + " CASCADE") })
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return dsn + sep + "search_path=" + schema
}

// TestPostgres runs the upload story against PostgreSQL, in a schema of
// its own.
func TestPostgres(t *testing.T) {
	sqldb, err := sql.Open("pgx", pgSchemaDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	db := bun.NewDB(sqldb, pgdialect.New())
	defer db.Close()
	a := newTestAppDB(t, db)

	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for i := range 12 {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", fmt.Sprintf("%s/diagrams?name=d%d.png", a.srv.URL, i), strings.NewReader("diagram"))
			req.Header.Set("Authorization", "Bearer alice")
			res, err := a.srv.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			mu.Lock()
			codes[res.StatusCode]++
			mu.Unlock()
		})
	}
	wg.Wait()
	if codes[201] != 5 || codes[429] != 7 {
		t.Errorf("statuses %v; want 5 × 201 and 7 × 429", codes)
	}
	if res := a.do("PUT", "/admin/users/alice/plan", "admin", `{"plan":"PROFESSIONAL"}`); res.status != 200 {
		t.Fatalf("upgrade: %d %s", res.status, res.body)
	}
	var d Diagram
	res := a.upload("alice", "after.png", "abcd")
	if res.status != 201 {
		t.Fatalf("upload after the upgrade: %d %s", res.status, res.body)
	}
	res.json(t, &d)
	if res := a.do("DELETE", fmt.Sprintf("/diagrams/%d", d.ID), "alice", nil); res.status != 204 {
		t.Errorf("delete: %d %s", res.status, res.body)
	}
	if got := a.used("alice", "storage.bytes"); got != 5*int64(len("diagram")) {
		t.Errorf("storage used %d; want %d", got, 5*len("diagram"))
	}
	if res := a.upload("alice", "huge.png", bytes.Repeat([]byte("x"), 100<<20+1)); res.status != 413 {
		t.Errorf("upload over the PROFESSIONAL cap: %d; want 413", res.status)
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// TestPostgresPool: with 200 requests in flight, the app opened by
// openDB keeps to its pool (4 connections here) and answers every
// request; unbounded, it opened one connection per request, met
// PostgreSQL's max_connections and answered 503s.
func TestPostgresPool(t *testing.T) {
	const conns, requests = 4, 200
	db, _, closeDB, err := openDB("", pgSchemaDSN(t), conns)
	if err != nil {
		t.Fatal(err)
	}
	defer closeDB()
	if got := db.DB.Stats().MaxOpenConnections; got != conns {
		t.Fatalf("MaxOpenConnections = %d; want %d", got, conns)
	}
	a := newTestAppDB(t, db)
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	start := make(chan struct{})
	for range requests {
		wg.Go(func() {
			<-start
			req, _ := http.NewRequest("GET", a.srv.URL+"/procedures/1", nil)
			req.Header.Set("Authorization", "Bearer carol")
			res, err := a.srv.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			mu.Lock()
			codes[res.StatusCode]++
			mu.Unlock()
		})
	}
	close(start)
	wg.Wait()
	if codes[http.StatusOK] != requests {
		t.Errorf("statuses %v; want %d × 200", codes, requests)
	}
	st := db.DB.Stats()
	if st.OpenConnections > conns {
		t.Errorf("%d connections open; want at most %d", st.OpenConnections, conns)
	}
	t.Logf("pool: %d open, %d waits for a connection", st.OpenConnections, st.WaitCount)
	if got := a.used("carol", "procedure.view"); got != requests {
		t.Errorf("procedure views counted %d; want %d", got, requests)
	}
}

// TestPoolSize: the pool's size comes from -pg-max-conns, else
// QUOTA_POSTGRES_MAX_CONNS, else the default, and is at least 1.
func TestPoolSize(t *testing.T) {
	for _, tt := range []struct {
		args    []string
		env     string
		want    int
		wantErr bool
	}{
		{want: defaultPGMaxConns},
		{env: "25", want: 25},
		{args: []string{"-pg-max-conns", "7"}, env: "25", want: 7},
		{args: []string{"-pg-max-conns", "0"}, wantErr: true},
		{env: "many", wantErr: true},
		{env: "-3", wantErr: true},
	} {
		fs := flag.NewFlagSet("saas", flag.ContinueOnError)
		n := fs.Int("pg-max-conns", defaultPGMaxConns, "")
		if err := fs.Parse(tt.args); err != nil {
			t.Fatal(err)
		}
		got, err := poolSize(fs, *n, tt.env)
		if (err != nil) != tt.wantErr || got != tt.want && !tt.wantErr {
			t.Errorf("poolSize(%q, env %q) = %d, %v; want %d, error %t", tt.args, tt.env, got, err, tt.want, tt.wantErr)
		}
	}
}
