package quota_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quotakit/quota"
)

// clock is an injectable clock for tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

var testPlans = []quota.Plan{
	{
		Name: "FREE",
		Limits: map[string][]quota.Limit{
			"diagram.upload": {quota.PerMonth(5)},
			"ai.analysis":    {quota.PerDay(2), quota.PerMonth(3)},
			"storage.bytes":  {quota.Total(1000).WithMaxPerUse(100)},
			"procedure.view": {quota.PerMonth(quota.Unlimited)},
		},
	},
	{
		Name: "PRO",
		Limits: map[string][]quota.Limit{
			"diagram.upload": {quota.PerMonth(100)},
			"ai.analysis":    {quota.PerMonth(100)},
			"storage.bytes":  {quota.Total(100_000).WithMaxPerUse(10_000)},
			"procedure.view": {quota.PerMonth(quota.Unlimited)},
			"export.pdf":     {quota.PerMonth(50)},
		},
		Features: []string{"priority_support", "api_access"},
	},
}

func newTestQuota(t *testing.T, cfg quota.Config) (*quota.Quota, *clock) {
	t.Helper()
	c := &clock{t: time.Date(2026, time.March, 10, 12, 0, 0, 0, time.UTC)}
	if cfg.Plans == nil {
		cfg.Plans = testPlans
	}
	if cfg.Now == nil {
		cfg.Now = c.Now
	}
	q, err := quota.New(quota.NewMemoryStore(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return q, c
}

func subscribe(t *testing.T, q *quota.Quota, s quota.Subscription) {
	t.Helper()
	if err := q.Subscribe(context.Background(), s); err != nil {
		t.Fatalf("Subscribe(%+v): %v", s, err)
	}
}

func consume(t *testing.T, q *quota.Quota, u quota.Use) quota.Decision {
	t.Helper()
	d, err := q.Consume(context.Background(), u)
	if err != nil {
		t.Fatalf("Consume(%+v): %v", u, err)
	}
	return d
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name  string
		store quota.Store
		cfg   quota.Config
		want  error
	}{
		{"nil store", nil, quota.Config{Plans: testPlans}, quota.ErrNilStore},
		{"no plans", quota.NewMemoryStore(), quota.Config{}, quota.ErrInvalidPlan},
		{"unknown default plan", quota.NewMemoryStore(), quota.Config{Plans: testPlans, DefaultPlan: "GOLD"}, quota.ErrUnknownPlan},
		{"duplicate plan", quota.NewMemoryStore(), quota.Config{Plans: []quota.Plan{testPlans[0], testPlans[0]}}, quota.ErrInvalidPlan},
		{"negative max", quota.NewMemoryStore(), quota.Config{Plans: []quota.Plan{{Name: "X", Limits: map[string][]quota.Limit{"a": {quota.PerDay(-5)}}}}}, quota.ErrInvalidPlan},
		{"two limits per period", quota.NewMemoryStore(), quota.Config{Plans: []quota.Plan{{Name: "X", Limits: map[string][]quota.Limit{"a": {quota.PerDay(5), quota.PerDay(6)}}}}}, quota.ErrInvalidPlan},
		{"allocation mixed with period", quota.NewMemoryStore(), quota.Config{Plans: []quota.Plan{{Name: "X", Limits: map[string][]quota.Limit{"a": {quota.PerDay(5), quota.Total(6)}}}}}, quota.ErrInvalidPlan},
		{"bad action name", quota.NewMemoryStore(), quota.Config{Plans: []quota.Plan{{Name: "X", Limits: map[string][]quota.Limit{"a\x00": {quota.PerDay(5)}}}}}, quota.ErrInvalidPlan},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := quota.New(tt.store, tt.cfg)
			if !errors.Is(err, tt.want) {
				t.Errorf("New() error = %v; want %v", err, tt.want)
			}
		})
	}
}

func TestPlanErrorNamesPlanActionField(t *testing.T) {
	_, err := quota.New(quota.NewMemoryStore(), quota.Config{Plans: []quota.Plan{
		{Name: "FREE", Limits: map[string][]quota.Limit{"diagram.upload": {{Max: 5, Period: quota.PeriodMonth, MaxPerUse: -1}}}},
	}})
	var pe *quota.PlanError
	if !errors.As(err, &pe) {
		t.Fatalf("New() error = %v; want a *PlanError", err)
	}
	got := [3]string{pe.Plan, pe.Action, pe.Field}
	want := [3]string{"FREE", "diagram.upload", "max_per_use"}
	if got != want {
		t.Errorf("PlanError names %q; want %q", got, want)
	}
}

