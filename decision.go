package quota

import (
	"encoding/json"
	"fmt"
	"iter"
	"slices"
	"strconv"
	"time"
)

// Thresholds are the percentages of a limit at which the warning, critical
// and exceeded levels begin.
type Thresholds struct {
	Warning  float64 // default 80
	Critical float64 // default 90
	Exceeded float64 // default 100
}

// DefaultThresholds are the thresholds used when Config.Thresholds is zero.
var DefaultThresholds = Thresholds{Warning: 80, Critical: 90, Exceeded: 100}

// Level grades how much of a limit is used.
type Level uint8

// The levels, in increasing order.
const (
	LevelOK       Level = iota // below the warning threshold
	LevelWarning               // at or above 80 % by default
	LevelCritical              // at or above 90 % by default
	LevelExceeded              // at or above 100 % by default
)

var levelNames = [...]string{"ok", "warning", "critical", "exceeded"}

// String returns "ok", "warning", "critical" or "exceeded".
func (l Level) String() string {
	if int(l) < len(levelNames) {
		return levelNames[l]
	}
	return "Level(" + strconv.Itoa(int(l)) + ")"
}

// MarshalText implements encoding.TextMarshaler.
func (l Level) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (l *Level) UnmarshalText(b []byte) error {
	for i, n := range levelNames {
		if string(b) == n {
			*l = Level(i)
			return nil
		}
	}
	return errorf("unknown level %q", b)
}

// Reason says why a use was refused.
type Reason string

// The reasons for a denial.
const (
	// ReasonNone: the use is allowed.
	ReasonNone Reason = ""
	// ReasonLimit: the use would take a limit past its Max.
	ReasonLimit Reason = "limit_exceeded"
	// ReasonPerUse: the use is larger than a limit's MaxPerUse.
	ReasonPerUse Reason = "per_use_cap"
	// ReasonBelowZero: a release larger than what is allocated.
	ReasonBelowZero Reason = "below_zero"
	// ReasonFeature: the plan lacks a feature that Use.Features
	// requires; Decision.Feature names it.
	ReasonFeature Reason = "feature_not_in_plan"
)

// LimitStatus is the state of one limit of a subject's action.
type LimitStatus struct {
	// Period is the limit's period; PeriodNone for an allocation.
	Period Period `json:"period"`
	// Limit is the limit's Max; Unlimited (-1) for none.
	Limit int64 `json:"limit"`
	// MaxPerUse is the limit's per-use cap; 0 for none.
	MaxPerUse int64 `json:"max_per_use,omitempty"`
	// Used is what is counted in the current window, reservations
	// included.
	Used int64 `json:"used"`
	// Remaining is Limit - Used, at least 0; Unlimited for an unlimited
	// limit.
	Remaining int64 `json:"remaining"`
	// Percent is Used as a percentage of Limit; 0 for an unlimited limit,
	// 100 for a limit of 0.
	Percent float64 `json:"percent"`
	// Level grades Percent against the thresholds.
	Level Level `json:"level"`
	// PeriodStart is the start of the current window; zero for an
	// allocation.
	PeriodStart time.Time `json:"period_start,omitzero"`
	// ResetAt is when the next window starts; zero for an allocation.
	ResetAt time.Time `json:"reset_at,omitzero"`
}

// LimitStatuses is the status of every limit of an action, in period
// order (an allocation limit alone): Decision.Limits. It holds at most
// MaxLimits of them in place, not in a slice, so that a Decision costs
// no allocation; it is a plain value, copied with its Decision. The zero
// value holds none. Its JSON form is that of a []LimitStatus: an array,
// [] for none. Build one with LimitStatusesOf.
type LimitStatuses struct {
	n  int
	st [MaxLimits]LimitStatus
}

// LimitStatusesOf returns the statuses st, in their order. It panics if
// there are more than MaxLimits.
func LimitStatusesOf(st ...LimitStatus) LimitStatuses {
	if len(st) > MaxLimits {
		panic("quota: LimitStatusesOf: " + strconv.Itoa(len(st)) + " statuses, more than MaxLimits")
	}
	var s LimitStatuses
	s.n = copy(s.st[:], st)
	return s
}

