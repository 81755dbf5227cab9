package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quotakit/quota"
)

// chromiumPath returns Debian's chromium, which .ci/run installs. Without
// it the browser tests are skipped, or fail when $CI is set.
func chromiumPath(t *testing.T) string {
	t.Helper()
	const path = "/usr/bin/chromium"
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing (CI is set): apt-get install chromium", path)
		}
		t.Skipf("%s is missing: apt-get install chromium to run the browser test", path)
	}
	return path
}

// dumpDOM loads url in headless Chromium and returns the DOM once the
// page's scripts are done: virtual time does not advance while a fetch
// is pending, so the budget is spent after the page has drawn itself.
func dumpDOM(t *testing.T, chromium, url string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "saas-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	// Not t.TempDir: a Chromium helper may still be writing the profile
	// when the test ends, and its removal must not fail the test.
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
		"--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
		"--disable-extensions", "--disable-dev-shm-usage", "--no-proxy-server", "--lang=en-US",
		"--user-data-dir="+filepath.Join(dir, "profile"),
		"--virtual-time-budget=5000", "--dump-dom", url)
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+dir, "XDG_CACHE_HOME="+dir)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %s: %v\nstderr:\n%s", url, err, lastLines(stderr.String(), 30))
	}
	t.Logf("chromium loaded %s in %v", url, time.Since(start).Round(time.Millisecond))
	return stdout.String()
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// node is an element or a text node of a dumped DOM.
type node struct {
	tag    string // "" for text
	attr   map[string]string
	text   string
	kids   []*node
	parent *node
}

// parseDOM parses Chromium's serialization of a DOM, leniently: HTML's
// void elements and valueless attributes are accepted.
func parseDOM(s string) (*node, error) {
	d := xml.NewDecoder(strings.NewReader(s))
	d.Strict = false
	d.AutoClose = xml.HTMLAutoClose
	d.Entity = xml.HTMLEntity
	root := &node{tag: "#document"}
	cur := root
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			return root, nil
		}
		if err != nil {
			return nil, err
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			n := &node{tag: strings.ToLower(tok.Name.Local), attr: map[string]string{}, parent: cur}
			for _, a := range tok.Attr {
				n.attr[strings.ToLower(a.Name.Local)] = a.Value
			}
			cur.kids = append(cur.kids, n)
			cur = n
		case xml.EndElement:
			for n := cur; n != root; n = n.parent {
				if n.tag == strings.ToLower(tok.Name.Local) {
					cur = n.parent
					break
				}
			}
		case xml.CharData:
			cur.kids = append(cur.kids, &node{text: string(tok), parent: cur})
		}
	}
}

// all returns the elements under n (n included) for which match is true,
// in document order.
func (n *node) all(match func(*node) bool) []*node {
	var out []*node
	var walk func(*node)
	walk = func(n *node) {
		if n.tag != "" && match(n) {
			out = append(out, n)
		}
		for _, k := range n.kids {
			walk(k)
		}
	}
	walk(n)
	return out
}

// testID returns the elements under n whose data-testid is id.
func (n *node) testID(id string) []*node {
	return n.all(func(e *node) bool { return e.attr["data-testid"] == id })
}

// visible returns the elements of ns that a user sees: neither they nor
// an ancestor is hidden, or a dialog that is not open.
func visible(ns []*node) []*node {
	var out []*node
outer:
	for _, n := range ns {
		for e := n; e != nil; e = e.parent {
			if _, hidden := e.attr["hidden"]; hidden {
				continue outer
			}
			if _, open := e.attr["open"]; e.tag == "dialog" && !open {
				continue outer
			}
		}
		out = append(out, n)
	}
	return out
}

