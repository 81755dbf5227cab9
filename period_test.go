package quota

import (
	"encoding/json"
	"errors"
	"testing"
	"time"
	_ "time/tzdata" // the same zone rules on every machine
)

// periodsWithWindows are the periods that have windows.
var periodsWithWindows = []Period{PeriodHour, PeriodDay, PeriodWeek, PeriodMonth, PeriodYear}

func loadLoc(tb testing.TB, name string) *time.Location {
	tb.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		tb.Fatalf("time.LoadLocation(%q): %v", name, err)
	}
	return loc
}

func date(y int, m time.Month, d int) time.Time { return time.Date(y, m, d, 0, 0, 0, 0, time.UTC) }

func rfc3339(tb testing.TB, s string) time.Time {
	tb.Helper()
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		tb.Fatal(err)
	}
	return t.UTC()
}

// checkWindow asserts that window(p, at, anchor, loc) is [wantStart, wantEnd)
// and that both bounds are in UTC.
func checkWindow(tb testing.TB, p Period, at, anchor time.Time, loc *time.Location, wantStart, wantEnd time.Time) {
	tb.Helper()
	s, e := window(p, at, anchor, loc)
	if !s.Equal(wantStart) || !e.Equal(wantEnd) {
		tb.Errorf("window(%v, %v, %v, %v) = [%v, %v); want [%v, %v)", p, at, anchor, loc, s, e, wantStart, wantEnd)
	}
	if s.Location() != time.UTC || e.Location() != time.UTC {
		tb.Errorf("window(%v, %v, %v, %v) = [%v, %v); want times in UTC", p, at, anchor, loc, s, e)
	}
}

// checkWindowAt asserts that the window holding the start, the middle and
// the last nanosecond of [start, end) is [start, end).
func checkWindowAt(tb testing.TB, p Period, anchor time.Time, loc *time.Location, start, end time.Time) {
	tb.Helper()
	for _, at := range []time.Time{start, start.Add(end.Sub(start) / 2), end.Add(-time.Nanosecond)} {
		checkWindow(tb, p, at, anchor, loc, start, end)
	}
}

// monthStarts holds, for each anchor day, the day of the month on which a
// monthly window begins, from January 2023 to January 2026: the anchor day,
// clamped to the length of short months, never drifting.
var monthStarts = map[int][37]int{
	28: {
		28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 2023
		28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 2024
		28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, // 2025
		28,
	},
	29: {
		29, 28, 29, 29, 29, 29, 29, 29, 29, 29, 29, 29,
		29, 29, 29, 29, 29, 29, 29, 29, 29, 29, 29, 29, // 2024 is a leap year
		29, 28, 29, 29, 29, 29, 29, 29, 29, 29, 29, 29,
		29,
	},
	30: {
		30, 28, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30,
		30, 29, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30,
		30, 28, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30,
		30,
	},
	31: {
		31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31,
		31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31,
		31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31,
		31,
	},
}

func TestWindowMonthAnchors(t *testing.T) {
	for _, zone := range []string{"UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"} {
		loc := loadLoc(t, zone)
		for anchorDay, days := range monthStarts {
			// The anchor's time of day does not matter, only its date in
			// the subscription's zone.
			anchor := time.Date(2023, 1, anchorDay, 17, 45, 0, 0, loc).UTC()
			for i := range 36 {
				y, m := 2023+i/12, time.Month(i%12+1)
				start := time.Date(y, m, days[i], 0, 0, 0, 0, loc).UTC()
				end := time.Date(y, m+1, days[i+1], 0, 0, 0, 0, loc).UTC()
				checkWindowAt(t, PeriodMonth, anchor, loc, start, end)
			}
		}
	}
}

