package quota

import (
	"context"
	"errors"
	"time"
)

// RollupStep is the granularity of the rollups that Prune folds records
// into: a quarter of an hour, so that the days, weeks and months of every
// time zone in use (whose offsets are whole quarters of an hour) still add
// up exactly.
const RollupStep = 15 * time.Minute

// Prune deletes the ledger records whose Time is before the cutoff, batch
// records per store call, folding each into a rollup per subject, action
// and quarter hour (RollupStep) in the same atomic step. Counters (the
// per-period summaries) are untouched, and Series and TopSubjects answer
// from rollups where records are gone, exactly for buckets that begin on
// quarter hours. Records, History and idempotency replays no longer see
// the pruned records. Prune returns how many records it deleted, also
// when ctx ends it early. A store that is not a Pruner gives an error
// matching errors.ErrUnsupported.
func (q *Quota) Prune(ctx context.Context, before time.Time, batch int) (_ int64, err error) {
	if q.obs != nil {
		var end func(error)
		ctx, end = q.startCall(ctx, CallEvent{Method: MethodPrune})
		defer func() { end(err) }()
	}
	if err := q.begin(ctx); err != nil {
		return 0, errorf("prune: %w", err)
	}
	if before.IsZero() {
		return 0, errorf("prune: zero cutoff")
	}
	if batch == 0 {
		batch = DefaultPruneBatch
	}
	if batch < 0 {
		return 0, errorf("prune: batch %d: want at least 1", batch)
	}
	var total int64
	for {
		n, ok, err := q.store.prune(ctx, before.UTC(), batch)
		if !ok {
			return 0, errorf("prune: %w: the store is not a Pruner", errors.ErrUnsupported)
		}
		total += n
		if err != nil {
			return total, errorf("prune: %w", err)
		}
		if n < int64(batch) {
			return total, nil
		}
	}
}

// DefaultPruneBatch is the batch size of Prune when batch is 0.
const DefaultPruneBatch = 1000
