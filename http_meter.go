package quota

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
)

// Meter is the framework-neutral core of Middleware, for adapters to
// routers whose middleware is not func(http.Handler) http.Handler (the
// echo and gin adapters of this repository's contrib modules). It meters
// one action for the requests it is given, in the order and with the
// responses that Middleware documents; Middleware itself is a Meter and a
// subject function. The adapter names the subject, from its framework's
// context, and tells how the handler ended:
//
//	t := meter.Begin(w, r, subject)
//	if t == nil {
//		return // answered: 401, 400, 403, 411, 413, 422, 429 or 503
//	}
//	done := false
//	defer func() {
//		if !done {
//			t.Settle(w, quota.HandlerOutcome{Panicked: true}) // the panic goes on
//		}
//	}()
//	handle(w, t.Request())
//	done = true
//	t.Settle(w, quota.HandlerOutcome{Status: status, Written: written, Failed: failed})
//
// w must be the http.ResponseWriter that the handler's response goes
// through (echo's *Response, gin's ResponseWriter): the quota headers are
// added to it, and the responses that the Meter writes are the bytes that
// Middleware writes. A Meter is safe for concurrent use.
type Meter struct {
	m *middleware
}

// NewMeter returns a Meter for action, configured with Middleware's
// options. It panics where Middleware does: a nil q, an action that is
// not a valid name that q's catalog limits, or an invalid option.
func NewMeter(q *Quota, action string, opts ...MiddlewareOption) *Meter {
	return newMeter("NewMeter", q, action, opts)
}

// newMeter builds a Meter; who names the constructor in its panics.
func newMeter(who string, q *Quota, action string, opts []MiddlewareOption) *Meter {
	if q == nil {
		panic("quota: " + who + ": nil *Quota")
	}
	if err := ValidateName(action); err != nil {
		panic("quota: " + who + ": action: " + err.Error())
	}
	if _, ok := slices.BinarySearch(q.Actions(), action); !ok {
		panic(fmt.Sprintf("quota: %s: action %q: %v", who, action, ErrUnknownAction))
	}
	m := &middleware{q: q, action: action}
	m.cfg.amount = 1
	for _, o := range opts {
		if o != nil {
			o.applyMiddleware(&m.cfg)
		}
	}
	m.cfg.validate(who)
	m.cfg.logger = q.logger
	m.cfg.setDefaults(action)
	return &Meter{m: m}
}

// Begin decides on r, whose subject the adapter names (subject "", or a
// name that ValidateName refuses, answers 401), through steps 1 to 4 of
// Middleware. When it has answered r (a 401, 400, 403, 411, 413, 422,
// 429 or 503, or WithUnauthorized's answer) it returns nil, and the
// handler must not run. Otherwise it returns the request to pass on,
// with the quota headers set on w when it holds a reservation (an empty
// body under WithBodyBytes, or a store failure under WithFailOpen, is
// passed on unmetered): run the handler with its Request, then call its
// Settle. Begin never modifies r.
func (mt *Meter) Begin(w http.ResponseWriter, r *http.Request, subject string) *Metered {
	m := mt.m
	if subject == "" || ValidateName(subject) != nil {
		m.unauthorized(w, r)
		return nil
	}
	u, short := m.use(r, subject)
	if short != reserve {
		return m.shortcut(w, r, subject, short)
	}
	res, err := m.q.Reserve(r.Context(), u)
	if err != nil {
		return m.fail(w, r, subject, err)
	}
	if !m.admit(w, r, res, u.UpToCap) {
		return nil // denied, and answered
	}
	return m.prepare(w, r, res)
}

// Metered is a request that Meter.Begin let through: its reservation (if
// it holds one) waits for Settle. It belongs to one request, and is not
// safe for concurrent use.
type Metered struct {
	m    *middleware
	r    *http.Request // the request given to Begin
	req  *http.Request // the handler's
	res  *Reservation  // nil for an unmetered request
	body *countingBody // with WithBodyBytes
	done bool
}

