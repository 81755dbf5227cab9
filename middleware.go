package quota

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Header names that Middleware sets.
const (
	// HeaderRateLimitPolicy lists the quota policies of the action, one
	// per limit that is not Unlimited, in the structured-field syntax of
	// the IETF httpapi draft (draft-ietf-httpapi-ratelimit-headers-08 and
	// later): `"diagram.upload/month";q=5;w=2592000`. The policy name is
	// the action and the limit's period ("total" for an allocation); q is
	// the limit's Max; w, the length of the current window in seconds,
	// is omitted for an allocation; qu="content-bytes" is added when the
	// amount is the body's bytes (WithBodyBytes).
	HeaderRateLimitPolicy = "RateLimit-Policy"

	// HeaderRateLimit carries the service limit of each policy of
	// HeaderRateLimitPolicy, in the same order and syntax:
	// `"diagram.upload/month";r=0;t=1234`. r is what remains; t, the
	// seconds until the window resets rounded up, is omitted for an
	// allocation.
	HeaderRateLimit = "RateLimit"

	// HeaderRetryAfter is the standard Retry-After field, in whole
	// seconds rounded up.
	HeaderRetryAfter = "Retry-After"

	// HeaderQuotaLevel is the level of the most used limit of the
	// action: "ok", "warning", "critical" or "exceeded" (see Level), so a
	// client can show a toast, a banner or a modal without asking again.
	HeaderQuotaLevel = "Quota-Level"

	// HeaderXRateLimitLimit, HeaderXRateLimitRemaining and
	// HeaderXRateLimitReset are the legacy fields that WithLegacyHeaders
	// adds, for the decisive limit: its Max, what remains and when it
	// resets, in Unix seconds.
	HeaderXRateLimitLimit     = "X-RateLimit-Limit"
	HeaderXRateLimitRemaining = "X-RateLimit-Remaining"
	HeaderXRateLimitReset     = "X-RateLimit-Reset"
)

// ContentTypeProblem is the media type of the error responses that
// Middleware writes: an RFC 9457 problem details object.
const ContentTypeProblem = "application/problem+json"

// Problem types of the responses that Middleware writes. Responses whose
// status says it all (400, 401, 411 and 503) have type "about:blank" and
// the status's text as title.
const (
	// DefaultProblemType is the type of a 429 response, unless
	// WithProblemType replaces it.
	DefaultProblemType = "https://quotakit.dev/problems/quota-exceeded"

	// ProblemTypeNotInPlan is the type of a 403 response to a use that the
	// subject's plan does not include: a required feature it lacks, or a
	// limit of 0 on the action.
	ProblemTypeNotInPlan = "https://quotakit.dev/problems/not-in-plan"

	// ProblemTypeNoSubscription is the type of a 403 response to a
	// subject that has no subscription (and no default plan applies), or
	// whose plan the catalog no longer defines.
	ProblemTypeNoSubscription = "https://quotakit.dev/problems/no-subscription"

	// ProblemTypeTooLarge is the type of a 413 response: a use larger than
	// the action's per-use cap, or a body larger than allowed.
	ProblemTypeTooLarge = "https://quotakit.dev/problems/too-large"
)

// DefaultUnavailableRetryAfter is the Retry-After of a 503 response to a
// store failure, unless WithUnavailableRetryAfter replaces it.
const DefaultUnavailableRetryAfter = 5 * time.Second

// Problem is the body of every error response that Middleware writes, an
// RFC 9457 problem details object; clients may decode into it. It never
// holds an error's text.
type Problem struct {
	// Type is a URI naming the kind of problem: DefaultProblemType,
	// ProblemTypeNotInPlan, ProblemTypeNoSubscription,
	// ProblemTypeTooLarge or "about:blank".
	Type string `json:"type"`
	// Title is a short summary of Type: "Quota exceeded".
	Title string `json:"title"`
	// Status is the response's status code.
	Status int `json:"status"`
	// Detail explains this occurrence to a person: the app's upgrade
	// message (WithMessage), or a default text naming the plan, the limit
	// and when it resets.
	Detail string `json:"detail"`
	// Feature is the feature the plan lacks, on a 403 response of the
	// feature gate.
	Feature string `json:"feature,omitempty"`
	// ProblemUsage holds the figures of the limit that refused the use,
	// on the responses that follow a decision (429, and 403 and 413
	// after Reserve); nil otherwise. Its members are inlined.
	*ProblemUsage
}

