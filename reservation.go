package quota

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"time"
)

// DefaultReservationTTL is how long a reservation holds its amount when
// Config.ReservationTTL is zero.
const DefaultReservationTTL = 10 * time.Minute

func newID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// Reservation is an amount held by Reserve: it counts against the limits
// at once, until it is committed, cancelled, or it expires. A Reservation
// is safe for concurrent use, though only its first Commit or Cancel
// succeeds.
type Reservation struct {
	// ID identifies the reservation in the store; CommitReservation and
	// CancelReservation accept it, also from another process.
	ID string
	// Decision is the outcome of Reserve. When it is not Allowed, nothing
	// is held and ID is empty.
	Decision Decision
	// ExpiresAt is when the hold stops counting unless committed.
	ExpiresAt time.Time

	q *Quota
}

// Reserve holds u.Amount against every limit of u.Action, as Consume would
// charge it, without recording a use yet. The hold counts at once; Commit
// records the use, Cancel releases it, and a hold neither committed nor
// cancelled expires after Config.ReservationTTL. A denial is returned as a
// Reservation whose Decision is not Allowed, with a nil error.
func (q *Quota) Reserve(ctx context.Context, u Use) (*Reservation, error) {
	r := &Reservation{q: q}
	h, err := q.applyHold(ctx, &u, modeReserve, &r.Decision)
	if err != nil {
		return nil, err
	}
	if h != nil {
		r.ID, r.ExpiresAt = h.ID, h.ExpiresAt
	}
	return r, nil
}

// Commit records the reserved use with its full amount and returns its
// record.
func (r *Reservation) Commit(ctx context.Context) (Record, error) {
	return r.q.CommitReservation(ctx, r.ID, r.Decision.Amount)
}

// CommitAmount records the reserved use with amount, from 1 to the
// reserved amount (bytes actually received, say), and returns its
// record; the rest is released.
func (r *Reservation) CommitAmount(ctx context.Context, amount int64) (Record, error) {
	if amount > r.Decision.Amount {
		return Record{}, errorf("commit %s: %w: %d is more than the %d reserved", r.ID, ErrInvalidAmount, amount, r.Decision.Amount)
	}
	return r.q.CommitReservation(ctx, r.ID, amount)
}

// Cancel releases the reserved amount.
func (r *Reservation) Cancel(ctx context.Context) error {
	return r.q.CancelReservation(ctx, r.ID)
}

// CommitReservation records the use held by reservation id with amount
// (1 to the reserved amount) and returns its record. A reservation that
// expired returns ErrReservationExpired; an unknown, committed or
// cancelled one ErrReservationNotFound.
func (q *Quota) CommitReservation(ctx context.Context, id string, amount int64) (_ Record, err error) {
	if q.obs != nil {
		var end func(error)
		ctx, end = q.startCall(ctx, CallEvent{Method: MethodCommit, Amount: amount, Reservation: id})
		defer func() { end(err) }()
	}
	if err := q.begin(ctx); err != nil {
		return Record{}, errorf("commit: %w", err)
	}
	if id == "" {
		return Record{}, errorf("commit: %w: empty id", ErrReservationNotFound)
	}
	if amount <= 0 || amount > MaxAmount {
		return Record{}, errorf("commit %s: %w: %d", id, ErrInvalidAmount, amount)
	}
	rec, err := q.store.Commit(ctx, id, amount, q.now())
	if err == nil && q.notifier != nil {
		q.notifier.poke() // the commit may have crossed a threshold
	}
	if err != nil {
		return Record{}, errorf("commit %s: %w", id, err)
	}
	return rec, nil
}

// CancelReservation releases the amount held by reservation id.
func (q *Quota) CancelReservation(ctx context.Context, id string) (err error) {
	if q.obs != nil {
		var end func(error)
		ctx, end = q.startCall(ctx, CallEvent{Method: MethodCancel, Reservation: id})
		defer func() { end(err) }()
	}
	if err := q.begin(ctx); err != nil {
		return errorf("cancel: %w", err)
	}
	if id == "" {
		return errorf("cancel: %w: empty id", ErrReservationNotFound)
	}
	if err := q.store.Cancel(ctx, id, q.now()); err != nil {
		return errorf("cancel %s: %w", id, err)
	}
	return nil
}
