package quotaecho_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/quotakit/quota"
	quotaecho "github.com/quotakit/quota/contrib/echo"
)

// The tests run a week into alice's billing month.
var (
	now    = time.Date(2026, 1, 8, 9, 29, 0, 0, time.UTC)
	anchor = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
)

// newQuota returns a Quota over a MemoryStore with alice on FREE, having
// used pre uploads.
func newQuota(t *testing.T, pre int64) *quota.Quota {
	t.Helper()
	q, err := quota.New(quota.NewMemoryStore(), quota.Config{
		Plans: []quota.Plan{{Name: "FREE", Limits: map[string][]quota.Limit{
			"diagram.upload": {quota.PerMonth(5)},
			"storage.bytes":  {quota.Total(1000).WithMaxPerUse(100)},
		}}},
		Now: func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	ctx := context.Background()
	if err := q.Subscribe(ctx, quota.Subscription{Subject: "alice", Plan: "FREE", Anchor: anchor}); err != nil {
		t.Fatal(err)
	}
	if pre > 0 {
		if _, err := q.Track(ctx, quota.Use{Subject: "alice", Action: "diagram.upload", Amount: pre}); err != nil {
			t.Fatal(err)
		}
	}
	return q
}

// used returns what the ledger holds for alice's action, and checks that
// no hold is left (the counter, holds included, equals the records).
func used(t *testing.T, q *quota.Quota, action string) int64 {
	t.Helper()
	ctx := context.Background()
	page, err := q.History(ctx, quota.HistoryQuery{Subject: "alice", Action: action, Limit: quota.MaxHistoryPage})
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, r := range page.Records {
		sum += r.Amount
	}
	d, err := q.Check(ctx, quota.Use{Subject: "alice", Action: action, Amount: 1})
	if err != nil {
		t.Fatal(err)
	}
	if d.Used != sum {
		t.Errorf("%s: counter %d (holds included), records %d: a hold was left", action, d.Used, sum)
	}
	return sum
}

// auth is the app's authentication: it names the user in echo's context.
// (It trusts X-User, as only a test may.)
func auth(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if u := c.Request().Header.Get("X-User"); u != "" {
			c.Set("user", u)
		}
		return next(c)
	}
}

// subject reads the user that auth stored.
func subject(c echo.Context) (string, error) {
	u, ok := c.Get("user").(string)
	if !ok {
		return "", errors.New("not signed in")
	}
	return u, nil
}

// hooks collects what the error hook is told.
type hooks struct {
	mu   sync.Mutex
	errs []error
}

func (h *hooks) hook(_ *http.Request, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.errs = append(h.errs, err)
}

// serve sends a POST with body (nil for none) as user through e.
func serve(e *echo.Echo, user string, body io.Reader) *httptest.ResponseRecorder {
	req := httptest.NewRequest("POST", "/diagrams", body)
	if user != "" {
		req.Header.Set("X-User", user)
	}
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, req)
	return rec
}

