package quota

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"
)

// MaxSeriesBuckets bounds the number of buckets one Series call may span.
const MaxSeriesBuckets = 10_000

// SeriesQuery selects usage over time, for charts and analytics.
type SeriesQuery struct {
	// Subject selects one subject; "" selects every subject (an admin
	// view).
	Subject string
	// Action selects one action; "" selects every action.
	Action string
	// From and To bound the range [From, To). To is required; so is
	// From, unless Last is set.
	From, To time.Time
	// Last, with a zero From, selects the Last whole buckets of Step
	// that end with the one holding To: "the last 7 days, today
	// included". At most MaxSeriesBuckets.
	Last int
	// Step is the bucket: PeriodHour, PeriodDay, PeriodWeek or
	// PeriodMonth (calendar months). Default PeriodDay.
	Step Period
	// TimeZone is the IANA zone in which buckets begin. Default: the
	// subject's time zone, or UTC when Subject is "".
	TimeZone string
	// ByAction splits every bucket by action.
	ByAction bool
	// Dense includes buckets without usage, with zero amounts. With
	// ByAction, it does so for every action that has usage in the range,
	// every action of Actions and, when Subject is set and Actions is
	// nil, every action of the subject's plan and overrides.
	Dense bool
	// Actions are actions to fill with zeros under Dense and ByAction.
	// Setting it (and TimeZone) spares Series a read of the subject's
	// subscription.
	Actions []string
}

// Point is the usage in one bucket of a series.
type Point struct {
	// Start and End bound the bucket, clipped to the query's range.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Action is the action, when the query asked ByAction.
	Action string `json:"action,omitempty"`
	// Amount is the sum of the amounts of the records in the bucket.
	Amount int64 `json:"amount"`
	// Count is the number of records in the bucket.
	Count int64 `json:"count"`
}

// Series sums the ledger over time: the usage of one subject or of all,
// of one action or of all, in buckets of a calendar period in a time zone.
// Stores that are a Summer compute the sums (SQL stores in SQL, with
// their indexes); points come ordered by Start, then Action.
func (q *Quota) Series(ctx context.Context, sq SeriesQuery) (_ []Point, err error) {
	if q.obs != nil {
		var end func(error)
		ctx, end = q.startCall(ctx, CallEvent{Method: MethodSeries, Subject: sq.Subject, Action: sq.Action})
		defer func() { end(err) }()
	}
	if err := q.begin(ctx); err != nil {
		return nil, errorf("series: %w", err)
	}
	if err := q.checkSeries(&sq); err != nil {
		return nil, errorf("series: %w", err)
	}
	zone, planned, err := q.seriesZone(ctx, &sq)
	if err != nil {
		return nil, errorf("series %q: %w", sq.Subject, err)
	}
	loc, err := q.location(zone)
	if err != nil {
		return nil, errorf("series: %w", err)
	}
	if sq.Last > 0 {
		sq.From, sq.To = lastBuckets(sq.Step, sq.To, sq.Last, loc)
	}
	bounds, err := seriesBounds(sq.Step, sq.From, sq.To, loc)
	if err != nil {
		return nil, errorf("series: %w", err)
	}
	sums, err := q.sums(ctx, SumQuery{Subject: sq.Subject, Action: sq.Action, Bounds: bounds, ByAction: sq.ByAction})
	if err != nil {
		return nil, errorf("series: %w", err)
	}
	points, err := seriesPoints(&sq, bounds, sums, planned)
	if err != nil {
		return nil, errorf("series: %w", err)
	}
	return points, nil
}

// checkSeries validates sq and fills in its defaults.
func (q *Quota) checkSeries(sq *SeriesQuery) error {
	if err := q.checkFilter(sq.Subject, sq.Action); err != nil {
		return err
	}
	if sq.Step == PeriodNone {
		sq.Step = PeriodDay
	}
	if sq.Step > PeriodMonth {
		return fmt.Errorf("step %v: want hour, day, week or month", sq.Step)
	}
	if sq.Last < 0 || sq.Last > MaxSeriesBuckets || (sq.Last > 0 && !sq.From.IsZero()) {
		return fmt.Errorf("last %d buckets: want 0 to %d, with a zero From", sq.Last, MaxSeriesBuckets)
	}
	if sq.To.IsZero() || (sq.Last == 0 && (sq.From.IsZero() || !sq.From.Before(sq.To))) {
		return fmt.Errorf("want From before To, got [%v, %v)", sq.From, sq.To)
	}
	for _, a := range sq.Actions {
		if err := checkName(a, ErrInvalidAction); err != nil {
			return err
		}
	}
	return nil
}

