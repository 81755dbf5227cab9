package main

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// scrape reads GET /metrics and returns the value of every series of
// the metrics whose name starts with prefix, by its line up to the value
// ("name{labels}").
func (a *testApp) scrape(prefix string) map[string]float64 {
	a.t.Helper()
	res := a.do("GET", "/metrics", "", nil)
	if res.status != http.StatusOK {
		a.t.Fatalf("GET /metrics: %d %s", res.status, res.body)
	}
	if ct := res.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		a.t.Errorf("GET /metrics: Content-Type %q; want Prometheus's text format", ct)
	}
	got := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(string(res.body)))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			a.t.Fatalf("GET /metrics: %q: %v", line, err)
		}
		got[line[:i]] = v
	}
	return got
}

// TestMetrics takes alice to the 429 and reads the counts back from
// GET /metrics: every upload is two reservations, diagram.upload and
// storage.bytes, and the refused one is counted as denied, with its
// reason; every store call is in the latency histogram.
func TestMetrics(t *testing.T) {
	a := newTestApp(t)
	for i := 1; i <= 6; i++ {
		a.upload("alice", fmt.Sprintf("pump-%d.png", i), "P&ID")
	}
	decision := func(action, outcome, reason string) string {
		labels := fmt.Sprintf(`quota_action=%q,quota_method="reserve",quota_outcome=%q,quota_plan="FREE"`, action, outcome)
		if reason != "" {
			labels += fmt.Sprintf(`,quota_reason=%q`, reason)
		}
		return "quota_decisions_total{" + labels + "}"
	}
	want := map[string]float64{
		decision("diagram.upload", "allowed", ""):              5,
		decision("storage.bytes", "allowed", ""):               5,
		decision("diagram.upload", "denied", "limit_exceeded"): 1,
	}
	got := a.scrape("quota_decisions_total")
	for series, n := range want {
		if got[series] != n {
			t.Errorf("%s = %v; want %v", series, got[series], n)
		}
	}
	if len(got) != len(want) {
		t.Errorf("quota_decisions_total has %d series; want %d:\n%v", len(got), len(want), got)
	}

	// 11 reservations, each one Apply; the 10 granted are committed.
	counts := a.scrape("quota_store_duration_seconds_count")
	for op, n := range map[string]float64{"Apply": 11, "Commit": 10} {
		if series := `quota_store_duration_seconds_count{quota_store_operation="` + op + `"}`; counts[series] != n {
			t.Errorf("%s = %v; want %v", series, counts[series], n)
		}
	}
}