// Request returns the request to hand to the handler: a shallow copy of
// the one given to Begin, with the decision in its context (FromContext)
// and, with WithBodyBytes, its body bounded to the amount reserved. An
// unmetered request (an empty body with WithBodyBytes, a store failure
// with WithFailOpen) is returned as given.
func (t *Metered) Request() *http.Request { return t.req }

// HandlerOutcome is how the handler of a metered request ended, as
// Settle reads it.
type HandlerOutcome struct {
	// Status is the response's status: the one the handler wrote, or the
	// one the framework will write for it (gin's c.Status). 0 counts as
	// 200.
	Status int
	// Written reports that a status or a byte of the body has been sent:
	// Settle then writes nothing.
	Written bool
	// Failed reports that the handler failed without a status saying so
	// (an error returned to echo before anything was written, c.Error in
	// gin): the reservation is cancelled whatever Status says.
	Failed bool
	// Panicked reports that the handler panicked or called
	// runtime.Goexit: the reservation is cancelled and nothing is
	// written, so that the panic goes on to whoever recovers it.
	Panicked bool
}

func (o HandlerOutcome) status() int {
	if o.Status == 0 {
		return http.StatusOK
	}
	return o.Status
}

// Settle commits or cancels the reservation once the handler has ended,
// as step 6 (and 7, for a panic) of Middleware says: a status that
// WithSuccess accepts commits, with the bytes read under WithBodyBytes;
// another status, a failure or a panic cancels; a body read past its
// bound cancels and, if nothing was written, answers 413 on w. It runs
// within WithSettleTimeout. Only the first call does anything, and an
// unmetered request has nothing to settle.
func (t *Metered) Settle(w http.ResponseWriter, o HandlerOutcome) {
	if t.res == nil || t.done {
		return
	}
	t.done = true
	ctx, cancel := t.m.settleContext(t.r)
	defer cancel()
	switch {
	case o.Panicked:
		t.cancel(ctx)
	case t.body != nil && t.body.overrun:
		t.cancel(ctx)
		if !o.Written {
			over := t.res.Decision
			over.Allowed, over.Reason = false, ReasonPerUse
			t.m.tooLarge(w, &over, over.Amount)
		}
	case o.Failed || !t.m.cfg.success(o.status()):
		t.cancel(ctx)
	case t.body != nil && t.body.n == 0:
		t.cancel(ctx)
	default:
		t.commit(ctx)
	}
}

// commit records the use: the bytes read under WithBodyBytes, else the
// amount reserved. A replayed reservation (Decision.Replayed) belongs to
// the first request with its key, which may have settled it already:
// that is not an error.
func (t *Metered) commit(ctx context.Context) {
	var err error
	if t.body != nil {
		_, err = t.res.CommitAmount(ctx, t.body.n)
	} else {
		_, err = t.res.Commit(ctx)
	}
	if t.res.Decision.Replayed && (errors.Is(err, ErrReservationNotFound) || errors.Is(err, ErrReservationExpired)) {
		err = nil
	}
	t.m.settled(t.r, ctx, err)
}

// cancel releases the hold, unless it is a replayed one: that belongs to
// the first request with its key, whose outcome stands.
func (t *Metered) cancel(ctx context.Context) {
	if t.res.Decision.Replayed {
		return
	}
	t.m.settled(t.r, ctx, t.res.Cancel(ctx))
}

// settleContext returns the context of a settlement: r's values without
// its cancellation (a client that goes away does not undo a use that
// happened), bounded by WithSettleTimeout.
func (m *middleware) settleContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(r.Context()), m.cfg.settleTimeout)
}

// settled reports err, the outcome of a settlement run with ctx. A
// settlement cut short by WithSettleTimeout is reported as a store
// failure: it matches ErrStoreUnavailable and context.DeadlineExceeded.
func (m *middleware) settled(r *http.Request, ctx context.Context, err error) {
	if err == nil {
		return
	}
	if ctx.Err() != nil && !errors.Is(err, ErrStoreUnavailable) && !isSettleAnswer(err) {
		err = errorf("settle: %w: %w after %v, the hold is left to expire: %w",
			ErrStoreUnavailable, context.DeadlineExceeded, m.cfg.settleTimeout, err)
	}
	m.cfg.onError(r, err)
}

