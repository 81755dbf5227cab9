package quota

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
)

type decisionKey struct{}

// FromContext returns the decision of the Middleware that let the request
// through, from the request's context. It reports false when no
// Middleware metered the request: an empty body with WithBodyBytes, or a
// store failure with WithFailOpen. With nested middlewares, it returns
// the innermost one's decision.
func FromContext(ctx context.Context) (Decision, bool) {
	d, ok := ctx.Value(decisionKey{}).(Decision)
	return d, ok
}

// Middleware returns a middleware that meters action for every request it
// lets through to the next handler, with a reservation that cannot be
// raced past: concurrent requests never get more than the limits allow,
// and a use counts only once the handler has succeeded. It works with
// http.ServeMux and any router that takes func(http.Handler) http.Handler
// (chi's Use and With, echo.WrapMiddleware). The returned handler is safe
// for concurrent use; it meters every request it is given, whatever its
// method or path, so mount it on the routes to meter.
//
// subject names who is metered. It is the app's to decide what it trusts
// (a session, a verified token, a header set by its own proxy); nothing
// of the request is trusted otherwise. A request is handled in this
// order, and each response that the middleware writes ends the request
// without calling the handler:
//
//  1. Subject: subject(r) fails, returns "" or returns a name that
//     ValidateName refuses: 401 (or the WithUnauthorized handler).
//  2. Feature gate (WithFeatures): a plan that lacks a feature: 403, type
//     ProblemTypeNotInPlan, with the member "feature". The gate is part
//     of the Reserve call of step 4 (Use.Features); a request that
//     reserves nothing (answered at step 3, or with an empty body) passes
//     it through one Check call instead.
//  3. Amount, from the request alone: WithAmount (default 1);
//     WithAmountFunc, 400 when it fails or returns an amount outside 1 to
//     MaxAmount; or WithBodyBytes, where an empty body skips every later
//     step (the handler runs unmetered), a declared Content-Length over
//     WithMaxBodyBytes or MaxAmount answers 413 with no quota header, and
//     a body of unknown length is reserved up to its cap (step 4).
//  4. Reserve: one call, the request's only read of the subject's
//     subscription, which checks the features (step 2), and for a body of
//     unknown length lowers the amount, WithMaxBodyBytes or else
//     MaxAmount, to the smallest per-use cap of the action's limits
//     (Use.UpToCap). Such a body is refused as below when not even 1
//     fits, and otherwise answered 411 when neither a per-use cap nor
//     WithMaxBodyBytes bounds it (a hold granted is cancelled first). A
//     denial answers 413, type ProblemTypeTooLarge, when the amount is
//     over a per-use cap (ReasonPerUse); 403, type ProblemTypeNotInPlan,
//     when the refusing limit's Max is 0 (the plan does not include the
//     action: waiting will not help); and 429, type WithProblemType
//     (default DefaultProblemType), otherwise, with Retry-After (seconds
//     until the refusing limit resets, rounded up) unless that limit is
//     an allocation, which never resets.
//  5. The handler runs with the quota headers set, the decision in its
//     request's context (FromContext), and, with WithBodyBytes, the body
//     bounded by http.MaxBytesReader to the amount reserved.
//  6. Settlement, after the handler returns. If its read of the body hit
//     the bound, the reservation is cancelled and, if the handler wrote
//     nothing, the response is 413, type ProblemTypeTooLarge; a status
//     the handler wrote stands. Otherwise a status that WithSuccess
//     accepts (default: below 400) commits the reservation (with the bytes
//     read under WithBodyBytes, or cancels it if none were read), and any
//     other status cancels it. A handler that writes nothing counts as
//     200; a hijacked connection counts as 200 unless a status was written
//     first. Commit and Cancel run with the request's context values but
//     not its cancellation: a client that goes away does not undo a use
//     that happened. A handler that runs longer than
//     Config.ReservationTTL loses its hold: the commit then fails with
//     ErrReservationExpired, reported to the error hook, and the use is
//     not recorded.
//  7. A panic in the handler (http.ErrAbortHandler included), or
//     runtime.Goexit, cancels the reservation; the panic is not recovered,
//     so it goes on with its value and stack.
//
// Quota headers. Responses that follow a decision (the denials of step 4,
// steps 5 and 6) carry HeaderRateLimitPolicy and HeaderRateLimit, one
// item per limit of the action that is not Unlimited (neither field when
// all are), HeaderQuotaLevel, and with WithLegacyHeaders the X-RateLimit
// fields. The figures of an allowed request count its own reservation.
// Headers are added, so the items of nested middlewares (an upload count
// around its storage bytes) add up; HeaderQuotaLevel holds the highest
// level and the legacy fields the innermost middleware's. Responses of
// steps 1 to 3, the 411 of step 4 and those to store failures carry none.
//
// Errors. A subject with no subscription (and no Config.DefaultPlan)
// answers 403, type ProblemTypeNoSubscription; so does a plan that the
// catalog no longer defines, which is also reported to the error hook.
// Any other error of the engine or the store, ErrClosed and context
// errors included, is a store failure: it is reported to the error hook
// (WithErrorHook, default slog) and answered 503 with Retry-After
// (WithUnavailableRetryAfter, default 5 s), without calling the handler;
// with WithFailOpen the handler runs instead, unmetered. Failed commits
// and cancels go to the error hook; they cannot change the response.
//
// The middleware's responses are RFC 9457 problem details: Content-Type
// ContentTypeProblem, X-Content-Type-Options nosniff, Content-Length, and
// a Problem body that never holds an error's text. Each path writes one
// response and returns. The caller's *http.Request is never modified: the
// handler gets a shallow copy with its own context and body. The wrapped
// ResponseWriter implements http.Flusher, http.Hijacker and io.ReaderFrom
// and has Unwrap, for http.ResponseController.
//
// Middleware panics if q or subject is nil, if action is not a valid name
// that q's catalog limits, or if an option is invalid (an amount out of
// range, a negative size or duration, an invalid feature name); the
// function it returns panics on a nil handler.
func Middleware(q *Quota, action string, subject func(*http.Request) (string, error), opts ...MiddlewareOption) func(http.Handler) http.Handler {
	if q == nil {
		panic("quota: Middleware: nil *Quota")
	}
	if subject == nil {
		panic("quota: Middleware: nil subject function")
	}
	if err := ValidateName(action); err != nil {
		panic("quota: Middleware: action: " + err.Error())
	}
	if _, ok := slices.BinarySearch(q.Actions(), action); !ok {
		panic(fmt.Sprintf("quota: Middleware: action %q: %v", action, ErrUnknownAction))
	}
	m := &middleware{q: q, action: action, subject: subject}
	m.cfg.amount = 1
	for _, o := range opts {
		if o != nil {
			o.applyMiddleware(&m.cfg)
		}
	}
	m.cfg.validate()
	m.cfg.setDefaults(action)
	return func(next http.Handler) http.Handler {
		if next == nil {
			panic("quota: Middleware: nil handler")
		}
		return &meterHandler{m: m, next: next}
	}
}

