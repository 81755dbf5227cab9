package quota_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/quotakit/quota"
)

// TestSQLStoreTimeout holds the counters' table locked from another
// connection and checks that Config.StoreTimeout bounds a Consume: it
// fails in time with an error matching ErrStoreUnavailable and
// context.DeadlineExceeded, writes nothing, and the store works again
// once the lock is gone.
func TestSQLStoreTimeout(t *testing.T) {
	lock := map[string]string{
		"pg":     "LOCK TABLE quota_summaries IN ACCESS EXCLUSIVE MODE",
		"sqlite": "INSERT INTO quota_subscriptions (subject, plan) SELECT subject, plan FROM quota_subscriptions WHERE 0",
	}
	eachBackend(t, func(t *testing.T, b backend) {
		db := b.newDB(t)
		st := migrated(t, db)
		const bound = 200 * time.Millisecond
		q := newQuota(t, st, quota.Config{Plans: testPlans, DefaultPlan: "FREE", StoreTimeout: bound})
		u := quota.Use{Subject: "org-timeout", Action: "diagram.upload", Amount: 1}

		// The connection that will hold the lock, taken first, so that the
		// Consume below leaves a warm connection for the one behind the
		// lock (opening one may take longer than the bound).
		ctx := context.Background()
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if d, err := q.Consume(t.Context(), u); err != nil || !d.Allowed {
			t.Fatalf("Consume before the lock = %+v, %v", d, err)
		}
		begin := "BEGIN"
		if b.name == "sqlite" {
			begin = "BEGIN IMMEDIATE"
		}
		if _, err := conn.ExecContext(ctx, begin); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.ExecContext(ctx, lock[b.name]); err != nil {
			t.Fatal(err)
		}

		// A keyed use: a call that fails may still be applied (the
		// database may run it once the lock is gone), and repeating it
		// with its key tells which.
		keyed := u
		keyed.Key = "behind-the-lock"
		start := time.Now()
		_, err = q.Consume(t.Context(), keyed)
		took := time.Since(start)
		if !errors.Is(err, quota.ErrStoreUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Consume behind a lock = %v; want an error matching ErrStoreUnavailable and context.DeadlineExceeded", err)
		}
		// The bound, plus the time a driver takes to give up a statement.
		if took > bound+2*time.Second {
			t.Errorf("Consume behind a lock returned after %v; want about %v", took, bound)
		}
		if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
			t.Fatal(err)
		}
		d, err := q.Consume(t.Context(), keyed)
		if err != nil || !d.Allowed || d.Used != 2 {
			t.Errorf("the keyed Consume repeated after the lock = used %d, %v; want the second use, once (replayed or not)", d.Used, err)
		}
		d, err = q.Consume(t.Context(), u)
		if err != nil || !d.Allowed || d.Used != 3 {
			t.Errorf("Consume after the lock = used %d, %v; want the third use", d.Used, err)
		}
		checkBalanced(t, db)
	})
}
