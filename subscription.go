package quota

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"sync/atomic"
	"time"
)

// Subscription binds a subject to a plan.
type Subscription struct {
	// Subject is who is subscribed. Required.
	Subject string `json:"subject"`
	// Plan names a plan of the catalog. Required.
	Plan string `json:"plan"`
	// Anchor is the billing anchor: monthly and yearly windows begin on
	// its day of month (clamped to short months) at midnight in
	// TimeZone. Default: the anchor of the subject's current
	// subscription, so that a plan change keeps the billing month; for a
	// new subject, the time of Subscribe.
	Anchor time.Time `json:"anchor"`
	// TimeZone is the IANA name of the zone in which the subject's days,
	// weeks and months begin. Default "UTC".
	TimeZone string `json:"time_zone,omitempty"`
	// Overrides replaces the plan's limits of an action for this subject
	// alone.
	Overrides map[string][]Limit `json:"overrides,omitempty"`
	// NextPlan, when set, replaces Plan from NextPlanAt on: a change
	// scheduled by SchedulePlan.
	NextPlan   string    `json:"next_plan,omitempty"`
	NextPlanAt time.Time `json:"next_plan_at,omitzero"`
	// Version identifies this state of the subscription in its store.
	// The Quota sets a new random positive Version whenever it writes a
	// subscription (Subscribe, SchedulePlan); a Version passed to
	// Subscribe is ignored. A store that is not Versioned returns 0. A
	// subscription written to the store directly needs a new Version,
	// or 0 (see Versioned).
	// Version is not part of the JSON form: it belongs to the store's
	// copy.
	Version int64 `json:"-"`
}

func (q *Quota) location(name string) (*time.Location, error) {
	if name == "" || name == "UTC" {
		return time.UTC, nil
	}
	if l, ok := q.locs.Load(name); ok {
		return l.(*time.Location), nil
	}
	if err := checkName(name, ErrInvalidSubscription); err != nil {
		return nil, err
	}
	l, err := time.LoadLocation(name)
	if err != nil {
		return nil, fmt.Errorf("%w: time zone %q: %v", ErrInvalidSubscription, name, err)
	}
	q.locs.Store(name, l)
	return l, nil
}

// Subscribe creates or replaces the subscription of s.Subject. It takes
// effect at once, for every Quota sharing the store (see the package
// documentation, Plan changes), and clears any scheduled plan change: an
// upgrade counts the usage already recorded in the current windows
// against the new limits. To downgrade at the end of the paid period
// instead, use SchedulePlan.
func (q *Quota) Subscribe(ctx context.Context, s Subscription) (err error) {
	if q.obs != nil {
		var end func(error)
		ctx, end = q.startCall(ctx, CallEvent{Method: MethodSubscribe, Subject: s.Subject})
		defer func() { end(err) }()
	}
	if err := q.begin(ctx); err != nil {
		return errorf("subscribe: %w", err)
	}
	if err := checkName(s.Subject, ErrInvalidSubject); err != nil {
		return errorf("subscribe: %w", err)
	}
	if q.plans[s.Plan] == nil {
		return errorf("subscribe %q: plan %q: %w", s.Subject, s.Plan, ErrUnknownPlan)
	}
	if _, err := q.location(s.TimeZone); err != nil {
		return errorf("subscribe %q: %w", s.Subject, err)
	}
	if s.Anchor.IsZero() {
		// Keep the billing anchor of a plan change; start a new
		// subscription now.
		old, err := q.store.GetSubscription(ctx, s.Subject)
		switch {
		case err == nil:
			s.Anchor = old.Anchor
		case errors.Is(err, ErrNoSubscription):
			s.Anchor = q.now()
		default:
			return errorf("subscribe %q: %w", s.Subject, err)
		}
	}
	s.Anchor = s.Anchor.UTC()
	if len(s.Overrides) > 0 {
		ov := make(map[string][]Limit, len(s.Overrides))
		for a, ls := range s.Overrides {
			if !q.actions[a] {
				return errorf("subscribe %q: override of %q: %w", s.Subject, a, ErrUnknownAction)
			}
			cp, perr := validateLimits(a, ls)
			if perr != nil {
				return errorf("subscribe %q: override: %w: %w", s.Subject, ErrInvalidSubscription, perr)
			}
			ov[a] = cp
		}
		s.Overrides = ov
	} else {
		s.Overrides = nil
	}
	s.NextPlan, s.NextPlanAt = "", time.Time{}
	if err := q.putSubscription(ctx, s); err != nil {
		return errorf("subscribe %q: %w", s.Subject, err)
	}
	return nil
}

