package quotagin_test

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

	"github.com/gin-gonic/gin"

	"github.com/quotakit/quota"
	quotagin "github.com/quotakit/quota/contrib/gin"
)

func init() { gin.SetMode(gin.TestMode) }

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

// auth is the app's authentication: it names the user in gin's context.
// (It trusts X-User, as only a test may.)
func auth(c *gin.Context) {
	if u := c.GetHeader("X-User"); u != "" {
		c.Set("user", u)
	}
}

// subject reads the user that auth stored.
func subject(c *gin.Context) (string, error) {
	u := c.GetString("user")
	if u == "" {
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

// serve sends a POST with body (nil for none) as user through h.
func serve(h http.Handler, user string, body io.Reader) *httptest.ResponseRecorder {
	req := httptest.NewRequest("POST", "/diagrams", body)
	if user != "" {
		req.Header.Set("X-User", user)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// errorsTo500 is an app's error middleware: it answers 500 for an error
// that a handler added without writing.
func errorsTo500(c *gin.Context) {
	c.Next()
	if len(c.Errors) > 0 && !c.Writer.Written() {
		c.String(http.StatusInternalServerError, "error")
	}
}

func TestMiddleware(t *testing.T) {
	for _, tt := range []struct {
		name     string
		action   string
		opts     []quota.MiddlewareOption
		pre      int64
		user     string
		body     string
		handler  gin.HandlerFunc
		wantCode int
		wantUsed int64
		wantRan  bool
	}{
		{
			name: "success: committed", action: "diagram.upload", user: "alice",
			handler:  func(c *gin.Context) { c.String(http.StatusCreated, "created") },
			wantCode: 201, wantUsed: 1, wantRan: true,
		},
		{
			name: "nothing written: 200, committed", action: "diagram.upload", user: "alice",
			handler:  func(c *gin.Context) {},
			wantCode: 200, wantUsed: 1, wantRan: true,
		},
		{
			name: "c.Status(201), written by gin: committed", action: "diagram.upload", user: "alice",
			handler:  func(c *gin.Context) { c.Status(http.StatusCreated) },
			wantCode: 201, wantUsed: 1, wantRan: true,
		},
		{
			name: "c.AbortWithStatus(400): cancelled", action: "diagram.upload", user: "alice",
			handler:  func(c *gin.Context) { c.AbortWithStatus(http.StatusBadRequest) },
			wantCode: 400, wantRan: true,
		},
		{
			name: "c.AbortWithStatusJSON(422): cancelled", action: "diagram.upload", user: "alice",
			handler:  func(c *gin.Context) { c.AbortWithStatusJSON(http.StatusUnprocessableEntity, gin.H{"error": "bad"}) },
			wantCode: 422, wantRan: true,
		},
		{
			name: "c.Status(404), written by gin: cancelled", action: "diagram.upload", user: "alice",
			handler:  func(c *gin.Context) { c.Status(http.StatusNotFound) },
			wantCode: 404, wantRan: true,
		},
		{
			name: "c.Error with nothing written: cancelled", action: "diagram.upload", user: "alice",
			handler:  func(c *gin.Context) { _ = c.Error(errors.New("disk full")) },
			wantCode: 500, wantRan: true,
		},
		{
			name: "WithSuccess rejects 202: cancelled", action: "diagram.upload", user: "alice",
			opts:     []quota.MiddlewareOption{quota.WithSuccess(func(s int) bool { return s == http.StatusCreated })},
			handler:  func(c *gin.Context) { c.Status(http.StatusAccepted) },
			wantCode: 202, wantRan: true,
		},
		{
			name: "denied: 429, the chain aborted", action: "diagram.upload", user: "alice", pre: 5,
			handler:  func(c *gin.Context) { c.Status(http.StatusCreated) },
			wantCode: 429, wantUsed: 5,
		},
		{
			name: "no user in gin's context: 401", action: "diagram.upload",
			handler:  func(c *gin.Context) { c.Status(http.StatusCreated) },
			wantCode: 401,
		},
		{
			name: "body bytes read: charged", action: "storage.bytes", user: "alice", body: strings.Repeat("x", 60),
			opts: []quota.MiddlewareOption{quota.WithBodyBytes()},
			handler: func(c *gin.Context) {
				b, err := io.ReadAll(c.Request.Body)
				if err != nil {
					_ = c.Error(err)
					return
				}
				c.String(http.StatusCreated, fmt.Sprint(len(b)))
			},
			wantCode: 201, wantUsed: 60, wantRan: true,
		},
		{
			name: "chunked body over its cap, read: 413, cancelled", action: "storage.bytes", user: "alice",
			body: strings.Repeat("x", 150), opts: []quota.MiddlewareOption{quota.WithBodyBytes()},
			handler: func(c *gin.Context) {
				if _, err := io.ReadAll(c.Request.Body); err != nil {
					_ = c.Error(err) // the Meter answers 413
				}
			},
			wantCode: 413, wantRan: true,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			q := newQuota(t, tt.pre)
			var h hooks
			ran := false
			r := gin.New()
			opts := append([]quota.MiddlewareOption{quota.WithErrorHook(h.hook)}, tt.opts...)
			r.POST("/diagrams", errorsTo500, auth, quotagin.Middleware(q, tt.action, subject, opts...), func(c *gin.Context) {
				ran = true
				if _, ok := quota.FromContext(c.Request.Context()); !ok {
					t.Error("no decision in the handler's request")
				}
				tt.handler(c)
			})
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
				if strings.HasPrefix(tt.name, "chunked") {
					body = io.MultiReader(body) // reserved up to the cap
				}
			}
			rec := serve(r, tt.user, body)
			if rec.Code != tt.wantCode {
				t.Errorf("status = %d %s; want %d", rec.Code, rec.Body, tt.wantCode)
			}
			if ran != tt.wantRan {
				t.Errorf("handler ran = %t; want %t", ran, tt.wantRan)
			}
			if got := used(t, q, tt.action); got != tt.wantUsed {
				t.Errorf("ledger holds %d; want %d", got, tt.wantUsed)
			}
			if len(h.errs) != 0 {
				t.Errorf("error hook got %v", h.errs)
			}
			if !tt.wantRan && tt.wantCode >= 400 || tt.wantCode == 413 {
				if ct := rec.Header().Get("Content-Type"); ct != quota.ContentTypeProblem {
					t.Errorf("Content-Type = %q; want a problem", ct)
				}
			}
		})
	}
}

// naive wraps a net/http middleware for gin the obvious way.
func naive(mw func(http.Handler) http.Handler) gin.HandlerFunc {
	return func(c *gin.Context) {
		mw(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c.Request = r
			c.Next()
		})).ServeHTTP(c.Writer, c.Request)
	}
}

