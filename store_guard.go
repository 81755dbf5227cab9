package quota

import (
	"context"
	"errors"
	"time"
)

// DefaultStoreTimeout bounds each store call of a Quota when
// Config.StoreTimeout is zero.
const DefaultStoreTimeout = 5 * time.Second

// guardedStore is the Quota's view of its store: every call is bounded by
// the store timeout, and a failure of the store itself (as opposed to an
// answer of the contract: a conflict, an unknown reservation, a closed
// store) is reported as ErrStoreUnavailable wrapping the cause.
type guardedStore struct {
	Store
	// timeout bounds each call; 0 for none (a store that never waits on
	// I/O, such as MemoryStore).
	timeout time.Duration
	// observe, if not nil, is told of every call (Observer.StoreCall);
	// see startStore and done.
	observe func(context.Context, StoreEvent)
}

// localStore is implemented by stores that never wait on I/O, whose calls
// need no timeout.
type localStore interface{ local() }

func newGuardedStore(s Store, timeout time.Duration) guardedStore {
	if _, ok := s.(localStore); ok || timeout < 0 {
		timeout = 0
	}
	return guardedStore{Store: s, timeout: timeout}
}

// bound returns ctx bounded by the store timeout, unless ctx ends sooner.
func (g guardedStore) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if g.timeout == 0 {
		return ctx, func() {}
	}
	if d, ok := ctx.Deadline(); ok && time.Until(d) <= g.timeout {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, g.timeout)
}

// contractErrors are the errors by which a store answers rather than
// fails.
var contractErrors = []error{
	ErrClosed, ErrIdempotencyConflict, ErrReservationNotFound, ErrReservationExpired,
	ErrOverflow, ErrNoSubscription, ErrInvalidAmount, ErrInvalidSubject, ErrInvalidAction,
	ErrInvalidKey, ErrInvalidName, ErrInvalidMetadata, ErrInvalidSubscription, ErrSubscriptionChanged,
	errors.ErrUnsupported,
}

// fail classifies err, returned by a call made with the caller's ctx: the
// caller's own cancellation and the store's contract answers stand; any
// other error, the store timeout included, wraps ErrStoreUnavailable.
func (g guardedStore) fail(ctx context.Context, err error) error {
	if err == nil || ctx.Err() != nil {
		return err
	}
	if isAny(err, contractErrors...) {
		return err
	}
	return wrapf("%w: %w", ErrStoreUnavailable, err)
}

// Versioned reports whether the store is Versioned and honours
// Op.Version: a guardedStore is, exactly when its store is.
func (g guardedStore) Versioned() bool {
	v, ok := g.Store.(Versioned)
	return ok && v.Versioned()
}

func (g guardedStore) Apply(ctx context.Context, op *Op) (ApplyResult, error) {
	sctx, cancel := g.bound(ctx)
	defer cancel()
	start := g.startStore()
	res, err := g.Store.Apply(sctx, op)
	return res, g.done(ctx, "Apply", start, err)
}

func (g guardedStore) Commit(ctx context.Context, id string, amount int64, now time.Time) (Record, error) {
	sctx, cancel := g.bound(ctx)
	defer cancel()
	start := g.startStore()
	rec, err := g.Store.Commit(sctx, id, amount, now)
	return rec, g.done(ctx, "Commit", start, err)
}

func (g guardedStore) Cancel(ctx context.Context, id string, now time.Time) error {
	sctx, cancel := g.bound(ctx)
	defer cancel()
	start := g.startStore()
	return g.done(ctx, "Cancel", start, g.Store.Cancel(sctx, id, now))
}

func (g guardedStore) Counters(ctx context.Context, keys []CounterKey, now time.Time) ([]Counter, error) {
	sctx, cancel := g.bound(ctx)
	defer cancel()
	start := g.startStore()
	cs, err := g.Store.Counters(sctx, keys, now)
	return cs, g.done(ctx, "Counters", start, err)
}

func (g guardedStore) PutSubscription(ctx context.Context, s Subscription) error {
	sctx, cancel := g.bound(ctx)
	defer cancel()
	start := g.startStore()
	return g.done(ctx, "PutSubscription", start, g.Store.PutSubscription(sctx, s))
}

func (g guardedStore) GetSubscription(ctx context.Context, subject string) (Subscription, error) {
	sctx, cancel := g.bound(ctx)
	defer cancel()
	start := g.startStore()
	s, err := g.Store.GetSubscription(sctx, subject)
	return s, g.done(ctx, "GetSubscription", start, err)
}

func (g guardedStore) Records(ctx context.Context, q RecordQuery) ([]Record, error) {
	sctx, cancel := g.bound(ctx)
	defer cancel()
	start := g.startStore()
	recs, err := g.Store.Records(sctx, q)
	return recs, g.done(ctx, "Records", start, err)
}

// sums calls the store's Sums; ok is false when it is not a Summer.
func (g guardedStore) sums(ctx context.Context, q SumQuery) (sums []Sum, ok bool, err error) {
	s, ok := g.Store.(Summer)
	if !ok {
		return nil, false, nil
	}
	sctx, cancel := g.bound(ctx)
	defer cancel()
	start := g.startStore()
	sums, err = s.Sums(sctx, q)
	return sums, true, g.done(ctx, "Sums", start, err)
}

// top calls the store's Top; ok is false when it is not a Ranker.
func (g guardedStore) top(ctx context.Context, q TopQuery) (top []SubjectTotal, ok bool, err error) {
	r, ok := g.Store.(Ranker)
	if !ok {
		return nil, false, nil
	}
	sctx, cancel := g.bound(ctx)
	defer cancel()
	start := g.startStore()
	top, err = r.Top(sctx, q)
	return top, true, g.done(ctx, "Top", start, err)
}

// prune calls the store's Prune; ok is false when it is not a Pruner.
func (g guardedStore) prune(ctx context.Context, before time.Time, limit int) (n int64, ok bool, err error) {
	p, ok := g.Store.(Pruner)
	if !ok {
		return 0, false, nil
	}
	sctx, cancel := g.bound(ctx)
	defer cancel()
	start := g.startStore()
	n, err = p.Prune(sctx, before, limit)
	return n, true, g.done(ctx, "Prune", start, err)
}

// guardedOutbox is the notifier's view of the store's Outbox, bounded and
// classified as guardedStore is.
type guardedOutbox struct {
	box Outbox
	g   guardedStore
}

func newGuardedOutbox(box Outbox, g guardedStore) guardedOutbox {
	return guardedOutbox{box: box, g: guardedStore{timeout: g.timeout, observe: g.observe}}
}

func (o guardedOutbox) Claim(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]Notice, error) {
	sctx, cancel := o.g.bound(ctx)
	defer cancel()
	start := o.g.startStore()
	ns, err := o.box.Claim(sctx, now, lease, limit)
	return ns, o.g.done(ctx, "Claim", start, err)
}

func (o guardedOutbox) Ack(ctx context.Context, id int64) error {
	sctx, cancel := o.g.bound(ctx)
	defer cancel()
	start := o.g.startStore()
	return o.g.done(ctx, "Ack", start, o.box.Ack(sctx, id))
}

func (o guardedOutbox) Retry(ctx context.Context, id int64, at time.Time) error {
	sctx, cancel := o.g.bound(ctx)
	defer cancel()
	start := o.g.startStore()
	return o.g.done(ctx, "Retry", start, o.box.Retry(sctx, id, at))
}
