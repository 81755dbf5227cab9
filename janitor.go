package quota

import (
	"context"
	"errors"
	"sync"
	"time"
)

// DefaultSweepInterval is how often a Quota removes expired holds when
// Config.SweepInterval is zero.
const DefaultSweepInterval = time.Minute

// sweepBatch bounds the holds one sweep removes per store call.
const sweepBatch = 1000

// releaseAttempts bounds the tries to release one orphaned hold.
const releaseAttempts = 3

// Sweeper is a Store that removes expired holds on request, so that they
// stop taking room without waiting for later traffic. The Quota calls it
// every Config.SweepInterval.
type Sweeper interface {
	// Sweep removes up to limit holds that expired at or before now,
	// and returns how many it removed.
	Sweep(ctx context.Context, now time.Time, limit int) (int64, error)
}

// janitor is the Quota's background work on holds: it releases the holds
// of Reserve calls that failed after the store may have applied them, and
// sweeps expired holds. Both are bounded: each store call by the store
// timeout, each orphan by releaseAttempts, each sweep by sweepBatch.
type janitor struct {
	q        *Quota
	interval time.Duration // 0: no sweeping

	mu      sync.Mutex
	orphans []string
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

func newJanitor(q *Quota, interval time.Duration) *janitor {
	if _, ok := q.store.Store.(Sweeper); !ok || interval < 0 {
		interval = 0
	} else if interval == 0 {
		interval = DefaultSweepInterval
	}
	j := &janitor{q: q, interval: interval, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go j.run()
	return j
}

// orphan asks the janitor to release hold id, whose Reserve failed: the
// store may have applied it before the failure reached the caller.
func (j *janitor) orphan(id string) {
	j.mu.Lock()
	j.orphans = append(j.orphans, id)
	j.mu.Unlock()
	select {
	case j.wake <- struct{}{}:
	default:
	}
}

func (j *janitor) run() {
	defer close(j.done)
	var tick <-chan time.Time
	if j.interval > 0 {
		t := time.NewTicker(j.interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-j.wake:
			j.release()
		case <-tick:
			j.sweep()
		case <-j.stop:
			j.release()
			return
		}
	}
}

// release cancels the orphaned holds. A hold that does not exist was
// never applied, or is gone already: nothing to do.
func (j *janitor) release() {
	j.mu.Lock()
	ids := j.orphans
	j.orphans = nil
	j.mu.Unlock()
	for _, id := range ids {
		for range releaseAttempts {
			err := j.q.store.Cancel(context.Background(), id, j.q.now())
			if err == nil || errors.Is(err, ErrReservationNotFound) || errors.Is(err, ErrClosed) {
				break
			}
			j.q.logError(errorf("release orphaned hold %s: %w", id, err))
		}
	}
}

// sweep removes the expired holds, a batch at a time.
func (j *janitor) sweep() {
	s := j.q.store.Store.(Sweeper)
	for {
		ctx, cancel := j.q.store.bound(context.Background())
		start := j.q.store.startStore()
		n, err := s.Sweep(ctx, j.q.now(), sweepBatch)
		err = j.q.store.done(context.Background(), "Sweep", start, err)
		cancel()
		if err != nil {
			if !errors.Is(err, ErrClosed) {
				j.q.logError(errorf("sweep expired holds: %w", err))
			}
			return
		}
		if n < sweepBatch {
			return
		}
	}
}

// close releases the orphans left and stops the janitor.
func (j *janitor) close() {
	close(j.stop)
	<-j.done
}

// logError logs err to Config.Logger: an error of the Quota's own
// background work, which no caller receives.
func (q *Quota) logError(err error) {
	q.logger().Error("quota", "err", err)
}

// mayHaveApplied reports whether a store call that failed with err may
// still have been applied: a failure of the store or a cancelled context,
// not one of the store's answers.
func mayHaveApplied(err error) bool {
	return !isAny(err, ErrIdempotencyConflict, ErrOverflow, ErrClosed, ErrNoSubscription, ErrSubscriptionChanged)
}
