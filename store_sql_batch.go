// Group commit: the Apply, Commit and Cancel calls that reach an SQLStore
// while it is writing wait, and then go together, in one transaction and
// one commit (see SQLStore, "Batches"). The dialects write a batch
// (sqlDialect.writeBatch); this file queues the calls, forms the batches,
// retries a batch that failed for a transient reason, and hands each
// caller its own outcome.

package quota

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"
)

// DefaultMaxBatch is the number of calls an SQLStore writes together at
// most, unless WithMaxBatch says otherwise.
const DefaultMaxBatch = 256

// An SQLOption configures an SQLStore.
type SQLOption func(*sqlOptions)

type sqlOptions struct {
	maxBatch int
	writers  int
	observe  func(BatchEvent)
}

// BatchEvent describes one batch that an SQLStore wrote: a call written
// alone is a batch of one.
type BatchEvent struct {
	// Calls is the number of Apply, Commit and Cancel calls written
	// together.
	Calls int
	// Start is when the first attempt began; Duration is the time to the
	// outcome, retries included.
	Start    time.Time
	Duration time.Duration
	// Retries is the number of times the batch was tried again after a
	// transient failure.
	Retries int
	// Err is the failure of the batch, which each of its calls
	// returned; nil when it committed (its calls may still have
	// outcomes of their own: refusals, conflicts).
	Err error
}

// WithBatchObserver makes an SQLStore call f after every batch it writes,
// on the goroutine that wrote it: batch sizes and latencies for metrics
// (see the README's Observability). f must be quick and safe for
// concurrent use. A store over a bun.Tx, which writes each call alone,
// calls it too.
func WithBatchObserver(f func(BatchEvent)) SQLOption {
	return func(o *sqlOptions) { o.observe = f }
}

// WithMaxBatch bounds the calls an SQLStore writes in one transaction (a
// batch) to n; 1 turns batching off: every call is written alone, as it
// comes. The default is DefaultMaxBatch. An n below 1 is ignored.
func WithMaxBatch(n int) SQLOption {
	return func(o *sqlOptions) {
		if n >= 1 {
			o.maxBatch = n
		}
	}
}

// WithWriters sets how many batches an SQLStore over PostgreSQL writes at
// the same time, each in a transaction of its own on a connection of its
// own; calls queue only when that many are being written. The default is
// 2. SQLite has one writer at a time whatever n is. An n below 1 is
// ignored.
func WithWriters(n int) SQLOption {
	return func(o *sqlOptions) {
		if n >= 1 {
			o.writers = n
		}
	}
}

// sqlCallKind is what an sqlCall does.
type sqlCallKind uint8

const (
	callApply sqlCallKind = iota
	callCommit
	callCancel
)

// sqlCall is one Apply, Commit or Cancel, with its outcome. Its inputs
// were validated. The dialect that writes it sets res, rec or found, and
// err for an outcome of its own (ErrReservationNotFound, a conflict...);
// a failure of the whole batch goes to every call of it instead.
type sqlCall struct {
	ctx    context.Context
	kind   sqlCallKind
	op     *Op       // callApply
	id     string    // callCommit, callCancel
	amount int64     // callCommit
	now    time.Time // callCommit

	res   ApplyResult
	rec   Record
	found bool
	err   error

	// queued reports that the call waits in the queue (under the
	// batcher's mutex); done is closed once it has its outcome.
	queued bool
	done   chan struct{}
}

// sqlBatcher queues the calls of a store and forms its batches. At most
// writers batches are written at a time; a call that finds fewer is
// written at once, alone, on its caller's goroutine, so an idle store
// adds no wait. Calls that arrive meanwhile queue; the writer that
// finishes takes up to max of them, in arrival order, as its next batch,
// on a goroutine of its own, until the queue is empty.
type sqlBatcher struct {
	s       *SQLStore
	max     int
	writers int

	mu      sync.Mutex
	writing int
	queue   []*sqlCall

	// hook, when not nil, sees every batch that committed, in the order
	// of its calls, before the next batch of its writer (tests).
	hook func([]*sqlCall)
}

// do runs c, alone or in a batch, and returns when c has its outcome. A
// caller whose context ends while c waits in the queue takes c out of it:
// c is never written and gets ctx.Err(). Once c is in a batch that is
// being written, it gets the batch's outcome.
func (b *sqlBatcher) do(c *sqlCall) {
	b.mu.Lock()
	if b.writing < b.writers {
		b.writing++
		b.mu.Unlock()
		b.write([]*sqlCall{c})
		b.next()
		return
	}
	c.done = make(chan struct{})
	c.queued = true
	b.queue = append(b.queue, c)
	b.mu.Unlock()
	select {
	case <-c.done:
		return
	case <-c.ctx.Done():
	}
	b.mu.Lock()
	if c.queued {
		for i, q := range b.queue {
			if q == c {
				b.queue = append(b.queue[:i:i], b.queue[i+1:]...)
				break
			}
		}
		c.queued = false
		b.mu.Unlock()
		c.err = c.ctx.Err()
		return
	}
	b.mu.Unlock()
	<-c.done
}