func TestSeveralLimitsAreChargedTogether(t *testing.T) {
	q, clk := newTestQuota(t, quota.Config{})
	subscribe(t, q, quota.Subscription{Subject: "u", Plan: "FREE"})
	use := quota.Use{Subject: "u", Action: "ai.analysis", Amount: 1}

	// 2 a day and 3 a month: the day limit refuses the third use of a day.
	for i, want := range []bool{true, true, false} {
		if d := consume(t, q, use); d.Allowed != want {
			t.Fatalf("use %d: Allowed = %t; want %t", i+1, d.Allowed, want)
		}
	}
	clk.Set(clk.Now().Add(24 * time.Hour))
	d := consume(t, q, use)
	if !d.Allowed || d.Used != 3 || d.Period != quota.PeriodMonth {
		t.Fatalf("next day: %+v; want allowed, the month limit decisive with 3 used", d)
	}
	// The month is full now; the day limit still has room.
	d = consume(t, q, use)
	if d.Allowed || d.Reason != quota.ReasonLimit || d.Period != quota.PeriodMonth || d.Used != 3 {
		t.Fatalf("fourth of the month: %+v; want denied by the month limit", d)
	}
	want := []int64{1, 3}
	var got []int64
	for _, l := range d.Limits.All() {
		got = append(got, l.Used)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("used per limit (-want +got):\n%s", diff)
	}
}

func TestPerUseCap(t *testing.T) {
	q, _ := newTestQuota(t, quota.Config{})
	subscribe(t, q, quota.Subscription{Subject: "u", Plan: "FREE"})
	ctx := context.Background()
	big := quota.Use{Subject: "u", Action: "storage.bytes", Amount: 101}
	for name, f := range map[string]func(context.Context, quota.Use) (quota.Decision, error){
		"Check": q.Check, "Consume": q.Consume,
	} {
		d, err := f(ctx, big)
		if err != nil || d.Allowed || d.Reason != quota.ReasonPerUse || d.MaxPerUse != 100 || d.Used != 0 {
			t.Errorf("%s(101 bytes) = %+v, %v; want denied for the per-use cap", name, d, err)
		}
	}
	r, err := q.Reserve(ctx, big)
	if err != nil || r.Decision.Allowed || r.ID != "" {
		t.Errorf("Reserve(101 bytes) = %+v, %v; want denied, nothing held", r, err)
	}
	// Track records what already happened, cap or not.
	if d, err := q.Track(ctx, big); err != nil || !d.Allowed || d.Used != 101 {
		t.Errorf("Track(101 bytes) = %+v, %v; want recorded", d, err)
	}
}

func TestAllocationRelease(t *testing.T) {
	q, _ := newTestQuota(t, quota.Config{})
	subscribe(t, q, quota.Subscription{Subject: "u", Plan: "FREE"})
	ctx := context.Background()
	for range 10 {
		consume(t, q, quota.Use{Subject: "u", Action: "storage.bytes", Amount: 100})
	}
	if d := consume(t, q, quota.Use{Subject: "u", Action: "storage.bytes", Amount: 1}); d.Allowed {
		t.Fatalf("over the allocation: %+v; want denied", d)
	}
	d := consume(t, q, quota.Use{Subject: "u", Action: "storage.bytes", Amount: -250})
	if !d.Allowed || d.Used != 750 || !d.ResetAt.IsZero() || !d.PeriodStart.IsZero() {
		t.Fatalf("release: %+v; want allowed, 750 used, no period", d)
	}
	d = consume(t, q, quota.Use{Subject: "u", Action: "storage.bytes", Amount: -751})
	if d.Allowed || d.Reason != quota.ReasonBelowZero || d.Used != 750 {
		t.Fatalf("release below zero: %+v; want denied below_zero", d)
	}
	if _, err := q.Track(ctx, quota.Use{Subject: "u", Action: "storage.bytes", Amount: -751}); err != nil {
		t.Fatalf("Track(below zero) error = %v", err)
	}
	if _, err := q.Consume(ctx, quota.Use{Subject: "u", Action: "diagram.upload", Amount: -1}); !errors.Is(err, quota.ErrInvalidAmount) {
		t.Fatalf("negative use of a counter: error = %v; want ErrInvalidAmount", err)
	}
}

