package quotatest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/quotakit/quota"
)

// testReservations checks Reserve, Commit, CommitAmount and Cancel under an
// injected clock: a hold counts at once, a commit records the reserved
// amount at the reserve time, the rest and cancelled holds are released,
// and an expired hold no longer counts and cannot be committed.
func testReservations(t *testing.T, s *suite) {
	e := s.env(t)
	const ttl = 5 * time.Minute
	cfg := quota.Config{ReservationTTL: ttl, Plans: []quota.Plan{plan("P", map[string][]quota.Limit{
		reserveAction: {quota.PerMonth(10)},
		reserveBulk:   {quota.PerMonth(100)},
	})}}
	q := e.quota(t, cfg)
	subj := e.name("s")
	e.subscribe(t, q, subj, "P")
	r := &reserveCase{t: t, e: e, q: q, cfg: cfg, subj: subj, w: monthOf(subj, reserveAction)}

	r1, r2 := r.holds(t, ttl)
	r.commits(t, r1, r2)
	r.cancels(t)
	r.badCommits(t)

	t.Run("Expiry", r.testExpiry)
	t.Run("Key", r.testKey)
	t.Run("KeyAfterHold", r.testKeyAfterHold)
	t.Run("Concurrent", r.testConcurrent)
}

// The actions of testReservations: reserveAction has a limit of 10 a
// month, reserveBulk of 100.
const reserveAction, reserveBulk = "pdf.export", "bulk.export"

// reserveCase is the state of testReservations that its steps share: a
// subject of plan P, and its window w of reserveAction.
type reserveCase struct {
	// t is the case's T. The helpers reserve and wantCounter report on
	// it, also when a subtest calls them.
	t    *testing.T
	e    *env
	q    *quota.Quota
	cfg  quota.Config
	subj string
	w    window
}

func (r *reserveCase) use(n int64) quota.Use {
	return quota.Use{Subject: r.subj, Action: reserveAction, Amount: n}
}

// reserve reserves n, failing the case on an error.
func (r *reserveCase) reserve(n int64) *quota.Reservation {
	r.t.Helper()
	res, err := r.q.Reserve(r.e.ctx, r.use(n))
	if err != nil {
		r.t.Fatalf("Reserve(%d) = %v", n, err)
	}
	return res
}

func (r *reserveCase) wantCounter(when string, used, held int64) {
	r.t.Helper()
	c := r.e.counters(r.t, r.w.key)[0]
	if c.Used != used || c.Held != held {
		r.t.Errorf("%s: counter {Used %d, Held %d}; want {Used %d, Held %d}", when, c.Used, c.Held, used, held)
	}
}

// want is a record of the reserved use; its ID is not known.
func (r *reserveCase) want(amount int64, at time.Time) quota.Record {
	return quota.Record{Subject: r.subj, Action: reserveAction, Amount: amount, Time: at}
}

var ignoreID = cmpopts.IgnoreFields(quota.Record{}, "ID")

// holds reserves 4 then 6 of 10, which count at once and write nothing,
// and returns both reservations.
func (r *reserveCase) holds(t *testing.T, ttl time.Duration) (r1, r2 *quota.Reservation) {
	e, q, use := r.e, r.q, r.use
	r1 = r.reserve(4)
	wantAllowed(t, "Reserve(4)", r1.Decision, 4)
	if r1.ID == "" || !r1.ExpiresAt.Equal(t0.Add(ttl)) {
		t.Errorf("Reserve(4) = {ID %q, ExpiresAt %v}; want an ID, expiring at %v", r1.ID, r1.ExpiresAt, t0.Add(ttl))
	}
	r.wantCounter("after Reserve(4)", 0, 4)
	if recs := e.records(t, quota.RecordQuery{Subject: r.subj}); len(recs) != 0 {
		t.Errorf("Reserve wrote records %+v; want none until Commit", recs)
	}
	wantAllowed(t, "Check(1) with 4 held", check(t, e.ctx, q, use(1)), 4)
	r2 = r.reserve(6)
	wantAllowed(t, "Reserve(6) with 4 held", r2.Decision, 10)
	wantDenied(t, "Consume(1) with 10 held of 10", consume(t, e.ctx, q, use(1)), quota.ReasonLimit, 10)
	wantDenied(t, "Check(1) with 10 held of 10", check(t, e.ctx, q, use(1)), quota.ReasonLimit, 10)
	if res := r.reserve(1); res.Decision.Allowed || res.ID != "" {
		t.Errorf("Reserve(1) with 10 held of 10 = {Allowed %v, ID %q}; want a denial without ID", res.Decision.Allowed, res.ID)
	}
	return r1, r2
}

