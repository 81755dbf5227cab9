package quota

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
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

	// Notify, when set, is called when a use (Consume, Track, or the
	// Commit of a reservation) first brings a limit's usage in its
	// window to a level's threshold: once per crossing, for the highest
	// level the use reached. A reservation counts when it is committed,
	// not when it is taken, so a cancelled one notifies nothing. The
	// store writes the crossing to its outbox in the same atomic step
	// as the use (the store must be an Outbox: MemoryStore and SQLStore
	// are), so a use rolled back with the caller's transaction notifies
	// nothing, and a notification survives a crash: it is delivered
	// after commit, at least once, with a stable Notification.ID that
	// the hook can dedupe on. Notify runs on a goroutine of the Quota,
	// one call at a time, never on the caller's: a use never waits for
	// or fails because of it. An error or a panic is retried with a
	// backoff from 1 s doubling to 1 h, at most 20 attempts. Processes
	// sharing a store share the work: each notification is claimed by
	// one of them, and by another only if the first did not finish it
	// within NotifyTimeout plus 5 s. Close delivers what is due before
	// it returns. Quotas sharing a store should all set Notify, or none.
	// Default nil: no notifications.
	Notify func(ctx context.Context, n Notification) error

	// NotifyPoll is how often the Quota looks in the outbox for
	// notifications that it did not write itself (other processes', a
	// caller's transaction committed later, retries that fell due).
	// Default DefaultNotifyPoll.
	NotifyPoll time.Duration

	// NotifyTimeout bounds each call of Notify: its context expires
	// then. Default DefaultNotifyTimeout.
	NotifyTimeout time.Duration

	// StoreTimeout bounds each call of the Quota to its store: past it
	// the call fails with an error matching ErrStoreUnavailable (and
	// context.DeadlineExceeded). A context that ends sooner bounds the
	// call instead. Negative: no bound but the context's. MemoryStore's
	// calls, which never wait on I/O, are not bounded. Default
	// DefaultStoreTimeout.
	StoreTimeout time.Duration

	// OnError receives the errors Notify returns and its panics.
	// Default: logged to Logger at level Error.
	OnError func(error)

	// SweepInterval is how often the Quota removes expired holds from a
	// store that is a Sweeper (MemoryStore and SQLStore are), on a
	// goroutine of its own, whatever the traffic. Negative: never.
	// Default DefaultSweepInterval.
	SweepInterval time.Duration

	// Observer, when set, receives every engine call, decision, store
	// call and notification delivery, for metrics and traces; see
	// Observer for when each of its functions is called and what it
	// costs. Default nil: nothing is observed, at the cost of a nil
	// check per call.
	Observer *Observer

	// Logger receives, at level Error, the errors that reach no caller
	// and no hook: those of the Quota's background work (releasing
	// orphaned holds, delivering notifications), Notify's errors when
	// OnError is nil, and the errors of Middleware and UsageHandler
	// when WithErrorHook is not given. The library logs nothing else,
	// and at no other level: a quiet library whose failures are still
	// seen. Default nil: slog.Default() at the time of logging. To
	// silence the library, set slog.New(slog.DiscardHandler).
	Logger *slog.Logger
}

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
	// of at most MaxMetadataLen bytes, and its text must be valid UTF-8:
	// it is kept as given, never rewritten.
	Metadata map[string]any
	// Key is an optional idempotency key, unique per subject: a use
	// repeated with the same key and payload counts once and returns the
	// first outcome; with another payload it fails with a *ConflictError.
	Key string
	// Features lists features that the subject's plan must grant. A plan
	// that lacks one denies the use with ReasonFeature, naming it in
	// Decision.Feature, before any limit is looked at: a feature gate
	// that costs no extra store call. It gates Consume, Reserve and Check
	// of a positive amount; Track and releases (negative amounts) pass.
	Features []string
	// UpToCap lowers Amount to the smallest per-use cap of the action's
	// limits, when one is lower: Reserve(Use{Amount: n, UpToCap: true})
	// holds as much as one use may take, at most n, for a request body
	// of unknown length. Decision.Amount tells the amount decided on.
	UpToCap bool
}

