package quota

import (
	"context"
	"fmt"
	"math"
	"time"
)

// Store persists usage for a Quota. It holds small atomic primitives; all
// policy (plans, periods, levels, validation) lives in the Quota, which
// calls a Store only with validated names and amounts.
//
// Implementations must be safe for concurrent use, and every method must
// be atomic: it happens entirely or not at all, also when its context is
// cancelled or the process dies. Every method after Close returns an error
// matching ErrClosed; Close itself may be called more than once.
//
// A Store may also implement Summer, Ranker and Pruner, which the Quota
// uses when present: analytics computed by the store (in SQL, on its
// indexes) rather than by the Quota from Records, and retention. A
// Versioned store keeps the version of each subscription and applies a
// use only if the subscription it was judged against is still the one
// stored, which lets the Quota cache subscriptions (see Versioned).
//
// The package quotatest holds a conformance suite that every Store must
// pass.
//
// Store and the types of its methods (Op, CounterOp, CounterKey, Counter,
// Crossing, Hold, ApplyResult, RecordQuery, SumQuery, Sum) are for store
// authors, as are Versioned and VersionNone; an application only passes a
// Store to New.
type Store interface {
	// Apply performs op in one atomic step (see Op) and reports what
	// happened. A refusal (a counter would pass its Max or drop below
	// zero) is reported in ApplyResult, with a nil error. Apply must not
	// keep op, or any slice it holds, after it returns: the caller reuses
	// them.
	Apply(ctx context.Context, op *Op) (ApplyResult, error)

	// Commit turns the hold id into a record of amount (1 to the held
	// amount; the rest is released): the held amount stops counting, the
	// record is appended and amount is added to Used of every counter the
	// hold was charged to, and the marks that Used then reaches are set
	// as Apply sets them (Op, step 4, with each counter's marks as last
	// written), atomically. It returns the record. A hold that does not
	// exist gives ErrReservationNotFound; one that expired at or before
	// now is removed and gives ErrReservationExpired.
	Commit(ctx context.Context, id string, amount int64, now time.Time) (Record, error)

	// Cancel removes the hold id, so that its amount stops counting. A
	// hold that does not exist gives ErrReservationNotFound.
	Cancel(ctx context.Context, id string, now time.Time) error

	// Counters returns the counters for keys, in the same order. A
	// counter never written is returned with zero Used, Held and Limit.
	// Held counts only holds that expire after now.
	Counters(ctx context.Context, keys []CounterKey, now time.Time) ([]Counter, error)

	// PutSubscription creates or replaces the subscription of
	// s.Subject.
	PutSubscription(ctx context.Context, s Subscription) error

	// GetSubscription returns the subscription of subject, or an error
	// matching ErrNoSubscription.
	GetSubscription(ctx context.Context, subject string) (Subscription, error)

	// Records returns the records q selects, in ascending ID order, or
	// descending with q.Descending.
	Records(ctx context.Context, q RecordQuery) ([]Record, error)

	// Close releases what the store opened. It never closes a database
	// handle the caller passed in.
	Close() error
}

// CounterKey identifies one counter: the usage of one subject's action in
// one window of one period.
type CounterKey struct {
	Subject string
	Action  string
	Period  Period
	// Start is the first instant of the window, in UTC. It is the zero
	// time for PeriodNone.
	Start time.Time
}

// Less orders keys by subject, action, period and start. Stores lock the
// counters of one Op in this order, so that concurrent Ops never deadlock.
func (k CounterKey) Less(o CounterKey) bool {
	if k.Subject != o.Subject {
		return k.Subject < o.Subject
	}
	if k.Action != o.Action {
		return k.Action < o.Action
	}
	if k.Period != o.Period {
		return k.Period < o.Period
	}
	return k.Start.Before(o.Start)
}

// Counter is the total of one subject's action in one period window: the
// per-period summary of the ledger.
type Counter struct {
	CounterKey
	// End is the first instant after the window, in UTC; zero for
	// PeriodNone.
	End time.Time
	// Used is the sum of the amounts of the records charged to this
	// counter.
	Used int64
	// Held is the sum of the amounts of the unexpired holds charged to
	// this counter.
	Held int64
	// Max is the CounterOp.Max in force at the last write, Unlimited
	// included; 0 for a counter never written.
	Max int64
}