// commits commits r1 (4) whole and 2 of r2 (6), a minute later.
func (r *reserveCase) commits(t *testing.T, r1, r2 *quota.Reservation) {
	e, q, use, want := r.e, r.q, r.use, r.want
	// Commit records the reserved amount at the time of Reserve.
	e.clock.Add(time.Minute)
	if _, err := r1.Commit(e.ctx); err != nil {
		t.Fatalf("Commit() of Reserve(4) = %v", err)
	}
	recs := e.records(t, quota.RecordQuery{Subject: r.subj})
	if diff := cmp.Diff([]quota.Record{want(4, t0)}, recs, ignoreID, cmpTime, cmpEmpty); diff != "" {
		t.Errorf("records after Commit (-want +got):\n%s", diff)
	}
	r.wantCounter("after Commit of 4", 4, 6)

	// CommitAmount records less and releases the rest.
	if _, err := r2.CommitAmount(e.ctx, 2); err != nil {
		t.Fatalf("CommitAmount(2) of Reserve(6) = %v", err)
	}
	recs = e.records(t, quota.RecordQuery{Subject: r.subj})
	if diff := cmp.Diff([]quota.Record{want(4, t0), want(2, t0)}, recs, ignoreID, cmpTime, cmpEmpty); diff != "" {
		t.Errorf("records after CommitAmount (-want +got):\n%s", diff)
	}
	r.wantCounter("after CommitAmount(2) of 6", 6, 0)
	wantAllowed(t, "Check(4) with 6 used", check(t, e.ctx, q, use(4)), 6)
	wantDenied(t, "Check(5) with 6 used", check(t, e.ctx, q, use(5)), quota.ReasonLimit, 6)

	// A reservation is committed or cancelled once.
	wantErr(t, "second Commit()", second(r1.Commit(e.ctx)), quota.ErrReservationNotFound)
	wantErr(t, "Cancel() after Commit", r1.Cancel(e.ctx), quota.ErrReservationNotFound)
	wantErr(t, "Cancel() after CommitAmount", r2.Cancel(e.ctx), quota.ErrReservationNotFound)
}

// cancels reserves 3 and cancels it, with 6 used.
func (r *reserveCase) cancels(t *testing.T) {
	e := r.e
	// Cancel releases.
	r3 := r.reserve(3)
	r.wantCounter("after Reserve(3)", 6, 3)
	if err := r3.Cancel(e.ctx); err != nil {
		t.Errorf("Cancel() = %v; want nil", err)
	}
	r.wantCounter("after Cancel", 6, 0)
	wantErr(t, "second Cancel()", r3.Cancel(e.ctx), quota.ErrReservationNotFound)
	wantErr(t, "Commit() after Cancel", second(r3.Commit(e.ctx)), quota.ErrReservationNotFound)
}

// badCommits reserves 2, fails to commit it with bad arguments, and
// cancels it, with 6 used.
func (r *reserveCase) badCommits(t *testing.T) {
	e := r.e
	// Bad commits leave the hold alone.
	r4 := r.reserve(2)
	wantErr(t, "CommitAmount(3) of Reserve(2)", second(r4.CommitAmount(e.ctx, 3)), quota.ErrInvalidAmount)
	wantErr(t, "CommitAmount(0) of Reserve(2)", second(r4.CommitAmount(e.ctx, 0)), quota.ErrInvalidAmount)
	var nilCtx context.Context
	wantErr(t, "Commit(nil context)", second(r4.Commit(nilCtx)), quota.ErrNilContext)
	wantErr(t, "Cancel(nil context)", r4.Cancel(nilCtx), quota.ErrNilContext)
	cancelled, cancel := context.WithCancel(e.ctx)
	cancel()
	wantErr(t, "Commit(cancelled context)", second(r4.Commit(cancelled)), context.Canceled)
	_, err := e.store.Commit(cancelled, r4.ID, 2, e.clock.Now())
	wantErr(t, "Store.Commit(cancelled context)", err, context.Canceled)
	wantErr(t, "Store.Cancel(cancelled context)", e.store.Cancel(cancelled, r4.ID, e.clock.Now()), context.Canceled)
	r.wantCounter("after bad commits of Reserve(2)", 6, 2)
	if err := r4.Cancel(e.ctx); err != nil {
		t.Errorf("Cancel() after bad commits = %v; want nil", err)
	}
}