func TestMiddleware(t *testing.T) {
	for _, tt := range []struct {
		name     string
		action   string
		opts     []quota.MiddlewareOption
		pre      int64
		user     string
		body     string
		handler  echo.HandlerFunc
		wantCode int
		wantUsed int64
		wantRan  bool
	}{
		{
			name: "success: committed", action: "diagram.upload", user: "alice",
			handler:  func(c echo.Context) error { return c.String(http.StatusCreated, "created") },
			wantCode: 201, wantUsed: 1, wantRan: true,
		},
		{
			name: "nothing written: 200, committed", action: "diagram.upload", user: "alice",
			handler:  func(c echo.Context) error { return nil },
			wantCode: 200, wantUsed: 1, wantRan: true,
		},
		{
			name: "echo.NewHTTPError(400): cancelled", action: "diagram.upload", user: "alice",
			handler:  func(c echo.Context) error { return echo.NewHTTPError(http.StatusBadRequest, "bad diagram") },
			wantCode: 400, wantRan: true,
		},
		{
			name: "a plain error: cancelled", action: "diagram.upload", user: "alice",
			handler:  func(c echo.Context) error { return errors.New("disk full") },
			wantCode: 500, wantRan: true,
		},
		{
			name: "an error that echo maps below 400: cancelled all the same", action: "diagram.upload", user: "alice",
			handler:  func(c echo.Context) error { return echo.NewHTTPError(http.StatusNotModified) },
			wantCode: 304, wantRan: true,
		},
		{
			name: "written 201, then an error: the status stands, committed", action: "diagram.upload", user: "alice",
			handler: func(c echo.Context) error {
				c.Response().WriteHeader(http.StatusCreated)
				return errors.New("client gone while streaming")
			},
			wantCode: 201, wantUsed: 1, wantRan: true,
		},
		{
			name: "written 404: cancelled", action: "diagram.upload", user: "alice",
			handler:  func(c echo.Context) error { return c.NoContent(http.StatusNotFound) },
			wantCode: 404, wantRan: true,
		},
		{
			name: "WithSuccess rejects 202: cancelled", action: "diagram.upload", user: "alice",
			opts:     []quota.MiddlewareOption{quota.WithSuccess(func(s int) bool { return s == http.StatusCreated })},
			handler:  func(c echo.Context) error { return c.NoContent(http.StatusAccepted) },
			wantCode: 202, wantRan: true,
		},
		{
			name: "denied: 429, the handler does not run", action: "diagram.upload", user: "alice", pre: 5,
			handler:  func(c echo.Context) error { return c.NoContent(http.StatusCreated) },
			wantCode: 429, wantUsed: 5,
		},
		{
			name: "no user in echo's context: 401", action: "diagram.upload",
			handler:  func(c echo.Context) error { return c.NoContent(http.StatusCreated) },
			wantCode: 401,
		},
		{
			name: "body bytes read: charged", action: "storage.bytes", user: "alice", body: strings.Repeat("x", 60),
			opts: []quota.MiddlewareOption{quota.WithBodyBytes()},
			handler: func(c echo.Context) error {
				b, err := io.ReadAll(c.Request().Body)
				if err != nil {
					return err
				}
				return c.String(http.StatusCreated, fmt.Sprint(len(b)))
			},
			wantCode: 201, wantUsed: 60, wantRan: true,
		},
		{
			name: "body over its cap, read, the error returned: 413, cancelled", action: "storage.bytes", user: "alice",
			body: strings.Repeat("x", 150), opts: []quota.MiddlewareOption{quota.WithBodyBytes(), quota.WithMaxBodyBytes(1000)},
			handler: func(c echo.Context) error {
				_, err := io.ReadAll(c.Request().Body)
				return err // the Meter answers 413 before echo's error handler
			},
			wantCode: 413, wantRan: true,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := newQuota(t, tt.pre)
			var h hooks
			ran := false
			e := echo.New()
			opts := append([]quota.MiddlewareOption{quota.WithErrorHook(h.hook)}, tt.opts...)
			e.POST("/diagrams", func(c echo.Context) error {
				ran = true
				if _, ok := quota.FromContext(c.Request().Context()); !ok {
					t.Error("no decision in the handler's request")
				}
				return tt.handler(c)
			}, auth, quotaecho.Middleware(q, tt.action, subject, opts...))
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
				if strings.Contains(tt.name, "over its cap") {
					body = io.MultiReader(body) // chunked: reserved up to the cap
				}
			}
			rec := serve(e, tt.user, body)
			if rec.Code != tt.wantCode {
				t.Errorf("status = %d %s; want %d", rec.Code, rec.Body, tt.wantCode)
			}
			if ran != tt.wantRan {
				t.Errorf("handler ran = %t; want %t", ran, tt.wantRan)
			}
			if got := used(t, q, tt.action) - tt.pre; got+tt.pre != tt.wantUsed {
				t.Errorf("ledger holds %d; want %d", got+tt.pre, tt.wantUsed)
			}
			if len(h.errs) != 0 {
				t.Errorf("error hook got %v", h.errs)
			}
			if tt.wantCode >= 400 && !tt.wantRan || tt.wantCode == 413 {
				if ct := rec.Header().Get("Content-Type"); ct != quota.ContentTypeProblem {
					t.Errorf("Content-Type = %q; want a problem", ct)
				}
			}
		})
	}
}

