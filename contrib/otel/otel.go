// Package quotaotel records what a quota.Quota does as OpenTelemetry
// metrics and spans. It is a module of its own, so that an app that does
// not use OpenTelemetry does not depend on it:
//
//	obs, err := quotaotel.NewObserver() // the global providers
//	if err != nil {
//		return err
//	}
//	q, err := quota.New(store, quota.Config{Plans: plans, Observer: obs})
//
// # Metrics
//
//   - quota.decisions (counter, {decision}): every Check, Consume, Track
//     and Reserve, with the attributes quota.method (check, consume,
//     track, reserve), quota.action, quota.plan, quota.outcome (allowed,
//     denied, replayed, error) and, for a denial, quota.reason
//     (limit_exceeded, per_use_cap, below_zero, feature_not_in_plan).
//   - quota.store.duration (histogram, s): every call of the Quota to its
//     store, with quota.store.operation (Apply, Counters, Commit, Cancel,
//     GetSubscription, ...) and, when the call returned an error,
//     error.type (see below).
//   - quota.notification.deliveries (counter, {delivery}): every attempt
//     to deliver a notification to quota.Config.Notify, with
//     quota.action, quota.level and quota.delivery.outcome (delivered or
//     failed); failures are the deliveries whose outcome is failed.
//
// No metric has the subject as an attribute: subjects are unbounded.
//
// # Spans
//
// Each engine call is a span, named for the method: quota.Check,
// quota.Consume, quota.Track, quota.Reserve, quota.Commit,
// quota.Cancel, and the other calls that read or write the store,
// quota.Subscribe, quota.SchedulePlan, quota.Subscription,
// quota.HasFeature, quota.Limits, quota.Usage, quota.Series,
// quota.TopSubjects, quota.History and quota.Prune; a child of the span
// in the caller's context, with quota.method, quota.action where the
// call has one (a use's, a query's filter) and quota.amount
// (quota.reservation.id for Commit and Cancel), and once decided (Check,
// Consume, Track, Reserve) quota.plan, quota.outcome, quota.reason and
// quota.level. Each call to the store is a child span of the call that
// made it, named quota.store.<operation> (quota.store.Apply), with the
// store call's own start and end times; the context handed to the store
// carries the call's span, so that spans the store's database driver
// starts nest under it too. Each notification delivery is a span,
// quota.notify, with its attempt. An engine call that returns an error,
// and a store call that fails (error.type unavailable, timeout,
// canceled, deadline_exceeded or _OTHER), have status Error; a store's
// answer (error.type no_subscription, reservation_not_found, ...) is not
// a failure and leaves the status unset. A denial is not an error.
// Error messages, which may name the subject, are recorded as the status
// description; the subject itself is an attribute only with
// WithSubjectAttribute.
package quotaotel

import (
	"context"
	"errors"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/quotakit/quota"
)

// ScopeName is the instrumentation scope of the meter and the tracer.
const ScopeName = "github.com/quotakit/quota/contrib/otel"

// The attribute keys.
const (
	AttrMethod         = attribute.Key("quota.method")
	AttrSubject        = attribute.Key("quota.subject")
	AttrAction         = attribute.Key("quota.action")
	AttrPlan           = attribute.Key("quota.plan")
	AttrAmount         = attribute.Key("quota.amount")
	AttrOutcome        = attribute.Key("quota.outcome")
	AttrReason         = attribute.Key("quota.reason")
	AttrLevel          = attribute.Key("quota.level")
	AttrReservation    = attribute.Key("quota.reservation.id")
	AttrStoreOperation = attribute.Key("quota.store.operation")
	AttrStoreBatch     = attribute.Key("quota.store.batch_size")
	AttrDelivery       = attribute.Key("quota.delivery.outcome")
	AttrAttempt        = attribute.Key("quota.notification.attempt")
	AttrErrorType      = attribute.Key("error.type")
)

// StoreDurationBuckets are the bucket boundaries, in seconds, of the
// quota.store.duration histogram: from 50 µs (an in-memory store) to 10 s
// (past quota.DefaultStoreTimeout).
var StoreDurationBuckets = []float64{
	0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
	0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// Option configures NewObserver.
type Option func(*config)

type config struct {
	mp       metric.MeterProvider
	tp       trace.TracerProvider
	subjects bool
}

// WithMeterProvider records the metrics with mp. Default
// otel.GetMeterProvider(), as it is when NewObserver is called.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.mp = mp }
}

// WithTracerProvider records the spans with tp. Default
// otel.GetTracerProvider(), as it is when NewObserver is called.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tp = tp }
}

// WithSubjectAttribute adds the subject to the spans of the engine calls,
// as quota.subject. Default off: a subject names a user, an org or an
// API key. Metrics never carry it.
func WithSubjectAttribute() Option {
	return func(c *config) { c.subjects = true }
}

