package quota

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Checker answers whether a use would be allowed now. It never writes.
type Checker interface {
	Check(ctx context.Context, u Use) (Decision, error)
}

// Tracker records uses. Track records a use that already happened, even
// past a limit; Consume checks and records in one atomic step and refuses a
// use past a limit.
type Tracker interface {
	Track(ctx context.Context, u Use) (Decision, error)
	Consume(ctx context.Context, u Use) (Decision, error)
}

var (
	_ Checker = (*Quota)(nil)
	_ Tracker = (*Quota)(nil)
)

// DefaultReservationTTL is how long a reservation holds its amount when
// Config.ReservationTTL is zero.
const DefaultReservationTTL = 10 * time.Minute

// Config configures a Quota. The zero value of each field selects its
// default.
type Config struct {
	// Plans is the catalog of plans. Required: New fails on an empty or
	// invalid catalog.
	Plans []Plan

	// DefaultPlan is the plan of subjects that have no subscription, with
	// calendar months in UTC. Default "": such subjects get an error
	// matching ErrNoSubscription.
	DefaultPlan string

	// Now returns the current time. Default time.Now.
	Now func() time.Time

	// ReservationTTL is how long a reservation holds its amount before it
	// expires and stops counting. Default DefaultReservationTTL.
	ReservationTTL time.Duration

	// Thresholds are the percentages at which levels begin. Default
	// DefaultThresholds.
	Thresholds Thresholds

	// Notify, when set, is called once per subject, limit, window and
	// level, when a use (Consume, Track or Reserve) first brings the
	// limit's usage, reservations included, to the level's threshold.
	// The mark is written with the use, so that exactly one use crosses
	// each threshold, whatever the number of goroutines and processes
	// sharing the store. Notify runs on a goroutine of the Quota, one
	// call at a time, never on the caller's: a use only queues it, and
	// never waits for or fails because of it. Close delivers what is
	// queued before it returns. Notifications still queued when the
	// process dies are lost. Default nil: no notifications.
	Notify func(ctx context.Context, n Notification) error

	// NotifyTimeout bounds each call of Notify: its context expires
	// then. Default DefaultNotifyTimeout.
	NotifyTimeout time.Duration

	// OnError receives the errors Notify returns and its panics.
	// Default: logged with slog.Default at level Error.
	OnError func(error)
}

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
	return fmt.Errorf("quota: unknown level %q", b)
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
)

// Use is one use of an action by a subject.
type Use struct {
	// Subject is who uses: a user, an org, an API key. Required.
	Subject string
	// Action is what is used: "diagram.upload". Required.
	Action string
	// Amount is how much: 1 for one upload, bytes for storage. Required;
	// negative amounts release an allocation (Track and Consume only).
	Amount int64
	// ResourceID optionally names what was used: a diagram's id.
	ResourceID string
	// Metadata is kept with the record. It must encode as a JSON object
	// of at most MaxMetadataLen bytes.
	Metadata map[string]any
	// Key is an optional idempotency key, unique per subject: a use
	// repeated with the same key and payload counts once and returns the
	// first outcome; with another payload it fails with a *ConflictError.
	Key string
}

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
}

// Quota enforces a catalog of plans over a Store. It is safe for concurrent
// use. Build one with New.
type Quota struct {
	store   Store
	plans   map[string]*Plan
	actions map[string]bool
	def     string
	now     func() time.Time
	ttl     time.Duration
	levels  Thresholds
	locs    sync.Map // time zone name -> *time.Location
	windows windowCache

	notifier  *notifier // nil without Config.Notify
	closeOnce sync.Once
	closed    atomic.Bool
}