func TestWindowMonthAnchor31(t *testing.T) {
	// The sequence DESIGN.md states, spelled out.
	anchor := time.Date(2023, 1, 31, 10, 0, 0, 0, time.UTC)
	starts := []time.Time{
		date(2023, 1, 31), date(2023, 2, 28), date(2023, 3, 31), date(2023, 4, 30),
		date(2023, 5, 31), date(2023, 6, 30), date(2023, 7, 31), date(2023, 8, 31),
		date(2023, 9, 30), date(2023, 10, 31), date(2023, 11, 30), date(2023, 12, 31),
		date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31),
	}
	for i := range len(starts) - 1 {
		checkWindowAt(t, PeriodMonth, anchor, time.UTC, starts[i], starts[i+1])
	}
	// Before the anchor, windows follow the same rule.
	checkWindowAt(t, PeriodMonth, anchor, time.UTC, date(2022, 11, 30), date(2022, 12, 31))
}

func TestWindowMonthAnchorInZone(t *testing.T) {
	// 2023-01-31T23:30Z is 1 February 05:00 in Kolkata: the anchor day is
	// the 1st there, and months begin at midnight IST (18:30 UTC).
	kolkata := loadLoc(t, "Asia/Kolkata")
	anchor := rfc3339(t, "2023-01-31T23:30:00Z")
	checkWindowAt(t, PeriodMonth, anchor, kolkata, rfc3339(t, "2023-02-28T18:30:00Z"), rfc3339(t, "2023-03-31T18:30:00Z"))
	checkWindowAt(t, PeriodMonth, anchor, time.UTC, date(2023, 2, 28), date(2023, 3, 31))
}

func TestWindowYearLeapAnchor(t *testing.T) {
	anchor := time.Date(2024, 2, 29, 8, 0, 0, 0, time.UTC)
	starts := []time.Time{
		date(2023, 2, 28), // before the anchor
		date(2024, 2, 29),
		date(2025, 2, 28),
		date(2026, 2, 28),
		date(2027, 2, 28),
		date(2028, 2, 29),
		date(2029, 2, 28),
	}
	for i := range len(starts) - 1 {
		checkWindowAt(t, PeriodYear, anchor, time.UTC, starts[i], starts[i+1])
	}
}

func TestWindowNone(t *testing.T) {
	s, e := window(PeriodNone, time.Now(), time.Now(), time.UTC)
	if !s.IsZero() || !e.IsZero() {
		t.Errorf("window(none, ...) = [%v, %v); want two zero times", s, e)
	}
}

func TestWindowCalendar(t *testing.T) {
	anchor := date(2020, 6, 15) // irrelevant to hours, days and weeks
	tests := []struct {
		p          Period
		zone       string
		at         string
		start, end string
	}{
		{PeriodHour, "UTC", "2024-05-05T10:59:59Z", "2024-05-05T10:00:00Z", "2024-05-05T11:00:00Z"},
		{PeriodHour, "Asia/Kolkata", "2024-05-05T10:00:00Z", "2024-05-05T09:30:00Z", "2024-05-05T10:30:00Z"},
		{PeriodHour, "Pacific/Chatham", "2024-05-05T10:00:00Z", "2024-05-05T09:15:00Z", "2024-05-05T10:15:00Z"},
		{PeriodDay, "UTC", "2024-02-29T12:00:00Z", "2024-02-29T00:00:00Z", "2024-03-01T00:00:00Z"},
		{PeriodDay, "America/New_York", "2024-01-01T03:00:00Z", "2023-12-31T05:00:00Z", "2024-01-01T05:00:00Z"},
		{PeriodDay, "Asia/Kolkata", "2024-01-01T03:00:00Z", "2023-12-31T18:30:00Z", "2024-01-01T18:30:00Z"},
		// 2024-03-31 is a Sunday; weeks begin on Monday.
		{PeriodWeek, "UTC", "2024-03-31T23:59:59Z", "2024-03-25T00:00:00Z", "2024-04-01T00:00:00Z"},
		{PeriodWeek, "UTC", "2024-04-01T00:00:00Z", "2024-04-01T00:00:00Z", "2024-04-08T00:00:00Z"},
		// The week of the spring change in Berlin is 167 hours long.
		{PeriodWeek, "Europe/Berlin", "2024-03-31T12:00:00Z", "2024-03-24T23:00:00Z", "2024-03-31T22:00:00Z"},
		{PeriodWeek, "America/New_York", "1970-01-01T00:00:00Z", "1969-12-29T05:00:00Z", "1970-01-05T05:00:00Z"},
	}
	for _, tt := range tests {
		loc := loadLoc(t, tt.zone)
		checkWindow(t, tt.p, rfc3339(t, tt.at), anchor, loc, rfc3339(t, tt.start), rfc3339(t, tt.end))
	}
}