// SchedulePlan schedules subject's change to plan at the start of its next
// billing month, so that a downgrade keeps the allowance paid for until
// then. It returns when the change takes effect. A later Subscribe
// replaces the schedule.
func (q *Quota) SchedulePlan(ctx context.Context, subject, plan string) (_ time.Time, err error) {
	if q.obs != nil {
		var end func(error)
		ctx, end = q.startCall(ctx, CallEvent{Method: MethodSchedulePlan, Subject: subject})
		defer func() { end(err) }()
	}
	if err := q.begin(ctx); err != nil {
		return time.Time{}, errorf("schedule: %w", err)
	}
	if err := checkName(subject, ErrInvalidSubject); err != nil {
		return time.Time{}, errorf("schedule plan: %w", err)
	}
	if q.plans[plan] == nil {
		return time.Time{}, errorf("schedule plan %q for %q: %w", plan, subject, ErrUnknownPlan)
	}
	s, err := q.store.GetSubscription(ctx, subject)
	if err != nil {
		return time.Time{}, errorf("schedule plan for %q: %w", subject, err)
	}
	loc, err := q.location(s.TimeZone)
	if err != nil {
		return time.Time{}, errorf("schedule plan for %q: %w", subject, err)
	}
	now := q.now()
	if s.NextPlan != "" && !now.Before(s.NextPlanAt) {
		s.Plan = s.NextPlan // an earlier change already took effect
	}
	_, at := window(PeriodMonth, now, s.Anchor, loc)
	s.NextPlan, s.NextPlanAt = plan, at
	if err := q.putSubscription(ctx, s); err != nil {
		return time.Time{}, errorf("schedule plan for %q: %w", subject, err)
	}
	return at, nil
}

// putSubscription writes s with a new Version, and drops the one cached:
// every subscription the Quota writes goes through it.
func (q *Quota) putSubscription(ctx context.Context, s Subscription) error {
	s.Version = newVersion()
	err := q.store.PutSubscription(ctx, s)
	q.forget(s.Subject) // also after an error: the write may have happened
	return err
}

// newVersion returns a random Subscription.Version, from 1 to MaxInt64.
func newVersion() int64 { return rand.Int64N(math.MaxInt64) + 1 }

// Subscription returns the subscription of subject as stored, or an error
// matching ErrNoSubscription.
func (q *Quota) Subscription(ctx context.Context, subject string) (_ Subscription, err error) {
	if q.obs != nil {
		var end func(error)
		ctx, end = q.startCall(ctx, CallEvent{Method: MethodSubscription, Subject: subject})
		defer func() { end(err) }()
	}
	if err := q.begin(ctx); err != nil {
		return Subscription{}, errorf("subscription: %w", err)
	}
	if err := checkName(subject, ErrInvalidSubject); err != nil {
		return Subscription{}, errorf("subscription: %w", err)
	}
	s, err := q.store.GetSubscription(ctx, subject)
	if err != nil {
		return Subscription{}, errorf("subscription %q: %w", subject, err)
	}
	return s, nil
}

// subscriber is a subscription resolved at one instant.
type subscriber struct {
	sub     Subscription
	plan    *Plan
	loc     *time.Location
	windows *windowCache
	q       *Quota
	// version is the Op.Version of a use judged against sub: its
	// Version, or VersionNone for the default plan; 0 over a store that
	// is not Versioned.
	version int64
}

// windowCache remembers recent windows, since computing one takes several
// calendar conversions and most uses fall in a window computed before. It
// is a direct-mapped table of immutable entries, safe for concurrent use.
type windowCache struct {
	slots [256]atomic.Pointer[cachedWindow]
}

type cachedWindow struct {
	period     Period
	anchor     int64 // Unix nanoseconds; 0 for periods that ignore it
	loc        *time.Location
	start, end time.Time
}

func (c *windowCache) window(p Period, t, anchor time.Time, loc *time.Location) (start, end time.Time) {
	if p == PeriodNone {
		return time.Time{}, time.Time{}
	}
	var a int64
	if p >= PeriodMonth {
		a = anchor.UnixNano()
	}
	h := uint64(a)*0x9E3779B97F4A7C15 ^ uint64(p)*0xC2B2AE3D27D4EB4F
	slot := &c.slots[h>>56]
	if w := slot.Load(); w != nil && w.period == p && w.anchor == a && w.loc == loc && !t.Before(w.start) && t.Before(w.end) {
		return w.start, w.end
	}
	start, end = window(p, t, anchor, loc)
	slot.Store(&cachedWindow{period: p, anchor: a, loc: loc, start: start, end: end})
	return start, end
}

