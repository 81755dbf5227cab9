package quotatest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/quotakit/quota"
)

// collector gathers notifications, safe for concurrent use.
type collector struct {
	mu    sync.Mutex
	notes []quota.Notification
}

func (c *collector) notify(_ context.Context, n quota.Notification) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.notes = append(c.notes, n)
	return nil
}

func (c *collector) take() []quota.Notification {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.notes
	c.notes = nil
	return out
}

// testNotifications checks threshold notifications: 64 goroutines push
// one subject from 0 to 120 % of a limit, and each level fires exactly
// once, for the use that reached it; the next window fires again; a
// refused use and a replay fire nothing.
func testNotifications(t *testing.T, s *suite) {
	e := s.env(t)
	action := e.name("n")
	var got collector
	if _, ok := e.store.(quota.Outbox); !ok {
		// Notifications need an outbox: New must say so.
		_, err := quota.New(e.store, quota.Config{Plans: []quota.Plan{plan("P", map[string][]quota.Limit{action: {quota.PerMonth(10)}})}, Notify: got.notify})
		if err == nil {
			t.Fatal("New(Notify) over a store that is not an Outbox = nil error; want an error")
		}
		return
	}
	q := e.quota(t, quota.Config{
		Plans:  []quota.Plan{plan("P", map[string][]quota.Limit{action: {quota.PerMonth(1000)}, e.name("u"): {perMonthUnlimited}})},
		Notify: got.notify,
	})
	subj := e.name("s")
	e.subscribe(t, q, subj, "P")

	// 64 goroutines x 19 Track(1): from 0 to 1216, past 120 %; then a
	// refused Consume.
	outs := race(64, 19, func(g, i int) outcome {
		u := quota.Use{Subject: subj, Action: action, Amount: 1}
		d, err := q.Track(e.ctx, u)
		return outcome{use: u, d: d, err: err}
	})
	if c := tally(outs); c.errors != 0 || c.allowed != 64*19 {
		t.Fatalf("64 x 19 Track(1): %d allowed, %d errors (first %v); want %d, 0", c.allowed, c.errors, c.firstErr, 64*19)
	}
	if d := consume(t, e.ctx, q, quota.Use{Subject: subj, Action: action, Amount: 1}); d.Allowed {
		t.Fatalf("Consume past the limit = allowed; want denied")
	}
	// Unlimited limits never notify.
	track(t, e.ctx, q, quota.Use{Subject: subj, Action: e.name("u"), Amount: 1 << 40})
	drain(t, q)

	feb := anchor0.AddDate(0, 1, 0)
	note := func(level quota.Level, used int64, start, end time.Time, at time.Time) quota.Notification {
		return quota.Notification{Subject: subj, Action: action, Plan: "P", Level: level, Used: used, Limit: 1000,
			Period: quota.PeriodMonth, PeriodStart: start, PeriodEnd: end, At: at}
	}
	want := []quota.Notification{
		note(quota.LevelWarning, 800, anchor0, feb, t0),
		note(quota.LevelCritical, 900, anchor0, feb, t0),
		note(quota.LevelExceeded, 1000, anchor0, feb, t0),
	}
	first := got.take()
	if diff := cmp.Diff(want, first, cmpTime, ignoreNoteID); diff != "" {
		t.Errorf("notifications of one window (-want +got):\n%s", diff)
	}
	ids := map[string]bool{}
	for _, n := range first {
		if n.ID == "" || ids[n.ID] {
			t.Errorf("notification ID %q: want a distinct, non-empty ID", n.ID)
		}
		ids[n.ID] = true
	}

	// The next window notifies again, from a new Quota over the same
	// store (another process): the marks of January do not carry over,
	// and a replay notifies nothing.
	var got2 collector
	q2 := e.quota(t, quota.Config{
		Plans:  []quota.Plan{plan("P", map[string][]quota.Limit{action: {quota.PerMonth(1000)}, e.name("u"): {perMonthUnlimited}})},
		Notify: got2.notify,
	})
	at := e.clock.Add(feb.Sub(e.clock.Now()) + time.Hour)
	track(t, e.ctx, q2, quota.Use{Subject: subj, Action: action, Amount: 850, Key: "k"})
	track(t, e.ctx, q2, quota.Use{Subject: subj, Action: action, Amount: 850, Key: "k"})
	drain(t, q2)
	mar := anchor0.AddDate(0, 2, 0)
	want = []quota.Notification{note(quota.LevelWarning, 850, feb, mar, at)}
	if diff := cmp.Diff(want, got2.take(), cmpTime, ignoreNoteID); diff != "" {
		t.Errorf("notifications of the next window (-want +got):\n%s", diff)
	}
	if n := got.take(); len(n) != 0 {
		t.Errorf("the first Quota got %d more notifications after Close; want 0", len(n))
	}
}

