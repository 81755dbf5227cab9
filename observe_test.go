package quota_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/quotakit/quota"
)

// callKey marks the context that Observer.Call returns, to check that the
// rest of the call gets it.
type callKey struct{}

// recorder is an Observer that writes what it sees as lines, safe for
// concurrent use.
type recorder struct {
	mu    sync.Mutex
	lines []string
	store []quota.StoreEvent
}

func (r *recorder) add(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lines = append(r.lines, fmt.Sprintf(format, args...))
}

// take returns the lines seen since the last take.
func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.lines
	r.lines = nil
	return out
}

// in names the engine call whose context ctx is.
func in(ctx context.Context) string {
	if m, ok := ctx.Value(callKey{}).(string); ok {
		return m
	}
	return "-"
}

func errText(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

func (r *recorder) observer() *quota.Observer {
	return &quota.Observer{
		Call: func(ctx context.Context, e quota.CallEvent) (context.Context, func(error)) {
			r.add("call %s %s %s %d %s", e.Method, e.Subject, e.Action, e.Amount, e.Reservation)
			ctx = context.WithValue(ctx, callKey{}, e.Method)
			return ctx, func(err error) { r.add("end %s: %s", e.Method, errText(err)) }
		},
		Decision: func(ctx context.Context, e quota.DecisionEvent) {
			r.add("decision in %s: %s %s %s plan=%s amount=%d %s reason=%s level=%s err=%s",
				in(ctx), e.Method, e.Subject, e.Action, e.Plan, e.Amount, e.Outcome, e.Reason, e.Level, errText(e.Err))
		},
		StoreCall: func(ctx context.Context, e quota.StoreEvent) {
			r.mu.Lock()
			r.store = append(r.store, e)
			r.mu.Unlock()
			r.add("store in %s: %s batch=%d err=%s", in(ctx), e.Operation, e.Batch, errText(e.Err))
		},
		Delivery: func(ctx context.Context, e quota.DeliveryEvent) {
			r.add("delivery %s %s %s attempt=%d err=%s", e.Notification.Subject, e.Notification.Action, e.Notification.Level, e.Attempt, errText(e.Err))
		},
	}
}

var observePlans = []quota.Plan{{Name: "FREE", Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(5)}}}}

// ctxStore is a store that tells which engine call each Apply ran in.
type ctxStore struct {
	quota.Store
	r *recorder
}

func (s ctxStore) Apply(ctx context.Context, op *quota.Op) (quota.ApplyResult, error) {
	s.r.add("store sees ctx of %s", in(ctx))
	return s.Store.Apply(ctx, op)
}

