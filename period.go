package quota

import (
	"fmt"
	"strconv"
	"time"
)

// Period is the window over which a counter limit accumulates before it
// resets. The zero value, PeriodNone, never resets: it makes an allocation
// limit (storage bytes, team seats) that goes up with use and down with
// release.
type Period uint8

// The periods. Hours, days and weeks begin in the subscription's time zone
// (weeks on Monday). Months and years begin on the billing anchor's day of
// month, clamped to the length of short months, at midnight in the
// subscription's time zone.
const (
	// PeriodNone never resets: it makes an allocation limit.
	PeriodNone Period = iota
	// PeriodHour resets at every whole hour of the subscription's time
	// zone.
	PeriodHour
	// PeriodDay resets at the start of every day in the subscription's
	// time zone.
	PeriodDay
	// PeriodWeek resets every Monday at midnight in the subscription's
	// time zone.
	PeriodWeek
	// PeriodMonth resets every month on the billing anchor's day.
	PeriodMonth
	// PeriodYear resets every year on the billing anchor's day and month.
	PeriodYear
)

var periodNames = [...]string{
	PeriodNone:  "none",
	PeriodHour:  "hour",
	PeriodDay:   "day",
	PeriodWeek:  "week",
	PeriodMonth: "month",
	PeriodYear:  "year",
}

// String returns the period's name: "none", "hour", "day", "week", "month"
// or "year".
func (p Period) String() string {
	if int(p) < len(periodNames) {
		return periodNames[p]
	}
	return "Period(" + strconv.Itoa(int(p)) + ")"
}

// ParsePeriod returns the period named s, as String spells it.
func ParsePeriod(s string) (Period, error) {
	for p, name := range periodNames {
		if s == name {
			return Period(p), nil
		}
	}
	return 0, fmt.Errorf("quota: unknown period %q (want none, hour, day, week, month or year): %w", s, ErrInvalidPlan)
}