// ProblemUsage holds the figures of a limit, as extension members of a
// Problem. They are those of Decision's LimitStatus.
type ProblemUsage struct {
	Action string `json:"action"`
	Plan   string `json:"plan"`
	// Used counts what the subject used in the window, reservations
	// included.
	Used int64 `json:"used"`
	// Limit is the limit's Max.
	Limit     int64 `json:"limit"`
	Remaining int64 `json:"remaining"`
	// Percent is Used as a percentage of Limit, rounded to 2 decimals.
	Percent float64 `json:"percent"`
	Level   Level   `json:"level"`
	// MaxPerUse is the per-use cap, on a 413 response.
	MaxPerUse int64 `json:"max_per_use,omitempty"`
	// ResetsAt is when the limit's window resets, in UTC (RFC 3339);
	// omitted for an allocation, which never resets.
	ResetsAt time.Time `json:"resets_at,omitzero"`
}

// MiddlewareOption configures Middleware. The With functions return
// them; the zero configuration is described by each option's default.
type MiddlewareOption func(*middlewareConfig)

type middlewareConfig struct {
	amount       int64
	amountFunc   func(*http.Request) (int64, error)
	bodyBytes    bool
	maxBody      int64
	features     []string
	success      func(status int) bool
	message      func(Decision) string
	problemType  string
	legacy       bool
	failOpen     bool
	onError      func(*http.Request, error)
	unauthorized http.Handler
	retry503     time.Duration
}

// WithAmount charges every request n (1 to MaxAmount). Default 1. The last
// of WithAmount, WithAmountFunc and WithBodyBytes wins.
func WithAmount(n int64) MiddlewareOption {
	return func(c *middlewareConfig) {
		c.amount, c.amountFunc, c.bodyBytes = n, nil, false
	}
}

// WithAmountFunc charges every request the amount f computes from it. f
// must not read the body. An error from f, or an amount that is not from
// 1 to MaxAmount, answers 400.
func WithAmountFunc(f func(*http.Request) (int64, error)) MiddlewareOption {
	return func(c *middlewareConfig) {
		c.amount, c.amountFunc, c.bodyBytes = 0, f, false
	}
}

// WithBodyBytes charges every request the bytes of its body that the
// handler actually reads, for an allocation such as storage bytes. The
// body is bounded with http.MaxBytesReader to what was reserved:
//
//   - A declared Content-Length is reserved as is; it is answered 413
//     without a store call if it is larger than WithMaxBodyBytes or
//     MaxAmount, and 413 by the engine (ReasonPerUse) if it is larger
//     than a per-use cap of the action's limits.
//   - A body of unknown length (chunked) is reserved at its cap: the
//     smallest per-use cap of the action's limits (read first with
//     Check) and WithMaxBodyBytes. It is answered 411 when neither
//     exists, and refused (429, or 403 for a limit of 0) when less than
//     the cap remains, whatever its actual size.
//   - An empty body (Content-Length: 0) passes to the handler unmetered:
//     nothing is reserved or charged, no quota header is set and
//     FromContext reports false.
//
// On success the reservation is committed with the bytes read
// (CommitAmount), and cancelled when the handler read none.
func WithBodyBytes() MiddlewareOption {
	return func(c *middlewareConfig) {
		c.amount, c.amountFunc, c.bodyBytes = 0, nil, true
	}
}

// WithMaxBodyBytes bounds the body, with WithBodyBytes, to n bytes
// whatever the plan's per-use cap. Default 0: only the plan's cap bounds
// it.
func WithMaxBodyBytes(n int64) MiddlewareOption {
	return func(c *middlewareConfig) { c.maxBody = n }
}

// WithFeatures requires every feature of features: a subject whose plan
// lacks one is answered 403 before anything is reserved. Default none.
func WithFeatures(features ...string) MiddlewareOption {
	return func(c *middlewareConfig) { c.features = append(c.features, features...) }
}

// WithSuccess sets which response statuses commit the reservation; the
// others cancel it. Default: status < 400.
func WithSuccess(f func(status int) bool) MiddlewareOption {
	return func(c *middlewareConfig) { c.success = f }
}