// drain closes q, which delivers the queued notifications.
func drain(t *testing.T, q *quota.Quota) {
	t.Helper()
	if err := q.Close(); err != nil {
		t.Fatalf("Quota.Close() = %v", err)
	}
}

// ignoreNoteID leaves Notification.ID out of comparisons: each store numbers
// its notifications its own way.
var ignoreNoteID = cmpopts.IgnoreFields(quota.Notification{}, "ID")

// testNotificationsTrue checks that notifications tell what was used: a
// reservation counts when committed, never when cancelled; one use that
// crosses several thresholds sends one notification, for the highest; a
// failed delivery is retried with the same ID.
func testNotificationsTrue(t *testing.T, s *suite) {
	e := s.env(t)
	if _, ok := e.store.(quota.Outbox); !ok {
		t.Log("the store is not an Outbox: no notifications to check")
		return
	}
	action := e.name("t")
	var got collector
	fail := atomic.Int32{}
	fail.Store(1)
	hook := func(ctx context.Context, n quota.Notification) error {
		if n.Level == quota.LevelExceeded && fail.Add(-1) >= 0 {
			return errors.New("the hook is down")
		}
		return got.notify(ctx, n)
	}
	q := e.quota(t, quota.Config{
		Plans:      []quota.Plan{plan("P", map[string][]quota.Limit{action: {quota.PerMonth(10)}})},
		Notify:     hook,
		NotifyPoll: 5 * time.Millisecond,
		OnError:    func(error) {},
	})
	subj := e.name("s")
	e.subscribe(t, q, subj, "P")
	use := func(n int64) quota.Use { return quota.Use{Subject: subj, Action: action, Amount: n} }

	// 7 used, then a hold of 1 that would make 8 (80 %): cancelled, it
	// notifies nothing.
	track(t, e.ctx, q, use(7))
	r, err := q.Reserve(e.ctx, use(1))
	if err != nil || !r.Decision.Allowed {
		t.Fatalf("Reserve(1) at 7 of 10 = %+v, %v", r, err)
	}
	if err := r.Cancel(e.ctx); err != nil {
		t.Fatal(err)
	}
	// A hold of 1 committed: 8 used, the warning.
	r, err = q.Reserve(e.ctx, use(1))
	if err != nil || !r.Decision.Allowed {
		t.Fatalf("Reserve(1) at 7 of 10 = %+v, %v", r, err)
	}
	if _, err := r.Commit(e.ctx); err != nil {
		t.Fatal(err)
	}
	// 8 to 10 at once: critical and exceeded reached together, one
	// notification for exceeded, whose first delivery fails.
	track(t, e.ctx, q, use(2))
	waitFor(t, func() bool { return fail.Load() == 0 }) // the failed delivery
	// The retry is due a second after the failure, by the Quota's clock.
	e.clock.Add(2 * time.Second)
	waitFor(t, func() bool { return len(got.peek()) == 2 })
	drain(t, q)

	notes := got.take()
	var levels []quota.Level
	var used []int64
	for _, n := range notes {
		levels = append(levels, n.Level)
		used = append(used, n.Used)
	}
	if diff := cmp.Diff([]quota.Level{quota.LevelWarning, quota.LevelExceeded}, levels); diff != "" {
		t.Errorf("levels notified (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]int64{8, 10}, used); diff != "" {
		t.Errorf("used in the notifications (-want +got):\n%s", diff)
	}
	if len(notes) == 2 && notes[1].Attempt != 1 {
		t.Errorf("the exceeded notification came at attempt %d; want 1, after one failure", notes[1].Attempt)
	}
}

// peek returns the notifications gathered so far.
func (c *collector) peek() []quota.Notification {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]quota.Notification(nil), c.notes...)
}

// waitFor waits, for at most 10 s of real time, until cond holds.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for notifications")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