// textContent returns the text of n, with white space collapsed, as
// shown: without style sheets and tooltips.
func (n *node) textContent() string {
	var b strings.Builder
	var walk func(*node)
	walk = func(n *node) {
		if n.tag == "" {
			b.WriteString(n.text)
			b.WriteByte(' ')
		}
		if n.tag == "style" || n.tag == "title" {
			return // not shown in the page (a bar's title is its tooltip)
		}
		for _, k := range n.kids {
			walk(k)
		}
	}
	walk(n)
	return strings.Join(strings.Fields(b.String()), " ")
}

// page is a dumped dashboard.
type page struct {
	t   *testing.T
	dom string
	doc *node
}

func loadPage(t *testing.T, chromium, url string) *page {
	t.Helper()
	dom := dumpDOM(t, chromium, url)
	doc, err := parseDOM(dom)
	if err != nil {
		t.Fatalf("parse the DOM: %v\n%s", err, dom)
	}
	return &page{t: t, dom: dom, doc: doc}
}

// one returns the only visible element with data-testid id under within
// (the page if nil), failing the test if there is not exactly one.
func (p *page) one(within *node, id string) *node {
	p.t.Helper()
	if within == nil {
		within = p.doc
	}
	ns := visible(within.testID(id))
	if len(ns) != 1 {
		p.t.Fatalf("%d visible elements with data-testid=%q; want 1\nDOM:\n%s", len(ns), id, p.dom)
	}
	return ns[0]
}

// card returns the visible card of action.
func (p *page) card(action string) *node {
	p.t.Helper()
	for _, c := range visible(p.doc.testID("usage-card")) {
		if c.attr["data-action"] == action {
			return c
		}
	}
	p.t.Fatalf("no card for %s\nDOM:\n%s", action, p.dom)
	return nil
}

// state returns the page's state and status line.
func (p *page) state() (string, string) {
	bodies := p.doc.all(func(n *node) bool { return n.tag == "body" })
	if len(bodies) != 1 {
		p.t.Fatalf("%d bodies\nDOM:\n%s", len(bodies), p.dom)
	}
	return bodies[0].attr["data-state"], p.one(nil, "status").textContent()
}

// TestDashboardInChromium drives bob (PROFESSIONAL: 100 AI analyses a
// month, no DXF export, no API) to 50 %, 85 % and 100 % of his analyses
// through the API, and after each step loads the dashboard in headless
// Chromium to check what he sees: the cards, the warning states and the
// 30-day chart.
func TestDashboardInChromium(t *testing.T) {
	chromium := chromiumPath(t)
	now := time.Date(2026, time.November, 26, 12, 0, 0, 0, time.UTC)
	a := newTestApp(t, func(c *Config) { c.Now = func() time.Time { return now } })

	// Other usage: storage in human units, an unlimited action.
	if res := a.upload("bob", "pump.png", strings.Repeat("x", 1536)); res.status != http.StatusCreated {
		t.Fatalf("upload: %d %s", res.status, res.body)
	}
	if res := a.do("GET", "/procedures/1", "bob", nil); res.status != http.StatusOK {
		t.Fatalf("procedure: %d %s", res.status, res.body)
	}

	used := 0
	for _, step := range []dashStep{
		{used: 50, level: "ok"},
		{used: 85, level: "warning", toast: true},
		{used: 100, level: "exceeded", banner: true, modal: true},
	} {
		for ; used < step.used; used++ {
			if res := a.do("POST", "/ai/ask", "bob", `{"question":"Where is the bypass?"}`); res.status != http.StatusOK {
				t.Fatalf("question %d: %d %s", used+1, res.status, res.body)
			}
		}
		t.Run(fmt.Sprintf("%d%%", step.used), func(t *testing.T) {
			p := loadPage(t, chromium, a.srv.URL+"/dashboard?user=bob")
			if state, status := p.state(); state != "ready" || status != "As of 26 Nov 2026, 12:00 (UTC)." {
				t.Fatalf("page state %q, status %q; want ready, as of 26 Nov 2026, 12:00\nDOM:\n%s", state, status, p.dom)
			}
			if got := p.one(nil, "whoami").textContent(); got != "bob · PROFESSIONAL plan" {
				t.Errorf("whoami = %q", got)
			}
			checkAnalysisCard(t, p, used, step.level)
			checkOtherCards(t, p)
			checkWarnings(t, p, step)
			checkChart(t, p, now, used)
		})
	}
}