// Len returns the number of statuses.
func (s LimitStatuses) Len() int { return s.n }

// At returns the status i. It panics if i is not in [0, Len()).
func (s LimitStatuses) At(i int) LimitStatus { return s.st[:s.n][i] }

// All returns an iterator over the statuses and their indexes, in order:
//
//	for i, st := range d.Limits.All() { ... }
func (s LimitStatuses) All() iter.Seq2[int, LimitStatus] {
	return func(yield func(int, LimitStatus) bool) {
		for i, st := range s.st[:s.n] {
			if !yield(i, st) {
				return
			}
		}
	}
}

// AsSlice returns the statuses in a new slice, which is the caller's.
func (s LimitStatuses) AsSlice() []LimitStatus { return slices.Clone(s.st[:s.n]) }

// Equal reports whether s and o hold the same statuses, their times
// compared as instants (time.Time.Equal).
func (s LimitStatuses) Equal(o LimitStatuses) bool {
	return slices.EqualFunc(s.st[:s.n], o.st[:o.n], func(a, b LimitStatus) bool {
		if !a.PeriodStart.Equal(b.PeriodStart) || !a.ResetAt.Equal(b.ResetAt) {
			return false
		}
		a.PeriodStart, a.ResetAt, b.PeriodStart, b.ResetAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
		return a == b
	})
}

// String formats the statuses as fmt formats a []LimitStatus.
func (s LimitStatuses) String() string { return fmt.Sprint(s.st[:s.n]) }

// MarshalJSON implements json.Marshaler: an array of LimitStatus.
func (s LimitStatuses) MarshalJSON() ([]byte, error) { return json.Marshal(s.st[:s.n]) }

// UnmarshalJSON implements json.Unmarshaler: an array of at most
// MaxLimits LimitStatus, or null for none.
func (s *LimitStatuses) UnmarshalJSON(b []byte) error {
	var st []LimitStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return err
	}
	if len(st) > MaxLimits {
		return errorf("%d limit statuses, more than %d", len(st), MaxLimits)
	}
	*s = LimitStatusesOf(st...)
	return nil
}

// Decision is the answer to a use. Its embedded LimitStatus describes the
// limit that decided: the one that refused a denied use, or the most used
// one of an allowed use. Limits holds every limit of the action.
type Decision struct {
	// Allowed reports whether the use is (or would be, for Check)
	// granted. A denial is not an error.
	Allowed bool `json:"allowed"`
	// Reason says why a use was denied; ReasonNone when allowed.
	Reason  Reason `json:"reason,omitempty"`
	Subject string `json:"subject"`
	Action  string `json:"action"`
	Plan    string `json:"plan"`
	Amount  int64  `json:"amount"`
	LimitStatus
	Limits LimitStatuses `json:"limits"`
	// RecordID is the ledger record written, when one was.
	RecordID int64 `json:"record_id,omitempty"`
	// Replayed reports that the use repeated an idempotency key: the
	// decision is that of the first use, and nothing was written.
	Replayed bool `json:"replayed,omitempty"`
	// Feature is the required feature that the plan lacks, with
	// ReasonFeature. Such a decision holds no limit figures.
	Feature string `json:"feature,omitempty"`
}

// Err returns nil for an allowed use and an *ExceededError matching
// ErrExceeded for a denied one, for code that prefers the error form.
func (d Decision) Err() error {
	if d.Allowed {
		return nil
	}
	return &ExceededError{Decision: d}
}

// RetryAfter returns how long after now the decisive limit resets, rounded
// up to whole seconds; 0 when the decision is allowed or its limit never
// resets.
func (d Decision) RetryAfter(now time.Time) time.Duration {
	if d.Allowed || d.ResetAt.IsZero() {
		return 0
	}
	wait := d.ResetAt.Sub(now)
	if wait <= 0 {
		return 0
	}
	return (wait + time.Second - 1).Truncate(time.Second)
}

// denyPerUse turns d into a denial by the per-use cap of its limit i.
func denyPerUse(d *Decision, i int) {
	d.Allowed, d.Reason = false, ReasonPerUse
	d.LimitStatus = d.Limits.st[i]
}