// TestObserveCalls runs every kind of engine call once and checks what the
// Observer sees, in order: the call, its store calls and its decision in
// the context the call returned, then the call's end.
func TestObserveCalls(t *testing.T) {
	ctx := context.Background()
	r := &recorder{}
	now := time.Date(2026, time.March, 10, 12, 0, 0, 0, time.UTC)
	q, err := quota.New(ctxStore{quota.NewMemoryStore(), r}, quota.Config{
		Plans:    observePlans,
		Now:      func() time.Time { return now },
		Observer: r.observer(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Subscribe(ctx, quota.Subscription{Subject: "alice", Plan: "FREE"}); err != nil {
		t.Fatal(err)
	}
	wantSub := []string{
		"call subscribe alice  0 ",
		"store in subscribe: GetSubscription batch=1 err=<store err>",
		"store in subscribe: PutSubscription batch=1 err=<nil>",
		"end subscribe: <nil>",
	}
	gotSub := r.take()
	if len(gotSub) > 1 && strings.Contains(gotSub[1], "no subscription") { // the wording is the store's
		gotSub[1] = "store in subscribe: GetSubscription batch=1 err=<store err>"
	}
	if diff := cmp.Diff(wantSub, gotSub); diff != "" {
		t.Errorf("subscribe: observed (-want +got):\n%s", diff)
	}

	upload := quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 1}
	keyed := upload
	keyed.Key = "k1"
	// In want, <err> stands for the text of the error the step returns,
	// and <store err> for that of the store call's.
	steps := []struct {
		name    string
		run     func() error
		wantErr error
		want    []string
	}{
		{"check", func() error { _, err := q.Check(ctx, upload); return err }, nil, []string{
			"call check alice diagram.upload 1 ",
			"store in check: GetSubscription batch=1 err=<nil>",
			"store in check: Counters batch=1 err=<nil>",
			"decision in check: check alice diagram.upload plan=FREE amount=1 allowed reason= level=ok err=<nil>",
			"end check: <nil>",
		}},
		{"consume", func() error { _, err := q.Consume(ctx, keyed); return err }, nil, []string{
			"call consume alice diagram.upload 1 ",
			"store in consume: GetSubscription batch=1 err=<nil>",
			"store sees ctx of consume",
			"store in consume: Apply batch=1 err=<nil>",
			"decision in consume: consume alice diagram.upload plan=FREE amount=1 allowed reason= level=ok err=<nil>",
			"end consume: <nil>",
		}},
		{"replay", func() error { _, err := q.Consume(ctx, keyed); return err }, nil, []string{
			"call consume alice diagram.upload 1 ",
			"store in consume: GetSubscription batch=1 err=<nil>",
			"store sees ctx of consume",
			"store in consume: Apply batch=1 err=<nil>",
			"decision in consume: consume alice diagram.upload plan=FREE amount=1 replayed reason= level=ok err=<nil>",
			"end consume: <nil>",
		}},
		{"track", func() error {
			_, err := q.Track(ctx, quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 3})
			return err
		}, nil, []string{
			"call track alice diagram.upload 3 ",
			"store in track: GetSubscription batch=1 err=<nil>",
			"store sees ctx of track",
			"store in track: Apply batch=1 err=<nil>",
			"decision in track: track alice diagram.upload plan=FREE amount=3 allowed reason= level=warning err=<nil>",
			"end track: <nil>",
		}},
		{"reserve and commit", func() error {
			res, err := q.Reserve(ctx, upload)
			if err != nil {
				return err
			}
			r.add("reserved")
			_, err = q.CommitReservation(ctx, res.ID, 1)
			return err
		}, nil, []string{
			"call reserve alice diagram.upload 1 ",
			"store in reserve: GetSubscription batch=1 err=<nil>",
			"store sees ctx of reserve",
			"store in reserve: Apply batch=1 err=<nil>",
			"decision in reserve: reserve alice diagram.upload plan=FREE amount=1 allowed reason= level=exceeded err=<nil>",
			"end reserve: <nil>",
			"reserved",
			"call commit   1 <id>",
			"store in commit: Commit batch=1 err=<nil>",
			"end commit: <nil>",
		}},
		{"denied", func() error { _, err := q.Reserve(ctx, upload); return err }, nil, []string{
			"call reserve alice diagram.upload 1 ",
			"store in reserve: GetSubscription batch=1 err=<nil>",
			"store sees ctx of reserve",
			"store in reserve: Apply batch=1 err=<nil>",
			"decision in reserve: reserve alice diagram.upload plan=FREE amount=1 denied reason=limit_exceeded level=exceeded err=<nil>",
			"end reserve: <nil>",
		}},
		{"invalid", func() error {
			_, err := q.Consume(ctx, quota.Use{Subject: "alice", Action: "diagram.upload"})
			return err
		}, quota.ErrInvalidAmount, []string{
			"call consume alice diagram.upload 0 ",
			"decision in consume: consume alice diagram.upload plan= amount=0 error reason= level=ok err=<err>",
			"end consume: <err>",
		}},
		{"cancel unknown", func() error { return q.CancelReservation(ctx, "nope") }, quota.ErrReservationNotFound, []string{
			"call cancel   0 nope",
			"store in cancel: Cancel batch=1 err=<store err>",
			"end cancel: <err>",
		}},
	}
	for _, s := range steps {
		err := s.run()
		if s.wantErr == nil && err != nil || !errors.Is(err, s.wantErr) {
			t.Fatalf("%s: error %v; want %v", s.name, err, s.wantErr)
		}
		got := r.take()
		for i, l := range got {
			if f := strings.Fields(l); len(f) == 4 && f[0] == "call" && f[1] == "commit" {
				got[i] = "call commit   1 <id>" // reservation ids are random
			}
			if err != nil {
				got[i] = strings.ReplaceAll(got[i], err.Error(), "<err>")
			}
			if e := r.store[len(r.store)-1].Err; e != nil {
				got[i] = strings.ReplaceAll(got[i], e.Error(), "<store err>")
			}
		}
		if diff := cmp.Diff(s.want, got); diff != "" {
			t.Errorf("%s: observed (-want +got):\n%s", s.name, diff)
		}
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.store {
		if e.Start.IsZero() || e.Duration < 0 {
			t.Errorf("store event %s: Start %v, Duration %v; want a start and a duration", e.Operation, e.Start, e.Duration)
		}
	}
}

// spyStore is a MemoryStore, optional interfaces included, that tells
// which engine call each of its reads and writes ran in.
type spyStore struct {
	*quota.MemoryStore
	r *recorder
}

func (s spyStore) saw(ctx context.Context) { s.r.add("store sees ctx of %s", in(ctx)) }

func (s spyStore) Counters(ctx context.Context, keys []quota.CounterKey, now time.Time) ([]quota.Counter, error) {
	s.saw(ctx)
	return s.MemoryStore.Counters(ctx, keys, now)
}

func (s spyStore) PutSubscription(ctx context.Context, sub quota.Subscription) error {
	s.saw(ctx)
	return s.MemoryStore.PutSubscription(ctx, sub)
}

func (s spyStore) GetSubscription(ctx context.Context, subject string) (quota.Subscription, error) {
	s.saw(ctx)
	return s.MemoryStore.GetSubscription(ctx, subject)
}

func (s spyStore) Records(ctx context.Context, q quota.RecordQuery) ([]quota.Record, error) {
	s.saw(ctx)
	return s.MemoryStore.Records(ctx, q)
}

func (s spyStore) Sums(ctx context.Context, q quota.SumQuery) ([]quota.Sum, error) {
	s.saw(ctx)
	return s.MemoryStore.Sums(ctx, q)
}

func (s spyStore) Top(ctx context.Context, q quota.TopQuery) ([]quota.SubjectTotal, error) {
	s.saw(ctx)
	return s.MemoryStore.Top(ctx, q)
}

func (s spyStore) Prune(ctx context.Context, before time.Time, limit int) (int64, error) {
	s.saw(ctx)
	return s.MemoryStore.Prune(ctx, before, limit)
}

// TestObserveEveryCall checks that each method of Quota that reads or
// writes the store, beyond the uses of TestObserveCalls, is one engine
// call: Call once, with its method, subject and action, then its store
// calls, which the store and StoreCall see in the context Call returned,
// then its end, with the error the method returns.
func TestObserveEveryCall(t *testing.T) {
	ctx := context.Background()
	r := &recorder{}
	now := time.Date(2026, time.March, 10, 12, 0, 0, 0, time.UTC)
	q, err := quota.New(spyStore{quota.NewMemoryStore(), r}, quota.Config{
		Plans: []quota.Plan{
			{Name: "FREE", Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(5)}}, Features: []string{"api_access"}},
			{Name: "PRO", Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(100)}}},
		},
		Now:      func() time.Time { return now },
		Observer: r.observer(),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Subscribe(ctx, quota.Subscription{Subject: "alice", Plan: "FREE", Anchor: now}); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Consume(ctx, quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 2}); err != nil {
		t.Fatal(err)
	}
	r.take()

	// get and put are the lines of a GetSubscription and a
	// PutSubscription in method m; sees those of another operation.
	get := func(m string) []string {
		return []string{"store sees ctx of " + m, "store in " + m + ": GetSubscription batch=1 err=<nil>"}
	}
	put := func(m string) []string {
		return []string{"store sees ctx of " + m, "store in " + m + ": PutSubscription batch=1 err=<nil>"}
	}
	sees := func(m, op string) []string {
		return []string{"store sees ctx of " + m, "store in " + m + ": " + op + " batch=1 err=<nil>"}
	}
	lines := func(parts ...any) []string {
		var out []string
		for _, p := range parts {
			switch p := p.(type) {
			case string:
				out = append(out, p)
			case []string:
				out = append(out, p...)
			}
		}
		return out
	}
	day := 24 * time.Hour
	steps := []struct {
		name    string
		run     func() error
		wantErr error
		want    []string
	}{
		{"Subscribe", func() error {
			return q.Subscribe(ctx, quota.Subscription{Subject: "alice", Plan: "FREE"})
		}, nil, lines("call subscribe alice  0 ", get("subscribe"), put("subscribe"), "end subscribe: <nil>")},
		{"SchedulePlan", func() error {
			_, err := q.SchedulePlan(ctx, "alice", "PRO")
			return err
		}, nil, lines("call schedule_plan alice  0 ", get("schedule_plan"), put("schedule_plan"), "end schedule_plan: <nil>")},
		{"Subscription", func() error {
			_, err := q.Subscription(ctx, "alice")
			return err
		}, nil, lines("call subscription alice  0 ", get("subscription"), "end subscription: <nil>")},
		{"Subscription of nobody", func() error {
			_, err := q.Subscription(ctx, "nobody")
			return err
		}, quota.ErrNoSubscription, lines("call subscription nobody  0 ",
			"store sees ctx of subscription", "store in subscription: GetSubscription batch=1 err=<store err>",
			"end subscription: <err>")},
		{"HasFeature", func() error {
			ok, err := q.HasFeature(ctx, "alice", "api_access")
			if err == nil && !ok {
				err = errors.New("HasFeature = false; want true")
			}
			return err
		}, nil, lines("call has_feature alice  0 ", get("has_feature"), "end has_feature: <nil>")},
		{"Limits", func() error {
			_, err := q.Limits(ctx, "alice", "diagram.upload")
			return err
		}, nil, lines("call limits alice diagram.upload 0 ", get("limits"), "end limits: <nil>")},
		{"Usage", func() error {
			_, err := q.Usage(ctx, "alice")
			return err
		}, nil, lines("call usage alice  0 ", get("usage"), sees("usage", "Counters"), "end usage: <nil>")},
		{"Series", func() error {
			_, err := q.Series(ctx, quota.SeriesQuery{Subject: "alice", Action: "diagram.upload", From: now.Add(-day), To: now.Add(day)})
			return err
		}, nil, lines("call series alice diagram.upload 0 ", get("series"), sees("series", "Sums"), "end series: <nil>")},
		{"TopSubjects", func() error {
			_, err := q.TopSubjects(ctx, quota.TopQuery{Action: "diagram.upload", From: now.Add(-day), To: now.Add(day)})
			return err
		}, nil, lines("call top_subjects  diagram.upload 0 ", sees("top_subjects", "Top"), "end top_subjects: <nil>")},
		{"History", func() error {
			_, err := q.History(ctx, quota.HistoryQuery{Subject: "alice"})
			return err
		}, nil, lines("call history alice  0 ", sees("history", "Records"), "end history: <nil>")},
		{"Prune", func() error {
			_, err := q.Prune(ctx, now.Add(day), 0)
			return err
		}, nil, lines("call prune   0 ", sees("prune", "Prune"), "end prune: <nil>")},
		{"invalid", func() error {
			_, err := q.Usage(ctx, "")
			return err
		}, quota.ErrInvalidSubject, lines("call usage   0 ", "end usage: <err>")},
	}
	for _, s := range steps {
		r.mu.Lock()
		r.store = nil
		r.mu.Unlock()
		err := s.run()
		if s.wantErr == nil && err != nil || !errors.Is(err, s.wantErr) {
			t.Fatalf("%s: error %v; want %v", s.name, err, s.wantErr)
		}
		got := r.take()
		for i := range got {
			if err != nil {
				got[i] = strings.ReplaceAll(got[i], err.Error(), "<err>")
			}
			if n := len(r.store); n > 0 && r.store[n-1].Err != nil {
				got[i] = strings.ReplaceAll(got[i], r.store[n-1].Err.Error(), "<store err>")
			}
		}
		if diff := cmp.Diff(s.want, got); diff != "" {
			t.Errorf("%s: observed (-want +got):\n%s", s.name, diff)
		}
	}
}