// WithMessage sets the detail of the responses to a denial (429, and the
// 403 and 413 that follow a decision), for instance an upgrade message per
// plan and action. An empty string selects the default text, which names
// the plan, the limit and when it resets.
func WithMessage(f func(Decision) string) MiddlewareOption {
	return func(c *middlewareConfig) { c.message = f }
}

// WithProblemType sets the type URI of 429 responses. Default
// DefaultProblemType.
func WithProblemType(uri string) MiddlewareOption {
	return func(c *middlewareConfig) { c.problemType = uri }
}

// WithLegacyHeaders adds the X-RateLimit-Limit, X-RateLimit-Remaining and
// X-RateLimit-Reset fields for the decisive limit, when it is not
// Unlimited (Reset only when it resets). Default off.
func WithLegacyHeaders() MiddlewareOption {
	return func(c *middlewareConfig) { c.legacy = true }
}

// WithFailOpen lets requests through, unmetered, when the store fails:
// the handler runs without a reservation, quota headers or a decision in
// its context, and the error is reported to the error hook. Default:
// fail closed with 503.
func WithFailOpen() MiddlewareOption {
	return func(c *middlewareConfig) { c.failOpen = true }
}

// WithErrorHook sets the function told of every error that the
// middleware meets: store failures (answered 503, or failed open),
// 403 answers to a plan the catalog no longer defines, and failed commits
// and cancels, which happen after the response and never change it.
// Default: log them with slog.Default at level Error.
func WithErrorHook(f func(*http.Request, error)) MiddlewareOption {
	return func(c *middlewareConfig) { c.onError = f }
}

// WithUnauthorized sets the handler that answers when the subject function
// fails or returns "" (to add a WWW-Authenticate field, or redirect to a
// login page). Default: a 401 problem response.
func WithUnauthorized(h http.Handler) MiddlewareOption {
	return func(c *middlewareConfig) { c.unauthorized = h }
}