func TestUpgradeCountsUsageAgainstNewLimits(t *testing.T) {
	q, clk := newTestQuota(t, quota.Config{})
	subscribe(t, q, quota.Subscription{Subject: "u", Plan: "FREE"})
	for range 5 {
		consume(t, q, quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1})
	}
	// Ten days later, a Subscribe without an anchor keeps the billing
	// month of the first one.
	clk.Set(clk.Now().Add(10 * 24 * time.Hour))
	subscribe(t, q, quota.Subscription{Subject: "u", Plan: "PRO"})
	d := consume(t, q, quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1})
	if !d.Allowed || d.Used != 6 || d.Limit != 100 || d.Plan != "PRO" {
		t.Fatalf("after upgrade: %+v; want allowed, 6 of 100 on PRO", d)
	}
}

func TestSchedulePlanDowngradesAtPeriodEnd(t *testing.T) {
	q, clk := newTestQuota(t, quota.Config{})
	ctx := context.Background()
	anchor := time.Date(2026, time.January, 31, 0, 0, 0, 0, time.UTC)
	subscribe(t, q, quota.Subscription{Subject: "u", Plan: "PRO", Anchor: anchor})
	for range 10 {
		consume(t, q, quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1})
	}
	at, err := q.SchedulePlan(ctx, "u", "FREE")
	if err != nil {
		t.Fatal(err)
	}
	// Now is 10 March; the month anchored on the 31st ends on 31 March.
	if want := time.Date(2026, time.March, 31, 0, 0, 0, 0, time.UTC); !at.Equal(want) {
		t.Fatalf("SchedulePlan() = %v; want %v", at, want)
	}
	if d := consume(t, q, quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1}); !d.Allowed || d.Plan != "PRO" {
		t.Fatalf("before the change: %+v; want PRO still", d)
	}
	if ok, _ := q.HasFeature(ctx, "u", "api_access"); !ok {
		t.Errorf("HasFeature(api_access) before the change = false; want true")
	}
	clk.Set(at.Add(-time.Nanosecond))
	if d := consume(t, q, quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1}); d.Plan != "PRO" {
		t.Fatalf("1ns before the change: plan %s; want PRO", d.Plan)
	}
	clk.Set(at)
	d := consume(t, q, quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1})
	if d.Plan != "FREE" || d.Used != 1 || d.Limit != 5 || !d.PeriodStart.Equal(at) {
		t.Fatalf("at the change: %+v; want FREE, a new window from %v", d, at)
	}
	if ok, _ := q.HasFeature(ctx, "u", "api_access"); ok {
		t.Errorf("HasFeature(api_access) after the change = true; want false")
	}
	s, err := q.Subscription(ctx, "u")
	if err != nil || s.NextPlan != "FREE" || !s.NextPlanAt.Equal(at) {
		t.Errorf("Subscription() = %+v, %v; want the schedule kept", s, err)
	}
	// A later Subscribe replaces the schedule.
	subscribe(t, q, quota.Subscription{Subject: "u", Plan: "PRO", Anchor: anchor})
	if d := consume(t, q, quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1}); d.Plan != "PRO" {
		t.Errorf("after a new Subscribe: plan %s; want PRO", d.Plan)
	}
}

func TestOverrides(t *testing.T) {
	q, _ := newTestQuota(t, quota.Config{})
	ctx := context.Background()
	subscribe(t, q, quota.Subscription{Subject: "u", Plan: "FREE", Overrides: map[string][]quota.Limit{
		"diagram.upload": {quota.PerMonth(7)},
		"export.pdf":     {quota.PerDay(1)}, // not on FREE: granted to this subject alone
	}})
	for range 7 {
		consume(t, q, quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1})
	}
	if d := consume(t, q, quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1}); d.Allowed || d.Limit != 7 {
		t.Errorf("eighth upload: %+v; want denied at 7", d)
	}
	if d := consume(t, q, quota.Use{Subject: "u", Action: "export.pdf", Amount: 1}); !d.Allowed || d.Limit != 1 {
		t.Errorf("export.pdf: %+v; want allowed by the override", d)
	}
	r, err := q.Usage(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, a := range r.Actions {
		actions = append(actions, a.Action)
	}
	want := []string{"ai.analysis", "diagram.upload", "export.pdf", "procedure.view", "storage.bytes"}
	if diff := cmp.Diff(want, actions); diff != "" {
		t.Errorf("Usage actions (-want +got):\n%s", diff)
	}
	err = q.Subscribe(ctx, quota.Subscription{Subject: "u", Plan: "FREE", Overrides: map[string][]quota.Limit{"nope": {quota.PerDay(1)}}})
	if !errors.Is(err, quota.ErrUnknownAction) {
		t.Errorf("override of an unknown action: error = %v; want ErrUnknownAction", err)
	}
	err = q.Subscribe(ctx, quota.Subscription{Subject: "u", Plan: "FREE", Overrides: map[string][]quota.Limit{"export.pdf": {quota.PerDay(-2)}}})
	if !errors.Is(err, quota.ErrInvalidSubscription) || !errors.Is(err, quota.ErrInvalidPlan) {
		t.Errorf("invalid override: error = %v; want ErrInvalidSubscription and ErrInvalidPlan", err)
	}
}