// failingStore fails every Apply, as a database that went away would.
type failingStore struct{ quota.Store }

func (failingStore) Apply(context.Context, *quota.Op) (quota.ApplyResult, error) {
	return quota.ApplyResult{}, errors.New("connection refused")
}

// TestObserveStoreFailure checks that a failed store call is reported
// classified, and that the decision is an error that still names the
// plan.
func TestObserveStoreFailure(t *testing.T) {
	ctx := context.Background()
	r := &recorder{}
	q, err := quota.New(failingStore{quota.NewMemoryStore()}, quota.Config{Plans: observePlans, DefaultPlan: "FREE", Observer: r.observer()})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	_, err = q.Consume(ctx, quota.Use{Subject: "bob", Action: "diagram.upload", Amount: 1})
	if !errors.Is(err, quota.ErrStoreUnavailable) {
		t.Fatalf("Consume = %v; want ErrStoreUnavailable", err)
	}
	got := r.take()
	want := []string{
		"call consume bob diagram.upload 1 ",
		"store in consume: GetSubscription batch=1 err=quota: no subscription",
		"store in consume: Apply batch=1 err=store unavailable: connection refused",
		"decision in consume: consume bob diagram.upload plan=FREE amount=1 error reason= level=ok err=" + err.Error(),
		"end consume: " + err.Error(),
	}
	if len(got) > 1 && strings.HasPrefix(got[1], "store in consume: GetSubscription batch=1 err=") && strings.Contains(got[1], "no subscription") {
		got[1] = "store in consume: GetSubscription batch=1 err=quota: no subscription" // the wording is the store's
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("observed (-want +got):\n%s", diff)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.store {
		if e.Operation == "Apply" && !errors.Is(e.Err, quota.ErrStoreUnavailable) {
			t.Errorf("StoreEvent.Err = %v; want it to match ErrStoreUnavailable", e.Err)
		}
	}
}

// TestObserveNotifications checks that each attempt to deliver a
// notification is observed, the failed one and its retry.
func TestObserveNotifications(t *testing.T) {
	ctx := context.Background()
	r := &recorder{}
	var mu sync.Mutex
	now := time.Date(2026, time.March, 10, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	var calls atomic.Int32
	q, err := quota.New(quota.NewMemoryStore(), quota.Config{
		Plans:       observePlans,
		DefaultPlan: "FREE",
		Now:         clock,
		NotifyPoll:  5 * time.Millisecond,
		Observer:    &quota.Observer{Delivery: r.observer().Delivery},
		Notify: func(context.Context, quota.Notification) error {
			if calls.Add(1) == 1 {
				return errors.New("mail server down")
			}
			return nil
		},
		OnError: func(error) {},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, err := q.Consume(ctx, quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 4}); err != nil {
		t.Fatal(err)
	}
	waitLines(t, r, 1)
	mu.Lock()
	now = now.Add(time.Hour) // the retry falls due
	mu.Unlock()
	got := waitLines(t, r, 2)
	want := []string{
		"delivery alice diagram.upload warning attempt=1 err=mail server down",
		"delivery alice diagram.upload warning attempt=2 err=<nil>",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("observed (-want +got):\n%s", diff)
	}
}

// waitLines waits up to 10 s for r to hold n lines, and returns them.
func waitLines(t *testing.T, r *recorder, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		got := append([]string(nil), r.lines...)
		r.mu.Unlock()
		if len(got) >= n || time.Now().After(deadline) {
			if len(got) < n {
				t.Fatalf("observed %q after 10 s; want %d lines", got, n)
			}
			return got
		}
		time.Sleep(5 * time.Millisecond) // polls the notifier's goroutine
	}
}

// logRecorder is a slog.Handler that keeps the records it handles.
type logRecorder struct {
	mu   sync.Mutex
	recs []string
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r.Level.String()+" "+r.Message)
	return nil
}

func (h *logRecorder) take() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.recs
	h.recs = nil
	return out
}