// TestNaiveWrapperBills is the negative control: quota.Middleware in a
// naive gin wrapper commits a request aborted with 400, which
// quotagin.Middleware cancels.
func TestNaiveWrapperBills(t *testing.T) {
	q := newQuota(t, 0)
	netSubject := func(r *http.Request) (string, error) { return r.Header.Get("X-User"), nil }
	r := gin.New()
	r.POST("/diagrams", naive(quota.Middleware(q, "diagram.upload", netSubject)), func(c *gin.Context) {
		c.AbortWithStatus(http.StatusBadRequest)
	})
	if rec := serve(r, "alice", nil); rec.Code != http.StatusBadRequest {
		t.Fatalf("status %d; want 400", rec.Code)
	}
	if got := used(t, q, "diagram.upload"); got != 1 {
		t.Errorf("naive wrapper: ledger holds %d; want the failed request billed, 1 (the defect this module fixes)", got)
	}
}

// TestPanic: a panicking handler cancels the hold; the panic goes on, to
// gin.Recovery or, without it, to the caller.
func TestPanic(t *testing.T) {
	setup := func(t *testing.T, use ...gin.HandlerFunc) (*quota.Quota, *gin.Engine) {
		q := newQuota(t, 0)
		r := gin.New()
		r.Use(use...)
		r.POST("/diagrams", auth, quotagin.Middleware(q, "diagram.upload", subject), func(c *gin.Context) { panic("boom") })
		return q, r
	}
	t.Run("Recovery", func(t *testing.T) {
		q, r := setup(t, gin.RecoveryWithWriter(io.Discard))
		if rec := serve(r, "alice", nil); rec.Code != http.StatusInternalServerError {
			t.Errorf("status %d; want Recovery's 500", rec.Code)
		}
		if n := used(t, q, "diagram.upload"); n != 0 {
			t.Errorf("ledger holds %d; want 0", n)
		}
	})
	t.Run("no Recovery", func(t *testing.T) {
		q, r := setup(t)
		func() {
			defer func() {
				if v := recover(); v != "boom" {
					t.Errorf("recovered %v; want the handler's panic", v)
				}
			}()
			serve(r, "alice", nil)
		}()
		if n := used(t, q, "diagram.upload"); n != 0 {
			t.Errorf("ledger holds %d; want 0", n)
		}
	})
}

// TestRequestRestored: the handler gets the metered request; the
// middlewares around get theirs back.
func TestRequestRestored(t *testing.T) {
	q := newQuota(t, 0)
	r := gin.New()
	var outer, inner *http.Request
	r.POST("/diagrams", func(c *gin.Context) {
		outer = c.Request
		c.Next()
		if c.Request != outer {
			t.Error("the request was not given back")
		}
	}, auth, quotagin.Middleware(q, "diagram.upload", subject), func(c *gin.Context) { inner = c.Request })
	serve(r, "alice", nil)
	if inner == outer {
		t.Error("the handler got the request unmetered")
	}
	if _, ok := quota.FromContext(outer.Context()); ok {
		t.Error("the caller's request holds a decision")
	}
}

// TestDeniedBytes compares, byte for byte, the 429 that a gin server and
// a net/http server with quota.Middleware send, Date aside.
func TestDeniedBytes(t *testing.T) {
	q := newQuota(t, 5)
	opts := []quota.MiddlewareOption{
		quota.WithLegacyHeaders(),
		quota.WithMessage(func(d quota.Decision) string { return "Upgrade to PRO for 100 uploads a month." }),
	}
	r := gin.New()
	r.POST("/diagrams", auth, quotagin.Middleware(q, "diagram.upload", subject, opts...), func(c *gin.Context) { c.Status(http.StatusCreated) })
	netSubject := func(r *http.Request) (string, error) { return r.Header.Get("X-User"), nil }
	mux := http.NewServeMux()
	mux.Handle("POST /diagrams", quota.Middleware(q, "diagram.upload", netSubject, opts...)(http.NotFoundHandler()))

	got, want := raw(t, r), raw(t, mux)
	if !bytes.Equal(got, want) {
		t.Errorf("gin's 429:\n%s\nnet/http's:\n%s", got, want)
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
