package quotatest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
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
	if diff := cmp.Diff(want, got.take(), cmpTime); diff != "" {
		t.Errorf("notifications of one window (-want +got):\n%s", diff)
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
	if diff := cmp.Diff(want, got2.take(), cmpTime); diff != "" {
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
