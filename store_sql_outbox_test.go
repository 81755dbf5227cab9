package quota_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/quotakit/quota"
)

// noteLog gathers notifications, safe for concurrent use.
type noteLog struct {
	mu    sync.Mutex
	notes []quota.Notification
}

func (l *noteLog) notify(_ context.Context, n quota.Notification) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.notes = append(l.notes, n)
	return nil
}

// take returns the notifications gathered since the last take.
func (l *noteLog) take() []quota.Notification {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.notes
	l.notes = nil
	return out
}

// TestSQLStoreNotificationsCallerTx makes uses that cross the three levels
// of a limit inside a caller's transaction, through a Quota over that
// transaction: rolled back, they notify nothing; committed, they notify
// once each, after the commit, through a Quota over the database. The
// Quota over the transaction, Notify set, delivers nothing itself: its
// notices are not committed when it looks.
func TestSQLStoreNotificationsCallerTx(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		db := b.newDB(t)
		outside := migrated(t, db)
		var log noteLog
		cfg := quota.Config{
			Plans:         []quota.Plan{{Name: "P", Limits: map[string][]quota.Limit{"x": {quota.PerMonth(10)}}}},
			DefaultPlan:   "P",
			Notify:        log.notify,
			NotifyPoll:    5 * time.Millisecond,
			SweepInterval: -1,
		}
		const subject = "tx-notify"
		use := func(n int64) quota.Use { return quota.Use{Subject: subject, Action: "x", Amount: n} }
		// uses crosses the warning with a Track (8 of 10), the critical
		// level with a committed reservation (9), and the limit with a
		// Consume (10).
		uses := func(q *quota.Quota) {
			t.Helper()
			if d, err := q.Track(ctx, use(8)); err != nil || !d.Allowed {
				t.Fatalf("Track(8) = %+v, %v", d, err)
			}
			r, err := q.Reserve(ctx, use(1))
			if err != nil || !r.Decision.Allowed {
				t.Fatalf("Reserve(1) = %+v, %v", r, err)
			}
			if _, err := r.Commit(ctx); err != nil {
				t.Fatalf("Commit = %v", err)
			}
			if d, err := q.Consume(ctx, use(1)); err != nil || !d.Allowed {
				t.Fatalf("Consume(1) = %+v, %v", d, err)
			}
		}
		inTx := func(commit bool) {
			t.Helper()
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			st, err := quota.NewSQLStore(tx)
			if err != nil {
				t.Fatal(err)
			}
			q := newQuota(t, st, cfg)
			uses(q)
			if n := countRows(t, tx, "quota_notices"); n != 3 {
				t.Errorf("in the transaction: %d notices in the outbox; want 3", n)
			}
			q.Close() // delivers what it can claim: nothing
			if got := log.take(); len(got) != 0 {
				t.Errorf("before the commit: %d notifications delivered (%+v); want none", len(got), got)
			}
			if commit {
				err = tx.Commit()
			} else {
				err = tx.Rollback()
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		deliver := func() []quota.Notification {
			t.Helper()
			q := newQuota(t, outside, cfg)
			q.Close() // delivers what is due
			return log.take()
		}

		inTx(false)
		if got := deliver(); len(got) != 0 {
			t.Errorf("after the rollback: %d notifications (%+v); want none", len(got), got)
		}
		if n := countRows(t, db, "quota_notices"); n != 0 {
			t.Errorf("after the rollback: %d notices in the outbox; want 0", n)
		}

		inTx(true)
		got := deliver()
		type level struct {
			Level quota.Level
			Used  int64
		}
		var levels []level
		ids := map[string]bool{}
		for _, n := range got {
			levels = append(levels, level{n.Level, n.Used})
			if n.ID == "" || ids[n.ID] {
				t.Errorf("notification ID %q: want a distinct, non-empty ID", n.ID)
			}
			ids[n.ID] = true
		}
		want := []level{{quota.LevelWarning, 8}, {quota.LevelCritical, 9}, {quota.LevelExceeded, 10}}
		if diff := cmp.Diff(want, levels); diff != "" {
			t.Errorf("after the commit, notifications (-want +got):\n%s", diff)
		}
		if n := countRows(t, db, "quota_notices"); n != 0 {
			t.Errorf("after the deliveries: %d notices in the outbox; want 0", n)
		}
	})
}