// seriesZone returns the zone of sq's buckets and the actions to fill
// with zeros, reading the subject's subscription only for what sq does
// not say.
func (q *Quota) seriesZone(ctx context.Context, sq *SeriesQuery) (zone string, planned []string, err error) {
	zone, planned = sq.TimeZone, sq.Actions
	if sq.Subject == "" || (zone != "" && (planned != nil || !sq.Dense || !sq.ByAction)) {
		return zone, planned, nil
	}
	s, err := q.resolve(ctx, sq.Subject, q.now())
	switch {
	case err == nil:
		if planned == nil {
			planned = s.actions()
		}
		if zone == "" {
			zone = s.sub.TimeZone
		}
	case errors.Is(err, ErrNoSubscription):
		// A subject without a subscription may still have records.
	default:
		return "", nil, err
	}
	return zone, planned, nil
}

// lastBuckets returns the range of the last n windows of step in loc that
// end with the one holding to.
func lastBuckets(step Period, to time.Time, n int, loc *time.Location) (time.Time, time.Time) {
	anchor := calendarAnchor(loc)
	from, end := window(step, to, anchor, loc)
	for range n - 1 {
		from, _ = window(step, from.Add(-time.Nanosecond), anchor, loc)
	}
	return from, end
}

// seriesCell is one bucket (and action) of a series.
type seriesCell struct {
	bucket int
	action string
}

// seriesPoints turns the sums of the buckets between bounds into points,
// filling empty buckets with zeros under sq.Dense.
func seriesPoints(sq *SeriesQuery, bounds []time.Time, sums []Sum, planned []string) ([]Point, error) {
	got := make(map[seriesCell]Sum, len(sums))
	actions := map[string]bool{}
	for _, s := range sums {
		if s.Bucket < 0 || s.Bucket >= len(bounds)-1 {
			return nil, fmt.Errorf("store returned bucket %d of %d", s.Bucket, len(bounds)-1)
		}
		if !sq.ByAction {
			s.Action = ""
		}
		c := seriesCell{s.Bucket, s.Action}
		prev := got[c]
		prev.Amount += s.Amount
		prev.Count += s.Count
		got[c] = prev
		actions[s.Action] = true
	}
	names := seriesActions(sq, actions, planned)
	var points []Point
	for b := 0; b < len(bounds)-1; b++ {
		for _, a := range names {
			s, ok := got[seriesCell{b, a}]
			if !ok && !sq.Dense {
				continue
			}
			points = append(points, Point{Start: bounds[b], End: bounds[b+1], Action: a, Amount: s.Amount, Count: s.Count})
		}
	}
	return points, nil
}

// seriesActions returns the actions of a series' points, sorted: those
// with usage and, under Dense, those to fill with zeros; one "" without
// ByAction.
func seriesActions(sq *SeriesQuery, used map[string]bool, planned []string) []string {
	if !sq.ByAction {
		return []string{""}
	}
	if sq.Dense {
		if sq.Action != "" {
			used[sq.Action] = true
		} else {
			for _, a := range planned {
				used[a] = true
			}
		}
	}
	names := make([]string, 0, len(used))
	for a := range used {
		names = append(names, a)
	}
	sort.Strings(names)
	return names
}

// calendarAnchor is the anchor of calendar months and weeks in loc: the
// first of a month.
func calendarAnchor(loc *time.Location) time.Time {
	return time.Date(2000, time.January, 1, 0, 0, 0, 0, loc)
}

// seriesBounds returns the bucket boundaries of [from, to): from, every
// start of a calendar window of step in loc strictly inside, and to.
func seriesBounds(step Period, from, to time.Time, loc *time.Location) ([]time.Time, error) {
	anchor := calendarAnchor(loc)
	bounds := []time.Time{from.UTC()}
	for t := from; ; {
		_, end := window(step, t, anchor, loc)
		if !end.Before(to) {
			break
		}
		if len(bounds) >= MaxSeriesBuckets { // and to: one more bucket
			return nil, fmt.Errorf("more than %d buckets of a %s", MaxSeriesBuckets, step)
		}
		bounds = append(bounds, end)
		t = end
	}
	return append(bounds, to.UTC()), nil
}

// TopQuery selects the subjects that used an action most in a range.
type TopQuery struct {
	// Action is the action ranked. Required.
	Action string
	// From and To bound the range [From, To). Required.
	From, To time.Time
	// Limit is how many subjects to return, from 1 to 1000. Default 10.
	Limit int
}

// SubjectTotal is one subject's total in a TopQuery.
type SubjectTotal struct {
	Subject string `json:"subject"`
	Amount  int64  `json:"amount"`
	Count   int64  `json:"count"`
}

