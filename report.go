package quota

import (
	"context"
	"time"
)

// Report is a subject's usage of every action of its plan at one instant,
// for a dashboard.
type Report struct {
	Subject string    `json:"subject"`
	Plan    string    `json:"plan"`
	At      time.Time `json:"at"`
	// TimeZone is the IANA zone in which the subject's days, weeks and
	// months begin.
	TimeZone string        `json:"time_zone"`
	Actions  []ActionUsage `json:"actions"`
	Features []string      `json:"features"`
}

// ActionUsage is the usage of one action. Its embedded LimitStatus is the
// most used of Limits.
type ActionUsage struct {
	Action string `json:"action"`
	LimitStatus
	Limits []LimitStatus `json:"limits"`
	// Previous holds, for each of Limits in the same order, the window
	// before the current one and what was used in it: "last month" on a
	// dashboard. It is the zero WindowUsage for an allocation.
	Previous []WindowUsage `json:"previous"`
}

// WindowUsage is what was used in one window of a limit.
type WindowUsage struct {
	Start time.Time `json:"start,omitzero"`
	End   time.Time `json:"end,omitzero"`
	Used  int64     `json:"used"`
}

// Usage reports subject's usage of every action its plan (and its
// overrides) limits, in action order, with the plan's features.
func (q *Quota) Usage(ctx context.Context, subject string) (_ Report, err error) {
	if q.obs != nil {
		var end func(error)
		ctx, end = q.startCall(ctx, CallEvent{Method: MethodUsage, Subject: subject})
		defer func() { end(err) }()
	}
	if err := q.begin(ctx); err != nil {
		return Report{}, errorf("usage: %w", err)
	}
	if err := checkName(subject, ErrInvalidSubject); err != nil {
		return Report{}, errorf("usage: %w", err)
	}
	now := q.now()
	s, err := q.resolve(ctx, subject, now)
	if err != nil {
		return Report{}, errorf("usage %q: %w", subject, err)
	}
	actions := s.actions()
	// One read for the current windows and, after them, the previous
	// ones.
	var keys []CounterKey
	var ops []CounterOp
	for _, a := range actions {
		for _, c := range s.counters(a, s.limits(a), now) {
			ops = append(ops, c)
			keys = append(keys, c.CounterKey)
		}
	}
	prev := make([]CounterOp, len(ops))
	for i, c := range ops {
		if c.Period == PeriodNone {
			continue
		}
		start, end := s.windows.window(c.Period, c.Start.Add(-time.Nanosecond), s.sub.Anchor, s.loc)
		prev[i] = CounterOp{CounterKey: CounterKey{Subject: c.Subject, Action: c.Action, Period: c.Period, Start: start}, End: end}
		keys = append(keys, prev[i].CounterKey)
	}
	cs, err := q.store.Counters(ctx, keys, now)
	if err != nil {
		return Report{}, errorf("usage %q: %w", subject, err)
	}
	if len(cs) != len(keys) {
		return Report{}, errorf("usage %q: store returned %d counters for %d keys", subject, len(cs), len(keys))
	}
	r := Report{Subject: subject, Plan: s.plan.Name, At: now.UTC(), TimeZone: s.loc.String(), Features: append([]string{}, s.plan.Features...)}
	i, k := 0, len(ops)
	for _, a := range actions {
		limits := s.limits(a)
		au := ActionUsage{Action: a, Limits: make([]LimitStatus, len(limits)), Previous: make([]WindowUsage, len(limits))}
		best := 0
		for j, l := range limits {
			q.setStatus(&au.Limits[j], l, cs[i].Used+cs[i].Held, &ops[i])
			if au.Limits[j].Percent > au.Limits[best].Percent {
				best = j
			}
			if l.Period != PeriodNone {
				au.Previous[j] = WindowUsage{Start: prev[i].Start, End: prev[i].End, Used: cs[k].Used}
				k++
			}
			i++
		}
		au.LimitStatus = au.Limits[best]
		r.Actions = append(r.Actions, au)
	}
	return r, nil
}