// dashStep is a step of TestDashboardInChromium: bob's AI analyses used,
// and what the dashboard shows then.
type dashStep struct {
	used                 int
	level                string
	toast, banner, modal bool
}

// checkAnalysisCard checks the card of the action pushed to its limit.
func checkAnalysisCard(t *testing.T, p *page, used int, level string) {
	t.Helper()
	c := p.card("ai.analysis")
	for id, want := range map[string]string{
		"usage-figures":   fmt.Sprintf("%d / 100", used),
		"usage-remaining": fmt.Sprintf("%d left", 100-used),
		"usage-percent":   fmt.Sprintf("%d %%", used),
		"usage-reset":     "Resets on 1 Dec 2026",
		"usage-previous":  "Last month: 0",
	} {
		if got := p.one(c, id).textContent(); got != want {
			t.Errorf("ai.analysis %s = %q; want %q", id, got, want)
		}
	}
	if got := c.attr["data-level"]; got != level {
		t.Errorf("ai.analysis level %q; want %q", got, level)
	}
	if got := p.one(c, "usage-bar").attr["aria-valuenow"]; got != strconv.Itoa(used) {
		t.Errorf("ai.analysis progress bar at %s; want %d", got, used)
	}
}

// checkOtherCards checks the other kinds of card: an allocation in
// bytes, an unlimited action, actions the plan does not include.
func checkOtherCards(t *testing.T, p *page) {
	t.Helper()
	for _, want := range []struct{ action, id, text string }{
		{"storage.bytes", "usage-figures", "1.5 KiB / 50 GiB"},
		{"storage.bytes", "usage-reset", "Allocation: it does not reset"},
		{"diagram.upload", "usage-figures", "1 / 100"},
		{"procedure.view", "usage-figures", "1 used"},
		{"procedure.view", "usage-remaining", "Unlimited"},
		{"export.dxf", "usage-figures", "Not in your plan"},
		{"export.dxf", "usage-upgrade", upgrades["PROFESSIONAL/export.dxf"]},
		{"api.call", "usage-figures", "Not in your plan"},
	} {
		if got := p.one(p.card(want.action), want.id).textContent(); got != want.text {
			t.Errorf("%s %s = %q; want %q", want.action, want.id, got, want.text)
		}
	}
	if n := len(visible(p.doc.testID("usage-card"))); n != 8 {
		t.Errorf("%d cards; want 8, one per action", n)
	}
}

// checkWarnings checks the warning states. The actions that
// PROFESSIONAL does not include (limit 0, so "exceeded") never raise one.
func checkWarnings(t *testing.T, p *page, step dashStep) {
	t.Helper()
	toasts := visible(p.doc.testID("toast"))
	banners := visible(p.doc.testID("banner"))
	modal := visible(p.doc.testID("limit-modal"))
	if got := len(toasts) == 1; got != step.toast || len(toasts) > 1 {
		t.Errorf("%d toasts; want toast %t", len(toasts), step.toast)
	}
	if step.toast && len(toasts) == 1 {
		want := "You have used 85 % of your AI analyses this month: 85 of 100."
		if got := toasts[0].textContent(); !strings.HasPrefix(got, want) || toasts[0].attr["data-action"] != "ai.analysis" {
			t.Errorf("toast %q (%s); want %q", got, toasts[0].attr["data-action"], want)
		}
	}
	if got := len(banners) == 1; got != step.banner || len(banners) > 1 {
		t.Errorf("%d banners; want banner %t", len(banners), step.banner)
	}
	if step.banner && len(banners) == 1 {
		want := "You have used all your AI analyses this month (100 of 100). Resets on 1 Dec 2026."
		if got := banners[0].textContent(); got != want {
			t.Errorf("banner %q; want %q", got, want)
		}
	}
	if got := len(modal) == 1; got != step.modal {
		t.Errorf("modal shown %t; want %t", got, step.modal)
	}
	if step.modal && len(modal) == 1 {
		if got, want := p.one(modal[0], "upgrade-prompt").textContent(), upgrades["PROFESSIONAL/ai.analysis"]; got != want {
			t.Errorf("upgrade prompt %q; want %q", got, want)
		}
		if got := p.one(modal[0], "modal-limits").textContent(); !strings.HasPrefix(got, "AI analyses: 100 of 100") {
			t.Errorf("modal lists %q; want AI analyses: 100 of 100 first", got)
		}
		if href := p.one(modal[0], "upgrade-button").attr["href"]; href != upgradeURL {
			t.Errorf("upgrade button leads to %q; want %q", href, upgradeURL)
		}
	}
}

