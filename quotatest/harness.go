package quotatest

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/quotakit/quota"
)

// outcome is the result of one call made by race.
type outcome struct {
	use quota.Use
	d   quota.Decision
	err error
}

// race runs goroutines goroutines, released together, each making perG
// calls of do(g, i) in turn, and returns every outcome, goroutine by
// goroutine.
func race(goroutines, perG int, do func(g, i int) outcome) []outcome {
	out := make([]outcome, goroutines*perG)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			<-start
			for i := range perG {
				out[g*perG+i] = do(g, i)
			}
		})
	}
	close(start)
	wg.Wait()
	return out
}

// counts sums up the outcomes of a race.
type counts struct {
	allowed, denied, errors int
	firstErr                error
	// granted is the sum of the amounts of the allowed uses.
	granted int64
	// byRecord maps the RecordID of every allowed use to its amount.
	byRecord map[int64]int64
	// problems lists allowed uses with no or a repeated RecordID.
	problems []string
}

func tally(outs []outcome) counts {
	c := counts{byRecord: make(map[int64]int64)}
	for _, o := range outs {
		switch {
		case o.err != nil:
			c.errors++
			if c.firstErr == nil {
				c.firstErr = o.err
			}
		case o.d.Allowed:
			c.allowed++
			c.granted += o.use.Amount
			if _, dup := c.byRecord[o.d.RecordID]; dup || o.d.RecordID <= 0 {
				c.problems = append(c.problems, fmt.Sprintf("allowed %s %d: RecordID %d is missing or repeated", o.use.Action, o.use.Amount, o.d.RecordID))
			}
			c.byRecord[o.d.RecordID] = o.use.Amount
		default:
			c.denied++
		}
	}
	return c
}

// consumeRace is the concurrency harness of invariant 1: goroutines
// goroutines each Consume 1 of subject's action perG times, all at once.
// The negative control runs it against a naive store.
func consumeRace(ctx context.Context, q *quota.Quota, subject, action string, goroutines, perG int) (counts, []outcome) {
	outs := race(goroutines, perG, func(g, i int) outcome {
		u := quota.Use{Subject: subject, Action: action, Amount: 1}
		d, err := q.Consume(ctx, u)
		return outcome{use: u, d: d, err: err}
	})
	return tally(outs), outs
}

// justify returns why the decision of o breaks the rules of a Consume
// (enforced: nothing granted past a limit, every denial justified by the
// figures it reports), or "" if it does not.
func justify(o outcome) string {
	d, a := o.d, o.use.Amount
	if o.err != nil {
		return ""
	}
	if d.Amount != a || d.Subject != o.use.Subject || d.Action != o.use.Action {
		return fmt.Sprintf("Decision {Subject %q, Action %q, Amount %d} for a use {%q, %q, %d}", d.Subject, d.Action, d.Amount, o.use.Subject, o.use.Action, a)
	}
	if d.Allowed {
		return justifyAllowed(d, a)
	}
	return justifyDenied(d, a)
}

// justifyAllowed is justify for a decision d that allows a use of a: it
// returns why d breaks the rules, or "".
func justifyAllowed(d quota.Decision, a int64) string {
	if d.Reason != quota.ReasonNone {
		return fmt.Sprintf("allowed %d with Reason %q", a, d.Reason)
	}
	for _, ls := range d.Limits.All() {
		if ls.Used < 0 || (ls.Limit != quota.Unlimited && ls.Used > ls.Limit) {
			return fmt.Sprintf("allowed %d, leaving %d used of a %s limit of %d", a, ls.Used, ls.Period, ls.Limit)
		}
	}
	return ""
}

// justifyDenied is justify for a decision d that denies a use of a: it
// returns why d breaks the rules (a record, or a reason its figures do
// not bear out), or "".
func justifyDenied(d quota.Decision, a int64) string {
	if d.RecordID != 0 {
		return fmt.Sprintf("denied %d with RecordID %d", a, d.RecordID)
	}
	switch d.Reason {
	case quota.ReasonLimit:
		if a <= 0 || d.Limit == quota.Unlimited || d.Used+a <= d.Limit {
			return fmt.Sprintf("denied %d for %s with %d used of %d", a, d.Reason, d.Used, d.Limit)
		}
	case quota.ReasonBelowZero:
		if a >= 0 || d.Used+a >= 0 {
			return fmt.Sprintf("denied %d for %s with %d used", a, d.Reason, d.Used)
		}
	case quota.ReasonPerUse:
		if d.MaxPerUse <= 0 || a <= d.MaxPerUse {
			return fmt.Sprintf("denied %d for %s with a cap of %d", a, d.Reason, d.MaxPerUse)
		}
	default:
		return fmt.Sprintf("denied %d with Reason %q", a, d.Reason)
	}
	return ""
}

// reportRace fails t on errors and unjustified decisions of a race, at
// most a few of each.
func reportRace(t testing.TB, outs []outcome, c counts) {
	t.Helper()
	if c.errors > 0 {
		t.Errorf("%d calls failed; the first: %v; want nil errors (a denial is not an error)", c.errors, c.firstErr)
	}
	n := 0
	for _, p := range c.problems {
		if n++; n <= 5 {
			t.Errorf("%s", p)
		}
	}
	for _, o := range outs {
		if p := justify(o); p != "" {
			if n++; n <= 5 {
				t.Errorf("%s", p)
			}
		}
	}
	if n > 5 {
		t.Errorf("... and %d more bad decisions", n-5)
	}
}