func (r *reserveCase) testExpiry(t *testing.T) {
	e, q, use, want, wantCounter := r.e, r.q, r.use, r.want, r.wantCounter
	defer e.clock.Set(t0)
	// A commit just before the expiry succeeds, with the reserve time.
	r5 := r.reserve(4)
	at := e.clock.Now()
	e.clock.Set(r5.ExpiresAt.Add(-time.Microsecond))
	wantCounter("a microsecond before the expiry", 6, 4)
	if _, err := r5.CommitAmount(e.ctx, 1); err != nil {
		t.Errorf("CommitAmount(1) a microsecond before the expiry = %v; want nil", err)
	}
	wantCounter("after CommitAmount(1)", 7, 0)
	recs := e.records(t, quota.RecordQuery{Subject: r.subj})
	if diff := cmp.Diff(want(1, at), recs[len(recs)-1], ignoreID, cmpTime, cmpEmpty); diff != "" {
		t.Errorf("last record (-want +got):\n%s", diff)
	}
	n := len(recs)

	// At the expiry, the hold stops counting and a commit fails.
	r6 := r.reserve(3)
	e.clock.Set(r6.ExpiresAt)
	wantErr(t, "Commit() at the expiry", second(r6.Commit(e.ctx)), quota.ErrReservationExpired)
	wantErr(t, "second Commit() after the expiry", second(r6.Commit(e.ctx)), quota.ErrReservationNotFound)
	wantErr(t, "Cancel() after the expiry", r6.Cancel(e.ctx), quota.ErrReservationNotFound)
	wantCounter("after the expiry", 7, 0)

	// An expired hold does not block a use; its commit then fails.
	r7 := r.reserve(3)
	wantAllowed(t, "Reserve(3)", r7.Decision, 10)
	e.clock.Set(r7.ExpiresAt.Add(time.Second))
	wantCounter("a second after the expiry", 7, 0)
	wantAllowed(t, "Consume(3) with an expired hold of 3", consume(t, e.ctx, q, use(3)), 10)
	if _, err := r7.Commit(e.ctx); !errors.Is(err, quota.ErrReservationExpired) && !errors.Is(err, quota.ErrReservationNotFound) {
		t.Errorf("Commit() after the expiry = %v; want an error matching ErrReservationExpired or ErrReservationNotFound", err)
	}
	if c, recs := e.ledger(t, r.w); c.Used != 10 || c.Held != 0 || len(recs) != n+1 {
		t.Errorf("after expiries: counter {Used %d, Held %d}, %d records; want {10, 0}, %d", c.Used, c.Held, len(recs), n+1)
	}
}