// isSettleAnswer reports whether err is the engine's answer to a commit
// or cancel rather than a failure to get one.
func isSettleAnswer(err error) bool {
	return errors.Is(err, ErrReservationNotFound) || errors.Is(err, ErrReservationExpired) ||
		errors.Is(err, ErrClosed) || errors.Is(err, ErrInvalidAmount)
}

// shortcut says what to do with a request, before any store call.
type shortcut uint8

const (
	reserve      shortcut = iota // reserve the use
	unmetered                    // an empty body: run the handler unmetered
	badAmount                    // 400: WithAmountFunc failed
	badUse                       // 400: WithUse failed, or its use is invalid
	bodyTooLarge                 // 413: a declared length over the bound
)

// use returns the use that r asks to reserve, or the shortcut that
// answers r without one.
func (m *middleware) use(r *http.Request, subject string) (Use, shortcut) {
	u := Use{Subject: subject, Action: m.action, Amount: m.cfg.amount, Features: m.cfg.features}
	switch {
	case m.cfg.bodyBytes:
		switch n := bodyLength(r); {
		case n == 0:
			return u, unmetered
		case n > m.bodyBound():
			return u, bodyTooLarge
		case n > 0:
			u.Amount = n
		default: // reserve as much as one use may take
			u.Amount, u.UpToCap = m.bodyBound(), true
		}
	case m.cfg.amountFunc != nil:
		a, err := m.cfg.amountFunc(r)
		if err != nil || a < 1 || a > MaxAmount {
			return u, badAmount
		}
		u.Amount = a
	}
	if !m.describe(r, &u) {
		return u, badUse
	}
	return u, reserve
}

// describe sets the idempotency key, resource id and metadata of u from
// r: WithIdempotencyKeyHeader, then the WithUse functions. It reports
// false when one fails.
func (m *middleware) describe(r *http.Request, u *Use) bool {
	if name := m.cfg.keyHeader; name != "" {
		switch vs := r.Header.Values(name); {
		case len(vs) > 1:
			return false
		case len(vs) == 1 && vs[0] != "":
			u.Key = m.action + ":" + vs[0]
		}
	}
	for _, f := range m.cfg.useFuncs {
		d := *u
		if err := f(r, &d); err != nil {
			return false
		}
		u.Key, u.ResourceID, u.Metadata = d.Key, d.ResourceID, d.Metadata
	}
	return true
}

// bodyLength returns the declared length of r's body: 0 when it has
// none, -1 when it is unknown.
func bodyLength(r *http.Request) int64 {
	switch {
	case r.Body == nil || r.Body == http.NoBody:
		return 0
	case r.ContentLength == 0:
		return -1 // a body with no declared length, as http.Client reads it
	}
	return r.ContentLength
}

// bodyBound is the most a body may hold whatever the plan:
// WithMaxBodyBytes, and MaxAmount.
func (m *middleware) bodyBound() int64 {
	if m.cfg.maxBody > 0 {
		return min(m.cfg.maxBody, MaxAmount)
	}
	return MaxAmount
}

// shortcut answers a request that reserves nothing, after the feature
// gate that its Reserve call would have applied. It returns the
// unmetered request to pass on, or nil when it answered.
func (m *middleware) shortcut(w http.ResponseWriter, r *http.Request, subject string, s shortcut) *Metered {
	if len(m.cfg.features) > 0 {
		if t, pass := m.gate(w, r, subject); !pass {
			return t
		}
	}
	switch s {
	case unmetered:
		return &Metered{m: m, r: r, req: r}
	case badAmount:
		writeProblem(w, statusProblem(http.StatusBadRequest, "The amount of this request is invalid."))
	case badUse:
		writeProblem(w, statusProblem(http.StatusBadRequest, "The idempotency key, resource or metadata of this request is invalid."))
	case bodyTooLarge:
		m.tooLarge(w, nil, m.bodyBound())
	}
	return nil
}