// observer holds the instruments.
type observer struct {
	tracer     trace.Tracer
	decisions  metric.Int64Counter
	storeTime  metric.Float64Histogram
	deliveries metric.Int64Counter
	subjects   bool

	// decisionAttrs and storeAttrs cache the attribute sets of the
	// metrics, as measurement options: the sets are as many as the
	// metrics' series, and building one costs more than the
	// measurement. (Maps under a lock rather than sync.Maps, whose
	// keys, as interfaces, would be allocated at each lookup; slices
	// of options, which a variadic call would allocate.)
	decisionAttrs cache[decisionKey, []metric.AddOption]
	storeAttrs    cache[storeKey, []metric.RecordOption]
}

// cache is a map safe for concurrent use, for keys that are few and
// read often.
type cache[K comparable, V any] struct {
	mu sync.RWMutex
	m  map[K]V
}

func (c *cache[K, V]) load(key K) (V, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	v, ok := c.m[key]
	return v, ok
}

func (c *cache[K, V]) store(key K, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[K]V)
	}
	c.m[key] = v
}

type decisionKey struct {
	method, action, plan string
	outcome              quota.Outcome
	reason               quota.Reason
}

type storeKey struct{ op, errorType string }

// NewObserver returns a quota.Observer that records the metrics and
// spans described in the package documentation. It fails only if an
// instrument cannot be created. The Observer is safe for concurrent use,
// as quota.Observer requires; its cost per engine call is that of the
// providers (a no-op provider costs next to nothing; see
// BenchmarkConsume for the SDK's).
func NewObserver(opts ...Option) (*quota.Observer, error) {
	var c config
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	meter := c.mp.Meter(ScopeName)
	o := &observer{tracer: c.tp.Tracer(ScopeName), subjects: c.subjects}
	var err, e error
	o.decisions, e = meter.Int64Counter("quota.decisions",
		metric.WithUnit("{decision}"),
		metric.WithDescription("Decisions of Check, Consume, Track and Reserve, by method, action, plan and outcome."))
	err = errors.Join(err, e)
	o.storeTime, e = meter.Float64Histogram("quota.store.duration",
		metric.WithUnit("s"),
		metric.WithDescription("Duration of the calls of the Quota to its store, by operation."),
		metric.WithExplicitBucketBoundaries(StoreDurationBuckets...))
	err = errors.Join(err, e)
	o.deliveries, e = meter.Int64Counter("quota.notification.deliveries",
		metric.WithUnit("{delivery}"),
		metric.WithDescription("Attempts to deliver a notification, by outcome: delivered or failed."))
	err = errors.Join(err, e)
	if err != nil {
		return nil, err
	}
	return &quota.Observer{
		Call:      o.call,
		Decision:  o.decision,
		StoreCall: o.storeCall,
		Delivery:  o.delivery,
	}, nil
}

// spanNames are the spans of the engine calls, by quota.CallEvent.Method.
var spanNames = map[string]string{
	quota.MethodCheck:   "quota.Check",
	quota.MethodConsume: "quota.Consume",
	quota.MethodTrack:   "quota.Track",
	quota.MethodReserve: "quota.Reserve",
	quota.MethodCommit:  "quota.Commit",
	quota.MethodCancel:  "quota.Cancel",

	quota.MethodSubscribe:    "quota.Subscribe",
	quota.MethodSchedulePlan: "quota.SchedulePlan",
	quota.MethodSubscription: "quota.Subscription",
	quota.MethodHasFeature:   "quota.HasFeature",
	quota.MethodLimits:       "quota.Limits",
	quota.MethodUsage:        "quota.Usage",
	quota.MethodSeries:       "quota.Series",
	quota.MethodTopSubjects:  "quota.TopSubjects",
	quota.MethodHistory:      "quota.History",
	quota.MethodPrune:        "quota.Prune",
}

func (o *observer) call(ctx context.Context, e quota.CallEvent) (context.Context, func(error)) {
	name := spanNames[e.Method]
	if name == "" {
		name = "quota." + e.Method
	}
	ctx, span := o.tracer.Start(ctx, name) // SpanKindInternal
	if span.IsRecording() {
		span.SetAttributes(AttrMethod.String(e.Method))
		if e.Action != "" {
			span.SetAttributes(AttrAction.String(e.Action))
		}
		if e.Reservation != "" {
			span.SetAttributes(AttrReservation.String(e.Reservation))
		}
		if e.Amount != 0 {
			span.SetAttributes(AttrAmount.Int64(e.Amount))
		}
		if o.subjects && e.Subject != "" {
			span.SetAttributes(AttrSubject.String(e.Subject))
		}
	}
	return ctx, func(err error) {
		if err != nil {
			span.SetAttributes(AttrErrorType.String(errorType(err)))
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
}

func (o *observer) decision(ctx context.Context, e quota.DecisionEvent) {
	key := decisionKey{e.Method, e.Action, e.Plan, e.Outcome, e.Reason}
	opt, ok := o.decisionAttrs.load(key)
	if !ok {
		attrs := []attribute.KeyValue{
			AttrMethod.String(e.Method),
			AttrAction.String(e.Action),
			AttrPlan.String(e.Plan),
			AttrOutcome.String(string(e.Outcome)),
		}
		if e.Reason != quota.ReasonNone {
			attrs = append(attrs, AttrReason.String(string(e.Reason)))
		}
		opt = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(attrs...))}
		o.decisionAttrs.store(key, opt)
	}
	o.decisions.Add(ctx, 1, opt...)
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetAttributes(AttrPlan.String(e.Plan), AttrOutcome.String(string(e.Outcome)))
		if e.Reason != quota.ReasonNone {
			span.SetAttributes(AttrReason.String(string(e.Reason)))
		}
		if e.Outcome != quota.OutcomeError {
			span.SetAttributes(AttrLevel.String(e.Level.String()))
		}
	}
}