func TestActionMissingFromPlanIsBlocked(t *testing.T) {
	q, _ := newTestQuota(t, quota.Config{})
	subscribe(t, q, quota.Subscription{Subject: "u", Plan: "FREE"})
	d := consume(t, q, quota.Use{Subject: "u", Action: "export.pdf", Amount: 1})
	if d.Allowed || d.Limit != 0 || d.Level != quota.LevelExceeded {
		t.Errorf("export.pdf on FREE: %+v; want denied with limit 0", d)
	}
	_, err := q.Consume(context.Background(), quota.Use{Subject: "u", Action: "export.svg", Amount: 1})
	if !errors.Is(err, quota.ErrUnknownAction) {
		t.Errorf("unknown action: error = %v; want ErrUnknownAction", err)
	}
}

func TestLevels(t *testing.T) {
	tests := []struct {
		name       string
		thresholds quota.Thresholds
		used       int64 // of 100
		want       quota.Level
	}{
		{"default ok", quota.Thresholds{}, 79, quota.LevelOK},
		{"default warning", quota.Thresholds{}, 80, quota.LevelWarning},
		{"default critical", quota.Thresholds{}, 90, quota.LevelCritical},
		{"default exceeded", quota.Thresholds{}, 100, quota.LevelExceeded},
		{"custom ok", quota.Thresholds{Warning: 50, Critical: 75, Exceeded: 95}, 49, quota.LevelOK},
		{"custom warning", quota.Thresholds{Warning: 50, Critical: 75, Exceeded: 95}, 50, quota.LevelWarning},
		{"custom critical", quota.Thresholds{Warning: 50, Critical: 75, Exceeded: 95}, 75, quota.LevelCritical},
		{"custom exceeded", quota.Thresholds{Warning: 50, Critical: 75, Exceeded: 95}, 95, quota.LevelExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, _ := newTestQuota(t, quota.Config{Thresholds: tt.thresholds})
			subscribe(t, q, quota.Subscription{Subject: "u", Plan: "PRO"})
			d := consume(t, q, quota.Use{Subject: "u", Action: "diagram.upload", Amount: tt.used})
			if d.Level != tt.want || d.Percent != float64(tt.used) {
				t.Errorf("level at %d%% = %s (%v%%); want %s", tt.used, d.Level, d.Percent, tt.want)
			}
		})
	}
	if _, err := quota.New(quota.NewMemoryStore(), quota.Config{Plans: testPlans, Thresholds: quota.Thresholds{Warning: 90, Critical: 80, Exceeded: 100}}); err == nil {
		t.Errorf("New with warning > critical: no error")
	}
}

func TestUnlimited(t *testing.T) {
	q, _ := newTestQuota(t, quota.Config{})
	subscribe(t, q, quota.Subscription{Subject: "u", Plan: "FREE"})
	d := consume(t, q, quota.Use{Subject: "u", Action: "procedure.view", Amount: 1_000_000})
	want := quota.LimitStatus{
		Period:      quota.PeriodMonth,
		Limit:       quota.Unlimited,
		Used:        1_000_000,
		Remaining:   quota.Unlimited,
		Level:       quota.LevelOK,
		PeriodStart: d.PeriodStart,
		ResetAt:     d.ResetAt,
	}
	if diff := cmp.Diff(want, d.LimitStatus); diff != "" || !d.Allowed {
		t.Errorf("unlimited use (-want +got):\n%s", diff)
	}
}