// CounterOp is one counter an Op charges.
type CounterOp struct {
	CounterKey
	End time.Time // see Counter.End
	Max int64     // the bound; Unlimited for none
	// Marks are amounts of Used, ascending, at most MaxMarks of them; 0
	// stands for a mark not wanted. The store keeps them with the
	// counter, as it keeps Max, and sets each mark once, for the first
	// use or commit that brings Used to it (Op, step 4). The Quota uses
	// them for threshold notifications. The slice may be shared: a store
	// must not change it.
	Marks []int64
}

// MaxMarks is the largest number of CounterOp.Marks.
const MaxMarks = 15

// Crossing is a mark that a use reached first in its counter's window.
type Crossing struct {
	Counter int // index in Op.Counters
	Mark    int // index in that CounterOp's Marks
}

// Notice is a crossing kept in an Outbox until it is delivered: the
// highest mark that a use (or a commit) set on a counter.
type Notice struct {
	// ID identifies the notice, stable across deliveries and processes.
	ID int64
	// Counter is the counter as the use left it: Used and Max then.
	// Held is zero.
	Counter Counter
	// Mark is the index of the mark in the counter's Marks.
	Mark int
	// At is the Time of the record whose use set the mark.
	At time.Time
	// Attempts counts the deliveries tried before this claim.
	Attempts int
}

// Outbox is a Store that keeps the notices of its uses (Op, step 4) until
// the Quota delivers them, so that a notification survives a crash, and
// one whose use rolls back never exists. Notices are claimed for a lease,
// so that several processes sharing the store deliver each notice once in
// the normal case, and again only when the one that claimed it failed.
// The Quota's Config.Notify needs a Store that is an Outbox.
type Outbox interface {
	// Claim returns up to limit notices that are due at now (new, or
	// retried and due) and not claimed by a lease that runs past now,
	// oldest first, and claims them until now + lease. Atomic: a notice
	// is returned to one caller at a time.
	Claim(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]Notice, error)
	// Ack removes the notice id, delivered. An unknown id is not an
	// error.
	Ack(ctx context.Context, id int64) error
	// Retry releases the notice id and makes it due again at at, with
	// one more attempt counted.
	Retry(ctx context.Context, id int64, at time.Time) error
}