// TestObserveLogger checks that the errors no hook receives, a failed
// notification's and a store failure that Middleware answers 503, go to
// Config.Logger, and only there.
func TestObserveLogger(t *testing.T) {
	h := &logRecorder{}
	def := &logRecorder{}
	old := slog.Default()
	slog.SetDefault(slog.New(def))
	t.Cleanup(func() { slog.SetDefault(old) })

	var failing atomic.Bool
	q, err := quota.New(switchStore{quota.NewMemoryStore(), &failing}, quota.Config{
		Plans:       observePlans,
		DefaultPlan: "FREE",
		NotifyPoll:  5 * time.Millisecond,
		Notify:      func(context.Context, quota.Notification) error { return errors.New("mail server down") },
		Logger:      slog.New(h),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, err := q.Consume(context.Background(), quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 5}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	var got []string
	for len(got) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		got = h.take()
	}
	if len(got) == 0 || got[0] != "ERROR quota: notification" {
		t.Errorf("Logger got %q; want the notification's error", got)
	}

	failing.Store(true)
	subject := func(*http.Request) (string, error) { return "alice", nil }
	mux := http.NewServeMux()
	mux.Handle("/up", quota.Middleware(q, "diagram.upload", subject)(http.NotFoundHandler()))
	mux.Handle("/usage", quota.UsageHandler(q, subject))
	for _, path := range []string{"/up", "/usage"} {
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, httptest.NewRequest("GET", path, nil))
		if w.Code != http.StatusServiceUnavailable {
			t.Errorf("GET %s: status %d; want 503", path, w.Code)
		}
	}
	got = h.take()
	want := []string{"ERROR quota middleware", "ERROR quota usage handler"}
	for _, l := range got {
		if strings.HasSuffix(l, "quota: notification") { // retries may log again
			continue
		}
		if len(want) == 0 || l != want[0] {
			t.Errorf("Logger got %q; want %q", l, want)
			continue
		}
		want = want[1:]
	}
	if len(want) > 0 {
		t.Errorf("Logger got %q; missing %q", got, want)
	}
	if d := def.take(); len(d) > 0 {
		t.Errorf("slog.Default got %q; want nothing: Config.Logger is set", d)
	}
}