// MarshalText implements encoding.TextMarshaler.
func (p Period) MarshalText() ([]byte, error) {
	if !p.valid() {
		return nil, fmt.Errorf("quota: invalid period %d: %w", p, ErrInvalidPlan)
	}
	return []byte(p.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (p *Period) UnmarshalText(b []byte) error {
	v, err := ParsePeriod(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// valid reports whether p is one of the periods.
func (p Period) valid() bool { return int(p) < len(periodNames) }

// window returns the window [start, end) of period p that holds t, for a
// subscription anchored at anchor whose days begin in loc. Both are UTC.
// PeriodNone has no window: it returns two zero times.
//
// An hour window begins at each instant at which the wall clock in loc
// reads a whole hour, so that it lasts an hour except where the offset
// changes by a fraction of an hour (Australia/Lord_Howe): when clocks go
// back, the repeated hour is two windows, not one of two hours.
//
// Day, week, month and year windows begin at the first instant at which
// the wall clock reads their local midnight or later: when clocks skip
// midnight (America/Santiago), the day begins when they resume; when they
// repeat it (America/Havana), at its first occurrence. Their boundaries
// b(n) are computed from the anchor or the calendar, never from the
// previous window, so that months never drift, and b is non-decreasing,
// so that windows tile time with no gap or overlap. A day that a zone
// skips entirely (Pacific/Apia, 2011-12-30) has no window.
func window(p Period, t, anchor time.Time, loc *time.Location) (start, end time.Time) {
	switch p {
	case PeriodNone:
		return time.Time{}, time.Time{}
	case PeriodHour:
		return hourStart(t, loc).UTC(), hourEnd(t, loc).UTC()
	}
	lt := t.In(loc)
	y, m, d := lt.Date()
	day := civilDay(y, m, d)
	var b func(n int) time.Time
	var n int
	switch p {
	case PeriodDay:
		b = func(n int) time.Time { return midnight(1970, 1, 1+n, loc) }
		n = day
	case PeriodWeek:
		// 1970-01-05 was a Monday.
		b = func(n int) time.Time { return midnight(1970, 1, 5+7*n, loc) }
		n = floorDiv(day-4, 7)
	case PeriodMonth, PeriodYear:
		ay, am, ad := anchor.In(loc).Date()
		step := 1
		if p == PeriodYear {
			step = 12
		}
		base := ay*12 + int(am) - 1
		b = func(n int) time.Time {
			mi := base + n*step
			yy, mm := floorDiv(mi, 12), time.Month(mi-floorDiv(mi, 12)*12+1)
			dd := min(ad, daysIn(yy, mm))
			return midnight(yy, mm, dd, loc)
		}
		n = floorDiv(y*12+int(m)-1-base, step)
	default:
		panic("quota: invalid period " + p.String())
	}
	for b(n).After(t) {
		n--
	}
	for !b(n + 1).After(t) {
		n++
	}
	return b(n).UTC(), b(n + 1).UTC()
}

// midnight returns the first instant at which the wall clock in loc reads
// y-m-d 00:00 or later (the date normalized as by time.Date). It differs
// from time.Date, which leaves unspecified which instant it returns for a
// wall time that a zone skips or repeats, only at such times.
func midnight(y int, m time.Month, d int, loc *time.Location) time.Time {
	want := time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
	t := time.Date(y, m, d, 0, 0, 0, 0, loc)
	zs, ze := t.ZoneBounds()
	switch w := wallClock(t); {
	case w.Before(want) && !ze.IsZero():
		// Clocks skip midnight and t lies before the jump: the day
		// begins when they resume.
		return ze
	case w.After(want) && !zs.IsZero():
		// The same, with t after the jump.
		return zs
	}
	if !zs.IsZero() {
		// Clocks may have read midnight once already, under the offset
		// in force before t's.
		_, off := zs.Add(-1).Zone()
		if e := want.Add(-time.Duration(off) * time.Second).In(loc); e.Before(zs) && wallClock(e).Equal(want) {
			return e
		}
	}
	return t
}

// wallClock returns the wall clock reading of t, as a time in UTC.
func wallClock(t time.Time) time.Time {
	y, m, d := t.Date()
	hh, mm, ss := t.Clock()
	return time.Date(y, m, d, hh, mm, ss, t.Nanosecond(), time.UTC)
}

// sinceWallHour returns how long after a whole hour of its wall clock t is.
func sinceWallHour(t time.Time) time.Duration {
	return time.Duration(t.Minute())*time.Minute + time.Duration(t.Second())*time.Second + time.Duration(t.Nanosecond())
}

// hourStart returns the last instant at or before t at which the wall clock
// in loc reads a whole hour.
func hourStart(t time.Time, loc *time.Location) time.Time {
	for {
		lt := t.In(loc)
		s := lt.Add(-sinceWallHour(lt))
		zs, _ := lt.ZoneBounds()
		if zs.IsZero() || !s.Before(zs) {
			return s
		}
		// No whole hour since the offset last changed: look before.
		t = zs.Add(-time.Nanosecond)
	}
}

// hourEnd returns the first instant after t at which the wall clock in loc
// reads a whole hour.
func hourEnd(t time.Time, loc *time.Location) time.Time {
	lt := t.In(loc)
	e := lt.Add(time.Hour - sinceWallHour(lt))
	for {
		_, ze := lt.ZoneBounds()
		if ze.IsZero() || e.Before(ze) {
			return e
		}
		// The offset changes first: the first whole hour from then on.
		lt = ze
		d := sinceWallHour(lt)
		if d == 0 {
			return lt
		}
		e = lt.Add(time.Hour - d)
	}
}

// civilDay returns the number of days from 1970-01-01 to y-m-d.
func civilDay(y int, m time.Month, d int) int {
	return int(time.Date(y, m, d, 0, 0, 0, 0, time.UTC).Unix() / 86400)
}

func daysIn(y int, m time.Month) int {
	return time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

func floorDiv(a, b int) int {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}
