package quota

import (
	"context"
	"log/slog"
	"time"
)

// Observer receives what a Quota does, as it happens, for metrics,
// traces and logs: each engine call that touches the store (Call), each
// decision (Decision), each call to the store (StoreCall) and each
// delivery of a notification (Delivery). Set it in Config.Observer.
//
// Every field is optional: a nil field is not called. A nil
// Config.Observer, the default, costs a nil check per engine call and
// two per store call, and nothing else (BenchmarkConsume in
// observe_test.go measures it).
//
// The functions run synchronously, on the goroutine doing the work: the
// caller's for Call, Decision and StoreCall, the notifier's for
// Delivery. They must therefore be fast and never block (no I/O: count,
// or hand the event to something that exports in the background, as
// the OpenTelemetry SDK does), and safe for concurrent use, since many
// goroutines call them at once. Beyond what the functions themselves do,
// a non-nil Observer costs, per engine call, building the events (no
// allocation) and, with StoreCall, two readings of the clock per store
// call. The functions must not call the Quota, and a panic in one is
// not recovered: it reaches the caller as a panic of the engine would.
//
// Package github.com/quotakit/quota/contrib/otel, a module of its own,
// builds an Observer that records OpenTelemetry metrics and spans.
type Observer struct {
	// Call is called when an engine call begins, before anything else
	// (a call with a nil ctx is not observed): Check, Consume, Track,
	// Reserve, CommitReservation (and Reservation.Commit and
	// CommitAmount), CancelReservation (and Reservation.Cancel), and
	// every other method of Quota that reads or writes the store:
	// Subscribe, SchedulePlan, Subscription, HasFeature, Limits, Usage,
	// Series, TopSubjects, History and Prune. The
	// context it returns replaces ctx for the rest of the call: the
	// store's calls, Decision and StoreCall receive it, so that a span
	// started here encloses them. It must be derived from ctx (its
	// deadline and cancellation bound the call); nil keeps ctx. The
	// function it returns, if not nil, is called once when the call
	// returns, with the error it returns (nil for a denial, which is
	// not an error).
	Call func(ctx context.Context, e CallEvent) (context.Context, func(err error))

	// Decision is called once per Check, Consume, Track and Reserve
	// (but one with a nil ctx), with the outcome the call returns, just
	// before it returns, and before the function Call returned, if any.
	Decision func(ctx context.Context, e DecisionEvent)

	// StoreCall is called after each call of the Quota to its store,
	// the store's optional interfaces (Summer, Ranker, Pruner, Sweeper,
	// Outbox) included, with the context of the engine call that made
	// it (a background context for the Quota's own work).
	StoreCall func(ctx context.Context, e StoreEvent)

	// Delivery is called after each attempt to deliver a notification
	// to Config.Notify, successful or not, retries included, on the
	// notifier's goroutine with a background context.
	Delivery func(ctx context.Context, e DeliveryEvent)
}

// The engine calls, as CallEvent.Method and DecisionEvent.Method name
// them. Only the first four make decisions (DecisionEvent).
const (
	MethodCheck   = "check"
	MethodConsume = "consume"
	MethodTrack   = "track"
	MethodReserve = "reserve"
	MethodCommit  = "commit"
	MethodCancel  = "cancel"

	MethodSubscribe    = "subscribe"     // Subscribe
	MethodSchedulePlan = "schedule_plan" // SchedulePlan
	MethodSubscription = "subscription"  // Subscription
	MethodHasFeature   = "has_feature"   // HasFeature
	MethodLimits       = "limits"        // Limits
	MethodUsage        = "usage"         // Usage
	MethodSeries       = "series"        // Series
	MethodTopSubjects  = "top_subjects"  // TopSubjects
	MethodHistory      = "history"       // History
	MethodPrune        = "prune"         // Prune
)

// CallEvent describes an engine call as it begins (Observer.Call).
type CallEvent struct {
	// Method is the call: one of the Method constants.
	Method string
	// Subject and Action are the call's, as given (not yet validated),
	// where it has them: the use's for a use (MethodCheck, ...,
	// MethodReserve); the subject's for MethodSubscribe,
	// MethodSchedulePlan, MethodSubscription, MethodHasFeature and
	// MethodUsage; both for MethodLimits; the query's filters for
	// MethodSeries and MethodHistory ("" for every subject or action)
	// and its action for MethodTopSubjects. Empty otherwise.
	Subject string
	Action  string
	// Amount is the use's amount, or the amount to commit; 0 for the
	// other calls.
	Amount int64
	// Reservation is the reservation's ID, for MethodCommit and
	// MethodCancel.
	Reservation string
}

// Outcome classifies a decision, for metrics (DecisionEvent.Outcome).
type Outcome string

// The outcomes of a decision.
const (
	// OutcomeAllowed: the use is (or, for Check, would be) granted.
	OutcomeAllowed Outcome = "allowed"
	// OutcomeDenied: the use is refused; DecisionEvent.Reason says why.
	OutcomeDenied Outcome = "denied"
	// OutcomeReplayed: the use repeated an idempotency key, and got the
	// first use's outcome; nothing was written (Decision.Replayed).
	OutcomeReplayed Outcome = "replayed"
	// OutcomeError: the call failed; DecisionEvent.Err is its error.
	OutcomeError Outcome = "error"
)