// switchStore fails every call but Claim, Ack and Retry while failing is
// set.
type switchStore struct {
	*quota.MemoryStore
	failing *atomic.Bool
}

func (s switchStore) err() error {
	if s.failing.Load() {
		return errors.New("connection refused")
	}
	return nil
}

func (s switchStore) Apply(ctx context.Context, op *quota.Op) (quota.ApplyResult, error) {
	if err := s.err(); err != nil {
		return quota.ApplyResult{}, err
	}
	return s.MemoryStore.Apply(ctx, op)
}

func (s switchStore) GetSubscription(ctx context.Context, subject string) (quota.Subscription, error) {
	if err := s.err(); err != nil {
		return quota.Subscription{}, err
	}
	return s.MemoryStore.GetSubscription(ctx, subject)
}

// An Observer that counts decisions by outcome: a hook for metrics. The
// functions run on the caller's goroutine, so they only count.
func ExampleObserver() {
	var allowed, denied atomic.Int64
	q, err := quota.New(quota.NewMemoryStore(), quota.Config{
		Plans:       []quota.Plan{{Name: "FREE", Limits: map[string][]quota.Limit{"diagram.upload": {quota.PerMonth(5)}}}},
		DefaultPlan: "FREE",
		Observer: &quota.Observer{
			Decision: func(ctx context.Context, e quota.DecisionEvent) {
				switch e.Outcome {
				case quota.OutcomeAllowed:
					allowed.Add(1)
				case quota.OutcomeDenied:
					denied.Add(1)
				}
			},
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()
	for range 7 {
		if _, err := q.Consume(context.Background(), quota.Use{Subject: "alice", Action: "diagram.upload", Amount: 1}); err != nil {
			log.Fatal(err)
		}
	}
	fmt.Println("allowed:", allowed.Load(), "denied:", denied.Load())
	// Output:
	// allowed: 5 denied: 2
}

// BenchmarkConsume measures Consume over MemoryStore, on one subject,
// without an Observer (observer=nil, the default), and with Observers
// that do nothing but be called: decisions only, and all four functions,
// no-ops, Call returning the context it got. The difference between
// them is the price of the hooks; the price of the nil check is measured
// against the engine without hooks (see README, Observability, and
// BENCHMARKS.md, Observer). contrib/otel's BenchmarkConsume measures the
// OpenTelemetry adapter.
//
// Besides ns/op, the wall-clock time, it reports cpu-ns/op where Linux
// tells the CPU time of a thread: the time the benchmark's thread ran,
// without the time it waited for a CPU, which other processes of a busy
// machine make noisy.
func BenchmarkConsume(b *testing.B) {
	nop := func(context.Context, quota.DecisionEvent) {}
	observers := []struct {
		name string
		obs  *quota.Observer
	}{
		{"nil", nil},
		{"decisions", &quota.Observer{Decision: nop}},
		{"all", &quota.Observer{
			Call: func(ctx context.Context, e quota.CallEvent) (context.Context, func(error)) {
				return ctx, func(error) {}
			},
			Decision:  nop,
			StoreCall: func(context.Context, quota.StoreEvent) {},
			Delivery:  func(context.Context, quota.DeliveryEvent) {},
		}},
	}
	for _, o := range observers {
		b.Run("observer="+o.name, func(b *testing.B) {
			q, err := quota.New(quota.NewMemoryStore(), quota.Config{
				Plans: []quota.Plan{{Name: "PRO", Limits: map[string][]quota.Limit{
					"api.call": {quota.PerMonth(quota.MaxAmount)},
				}}},
				DefaultPlan: "PRO",
				Observer:    o.obs,
			})
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			ctx := context.Background()
			u := quota.Use{Subject: "subject-1", Action: "api.call", Amount: 1}
			b.ReportAllocs()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			cpu0, cpuOK := threadCPU()
			for b.Loop() {
				if d, err := q.Consume(ctx, u); err != nil || !d.Allowed {
					b.Fatalf("Consume = %+v, %v", d, err)
				}
			}
			if cpu1, ok := threadCPU(); ok && cpuOK {
				b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
			}
		})
	}
}

// threadCPU returns the CPU time of the calling thread, from Linux's
// /proc/thread-self/schedstat; ok is false elsewhere.
func threadCPU() (ns int64, ok bool) {
	b, err := os.ReadFile("/proc/thread-self/schedstat")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, false
	}
	ns, err = strconv.ParseInt(f[0], 10, 64)
	return ns, err == nil
}