// checkChart checks the chart: the most used action, 30 days ending
// today.
func checkChart(t *testing.T, p *page, now time.Time, used int) {
	t.Helper()
	chart := p.one(nil, "usage-chart")
	if got := chart.attr["data-action"]; got != "ai.analysis" {
		t.Errorf("chart shows %q; want ai.analysis, the most used", got)
	}
	bars := chart.testID("chart-bar")
	if len(bars) != 30 {
		t.Fatalf("chart has %d bars; want 30", len(bars))
	}
	for i, b := range bars {
		day := now.AddDate(0, 0, i-29).Format(time.DateOnly)
		want := "0"
		if i == 29 {
			want = strconv.Itoa(used)
		}
		if b.attr["data-day"] != day || b.attr["data-amount"] != want {
			t.Errorf("bar %d: day %s amount %s; want %s and %s", i, b.attr["data-day"], b.attr["data-amount"], day, want)
		}
	}
	if h, _ := strconv.ParseFloat(bars[29].attr["height"], 64); h <= 0 {
		t.Errorf("today's bar has height %v", h)
	}
}

// TestDashboardSignedOut loads the page without a user, and as a user
// the demo does not know: the sign-in form and a message, nothing else.
func TestDashboardSignedOut(t *testing.T) {
	chromium := chromiumPath(t)
	a := newTestApp(t)
	for _, tt := range []struct{ query, status string }{
		{"", "Sign in with a demo user (alice, bob or carol) to see your usage."},
		{"?user=mallory", `There is no user "mallory" in this demo.`},
	} {
		p := loadPage(t, chromium, a.srv.URL+"/dashboard"+tt.query)
		if state, status := p.state(); state != "signed-out" || status != tt.status {
			t.Errorf("%q: state %q, status %q; want signed-out, %q", tt.query, state, status, tt.status)
		}
		p.one(nil, "signin")
		for _, id := range []string{"usage-card", "toast", "banner", "limit-modal", "usage-chart"} {
			if n := len(visible(p.doc.testID(id))); n != 0 {
				t.Errorf("%q: %d visible %s; want none", tt.query, n, id)
			}
		}
	}
}

// TestDashboardRoutes checks the page, its assets and its JSON without a
// browser.
func TestDashboardRoutes(t *testing.T) {
	a := newTestApp(t)
	checkDashboardPage(t, a)
	checkDashboardAssets(t, a)
	checkDashboardJSON(t, a)
}