// resolve reads the subscription of subject and resolves it at now.
func (q *Quota) resolve(ctx context.Context, subject string, now time.Time) (subscriber, error) {
	s, err := q.store.GetSubscription(ctx, subject)
	version := s.Version
	if errors.Is(err, ErrNoSubscription) && q.def != "" {
		s, err = Subscription{Subject: subject, Plan: q.def, Anchor: time.Unix(0, 0).UTC()}, nil
		version = VersionNone
	}
	if err != nil {
		return subscriber{}, err
	}
	if !q.versioned {
		version = 0
	}
	name := s.Plan
	if s.NextPlan != "" && !now.Before(s.NextPlanAt) {
		name = s.NextPlan
	}
	p := q.plans[name]
	if p == nil {
		// The catalog no longer defines the stored plan.
		return subscriber{}, fmt.Errorf("plan %q of %q: %w", name, subject, ErrUnknownPlan)
	}
	loc, err := q.location(s.TimeZone)
	if err != nil {
		return subscriber{}, err
	}
	return subscriber{sub: s, plan: p, loc: loc, windows: &q.windows, q: q, version: version}, nil
}

// blocked stands for an action that the catalog knows and a plan omits.
var blocked = []Limit{Total(0)}

func (s *subscriber) limits(action string) []Limit {
	if ls, ok := s.sub.Overrides[action]; ok {
		return ls
	}
	if ls, ok := s.plan.Limits[action]; ok {
		return ls
	}
	return blocked
}

// actions returns the actions of the plan and the overrides, in order.
func (s *subscriber) actions() []string {
	actions := s.plan.Actions()
	for a := range s.sub.Overrides {
		if _, ok := s.plan.Limits[a]; !ok {
			actions = append(actions, a)
		}
	}
	sort.Strings(actions)
	return actions
}

func (s *subscriber) counters(action string, limits []Limit, now time.Time) []CounterOp {
	return s.appendCounters(make([]CounterOp, 0, len(limits)), action, limits, now)
}

// appendCounters appends to dst the counters that limits charge at now.
// Limits are sorted by period, so the counters come out sorted by
// CounterKey.Less.
func (s *subscriber) appendCounters(dst []CounterOp, action string, limits []Limit, now time.Time) []CounterOp {
	for _, l := range limits {
		// In place, field by field: a CounterOp is over 100 bytes.
		dst = append(dst, CounterOp{})
		c := &dst[len(dst)-1]
		c.Subject, c.Action, c.Period, c.Max = s.sub.Subject, action, l.Period, l.Max
		c.Start, c.End = s.windows.window(l.Period, now, s.sub.Anchor, s.loc)
	}
	if s.q.notifier != nil {
		for i := len(dst) - len(limits); i < len(dst); i++ {
			dst[i].Marks = s.q.marks(dst[i].Max)
		}
	}
	return dst
}

// HasFeature reports whether the plan in force for subject grants feature.
func (q *Quota) HasFeature(ctx context.Context, subject, feature string) (_ bool, err error) {
	if q.obs != nil {
		var end func(error)
		ctx, end = q.startCall(ctx, CallEvent{Method: MethodHasFeature, Subject: subject})
		defer func() { end(err) }()
	}
	if err := q.begin(ctx); err != nil {
		return false, errorf("has: %w", err)
	}
	if err := checkName(subject, ErrInvalidSubject); err != nil {
		return false, errorf("has feature: %w", err)
	}
	if err := checkName(feature, ErrInvalidName); err != nil {
		return false, errorf("has feature: feature: %w", err)
	}
	s, err := q.resolve(ctx, subject, q.now())
	if err != nil {
		return false, errorf("has feature %q: %w", subject, err)
	}
	return s.plan.HasFeature(feature), nil
}

// Limits returns the limits in force now for subject's action, in period
// order (an allocation first): the subject's override of the action if
// it has one, else those of its plan (the plan that SchedulePlan
// scheduled, once it has taken effect; Config.DefaultPlan for a subject
// with no subscription). A plan that omits an action of the catalog
// gives [Total(0)], the limit that Check and Consume apply to it. It
// reads the subscription once and no counter: a chunked upload learns
// its per-use cap (MaxPerUse) and its allowance before it starts,
// without a Check. The slice is the caller's. An action that no plan of
// the catalog limits is an error matching ErrUnknownAction; a subject
// with no plan in force, ErrNoSubscription or ErrUnknownPlan.
func (q *Quota) Limits(ctx context.Context, subject, action string) (_ []Limit, err error) {
	if q.obs != nil {
		var end func(error)
		ctx, end = q.startCall(ctx, CallEvent{Method: MethodLimits, Subject: subject, Action: action})
		defer func() { end(err) }()
	}
	if err := q.begin(ctx); err != nil {
		return nil, errorf("limits: %w", err)
	}
	if err := checkName(subject, ErrInvalidSubject); err != nil {
		return nil, errorf("limits: %w", err)
	}
	if err := checkName(action, ErrInvalidAction); err != nil {
		return nil, errorf("limits: %w", err)
	}
	if !q.actions[action] {
		return nil, errorf("limits of %q: %q: %w", subject, action, ErrUnknownAction)
	}
	s, err := q.resolve(ctx, subject, q.now())
	if err != nil {
		return nil, errorf("limits of %q: %w", subject, err)
	}
	return append([]Limit(nil), s.limits(action)...), nil
}