// next hands the queue to a writer of its own, or ends the turn of the
// caller's writer when the queue is empty.
func (b *sqlBatcher) next() {
	if batch := b.take(); batch != nil {
		go b.drain(batch)
	}
}

// take takes the next batch out of the queue, or, when the queue is
// empty, ends a writer's turn and returns nil.
func (b *sqlBatcher) take() []*sqlCall {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.queue) == 0 {
		b.writing--
		return nil
	}
	n := min(len(b.queue), b.max)
	batch := make([]*sqlCall, n)
	copy(batch, b.queue)
	b.queue = append(b.queue[:0:0], b.queue[n:]...)
	for _, c := range batch {
		c.queued = false
	}
	return batch
}

// drain writes batch, then the batches that queue meanwhile.
func (b *sqlBatcher) drain(batch []*sqlCall) {
	for batch != nil {
		b.write(batch)
		for _, c := range batch {
			close(c.done)
		}
		batch = b.take()
	}
}

// write writes the calls of batch whose context is not done, retrying
// transient failures, and sets the outcome of every call.
func (b *sqlBatcher) write(batch []*sqlCall) {
	live := batch[:0:0]
	for _, c := range batch {
		if err := c.ctx.Err(); err != nil {
			c.err = err
			continue
		}
		live = append(live, c)
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := batchContext(live)
	defer cancel()
	var err error
	start := time.Now()
	attempt := 0
	defer func() {
		if b.s.observe != nil {
			b.s.observe(BatchEvent{Calls: len(live), Start: start, Duration: time.Since(start), Retries: attempt, Err: err})
		}
	}()
	for ; ; attempt++ {
		for _, c := range live {
			c.res, c.rec, c.found, c.err = ApplyResult{}, Record{}, false, nil
		}
		err = b.s.d.writeBatch(ctx, live)
		if err == nil || attempt == maxBatchRetries || !b.s.d.transient(err) || ctx.Err() != nil {
			break
		}
		// Back off a little, at random, so that the writers that
		// collided do not collide again.
		t := time.NewTimer(time.Duration(1+rand.IntN(4<<attempt)) * time.Millisecond)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	if err != nil {
		if len(live) > 1 {
			err = fmt.Errorf("batch of %d: %w", len(live), err)
		}
		for _, c := range live {
			c.res, c.rec, c.found, c.err = ApplyResult{}, Record{}, false, err
		}
		return
	}
	if b.hook != nil {
		b.hook(live)
	}
}

// maxBatchRetries is how many times a batch that failed for a transient
// reason is tried again.
const maxBatchRetries = 4

// batchContext returns the context of a batch: that of its only call, or,
// for several, one without cancellation that ends at the latest deadline
// of its calls, if every one has a deadline. A batch cancelled with one of
// its callers would fail its other calls.
func batchContext(batch []*sqlCall) (context.Context, context.CancelFunc) {
	if len(batch) == 1 {
		return batch[0].ctx, func() {}
	}
	var latest time.Time
	for _, c := range batch {
		d, ok := c.ctx.Deadline()
		if !ok {
			return context.WithoutCancel(batch[0].ctx), func() {}
		}
		if d.After(latest) {
			latest = d
		}
	}
	return context.WithDeadline(context.WithoutCancel(batch[0].ctx), latest)
}

// run runs c through the batcher of s, or at once over the caller's
// transaction, which is never shared.
func (s *SQLStore) run(c *sqlCall) {
	if s.batch == nil {
		start := time.Now()
		err := s.d.writeBatch(c.ctx, []*sqlCall{c})
		if err != nil {
			c.err = err
		}
		if s.observe != nil {
			s.observe(BatchEvent{Calls: 1, Start: start, Duration: time.Since(start), Err: err})
		}
		return
	}
	s.batch.do(c)
}

// isOutcome reports whether err, returned by one call of a batch, is that
// call's own outcome rather than a failure of the batch: the batch goes
// on without that call's writes.
func isOutcome(err error) bool {
	return isAny(err, ErrOverflow, ErrIdempotencyConflict, ErrReservationNotFound, ErrReservationExpired, ErrInvalidAmount, ErrSubscriptionChanged)
}

// sqlStater is the error of a driver that reports an SQLSTATE, as pgx's
// and lib/pq's do.
type sqlStater interface{ SQLState() string }

// isPGTransient reports a serialization failure (40001) or a deadlock
// (40P01): the transaction rolled back and may be tried again.
func isPGTransient(err error) bool {
	var e sqlStater
	if errors.As(err, &e) {
		switch e.SQLState() {
		case "40001", "40P01":
			return true
		}
	}
	return false
}
