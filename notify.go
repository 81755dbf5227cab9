package quota

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
)

// DefaultNotifyTimeout bounds each call of Config.Notify when
// Config.NotifyTimeout is zero.
const DefaultNotifyTimeout = 10 * time.Second

// DefaultNotifyPoll is how often a Quota looks for notifications to
// deliver when Config.NotifyPoll is zero.
const DefaultNotifyPoll = time.Second

// maxNotifyAttempts bounds the deliveries of one notification; backoff
// doubles from notifyBackoff up to maxNotifyBackoff between them.
const (
	maxNotifyAttempts = 20
	notifyBackoff     = time.Second
	maxNotifyBackoff  = time.Hour
	notifyBatch       = 32
)

// Notification tells that a subject's use of a limit first reached a level
// in the limit's current window.
type Notification struct {
	// ID identifies the notification: a delivery repeated (after a
	// failure, or by another process after a crash) carries the same
	// ID, so that a hook can drop duplicates.
	ID      string `json:"id"`
	Subject string `json:"subject"`
	Action  string `json:"action"`
	// Plan is the subject's plan when the notification is delivered.
	Plan string `json:"plan"`
	// Level is the highest level the use reached: LevelWarning,
	// LevelCritical or LevelExceeded. A use that crosses several
	// thresholds at once sends one notification, for the highest.
	Level Level `json:"level"`
	// Used is what was used once the use that crossed the threshold was
	// recorded; reservations do not count until committed.
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
	// Attempt counts the deliveries of this notification tried before,
	// 0 for the first.
	Attempt int `json:"attempt"`
}

// notifier delivers the notices of the store's outbox to the hook, on a
// goroutine of its own, one at a time: a use only writes its notice with
// itself, and wakes the notifier; it never waits for the hook. The
// notifier also polls, for notices written by other processes, by
// transactions committed later, or left by a process that died.
type notifier struct {
	q       *Quota
	box     Outbox
	hook    func(context.Context, Notification) error
	onError func(error)
	timeout time.Duration
	poll    time.Duration

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

func newNotifier(q *Quota, box Outbox, cfg *Config) *notifier {
	n := &notifier{
		q: q, box: box, hook: cfg.Notify, onError: cfg.OnError,
		timeout: cfg.NotifyTimeout, poll: cfg.NotifyPoll,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	if n.onError == nil {
		n.onError = func(err error) { n.q.logger().Error("quota: notification", "err", err) }
	}
	if n.timeout <= 0 {
		n.timeout = DefaultNotifyTimeout
	}
	if n.poll <= 0 {
		n.poll = DefaultNotifyPoll
	}
	go n.run()
	return n
}

// poke asks the notifier to look for notices now.
func (n *notifier) poke() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

func (n *notifier) run() {
	defer close(n.done)
	tick := time.NewTicker(n.poll)
	defer tick.Stop()
	for {
		select {
		case <-n.wake:
		case <-tick.C:
		case <-n.stop:
			n.deliverDue()
			return
		}
		n.deliverDue()
	}
}

// lease is how long a claim hides a notice from other processes: the
// delivery's bound, and some time to record its outcome.
func (n *notifier) lease() time.Duration { return n.timeout + 5*time.Second }

// deliverDue claims and delivers the due notices, until none is left.
func (n *notifier) deliverDue() {
	for {
		ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
		notices, err := n.box.Claim(ctx, n.q.now(), n.lease(), notifyBatch)
		cancel()
		if err != nil {
			if !errors.Is(err, ErrClosed) {
				n.onError(errorf("notify: claim: %w", err))
			}
			return
		}
		for _, note := range notices {
			n.deliver(note)
		}
		if len(notices) < notifyBatch {
			return
		}
	}
}

// deliver calls the hook for one notice, then acknowledges it or
// schedules its retry.
func (n *notifier) deliver(note Notice) {
	nf := n.notification(note)
	// The backoff counts from the attempt, by the Quota's clock.
	attempted := n.q.now()
	start := time.Now()
	err := n.call(nf)
	n.q.observeDelivery(nf, start, err)
	ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
	defer cancel()
	switch {
	case err == nil:
		err = n.box.Ack(ctx, note.ID)
	case note.Attempts+1 >= maxNotifyAttempts:
		n.onError(errorf("notify %s %s %s: giving up after %d attempts: %w", nf.Subject, nf.Action, nf.Level, note.Attempts+1, err))
		err = n.box.Ack(ctx, note.ID)
	default:
		n.onError(errorf("notify %s %s %s: %w", nf.Subject, nf.Action, nf.Level, err))
		err = n.box.Retry(ctx, note.ID, attempted.Add(backoff(note.Attempts)))
	}
	if err != nil && !errors.Is(err, ErrClosed) {
		n.onError(errorf("notify: %w", err))
	}
}

// backoff is the wait before the retry that follows attempt.
func backoff(attempt int) time.Duration {
	d := notifyBackoff << min(attempt, 20)
	return min(d, maxNotifyBackoff)
}

// call runs the hook with the delivery's bound, turning a panic into an
// error.
func (n *notifier) call(nf Notification) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
	defer cancel()
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("panic: %v", v)
		}
	}()
	return n.hook(ctx, nf)
}

// notification is the Notification of a notice.
func (n *notifier) notification(note Notice) Notification {
	c := note.Counter
	nf := Notification{
		ID:          strconv.FormatInt(note.ID, 10),
		Subject:     c.Subject,
		Action:      c.Action,
		Level:       Level(min(note.Mark, 2) + 1),
		Used:        c.Used,
		Limit:       c.Max,
		Period:      c.Period,
		PeriodStart: c.Start,
		PeriodEnd:   c.End,
		At:          note.At.UTC(),
		Attempt:     note.Attempts,
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
	defer cancel()
	if s, err := n.q.resolve(ctx, c.Subject, n.q.now()); err == nil {
		nf.Plan = s.plan.Name
	}
	return nf
}

// close delivers what is due and stops the goroutine.
func (n *notifier) close() {
	close(n.stop)
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

// notify wakes the notifier after a use that set marks.
func (q *Quota) notify(res *ApplyResult) {
	if q.notifier != nil && len(res.Crossed) > 0 {
		q.notifier.poke()
	}
}