// TestSQLStoreOutbox drives the Outbox of SQLStore directly: notices come
// oldest first, as the use left the counter; a claim hides them until its
// lease ends; Retry makes one due later, with one more attempt; Ack
// deletes; over a caller's transaction Claim returns nothing.
func TestSQLStoreOutbox(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		db := b.newDB(t)
		st := migrated(t, db)
		month := time.Date(2025, time.March, 1, 0, 0, 0, 0, time.UTC)
		key := quota.CounterKey{Subject: "o", Action: "a", Period: quota.PeriodMonth, Start: month}
		use := func(n int64, at time.Time) quota.ApplyResult {
			t.Helper()
			res, err := st.Apply(ctx, &quota.Op{
				Counters: []quota.CounterOp{{CounterKey: key, End: month.AddDate(0, 1, 0), Max: 10, Marks: []int64{8, 9, 10}}},
				Record:   quota.Record{Subject: "o", Action: "a", Amount: n, Time: at},
				Now:      at,
			})
			if err != nil || !res.Applied {
				t.Fatalf("Apply(%d) = %+v, %v", n, res, err)
			}
			return res
		}
		t0 := sqlT0
		use(8, t0) // the warning
		// Critical and exceeded: both crossed, one notice, for exceeded.
		if res := use(2, t0.Add(time.Second)); !cmp.Equal(res.Crossed, []quota.Crossing{{Counter: 0, Mark: 1}, {Counter: 0, Mark: 2}}) {
			t.Errorf("Apply(2) crossed %v; want marks 1 and 2", res.Crossed)
		}

		ns, err := st.Claim(ctx, t0.Add(time.Minute), time.Minute, 10)
		if err != nil {
			t.Fatal(err)
		}
		want := []quota.Notice{
			{Counter: quota.Counter{CounterKey: key, End: month.AddDate(0, 1, 0), Used: 8, Max: 10}, Mark: 0, At: t0},
			{Counter: quota.Counter{CounterKey: key, End: month.AddDate(0, 1, 0), Used: 10, Max: 10}, Mark: 2, At: t0.Add(time.Second)},
		}
		if diff := cmp.Diff(want, ns, cmpopts.IgnoreFields(quota.Notice{}, "ID")); diff != "" {
			t.Fatalf("Claim (-want +got):\n%s", diff)
		}
		if ns[0].ID >= ns[1].ID {
			t.Errorf("notice IDs %d, %d; want ascending", ns[0].ID, ns[1].ID)
		}
		// Claimed until t0 + 2 min: hidden until then.
		if got, err := st.Claim(ctx, t0.Add(2*time.Minute-time.Microsecond), time.Minute, 10); err != nil || len(got) != 0 {
			t.Errorf("Claim during the lease = %+v, %v; want none", got, err)
		}
		if err := st.Retry(ctx, ns[0].ID, t0.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if err := st.Ack(ctx, ns[1].ID); err != nil {
			t.Fatal(err)
		}
		if err := st.Ack(ctx, ns[1].ID); err != nil {
			t.Errorf("Ack of a notice acknowledged already = %v; want nil", err)
		}
		// Retried: due at t0 + 1 h, with one more attempt.
		if got, err := st.Claim(ctx, t0.Add(time.Hour-time.Microsecond), time.Minute, 10); err != nil || len(got) != 0 {
			t.Errorf("Claim before the retry is due = %+v, %v; want none", got, err)
		}
		got, err := st.Claim(ctx, t0.Add(time.Hour), time.Minute, 10)
		if err != nil || len(got) != 1 || got[0].ID != ns[0].ID || got[0].Attempts != 1 {
			t.Errorf("Claim when the retry is due = %+v, %v; want notice %d, attempt 1", got, err, ns[0].ID)
		}
		// The lease ends: claimed again, by another caller.
		got, err = st.Claim(ctx, t0.Add(time.Hour+time.Minute), time.Minute, 10)
		if err != nil || len(got) != 1 || got[0].ID != ns[0].ID {
			t.Errorf("Claim after the lease = %+v, %v; want notice %d again", got, err, ns[0].ID)
		}

		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		inTx, err := quota.NewSQLStore(tx)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := inTx.Claim(ctx, t0.Add(24*time.Hour), time.Minute, 10); err != nil || len(got) != 0 {
			t.Errorf("Claim over a transaction = %+v, %v; want none", got, err)
		}
		if n, err := inTx.Sweep(ctx, t0.Add(24*time.Hour), 10); err != nil || n != 0 {
			t.Errorf("Sweep over a transaction = %d, %v; want 0, nil", n, err)
		}
	})
}

// TestSQLStoreSweep checks that Sweep removes expired holds of every
// subject with their counters, and keeps the others.
func TestSQLStoreSweep(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		ctx := t.Context()
		db := b.newDB(t)
		st := migrated(t, db)
		month := time.Date(2025, time.March, 1, 0, 0, 0, 0, time.UTC)
		hold := func(subject, id string, ttl time.Duration) {
			t.Helper()
			op := &quota.Op{
				Counters: []quota.CounterOp{
					{CounterKey: quota.CounterKey{Subject: subject, Action: "a", Period: quota.PeriodNone}, Max: quota.Unlimited},
					{CounterKey: quota.CounterKey{Subject: subject, Action: "a", Period: quota.PeriodMonth, Start: month}, End: month.AddDate(0, 1, 0), Max: 10},
				},
				Record:  quota.Record{Subject: subject, Action: "a", Amount: 1, Time: sqlT0},
				Hold:    &quota.Hold{ID: id, ExpiresAt: sqlT0.Add(ttl)},
				Enforce: true,
				Now:     sqlT0,
			}
			if res, err := st.Apply(ctx, op); err != nil || !res.Applied {
				t.Fatalf("Apply(hold %s) = %+v, %v", id, res, err)
			}
		}
		hold("s1", "h1", time.Minute)
		hold("s2", "h2", time.Minute)
		hold("s2", "h3", 2*time.Minute)
		hold("s1", "h4", time.Hour)
		now := sqlT0.Add(2 * time.Minute) // h1 to h3 expired, at or before now
		if n, err := st.Sweep(ctx, now, 2); err != nil || n != 2 {
			t.Errorf("Sweep(limit 2) = %d, %v; want 2", n, err)
		}
		if n, err := st.Sweep(ctx, now, 10); err != nil || n != 1 {
			t.Errorf("Sweep(limit 10) = %d, %v; want the 1 left", n, err)
		}
		if n := countRows(t, db, "quota_holds"); n != 1 {
			t.Errorf("%d holds left; want 1", n)
		}
		if n := countRows(t, db, "quota_hold_counters"); n != 2 {
			t.Errorf("%d hold counters left; want the 2 of the live hold", n)
		}
		if _, err := st.Commit(ctx, "h4", 1, now); err != nil {
			t.Errorf("Commit of the live hold = %v", err)
		}
	})
}