// Quota enforces a catalog of plans over a Store. It is safe for concurrent
// use. Build one with New.
type Quota struct {
	store guardedStore
	// versioned is store.Versioned(): uses carry Op.Version.
	versioned bool
	// subs caches the subscriptions of uses when versioned; nil
	// otherwise.
	subs    *subCache
	plans   map[string]*Plan
	actions map[string]bool
	def     string
	now     func() time.Time
	ttl     time.Duration
	levels  Thresholds
	locs    sync.Map // time zone name -> *time.Location
	windows windowCache
	// markCache holds the CounterOp.Marks of each limit (see marks).
	markCache sync.Map

	// obs is Config.Observer, nil when it observes nothing; log is
	// Config.Logger (see logger).
	obs *Observer
	log *slog.Logger

	notifier  *notifier // nil without Config.Notify
	janitor   *janitor
	closeOnce sync.Once
	closed    atomic.Bool
}

// New returns a Quota enforcing cfg.Plans over store. It does no I/O.
func New(store Store, cfg Config) (*Quota, error) {
	if store == nil {
		return nil, ErrNilStore
	}
	if len(cfg.Plans) == 0 {
		return nil, errorf("new: %w: no plans", ErrInvalidPlan)
	}
	plans, err := validatePlans(cfg.Plans)
	if err != nil {
		return nil, err
	}
	q := &Quota{
		store:   newGuardedStore(store, cfg.StoreTimeout),
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
		return nil, errorf("new: default plan %q: %w", q.def, ErrUnknownPlan)
	}
	if q.now == nil {
		q.now = time.Now
	}
	if q.ttl == 0 {
		q.ttl = DefaultReservationTTL
	}
	if q.ttl < 0 {
		return nil, errorf("new: negative reservation TTL %v", q.ttl)
	}
	if q.levels == (Thresholds{}) {
		q.levels = DefaultThresholds
	}
	if t := q.levels; !(t.Warning > 0 && t.Warning <= t.Critical && t.Critical <= t.Exceeded) {
		return nil, errorf("new: thresholds %v: want 0 < warning <= critical <= exceeded", t)
	}
	q.versioned = q.store.Versioned()
	if q.versioned {
		q.subs = newSubCache()
	}
	q.log = cfg.Logger
	q.setObserver(cfg.Observer)
	if cfg.Notify != nil {
		box, ok := store.(Outbox)
		if !ok {
			return nil, errorf("new: Config.Notify needs a store that is an Outbox")
		}
		q.notifier = newNotifier(q, newGuardedOutbox(box, q.store), &cfg)
	}
	q.janitor = newJanitor(q, cfg.SweepInterval)
	return q, nil
}