// gate applies the feature gate alone, with one Check whose verdict on
// the amount is ignored. It reports whether the request may go on;
// otherwise it has been answered, or it is to pass on unmetered (a store
// failure with WithFailOpen).
func (m *middleware) gate(w http.ResponseWriter, r *http.Request, subject string) (*Metered, bool) {
	d, err := m.q.Check(r.Context(), Use{Subject: subject, Action: m.action, Amount: 1, Features: m.cfg.features})
	if err != nil {
		return m.fail(w, r, subject, err), false
	}
	if d.Reason == ReasonFeature {
		writeProblem(w, featureProblem(d.Feature))
		return nil, false
	}
	return nil, true
}

// admit reports whether the reservation res lets the request through to
// the handler; otherwise it answers: a missing feature, a denial, or a
// body of unknown length (upToCap) that nothing caps.
func (m *middleware) admit(w http.ResponseWriter, r *http.Request, res *Reservation, upToCap bool) bool {
	d := res.Decision
	if d.Reason == ReasonFeature {
		writeProblem(w, featureProblem(d.Feature))
		return false
	}
	if upToCap && !d.Allowed {
		if full, ok := fullLimit(d); ok {
			m.deny(w, full)
			return false
		}
	}
	if upToCap && m.cfg.maxBody == 0 && !hasCap(d) {
		if d.Allowed {
			t := &Metered{m: m, r: r, res: res}
			ctx, cancel := m.settleContext(r)
			t.cancel(ctx)
			cancel()
		}
		writeProblem(w, statusProblem(http.StatusLengthRequired, "This request needs a Content-Length."))
		return false
	}
	if !d.Allowed {
		m.deny(w, d)
		return false
	}
	return true
}

// fullLimit returns, for a denied decision, the denial of a use of 1 and
// true when a limit has nothing left: a body of unknown length is then
// refused for that limit, whatever its size.
func fullLimit(d Decision) (Decision, bool) {
	for _, l := range d.Limits.All() {
		if l.Limit != Unlimited && l.Remaining == 0 {
			d.LimitStatus, d.Amount = l, 1
			return d, true
		}
	}
	return d, false
}

// hasCap reports whether a limit of d has a per-use cap.
func hasCap(d Decision) bool {
	for _, l := range d.Limits.All() {
		if l.MaxPerUse > 0 {
			return true
		}
	}
	return false
}

// prepare sets the quota headers of the allowed reservation res, and
// returns the metered request: a copy of r with the decision in its
// context and, with WithBodyBytes, its body bounded to the amount
// reserved, counted.
func (m *middleware) prepare(w http.ResponseWriter, r *http.Request, res *Reservation) *Metered {
	d := res.Decision
	m.setHeaders(w.Header(), d, m.q.Now())
	t := &Metered{m: m, r: r, res: res}
	t.req = r.WithContext(context.WithValue(r.Context(), decisionKey{}, d))
	if m.cfg.bodyBytes {
		t.body = &countingBody{ReadCloser: http.MaxBytesReader(w, r.Body, d.Amount)}
		t.req.Body = t.body
	}
	return t
}

// fail answers an error of the engine or the store, or returns the
// unmetered request to pass on (WithFailOpen).
func (m *middleware) fail(w http.ResponseWriter, r *http.Request, subject string, err error) *Metered {
	switch {
	case errors.Is(err, ErrInvalidSubject):
		m.unauthorized(w, r)
		return nil
	case errors.Is(err, ErrInvalidKey) || errors.Is(err, ErrInvalidName) || errors.Is(err, ErrInvalidMetadata):
		// What WithUse or WithIdempotencyKeyHeader took from the
		// request; the engine refused it before any store call.
		return m.shortcut(w, r, subject, badUse)
	case errors.Is(err, ErrIdempotencyConflict):
		writeProblem(w, statusProblem(http.StatusUnprocessableEntity, "This idempotency key was used for another request."))
		return nil
	case m.cfg.failOpen && !isNoPlan(err):
		m.cfg.onError(r, err)
		return &Metered{m: m, r: r, req: r}
	}
	writeFailure(w, r, err, &m.cfg.httpConfig,
		"You have no plan that includes this.",
		"Usage cannot be checked right now; try again later.")
	return nil
}

func (m *middleware) unauthorized(w http.ResponseWriter, r *http.Request) {
	writeUnauthorized(w, r, m.cfg.unauthorized)
}