// New returns a Quota enforcing cfg.Plans over store. It does no I/O.
func New(store Store, cfg Config) (*Quota, error) {
	if store == nil {
		return nil, ErrNilStore
	}
	if len(cfg.Plans) == 0 {
		return nil, fmt.Errorf("quota: new: %w: no plans", ErrInvalidPlan)
	}
	plans, err := validatePlans(cfg.Plans)
	if err != nil {
		return nil, err
	}
	q := &Quota{
		store:   store,
		plans:   plans,
		actions: make(map[string]bool),
		def:     cfg.DefaultPlan,
		now:     cfg.Now,
		ttl:     cfg.ReservationTTL,
		levels:  cfg.Thresholds,
	}
	for _, p := range plans {
		for a := range p.Limits {
			q.actions[a] = true
		}
	}
	if q.def != "" && plans[q.def] == nil {
		return nil, fmt.Errorf("quota: new: default plan %q: %w", q.def, ErrUnknownPlan)
	}
	if q.now == nil {
		q.now = time.Now
	}
	if q.ttl == 0 {
		q.ttl = DefaultReservationTTL
	}
	if q.ttl < 0 {
		return nil, fmt.Errorf("quota: new: negative reservation TTL %v", q.ttl)
	}
	if q.levels == (Thresholds{}) {
		q.levels = DefaultThresholds
	}
	if t := q.levels; !(t.Warning > 0 && t.Warning <= t.Critical && t.Critical <= t.Exceeded) {
		return nil, fmt.Errorf("quota: new: thresholds %v: want 0 < warning <= critical <= exceeded", t)
	}
	if cfg.Notify != nil {
		q.notifier = newNotifier(cfg.Notify, cfg.OnError, cfg.NotifyTimeout)
	}
	return q, nil
}

// Close marks q closed: every later call returns ErrClosed. It delivers
// the notifications still queued (see Config.Notify) before it returns.
// It does not close the store, which the caller opened. Close returns nil,
// also when called again.
func (q *Quota) Close() error {
	q.closed.Store(true)
	q.closeOnce.Do(func() {
		if q.notifier != nil {
			q.notifier.close()
		}
	})
	return nil
}

// Plan returns a copy of the catalog's plan called name.
func (q *Quota) Plan(name string) (Plan, error) {
	p := q.plans[name]
	if p == nil {
		return Plan{}, fmt.Errorf("quota: plan %q: %w", name, ErrUnknownPlan)
	}
	return clonePlan(p), nil
}

func clonePlan(p *Plan) Plan {
	cp := Plan{Name: p.Name, Limits: make(map[string][]Limit, len(p.Limits)), Features: append([]string(nil), p.Features...)}
	for a, ls := range p.Limits {
		cp.Limits[a] = append([]Limit(nil), ls...)
	}
	return cp
}

func (q *Quota) begin(ctx context.Context) error {
	if ctx == nil {
		return ErrNilContext
	}
	if q.closed.Load() {
		return ErrClosed
	}
	return ctx.Err()
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
// effect at once, and clears any scheduled plan change: an upgrade counts
// the usage already recorded in the current windows against the new
// limits. To downgrade at the end of the paid period instead, use
// SchedulePlan.
func (q *Quota) Subscribe(ctx context.Context, s Subscription) error {
	if err := q.begin(ctx); err != nil {
		return err
	}
	if err := checkName(s.Subject, ErrInvalidSubject); err != nil {
		return fmt.Errorf("quota: subscribe: %w", err)
	}
	if q.plans[s.Plan] == nil {
		return fmt.Errorf("quota: subscribe %q: plan %q: %w", s.Subject, s.Plan, ErrUnknownPlan)
	}
	if _, err := q.location(s.TimeZone); err != nil {
		return fmt.Errorf("quota: subscribe %q: %w", s.Subject, err)
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
			return fmt.Errorf("quota: subscribe %q: %w", s.Subject, err)
		}
	}
	s.Anchor = s.Anchor.UTC()
	if len(s.Overrides) > 0 {
		ov := make(map[string][]Limit, len(s.Overrides))
		for a, ls := range s.Overrides {
			if !q.actions[a] {
				return fmt.Errorf("quota: subscribe %q: override of %q: %w", s.Subject, a, ErrUnknownAction)
			}
			cp, perr := validateLimits(a, ls)
			if perr != nil {
				return fmt.Errorf("quota: subscribe %q: override: %w: %w", s.Subject, ErrInvalidSubscription, perr)
			}
			ov[a] = cp
		}
		s.Overrides = ov
	} else {
		s.Overrides = nil
	}
	s.NextPlan, s.NextPlanAt = "", time.Time{}
	if err := q.store.PutSubscription(ctx, s); err != nil {
		return fmt.Errorf("quota: subscribe %q: %w", s.Subject, err)
	}
	return nil
}