// WithUnavailableRetryAfter sets the Retry-After of 503 responses.
// Default DefaultUnavailableRetryAfter.
func WithUnavailableRetryAfter(d time.Duration) MiddlewareOption {
	return func(c *middlewareConfig) { c.retry503 = d }
}

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
//     ProblemTypeNotInPlan, with the member "feature". One HasFeature call
//     per feature.
//  3. Amount: WithAmount (default 1); WithAmountFunc, 400 when it fails
//     or returns an amount outside 1 to MaxAmount; or WithBodyBytes, where
//     an empty body skips every later step (the handler runs unmetered), a
//     declared Content-Length over WithMaxBodyBytes or MaxAmount answers
//     413 with no quota header, and a body of unknown length is reserved
//     at its cap, learnt with Check (which answers like step 4 when not
//     even 1 fits), or answered 411 when nothing caps it.
//  4. Reserve. A denial answers 413, type ProblemTypeTooLarge, when the
//     amount is over a per-use cap (ReasonPerUse); 403, type
//     ProblemTypeNotInPlan, when the refusing limit's Max is 0 (the plan
//     does not include the action: waiting will not help); and 429, type
//     WithProblemType (default DefaultProblemType), otherwise, with
//     Retry-After (seconds until the refusing limit resets, rounded up)
//     unless that limit is an allocation, which never resets.
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
// Quota headers. Responses that follow a decision (steps 4 to 6) carry
// HeaderRateLimitPolicy and HeaderRateLimit, one item per limit of the
// action that is not Unlimited (neither field when all are),
// HeaderQuotaLevel, and with WithLegacyHeaders the X-RateLimit fields.
// The figures of an allowed request count its own reservation. Headers
// are added, so the items of nested middlewares (an upload count around
// its storage bytes) add up; HeaderQuotaLevel holds the highest level and
// the legacy fields the innermost middleware's. Responses of steps 1 to 3
// and of store failures carry none.
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
	if err := checkName(action, ErrInvalidAction); err != nil {
		panic("quota: Middleware: " + err.Error())
	}
	if !q.actions[action] {
		panic(fmt.Sprintf("quota: Middleware: action %q: %v", action, ErrUnknownAction))
	}
	m := &middleware{q: q, action: action, subject: subject}
	m.cfg.amount = 1
	for _, o := range opts {
		if o != nil {
			o(&m.cfg)
		}
	}
	c := &m.cfg
	switch {
	case !c.bodyBytes && c.amountFunc == nil && (c.amount < 1 || c.amount > MaxAmount):
		panic(fmt.Sprintf("quota: Middleware: amount %d out of 1..%d", c.amount, MaxAmount))
	case c.maxBody < 0:
		panic(fmt.Sprintf("quota: Middleware: negative maximum body size %d", c.maxBody))
	case c.retry503 < 0:
		panic(fmt.Sprintf("quota: Middleware: negative Retry-After %v", c.retry503))
	}
	for _, f := range c.features {
		if err := checkName(f, ErrInvalidName); err != nil {
			panic("quota: Middleware: feature: " + err.Error())
		}
	}
	if c.success == nil {
		c.success = func(status int) bool { return status < 400 }
	}
	if c.problemType == "" {
		c.problemType = DefaultProblemType
	}
	if c.retry503 == 0 {
		c.retry503 = DefaultUnavailableRetryAfter
	}
	if c.onError == nil {
		c.onError = func(r *http.Request, err error) {
			slog.ErrorContext(r.Context(), "quota middleware", "action", action, "method", r.Method, "path", r.URL.Path, "err", err)
		}
	}
	return func(next http.Handler) http.Handler {
		if next == nil {
			panic("quota: Middleware: nil handler")
		}
		return &meterHandler{m: m, next: next}
	}
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
	m, q, ctx := h.m, h.m.q, r.Context()

	subject, err := m.subject(r)
	if err != nil || subject == "" || ValidateName(subject) != nil {
		m.unauthorized(w, r)
		return
	}

	for _, f := range m.cfg.features {
		ok, err := q.HasFeature(ctx, subject, f)
		if err != nil {
			m.fail(w, r, h.next, err)
			return
		}
		if !ok {
			writeProblem(w, &Problem{
				Type:    ProblemTypeNotInPlan,
				Title:   "Feature not in plan",
				Status:  http.StatusForbidden,
				Detail:  fmt.Sprintf("Your plan does not include the feature %q.", f),
				Feature: f,
			})
			return
		}
	}

	var amount int64
	switch {
	case m.cfg.bodyBytes:
		n := r.ContentLength
		switch {
		case r.Body == nil || r.Body == http.NoBody:
			n = 0
		case n == 0:
			n = -1 // a body with no declared length, as http.Client reads it
		}
		switch {
		case n == 0:
			h.next.ServeHTTP(w, r)
			return
		case n > 0:
			if (m.cfg.maxBody > 0 && n > m.cfg.maxBody) || n > MaxAmount {
				m.tooLarge(w, nil, capOf(Decision{}, m.cfg.maxBody))
				return
			}
			amount = n
		default:
			d, err := q.Check(ctx, Use{Subject: subject, Action: m.action, Amount: 1})
			if err != nil {
				m.fail(w, r, h.next, err)
				return
			}
			if !d.Allowed {
				m.deny(w, d)
				return
			}
			if m.cfg.maxBody == 0 && !hasCap(d) {
				writeProblem(w, &Problem{
					Type:   "about:blank",
					Title:  http.StatusText(http.StatusLengthRequired),
					Status: http.StatusLengthRequired,
					Detail: "This request needs a Content-Length.",
				})
				return
			}
			amount = capOf(d, m.cfg.maxBody)
		}
	case m.cfg.amountFunc != nil:
		a, err := m.cfg.amountFunc(r)
		if err != nil || a < 1 || a > MaxAmount {
			m.badRequest(w)
			return
		}
		amount = a
	default:
		amount = m.cfg.amount
	}

	res, err := q.Reserve(ctx, Use{Subject: subject, Action: m.action, Amount: amount})
	if err != nil {
		m.fail(w, r, h.next, err)
		return
	}
	d := res.Decision
	if !d.Allowed {
		m.deny(w, d)
		return
	}

	m.setHeaders(w.Header(), d, q.now())
	rw := &responseWriter{ResponseWriter: w}
	r2 := r.WithContext(context.WithValue(ctx, decisionKey{}, d))
	var body *countingBody
	if m.cfg.bodyBytes {
		body = &countingBody{ReadCloser: http.MaxBytesReader(w, r.Body, amount)}
		r2.Body = body
	}
	settled := false
	defer func() {
		if !settled { // the handler panicked or called runtime.Goexit
			m.report(r, res.Cancel(context.WithoutCancel(ctx)))
		}
	}()
	h.next.ServeHTTP(rw, r2)
	settled = true

	sctx := context.WithoutCancel(ctx)
	switch {
	case body != nil && body.overrun:
		m.report(r, res.Cancel(sctx))
		if !rw.wrote {
			over := d
			over.Allowed, over.Reason = false, ReasonPerUse
			m.tooLarge(w, &over, min(capOf(d, m.cfg.maxBody), amount))
		}
	case !m.cfg.success(rw.statusOr200()):
		m.report(r, res.Cancel(sctx))
	case body != nil && body.n == 0:
		m.report(r, res.Cancel(sctx))
	case body != nil:
		_, err := res.CommitAmount(sctx, body.n)
		m.report(r, err)
	default:
		_, err := res.Commit(sctx)
		m.report(r, err)
	}
}