// TestWindowClockChanges states where windows begin around changes of the
// clocks, including those that skip or repeat midnight and a skipped day.
func TestWindowClockChanges(t *testing.T) {
	tests := []struct {
		name   string
		p      Period
		zone   string
		anchor string
		starts []string // consecutive window starts; the last one ends the previous window
	}{
		{
			// 01:00 EDT, 01:00 EST (the repeated hour is a window of its own), 02:00 EST.
			"new york back", PeriodHour, "America/New_York", "",
			[]string{"2024-11-03T04:00:00Z", "2024-11-03T05:00:00Z", "2024-11-03T06:00:00Z", "2024-11-03T07:00:00Z", "2024-11-03T08:00:00Z"},
		},
		{
			// 01:00 EST, then 03:00 EDT.
			"new york forward", PeriodHour, "America/New_York", "",
			[]string{"2024-03-10T05:00:00Z", "2024-03-10T06:00:00Z", "2024-03-10T07:00:00Z", "2024-03-10T08:00:00Z"},
		},
		{
			// 01:00 CEST, 02:00 CEST, 02:00 CET, 03:00 CET.
			"berlin back", PeriodHour, "Europe/Berlin", "",
			[]string{"2024-10-26T23:00:00Z", "2024-10-27T00:00:00Z", "2024-10-27T01:00:00Z", "2024-10-27T02:00:00Z", "2024-10-27T03:00:00Z"},
		},
		{
			// 01:00 +10:30 lasts 90 minutes: clocks go from 02:00 to
			// 02:30, so the next whole hour is 03:00 +11.
			"lord howe forward", PeriodHour, "Australia/Lord_Howe", "",
			[]string{"2024-10-05T13:30:00Z", "2024-10-05T14:30:00Z", "2024-10-05T16:00:00Z", "2024-10-05T17:00:00Z"},
		},
		{
			// 01:00 +11 lasts 90 minutes: clocks go from 02:00 back to
			// 01:30, so the next whole hour is 02:00 +10:30.
			"lord howe back", PeriodHour, "Australia/Lord_Howe", "",
			[]string{"2024-04-06T13:00:00Z", "2024-04-06T14:00:00Z", "2024-04-06T15:30:00Z", "2024-04-06T16:30:00Z"},
		},
		{
			// 02:00 +12:45, then 04:00 +13:45: clocks go from 02:45 to
			// 03:45, and hours stay an hour long.
			"chatham forward", PeriodHour, "Pacific/Chatham", "",
			[]string{"2024-09-28T12:15:00Z", "2024-09-28T13:15:00Z", "2024-09-28T14:15:00Z", "2024-09-28T15:15:00Z"},
		},
		{
			"chatham back", PeriodHour, "Pacific/Chatham", "",
			[]string{"2024-04-06T12:15:00Z", "2024-04-06T13:15:00Z", "2024-04-06T14:15:00Z", "2024-04-06T15:15:00Z"},
		},
		{
			// 31 March lasts 23 hours in Berlin, 27 October 25.
			"berlin spring day", PeriodDay, "Europe/Berlin", "",
			[]string{"2024-03-29T23:00:00Z", "2024-03-30T23:00:00Z", "2024-03-31T22:00:00Z"},
		},
		{
			"berlin autumn day", PeriodDay, "Europe/Berlin", "",
			[]string{"2024-10-25T22:00:00Z", "2024-10-26T22:00:00Z", "2024-10-27T23:00:00Z"},
		},
		{
			// Santiago skips midnight on 8 September 2024 (24:00 -04 is
			// 01:00 -03): that day begins at 01:00 and lasts 23 hours.
			"santiago skips midnight", PeriodDay, "America/Santiago", "",
			[]string{"2024-09-07T04:00:00Z", "2024-09-08T04:00:00Z", "2024-09-09T03:00:00Z"},
		},
		{
			// Havana skips midnight on 10 March 2024 (00:00 CST is 01:00
			// CDT) and repeats it on 3 November 2024 (01:00 CDT is 00:00
			// CST): the day begins at the first midnight and lasts 25 hours.
			"havana skips midnight", PeriodDay, "America/Havana", "",
			[]string{"2024-03-09T05:00:00Z", "2024-03-10T05:00:00Z", "2024-03-11T04:00:00Z"},
		},
		{
			"havana repeats midnight", PeriodDay, "America/Havana", "",
			[]string{"2024-11-02T04:00:00Z", "2024-11-03T04:00:00Z", "2024-11-04T05:00:00Z"},
		},
		{
			// A month anchored on the 10th in Havana begins on 10 March
			// 2024 at 01:00 CDT, the first instant of that day.
			"havana month", PeriodMonth, "America/Havana", "2024-01-10T12:00:00Z",
			[]string{"2024-02-10T05:00:00Z", "2024-03-10T05:00:00Z", "2024-04-10T04:00:00Z"},
		},
		{
			// Samoa skipped Friday 30 December 2011: Thursday ended at
			// 24:00 -10, which was Saturday 00:00 +14.
			"apia skips a day", PeriodDay, "Pacific/Apia", "",
			[]string{"2011-12-29T10:00:00Z", "2011-12-30T10:00:00Z", "2011-12-31T10:00:00Z"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			loc := loadLoc(t, tt.zone)
			anchor := date(2020, 1, 1)
			if tt.anchor != "" {
				anchor = rfc3339(t, tt.anchor)
			}
			for i := range len(tt.starts) - 1 {
				checkWindowAt(t, tt.p, anchor, loc, rfc3339(t, tt.starts[i]), rfc3339(t, tt.starts[i+1]))
			}
		})
	}
}

