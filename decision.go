package quota

import (
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
	Limits []LimitStatus `json:"limits"`
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

func denyPerUse(d Decision, i int) Decision {
	d.Allowed, d.Reason = false, ReasonPerUse
	d.LimitStatus = d.Limits[i]
	return d
}

// decide fills d with the decision for p from the counters. With evaluate
// set the counters do not include the use, and the decision says whether
// it fits; otherwise they include it and the decision allows it.
func (q *Quota) decide(d *Decision, p *prepared, cs []Counter, evaluate bool) {
	*d = Decision{
		Allowed: true,
		Subject: p.u.Subject,
		Action:  p.u.Action,
		Plan:    p.sub.plan.Name,
		Amount:  p.u.Amount,
		Limits:  make([]LimitStatus, len(p.limits)),
	}
	decisive := -1
	for i, l := range p.limits {
		c := &cs[i]
		st := &d.Limits[i]
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
		decisive = 0
		for i := range d.Limits {
			if d.Limits[i].Percent > d.Limits[decisive].Percent {
				decisive = i
			}
		}
	}
	d.LimitStatus = d.Limits[decisive]
}

func (q *Quota) setStatus(st *LimitStatus, l Limit, used int64, c *CounterOp) {
	*st = LimitStatus{
		Period:      l.Period,
		Limit:       l.Max,
		MaxPerUse:   l.MaxPerUse,
		Used:        used,
		PeriodStart: c.Start,
		ResetAt:     c.End,
	}
	switch {
	case l.IsUnlimited():
		st.Remaining = Unlimited
	case l.Max == 0:
		st.Percent = 100
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
		Limits:  []LimitStatus{},
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
		Limits:   make([]LimitStatus, len(res.Counters)),
	}
	best := 0
	for i, c := range res.Counters {
		l := Limit{Max: c.Max, Period: c.Period}
		if i < len(p.limits) && p.limits[i].Period == c.Period && p.limits[i].Max == c.Max {
			l.MaxPerUse = p.limits[i].MaxPerUse
		}
		co := CounterOp{CounterKey: c.CounterKey, End: c.End}
		q.setStatus(&d.Limits[i], l, c.Used+c.Held, &co)
		if d.Limits[i].Percent > d.Limits[best].Percent {
			best = i
		}
	}
	if len(d.Limits) > 0 {
		d.LimitStatus = d.Limits[best]
	}
}
