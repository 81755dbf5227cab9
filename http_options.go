package quota

import (
	"log/slog"
	"net/http"
	"time"
)

// The options of Middleware and UsageHandler. An option that both
// understand (the error hook, the 401 answer, the Retry-After of a 503)
// is an HTTPOption, accepted by both constructors under one name; the
// others are a MiddlewareOption alone, and passing one to UsageHandler
// does not compile.

// MiddlewareOption configures Middleware. The With functions return
// them, the HTTPOption ones included; the zero configuration is
// described by each option's default. A nil MiddlewareOption is ignored.
type MiddlewareOption interface {
	applyMiddleware(*middlewareConfig)
}

// UsageHandlerOption configures UsageHandler. The HTTPOption functions
// (WithErrorHook, WithUnauthorized, WithUnavailableRetryAfter) return
// them; the zero configuration is described by each option's default.
// A nil UsageHandlerOption is ignored.
type UsageHandlerOption interface {
	applyUsageHandler(*usageHandlerConfig)
}

// HTTPOption configures what Middleware and UsageHandler share: it is
// both a MiddlewareOption and a UsageHandlerOption, so that one option
// value, say an error hook, can configure both.
type HTTPOption interface {
	MiddlewareOption
	UsageHandlerOption
}

// httpConfig is what Middleware and UsageHandler share.
type httpConfig struct {
	onError      func(*http.Request, error)
	unauthorized http.Handler
	retry503     time.Duration
	// logger gives the default error hook's logger: Config.Logger.
	logger func() *slog.Logger
}

// validate panics, naming who, on an invalid setting.
func (c *httpConfig) validate(who string) {
	if c.retry503 < 0 {
		panic("quota: " + who + ": negative Retry-After " + c.retry503.String())
	}
}

// setDefaults fills the unset fields; logMsg and logArgs make the
// default error hook's log line.
func (c *httpConfig) setDefaults(logMsg string, logArgs ...any) {
	if c.retry503 == 0 {
		c.retry503 = DefaultUnavailableRetryAfter
	}
	if c.onError == nil {
		logger := c.logger
		if logger == nil {
			logger = slog.Default
		}
		c.onError = func(r *http.Request, err error) {
			args := append(append([]any{}, logArgs...), "method", r.Method, "path", r.URL.Path, "err", err)
			logger().ErrorContext(r.Context(), logMsg, args...)
		}
	}
}

type middlewareConfig struct {
	httpConfig
	amount      int64
	amountFunc  func(*http.Request) (int64, error)
	bodyBytes   bool
	maxBody     int64
	features    []string
	success     func(status int) bool
	message     func(Decision) string
	problemType string
	legacy      bool
	failOpen    bool
	// settleTimeout bounds a commit or cancel.
	settleTimeout time.Duration
	// maxRetryAfter is the longest wait that a 429 states in Retry-After.
	maxRetryAfter time.Duration
	// keyHeader names the header of the idempotency key; "" for none.
	keyHeader string
	useFuncs  []func(*http.Request, *Use) error
}

type usageHandlerConfig struct {
	httpConfig
}

// middlewareOption is an option of Middleware alone.
type middlewareOption func(*middlewareConfig)

func (o middlewareOption) applyMiddleware(c *middlewareConfig) { o(c) }

// httpOption is an option of both Middleware and UsageHandler.
type httpOption func(*httpConfig)

func (o httpOption) applyMiddleware(c *middlewareConfig)     { o(&c.httpConfig) }
func (o httpOption) applyUsageHandler(c *usageHandlerConfig) { o(&c.httpConfig) }

// WithAmount charges every request n (1 to MaxAmount). Default 1. The last
// of WithAmount, WithAmountFunc and WithBodyBytes wins.
func WithAmount(n int64) MiddlewareOption {
	return middlewareOption(func(c *middlewareConfig) {
		c.amount, c.amountFunc, c.bodyBytes = n, nil, false
	})
}