// walkZone describes a zone whose windows TestWindowWalk walks over 2023
// and 2024, with the lengths its hours and days may have.
type walkZone struct {
	name  string
	hours []time.Duration
	days  []time.Duration
	nHour int // the number of hour windows in the two years
}

var walkZones = []walkZone{
	{"UTC", []time.Duration{time.Hour}, []time.Duration{24 * time.Hour}, 17544},
	{"America/New_York", []time.Duration{time.Hour}, []time.Duration{23 * time.Hour, 24 * time.Hour, 25 * time.Hour}, 17544},
	{"Europe/Berlin", []time.Duration{time.Hour}, []time.Duration{23 * time.Hour, 24 * time.Hour, 25 * time.Hour}, 17544},
	{"Asia/Kolkata", []time.Duration{time.Hour}, []time.Duration{24 * time.Hour}, 17544},
	// Lord Howe moves its clocks by 30 minutes: four hours of the two
	// years last 90 minutes, so there are two windows fewer.
	{"Australia/Lord_Howe", []time.Duration{time.Hour, 90 * time.Minute}, []time.Duration{23*time.Hour + 30*time.Minute, 24 * time.Hour, 24*time.Hour + 30*time.Minute}, 17542},
	{"Pacific/Chatham", []time.Duration{time.Hour}, []time.Duration{23 * time.Hour, 24 * time.Hour, 25 * time.Hour}, 17544},
}

// TestWindowWalk walks the consecutive windows of every period over two
// years in zones with odd offsets and clock changes, checking that each
// begins where the previous one ends, holds its own start, middle and
// last nanosecond, and begins at a local midnight (a Monday for weeks, the
// anchor's day for months and years) or a local whole hour.
func TestWindowWalk(t *testing.T) {
	// An anchor on the 31st, on the 31st in every zone below.
	anchor := time.Date(2023, 1, 31, 9, 0, 0, 0, time.UTC)
	// The window holding 2023-01-01 begins on Monday 2022-12-26 for
	// weeks, on 2022-12-31 for months, on 2022-01-31 for years.
	wantN := map[Period]int{PeriodDay: 731, PeriodWeek: 106, PeriodMonth: 25, PeriodYear: 3}
	for _, z := range walkZones {
		loc := loadLoc(t, z.name)
		from := time.Date(2023, 1, 1, 0, 0, 0, 0, loc)
		to := time.Date(2025, 1, 1, 0, 0, 0, 0, loc)
		for _, p := range periodsWithWindows {
			t.Run(z.name+"/"+p.String(), func(t *testing.T) {
				t.Parallel()
				s, e := window(p, from, anchor, loc)
				n := 0
				for ; s.Before(to) && !t.Failed(); n++ {
					checkWalkedWindow(t, z, p, anchor, loc, s, e)
					ns, ne := window(p, e, anchor, loc)
					if !ns.Equal(e) {
						t.Errorf("window(%v, %v, ...) starts at %v; want %v, the end of the previous window", p, e, ns, e)
					}
					s, e = ns, ne
				}
				want, ok := wantN[p]
				if p == PeriodHour {
					want, ok = z.nHour, true
				}
				if ok && n != want {
					t.Errorf("%d %s windows begin in [%v, %v); want %d", n, p, from, to, want)
				}
			})
		}
	}
}