// DecisionEvent describes the outcome of a Check, Consume, Track or
// Reserve (Observer.Decision).
type DecisionEvent struct {
	// Method is MethodCheck, MethodConsume, MethodTrack or
	// MethodReserve.
	Method  string
	Subject string
	Action  string
	// Plan is the subject's plan; "" when the call failed before it was
	// known.
	Plan string
	// Amount is the amount decided on (Decision.Amount), or the amount
	// asked for when the call failed.
	Amount  int64
	Outcome Outcome
	// Reason says why the use was denied; ReasonNone unless Outcome is
	// OutcomeDenied.
	Reason Reason
	// Level is the level of the decisive limit (Decision.Level);
	// LevelOK when the call failed.
	Level Level
	// Err is the error the call returns, with OutcomeError; nil
	// otherwise.
	Err error
}

// StoreEvent describes one call of the Quota to its store
// (Observer.StoreCall).
type StoreEvent struct {
	// Operation is the method called: "Apply", "Commit", "Cancel",
	// "Counters", "GetSubscription", "PutSubscription", "Records", or
	// an optional interface's: "Sums", "Top", "Prune", "Sweep", "Claim",
	// "Ack", "Retry".
	Operation string
	// Batch is the number of uses the call carried: 1, until the engine
	// writes uses in batches.
	Batch int
	// Start is when the call began, and Duration how long it took, by
	// the real clock (time.Now, not Config.Now).
	Start    time.Time
	Duration time.Duration
	// Err is the call's error as the engine classifies it: nil; one of
	// the store's answers (ErrReservationNotFound, ErrNoSubscription,
	// ErrIdempotencyConflict, ...); the caller's context error; or,
	// for a failure of the store or Config.StoreTimeout, an error
	// matching ErrStoreUnavailable.
	Err error
}

// DeliveryEvent describes one attempt to deliver a notification
// (Observer.Delivery).
type DeliveryEvent struct {
	Notification Notification
	// Attempt numbers the attempt: 1 for the first delivery,
	// Notification.Attempt + 1.
	Attempt int
	// Start is when the hook was called, and Duration how long it took,
	// by the real clock.
	Start    time.Time
	Duration time.Duration
	// Err is the hook's error (a panic is reported as an error); nil
	// when the notification was delivered.
	Err error
}

// nopEnd is the end of a call that nothing observes.
func nopEnd(error) {}

// startCall begins observing an engine call (Observer.Call). q.obs must
// not be nil.
func (q *Quota) startCall(ctx context.Context, e CallEvent) (context.Context, func(error)) {
	if q.obs.Call == nil || ctx == nil {
		return ctx, nopEnd
	}
	octx, end := q.obs.Call(ctx, e)
	if octx == nil {
		octx = ctx
	}
	if end == nil {
		end = nopEnd
	}
	return octx, end
}

// decided reports the outcome of a use to the observer (Observer.Decision):
// d and err are what the call returns; p is the use as prepared, when
// preparing it got as far as the plan. q.obs must not be nil.
func (q *Quota) decided(ctx context.Context, m mode, u *Use, p *prepared, d *Decision, err error) {
	if q.obs.Decision == nil || ctx == nil {
		return
	}
	e := DecisionEvent{Method: modeNames[m], Subject: u.Subject, Action: u.Action, Amount: u.Amount}
	switch {
	case err != nil:
		e.Outcome, e.Err = OutcomeError, err
		if p.sub.plan != nil {
			e.Plan = p.sub.plan.Name
		}
	default:
		e.Plan, e.Amount, e.Reason, e.Level = d.Plan, d.Amount, d.Reason, d.Level
		switch {
		case d.Replayed:
			e.Outcome = OutcomeReplayed
		case d.Allowed:
			e.Outcome = OutcomeAllowed
		default:
			e.Outcome = OutcomeDenied
		}
	}
	q.obs.Decision(ctx, e)
}

// startStore returns the time a store call begins, when an observer
// wants it.
func (g guardedStore) startStore() time.Time {
	if g.observe == nil {
		return time.Time{}
	}
	return time.Now()
}

// done classifies err, returned by the store call op that began at
// start, as fail does, and reports the call to the observer.
func (g guardedStore) done(ctx context.Context, op string, start time.Time, err error) error {
	err = g.fail(ctx, err)
	if g.observe != nil {
		g.observe(ctx, StoreEvent{Operation: op, Batch: 1, Start: start, Duration: time.Since(start), Err: err})
	}
	return err
}

// observeDelivery reports an attempt to deliver nf that began at start
// (Observer.Delivery).
func (q *Quota) observeDelivery(nf Notification, start time.Time, err error) {
	if q.obs == nil || q.obs.Delivery == nil {
		return
	}
	q.obs.Delivery(context.Background(), DeliveryEvent{
		Notification: nf, Attempt: nf.Attempt + 1, Start: start, Duration: time.Since(start), Err: err,
	})
}

// logger returns Config.Logger, or slog.Default() as it is now.
func (q *Quota) logger() *slog.Logger {
	if q.log != nil {
		return q.log
	}
	return slog.Default()
}

// setObserver makes q report to a copy of o, if o observes anything.
func (q *Quota) setObserver(o *Observer) {
	if o == nil || (o.Call == nil && o.Decision == nil && o.StoreCall == nil && o.Delivery == nil) {
		return
	}
	obs := *o // a later change of the caller's Observer does not race
	q.obs = &obs
	q.store.observe = obs.StoreCall
}

// useCall is the CallEvent of a use of u by mode m.
func useCall(m mode, u *Use) CallEvent {
	return CallEvent{Method: modeNames[m], Subject: u.Subject, Action: u.Action, Amount: u.Amount}
}