func TestDecisionErrAndRetryAfter(t *testing.T) {
	q, clk := newTestQuota(t, quota.Config{})
	subscribe(t, q, quota.Subscription{Subject: "u", Plan: "FREE", Anchor: time.Date(2026, time.January, 15, 0, 0, 0, 0, time.UTC)})
	d := consume(t, q, quota.Use{Subject: "u", Action: "diagram.upload", Amount: 5})
	if d.Err() != nil || d.RetryAfter(clk.Now()) != 0 {
		t.Fatalf("allowed decision: Err() = %v, RetryAfter = %v; want nil, 0", d.Err(), d.RetryAfter(clk.Now()))
	}
	d = consume(t, q, quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1})
	var ee *quota.ExceededError
	if err := d.Err(); !errors.Is(err, quota.ErrExceeded) || !errors.As(err, &ee) || ee.Decision.Used != 5 {
		t.Fatalf("denied decision: Err() = %v; want an *ExceededError matching ErrExceeded", err)
	}
	// Now is 10 March 12:00; the window resets on 15 March 00:00.
	if got, want := d.RetryAfter(clk.Now()), 4*24*time.Hour+12*time.Hour; got != want {
		t.Errorf("RetryAfter() = %v; want %v", got, want)
	}
	if got, want := d.RetryAfter(clk.Now().Add(-time.Millisecond)), 4*24*time.Hour+12*time.Hour+time.Second; got != want {
		t.Errorf("RetryAfter() rounds up: %v; want %v", got, want)
	}
}

// The engine caches windows; a use on either side of a boundary must land
// in its own window.
func TestWindowBoundaries(t *testing.T) {
	q, clk := newTestQuota(t, quota.Config{})
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Skipf("no time zone data: %v", err)
	}
	subscribe(t, q, quota.Subscription{Subject: "u", Plan: "FREE", TimeZone: "America/New_York", Anchor: time.Date(2026, time.January, 31, 15, 0, 0, 0, ny)})
	// The window anchored on the 31st in New York ends at midnight local
	// time on 31 March.
	end := time.Date(2026, time.March, 31, 0, 0, 0, 0, ny)
	for _, tt := range []struct {
		at        time.Time
		wantStart time.Time
		wantUsed  int64
	}{
		{end.Add(-time.Nanosecond), time.Date(2026, time.February, 28, 0, 0, 0, 0, ny), 1},
		{end, end, 1},
		{end.Add(-time.Nanosecond), time.Date(2026, time.February, 28, 0, 0, 0, 0, ny), 2},
		{end.Add(time.Hour), end, 2},
	} {
		clk.Set(tt.at)
		d := consume(t, q, quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1})
		if !d.PeriodStart.Equal(tt.wantStart) || d.Used != tt.wantUsed {
			t.Errorf("at %v: window from %v with %d used; want from %v with %d", tt.at, d.PeriodStart, d.Used, tt.wantStart, tt.wantUsed)
		}
	}
}

func TestHasFeature(t *testing.T) {
	q, _ := newTestQuota(t, quota.Config{DefaultPlan: "FREE"})
	ctx := context.Background()
	subscribe(t, q, quota.Subscription{Subject: "pro", Plan: "PRO"})
	tests := []struct {
		subject, feature string
		want             bool
	}{
		{"pro", "api_access", true},
		{"pro", "white_labeling", false},
		{"nobody", "api_access", false}, // default plan FREE
	}
	for _, tt := range tests {
		got, err := q.HasFeature(ctx, tt.subject, tt.feature)
		if err != nil || got != tt.want {
			t.Errorf("HasFeature(%q, %q) = %t, %v; want %t", tt.subject, tt.feature, got, err, tt.want)
		}
	}
	if _, err := q.HasFeature(ctx, "pro", ""); !errors.Is(err, quota.ErrInvalidName) {
		t.Errorf("HasFeature(empty) error = %v; want ErrInvalidName", err)
	}
}

func TestSubscribeValidates(t *testing.T) {
	q, _ := newTestQuota(t, quota.Config{})
	ctx := context.Background()
	tests := []struct {
		name string
		sub  quota.Subscription
		want error
	}{
		{"empty subject", quota.Subscription{Plan: "FREE"}, quota.ErrInvalidSubject},
		{"unknown plan", quota.Subscription{Subject: "u", Plan: "GOLD"}, quota.ErrUnknownPlan},
		{"unknown zone", quota.Subscription{Subject: "u", Plan: "FREE", TimeZone: "Mars/Olympus_Mons"}, quota.ErrInvalidSubscription},
	}
	for _, tt := range tests {
		if err := q.Subscribe(ctx, tt.sub); !errors.Is(err, tt.want) {
			t.Errorf("%s: Subscribe() error = %v; want %v", tt.name, err, tt.want)
		}
	}
	if _, err := q.Subscription(ctx, "u"); !errors.Is(err, quota.ErrNoSubscription) {
		t.Errorf("after failed Subscribes: Subscription() error = %v; want ErrNoSubscription", err)
	}
}

