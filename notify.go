package quota

import (
	"context"
	"log/slog"
	"math"
	"sync"
	"time"
)

// DefaultNotifyTimeout bounds each call of Config.Notify when
// Config.NotifyTimeout is zero.
const DefaultNotifyTimeout = 10 * time.Second

// Notification tells that a subject's use of a limit first reached a level
// in the limit's current window.
type Notification struct {
	Subject string `json:"subject"`
	Action  string `json:"action"`
	Plan    string `json:"plan"`
	// Level is the level reached: LevelWarning, LevelCritical or
	// LevelExceeded.
	Level Level `json:"level"`
	// Used is what was counted once the use that crossed the threshold
	// was applied, reservations included.
	Used int64 `json:"used"`
	// Limit is the limit's Max.
	Limit  int64  `json:"limit"`
	Period Period `json:"period"`
	// PeriodStart and PeriodEnd bound the window; both are zero for an
	// allocation, whose levels are marked once for good.
	PeriodStart time.Time `json:"period_start,omitzero"`
	PeriodEnd   time.Time `json:"period_end,omitzero"`
	// At is when the use was made.
	At time.Time `json:"at"`
}

// notifier delivers notifications to the hook on a goroutine of its own,
// one at a time and in order, so that a slow or failing hook never fails
// or delays a use: a use only appends to the queue.
type notifier struct {
	hook    func(context.Context, Notification) error
	onError func(error)
	timeout time.Duration

	mu     sync.Mutex
	cond   *sync.Cond
	queue  []Notification
	closed bool
	done   chan struct{}
}

func newNotifier(hook func(context.Context, Notification) error, onError func(error), timeout time.Duration) *notifier {
	if onError == nil {
		onError = func(err error) { slog.Default().Error("quota: notification", "err", err) }
	}
	if timeout <= 0 {
		timeout = DefaultNotifyTimeout
	}
	n := &notifier{hook: hook, onError: onError, timeout: timeout, done: make(chan struct{})}
	n.cond = sync.NewCond(&n.mu)
	go n.run()
	return n
}

func (n *notifier) push(ns ...Notification) {
	n.mu.Lock()
	n.queue = append(n.queue, ns...)
	n.mu.Unlock()
	n.cond.Signal()
}

func (n *notifier) run() {
	defer close(n.done)
	for {
		n.mu.Lock()
		for len(n.queue) == 0 && !n.closed {
			n.cond.Wait()
		}
		if len(n.queue) == 0 {
			n.mu.Unlock()
			return
		}
		next := n.queue[0]
		n.queue[0] = Notification{}
		n.queue = n.queue[1:]
		n.mu.Unlock()
		n.deliver(next)
	}
}

func (n *notifier) deliver(note Notification) {
	ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
	defer cancel()
	defer func() {
		if v := recover(); v != nil {
			n.onError(errorf("notify %s %s %s: panic: %v", note.Subject, note.Action, note.Level, v))
		}
	}()
	if err := n.hook(ctx, note); err != nil {
		n.onError(errorf("notify %s %s %s: %w", note.Subject, note.Action, note.Level, err))
	}
}

// close delivers what is queued and stops the goroutine.
func (n *notifier) close() {
	n.mu.Lock()
	n.closed = true
	n.mu.Unlock()
	n.cond.Broadcast()
	<-n.done
}

// marks returns the amounts at which the levels of a limit begin:
// the smallest used whose percentage of limit reaches each threshold, computed
// with the same arithmetic as LimitStatus.Level so that a notification
// and a decision never disagree.
// The slices are shared, cached per limit: stores must not change them.
func (q *Quota) marks(limit int64) []int64 {
	if limit <= 0 { // unlimited, or 0: nothing to warn about
		return nil
	}
	if m, ok := q.markCache.Load(limit); ok {
		return m.([]int64)
	}
	m := make([]int64, 3)
	for i, pct := range [3]float64{q.levels.Warning, q.levels.Critical, q.levels.Exceeded} {
		used := int64(math.Ceil(pct * float64(limit) / 100))
		for used > 1 && float64(used-1)*100/float64(limit) >= pct {
			used--
		}
		for float64(used)*100/float64(limit) < pct {
			used++
		}
		m[i] = max(used, 1)
	}
	q.markCache.Store(limit, m)
	return m
}

// notify queues the notifications of the levels a use crossed.
func (q *Quota) notify(p *prepared, res *ApplyResult) {
	if q.notifier == nil || len(res.Crossed) == 0 {
		return
	}
	ns := make([]Notification, 0, len(res.Crossed))
	for _, c := range res.Crossed {
		if c.Counter < 0 || c.Counter >= len(res.Counters) || c.Mark < 0 || c.Mark > 2 {
			continue
		}
		ctr := res.Counters[c.Counter]
		ns = append(ns, Notification{
			Subject:     ctr.Subject,
			Action:      ctr.Action,
			Plan:        p.sub.plan.Name,
			Level:       Level(c.Mark + 1),
			Used:        ctr.Used + ctr.Held,
			Limit:       p.counters[c.Counter].Max,
			Period:      ctr.Period,
			PeriodStart: ctr.Start,
			PeriodEnd:   p.counters[c.Counter].End,
			At:          p.now.UTC(),
		})
	}
	q.notifier.push(ns...)
}