// capOf returns the smallest per-use cap of d's limits and maxBody,
// ignoring zeros; MaxAmount if there is none.
func capOf(d Decision, maxBody int64) int64 {
	c := MaxAmount
	if maxBody > 0 {
		c = min(c, maxBody)
	}
	for _, l := range d.Limits {
		if l.MaxPerUse > 0 {
			c = min(c, l.MaxPerUse)
		}
	}
	return c
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
	writeFailure(w, r, err, m.cfg.onError, m.cfg.retry503,
		"You have no plan that includes this.",
		"Usage cannot be checked right now; try again later.")
}

// isNoPlan reports whether err says the subject has no plan in force.
func isNoPlan(err error) bool {
	return errors.Is(err, ErrNoSubscription) || errors.Is(err, ErrUnknownPlan)
}

// writeFailure answers an engine or store error that is not the client's:
// 403 (ProblemTypeNoSubscription) when the subject has no plan, 503 with
// Retry-After otherwise. Errors other than a missing subscription go to
// onError; the body never holds their text.
func writeFailure(w http.ResponseWriter, r *http.Request, err error, onError func(*http.Request, error), retry time.Duration, noPlan, unavailable string) {
	if !errors.Is(err, ErrNoSubscription) {
		onError(r, err)
	}
	if isNoPlan(err) {
		writeProblem(w, &Problem{
			Type:   ProblemTypeNoSubscription,
			Title:  "No subscription",
			Status: http.StatusForbidden,
			Detail: noPlan,
		})
		return
	}
	w.Header().Set(HeaderRetryAfter, strconv.FormatInt(ceilSeconds(retry), 10))
	writeProblem(w, &Problem{
		Type:   "about:blank",
		Title:  http.StatusText(http.StatusServiceUnavailable),
		Status: http.StatusServiceUnavailable,
		Detail: unavailable,
	})
}

func (m *middleware) unauthorized(w http.ResponseWriter, r *http.Request) {
	writeUnauthorized(w, r, m.cfg.unauthorized)
}

// writeUnauthorized answers 401 with custom, the app's handler, or else a
// problem of its own.
func writeUnauthorized(w http.ResponseWriter, r *http.Request, custom http.Handler) {
	if custom != nil {
		custom.ServeHTTP(w, r)
		return
	}
	writeProblem(w, &Problem{
		Type:   "about:blank",
		Title:  http.StatusText(http.StatusUnauthorized),
		Status: http.StatusUnauthorized,
		Detail: "This request needs valid credentials.",
	})
}

func (m *middleware) badRequest(w http.ResponseWriter) {
	writeProblem(w, &Problem{
		Type:   "about:blank",
		Title:  http.StatusText(http.StatusBadRequest),
		Status: http.StatusBadRequest,
		Detail: "The amount of this request is invalid.",
	})
}