// WithAmountFunc charges every request the amount f computes from it. f
// must not read the body. An error from f, or an amount that is not from
// 1 to MaxAmount, answers 400.
func WithAmountFunc(f func(*http.Request) (int64, error)) MiddlewareOption {
	return middlewareOption(func(c *middlewareConfig) {
		c.amount, c.amountFunc, c.bodyBytes = 0, f, false
	})
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
//     smallest per-use cap of the action's limits and WithMaxBodyBytes,
//     found by the same Reserve call (Use.UpToCap). It is answered 411
//     when neither exists, and refused (429, or 403 for a limit of 0)
//     when less than the cap remains, whatever its actual size.
//   - An empty body (Content-Length: 0) passes to the handler unmetered:
//     nothing is reserved or charged, no quota header is set and
//     FromContext reports false.
//
// On success the reservation is committed with the bytes read
// (CommitAmount), and cancelled when the handler read none.
func WithBodyBytes() MiddlewareOption {
	return middlewareOption(func(c *middlewareConfig) {
		c.amount, c.amountFunc, c.bodyBytes = 0, nil, true
	})
}

// WithMaxBodyBytes bounds the body, with WithBodyBytes, to n bytes
// whatever the plan's per-use cap. Default 0: only the plan's cap bounds
// it.
func WithMaxBodyBytes(n int64) MiddlewareOption {
	return middlewareOption(func(c *middlewareConfig) { c.maxBody = n })
}

// WithFeatures requires every feature of features: a subject whose plan
// lacks one is answered 403 and nothing is reserved. The gate rides on
// the request's Reserve call (Use.Features). Default none.
func WithFeatures(features ...string) MiddlewareOption {
	return middlewareOption(func(c *middlewareConfig) { c.features = append(c.features, features...) })
}

// WithSuccess sets which response statuses commit the reservation; the
// others cancel it. Default: status < 400.
func WithSuccess(f func(status int) bool) MiddlewareOption {
	return middlewareOption(func(c *middlewareConfig) { c.success = f })
}

// WithMessage sets the detail of the responses to a denial (429, and the
// 403 and 413 that follow a decision), for instance an upgrade message per
// plan and action. An empty string selects the default text, which names
// the plan, the limit and when it resets.
func WithMessage(f func(Decision) string) MiddlewareOption {
	return middlewareOption(func(c *middlewareConfig) { c.message = f })
}

// WithProblemType sets the type URI of 429 responses. Default
// DefaultProblemType.
func WithProblemType(uri string) MiddlewareOption {
	return middlewareOption(func(c *middlewareConfig) { c.problemType = uri })
}

// WithLegacyHeaders adds the X-RateLimit-Limit, X-RateLimit-Remaining and
// X-RateLimit-Reset fields for the decisive limit, when it is not
// Unlimited (Reset only when it resets). Default off.
func WithLegacyHeaders() MiddlewareOption {
	return middlewareOption(func(c *middlewareConfig) { c.legacy = true })
}

// WithFailOpen lets requests through, unmetered, when the store fails:
// the handler runs without a reservation, quota headers or a decision in
// its context, and the error is reported to the error hook. Default:
// fail closed with 503.
func WithFailOpen() MiddlewareOption {
	return middlewareOption(func(c *middlewareConfig) { c.failOpen = true })
}

// DefaultSettleTimeout bounds the settlement of a request (the commit or
// cancel of its reservation, after the handler) unless WithSettleTimeout
// replaces it.
const DefaultSettleTimeout = 2 * time.Second

// WithSettleTimeout bounds the settlement of each request: the commit or
// cancel that follows the handler, which the response waits for. Past d
// the settlement is abandoned: the response goes on, the error hook is
// told once (an error matching ErrStoreUnavailable and
// context.DeadlineExceeded), and the hold is left to expire after
// Config.ReservationTTL, so that a commit cut short records nothing
// (unless the store applied it before the cut). d is the middleware's
// own bound, apart from Config.StoreTimeout, which bounds every store
// call of the Quota: the shorter one wins. Default DefaultSettleTimeout
// (2 s); a negative d panics at construction.
func WithSettleTimeout(d time.Duration) MiddlewareOption {
	return middlewareOption(func(c *middlewareConfig) { c.settleTimeout = d })
}

// DefaultMaxRetryAfter is the longest wait that a 429 response states in
// Retry-After, unless WithMaxRetryAfter replaces it.
const DefaultMaxRetryAfter = time.Hour

// WithMaxRetryAfter sets the longest wait that a 429 response states in
// Retry-After: when the refusing limit resets within d, the response
// says when, in whole seconds; when it resets later, the response has no
// Retry-After, and the reset stays in the body (reset_at) and in
// RateLimit (t=). Retry-After tells a client when to try again, and
// retrying clients obey it: go-retryablehttp's DefaultBackoff sleeps for
// the Retry-After of a 429 or 503, however long, so a FREE user's 429 in
// the middle of the month, whose monthly limit resets in days, would
// hold the client asleep for days instead of failing at once. Default
// DefaultMaxRetryAfter (1 hour): hourly limits, and daily ones in their
// last hour, say when to retry; monthly ones, until their last hour, do
// not. A negative d panics at construction.
func WithMaxRetryAfter(d time.Duration) MiddlewareOption {
	return middlewareOption(func(c *middlewareConfig) { c.maxRetryAfter = d })
}

// WithIdempotencyKeyHeader takes the idempotency key of each request's
// use (Use.Key) from the header name, usually "Idempotency-Key" (IETF
// draft-ietf-httpapi-idempotency-key-header), so that a client's retry of
// a request that was charged is not charged again. Default: none; no
// client header is ever taken as a key unless the app opts in.
//
// The key recorded is the action, a colon and the header's value
// ("diagram.upload:8e03978e-40d5"), so that nested middlewares (an upload
// count around its storage bytes) keep one key each; keys are per subject,
// so a client can replay only its own. A request without the header has
// no key; one with the header twice, or whose key ValidateName refuses
// (over MaxNameLen bytes with its prefix), answers 400; one whose key was
// used with another amount, resource id or metadata answers 422.
//
// A request with a key seen before is a replay: the Reserve returns the
// first request's reservation (Decision.Replayed, which the handler
// reads with FromContext), and the handler runs. It must honour the
// replay as the draft asks of a server: answer with the first request's
// result, or 409 while that one is still running, rather than do the work
// again, which would go uncharged. The middleware commits a replay on
// success and never cancels one (see Middleware, step 6). A first
// request that failed (its hold cancelled), or whose hold expired before
// it was committed, used nothing: a retry with its key is a new use,
// charged when it succeeds.
func WithIdempotencyKeyHeader(name string) MiddlewareOption {
	if name == "" {
		panic("quota: WithIdempotencyKeyHeader: empty header name")
	}
	return middlewareOption(func(c *middlewareConfig) { c.keyHeader = name })
}

// WithUse sets f to describe each request's use before it is reserved:
// f may set its idempotency key (Use.Key), resource id (Use.ResourceID)
// and metadata (Use.Metadata), which the record of the use keeps. The
// other fields are the middleware's; what f sets in them is ignored. f
// runs after WithIdempotencyKeyHeader, whose key it sees and may replace,
// on the requests that reserve (not on an empty body under WithBodyBytes),
// and must not read the body. An error from f answers 400, as does a key
// or resource id that ValidateName refuses or metadata that is not a
// JSON object of at most MaxMetadataLen bytes; the response never holds
// the error's text. Several WithUse functions run in order. Keys are per
// subject, not per action: nested middlewares need distinct keys.
//
// What is known only once the handler has run (the id of the diagram it
// created) cannot go into the record this way: record it with Track, or
// reserve and commit in the handler.
func WithUse(f func(r *http.Request, u *Use) error) MiddlewareOption {
	return middlewareOption(func(c *middlewareConfig) {
		if f != nil {
			c.useFuncs = append(c.useFuncs, f)
		}
	})
}

// WithErrorHook sets the function told of every error that Middleware or
// UsageHandler meets: store failures (answered 503, or failed open by
// Middleware with WithFailOpen), 403 answers to a plan the catalog no
// longer defines, and Middleware's failed commits and cancels, which
// happen after the response and never change it. Default: log them with
// the Quota's Config.Logger (default slog.Default) at level Error.
func WithErrorHook(f func(*http.Request, error)) HTTPOption {
	return httpOption(func(c *httpConfig) { c.onError = f })
}

// WithUnauthorized sets the handler that answers, for Middleware or
// UsageHandler, when the subject function fails or returns "" or an
// invalid name (to add a WWW-Authenticate field, or redirect to a login
// page). Default: a 401 problem response.
func WithUnauthorized(h http.Handler) HTTPOption {
	return httpOption(func(c *httpConfig) { c.unauthorized = h })
}

// WithUnavailableRetryAfter sets the Retry-After of the 503 responses of
// Middleware or UsageHandler. Default DefaultUnavailableRetryAfter; a
// negative duration panics at construction.
func WithUnavailableRetryAfter(d time.Duration) HTTPOption {
	return httpOption(func(c *httpConfig) { c.retry503 = d })
}