func (r *reserveCase) testKey(t *testing.T) {
	e, q := r.e, r.q
	subj := e.name("keyed")
	e.subscribe(t, q, subj, "P")
	u := quota.Use{Subject: subj, Action: reserveAction, Amount: 3, Key: "upload-1"}
	at := e.clock.Now()
	r1, err1 := q.Reserve(e.ctx, u)
	r2, err2 := q.Reserve(e.ctx, u)
	if err1 != nil || err2 != nil {
		t.Fatalf("Reserve twice with one key = %v, %v", err1, err2)
	}
	if r1.Decision.Replayed || !r2.Decision.Replayed || r2.ID != r1.ID {
		t.Errorf("Reserve twice with one key = {Replayed %v, ID %q}, then {%v, %q}; want the second a replay of the first",
			r1.Decision.Replayed, r1.ID, r2.Decision.Replayed, r2.ID)
	}
	// The replay returns the first outcome, expiry included.
	if !r2.ExpiresAt.Equal(r1.ExpiresAt) {
		t.Errorf("replayed Reserve: ExpiresAt %v; want %v, the first Reserve's", r2.ExpiresAt, r1.ExpiresAt)
	}
	if c := e.counters(t, monthOf(subj, reserveAction).key)[0]; c.Held != 3 {
		t.Errorf("Reserve twice with one key: Held %d; want 3", c.Held)
	}
	// Another Quota over the store commits it by ID.
	q2 := e.quota(t, r.cfg)
	rec, err := q2.CommitReservation(e.ctx, r2.ID, 2)
	if err != nil {
		t.Fatalf("CommitReservation(%q, 2) = %v", r2.ID, err)
	}
	wantRec := quota.Record{Subject: subj, Action: reserveAction, Amount: 2, Key: "upload-1", Time: at}
	if diff := cmp.Diff(wantRec, rec, ignoreID, cmpTime, cmpEmpty); diff != "" || rec.ID == 0 {
		t.Errorf("CommitReservation() returned (-want +got):\n%s (ID %d)", diff, rec.ID)
	}
	recs := e.records(t, quota.RecordQuery{Subject: subj})
	if diff := cmp.Diff([]quota.Record{rec}, recs, cmpTime, cmpEmpty); diff != "" {
		t.Errorf("records (-committed +stored):\n%s", diff)
	}
	wantErr(t, "Commit() of the first Reservation", second(r1.Commit(e.ctx)), quota.ErrReservationNotFound)
}

// testKeyAfterHold: a key whose hold was cancelled, or expired
// uncommitted (committed too late, swept or not), was never used: the
// next use of the key is a new use. A key whose hold was committed stays
// used: the next use is a replay.
func (r *reserveCase) testKeyAfterHold(t *testing.T) {
	e, q := r.e, r.q
	const ttl = 5 * time.Minute
	subj := e.name("rekey")
	e.subscribe(t, q, subj, "P")
	reserve := func(key string) *quota.Reservation {
		t.Helper()
		res, err := q.Reserve(e.ctx, quota.Use{Subject: subj, Action: reserveAction, Amount: 1, Key: key})
		if err != nil || !res.Decision.Allowed {
			t.Fatalf("Reserve(key %q) = %+v, %v", key, res, err)
		}
		return res
	}
	fresh := func(when string, first *quota.Reservation, key string) *quota.Reservation {
		t.Helper()
		again := reserve(key)
		if again.Decision.Replayed || again.ID == first.ID {
			t.Errorf("Reserve(key %q) %s = {Replayed %v, ID %q}; want a new use, not the first (%q)", key, when, again.Decision.Replayed, again.ID, first.ID)
		}
		return again
	}

	cancelled := reserve("cancelled")
	if err := cancelled.Cancel(e.ctx); err != nil {
		t.Fatalf("Cancel() = %v", err)
	}
	fresh("after its hold was cancelled", cancelled, "cancelled")

	committed := reserve("committed")
	if _, err := committed.Commit(e.ctx); err != nil {
		t.Fatalf("Commit() = %v", err)
	}
	if again := reserve("committed"); !again.Decision.Replayed || again.ID != committed.ID {
		t.Errorf("Reserve(key) after its hold was committed = {Replayed %v, ID %q}; want a replay of %q", again.Decision.Replayed, again.ID, committed.ID)
	}

	late := reserve("late")
	expired := reserve("expired")
	e.clock.Add(ttl + time.Second)
	if err := second(late.Commit(e.ctx)); !errors.Is(err, quota.ErrReservationExpired) && !errors.Is(err, quota.ErrReservationNotFound) {
		t.Errorf("Commit() after the TTL = %v; want ErrReservationExpired or ErrReservationNotFound", err)
	}
	fresh("after its commit came too late", late, "late")
	fresh("after its hold expired", expired, "expired")
	if c := e.counters(t, monthOf(subj, reserveAction).key)[0]; c.Used != 1 || c.Held != 2 {
		t.Errorf("counter after the new uses: {Used %d, Held %d}; want {Used 1, Held 2}", c.Used, c.Held)
	}
}