// TestWrapMiddlewareBills is the negative control: quota.Middleware
// under echo.WrapMiddleware commits a request whose handler returned
// echo.NewHTTPError(400), which quotaecho.Middleware cancels.
func TestWrapMiddlewareBills(t *testing.T) {
	q := newQuota(t, 0)
	netSubject := func(r *http.Request) (string, error) { return r.Header.Get("X-User"), nil }
	e := echo.New()
	e.POST("/diagrams", func(c echo.Context) error {
		return echo.NewHTTPError(http.StatusBadRequest)
	}, echo.WrapMiddleware(quota.Middleware(q, "diagram.upload", netSubject)))
	if rec := serve(e, "alice", nil); rec.Code != http.StatusBadRequest {
		t.Fatalf("status %d; want 400", rec.Code)
	}
	if got := used(t, q, "diagram.upload"); got != 1 {
		t.Errorf("WrapMiddleware: ledger holds %d; want the failed request billed, 1 (the defect this module fixes)", got)
	}
}

// TestPanic: a panicking handler cancels the hold; the panic goes on, to
// echo's Recover middleware or, without one, to the caller.
func TestPanic(t *testing.T) {
	setup := func(t *testing.T, use ...echo.MiddlewareFunc) (*quota.Quota, *echo.Echo) {
		q := newQuota(t, 0)
		e := echo.New()
		e.Use(use...)
		e.POST("/diagrams", func(c echo.Context) error { panic("boom") },
			auth, quotaecho.Middleware(q, "diagram.upload", subject))
		return q, e
	}
	t.Run("Recover", func(t *testing.T) {
		q, e := setup(t, middleware.Recover())
		if rec := serve(e, "alice", nil); rec.Code != http.StatusInternalServerError {
			t.Errorf("status %d; want Recover's 500", rec.Code)
		}
		if n := used(t, q, "diagram.upload"); n != 0 {
			t.Errorf("ledger holds %d; want 0", n)
		}
	})
	t.Run("no Recover", func(t *testing.T) {
		q, e := setup(t)
		func() {
			defer func() {
				if v := recover(); v != "boom" {
					t.Errorf("recovered %v; want the handler's panic", v)
				}
			}()
			serve(e, "alice", nil)
		}()
		if n := used(t, q, "diagram.upload"); n != 0 {
			t.Errorf("ledger holds %d; want 0", n)
		}
	})
}

// TestDeniedBytes compares, byte for byte, the 429 that an echo server
// and a net/http server with quota.Middleware send, Date aside.
func TestDeniedBytes(t *testing.T) {
	q := newQuota(t, 5)
	opts := []quota.MiddlewareOption{
		quota.WithLegacyHeaders(),
		quota.WithMessage(func(d quota.Decision) string { return "Upgrade to PRO for 100 uploads a month." }),
	}
	e := echo.New()
	e.POST("/diagrams", func(c echo.Context) error { return c.NoContent(http.StatusCreated) },
		auth, quotaecho.Middleware(q, "diagram.upload", subject, opts...))
	netSubject := func(r *http.Request) (string, error) { return r.Header.Get("X-User"), nil }
	mux := http.NewServeMux()
	mux.Handle("POST /diagrams", quota.Middleware(q, "diagram.upload", netSubject, opts...)(http.NotFoundHandler()))

	got, want := raw(t, e), raw(t, mux)
	if !bytes.Equal(got, want) {
		t.Errorf("echo's 429:\n%s\nnet/http's:\n%s", got, want)
	}
	if !bytes.HasPrefix(got, []byte("HTTP/1.1 429 ")) || !bytes.Contains(got, []byte("Ratelimit-Policy: ")) {
		t.Errorf("not a 429 with the quota headers:\n%s", got)
	}
}

var dateLine = regexp.MustCompile(`(?m)^Date: .*\r\n`)

// raw returns the bytes of the response of h to alice's upload, over a
// real connection, without its Date field.
func raw(t *testing.T, h http.Handler) []byte {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	conn, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "POST /diagrams HTTP/1.1\r\nHost: quota.test\r\nX-User: alice\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	b, err := io.ReadAll(bufio.NewReader(conn))
	if err != nil {
		t.Fatal(err)
	}
	return dateLine.ReplaceAll(b, nil)
}