// decide fills d, a zero Decision, with the decision for p from the
// counters. With evaluate set the counters do not include the use, and
// the decision says whether it fits; otherwise they include it and the
// decision allows it. It sets d field by field: a Decision is large, and
// a composite literal would be built aside and copied.
func (q *Quota) decide(d *Decision, p *prepared, cs []Counter, evaluate bool) {
	d.Allowed = true
	d.Subject, d.Action, d.Plan, d.Amount = p.u.Subject, p.u.Action, p.sub.plan.Name, p.u.Amount
	d.Limits.n = len(p.limits)
	decisive := -1
	for i, l := range p.limits {
		c := &cs[i]
		st := &d.Limits.st[i]
		q.setStatus(st, l, c.Used+c.Held, &p.counters[i])
		if !evaluate {
			continue
		}
		// The store's admission rule; an overflow refuses too.
		ok, err := admits(&p.counters[i], c.Used, c.Held, p.u.Amount, true)
		if (!ok || err != nil) && decisive < 0 {
			decisive = i
		}
	}
	if decisive >= 0 {
		d.Allowed = false
		d.Reason = ReasonLimit
		if p.u.Amount < 0 {
			d.Reason = ReasonBelowZero
		}
	} else {
		decisive = mostUsed(d.Limits.st[:d.Limits.n])
	}
	d.LimitStatus = d.Limits.st[decisive]
}

// mostUsed returns the index of the first of sts with the highest
// Percent; 0 for none.
func mostUsed(sts []LimitStatus) int {
	best := 0
	for i := range sts {
		if sts[i].Percent > sts[best].Percent {
			best = i
		}
	}
	return best
}

// setStatus sets every field of st: the status of limit l with used
// counted, in the window of c.
func (q *Quota) setStatus(st *LimitStatus, l Limit, used int64, c *CounterOp) {
	st.Period, st.Limit, st.MaxPerUse, st.Used = l.Period, l.Max, l.MaxPerUse, used
	st.PeriodStart, st.ResetAt = c.Start, c.End
	switch {
	case l.IsUnlimited():
		st.Remaining, st.Percent = Unlimited, 0
	case l.Max == 0:
		st.Remaining, st.Percent = 0, 100
	default:
		st.Remaining = max(0, l.Max-used)
		st.Percent = float64(used) * 100 / float64(l.Max)
	}
	st.Level = q.level(st.Percent)
}

func (q *Quota) level(pct float64) Level {
	switch t := q.levels; {
	case pct >= t.Exceeded:
		return LevelExceeded
	case pct >= t.Critical:
		return LevelCritical
	case pct >= t.Warning:
		return LevelWarning
	}
	return LevelOK
}

// denyFeature is the decision for a use whose plan lacks p.missing.
func denyFeature(p *prepared) Decision {
	return Decision{
		Reason:  ReasonFeature,
		Subject: p.u.Subject,
		Action:  p.u.Action,
		Plan:    p.sub.plan.Name,
		Amount:  p.u.Amount,
		Feature: p.missing,
	}
}

// replayed fills d with the first outcome of a replayed use: its counters,
// in its windows, whatever the plan in force now (Plan names it).
func (q *Quota) replayed(d *Decision, p *prepared, res *ApplyResult) {
	*d = Decision{
		Allowed:  true,
		Replayed: true,
		Subject:  p.u.Subject,
		Action:   p.u.Action,
		Plan:     p.sub.plan.Name,
		Amount:   p.u.Amount,
		RecordID: res.RecordID,
	}
	d.Limits.n = len(res.Counters) // at most MaxLimits: see applyHold
	for i, c := range res.Counters {
		l := Limit{Max: c.Max, Period: c.Period}
		if i < len(p.limits) && p.limits[i].Period == c.Period && p.limits[i].Max == c.Max {
			l.MaxPerUse = p.limits[i].MaxPerUse
		}
		co := CounterOp{CounterKey: c.CounterKey, End: c.End}
		q.setStatus(&d.Limits.st[i], l, c.Used+c.Held, &co)
	}
	if d.Limits.n > 0 {
		d.LimitStatus = d.Limits.st[mostUsed(d.Limits.st[:d.Limits.n])]
	}
}