// validate panics on an invalid option.
func (c *middlewareConfig) validate() {
	if !c.bodyBytes && c.amountFunc == nil && (c.amount < 1 || c.amount > MaxAmount) {
		panic(fmt.Sprintf("quota: Middleware: amount %d out of 1..%d", c.amount, MaxAmount))
	}
	if c.maxBody < 0 {
		panic(fmt.Sprintf("quota: Middleware: negative maximum body size %d", c.maxBody))
	}
	c.httpConfig.validate("Middleware")
	for _, f := range c.features {
		if err := ValidateName(f); err != nil {
			panic("quota: Middleware: feature: " + err.Error())
		}
	}
}

func (c *middlewareConfig) setDefaults(action string) {
	if c.success == nil {
		c.success = func(status int) bool { return status < 400 }
	}
	if c.problemType == "" {
		c.problemType = DefaultProblemType
	}
	c.httpConfig.setDefaults("quota middleware", "action", action)
}

type middleware struct {
	q       *Quota
	action  string
	subject func(*http.Request) (string, error)
	cfg     middlewareConfig
}

type meterHandler struct {
	m    *middleware
	next http.Handler
}

func (h *meterHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m := h.m
	subject, err := m.subject(r)
	if err != nil || subject == "" || ValidateName(subject) != nil {
		m.unauthorized(w, r)
		return
	}
	u, short := m.use(r, subject)
	if short != reserve {
		h.shortcut(w, r, subject, short)
		return
	}
	res, err := m.q.Reserve(r.Context(), u)
	if err != nil {
		m.fail(w, r, h.next, err)
		return
	}
	if !m.admit(w, r, res, u.UpToCap) {
		return // denied, and answered
	}
	rw, r2, body := m.prepare(w, r, res.Decision)
	settled := false
	defer func() {
		if !settled { // the handler panicked or called runtime.Goexit
			m.report(r, res.Cancel(context.WithoutCancel(r.Context())))
		}
	}()
	h.next.ServeHTTP(rw, r2)
	settled = true
	m.settle(w, r, res, rw, body)
}