// SchedulePlan schedules subject's change to plan at the start of its next
// billing month, so that a downgrade keeps the allowance paid for until
// then. It returns when the change takes effect. A later Subscribe
// replaces the schedule.
func (q *Quota) SchedulePlan(ctx context.Context, subject, plan string) (time.Time, error) {
	if err := q.begin(ctx); err != nil {
		return time.Time{}, err
	}
	if err := checkName(subject, ErrInvalidSubject); err != nil {
		return time.Time{}, fmt.Errorf("quota: schedule plan: %w", err)
	}
	if q.plans[plan] == nil {
		return time.Time{}, fmt.Errorf("quota: schedule plan %q for %q: %w", plan, subject, ErrUnknownPlan)
	}
	s, err := q.store.GetSubscription(ctx, subject)
	if err != nil {
		return time.Time{}, fmt.Errorf("quota: schedule plan for %q: %w", subject, err)
	}
	loc, err := q.location(s.TimeZone)
	if err != nil {
		return time.Time{}, fmt.Errorf("quota: schedule plan for %q: %w", subject, err)
	}
	now := q.now()
	if s.NextPlan != "" && !now.Before(s.NextPlanAt) {
		s.Plan = s.NextPlan // an earlier change already took effect
	}
	_, at := window(PeriodMonth, now, s.Anchor, loc)
	s.NextPlan, s.NextPlanAt = plan, at
	if err := q.store.PutSubscription(ctx, s); err != nil {
		return time.Time{}, fmt.Errorf("quota: schedule plan for %q: %w", subject, err)
	}
	return at, nil
}

