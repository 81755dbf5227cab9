package quotaotel_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/quotakit/quota"
	quotaotel "github.com/quotakit/quota/contrib/otel"
)

// harness is a Quota observed through the adapter, with an SDK meter
// provider read by hand and a tracer provider that records every span.
type harness struct {
	q      *quota.Quota
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
}

func newHarness(t *testing.T, store quota.Store, cfg quota.Config) *harness {
	t.Helper()
	h := &harness{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(h.reader))
	h.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(h.spans))
	t.Cleanup(func() {
		mp.Shutdown(context.Background())
		h.tp.Shutdown(context.Background())
	})
	obs, err := quotaotel.NewObserver(quotaotel.WithMeterProvider(mp), quotaotel.WithTracerProvider(h.tp))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Observer = obs
	if cfg.Plans == nil {
		cfg.Plans = []quota.Plan{{Name: "FREE", Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(10)}}}}
	}
	h.q, err = quota.New(store, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.q.Close() })
	return h
}

// metric returns the data of the metric called name, or nil.
func (h *harness) metric(t *testing.T, name string) metricdata.Aggregation {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := h.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != quotaotel.ScopeName {
			continue
		}
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m.Data
			}
		}
	}
	return nil
}

// sums returns the points of the counter name, by the value of key.
func (h *harness) sums(t *testing.T, name string, key attribute.Key) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	data := h.metric(t, name)
	if data == nil {
		return got
	}
	sum, ok := data.(metricdata.Sum[int64])
	if !ok {
		t.Fatalf("%s is a %T; want a Sum[int64]", name, data)
	}
	for _, p := range sum.DataPoints {
		v, _ := p.Attributes.Value(key)
		got[v.String()] += p.Value
	}
	return got
}

// spansNamed returns the ended spans called name.
func (h *harness) spansNamed(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range h.spans.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

// children returns the names of the ended spans whose parent is s.
func (h *harness) children(s sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, c := range h.spans.Ended() {
		if c.Parent().SpanID() == s.SpanContext().SpanID() {
			out = append(out, c.Name())
		}
	}
	return out
}

func attr(s sdktrace.ReadOnlySpan, key attribute.Key) string {
	for _, kv := range s.Attributes() {
		if kv.Key == key {
			return kv.Value.String()
		}
	}
	return ""
}

// TestScriptedRun consumes 13 uploads of a plan that allows 10 and reads
// back exactly 10 grants and 3 denials, in the metrics and in the spans:
// one span per call, whose children are the call's store operations.
func TestScriptedRun(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, quota.NewMemoryStore(), quota.Config{})
	if err := h.q.Subscribe(ctx, quota.Subscription{Subject: "alice", Plan: "FREE"}); err != nil {
		t.Fatal(err)
	}
	tracer := h.tp.Tracer("test")
	ctx, root := tracer.Start(ctx, "request")
	for range 13 {
		if _, err := h.q.Consume(ctx, quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 1}); err != nil {
			t.Fatal(err)
		}
	}
	root.End()

	got := h.sums(t, "quota.decisions", quotaotel.AttrOutcome)
	if len(got) != 2 || got["allowed"] != 10 || got["denied"] != 3 {
		t.Errorf("quota.decisions by outcome = %v; want allowed 10, denied 3", got)
	}
	if got := h.sums(t, "quota.decisions", quotaotel.AttrReason); got["limit_exceeded"] != 3 || got[""] != 10 {
		t.Errorf("quota.decisions by reason = %v; want 10 without a reason, 3 limit_exceeded", got)
	}
	for _, key := range []attribute.Key{quotaotel.AttrPlan, quotaotel.AttrAction, quotaotel.AttrMethod} {
		if got := h.sums(t, "quota.decisions", key); len(got) != 1 || got["FREE"]+got["diagram.upload"]+got["consume"] != 13 {
			t.Errorf("quota.decisions by %s = %v; want all 13 on one value", key, got)
		}
	}

	hist, ok := h.metric(t, "quota.store.duration").(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("quota.store.duration is missing or not a Histogram[float64]")
	}
	counts := map[string]uint64{}
	for _, p := range hist.DataPoints {
		op, _ := p.Attributes.Value(quotaotel.AttrStoreOperation)
		// Subscribe looks for an earlier subscription, and finds none.
		if typ, ok := p.Attributes.Value(quotaotel.AttrErrorType); ok && typ.AsString() != "no_subscription" {
			t.Errorf("store %s has error.type %s; want none", op.String(), typ.String())
		}
		counts[op.String()] += p.Count
	}
	if counts["Apply"] != 13 {
		t.Errorf("quota.store.duration counts = %v; want 13 Apply", counts)
	}

	consumes := h.spansNamed("quota.Consume")
	if len(consumes) != 13 {
		t.Fatalf("%d quota.Consume spans; want 13", len(consumes))
	}
	outcomes := map[string]int{}
	for i, s := range consumes {
		if s.Parent().SpanID() != root.SpanContext().SpanID() {
			t.Errorf("quota.Consume's parent is %v; want the caller's span", s.Parent().SpanID())
		}
		outcomes[attr(s, quotaotel.AttrOutcome)]++
		// The first reads the subscription, which the Quota then caches
		// (MemoryStore is a quota.Versioned store).
		want := []string{"quota.store.Apply"}
		if i == 0 {
			want = []string{"quota.store.GetSubscription", "quota.store.Apply"}
		}
		if kids := h.children(s); !slices.Equal(kids, want) {
			t.Errorf("quota.Consume #%d's children = %q; want its store calls, %q", i+1, kids, want)
		}
		if s.Status().Code != codes.Unset {
			t.Errorf("quota.Consume status = %v; want unset: a denial is not an error", s.Status())
		}
		if got := attr(s, quotaotel.AttrSubject); got != "" {
			t.Errorf("quota.subject = %q; want none without WithSubjectAttribute", got)
		}
	}
	if outcomes["allowed"] != 10 || outcomes["denied"] != 3 {
		t.Errorf("quota.Consume spans by quota.outcome = %v; want allowed 10, denied 3", outcomes)
	}
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, s := range consumes {
		byID[s.SpanContext().SpanID()] = s
	}
	for _, s := range h.spansNamed("quota.store.Apply") {
		p := byID[s.Parent().SpanID()]
		if p == nil {
			continue // Subscribe's
		}
		if s.StartTime().Before(p.StartTime()) || s.EndTime().After(p.EndTime()) || s.EndTime().Before(s.StartTime()) {
			t.Errorf("quota.store.Apply from %v to %v; want within its call, from %v to %v", s.StartTime(), s.EndTime(), p.StartTime(), p.EndTime())
		}
	}
}