// shortcut says what to do with a request, before any store call.
type shortcut uint8

const (
	reserve      shortcut = iota // reserve the use
	unmetered                    // an empty body: run the handler unmetered
	badAmount                    // 400: WithAmountFunc failed
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
	return u, reserve
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
// gate that its Reserve call would have applied.
func (h *meterHandler) shortcut(w http.ResponseWriter, r *http.Request, subject string, s shortcut) {
	m := h.m
	if len(m.cfg.features) > 0 && !h.gate(w, r, subject) {
		return
	}
	switch s {
	case unmetered:
		h.next.ServeHTTP(w, r)
	case badAmount:
		writeProblem(w, statusProblem(http.StatusBadRequest, "The amount of this request is invalid."))
	case bodyTooLarge:
		m.tooLarge(w, nil, m.bodyBound())
	}
}

// gate applies the feature gate alone, with one Check whose verdict on
// the amount is ignored. It reports whether the request may go on;
// otherwise it has been answered.
func (h *meterHandler) gate(w http.ResponseWriter, r *http.Request, subject string) bool {
	m := h.m
	d, err := m.q.Check(r.Context(), Use{Subject: subject, Action: m.action, Amount: 1, Features: m.cfg.features})
	if err != nil {
		m.fail(w, r, h.next, err)
		return false
	}
	if d.Reason == ReasonFeature {
		writeProblem(w, featureProblem(d.Feature))
		return false
	}
	return true
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
			m.report(r, res.Cancel(context.WithoutCancel(r.Context())))
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
	for _, l := range d.Limits {
		if l.Limit != Unlimited && l.Remaining == 0 {
			d.LimitStatus, d.Amount = l, 1
			return d, true
		}
	}
	return d, false
}

// hasCap reports whether a limit of d has a per-use cap.
func hasCap(d Decision) bool {
	for _, l := range d.Limits {
		if l.MaxPerUse > 0 {
			return true
		}
	}
	return false
}

// prepare sets the quota headers of the allowed decision d, and returns
// what the handler gets: a writer that notes its status, and a copy of r
// with d in its context and, with WithBodyBytes, its body bounded to the
// amount reserved, counted.
func (m *middleware) prepare(w http.ResponseWriter, r *http.Request, d Decision) (*responseWriter, *http.Request, *countingBody) {
	m.setHeaders(w.Header(), d, m.q.Now())
	rw := &responseWriter{ResponseWriter: w}
	r2 := r.WithContext(context.WithValue(r.Context(), decisionKey{}, d))
	var body *countingBody
	if m.cfg.bodyBytes {
		body = &countingBody{ReadCloser: http.MaxBytesReader(w, r.Body, d.Amount)}
		r2.Body = body
	}
	return rw, r2, body
}

// settle commits or cancels res once the handler has returned, as its
// status and its read of the body say.
func (m *middleware) settle(w http.ResponseWriter, r *http.Request, res *Reservation, rw *responseWriter, body *countingBody) {
	ctx := context.WithoutCancel(r.Context())
	switch {
	case body != nil && body.overrun:
		m.report(r, res.Cancel(ctx))
		if !rw.wrote {
			over := res.Decision
			over.Allowed, over.Reason = false, ReasonPerUse
			m.tooLarge(w, &over, over.Amount)
		}
	case !m.cfg.success(rw.statusOr200()):
		m.report(r, res.Cancel(ctx))
	case body != nil && body.n == 0:
		m.report(r, res.Cancel(ctx))
	case body != nil:
		_, err := res.CommitAmount(ctx, body.n)
		m.report(r, err)
	default:
		_, err := res.Commit(ctx)
		m.report(r, err)
	}
}

func (m *middleware) report(r *http.Request, err error) {
	if err != nil {
		m.cfg.onError(r, err)
	}
}

// fail answers an error of the engine or the store.
func (m *middleware) fail(w http.ResponseWriter, r *http.Request, next http.Handler, err error) {
	if errors.Is(err, ErrInvalidSubject) {
		m.unauthorized(w, r)
		return
	}
	if m.cfg.failOpen && !isNoPlan(err) {
		m.cfg.onError(r, err)
		next.ServeHTTP(w, r)
		return
	}
	writeFailure(w, r, err, &m.cfg.httpConfig,
		"You have no plan that includes this.",
		"Usage cannot be checked right now; try again later.")
}

func (m *middleware) unauthorized(w http.ResponseWriter, r *http.Request) {
	writeUnauthorized(w, r, m.cfg.unauthorized)
}