// Op is one use, as the Quota hands it to Store.Apply. Apply performs,
// atomically:
//
//  0. If Version is not 0 (the Quota sets it only for a Versioned store):
//     with VersionNone, unless Record.Subject has no stored subscription;
//     otherwise, unless Record.Subject has a stored subscription whose
//     Subscription.Version is Version, it returns an error matching
//     ErrSubscriptionChanged and writes nothing. This check comes before
//     the key is looked up: a replay is refused too.
//  1. If Record.Key is not empty and an applied use of Record.Subject
//     already carried that key: when Fingerprint differs it returns an
//     error matching ErrIdempotencyConflict; otherwise it returns the
//     first use's ApplyResult (its counters as they stood after it, in
//     its windows; its RecordID, or its HoldID and HoldExpiresAt) with
//     Replayed set. Nothing is written. A refused use does not claim
//     its key, and neither does a hold that was cancelled, or that
//     expired (at Now) without being committed: the next use of its key
//     is applied as a new one. A hold that was committed keeps its key.
//  2. The admission rule, which Admit implements: for every counter,
//     with a = Record.Amount, used = Used and cur = Used + Held
//     (unexpired holds at Now): the use is refused if Enforce is set,
//     a > 0, Max is not Unlimited and cur + a > Max; it is refused if
//     a < 0 and used + a < 0 (never below zero, enforced or not).
//     cur + a overflowing int64 is an error matching ErrOverflow. A
//     refusal writes nothing and returns Applied false with the counters
//     as they are.
//  3. Otherwise, with Hold nil: a is added to Used of every counter (and
//     Limit set to Max), the record is appended with a new ID, and the key
//     (if any) is remembered with the outcome. With Hold set: a hold of a
//     on every counter is created instead, to count until Hold.ExpiresAt
//     or until Commit or Cancel; no record is written until Commit.
//  4. In the same atomic step as 3, Marks is kept with the counter and,
//     with Hold nil, for every index m with Marks[m] > 0 and
//     Marks[m] <= Used after the use, the mark m is set on the counter if
//     it was not set before, and reported in ApplyResult.Crossed. A mark
//     is set at most once per counter, whatever the number of processes
//     sharing the store. A hold sets no mark: its Commit does, once the
//     amount is used. When a use sets marks on a counter and the store is
//     an Outbox, one Notice for the highest of them is added to the
//     outbox, in the same atomic step.
//
// Counters are sorted by CounterKey.Less and distinct.
type Op struct {
	Counters []CounterOp
	Record   Record
	// Enforce refuses the use if it would take a counter past its Max.
	// Unset for Track, which records uses that already happened.
	Enforce bool
	// Hold, when not nil, makes Apply reserve instead of record.
	Hold *Hold
	// Fingerprint identifies the payload of a keyed use; two uses with
	// the same key and fingerprint are the same use.
	Fingerprint string
	// Version, when not 0, is the Subscription.Version of the
	// subscription that the Quota judged the use against, or
	// VersionNone when it judged it against its default plan because
	// the subject had no subscription: Apply applies the use only if
	// that is still so (step 0). 0 checks nothing.
	Version int64
	// Now is the time of the operation; holds expiring at or before Now
	// no longer count.
	Now time.Time
	// Dst is room that the caller lends for ApplyResult.Counters, with
	// a capacity of at least len(Counters): Apply may return the
	// counters in Dst[:len(Counters)] instead of a slice of its own,
	// which spares an allocation per use. A store that ignores Dst is
	// correct too. Like the rest of op, Dst is not the store's to keep.
	Dst []Counter
}

// VersionNone is the Op.Version of a use judged against the Quota's
// default plan: the store applies it only if the subject has no stored
// subscription.
const VersionNone int64 = -1

// Versioned is a Store that keeps the version of every subscription and
// checks it as it applies a use, so that the Quota can cache
// subscriptions: a use then reads no subscription from the store.
//
// The Quota writes every subscription (Subscribe, SchedulePlan) with a
// new random positive Subscription.Version. A Versioned store keeps the
// Version that PutSubscription received and returns it unchanged from
// GetSubscription, and honours Op.Version (Op, step 0): in the same
// atomic step as the use, it refuses with ErrSubscriptionChanged a use
// judged against a subscription that is no longer the one stored. The
// Quota then drops the subscription from its cache, reads it again and
// judges the use again. So a plan change made by any process sharing the
// store is seen by the next use of every process, cached or not.
//
// A subscription stored with Version 0 (written directly through
// PutSubscription, or before the store kept versions) is never cached,
// and uses judged against it carry Op.Version 0. A program that writes
// subscriptions to a Versioned store itself, not through Subscribe or
// SchedulePlan, must give each write a new Version, or 0: one that
// keeps the Version it read leaves the Quotas that cached it judging
// uses against the subscription it replaced. A Store that is not
// Versioned is read for the subscription of every use, and gets
// Op.Version 0 always.
type Versioned interface {
	// Versioned reports whether the store keeps Subscription.Version
	// and honours Op.Version. A Store that wraps another reports what
	// the one it wraps does.
	Versioned() bool
}

// Hold describes a reservation to create.
type Hold struct {
	ID        string
	ExpiresAt time.Time
}

// ApplyResult is what Store.Apply did.
type ApplyResult struct {
	// Applied reports that the use was recorded or held.
	Applied bool
	// Replayed reports that the key was seen before; the other fields
	// then describe the first use.
	Replayed bool
	// Counters holds the counters in Op order: after the use when it was
	// applied (or first applied, when replayed), as they stand when it
	// was refused. It may be the memory of Op.Dst.
	Counters []Counter
	// RecordID is the ID of the record written, when one was.
	RecordID int64
	// HoldID is the ID of the hold created, when one was.
	HoldID string
	// HoldExpiresAt is when that hold expires.
	HoldExpiresAt time.Time
	// Crossed lists the marks this use reached first (step 4), ordered
	// by counter and mark. Empty when replayed or refused.
	Crossed []Crossing
}