// TestReservationSpans checks the spans of Reserve, Commit and Cancel,
// and the subject attribute.
func TestReservationSpans(t *testing.T) {
	ctx := context.Background()
	h := &harness{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	h.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(h.spans))
	obs, err := quotaotel.NewObserver(
		quotaotel.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(h.reader))),
		quotaotel.WithTracerProvider(h.tp),
		quotaotel.WithSubjectAttribute(),
	)
	if err != nil {
		t.Fatal(err)
	}
	h.q, err = quota.New(quota.NewMemoryStore(), quota.Config{
		Plans:       []quota.Plan{{Name: "FREE", Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(10)}}}},
		DefaultPlan: "FREE",
		Observer:    obs,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer h.q.Close()
	u := quota.Use{Subject: "bob", Action: "diagram.upload", Amount: 2}
	r1, err := h.q.Reserve(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r2, err := h.q.Reserve(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.q.CancelReservation(ctx, r2.ID); !errors.Is(err, quota.ErrReservationNotFound) {
		t.Fatalf("second Cancel = %v; want ErrReservationNotFound", err)
	}

	want := []struct {
		name, child string
	}{
		{"quota.Reserve", "quota.store.Apply"},
		{"quota.Commit", "quota.store.Commit"},
		{"quota.Reserve", "quota.store.Apply"},
		{"quota.Cancel", "quota.store.Cancel"},
		{"quota.Cancel", "quota.store.Cancel"},
	}
	var calls []sdktrace.ReadOnlySpan
	for _, s := range h.spans.Ended() {
		if s.Parent().IsValid() {
			continue
		}
		calls = append(calls, s)
	}
	if len(calls) != len(want) {
		t.Fatalf("%d root spans; want %d", len(calls), len(want))
	}
	for i, w := range want {
		s := calls[i]
		kids := h.children(s)
		if s.Name() != w.name || len(kids) == 0 || kids[len(kids)-1] != w.child {
			t.Errorf("span %d: %s with children %q; want %s ending with %s", i, s.Name(), kids, w.name, w.child)
		}
	}
	if got := attr(calls[0], quotaotel.AttrSubject); got != "bob" {
		t.Errorf("quota.Reserve quota.subject = %q; want bob", got)
	}
	if got := attr(calls[0], quotaotel.AttrLevel); got != "ok" {
		t.Errorf("quota.Reserve quota.level = %q; want ok", got)
	}
	if got := attr(calls[1], quotaotel.AttrReservation); got != r1.ID {
		t.Errorf("quota.Commit quota.reservation.id = %q; want %q", got, r1.ID)
	}
	last := calls[4]
	if last.Status().Code != codes.Error || attr(last, quotaotel.AttrErrorType) != "reservation_not_found" {
		t.Errorf("second quota.Cancel: status %v, error.type %q; want Error, reservation_not_found", last.Status(), attr(last, quotaotel.AttrErrorType))
	}
	for _, c := range h.spans.Ended() {
		if c.Name() == "quota.store.Cancel" && c.Parent().SpanID() == last.SpanContext().SpanID() {
			if c.Status().Code != codes.Unset || attr(c, quotaotel.AttrErrorType) != "reservation_not_found" {
				t.Errorf("its store call: status %v, error.type %q; want unset (an answer, not a failure), reservation_not_found", c.Status(), attr(c, quotaotel.AttrErrorType))
			}
		}
	}
}

// downStore fails every Apply, as a database that went away would.
type downStore struct{ quota.Store }

func (downStore) Apply(context.Context, *quota.Op) (quota.ApplyResult, error) {
	return quota.ApplyResult{}, errors.New("connection refused")
}

// TestStoreFailure checks that a store failure is counted as an error
// outcome and a store call with error.type unavailable, and marks both
// spans as errors.
func TestStoreFailure(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, downStore{quota.NewMemoryStore()}, quota.Config{DefaultPlan: "FREE"})
	ctx, root := h.tp.Tracer("test").Start(ctx, "request")
	_, err := h.q.Consume(ctx, quota.Use{Subject: "carol", Action: "diagram.upload", Amount: 1})
	root.End()
	if !errors.Is(err, quota.ErrStoreUnavailable) {
		t.Fatalf("Consume = %v; want ErrStoreUnavailable", err)
	}
	if got := h.sums(t, "quota.decisions", quotaotel.AttrOutcome); len(got) != 1 || got["error"] != 1 {
		t.Errorf("quota.decisions by outcome = %v; want error 1", got)
	}
	if got := h.sums(t, "quota.decisions", quotaotel.AttrPlan); got["FREE"] != 1 {
		t.Errorf("quota.decisions by plan = %v; want FREE 1: the plan was known", got)
	}
	hist := h.metric(t, "quota.store.duration").(metricdata.Histogram[float64])
	found := false
	for _, p := range hist.DataPoints {
		op, _ := p.Attributes.Value(quotaotel.AttrStoreOperation)
		typ, _ := p.Attributes.Value(quotaotel.AttrErrorType)
		if op.AsString() == "Apply" {
			found = true
			if typ.AsString() != "unavailable" || p.Count != 1 {
				t.Errorf("Apply: %d calls, error.type %q; want 1, unavailable", p.Count, typ.AsString())
			}
		}
	}
	if !found {
		t.Error("no Apply in quota.store.duration")
	}
	for _, s := range h.spans.Ended() {
		switch s.Name() {
		case "quota.Consume", "quota.store.Apply":
			if s.Status().Code != codes.Error || attr(s, quotaotel.AttrErrorType) != "unavailable" {
				t.Errorf("%s: status %v, error.type %q; want Error, unavailable", s.Name(), s.Status(), attr(s, quotaotel.AttrErrorType))
			}
		}
	}
}