func checkWalkedWindow(t *testing.T, z walkZone, p Period, anchor time.Time, loc *time.Location, s, e time.Time) {
	t.Helper()
	if !s.Before(e) {
		t.Fatalf("window [%v, %v) of %v is empty", s, e, p)
	}
	checkWindowAt(t, p, anchor, loc, s, e)
	ls := s.In(loc)
	d := e.Sub(s)
	if p == PeriodHour {
		if ls.Minute() != 0 || ls.Second() != 0 || ls.Nanosecond() != 0 {
			t.Errorf("hour window begins at %v; want a whole hour of local time", ls)
		}
		if !durationIn(d, z.hours) {
			t.Errorf("hour window [%v, %v) lasts %v; want one of %v", ls, e.In(loc), d, z.hours)
		}
		return
	}
	if h, m, sec := ls.Clock(); h != 0 || m != 0 || sec != 0 || ls.Nanosecond() != 0 {
		t.Errorf("%v window begins at %v; want local midnight", p, ls)
	}
	switch p {
	case PeriodDay:
		if !durationIn(d, z.days) {
			t.Errorf("day window [%v, %v) lasts %v; want one of %v", ls, e.In(loc), d, z.days)
		}
		if want := ls.AddDate(0, 0, 1); e.In(loc).YearDay() != want.YearDay() {
			t.Errorf("day window [%v, %v) ends on another day than %v", ls, e.In(loc), want)
		}
	case PeriodWeek:
		if ls.Weekday() != time.Monday {
			t.Errorf("week window begins on %v %v; want Monday", ls.Weekday(), ls)
		}
	case PeriodMonth, PeriodYear:
		// The anchor is on the 31st: a window begins on the 31st or on
		// the last day of a shorter month.
		last := time.Date(ls.Year(), ls.Month()+1, 0, 0, 0, 0, 0, loc).Day()
		if ls.Day() != 31 && ls.Day() != last {
			t.Errorf("%v window begins on %v; want the 31st or the last day of the month", p, ls)
		}
		if p == PeriodYear && ls.Month() != time.January {
			t.Errorf("year window begins on %v; want January, the anchor's month", ls)
		}
	}
}

func durationIn(d time.Duration, ds []time.Duration) bool {
	for _, x := range ds {
		if d == x {
			return true
		}
	}
	return false
}