// checkDashboardPage checks the page's headers and the upgrade messages
// it embeds.
func checkDashboardPage(t *testing.T, a *testApp) {
	t.Helper()
	res := a.do("GET", "/dashboard", "", nil)
	if res.status != 200 || !strings.HasPrefix(res.header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /dashboard: %d %v", res.status, res.header)
	}
	for k, want := range map[string]string{
		"Content-Security-Policy": dashboardCSP,
		"Referrer-Policy":         "no-referrer",
		"X-Content-Type-Options":  "nosniff",
	} {
		if got := res.header.Get(k); got != want {
			t.Errorf("%s = %q; want %q", k, got, want)
		}
	}
	// The upgrade messages are embedded as JSON, escaped for HTML.
	doc, err := parseDOM(string(res.body))
	if err != nil {
		t.Fatal(err)
	}
	scripts := doc.all(func(n *node) bool { return n.attr["id"] == "upgrades" })
	if len(scripts) != 1 {
		t.Fatalf("%d upgrade scripts; want 1", len(scripts))
	}
	var got map[string]string
	if err := json.Unmarshal([]byte(scripts[0].textContent()), &got); err != nil || got["FREE/ai.analysis"] != upgrades["FREE/ai.analysis"] || len(got) != len(upgrades) {
		t.Errorf("embedded upgrades %v, %v", got, err)
	}
}

// checkDashboardAssets checks the page's assets, what is not one, and
// the redirect of /.
func checkDashboardAssets(t *testing.T, a *testApp) {
	t.Helper()
	for path, ctype := range map[string]string{
		"/assets/dashboard.js":  "text/javascript; charset=utf-8",
		"/assets/dashboard.css": "text/css; charset=utf-8",
	} {
		res := a.do("GET", path, "", nil)
		if res.status != 200 || res.header.Get("Content-Type") != ctype || len(res.body) < 1000 {
			t.Errorf("GET %s: %d %q, %d bytes", path, res.status, res.header.Get("Content-Type"), len(res.body))
		}
	}
	for _, path := range []string{"/assets/dashboard.html", "/assets/nope.js", "/assets/..%2fapp.go"} {
		if res := a.do("GET", path, "", nil); res.status != 404 {
			t.Errorf("GET %s: %d; want 404", path, res.status)
		}
	}
	noFollow := *a.srv.Client()
	noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	if res, err := noFollow.Get(a.srv.URL + "/"); err != nil {
		t.Error(err)
	} else {
		res.Body.Close()
		if res.StatusCode != http.StatusFound || res.Header.Get("Location") != "/dashboard" {
			t.Errorf("GET /: %d %v; want a redirect to /dashboard", res.StatusCode, res.Header)
		}
	}
}

// checkDashboardJSON checks /me/dashboard.json: 401 like the other
// routes, 405, 400, and the report.
func checkDashboardJSON(t *testing.T, a *testApp) {
	t.Helper()
	if res := a.do("GET", "/me/dashboard.json", "mallory", nil); res.status != 401 || res.header.Get("WWW-Authenticate") == "" {
		t.Errorf("as mallory: %d %v; want 401 with WWW-Authenticate", res.status, res.header)
	}
	if res := a.do("POST", "/me/dashboard.json", "alice", nil); res.status != 405 || res.header.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %d %v; want 405", res.status, res.header)
	}
	if res := a.do("GET", "/me/dashboard.json?days=400", "alice", nil); res.status != 400 {
		t.Errorf("days=400: %d; want 400", res.status)
	}
	a.do("POST", "/ai/ask", "alice", `{"question":"q"}`)
	res := a.do("GET", "/me/dashboard.json?days=30", "alice", nil)
	if res.status != 200 || res.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("GET /me/dashboard.json: %d %v %s", res.status, res.header, res.body)
	}
	var rep quota.UsageResponse
	res.json(t, &rep)
	if rep.Subject != "alice" || rep.Plan != "FREE" || rep.TimeZone != "UTC" || len(rep.Actions) != 8 || len(rep.Daily) != 8 {
		t.Fatalf("dashboard JSON: %s", res.body)
	}
	for _, s := range rep.Daily {
		if len(s.Points) != 30 {
			t.Errorf("%s: %d days; want 30", s.Action, len(s.Points))
		}
		if last := s.Points[29]; s.Action == "ai.analysis" && (last.Amount != 1 || last.Count != 1) {
			t.Errorf("ai.analysis today: %+v; want 1", last)
		}
	}
}