// Close marks q closed: every later call returns ErrClosed. It delivers
// the notifications still queued (see Config.Notify) before it returns.
// It does not close the store, which the caller opened. Close returns nil,
// also when called again.
func (q *Quota) Close() error {
	q.closed.Store(true)
	q.closeOnce.Do(func() {
		q.janitor.close()
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
		return Plan{}, errorf("plan %q: %w", name, ErrUnknownPlan)
	}
	return clonePlan(p), nil
}

// Actions returns the actions that the catalog's plans limit, sorted.
func (q *Quota) Actions() []string {
	out := make([]string, 0, len(q.actions))
	for a := range q.actions {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

// Now returns the current time by the Quota's clock (Config.Now).
func (q *Quota) Now() time.Time { return q.now() }

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
	missing  string // a feature of u.Features that the plan lacks
	// requested is the amount asked for, before Use.UpToCap.
	requested int64
	// cached reports that sub came from the cache: only the store's
	// check of Op.Version confirms it.
	cached bool
}

// prepare validates u into p, computing its counters into buf.
func (q *Quota) prepare(ctx context.Context, u *Use, m mode, p *prepared, buf []CounterOp) error {
	if err := q.begin(ctx); err != nil {
		return err
	}
	p.u, p.requested = *u, u.Amount
	u = &p.u
	if err := validateUse(u, m); err != nil {
		return err
	}
	if u.Metadata != nil {
		b, err := encodeMetadata(u.Metadata)
		if err != nil {
			return err
		}
		p.meta = b
	}
	p.now = q.now()
	if m == modeCheck {
		sub, err := q.resolve(ctx, u.Subject, p.now)
		if err != nil {
			return err
		}
		p.sub = sub
		return p.judge(buf)
	}
	cached, err := q.resolveUse(ctx, u.Subject, p.now, &p.sub)
	if err == nil {
		p.cached = cached
		err = p.judge(buf)
	}
	if err != nil && cached {
		// An error is not checked by the store: confirm it with the
		// subscription stored.
		return q.rejudge(ctx, p, buf)
	}
	return err
}

// rejudge judges p again under the subscription stored now, which it
// caches in place of the one p was judged by.
func (q *Quota) rejudge(ctx context.Context, p *prepared, buf []CounterOp) error {
	q.forget(p.u.Subject)
	if err := q.resolveFresh(ctx, p.u.Subject, p.now, &p.sub); err != nil {
		return err
	}
	p.cached = false
	return p.judge(buf)
}

// judge sets p under its subscription p.sub: its limits, the amount, the
// feature it lacks and its counters, computed into buf. It may be called
// again with another subscription.
func (p *prepared) judge(buf []CounterOp) error {
	u, sub := &p.u, &p.sub
	p.limits = sub.limits(u.Action)
	if &p.limits[0] == &blocked[0] && !sub.q.actions[u.Action] {
		return fmt.Errorf("%q: %w", u.Action, ErrUnknownAction)
	}
	if len(p.limits) > MaxLimits {
		// Only a subscription written to the store directly, not by
		// Subscribe, can hold such overrides.
		return fmt.Errorf("%w: %d limits of %q, more than %d", ErrInvalidSubscription, len(p.limits), u.Action, MaxLimits)
	}
	if p.requested < 0 && !p.limits[0].IsAllocation() {
		return fmt.Errorf("%w: %d: %q has no allocation limit to release", ErrInvalidAmount, p.requested, u.Action)
	}
	u.Amount = p.requested
	if u.UpToCap {
		// The fingerprint keeps the amount asked for: a replay under a
		// plan with another cap is still the same use.
		u.Amount = upToCap(u.Amount, p.limits)
	}
	p.missing = missingFeature(sub.plan, u.Features)
	p.counters = sub.appendCounters(buf, u.Action, p.limits, p.now)
	return nil
}

// validateUse checks the names and the amount of u, for mode m.
func validateUse(u *Use, m mode) error {
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
	for _, f := range u.Features {
		if err := checkName(f, ErrInvalidName); err != nil {
			return fmt.Errorf("feature: %w", err)
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
	return nil
}

// encodeMetadata encodes a use's metadata as JSON. Text that is not valid
// UTF-8, which encoding/json would silently replace with U+FFFD (so that
// two payloads became one), is refused instead.
func encodeMetadata(md map[string]any) ([]byte, error) {
	b, err := json.Marshal(md)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidMetadata, err)
	}
	if len(b) > MaxMetadataLen {
		return nil, fmt.Errorf("%w: %d bytes encoded, more than %d", ErrInvalidMetadata, len(b), MaxMetadataLen)
	}
	// Marshal succeeded, so the value has no cycle for the walk to loop
	// on; what a json.Marshaler writes is checked in the output.
	if path, ok := validUTF8(reflect.ValueOf(md), "", 0); !ok {
		return nil, fmt.Errorf("%w: invalid UTF-8 in %s", ErrInvalidMetadata, path)
	}
	if !utf8.Valid(b) {
		return nil, fmt.Errorf("%w: invalid UTF-8 in the encoding", ErrInvalidMetadata)
	}
	return b, nil
}

// validUTF8 reports whether every string in v (map keys included) is
// valid UTF-8, and otherwise the path of the first that is not.
func validUTF8(v reflect.Value, path string, depth int) (string, bool) {
	if depth > 256 || !v.IsValid() {
		return "", true
	}
	switch v.Kind() {
	case reflect.String:
		if !utf8.ValidString(v.String()) {
			return cmpPath(path), false
		}
	case reflect.Interface, reflect.Pointer:
		if !v.IsNil() {
			return validUTF8(v.Elem(), path, depth+1)
		}
	case reflect.Map:
		return validMapUTF8(v, path, depth)
	case reflect.Slice, reflect.Array:
		if v.Type().Elem().Kind() == reflect.Uint8 {
			return "", true // []byte encodes as base64
		}
		for i := range v.Len() {
			if p, ok := validUTF8(v.Index(i), path+"["+strconv.Itoa(i)+"]", depth+1); !ok {
				return p, false
			}
		}
	case reflect.Struct:
		t := v.Type()
		for i := range t.NumField() {
			if f := t.Field(i); f.IsExported() && f.Tag.Get("json") != "-" {
				if p, ok := validUTF8(v.Field(i), path+"."+f.Name, depth+1); !ok {
					return p, false
				}
			}
		}
	}
	return "", true
}

// validMapUTF8 is validUTF8 for a map: its keys and its values.
func validMapUTF8(v reflect.Value, path string, depth int) (string, bool) {
	iter := v.MapRange()
	for iter.Next() {
		k := iter.Key()
		if k.Kind() == reflect.String && !utf8.ValidString(k.String()) {
			return cmpPath(path) + " (a key)", false
		}
		if p, ok := validUTF8(iter.Value(), path+"["+fmt.Sprint(k.Interface())+"]", depth+1); !ok {
			return p, false
		}
	}
	return "", true
}

// cmpPath names the metadata itself for an empty path.
func cmpPath(path string) string {
	if path == "" {
		return "the metadata"
	}
	return "metadata" + path
}

// upToCap returns amount, lowered to the smallest per-use cap of limits.
func upToCap(amount int64, limits []Limit) int64 {
	for _, l := range limits {
		if l.MaxPerUse > 0 && l.MaxPerUse < amount {
			amount = l.MaxPerUse
		}
	}
	return amount
}

// missingFeature returns the first of features that p does not grant, or
// "".
func missingFeature(p *Plan, features []string) string {
	for _, f := range features {
		if !p.HasFeature(f) {
			return f
		}
	}
	return ""
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
	binary.BigEndian.PutUint64(n[:], uint64(p.requested))
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
func (q *Quota) Check(ctx context.Context, u Use) (dec Decision, err error) {
	var p prepared
	if q.obs != nil {
		var end func(error)
		ctx, end = q.startCall(ctx, useCall(modeCheck, &u))
		defer func() { q.decided(ctx, modeCheck, &u, &p, &dec, err); end(err) }()
	}
	if err := q.prepare(ctx, &u, modeCheck, &p, nil); err != nil {
		return Decision{}, errorf("check: %w", err)
	}
	if p.missing != "" && p.u.Amount > 0 {
		return denyFeature(&p), nil
	}
	cs, err := q.readCounters(ctx, &p)
	if err != nil {
		return Decision{}, errorf("check %q %q: %w", u.Subject, u.Action, err)
	}
	if p.u.Amount > 0 {
		if i := p.perUseExceeded(); i >= 0 {
			var d Decision
			q.decide(&d, &p, cs, false)
			denyPerUse(&d, i)
			return d, nil
		}
	}
	var d Decision
	q.decide(&d, &p, cs, true)
	return d, nil
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
func (q *Quota) Consume(ctx context.Context, u Use) (d Decision, err error) {
	if _, err = q.applyHold(ctx, &u, modeConsume, &d); err != nil {
		return Decision{}, err
	}
	return d, nil
}

// Track records u, which already happened, even past a limit: billing must
// see it. Only a release below zero is refused. Per-use caps do not apply.
func (q *Quota) Track(ctx context.Context, u Use) (Decision, error) {
	var d Decision
	if _, err := q.applyHold(ctx, &u, modeTrack, &d); err != nil {
		return Decision{}, err
	}
	return d, nil
}

// applyHold applies u and fills d with the decision. It returns the hold
// created, if any.
func (q *Quota) applyHold(ctx context.Context, u *Use, m mode, d *Decision) (_ *Hold, err error) {
	// The Op and its counters come from a pool: Store.Apply does not
	// keep them, and the decision copies what it needs.
	b := opPool.Get().(*opBuf)
	defer b.release()
	var p prepared
	if q.obs != nil {
		var end func(error)
		ctx, end = q.startCall(ctx, useCall(m, u))
		defer func() { q.decided(ctx, m, u, &p, d, err); end(err) }()
	}
	if err := q.prepare(ctx, u, m, &p, b.counters[:0]); err != nil {
		return nil, errorf("%s: %w", modeNames[m], err)
	}
	for retry := 0; ; retry++ {
		h, err := q.applyPrepared(ctx, m, &p, b, d)
		if err == nil || retry == maxSubscriptionRetries || !errors.Is(err, ErrSubscriptionChanged) {
			return h, err
		}
		// The subscription changed after it was read: judge the use
		// again under the one stored now.
		if err := q.rejudge(ctx, &p, b.counters[:0]); err != nil {
			return nil, errorf("%s: %w", modeNames[m], err)
		}
	}
}

// maxSubscriptionRetries is how many times a use is judged again after
// the store refused it with ErrSubscriptionChanged. A retry is refused
// again only if the subscription changed again between its read and its
// use. Over a store that batches, a use waits in the queue behind others,
// so a plan changed as often as the subject's uses complete can refuse a
// use several times in a row (the conformance suite does that); the bound
// is for a store that refuses every use.
const maxSubscriptionRetries = 64

// applyPrepared applies p, with the Op of b, and fills d with the
// decision. It returns the hold created, if any.
func (q *Quota) applyPrepared(ctx context.Context, m mode, p *prepared, b *opBuf, d *Decision) (*Hold, error) {
	u := &p.u
	b.used = max(b.used, len(p.counters))
	refusal, capIndex := p.refusal(m)
	if refusal == ReasonFeature && u.Key == "" && !p.cached {
		// A denial by a cached plan goes to the store, which checks
		// Op.Version, as a keyed one does.
		*d = denyFeature(p)
		return nil, nil
	}
	op := q.op(&b.op, p, m, refusal, b.results[:0])
	res, err := q.store.Apply(ctx, op)
	if err != nil && op.Hold != nil && mayHaveApplied(err) {
		// The store may have applied the hold before the failure
		// reached us: release it rather than let it count until its TTL.
		q.janitor.orphan(op.Hold.ID)
	}
	if err != nil {
		if errors.Is(err, ErrIdempotencyConflict) {
			return nil, &ConflictError{Subject: u.Subject, Key: u.Key}
		}
		return nil, errorf("%s %q %q: %w", modeNames[m], u.Subject, u.Action, err)
	}
	if res.Replayed {
		if len(res.Counters) > MaxLimits {
			return nil, errorf("%s %q %q: store returned %d counters for a replay, more than %d", modeNames[m], u.Subject, u.Action, len(res.Counters), MaxLimits)
		}
		q.replayed(d, p, &res)
		var h *Hold
		if res.HoldID != "" {
			h = &Hold{ID: res.HoldID, ExpiresAt: res.HoldExpiresAt}
		}
		return h, nil
	}
	if len(res.Counters) != len(p.counters) {
		return nil, errorf("%s %q %q: store returned %d counters for %d", modeNames[m], u.Subject, u.Action, len(res.Counters), len(p.counters))
	}
	if !q.outcome(d, p, &res, refusal, capIndex) {
		return nil, nil
	}
	q.notify(&res)
	return op.Hold, nil
}

// refusal returns why policy refuses p before its counters are read (a
// feature the plan lacks, a per-use cap: for positive amounts, not for
// Track), with the index of the refusing cap's limit, or ReasonNone.
func (p *prepared) refusal(m mode) (Reason, int) {
	if m == modeTrack || p.u.Amount <= 0 {
		return ReasonNone, -1
	}
	if p.missing != "" {
		return ReasonFeature, -1
	}
	if i := p.perUseExceeded(); i >= 0 {
		return ReasonPerUse, i
	}
	return ReasonNone, -1
}

// op fills op, from the pool, with the use p in mode m, and lends dst
// for the store's answer (Op.Dst). A use that policy refuses still goes
// to the store when it has a key, so that a replay returns the first
// outcome whatever the plan is now: with every Max at 0 the store
// refuses it otherwise, and returns the counters for the denial's
// figures.
func (q *Quota) op(op *Op, p *prepared, m mode, refusal Reason, dst []Counter) *Op {
	if refusal != ReasonNone {
		for i := range p.counters {
			p.counters[i].Max = 0
		}
	}
	// Field by field: an Op is large, and a composite literal would be
	// built aside and copied.
	r := &op.Record
	r.ID, r.Subject, r.Action, r.Amount = 0, p.u.Subject, p.u.Action, p.u.Amount
	r.ResourceID, r.Metadata, r.Key, r.Time = p.u.ResourceID, p.meta, p.u.Key, p.now.UTC()
	op.Counters, op.Enforce, op.Version, op.Now, op.Dst = p.counters, m != modeTrack, p.sub.version, p.now, dst
	op.Fingerprint, op.Hold = "", nil
	if p.u.Key != "" {
		op.Fingerprint = p.fingerprint(m)
	}
	if m == modeReserve {
		op.Hold = &Hold{ID: newID(), ExpiresAt: p.now.Add(q.ttl)}
	}
	return op
}

// outcome fills d from the result of a use that was not replayed, and
// reports whether the use was applied.
func (q *Quota) outcome(d *Decision, p *prepared, res *ApplyResult, refusal Reason, capIndex int) bool {
	switch {
	case refusal == ReasonFeature:
		*d = denyFeature(p)
		return false
	case refusal == ReasonPerUse:
		for i := range p.counters {
			p.counters[i].Max = p.limits[i].Max
		}
		q.decide(d, p, res.Counters, false)
		denyPerUse(d, capIndex)
		return false
	case !res.Applied:
		q.decide(d, p, res.Counters, true)
		if d.Allowed {
			// The store saw a state that refused the use; report it
			// as such on the most used limit.
			d.Allowed, d.Reason = false, ReasonLimit
			if p.u.Amount < 0 {
				d.Reason = ReasonBelowZero
			}
		}
		return false
	}
	q.decide(d, p, res.Counters, false)
	d.RecordID = res.RecordID
	return true
}

// opBuf holds an Op and room for the counters of an action's limits, and
// for the store's answer (Op.Dst).
type opBuf struct {
	op       Op
	counters [MaxLimits]CounterOp
	results  [MaxLimits]Counter
	used     int // the most counters an Op of b had
}

var opPool = sync.Pool{New: func() any { return new(opBuf) }}

// release clears b, so that the pool keeps no caller data, and returns it
// to the pool.
func (b *opBuf) release() {
	clear(b.counters[:b.used])
	clear(b.results[:b.used])
	b.op = Op{}
	b.used = 0
	opPool.Put(b)
}
