// Package quotaecho meters echo routes with quota: the echo form of
// quota.Middleware, built on the same core (quota.Meter), so that its
// statuses, headers and problem bodies are byte for byte those of the
// net/http middleware.
//
// It exists because quota.Middleware under echo.WrapMiddleware cannot
// see how an echo handler failed: a handler that returns
// echo.NewHTTPError(400) has written nothing when the middleware settles
// (echo's error handler writes the 400 later), so the middleware sees a
// 200 and commits a use that failed. This middleware reads the error.
package quotaecho

import (
	"github.com/labstack/echo/v4"

	"github.com/quotakit/quota"
)

// Middleware returns an echo middleware that meters action for every
// request it lets through, as quota.Middleware does (see its
// documentation for the order of the steps, the statuses and the
// headers), with the same options. The subject comes from subject, which
// reads echo's context: what an authentication middleware stored there
// (c.Get("user")), a session. An error or "" answers 401 (or the
// quota.WithUnauthorized handler).
//
// Responses that the middleware writes (401, 400, 403, 411, 413, 422,
// 429, 503) go to c.Response() and end the request: the next handler
// does not run, and the middleware returns nil. Otherwise the next
// handler runs with the quota headers set and c.Request() replaced by the
// metered request (quota.FromContext(c.Request().Context()) returns the
// decision), and the request given back afterwards. Then the
// reservation is:
//
//   - cancelled when the handler returned an error before the response
//     was committed, whatever status echo's error handler will write for
//     it; the error is returned, for echo's error handler;
//   - otherwise settled by the committed status (c.Response().Status; 200
//     when nothing was written), as quota.WithSuccess says (default:
//     below 400 commits);
//   - cancelled when the handler panicked; the panic goes on, to echo's
//     Recover middleware if there is one.
//
// Middleware panics where quota.Middleware does (a nil q or subject, an
// action that q's catalog does not limit, an invalid option).
func Middleware(q *quota.Quota, action string, subject func(echo.Context) (string, error), opts ...quota.MiddlewareOption) echo.MiddlewareFunc {
	if subject == nil {
		panic("quotaecho: Middleware: nil subject function")
	}
	meter := quota.NewMeter(q, action, opts...)
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			name, err := subject(c)
			if err != nil {
				name = "" // 401
			}
			res := c.Response()
			r := c.Request()
			t := meter.Begin(res, r, name)
			if t == nil {
				return nil // answered
			}
			if t.Request() != r {
				c.SetRequest(t.Request())
				defer c.SetRequest(r)
			}
			return run(c, next, res, t)
		}
	}
}

// run calls next and settles t as it ended.
func run(c echo.Context, next echo.HandlerFunc, res *echo.Response, t *quota.Metered) error {
	done := false
	defer func() {
		if !done { // a panic, or runtime.Goexit
			t.Settle(res, quota.HandlerOutcome{Panicked: true})
		}
	}()
	err := next(c)
	done = true
	o := quota.HandlerOutcome{Written: res.Committed, Failed: err != nil && !res.Committed}
	if res.Committed {
		o.Status = res.Status
	}
	t.Settle(res, o)
	return err
}