// TestNotifications checks the deliveries counter and the spans of a
// failed delivery and its retry.
func TestNotifications(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, time.March, 10, 12, 0, 0, 0, time.UTC)
	var calls atomic.Int32
	h := newHarness(t, quota.NewMemoryStore(), quota.Config{
		DefaultPlan: "FREE",
		Now:         func() time.Time { mu.Lock(); defer mu.Unlock(); return now },
		NotifyPoll:  5 * time.Millisecond,
		Notify: func(context.Context, quota.Notification) error {
			if calls.Add(1) == 1 {
				return errors.New("mail server down")
			}
			return nil
		},
		OnError: func(error) {},
	})
	if _, err := h.q.Consume(context.Background(), quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 8}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return calls.Load() >= 1 })
	mu.Lock()
	now = now.Add(time.Hour) // the retry falls due
	mu.Unlock()
	waitFor(t, func() bool { return len(h.spansNamed("quota.notify")) >= 2 })
	if got := h.sums(t, "quota.notification.deliveries", quotaotel.AttrDelivery); len(got) != 2 || got["failed"] != 1 || got["delivered"] != 1 {
		t.Errorf("quota.notification.deliveries by outcome = %v; want failed 1, delivered 1", got)
	}
	spans := h.spansNamed("quota.notify")
	if spans[0].Status().Code != codes.Error || attr(spans[0], quotaotel.AttrAttempt) != "1" ||
		spans[1].Status().Code != codes.Unset || attr(spans[1], quotaotel.AttrAttempt) != "2" {
		t.Errorf("quota.notify spans: %v attempt %s, %v attempt %s; want Error 1, Unset 2",
			spans[0].Status(), attr(spans[0], quotaotel.AttrAttempt), spans[1].Status(), attr(spans[1], quotaotel.AttrAttempt))
	}
}

// waitFor waits up to 10 s for cond, which the notifier's goroutine
// makes true.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
