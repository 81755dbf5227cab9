package quota

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
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
	// From and To bound the range [From, To). Required.
	From, To time.Time
	// Step is the bucket: PeriodHour, PeriodDay, PeriodWeek or
	// PeriodMonth (calendar months). Default PeriodDay.
	Step Period
	// TimeZone is the IANA zone in which buckets begin. Default: the
	// subject's time zone, or UTC when Subject is "".
	TimeZone string
	// ByAction splits every bucket by action.
	ByAction bool
	// Dense includes buckets without usage, with zero amounts. With
	// ByAction, it does so for every action that has usage in the range
	// and, when Subject is set, every action of the subject's plan and
	// overrides.
	Dense bool
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
// Stores compute the sums (SQL stores in SQL, with their indexes); points
// come ordered by Start, then Action.
func (q *Quota) Series(ctx context.Context, sq SeriesQuery) ([]Point, error) {
	if err := q.begin(ctx); err != nil {
		return nil, err
	}
	if err := q.checkFilter(sq.Subject, sq.Action); err != nil {
		return nil, fmt.Errorf("quota: series: %w", err)
	}
	if sq.Step == PeriodNone {
		sq.Step = PeriodDay
	}
	if sq.Step > PeriodMonth {
		return nil, fmt.Errorf("quota: series: step %v: want hour, day, week or month", sq.Step)
	}
	if sq.From.IsZero() || sq.To.IsZero() || !sq.From.Before(sq.To) {
		return nil, fmt.Errorf("quota: series: want From before To, got [%v, %v)", sq.From, sq.To)
	}
	var planned []string // the actions of the subject's plan and overrides
	zone := sq.TimeZone
	if sq.Subject != "" {
		s, err := q.resolve(ctx, sq.Subject, q.now())
		switch {
		case err == nil:
			planned = s.actions()
			if zone == "" {
				zone = s.sub.TimeZone
			}
		case errors.Is(err, ErrNoSubscription):
			// A subject without a subscription may still have records.
		default:
			return nil, fmt.Errorf("quota: series %q: %w", sq.Subject, err)
		}
	}
	loc, err := q.location(zone)
	if err != nil {
		return nil, fmt.Errorf("quota: series: %w", err)
	}
	bounds, err := seriesBounds(sq.Step, sq.From, sq.To, loc)
	if err != nil {
		return nil, fmt.Errorf("quota: series: %w", err)
	}
	sums, err := q.store.Sums(ctx, SumQuery{Subject: sq.Subject, Action: sq.Action, Bounds: bounds, ByAction: sq.ByAction})
	if err != nil {
		return nil, fmt.Errorf("quota: series: %w", err)
	}
	type cell struct {
		bucket int
		action string
	}
	got := make(map[cell]Sum, len(sums))
	actions := map[string]bool{}
	for _, s := range sums {
		if s.Bucket < 0 || s.Bucket >= len(bounds)-1 {
			return nil, fmt.Errorf("quota: series: store returned bucket %d of %d", s.Bucket, len(bounds)-1)
		}
		if !sq.ByAction {
			s.Action = ""
		}
		c := cell{s.Bucket, s.Action}
		prev := got[c]
		prev.Amount += s.Amount
		prev.Count += s.Count
		got[c] = prev
		actions[s.Action] = true
	}
	if sq.Dense && sq.ByAction {
		switch {
		case sq.Action != "":
			actions[sq.Action] = true
		default:
			for _, a := range planned {
				actions[a] = true
			}
		}
	}
	names := make([]string, 0, len(actions))
	for a := range actions {
		names = append(names, a)
	}
	sort.Strings(names)
	if !sq.ByAction {
		names = []string{""}
	}
	var points []Point
	for b := 0; b < len(bounds)-1; b++ {
		for _, a := range names {
			s, ok := got[cell{b, a}]
			if !ok && !sq.Dense {
				continue
			}
			points = append(points, Point{Start: bounds[b], End: bounds[b+1], Action: a, Amount: s.Amount, Count: s.Count})
		}
	}
	return points, nil
}

