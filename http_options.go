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
		c.onError = func(r *http.Request, err error) {
			args := append(append([]any{}, logArgs...), "method", r.Method, "path", r.URL.Path, "err", err)
			slog.ErrorContext(r.Context(), logMsg, args...)
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

// WithErrorHook sets the function told of every error that Middleware or
// UsageHandler meets: store failures (answered 503, or failed open by
// Middleware with WithFailOpen), 403 answers to a plan the catalog no
// longer defines, and Middleware's failed commits and cancels, which
// happen after the response and never change it. Default: log them with
// slog.Default at level Error.
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