func (r *reserveCase) testConcurrent(t *testing.T) {
	e, q := r.e, r.q
	const limit, goroutines, perG = 100, 32, 8
	subj := e.name("race")
	e.subscribe(t, q, subj, "P")
	held, outs := reserveRace(e.ctx, q, subj, goroutines, perG)
	c := tally(outs)
	c.problems = nil // holds have no record
	reportRace(t, outs, c)
	if c.allowed != limit || len(held) != limit {
		t.Fatalf("%d x %d Reserve(1) against %d: %d allowed; want %d", goroutines, perG, limit, c.allowed, limit)
	}
	bw := monthOf(subj, reserveBulk)
	if cnt := e.counters(t, bw.key)[0]; cnt.Used != 0 || cnt.Held != limit {
		t.Errorf("after the race: counter {Used %d, Held %d}; want {0, %d}", cnt.Used, cnt.Held, limit)
	}

	// Two goroutines settle each hold at once: both commit the first
	// half, one commits and one cancels the second. One of each pair
	// wins; the other gets ErrReservationNotFound.
	committed := wantSettledOnce(t, settleRace(e.ctx, held))
	cnt, recs := e.ledger(t, bw)
	if cnt.Used != committed || cnt.Held != 0 || int64(len(recs)) != committed {
		t.Errorf("after settling: counter {Used %d, Held %d}, %d records; want {%d, 0}, %d", cnt.Used, cnt.Held, len(recs), committed, committed)
	}
	if committed < limit/2 {
		t.Errorf("%d commits won; want at least %d", committed, limit/2)
	}
}

// reserveRace runs goroutines goroutines that each Reserve 1 of subject's
// reserveBulk perG times, all at once, and returns the reservations
// allowed and every outcome.
func reserveRace(ctx context.Context, q *quota.Quota, subject string, goroutines, perG int) ([]*quota.Reservation, []outcome) {
	var mu sync.Mutex
	var held []*quota.Reservation
	outs := race(goroutines, perG, func(g, i int) outcome {
		u := quota.Use{Subject: subject, Action: reserveBulk, Amount: 1}
		r, err := q.Reserve(ctx, u)
		if err != nil {
			return outcome{use: u, err: err}
		}
		if r.Decision.Allowed {
			mu.Lock()
			held = append(held, r)
			mu.Unlock()
		}
		return outcome{use: u, d: r.Decision}
	})
	return held, outs
}

// settlement is the result of one attempt to settle a hold.
type settlement struct {
	commit bool // Commit, not Cancel
	err    error
}

// settleRace settles each of held twice at once: both attempts commit the
// first half of held; of the second half, one commits and one cancels.
func settleRace(ctx context.Context, held []*quota.Reservation) [][2]settlement {
	results := make([][2]settlement, len(held))
	var wg sync.WaitGroup
	for i, r := range held {
		for j := range 2 {
			commit := i < len(held)/2 || j == 0
			wg.Go(func() {
				var err error
				if commit {
					_, err = r.Commit(ctx)
				} else {
					err = r.Cancel(ctx)
				}
				results[i][j] = settlement{commit, err}
			})
		}
	}
	wg.Wait()
	return results
}

// wantSettledOnce fails t unless exactly one attempt of each pair won and
// the other got ErrReservationNotFound. It returns the number of holds
// committed.
func wantSettledOnce(t *testing.T, results [][2]settlement) int64 {
	var committed int64
	for i, pair := range results {
		wins := 0
		for _, res := range pair {
			switch {
			case res.err == nil:
				wins++
				if res.commit {
					committed++
				}
			case !errors.Is(res.err, quota.ErrReservationNotFound):
				t.Errorf("hold %d: settle = %v; want nil or ErrReservationNotFound", i, res.err)
			}
		}
		if wins != 1 {
			t.Errorf("hold %d settled %d times at once; want exactly 1", i, wins)
		}
	}
	return committed
}