// storeOption returns the attributes of a store call's measurement.
func (o *observer) storeOption(op, typ string) []metric.RecordOption {
	key := storeKey{op, typ}
	if opt, ok := o.storeAttrs.load(key); ok {
		return opt
	}
	attrs := []attribute.KeyValue{AttrStoreOperation.String(op)}
	if typ != "" {
		attrs = append(attrs, AttrErrorType.String(typ))
	}
	opt := []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attrs...))}
	o.storeAttrs.store(key, opt)
	return opt
}

func (o *observer) storeCall(ctx context.Context, e quota.StoreEvent) {
	var typ string
	if e.Err != nil {
		typ = errorType(e.Err)
	}
	o.storeTime.Record(ctx, e.Duration.Seconds(), o.storeOption(e.Operation, typ)...)
	if !trace.SpanFromContext(ctx).IsRecording() {
		// A call that is not sampled, or a store call outside any
		// engine call (the Quota's own work: releasing or sweeping
		// holds, delivering notifications): no span, rather than a
		// trace of its own.
		return
	}
	_, span := o.tracer.Start(ctx, "quota.store."+e.Operation,
		trace.WithTimestamp(e.Start),
		trace.WithAttributes(AttrStoreOperation.String(e.Operation), AttrStoreBatch.Int(e.Batch)))
	if e.Err != nil {
		span.SetAttributes(AttrErrorType.String(typ))
		if isFailure(e.Err) {
			span.SetStatus(codes.Error, e.Err.Error())
		}
	}
	span.End(trace.WithTimestamp(e.Start.Add(e.Duration)))
}

func (o *observer) delivery(ctx context.Context, e quota.DeliveryEvent) {
	outcome := "delivered"
	if e.Err != nil {
		outcome = "failed"
	}
	o.deliveries.Add(ctx, 1, metric.WithAttributes(
		AttrAction.String(e.Notification.Action),
		AttrLevel.String(e.Notification.Level.String()),
		AttrDelivery.String(outcome),
	))
	_, span := o.tracer.Start(ctx, "quota.notify",
		trace.WithTimestamp(e.Start),
		trace.WithAttributes(
			AttrAction.String(e.Notification.Action),
			AttrLevel.String(e.Notification.Level.String()),
			AttrAttempt.Int(e.Attempt),
			AttrDelivery.String(outcome),
		))
	if e.Err != nil {
		span.SetStatus(codes.Error, e.Err.Error())
	}
	span.End(trace.WithTimestamp(e.Start.Add(e.Duration)))
}

// isFailure reports whether err, returned by a store call, is a failure
// rather than one of the store's answers.
func isFailure(err error) bool {
	switch errorType(err) {
	case "unavailable", "timeout", "canceled", "deadline_exceeded", "_OTHER":
		return true
	}
	return false
}

// answers name the store's answers and the engine's errors that are
// worth telling apart, for error.type.
var answers = []struct {
	err  error
	name string
}{
	{quota.ErrNoSubscription, "no_subscription"},
	{quota.ErrReservationNotFound, "reservation_not_found"},
	{quota.ErrReservationExpired, "reservation_expired"},
	{quota.ErrIdempotencyConflict, "idempotency_conflict"},
	{quota.ErrClosed, "closed"},
	{quota.ErrOverflow, "overflow"},
	{quota.ErrUnknownPlan, "unknown_plan"},
	{quota.ErrUnknownAction, "unknown_action"},
	{quota.ErrInvalidAmount, "invalid_input"},
	{quota.ErrInvalidSubject, "invalid_input"},
	{quota.ErrInvalidAction, "invalid_input"},
	{quota.ErrInvalidKey, "invalid_input"},
	{quota.ErrInvalidName, "invalid_input"},
	{quota.ErrInvalidMetadata, "invalid_input"},
	{quota.ErrInvalidSubscription, "invalid_input"},
	{quota.ErrInvalidCursor, "invalid_input"},
	{errors.ErrUnsupported, "unsupported"},
}

// errorType classifies err for the error.type attribute: a bounded set
// of names, "_OTHER" for the rest, as OpenTelemetry's semantic
// conventions ask.
func errorType(err error) string {
	switch {
	case errors.Is(err, quota.ErrStoreUnavailable):
		if errors.Is(err, context.DeadlineExceeded) {
			return "timeout"
		}
		return "unavailable"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline_exceeded"
	}
	for _, a := range answers {
		if errors.Is(err, a.err) {
			return a.name
		}
	}
	return "_OTHER"
}
