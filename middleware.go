package quota

import (
	"context"
	"fmt"
	"net/http"
)

type decisionKey struct{}

// FromContext returns the decision of the Middleware (or Meter, under
// the echo and gin adapters) that let the request through, from the
// request's context. It reports false when none metered the request: an
// empty body with WithBodyBytes, or a store failure with WithFailOpen.
// With nested middlewares, it returns the innermost one's decision.
func FromContext(ctx context.Context) (Decision, bool) {
	d, ok := ctx.Value(decisionKey{}).(Decision)
	return d, ok
}

// Middleware returns a middleware that meters action for every request it
// lets through to the next handler, with a reservation that cannot be
// raced past: concurrent requests never get more than the limits allow,
// and a use counts only once the handler has succeeded. It works with
// http.ServeMux and any router that takes func(http.Handler) http.Handler
// (chi's Use and With). The returned handler is safe for concurrent use;
// it meters every request it is given, whatever its method or path, so
// mount it on the routes to meter. For echo and gin, whose handlers report
// failures in ways that a net/http middleware cannot see (an error
// returned to echo before anything is written, gin's c.Error), use the
// adapters of the modules github.com/quotakit/quota/contrib/echo and
// contrib/gin, built on the same core (Meter): echo.WrapMiddleware around
// Middleware would commit a request whose handler returned an error.
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
//  3. The use, from the request alone. Its amount: WithAmount (default
//     1); WithAmountFunc, 400 when it fails or returns an amount outside
//     1 to MaxAmount; or WithBodyBytes, where an empty body skips every
//     later step (the handler runs unmetered), a declared Content-Length
//     over WithMaxBodyBytes or MaxAmount answers 413 with no quota
//     header, and a body of unknown length is reserved up to its cap
//     (step 4). Its idempotency key, resource id and metadata:
//     WithIdempotencyKeyHeader and WithUse, 400 when a WithUse function
//     fails or the engine refuses what they set (a key or resource id
//     that ValidateName refuses, metadata that is not a valid JSON
//     object), before any store call.
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
//     (default DefaultProblemType), otherwise. The 429 has Retry-After
//     (the seconds until the refusing limit resets, rounded up) only
//     when that is at most WithMaxRetryAfter (default
//     DefaultMaxRetryAfter, 1 hour), and never for an allocation, which
//     does not reset: see WithMaxRetryAfter. An idempotency key used
//     before with another payload answers 422.
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
//     not its cancellation (a client that goes away does not undo a use
//     that happened), within WithSettleTimeout (default
//     DefaultSettleTimeout, 2 s): the response, which net/http sends once
//     the middleware returns, waits for the store no longer than that.
//     Past it the settlement is abandoned, the error hook is told once
//     (an error matching ErrStoreUnavailable and
//     context.DeadlineExceeded), and the hold counts until it expires
//     after Config.ReservationTTL: a commit cut short is not recorded,
//     unless the store applied it before the cut. A
//     handler that runs longer than Config.ReservationTTL loses its hold:
//     the commit then fails with ErrReservationExpired, reported to the
//     error hook, and the use is not recorded. A replayed reservation (a
//     key seen before: Decision.Replayed) belongs to the first request
//     with that key: it is committed on success (the first may have done
//     so already, which is not an error) and never cancelled.
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
// steps 1 to 3, the 411 and 422 of step 4 and those to store failures
// carry none.
//
// Errors. A subject with no subscription (and no Config.DefaultPlan)
// answers 403, type ProblemTypeNoSubscription; so does a plan that the
// catalog no longer defines, which is also reported to the error hook.
// Any other error of the engine or the store, ErrClosed and context
// errors included, is a store failure: it is reported to the error hook
// (WithErrorHook, default Config.Logger) and answered 503 with Retry-After
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
	if subject == nil {
		panic("quota: Middleware: nil subject function")
	}
	mt := newMeter("Middleware", q, action, opts)
	return func(next http.Handler) http.Handler {
		if next == nil {
			panic("quota: Middleware: nil handler")
		}
		return &meterHandler{meter: mt, subject: subject, next: next}
	}
}

// validate panics, naming who, on an invalid option.
func (c *middlewareConfig) validate(who string) {
	if !c.bodyBytes && c.amountFunc == nil && (c.amount < 1 || c.amount > MaxAmount) {
		panic(fmt.Sprintf("quota: %s: amount %d out of 1..%d", who, c.amount, MaxAmount))
	}
	if c.maxBody < 0 {
		panic(fmt.Sprintf("quota: %s: negative maximum body size %d", who, c.maxBody))
	}
	if c.settleTimeout < 0 {
		panic("quota: " + who + ": negative settlement timeout " + c.settleTimeout.String())
	}
	if c.maxRetryAfter < 0 {
		panic("quota: " + who + ": negative maximum Retry-After " + c.maxRetryAfter.String())
	}
	c.httpConfig.validate(who)
	for _, f := range c.features {
		if err := ValidateName(f); err != nil {
			panic("quota: " + who + ": feature: " + err.Error())
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
	if c.settleTimeout == 0 {
		c.settleTimeout = DefaultSettleTimeout
	}
	if c.maxRetryAfter == 0 {
		c.maxRetryAfter = DefaultMaxRetryAfter
	}
	c.httpConfig.setDefaults("quota middleware", "action", action)
}

type middleware struct {
	q      *Quota
	action string
	cfg    middlewareConfig
}

type meterHandler struct {
	meter   *Meter
	subject func(*http.Request) (string, error)
	next    http.Handler
}

func (h *meterHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	subject, err := h.subject(r)
	if err != nil {
		subject = "" // 401
	}
	t := h.meter.Begin(w, r, subject)
	switch {
	case t == nil:
		return // answered
	case t.res == nil:
		h.next.ServeHTTP(w, t.req) // unmetered
		return
	}
	rw := &responseWriter{ResponseWriter: w}
	done := false
	defer func() {
		if !done { // the handler panicked or called runtime.Goexit
			t.Settle(w, HandlerOutcome{Panicked: true})
		}
	}()
	h.next.ServeHTTP(rw, t.req)
	done = true
	t.Settle(w, HandlerOutcome{Status: rw.status, Written: rw.wrote})
}
