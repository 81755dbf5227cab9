package quota_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/uptrace/bun"

	"github.com/quotakit/quota"
)

// TestMiddlewareSettleTimeout is the regression test of a commit that
// waited for a lock: another transaction holds the subject's counter row
// (PostgreSQL) or the database's write lock (SQLite) for 5 s, taken
// while the handler runs. With a settlement bound of 200 ms, the 201
// reaches the client within 300 ms of the handler's return, the error
// hook hears of it once, and, once the lock is gone and the TTL has
// passed, the hold has expired: the ledger holds the use of before and
// balances, and the next request is charged as usual.
func TestMiddlewareSettleTimeout(t *testing.T) {
	const (
		bound = 200 * time.Millisecond
		held  = 5 * time.Second
		ttl   = time.Minute
	)
	eachBackend(t, func(t *testing.T, b backend) {
		t.Parallel()
		db := b.newDB(t)
		st := migrated(t, db)
		var now atomic.Int64
		now.Store(sqlT0.UnixNano())
		q := newQuota(t, st, quota.Config{
			Plans:          testPlans,
			DefaultPlan:    "FREE",
			Now:            func() time.Time { return time.Unix(0, now.Load()).UTC() },
			ReservationTTL: ttl,
		})
		defer q.Close()
		ctx := context.Background()
		const subject = "org-settle"
		u := quota.Use{Subject: subject, Action: "diagram.upload", Amount: 1}
		if d, err := q.Consume(ctx, u); err != nil || !d.Allowed {
			t.Fatalf("Consume = %+v, %v", d, err)
		}

		var hooked hookLog
		var returned atomic.Int64 // when the handler returned, Unix ns
		released := make(chan error, 1)
		locked := false
		handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !locked { // the first request only
				locked = true
				if err := lockCounters(b, db, subject, held, released); err != nil {
					t.Errorf("lock: %v", err)
					released <- nil
				}
			}
			w.WriteHeader(http.StatusCreated)
			returned.Store(time.Now().UnixNano())
		})
		mux := http.NewServeMux()
		mux.Handle("/bounded", quota.Middleware(q, "diagram.upload", mwSubject,
			quota.WithSettleTimeout(bound), quota.WithErrorHook(hooked.hook))(handler))
		// The same with the default bound, for a request that must not
		// fail for a machine busy with other tests.
		mux.Handle("/", quota.Middleware(q, "diagram.upload", mwSubject, quota.WithErrorHook(hooked.hook))(handler))
		srv := httptest.NewServer(mux)
		defer srv.Close()
		post := func(path string) (int, time.Duration) {
			req, err := http.NewRequest("POST", srv.URL+path, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("X-User", subject)
			res, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			arrived := time.Now()
			res.Body.Close()
			return res.StatusCode, arrived.Sub(time.Unix(0, returned.Load()))
		}

		code, after := post("/bounded")
		if code != http.StatusCreated {
			t.Errorf("status = %d; want 201", code)
		}
		t.Logf("the response arrived %v after the handler returned", after)
		if after > bound+100*time.Millisecond {
			t.Errorf("the response arrived %v after the handler returned; want within %v", after, bound+100*time.Millisecond)
		}
		if n := hooked.len(); n != 1 {
			t.Fatalf("error hook called %d times (%v); want once", n, hooked.errs)
		}
		if err := hooked.errs[0]; !errors.Is(err, quota.ErrStoreUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("error hook got %v; want an error matching ErrStoreUnavailable and context.DeadlineExceeded", err)
		}

		if err := <-released; err != nil {
			t.Fatal(err)
		}
		checkHoldExpires(t, q, db, u, func() { now.Add(int64(ttl + time.Second)) })

		// Without the lock, the next request is charged as usual.
		if code, _ := post("/"); code != http.StatusCreated {
			t.Errorf("second request: status %d; want 201", code)
		}
		if n := hooked.len(); n != 1 {
			t.Errorf("error hook called %d times (%v); want once, for the first request", n, hooked.errs)
		}
		if d, err := q.Check(ctx, u); err != nil || d.Used != 2 {
			t.Errorf("Check after the second request = used %d, %v; want 2", d.Used, err)
		}
		checkBalanced(t, db)
	})
}

// checkHoldExpires checks that the hold of a commit cut short counts
// until pastTTL moves the clock past its TTL, and then no longer: the
// ledger holds the one use of before, and balances.
func checkHoldExpires(t *testing.T, q *quota.Quota, db *bun.DB, u quota.Use, pastTTL func()) {
	t.Helper()
	ctx := context.Background()
	if d, err := q.Check(ctx, u); err != nil || d.Used != 2 {
		t.Errorf("Check before the TTL = used %d, %v; want 2, the use and the hold", d.Used, err)
	}
	pastTTL()
	if d, err := q.Check(ctx, u); err != nil || d.Used != 1 {
		t.Errorf("Check after the TTL = used %d, %v; want 1, the hold expired", d.Used, err)
	}
	if n := countRows(t, db, "quota_records"); n != 1 {
		t.Errorf("%d records; want 1, the use of before", n)
	}
	checkBalanced(t, db)
}

// lockCounters takes, from a connection of its own, the lock that a
// commit of subject's use waits for: its counter rows on PostgreSQL, the
// write lock on SQLite. It keeps it for d, then rolls back and sends the
// outcome on released.
func lockCounters(b backend, db *bun.DB, subject string, d time.Duration, released chan<- error) error {
	ctx := context.Background()
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	begin, lock := "BEGIN", "SELECT 1 FROM quota_summaries WHERE subject = ? FOR UPDATE"
	if b.name == "sqlite" {
		// SQLite locks the whole database for a writer.
		begin, lock = "BEGIN IMMEDIATE", "UPDATE quota_summaries SET used = used WHERE subject = ?"
	}
	if _, err := conn.ExecContext(ctx, begin); err != nil {
		conn.Close()
		return err
	}
	if _, err := conn.ExecContext(ctx, lock, subject); err != nil {
		conn.Close()
		return err
	}
	time.AfterFunc(d, func() {
		_, err := conn.ExecContext(ctx, "ROLLBACK")
		released <- errors.Join(err, conn.Close())
	})
	return nil
}