func TestQuotaClose(t *testing.T) {
	q, _ := newTestQuota(t, quota.Config{DefaultPlan: "FREE"})
	ctx := context.Background()
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Errorf("second Close() = %v; want nil", err)
	}
	if _, err := q.Consume(ctx, quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1}); !errors.Is(err, quota.ErrClosed) {
		t.Errorf("Consume after Close: error = %v; want ErrClosed", err)
	}
	if _, err := q.Usage(ctx, "u"); !errors.Is(err, quota.ErrClosed) {
		t.Errorf("Usage after Close: error = %v; want ErrClosed", err)
	}
}

func TestUsageReportsPreviousWindow(t *testing.T) {
	q, clk := newTestQuota(t, quota.Config{})
	ctx := context.Background()
	anchor := time.Date(2026, time.January, 31, 0, 0, 0, 0, time.UTC)
	subscribe(t, q, quota.Subscription{Subject: "u", Plan: "FREE", Anchor: anchor})
	clk.Set(time.Date(2026, time.February, 20, 8, 0, 0, 0, time.UTC))
	consume(t, q, quota.Use{Subject: "u", Action: "diagram.upload", Amount: 3})
	consume(t, q, quota.Use{Subject: "u", Action: "storage.bytes", Amount: 40})
	clk.Set(time.Date(2026, time.March, 2, 8, 0, 0, 0, time.UTC))
	consume(t, q, quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1})
	r, err := q.Usage(ctx, "u")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]quota.WindowUsage{}
	for _, a := range r.Actions {
		got[a.Action] = a.Previous
	}
	want := map[string][]quota.WindowUsage{
		// The window anchored on 31 January ran from 28 February to 31
		// March; the one before it from 31 January.
		"diagram.upload": {{Start: anchor, End: time.Date(2026, time.February, 28, 0, 0, 0, 0, time.UTC), Used: 3}},
		"ai.analysis": {
			{Start: time.Date(2026, time.March, 1, 0, 0, 0, 0, time.UTC), End: time.Date(2026, time.March, 2, 0, 0, 0, 0, time.UTC)},
			{Start: anchor, End: time.Date(2026, time.February, 28, 0, 0, 0, 0, time.UTC)},
		},
		"procedure.view": {{Start: anchor, End: time.Date(2026, time.February, 28, 0, 0, 0, 0, time.UTC)}},
		"storage.bytes":  {{}}, // an allocation has no previous window
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Usage previous windows (-want +got):\n%s", diff)
	}
}

// A slow, failing or panicking hook never fails or delays a use: uses
// only queue notifications; Close delivers them; errors and panics reach
// OnError.
func TestNotifyHookNeverBlocksUses(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var levels []quota.Level
	var errs []error
	q, _ := newTestQuota(t, quota.Config{
		Notify: func(ctx context.Context, n quota.Notification) error {
			<-release
			mu.Lock()
			levels = append(levels, n.Level)
			mu.Unlock()
			switch n.Level {
			case quota.LevelCritical:
				return errors.New("mail server down")
			case quota.LevelExceeded:
				panic("hook bug")
			}
			return nil
		},
		OnError: func(err error) {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		},
	})
	subscribe(t, q, quota.Subscription{Subject: "u", Plan: "PRO"})
	// All three levels are crossed while the hook is blocked: if a use
	// waited for the hook, this would never return.
	for _, n := range []int64{80, 10, 10} {
		consume(t, q, quota.Use{Subject: "u", Action: "diagram.upload", Amount: n})
	}
	close(release)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff([]quota.Level{quota.LevelWarning, quota.LevelCritical, quota.LevelExceeded}, levels); diff != "" {
		t.Errorf("levels notified (-want +got):\n%s", diff)
	}
	if len(errs) != 2 {
		t.Fatalf("OnError got %d errors (%v); want 2: the hook's error and its panic", len(errs), errs)
	}
	for i, want := range []string{"mail server down", "panic: hook bug"} {
		if !strings.Contains(errs[i].Error(), want) {
			t.Errorf("OnError error %d = %v; want it to mention %q", i, errs[i], want)
		}
	}
}

