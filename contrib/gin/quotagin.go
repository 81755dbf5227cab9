// Package quotagin meters gin routes with quota: the gin form of
// quota.Middleware, built on the same core (quota.Meter), so that its
// statuses, headers and problem bodies are byte for byte those of the
// net/http middleware.
//
// It exists because a net/http middleware wrapped for gin cannot see how
// a gin handler ended: c.AbortWithStatus(400) and c.Error leave the
// wrapped writer untouched or unread, so such a wrapper charges failed
// requests. This middleware reads gin's own writer and errors.
package quotagin

import (
	"github.com/gin-gonic/gin"

	"github.com/quotakit/quota"
)

// Middleware returns a gin middleware that meters action for every
// request it lets through, as quota.Middleware does (see its
// documentation for the order of the steps, the statuses and the
// headers), with the same options. The subject comes from subject, which
// reads gin's context: what an authentication middleware stored there
// (c.Get("user")), a session. An error or "" answers 401 (or the
// quota.WithUnauthorized handler).
//
// Responses that the middleware writes (401, 400, 403, 411, 413, 422,
// 429, 503) go to c.Writer and abort the chain (c.Abort). Otherwise the
// rest of the chain runs (c.Next) with the quota headers set and
// c.Request replaced by the metered request
// (quota.FromContext(c.Request.Context()) returns the decision), and the
// request given back afterwards. Then the reservation is:
//
//   - settled by the response's status, as quota.WithSuccess says
//     (default: below 400 commits): the status written
//     (c.AbortWithStatus(400) cancels), or the one set for gin to write
//     (c.Status), 200 by default;
//   - cancelled when nothing was written and the chain added an error to
//     c.Errors (c.Error, c.AbortWithError), whatever status an error
//     middleware will write for it;
//   - cancelled when a handler panicked; the panic goes on, to
//     gin.Recovery if there is one.
//
// Middleware panics where quota.Middleware does (a nil q or subject, an
// action that q's catalog does not limit, an invalid option).
func Middleware(q *quota.Quota, action string, subject func(*gin.Context) (string, error), opts ...quota.MiddlewareOption) gin.HandlerFunc {
	if subject == nil {
		panic("quotagin: Middleware: nil subject function")
	}
	meter := quota.NewMeter(q, action, opts...)
	return func(c *gin.Context) {
		name, err := subject(c)
		if err != nil {
			name = "" // 401
		}
		r := c.Request
		t := meter.Begin(c.Writer, r, name)
		if t == nil {
			c.Abort() // answered
			return
		}
		if t.Request() != r {
			c.Request = t.Request()
			defer func() { c.Request = r }()
		}
		run(c, t)
	}
}

// run runs the rest of the chain and settles t as it ended.
func run(c *gin.Context, t *quota.Metered) {
	w, errs := c.Writer, len(c.Errors)
	done := false
	defer func() {
		if !done { // a panic, or runtime.Goexit
			t.Settle(w, quota.HandlerOutcome{Panicked: true})
		}
	}()
	c.Next()
	done = true
	t.Settle(w, quota.HandlerOutcome{
		Status:  w.Status(),
		Written: w.Written(),
		Failed:  len(c.Errors) > errs && !w.Written(),
	})
}
