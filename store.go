package quota

import (
	"context"
	"encoding/json"
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
// The package quotatest holds a conformance suite that every Store must
// pass.
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
	// hold was charged to, atomically. It returns the record. A hold that
	// does not exist gives ErrReservationNotFound; one that expired at or
	// before now is removed and gives ErrReservationExpired.
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

	// Sums adds up the records q selects, and the rollups of pruned
	// records, per bucket (and per action with q.ByAction): a rollup
	// counts in the bucket that holds its start. Buckets without usage
	// are left out; sums come ordered by bucket, then action.
	Sums(ctx context.Context, q SumQuery) ([]Sum, error)

	// Top returns the q.Limit subjects with the largest total amount of
	// q.Action in [q.From, q.To), records and rollups alike, largest
	// first, ties by subject.
	Top(ctx context.Context, q TopQuery) ([]SubjectTotal, error)

	// Prune deletes up to limit records whose Time is before the
	// cutoff, and adds each to the rollup of its subject, action and
	// quarter hour (RollupStep, from the Unix epoch), in one atomic step.
	// It returns how many it deleted.
	Prune(ctx context.Context, before time.Time, limit int) (int64, error)

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
	// Limit is the Max in force at the last write, Unlimited included.
	Limit int64
}

// CounterOp is one counter an Op charges.
type CounterOp struct {
	CounterKey
	End time.Time // see Counter.End
	Max int64     // the bound; Unlimited for none
	// Marks are the amounts of Used + Held at which LevelWarning,
	// LevelCritical and LevelExceeded begin, for threshold
	// notifications; 0 where none is wanted.
	Marks [3]int64
}

// Crossing is a level that a use reached first in its counter's window.
type Crossing struct {
	Counter int   // index in Op.Counters
	Level   Level // LevelWarning, LevelCritical or LevelExceeded
}

// Op is one use, as the Quota hands it to Store.Apply. Apply performs,
// atomically:
//
//  1. If Record.Key is not empty and an applied use of Record.Subject
//     already carried that key: when Fingerprint differs it returns an
//     error matching ErrIdempotencyConflict; otherwise it returns the
//     first use's ApplyResult (its counters as they stood after it, in
//     its windows; its RecordID, or its HoldID and HoldExpiresAt) with
//     Replayed set. Nothing is written. A refused use does not claim
//     its key.
//  2. For every counter, with a = Record.Amount, used = Used and
//     cur = Used + Held (unexpired holds at Now): the use is refused if
//     Enforce is set, a > 0, Max is not Unlimited and cur + a > Max; it is
//     refused if a < 0 and used + a < 0 (never below zero, enforced or
//     not). cur + a overflowing int64 is an error matching ErrOverflow.
//     A refusal writes nothing and returns Applied false with the
//     counters as they are.
//  3. Otherwise, with Hold nil: a is added to Used of every counter (and
//     Limit set to Max), the record is appended with a new ID, and the key
//     (if any) is remembered with the outcome. With Hold set: a hold of a
//     on every counter is created instead, to count until Hold.ExpiresAt
//     or until Commit or Cancel; no record is written until Commit.
//  4. In the same atomic step as 3, for every counter and every level l
//     with Marks[l-1] > 0 and Marks[l-1] <= Used + Held after the use,
//     the level is marked on the counter if it was not marked before,
//     and reported in ApplyResult.Crossed. A level is marked at most once
//     per counter, whatever the number of processes sharing the store.
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
	// Now is the time of the operation; holds expiring at or before Now
	// no longer count.
	Now time.Time
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
	// was refused.
	Counters []Counter
	// RecordID is the ID of the record written, when one was.
	RecordID int64
	// HoldID is the ID of the hold created, when one was.
	HoldID string
	// HoldExpiresAt is when that hold expires.
	HoldExpiresAt time.Time
	// Crossed lists the levels this use marked first (step 4), ordered
	// by counter and level. Empty when replayed or refused.
	Crossed []Crossing
}

// Record is one use in the ledger.
type Record struct {
	ID         int64           `json:"id"`
	Subject    string          `json:"subject"`
	Action     string          `json:"action"`
	Amount     int64           `json:"amount"`
	ResourceID string          `json:"resource_id,omitempty"`
	Metadata   json.RawMessage `json:"metadata,omitempty"`
	Key        string          `json:"key,omitempty"`
	// Time is when the use was counted, in UTC: the time of Consume or
	// Track, or of the Reserve that a Commit completed.
	Time time.Time `json:"time"`
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