// tooLarge answers 413 to a body or amount over most. d, when not nil,
// is the per-use denial.
func (m *middleware) tooLarge(w http.ResponseWriter, d *Decision, most int64) {
	p := &Problem{
		Type:   ProblemTypeTooLarge,
		Title:  "Content Too Large",
		Status: http.StatusRequestEntityTooLarge,
		Detail: fmt.Sprintf("The request body is larger than the %d bytes allowed.", most),
	}
	if d != nil {
		p.ProblemUsage = usageOf(d)
		p.MaxPerUse = most
		p.Detail = m.detail(d, most)
	}
	writeProblem(w, p)
}

// deny answers a denied decision.
func (m *middleware) deny(w http.ResponseWriter, d Decision) {
	now := m.q.now()
	m.setHeaders(w.Header(), d, now)
	if d.Reason == ReasonPerUse {
		m.tooLarge(w, &d, d.MaxPerUse)
		return
	}
	p := &Problem{ProblemUsage: usageOf(&d), Detail: m.detail(&d, 0)}
	if d.Limit == 0 {
		p.Type, p.Title, p.Status = ProblemTypeNotInPlan, "Not in plan", http.StatusForbidden
	} else {
		p.Type, p.Title, p.Status = m.cfg.problemType, "Quota exceeded", http.StatusTooManyRequests
		if ra := d.RetryAfter(now); ra > 0 {
			w.Header().Set(HeaderRetryAfter, strconv.FormatInt(ceilSeconds(ra), 10))
		}
	}
	writeProblem(w, p)
}

func usageOf(d *Decision) *ProblemUsage {
	u := &ProblemUsage{
		Action:    d.Action,
		Plan:      d.Plan,
		Used:      d.Used,
		Limit:     d.Limit,
		Remaining: d.Remaining,
		Percent:   math.Round(d.Percent*100) / 100,
		Level:     d.Level,
	}
	if !d.ResetAt.IsZero() {
		u.ResetsAt = d.ResetAt.UTC()
	}
	return u
}

// detail returns the detail of a denial: the app's message, or a default
// that names the plan, the limit and when it resets.
func (m *middleware) detail(d *Decision, most int64) string {
	if m.cfg.message != nil {
		if s := m.cfg.message(*d); s != "" {
			return s
		}
	}
	switch {
	case d.Reason == ReasonPerUse:
		return fmt.Sprintf("The %s plan allows at most %d %s per use.", d.Plan, most, d.Action)
	case d.Limit == 0:
		return fmt.Sprintf("The %s plan does not include %s.", d.Plan, d.Action)
	case d.Period == PeriodNone:
		return fmt.Sprintf("The %s plan allows %d %s in total; %d are used and this request needs %d.", d.Plan, d.Limit, d.Action, d.Used, d.Amount)
	default:
		return fmt.Sprintf("The %s plan allows %d %s per %s; %d are used. The limit resets at %s.", d.Plan, d.Limit, d.Action, d.Period, d.Used, d.ResetAt.UTC().Format(time.RFC3339))
	}
}

// writeProblem writes p as the whole response: an RFC 9457 body with its
// status, never an error's text.
func writeProblem(w http.ResponseWriter, p *Problem) {
	b, err := json.Marshal(p)
	if err != nil {
		// A Problem always encodes; keep the status if it somehow does not.
		b = []byte(`{"type":"about:blank","status":` + strconv.Itoa(p.Status) + `}`)
	}
	b = append(b, '\n')
	h := w.Header()
	h.Set("Content-Type", ContentTypeProblem)
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Encoding")
	w.WriteHeader(p.Status)
	_, _ = w.Write(b) // the client may be gone; nothing to do
}

// maxSFInteger is the largest Integer of RFC 9651 structured fields.
const maxSFInteger = 999_999_999_999_999

func sfInt(n int64) string {
	return strconv.FormatInt(min(max(n, 0), maxSFInteger), 10)
}

// sfString returns s as an RFC 9651 String: printable ASCII within
// quotes, with '"' and '\\' escaped; other bytes, and '%', are
// percent-encoded, as String cannot hold them.
func sfString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '%' || c < 0x20 || c > 0x7e:
			fmt.Fprintf(&b, "%%%02X", c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}