// Subscription returns the subscription of subject as stored, or an error
// matching ErrNoSubscription.
func (q *Quota) Subscription(ctx context.Context, subject string) (Subscription, error) {
	if err := q.begin(ctx); err != nil {
		return Subscription{}, err
	}
	if err := checkName(subject, ErrInvalidSubject); err != nil {
		return Subscription{}, fmt.Errorf("quota: subscription: %w", err)
	}
	s, err := q.store.GetSubscription(ctx, subject)
	if err != nil {
		return Subscription{}, fmt.Errorf("quota: subscription %q: %w", subject, err)
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

func (q *Quota) resolve(ctx context.Context, subject string, now time.Time) (subscriber, error) {
	s, err := q.store.GetSubscription(ctx, subject)
	if errors.Is(err, ErrNoSubscription) && q.def != "" {
		s, err = Subscription{Subject: subject, Plan: q.def, Anchor: time.Unix(0, 0).UTC()}, nil
	}
	if err != nil {
		return subscriber{}, err
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
	return subscriber{sub: s, plan: p, loc: loc, windows: &q.windows, q: q}, nil
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
		start, end := s.windows.window(l.Period, now, s.sub.Anchor, s.loc)
		dst = append(dst, CounterOp{
			CounterKey: CounterKey{Subject: s.sub.Subject, Action: action, Period: l.Period, Start: start},
			End:        end,
			Max:        l.Max,
		})
	}
	if s.q.notifier != nil {
		for i := len(dst) - len(limits); i < len(dst); i++ {
			dst[i].Marks = s.q.marks(dst[i].Max)
		}
	}
	return dst
}

type mode uint8

const (
	modeCheck mode = iota
	modeConsume
	modeTrack
	modeReserve
)

var modeNames = [...]string{"check", "consume", "track", "reserve"}

// prepared is a validated use. It lives on the caller's stack.
type prepared struct {
	u        Use
	meta     json.RawMessage
	sub      subscriber
	limits   []Limit
	counters []CounterOp
	now      time.Time
}

// prepare validates u into p, computing its counters into buf.
func (q *Quota) prepare(ctx context.Context, u Use, m mode, p *prepared, buf []CounterOp) error {
	if err := q.begin(ctx); err != nil {
		return err
	}
	if err := checkName(u.Subject, ErrInvalidSubject); err != nil {
		return err
	}
	if err := checkName(u.Action, ErrInvalidAction); err != nil {
		return err
	}
	if u.Key != "" {
		if err := checkName(u.Key, ErrInvalidKey); err != nil {
			return err
		}
	}
	if u.ResourceID != "" {
		if err := checkName(u.ResourceID, ErrInvalidName); err != nil {
			return fmt.Errorf("resource id: %w", err)
		}
	}
	switch {
	case u.Amount == 0:
		return fmt.Errorf("%w: zero", ErrInvalidAmount)
	case u.Amount > MaxAmount || u.Amount < -MaxAmount:
		return fmt.Errorf("%w: %d is beyond ±%d", ErrInvalidAmount, u.Amount, MaxAmount)
	case u.Amount < 0 && m == modeReserve:
		return fmt.Errorf("%w: cannot reserve a negative amount", ErrInvalidAmount)
	}
	p.u = u
	if u.Metadata != nil {
		b, err := json.Marshal(u.Metadata)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrInvalidMetadata, err)
		}
		if len(b) > MaxMetadataLen {
			return fmt.Errorf("%w: %d bytes encoded, more than %d", ErrInvalidMetadata, len(b), MaxMetadataLen)
		}
		p.meta = b
	}
	p.now = q.now()
	sub, err := q.resolve(ctx, u.Subject, p.now)
	if err != nil {
		return err
	}
	p.sub = sub
	p.limits = sub.limits(u.Action)
	if &p.limits[0] == &blocked[0] && !q.actions[u.Action] {
		return fmt.Errorf("%q: %w", u.Action, ErrUnknownAction)
	}
	if u.Amount < 0 && !p.limits[0].IsAllocation() {
		return fmt.Errorf("%w: %d: %q has no allocation limit to release", ErrInvalidAmount, u.Amount, u.Action)
	}
	p.counters = sub.appendCounters(buf, u.Action, p.limits, p.now)
	return nil
}