func TestNotifyMarksFollowThresholds(t *testing.T) {
	var mu sync.Mutex
	var used []int64
	q, _ := newTestQuota(t, quota.Config{
		Thresholds: quota.Thresholds{Warning: 33.3, Critical: 66.7, Exceeded: 100},
		Notify: func(_ context.Context, n quota.Notification) error {
			mu.Lock()
			defer mu.Unlock()
			used = append(used, n.Used)
			return nil
		},
	})
	subscribe(t, q, quota.Subscription{Subject: "u", Plan: "FREE"})
	// FREE allows 3 AI analyses a month and 2 a day: 33.3 % of 3 is 1 use,
	// 66.7 % is 2.01, so 3; of 2 a day, 1 and 2.
	for range 3 {
		d := consume(t, q, quota.Use{Subject: "u", Action: "ai.analysis", Amount: 1})
		if !d.Allowed && d.Used != 2 {
			t.Fatalf("decision %+v", d)
		}
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	// Use 1: day warning (1 of 2), month warning (1 of 3). Use 2: day
	// critical and exceeded (2 of 2) at once, one notification for the
	// highest; the month's 2 of 3 is 66.67 %, under 66.7. Use 3 is
	// refused.
	if diff := cmp.Diff([]int64{1, 1, 2}, used); diff != "" {
		t.Errorf("used at each notification (-want +got):\n%s", diff)
	}
}

// TestErrorsNameThePackageOnce checks that an error wrapped by the Quota
// over a store's error names the package and the operation once each,
// and still matches its sentinel.
func TestErrorsNameThePackageOnce(t *testing.T) {
	st := quota.NewMemoryStore()
	q2, err := quota.New(st, quota.Config{Plans: testPlans})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	for _, tc := range []struct {
		name string
		call func() error
		want error
		op   string
	}{
		{"consume on a closed store", func() error {
			_, err := q2.Consume(t.Context(), quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1})
			return err
		}, quota.ErrClosed, "consume"},
		{"subscribe to an unknown plan", func() error {
			return q2.Subscribe(t.Context(), quota.Subscription{Subject: "u", Plan: "GOLD"})
		}, quota.ErrUnknownPlan, "subscribe"},
		{"usage on a closed store", func() error {
			_, err := q2.Usage(t.Context(), "u")
			return err
		}, quota.ErrClosed, "usage"},
		{"check with an empty subject", func() error {
			_, err := q2.Check(t.Context(), quota.Use{Action: "diagram.upload", Amount: 1})
			return err
		}, quota.ErrInvalidSubject, "check"},
	} {
		err := tc.call()
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v; want an error matching %v", tc.name, err, tc.want)
			continue
		}
		msg := err.Error()
		if n := strings.Count(msg, "quota:"); n != 1 || !strings.HasPrefix(msg, "quota: ") {
			t.Errorf("%s: %q names the package %d times; want once, first", tc.name, msg, n)
		}
		if n := strings.Count(msg, tc.op); n != 1 {
			t.Errorf("%s: %q names %q %d times; want once", tc.name, msg, tc.op, n)
		}
	}
}

// allRecords returns the records of subject (and of action, unless "")
// oldest first, walking History to its end.
func allRecords(ctx context.Context, q *quota.Quota, subject, action string) ([]quota.Record, error) {
	var out []quota.Record
	for cursor := ""; ; {
		p, err := q.History(ctx, quota.HistoryQuery{Subject: subject, Action: action, Limit: quota.MaxHistoryPage, Cursor: cursor})
		if err != nil {
			return nil, err
		}
		out = append(out, p.Records...)
		if p.Next == "" {
			slices.Reverse(out)
			return out, nil
		}
		cursor = p.Next
	}
}