func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// setHeaders adds the quota headers of d to h.
func (m *middleware) setHeaders(h http.Header, d Decision, now time.Time) {
	var policy, limit strings.Builder
	for _, l := range d.Limits {
		if l.Limit == Unlimited {
			continue
		}
		if policy.Len() > 0 {
			policy.WriteString(", ")
			limit.WriteString(", ")
		}
		name := l.Period.String()
		if l.Period == PeriodNone {
			name = "total"
		}
		name = sfString(d.Action + "/" + name)
		policy.WriteString(name)
		policy.WriteString(";q=")
		policy.WriteString(sfInt(l.Limit))
		if m.cfg.bodyBytes {
			policy.WriteString(`;qu="content-bytes"`)
		}
		limit.WriteString(name)
		limit.WriteString(";r=")
		limit.WriteString(sfInt(l.Remaining))
		if !l.ResetAt.IsZero() {
			policy.WriteString(";w=")
			policy.WriteString(sfInt(ceilSeconds(l.ResetAt.Sub(l.PeriodStart))))
			limit.WriteString(";t=")
			limit.WriteString(sfInt(ceilSeconds(l.ResetAt.Sub(now))))
		}
	}
	if policy.Len() > 0 {
		h.Add(HeaderRateLimitPolicy, policy.String())
		h.Add(HeaderRateLimit, limit.String())
	}
	level := d.Level
	if prev := h.Get(HeaderQuotaLevel); prev != "" {
		var pl Level
		if pl.UnmarshalText([]byte(prev)) == nil && pl > level {
			level = pl
		}
	}
	h.Set(HeaderQuotaLevel, level.String())
	if m.cfg.legacy && d.Limit != Unlimited {
		h.Set(HeaderXRateLimitLimit, strconv.FormatInt(d.Limit, 10))
		h.Set(HeaderXRateLimitRemaining, strconv.FormatInt(d.Remaining, 10))
		if !d.ResetAt.IsZero() {
			h.Set(HeaderXRateLimitReset, strconv.FormatInt(d.ResetAt.Unix(), 10))
		} else {
			h.Del(HeaderXRateLimitReset)
		}
	}
}

// countingBody counts the bytes the handler reads and notes a read past
// the MaxBytesReader bound.
type countingBody struct {
	io.ReadCloser
	n       int64
	overrun bool
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			b.overrun = true
		}
	}
	return n, err
}

// responseWriter records the status the handler sends.
type responseWriter struct {
	http.ResponseWriter
	status int
	wrote  bool // a final status was sent
}

func (rw *responseWriter) statusOr200() int {
	if !rw.wrote {
		return http.StatusOK
	}
	return rw.status
}

func (rw *responseWriter) markWritten(status int) {
	if !rw.wrote {
		rw.status, rw.wrote = status, true
	}
}

func (rw *responseWriter) WriteHeader(code int) {
	// 1xx but 101 are informational: a final status follows.
	if code < 100 || code > 199 || code == http.StatusSwitchingProtocols {
		rw.markWritten(code)
	}
	rw.ResponseWriter.WriteHeader(code)
}

func (rw *responseWriter) Write(b []byte) (int, error) {
	rw.markWritten(http.StatusOK)
	return rw.ResponseWriter.Write(b)
}

// ReadFrom keeps the underlying writer's io.ReaderFrom (sendfile).
func (rw *responseWriter) ReadFrom(src io.Reader) (int64, error) {
	rw.markWritten(http.StatusOK)
	if rf, ok := rw.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(src)
	}
	return io.Copy(writerOnly{rw.ResponseWriter}, src)
}

type writerOnly struct{ io.Writer }

// Unwrap returns the underlying ResponseWriter, for http.ResponseController.
func (rw *responseWriter) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

// Flush implements http.Flusher; it does nothing if the underlying writer
// cannot flush.
func (rw *responseWriter) Flush() { _ = rw.FlushError() }

// FlushError flushes the underlying writer, for http.ResponseController.
func (rw *responseWriter) FlushError() error {
	rw.markWritten(http.StatusOK)
	return http.NewResponseController(rw.ResponseWriter).Flush()
}

// Hijack implements http.Hijacker; it returns an error matching
// http.ErrNotSupported if the underlying writer cannot hijack.
func (rw *responseWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, b, err := http.NewResponseController(rw.ResponseWriter).Hijack()
	if err == nil {
		rw.markWritten(http.StatusOK)
	}
	return c, b, err
}