// TopSubjects returns the subjects with the largest total amount of
// tq.Action in the range, largest first (ties by subject), at most
// tq.Limit of them.
func (q *Quota) TopSubjects(ctx context.Context, tq TopQuery) (_ []SubjectTotal, err error) {
	if q.obs != nil {
		var end func(error)
		ctx, end = q.startCall(ctx, CallEvent{Method: MethodTopSubjects, Action: tq.Action})
		defer func() { end(err) }()
	}
	if err := q.begin(ctx); err != nil {
		return nil, errorf("top subjects: %w", err)
	}
	if err := checkName(tq.Action, ErrInvalidAction); err != nil {
		return nil, errorf("top subjects: %w", err)
	}
	if tq.From.IsZero() || tq.To.IsZero() || !tq.From.Before(tq.To) {
		return nil, errorf("top subjects: want From before To, got [%v, %v)", tq.From, tq.To)
	}
	if tq.Limit == 0 {
		tq.Limit = 10
	}
	if tq.Limit < 0 || tq.Limit > 1000 {
		return nil, errorf("top subjects: limit %d: want 1 to 1000", tq.Limit)
	}
	tq.From, tq.To = tq.From.UTC(), tq.To.UTC()
	top, err := q.top(ctx, tq)
	if err != nil {
		return nil, errorf("top subjects %q: %w", tq.Action, err)
	}
	return top, nil
}

func (q *Quota) checkFilter(subject, action string) error {
	if subject != "" {
		if err := checkName(subject, ErrInvalidSubject); err != nil {
			return err
		}
	}
	if action != "" {
		if err := checkName(action, ErrInvalidAction); err != nil {
			return err
		}
	}
	return nil
}

// recordBatch is how many records at a time the Quota reads to sum or rank
// for a store that is not a Summer or a Ranker.
const recordBatch = 4096

// eachRecord calls f for every record rq selects, reading them in batches.
func (q *Quota) eachRecord(ctx context.Context, rq RecordQuery, f func(*Record)) error {
	rq.Limit = recordBatch
	for {
		recs, err := q.store.Records(ctx, rq)
		if err != nil {
			return err
		}
		for i := range recs {
			f(&recs[i])
		}
		if len(recs) < recordBatch {
			return nil
		}
		rq.AfterID = recs[len(recs)-1].ID
	}
}

// sums is Summer.Sums, by the store when it is a Summer, else from its
// records.
func (q *Quota) sums(ctx context.Context, sq SumQuery) ([]Sum, error) {
	if sums, ok, err := q.store.sums(ctx, sq); ok {
		return sums, err
	}
	type cell struct {
		bucket int
		action string
	}
	got := map[cell]*Sum{}
	b := sq.Bounds
	err := q.eachRecord(ctx, RecordQuery{Subject: sq.Subject, Action: sq.Action, From: b[0], To: b[len(b)-1]}, func(r *Record) {
		i := sort.Search(len(b), func(i int) bool { return b[i].After(r.Time) }) - 1
		c := cell{bucket: i}
		if sq.ByAction {
			c.action = r.Action
		}
		s := got[c]
		if s == nil {
			s = &Sum{Bucket: c.bucket, Action: c.action}
			got[c] = s
		}
		s.Amount += r.Amount
		s.Count++
	})
	if err != nil {
		return nil, err
	}
	out := make([]Sum, 0, len(got))
	for _, s := range got {
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b Sum) int {
		if a.Bucket != b.Bucket {
			return a.Bucket - b.Bucket
		}
		return strings.Compare(a.Action, b.Action)
	})
	return out, nil
}

// top is Ranker.Top, by the store when it is a Ranker, else from its
// records.
func (q *Quota) top(ctx context.Context, tq TopQuery) ([]SubjectTotal, error) {
	if top, ok, err := q.store.top(ctx, tq); ok {
		return top, err
	}
	got := map[string]*SubjectTotal{}
	err := q.eachRecord(ctx, RecordQuery{Action: tq.Action, From: tq.From, To: tq.To}, func(r *Record) {
		t := got[r.Subject]
		if t == nil {
			t = &SubjectTotal{Subject: r.Subject}
			got[r.Subject] = t
		}
		t.Amount += r.Amount
		t.Count++
	})
	if err != nil {
		return nil, err
	}
	out := make([]SubjectTotal, 0, len(got))
	for _, t := range got {
		out = append(out, *t)
	}
	slices.SortFunc(out, func(a, b SubjectTotal) int {
		if a.Amount != b.Amount {
			return cmp.Compare(b.Amount, a.Amount)
		}
		return strings.Compare(a.Subject, b.Subject)
	})
	return out[:min(len(out), tq.Limit)], nil
}