func TestPeriodNames(t *testing.T) {
	tests := []struct {
		p    Period
		name string
	}{
		{PeriodNone, "none"},
		{PeriodHour, "hour"},
		{PeriodDay, "day"},
		{PeriodWeek, "week"},
		{PeriodMonth, "month"},
		{PeriodYear, "year"},
	}
	for _, tt := range tests {
		if got := tt.p.String(); got != tt.name {
			t.Errorf("Period(%d).String() = %q; want %q", tt.p, got, tt.name)
		}
		if got, err := ParsePeriod(tt.name); got != tt.p || err != nil {
			t.Errorf("ParsePeriod(%q) = %v, %v; want %v, nil", tt.name, got, err, tt.p)
		}
		if got, err := tt.p.MarshalText(); string(got) != tt.name || err != nil {
			t.Errorf("%v.MarshalText() = %q, %v; want %q, nil", tt.p, got, err, tt.name)
		}
		var got Period = 99
		if err := got.UnmarshalText([]byte(tt.name)); got != tt.p || err != nil {
			t.Errorf("UnmarshalText(%q) = %v, %v; want %v, nil", tt.name, got, err, tt.p)
		}
	}
	if got := Period(6).String(); got != "Period(6)" {
		t.Errorf("Period(6).String() = %q; want %q", got, "Period(6)")
	}
	if b, err := Period(6).MarshalText(); !errors.Is(err, ErrInvalidPlan) {
		t.Errorf("Period(6).MarshalText() = %q, %v; want an error matching ErrInvalidPlan", b, err)
	}
	for _, s := range []string{"", "Month", "monthly", " month", "6", "Period(6)"} {
		if p, err := ParsePeriod(s); !errors.Is(err, ErrInvalidPlan) {
			t.Errorf("ParsePeriod(%q) = %v, %v; want an error matching ErrInvalidPlan", s, p, err)
		}
		p := PeriodDay
		if err := p.UnmarshalText([]byte(s)); err == nil || p != PeriodDay {
			t.Errorf("UnmarshalText(%q) = %v, %v; want an error and the period unchanged", s, p, err)
		}
	}
	// Through encoding/json, which uses the text methods.
	b, err := json.Marshal(map[string]Period{"p": PeriodWeek})
	if string(b) != `{"p":"week"}` || err != nil {
		t.Errorf("json.Marshal(week) = %s, %v; want {\"p\":\"week\"}, nil", b, err)
	}
}

// fuzzZones are the zones FuzzWindow picks from: odd offsets, 30-minute
// clock changes, skipped and repeated midnights, a skipped day.
var fuzzZones = []string{
	"UTC", "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Asia/Kathmandu",
	"Australia/Lord_Howe", "Pacific/Chatham", "America/Santiago", "America/Havana",
	"Pacific/Apia", "America/St_Johns", "Europe/Dublin",
}

// fuzzInstant maps any Unix time to an instant between the years 1 and
// 9999, leaving those already there in place.
func fuzzInstant(sec int64, nsec uint32) time.Time {
	const lo, hi = -62135596800, 253402300799 // 0001-01-01, 9999-12-31T23:59:59 UTC
	const span = hi - lo + 1
	if sec < lo || sec > hi {
		sec = lo + (sec%span+span)%span
	}
	return time.Unix(sec, int64(nsec%1e9)).UTC()
}

// TestWindowTransitions probes the windows of every period around every
// change of offset from 1900 to 2040 in the zones FuzzWindow picks from,
// with an anchor on the day of the change, where random instants rarely
// fall.
func TestWindowTransitions(t *testing.T) {
	from, to := date(1900, 1, 1), date(2040, 1, 1)
	probes := []time.Duration{-time.Hour, -time.Nanosecond, 0, time.Nanosecond, 30 * time.Minute, time.Hour}
	for _, zone := range fuzzZones {
		t.Run(zone, func(t *testing.T) {
			t.Parallel()
			loc := loadLoc(t, zone)
			n := 0
			for at := from.In(loc); at.Before(to); n++ {
				_, next := at.ZoneBounds()
				if next.IsZero() {
					break
				}
				for _, d := range probes {
					for _, p := range periodsWithWindows {
						checkWindowProps(t, p, next.Add(d), next, loc)
					}
				}
				at = next
			}
			if zone != "UTC" && n < 2 {
				t.Errorf("%d changes of offset in %s; want some", n, zone)
			}
		})
	}
}