// TestMetadataInvalidUTF8 checks that metadata holding text that is not
// valid UTF-8, in a value or a key, is refused with ErrInvalidMetadata and
// writes nothing, instead of being rewritten (two payloads becoming one).
func TestMetadataInvalidUTF8(t *testing.T) {
	type payload struct{ Note string }
	for _, md := range []map[string]any{
		{"v": "a\xff"},
		{"a\xfe": 1},
		{"v": []any{"ok", map[string]any{"w": "b\xc3"}}},
		{"v": map[string]string{"k\xff": "x"}},
		{"v": payload{Note: "c\xff"}},
		{"v": &payload{Note: "d\xff"}},
		{"v": json.RawMessage("\"e\xff\"")},
	} {
		q, _ := newTestQuota(t, quota.Config{Plans: testPlans, DefaultPlan: "FREE"})
		u := quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1, Key: "k", Metadata: md}
		if _, err := q.Consume(t.Context(), u); !errors.Is(err, quota.ErrInvalidMetadata) {
			t.Errorf("Consume(metadata %q) = %v; want ErrInvalidMetadata", fmt.Sprint(md), err)
		}
		if recs, err := allRecords(t.Context(), q, "u", ""); err != nil || len(recs) != 0 {
			t.Errorf("after Consume(metadata %q): %d records, %v; want none", fmt.Sprint(md), len(recs), err)
		}
	}
	// A valid payload, then the same key with other invalid bytes: a
	// conflict would need the first payload; here the second is refused
	// before it reaches the store.
	q, _ := newTestQuota(t, quota.Config{Plans: testPlans, DefaultPlan: "FREE"})
	if _, err := q.Consume(t.Context(), quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1, Key: "k", Metadata: map[string]any{"v": "a\uFFFD"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Consume(t.Context(), quota.Use{Subject: "u", Action: "diagram.upload", Amount: 1, Key: "k", Metadata: map[string]any{"v": "a\xfe"}}); !errors.Is(err, quota.ErrInvalidMetadata) {
		t.Errorf("Consume(key k again, metadata a\\xfe) = %v; want ErrInvalidMetadata, not a replay", err)
	}
}

// brokenStore fails GetSubscription and Commit with err.
type brokenStore struct {
	quota.Store
	err error
}

func (s brokenStore) GetSubscription(context.Context, string) (quota.Subscription, error) {
	return quota.Subscription{}, s.err
}

func (s brokenStore) Commit(context.Context, string, int64, time.Time) (quota.Record, error) {
	return quota.Record{}, s.err
}

// TestStoreUnavailable checks which store errors the Quota reports as
// ErrStoreUnavailable: failures of the store, not its answers, nor the
// caller's own cancellation.
func TestStoreUnavailable(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		name        string
		err         error
		ctx         context.Context
		unavailable bool
	}{
		{"a driver error", errors.New("read tcp 127.0.0.1:5432: connection reset by peer"), t.Context(), true},
		{"a timeout of the store", context.DeadlineExceeded, t.Context(), true},
		{"no subscription", quota.ErrNoSubscription, t.Context(), false},
		{"a closed store", quota.ErrClosed, t.Context(), false},
		{"the caller's cancellation", context.Canceled, cancelled, false},
	} {
		st := brokenStore{Store: quota.NewMemoryStore(), err: tc.err}
		q, err := quota.New(st, quota.Config{Plans: testPlans})
		if err != nil {
			t.Fatal(err)
		}
		_, err = q.Usage(tc.ctx, "u")
		if !errors.Is(err, tc.err) {
			t.Errorf("%s: Usage = %v; want an error matching %v", tc.name, err, tc.err)
		}
		if got := errors.Is(err, quota.ErrStoreUnavailable); got != tc.unavailable {
			t.Errorf("%s: Usage = %v; matches ErrStoreUnavailable: %t, want %t", tc.name, err, got, tc.unavailable)
		}
		_, err = q.CommitReservation(tc.ctx, "h", 1)
		if got := errors.Is(err, quota.ErrStoreUnavailable); got != tc.unavailable {
			t.Errorf("%s: CommitReservation = %v; matches ErrStoreUnavailable: %t, want %t", tc.name, err, got, tc.unavailable)
		}
	}
}

// lateFailStore applies every hold, then fails as a cut connection does
// after the server committed.
type lateFailStore struct{ *quota.MemoryStore }

func (s lateFailStore) Apply(ctx context.Context, op *quota.Op) (quota.ApplyResult, error) {
	res, err := s.MemoryStore.Apply(ctx, op)
	if err == nil && op.Hold != nil {
		return quota.ApplyResult{}, errors.New("read tcp: connection reset by peer")
	}
	return res, err
}

// TestOrphanedHoldReleased checks that a hold whose Reserve failed after
// the store applied it is released in the background, not left to count
// until its TTL.
func TestOrphanedHoldReleased(t *testing.T) {
	mem := quota.NewMemoryStore()
	q, err := quota.New(lateFailStore{mem}, quota.Config{Plans: testPlans, DefaultPlan: "FREE"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = q.Reserve(t.Context(), quota.Use{Subject: "u", Action: "diagram.upload", Amount: 4})
	if !errors.Is(err, quota.ErrStoreUnavailable) {
		t.Fatalf("Reserve over a store that fails late = %v; want ErrStoreUnavailable", err)
	}
	q.Close() // waits for the release in flight
	q2, err := quota.New(mem, quota.Config{Plans: testPlans, DefaultPlan: "FREE"})
	if err != nil {
		t.Fatal(err)
	}
	defer q2.Close()
	r, err := q2.Usage(t.Context(), "u")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range r.Actions {
		if a.Action == "diagram.upload" && a.Used != 0 {
			t.Errorf("after a failed Reserve(4): %d used or held; want 0, the hold released", a.Used)
		}
	}
}