// seriesBounds returns the bucket boundaries of [from, to): from, every
// start of a calendar window of step in loc strictly inside, and to.
func seriesBounds(step Period, from, to time.Time, loc *time.Location) ([]time.Time, error) {
	// Calendar months and weeks: an anchor on the first of a month.
	anchor := time.Date(2000, time.January, 1, 0, 0, 0, 0, loc)
	bounds := []time.Time{from.UTC()}
	for t := from; ; {
		_, end := window(step, t, anchor, loc)
		if !end.Before(to) {
			break
		}
		if len(bounds) > MaxSeriesBuckets {
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
func (q *Quota) TopSubjects(ctx context.Context, tq TopQuery) ([]SubjectTotal, error) {
	if err := q.begin(ctx); err != nil {
		return nil, err
	}
	if err := checkName(tq.Action, ErrInvalidAction); err != nil {
		return nil, fmt.Errorf("quota: top subjects: %w", err)
	}
	if tq.From.IsZero() || tq.To.IsZero() || !tq.From.Before(tq.To) {
		return nil, fmt.Errorf("quota: top subjects: want From before To, got [%v, %v)", tq.From, tq.To)
	}
	if tq.Limit == 0 {
		tq.Limit = 10
	}
	if tq.Limit < 0 || tq.Limit > 1000 {
		return nil, fmt.Errorf("quota: top subjects: limit %d: want 1 to 1000", tq.Limit)
	}
	tq.From, tq.To = tq.From.UTC(), tq.To.UTC()
	top, err := q.store.Top(ctx, tq)
	if err != nil {
		return nil, fmt.Errorf("quota: top subjects %q: %w", tq.Action, err)
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

// SumQuery asks a store to add up records per bucket.
type SumQuery struct {
	// Subject and Action select records; "" selects any.
	Subject, Action string
	// Bounds are ascending instants in UTC, at least two: bucket i is
	// [Bounds[i], Bounds[i+1]).
	Bounds []time.Time
	// ByAction splits each bucket by action.
	ByAction bool
}

// Sum is the total of one bucket (and action) of a SumQuery.
type Sum struct {
	Bucket int
	Action string // "" unless ByAction
	Amount int64
	Count  int64
}

// MaxHistoryPage is the largest page History returns.
const MaxHistoryPage = 1000

// HistoryQuery selects a subject's records, newest first, a page at a
// time.
type HistoryQuery struct {
	// Subject is whose records. Required.
	Subject string
	// Action selects one action; "" selects every action.
	Action string
	// From and To bound the records' Time: From <= Time < To. Zero
	// means unbounded.
	From, To time.Time
	// Limit is the page size, from 1 to MaxHistoryPage. Default 100.
	Limit int
	// Cursor continues after the page that returned it as Next; "" asks
	// for the first (newest) page.
	Cursor string
}

// Page is one page of History.
type Page struct {
	Records []Record `json:"records"`
	// Next is the cursor of the following (older) page; "" on the last
	// page.
	Next string `json:"next,omitempty"`
}

// History returns a subject's records, newest first, a page at a time.
// Pages are cut by record ID, so that walking them while uses go on
// returns every record that existed when the walk began exactly once:
// new records come before the first page, never between pages.
func (q *Quota) History(ctx context.Context, hq HistoryQuery) (Page, error) {
	if err := q.begin(ctx); err != nil {
		return Page{}, err
	}
	if err := checkName(hq.Subject, ErrInvalidSubject); err != nil {
		return Page{}, fmt.Errorf("quota: history: %w", err)
	}
	if err := q.checkFilter("", hq.Action); err != nil {
		return Page{}, fmt.Errorf("quota: history: %w", err)
	}
	if hq.Limit == 0 {
		hq.Limit = 100
	}
	if hq.Limit < 0 || hq.Limit > MaxHistoryPage {
		return Page{}, fmt.Errorf("quota: history: limit %d: want 1 to %d", hq.Limit, MaxHistoryPage)
	}
	var before int64
	if hq.Cursor != "" {
		var err error
		if before, err = parseCursor(hq.Cursor); err != nil {
			return Page{}, fmt.Errorf("quota: history: %w", err)
		}
	}
	// One more than the page tells whether another page follows.
	recs, err := q.store.Records(ctx, RecordQuery{
		Subject:    hq.Subject,
		Action:     hq.Action,
		From:       hq.From,
		To:         hq.To,
		BeforeID:   before,
		Descending: true,
		Limit:      hq.Limit + 1,
	})
	if err != nil {
		return Page{}, fmt.Errorf("quota: history %q: %w", hq.Subject, err)
	}
	var p Page
	if len(recs) > hq.Limit {
		recs = recs[:hq.Limit]
		p.Next = formatCursor(recs[len(recs)-1].ID)
	}
	p.Records = recs
	return p, nil
}

const cursorPrefix = "r1."

func formatCursor(id int64) string { return cursorPrefix + strconv.FormatInt(id, 36) }

func parseCursor(c string) (int64, error) {
	rest, ok := strings.CutPrefix(c, cursorPrefix)
	if !ok {
		return 0, fmt.Errorf("%w: %q", ErrInvalidCursor, c)
	}
	id, err := strconv.ParseInt(rest, 36, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("%w: %q", ErrInvalidCursor, c)
	}
	return id, nil
}

// RollupStep is the granularity of the rollups that Prune folds records
// into: a quarter of an hour, so that the days, weeks and months of every
// time zone in use (whose offsets are whole quarters of an hour) still add
// up exactly.
const RollupStep = 15 * time.Minute

// DefaultPruneBatch is the batch size of Prune when batch is 0.
const DefaultPruneBatch = 1000

// Prune deletes the ledger records whose Time is before the cutoff, batch
// records per store call, folding each into a rollup per subject, action
// and quarter hour (RollupStep) in the same atomic step. Counters (the
// per-period summaries) are untouched, and Series and TopSubjects answer
// from rollups where records are gone, exactly for buckets that begin on
// quarter hours. Records, History and idempotency replays no longer see
// the pruned records. Prune returns how many records it deleted, also
// when ctx ends it early.
func (q *Quota) Prune(ctx context.Context, before time.Time, batch int) (int64, error) {
	if err := q.begin(ctx); err != nil {
		return 0, err
	}
	if before.IsZero() {
		return 0, fmt.Errorf("quota: prune: zero cutoff")
	}
	if batch == 0 {
		batch = DefaultPruneBatch
	}
	if batch < 0 {
		return 0, fmt.Errorf("quota: prune: batch %d: want at least 1", batch)
	}
	var total int64
	for {
		n, err := q.store.Prune(ctx, before.UTC(), batch)
		total += n
		if err != nil {
			return total, fmt.Errorf("quota: prune: %w", err)
		}
		if n < int64(batch) {
			return total, nil
		}
	}
}