func FuzzWindow(f *testing.F) {
	// period indexes periodsWithWindows (0 hour ... 4 year), zone fuzzZones.
	f.Add(int64(1730613600), uint32(0), int64(1675155600), uint8(0), uint8(1))             // New York falls back
	f.Add(int64(1728142200), uint32(0), int64(1675155600), uint8(0), uint8(5))             // Lord Howe springs forward
	f.Add(int64(1712410200), uint32(0), int64(1675155600), uint8(0), uint8(6))             // Chatham falls back
	f.Add(int64(1725766200), uint32(1), int64(1675155600), uint8(1), uint8(7))             // Santiago skips midnight
	f.Add(int64(1710046800), uint32(0), int64(1704888000), uint8(3), uint8(8))             // Havana month
	f.Add(int64(1325239200), uint32(0), int64(0), uint8(2), uint8(9))                      // Apia skips a day
	f.Add(int64(1709251199), uint32(999999999), int64(1709164800), uint8(4), uint8(0))     // a leap-day anchor
	f.Add(int64(-62135596800), uint32(0), int64(253402300799), uint8(3), uint8(2))         // year 1, anchor in 9999
	f.Add(int64(253402300799), uint32(999999999), int64(-62135596800), uint8(4), uint8(4)) // year 9999
	f.Fuzz(func(t *testing.T, sec int64, nsec uint32, anchorSec int64, period, zone uint8) {
		p := periodsWithWindows[int(period)%len(periodsWithWindows)]
		loc := loadLoc(t, fuzzZones[int(zone)%len(fuzzZones)])
		at := fuzzInstant(sec, nsec)
		anchor := fuzzInstant(anchorSec, 0)
		checkWindowProps(t, p, at, anchor, loc)
	})
}

// checkWindowProps checks the properties of the window of p holding at:
// it holds at, starts at a local midnight (or where clocks skip it), a
// Monday for weeks, or a local whole hour, and tiles time with its
// neighbours.
func checkWindowProps(tb testing.TB, p Period, at, anchor time.Time, loc *time.Location) {
	tb.Helper()
	s, e := window(p, at, anchor, loc)
	if !s.Before(e) || at.Before(s) || !at.Before(e) {
		tb.Fatalf("window(%v, %v, %v, %v) = [%v, %v); want a window that holds it", p, at, anchor, loc, s, e)
	}
	if s.Location() != time.UTC || e.Location() != time.UTC {
		tb.Fatalf("window(%v, %v, %v, %v) = [%v, %v); want times in UTC", p, at, anchor, loc, s, e)
	}
	if s2, e2 := window(p, s, anchor, loc); !s2.Equal(s) || !e2.Equal(e) {
		tb.Fatalf("window(%v, %v, ...) = [%v, %v); want [%v, %v), the window it starts", p, s, s2, e2, s, e)
	}
	if s2, e2 := window(p, e.Add(-1), anchor, loc); !s2.Equal(s) || !e2.Equal(e) {
		tb.Fatalf("window(%v, %v, ...) = [%v, %v); want [%v, %v), the window it ends", p, e.Add(-1), s2, e2, s, e)
	}
	if s3, e3 := window(p, e, anchor, loc); !s3.Equal(e) || !e3.After(e) {
		tb.Fatalf("window(%v, %v, ...) = [%v, %v); want a window that starts at %v", p, e, s3, e3, e)
	}
	ls := s.In(loc)
	if p == PeriodHour {
		if ls.Minute() != 0 || ls.Second() != 0 || ls.Nanosecond() != 0 {
			tb.Fatalf("hour window [%v, %v) begins at %v; want a whole hour of local time", s, e, ls)
		}
		if d := e.Sub(s); d > 2*time.Hour {
			tb.Fatalf("hour window [%v, %v) lasts %v", s, e, d)
		}
		// No whole local hour lies inside: offsets are multiples of a
		// quarter-hour since the zones of the list left local mean time.
		for u := s.Add(15 * time.Minute); u.Before(e); u = u.Add(15 * time.Minute) {
			if lu := u.In(loc); lu.Minute() == 0 && lu.Second() == 0 {
				tb.Fatalf("hour window [%v, %v) holds %v, a whole local hour", s, e, lu)
			}
		}
		return
	}
	// A window begins at local midnight, or when clocks skip it, at
	// the change of offset.
	if h, m, sec := ls.Clock(); h != 0 || m != 0 || sec != 0 || ls.Nanosecond() != 0 {
		if zs, _ := ls.ZoneBounds(); !zs.Equal(s) {
			tb.Fatalf("%v window [%v, %v) begins at %v; want local midnight or a change of offset", p, s, e, ls)
		}
	}
	if p == PeriodWeek && ls.Weekday() != time.Monday {
		tb.Fatalf("week window [%v, %v) begins on %v", s, e, ls.Weekday())
	}
}