// fingerprint identifies the payload of a keyed use.
func (p *prepared) fingerprint(m mode) string {
	h := sha256.New()
	var n [8]byte
	for _, s := range []string{modeNames[m], p.u.Action, p.u.ResourceID, string(p.meta)} {
		binary.BigEndian.PutUint64(n[:], uint64(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	binary.BigEndian.PutUint64(n[:], uint64(p.u.Amount))
	h.Write(n[:])
	return hex.EncodeToString(h.Sum(nil))
}

// perUseExceeded returns the index of the first limit whose per-use cap
// the amount exceeds, or -1.
func (p *prepared) perUseExceeded() int {
	for i, l := range p.limits {
		if l.MaxPerUse > 0 && p.u.Amount > l.MaxPerUse {
			return i
		}
	}
	return -1
}

// Check reports whether u would be allowed now, without writing anything.
// The idempotency key, if any, is not looked up.
func (q *Quota) Check(ctx context.Context, u Use) (Decision, error) {
	var p prepared
	if err := q.prepare(ctx, u, modeCheck, &p, nil); err != nil {
		return Decision{}, fmt.Errorf("quota: check: %w", err)
	}
	cs, err := q.readCounters(ctx, &p)
	if err != nil {
		return Decision{}, fmt.Errorf("quota: check %q %q: %w", u.Subject, u.Action, err)
	}
	if p.u.Amount > 0 {
		if i := p.perUseExceeded(); i >= 0 {
			var d Decision
			q.decide(&d, &p, cs, false)
			return denyPerUse(d, i), nil
		}
	}
	var d Decision
	q.decide(&d, &p, cs, true)
	return d, nil
}

func denyPerUse(d Decision, i int) Decision {
	d.Allowed, d.Reason = false, ReasonPerUse
	d.LimitStatus = d.Limits[i]
	return d
}

func (q *Quota) readCounters(ctx context.Context, p *prepared) ([]Counter, error) {
	keys := make([]CounterKey, len(p.counters))
	for i, c := range p.counters {
		keys[i] = c.CounterKey
	}
	cs, err := q.store.Counters(ctx, keys, p.now)
	if err != nil {
		return nil, err
	}
	if len(cs) != len(keys) {
		return nil, fmt.Errorf("store returned %d counters for %d keys", len(cs), len(keys))
	}
	return cs, nil
}

// Consume checks u against every limit of its action and, if all allow
// it, records it and charges every limit, in one atomic step. A use past a
// limit is refused: Consume returns a Decision with Allowed false and a
// nil error, and writes nothing. Errors are for invalid input and store
// failures.
func (q *Quota) Consume(ctx context.Context, u Use) (Decision, error) {
	return q.apply(ctx, u, modeConsume)
}

// Track records u, which already happened, even past a limit: billing must
// see it. Only a release below zero is refused. Per-use caps do not apply.
func (q *Quota) Track(ctx context.Context, u Use) (Decision, error) {
	return q.apply(ctx, u, modeTrack)
}

func (q *Quota) apply(ctx context.Context, u Use, m mode) (Decision, error) {
	var d Decision
	if _, err := q.applyHold(ctx, u, m, &d); err != nil {
		return Decision{}, err
	}
	return d, nil
}

// applyHold applies u and fills d with the decision. It returns the hold
// created, if any.
func (q *Quota) applyHold(ctx context.Context, u Use, m mode, d *Decision) (*Hold, error) {
	// The Op and its counters come from a pool: Store.Apply does not
	// keep them, and the decision copies what it needs.
	b := opPool.Get().(*opBuf)
	defer b.release()
	var p prepared
	if err := q.prepare(ctx, u, m, &p, b.counters[:0]); err != nil {
		return nil, fmt.Errorf("quota: %s: %w", modeNames[m], err)
	}
	if m != modeTrack && p.u.Amount > 0 {
		if i := p.perUseExceeded(); i >= 0 {
			cs, err := q.readCounters(ctx, &p)
			if err != nil {
				return nil, fmt.Errorf("quota: %s %q %q: %w", modeNames[m], u.Subject, u.Action, err)
			}
			q.decide(d, &p, cs, false)
			*d = denyPerUse(*d, i)
			return nil, nil
		}
	}
	op := &b.op
	*op = Op{
		Counters: p.counters,
		Record: Record{
			Subject:    u.Subject,
			Action:     u.Action,
			Amount:     u.Amount,
			ResourceID: u.ResourceID,
			Metadata:   p.meta,
			Key:        u.Key,
			Time:       p.now.UTC(),
		},
		Enforce: m != modeTrack,
		Now:     p.now,
	}
	if u.Key != "" {
		op.Fingerprint = p.fingerprint(m)
	}
	if m == modeReserve {
		op.Hold = &Hold{ID: newID(), ExpiresAt: p.now.Add(q.ttl)}
	}
	res, err := q.store.Apply(ctx, op)
	if err != nil {
		if errors.Is(err, ErrIdempotencyConflict) {
			return nil, &ConflictError{Subject: u.Subject, Key: u.Key}
		}
		return nil, fmt.Errorf("quota: %s %q %q: %w", modeNames[m], u.Subject, u.Action, err)
	}
	if len(res.Counters) != len(p.counters) {
		return nil, fmt.Errorf("quota: %s %q %q: store returned %d counters for %d", modeNames[m], u.Subject, u.Action, len(res.Counters), len(p.counters))
	}
	if res.Replayed {
		// The first use's figures, in the first use's windows.
		for i := range p.counters {
			p.counters[i].Start, p.counters[i].End = res.Counters[i].Start, res.Counters[i].End
		}
		q.decide(d, &p, res.Counters, false)
		d.Replayed, d.RecordID = true, res.RecordID
		var h *Hold
		if res.HoldID != "" {
			h = &Hold{ID: res.HoldID, ExpiresAt: res.HoldExpiresAt}
		}
		return h, nil
	}
	if !res.Applied {
		q.decide(d, &p, res.Counters, true)
		if d.Allowed {
			// The store saw a state that refused the use; report it
			// as such on the most used limit.
			d.Allowed, d.Reason = false, ReasonLimit
			if u.Amount < 0 {
				d.Reason = ReasonBelowZero
			}
		}
		return nil, nil
	}
	q.decide(d, &p, res.Counters, false)
	d.RecordID = res.RecordID
	q.notify(&p, &res)
	return op.Hold, nil
}

// opBuf holds an Op and room for the counters of up to four limits.
type opBuf struct {
	op       Op
	counters [4]CounterOp
}

var opPool = sync.Pool{New: func() any { return new(opBuf) }}

// release clears b, so that the pool keeps no caller data, and returns it
// to the pool.
func (b *opBuf) release() {
	clear(b.op.Counters)
	b.op = Op{}
	opPool.Put(b)
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
		a := p.u.Amount
		refused := false
		switch {
		case a > 0:
			refused = !l.IsUnlimited() && st.Used > l.Max-a
		case a < 0:
			refused = c.Used+a < 0
		}
		if refused && decisive < 0 {
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

func newID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// Reservation is an amount held by Reserve: it counts against the limits
// at once, until it is committed, cancelled, or it expires. A Reservation
// is safe for concurrent use, though only its first Commit or Cancel
// succeeds.
type Reservation struct {
	// ID identifies the reservation in the store; CommitReservation and
	// CancelReservation accept it, also from another process.
	ID string
	// Decision is the outcome of Reserve. When it is not Allowed, nothing
	// is held and ID is empty.
	Decision Decision
	// ExpiresAt is when the hold stops counting unless committed.
	ExpiresAt time.Time

	q *Quota
}

// Reserve holds u.Amount against every limit of u.Action, as Consume would
// charge it, without recording a use yet. The hold counts at once; Commit
// records the use, Cancel releases it, and a hold neither committed nor
// cancelled expires after Config.ReservationTTL. A denial is returned as a
// Reservation whose Decision is not Allowed, with a nil error.
func (q *Quota) Reserve(ctx context.Context, u Use) (*Reservation, error) {
	r := &Reservation{q: q}
	h, err := q.applyHold(ctx, u, modeReserve, &r.Decision)
	if err != nil {
		return nil, err
	}
	if h != nil {
		r.ID, r.ExpiresAt = h.ID, h.ExpiresAt
	}
	return r, nil
}

// Commit records the reserved use with its full amount.
func (r *Reservation) Commit(ctx context.Context) error {
	_, err := r.q.CommitReservation(ctx, r.ID, r.Decision.Amount)
	return err
}

// CommitAmount records the reserved use with amount, from 1 to the
// reserved amount (bytes actually received, say); the rest is released.
func (r *Reservation) CommitAmount(ctx context.Context, amount int64) error {
	if amount > r.Decision.Amount {
		return fmt.Errorf("quota: commit %s: %w: %d is more than the %d reserved", r.ID, ErrInvalidAmount, amount, r.Decision.Amount)
	}
	_, err := r.q.CommitReservation(ctx, r.ID, amount)
	return err
}

// Cancel releases the reserved amount.
func (r *Reservation) Cancel(ctx context.Context) error {
	return r.q.CancelReservation(ctx, r.ID)
}

// CommitReservation records the use held by reservation id with amount
// (1 to the reserved amount) and returns its record. A reservation that
// expired returns ErrReservationExpired; an unknown, committed or
// cancelled one ErrReservationNotFound.
func (q *Quota) CommitReservation(ctx context.Context, id string, amount int64) (Record, error) {
	if err := q.begin(ctx); err != nil {
		return Record{}, err
	}
	if id == "" {
		return Record{}, fmt.Errorf("quota: commit: %w: empty id", ErrReservationNotFound)
	}
	if amount <= 0 || amount > MaxAmount {
		return Record{}, fmt.Errorf("quota: commit %s: %w: %d", id, ErrInvalidAmount, amount)
	}
	rec, err := q.store.Commit(ctx, id, amount, q.now())
	if err != nil {
		return Record{}, fmt.Errorf("quota: commit %s: %w", id, err)
	}
	return rec, nil
}

// CancelReservation releases the amount held by reservation id.
func (q *Quota) CancelReservation(ctx context.Context, id string) error {
	if err := q.begin(ctx); err != nil {
		return err
	}
	if id == "" {
		return fmt.Errorf("quota: cancel: %w: empty id", ErrReservationNotFound)
	}
	if err := q.store.Cancel(ctx, id, q.now()); err != nil {
		return fmt.Errorf("quota: cancel %s: %w", id, err)
	}
	return nil
}

// HasFeature reports whether the plan in force for subject grants feature.
func (q *Quota) HasFeature(ctx context.Context, subject, feature string) (bool, error) {
	if err := q.begin(ctx); err != nil {
		return false, err
	}
	if err := checkName(subject, ErrInvalidSubject); err != nil {
		return false, fmt.Errorf("quota: has feature: %w", err)
	}
	if err := checkName(feature, ErrInvalidName); err != nil {
		return false, fmt.Errorf("quota: has feature: feature: %w", err)
	}
	s, err := q.resolve(ctx, subject, q.now())
	if err != nil {
		return false, fmt.Errorf("quota: has feature %q: %w", subject, err)
	}
	return s.plan.HasFeature(feature), nil
}

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
func (q *Quota) Usage(ctx context.Context, subject string) (Report, error) {
	if err := q.begin(ctx); err != nil {
		return Report{}, err
	}
	if err := checkName(subject, ErrInvalidSubject); err != nil {
		return Report{}, fmt.Errorf("quota: usage: %w", err)
	}
	now := q.now()
	s, err := q.resolve(ctx, subject, now)
	if err != nil {
		return Report{}, fmt.Errorf("quota: usage %q: %w", subject, err)
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
		return Report{}, fmt.Errorf("quota: usage %q: %w", subject, err)
	}
	if len(cs) != len(keys) {
		return Report{}, fmt.Errorf("quota: usage %q: store returned %d counters for %d keys", subject, len(cs), len(keys))
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

// Records returns the ledger records q selects, in ascending ID order.
func (q *Quota) Records(ctx context.Context, rq RecordQuery) ([]Record, error) {
	if err := q.begin(ctx); err != nil {
		return nil, err
	}
	if rq.Subject != "" {
		if err := checkName(rq.Subject, ErrInvalidSubject); err != nil {
			return nil, fmt.Errorf("quota: records: %w", err)
		}
	}
	if rq.Action != "" {
		if err := checkName(rq.Action, ErrInvalidAction); err != nil {
			return nil, fmt.Errorf("quota: records: %w", err)
		}
	}
	if rq.Limit < 0 || rq.AfterID < 0 {
		return nil, fmt.Errorf("quota: records: negative limit or cursor")
	}
	recs, err := q.store.Records(ctx, rq)
	if err != nil {
		return nil, fmt.Errorf("quota: records: %w", err)
	}
	return recs, nil
}