// RecordQuery selects records. Zero fields select everything.
type RecordQuery struct {
	Subject string
	Action  string
	// From and To bound Time: From <= Time < To. Zero means unbounded.
	From, To time.Time
	// AfterID selects records with ID > AfterID, for pagination.
	AfterID int64
	// BeforeID, when not 0, selects records with ID < BeforeID, for
	// pagination from the newest.
	BeforeID int64
	// Descending returns the records in descending ID order, newest
	// first.
	Descending bool
	// Limit caps the number of records returned; 0 means no cap.
	Limit int
}

// Admit applies the admission rule of Op (step 2 of its documentation) to
// cs, the counters of op.Counters as they stand before the use: Used and
// Held, unexpired holds only. It returns refused when a counter refuses the
// use, and an error matching ErrOverflow when one cannot take the amount.
// Stores written in Go call it, so that the rule has one implementation.
func Admit(op *Op, cs []Counter) (refused bool, err error) {
	a := op.Record.Amount
	for i := range cs {
		r, err := admits(&op.Counters[i], cs[i].Used, cs[i].Held, a, op.Enforce)
		if err != nil {
			return false, err
		}
		refused = refused || !r
	}
	return refused, nil
}

// admits reports whether the counter co, with used and held, takes amount
// a; an error matching ErrOverflow when used + held + a passes MaxInt64.
func admits(co *CounterOp, used, held, a int64, enforce bool) (bool, error) {
	cur := used + held // <= MaxInt64: every use checked it
	switch {
	case a > 0 && cur > math.MaxInt64-a:
		return false, fmt.Errorf("%w: %s of %q", ErrOverflow, co.Action, co.Subject)
	case a > 0 && enforce && co.Max != Unlimited && cur+a > co.Max:
		return false, nil
	case a < 0 && used+a < 0:
		return false, nil
	}
	return true, nil
}

// Summer is a Store that sums records itself (in SQL, say). Without it,
// the Quota sums what Store.Records returns.
type Summer interface {
	// Sums adds up the records q selects, and the rollups of pruned
	// records, per bucket (and per action with q.ByAction): a rollup
	// counts in the bucket that holds its start. Buckets without usage
	// are left out; sums come ordered by bucket, then action.
	Sums(ctx context.Context, q SumQuery) ([]Sum, error)
}

// Ranker is a Store that ranks subjects itself. Without it, the Quota
// ranks what Store.Records returns.
type Ranker interface {
	// Top returns the q.Limit subjects with the largest total amount of
	// q.Action in [q.From, q.To), records and rollups alike, largest
	// first, ties by subject.
	Top(ctx context.Context, q TopQuery) ([]SubjectTotal, error)
}

// Pruner is a Store that can fold old records into rollups. Without it,
// Quota.Prune returns an error matching errors.ErrUnsupported. A Pruner
// must also be a Summer and a Ranker, so that analytics count the rollups.
type Pruner interface {
	// Prune deletes up to limit records whose Time is before the
	// cutoff, and adds each to the rollup of its subject, action and
	// quarter hour (RollupStep, from the Unix epoch), in one atomic step.
	// It returns how many it deleted.
	Prune(ctx context.Context, before time.Time, limit int) (int64, error)
}

// SumQuery asks a store to add up records per bucket.
type SumQuery struct {
	// Subject and Action select records; "" selects any.
	Subject, Action string
	// Bounds are ascending instants in UTC, at least two: bucket i is
	// [Bounds[i], Bounds[i+1]).
	Bounds []time.Time
	// ByAction splits each bucket by action.
	ByAction bool
}

// Sum is the total of one bucket (and action) of a SumQuery.
type Sum struct {
	Bucket int
	Action string // "" unless ByAction
	Amount int64
	Count  int64
}
