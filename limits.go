package quota

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Unlimited is the Max of a limit that never blocks. Usage under an
// unlimited limit is still counted and reported.
const Unlimited int64 = -1

// MaxAmount is the largest amount a single use may carry, in either
// direction. It keeps every amount exactly representable as a JSON number
// and as a float64, and leaves room for counters to grow without overflow.
const MaxAmount int64 = 1 << 53

// maxLimit bounds Max, so that a counter at Max can still take MaxAmount.
const maxLimit int64 = 1 << 62

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
	PeriodNone Period = iota
	PeriodHour
	PeriodDay
	PeriodWeek
	PeriodMonth
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

func (p Period) valid() bool { return int(p) < len(periodNames) }

// Limit bounds one action of a plan. A Limit is a plain value: build it with
// PerHour, PerDay, PerWeek, PerMonth, PerYear or Total, and add a per-use
// cap with WithMaxPerUse.
type Limit struct {
	// Max is the most that may be granted in one period. 0 blocks every
	// use; Unlimited never blocks.
	Max int64 `json:"max" yaml:"max"`

	// Period is the window Max applies to. PeriodNone makes an allocation
	// limit: a running total that releases (negative uses) bring down.
	Period Period `json:"period" yaml:"period"`

	// MaxPerUse is the largest amount a single use may carry, whatever the
	// remaining quota (a file-size limit). 0 means no per-use cap.
	MaxPerUse int64 `json:"max_per_use,omitempty" yaml:"max_per_use,omitempty"`
}

// PerHour returns a limit of n per hour.
func PerHour(n int64) Limit { return Limit{Max: n, Period: PeriodHour} }

// PerDay returns a limit of n per day.
func PerDay(n int64) Limit { return Limit{Max: n, Period: PeriodDay} }

// PerWeek returns a limit of n per week.
func PerWeek(n int64) Limit { return Limit{Max: n, Period: PeriodWeek} }

// PerMonth returns a limit of n per billing month.
func PerMonth(n int64) Limit { return Limit{Max: n, Period: PeriodMonth} }

// PerYear returns a limit of n per billing year.
func PerYear(n int64) Limit { return Limit{Max: n, Period: PeriodYear} }

// Total returns an allocation limit of n: a total that never resets and that
// releases (negative uses) bring down, such as storage bytes or team seats.
func Total(n int64) Limit { return Limit{Max: n, Period: PeriodNone} }

// WithMaxPerUse returns a copy of l whose single uses may not exceed n.
func (l Limit) WithMaxPerUse(n int64) Limit {
	l.MaxPerUse = n
	return l
}

// IsUnlimited reports whether l never blocks.
func (l Limit) IsUnlimited() bool { return l.Max == Unlimited }

// IsAllocation reports whether l is an allocation limit (no period).
func (l Limit) IsAllocation() bool { return l.Period == PeriodNone }

// String describes the limit: "100 per month", "unlimited per day",
// "5368709120 total", "0 per month, at most 10485760 per use".
func (l Limit) String() string {
	var b strings.Builder
	if l.IsUnlimited() {
		b.WriteString("unlimited")
	} else {
		b.WriteString(strconv.FormatInt(l.Max, 10))
	}
	if l.IsAllocation() {
		b.WriteString(" total")
	} else {
		b.WriteString(" per ")
		b.WriteString(l.Period.String())
	}
	if l.MaxPerUse > 0 {
		b.WriteString(", at most ")
		b.WriteString(strconv.FormatInt(l.MaxPerUse, 10))
		b.WriteString(" per use")
	}
	return b.String()
}

// validate checks l alone; field names are those of the catalog files.
func (l Limit) validate() (field string, err error) {
	switch {
	case l.Max < Unlimited:
		return "max", fmt.Errorf("max %d is negative (use Unlimited, -1, or \"unlimited\")", l.Max)
	case l.Max > maxLimit:
		return "max", fmt.Errorf("max %d is larger than %d", l.Max, maxLimit)
	case !l.Period.valid():
		return "period", fmt.Errorf("invalid period %d", l.Period)
	case l.MaxPerUse < 0:
		return "max_per_use", fmt.Errorf("max_per_use %d is negative", l.MaxPerUse)
	case l.MaxPerUse > MaxAmount:
		return "max_per_use", fmt.Errorf("max_per_use %d is larger than %d", l.MaxPerUse, MaxAmount)
	}
	return "", nil
}

// Plan is what a subscription grants: limits per action and a set of
// features. A Plan is a plain value; the Quota built from it keeps its own
// copy.
type Plan struct {
	// Name identifies the plan: "FREE", "PROFESSIONAL".
	Name string `json:"name" yaml:"name"`

	// Limits maps an action to the limits that apply to it. A use is
	// granted only if every limit of its action allows it, and then every
	// one is charged. An action may carry at most one limit per period.
	// An action that another plan of the catalog limits but this one does
	// not list is blocked on this plan (as if limited to 0).
	Limits map[string][]Limit `json:"limits" yaml:"limits"`

	// Features lists the features the plan grants: "api_access".
	Features []string `json:"features,omitempty" yaml:"features,omitempty"`
}

// HasFeature reports whether the plan grants feature.
func (p *Plan) HasFeature(feature string) bool {
	for _, f := range p.Features {
		if f == feature {
			return true
		}
	}
	return false
}

// Actions returns the plan's actions in lexical order.
func (p *Plan) Actions() []string {
	actions := make([]string, 0, len(p.Limits))
	for a := range p.Limits {
		actions = append(actions, a)
	}
	sort.Strings(actions)
	return actions
}

// PlanError reports an invalid plan. It names the plan, and the action and
// field where there is one; it matches ErrInvalidPlan.
type PlanError struct {
	Plan   string // the plan's name, or "#N" for an unnamed N-th plan
	Action string // the action, if the problem lies in one of its limits
	Field  string // the field at fault: "name", "max", "period", "features"
	Err    error  // what is wrong
}

func (e *PlanError) Error() string {
	var b strings.Builder
	b.WriteString("quota: plan ")
	b.WriteString(strconv.Quote(e.Plan))
	if e.Action != "" {
		b.WriteString(" action ")
		b.WriteString(strconv.Quote(e.Action))
	}
	if e.Field != "" {
		b.WriteString(" field ")
		b.WriteString(e.Field)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

// Unwrap returns the underlying cause.
func (e *PlanError) Unwrap() error { return e.Err }

// Is reports whether target is ErrInvalidPlan.
func (e *PlanError) Is(target error) bool { return target == ErrInvalidPlan }

// validatePlans checks a catalog and returns copies of its plans keyed by
// name, sharing nothing with the caller's values.
func validatePlans(plans []Plan) (map[string]*Plan, error) {
	out := make(map[string]*Plan, len(plans))
	for i, p := range plans {
		label := p.Name
		if label == "" {
			label = "#" + strconv.Itoa(i+1)
		}
		if err := checkName(p.Name, ErrInvalidPlan); err != nil {
			return nil, &PlanError{Plan: label, Field: "name", Err: err}
		}
		if _, dup := out[p.Name]; dup {
			return nil, &PlanError{Plan: label, Field: "name", Err: fmt.Errorf("plan %q is defined twice", p.Name)}
		}
		cp := &Plan{Name: p.Name, Limits: make(map[string][]Limit, len(p.Limits))}
		for _, action := range p.Actions() {
			limits, err := validateLimits(action, p.Limits[action])
			if err != nil {
				err.Plan = label
				return nil, err
			}
			cp.Limits[action] = limits
		}
		seen := make(map[string]bool, len(p.Features))
		for _, f := range p.Features {
			if err := checkName(f, ErrInvalidName); err != nil {
				return nil, &PlanError{Plan: label, Field: "features", Err: err}
			}
			if seen[f] {
				return nil, &PlanError{Plan: label, Field: "features", Err: fmt.Errorf("feature %q is listed twice", f)}
			}
			seen[f] = true
			cp.Features = append(cp.Features, f)
		}
		sort.Strings(cp.Features)
		out[p.Name] = cp
	}
	return out, nil
}

// validateLimits checks the limits of one action and returns a copy sorted
// by period. The returned PlanError has no Plan set.
func validateLimits(action string, limits []Limit) ([]Limit, *PlanError) {
	if err := checkName(action, ErrInvalidAction); err != nil {
		return nil, &PlanError{Action: action, Field: "limits", Err: err}
	}
	if len(limits) == 0 {
		return nil, &PlanError{Action: action, Field: "limits", Err: fmt.Errorf("action has no limit (use Unlimited to allow it freely)")}
	}
	cp := make([]Limit, len(limits))
	copy(cp, limits)
	sort.SliceStable(cp, func(i, j int) bool { return cp[i].Period < cp[j].Period })
	for i, l := range cp {
		if field, err := l.validate(); err != nil {
			return nil, &PlanError{Action: action, Field: field, Err: err}
		}
		if i > 0 && cp[i-1].Period == l.Period {
			return nil, &PlanError{Action: action, Field: "period", Err: fmt.Errorf("two limits per %s", l.Period)}
		}
	}
	hasCounter, hasAlloc := false, false
	for _, l := range cp {
		if l.IsAllocation() {
			hasAlloc = true
		} else {
			hasCounter = true
		}
	}
	if hasAlloc && hasCounter {
		// A release (negative use) would also lower the counters, which
		// would hand back allowance that was used in the period.
		return nil, &PlanError{Action: action, Field: "period", Err: fmt.Errorf("an action cannot mix an allocation limit (period none) with periodic limits")}
	}
	return cp, nil
}

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

// ParsePlansJSON parses a JSON plan catalog (see LoadPlans for its format)
// and validates its plans. A malformed catalog yields an error that names
// the line at fault and matches ErrInvalidPlan; an invalid plan yields a
// *PlanError. It returns the plans in the order of the file.
func ParsePlansJSON(data []byte) ([]Plan, error) { return parsePlansJSON("JSON plans", data) }

// ParsePlansYAML parses a YAML plan catalog (see LoadPlans for its format)
// and validates its plans. A malformed catalog, or one of more than one
// YAML document, yields an error that names the line at fault where the
// YAML parser reports one, and matches ErrInvalidPlan; an invalid plan
// yields a *PlanError. It returns the plans in the order of the file.
func ParsePlansYAML(data []byte) ([]Plan, error) { return parsePlansYAML("YAML plans", data) }

// LoadPlans reads the plan catalog in file name, JSON if the name ends in
// .json, YAML if it ends in .yaml or .yml, and parses it as ParsePlansJSON
// or ParsePlansYAML does; its parse errors name the file (the *PlanError
// of an invalid plan does not). A catalog lists plans, each with a name,
// optional features and limits per action:
//
//	plans:
//	  - name: STARTER
//	    features: [api_access, priority_support]
//	    limits:
//	      diagram.upload:
//	        - {max: 5, period: month}
//	      storage.bytes:
//	        - {max: 1073741824, period: none, max_per_use: 10485760}
//	      procedure.view:
//	        - {max: unlimited, period: month}
//
// JSON has the same shape. Each limit needs max, a non-negative integer or
// "unlimited", and period, a name that ParsePeriod accepts; max_per_use is
// optional. Unknown fields and duplicate keys are errors.
func LoadPlans(name string) ([]Plan, error) {
	var parse func(string, []byte) ([]Plan, error)
	switch ext := strings.ToLower(filepath.Ext(name)); ext {
	case ".json":
		parse = parsePlansJSON
	case ".yaml", ".yml":
		parse = parsePlansYAML
	default:
		return nil, fmt.Errorf("quota: load plans %s: unknown extension %q (want .json, .yaml or .yml): %w", name, ext, ErrInvalidPlan)
	}
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("quota: load plans: %w", err)
	}
	return parse(name, data)
}

// catalogError reports a plan catalog that cannot be parsed. It matches
// ErrInvalidPlan.
type catalogError struct {
	src  string // the file name, or "JSON plans" / "YAML plans"
	line int    // 1-based; 0 when unknown
	err  error
}

func (e *catalogError) Error() string {
	if e.line > 0 {
		return fmt.Sprintf("quota: %s line %d: %v", e.src, e.line, e.err)
	}
	return fmt.Sprintf("quota: %s: %v", e.src, e.err)
}

func (e *catalogError) Unwrap() error { return e.err }

func (e *catalogError) Is(target error) bool { return target == ErrInvalidPlan }

// The catalog as written in a file. Only leaf values have their own
// decoding methods: a yaml.v3 Unmarshaler on a struct would lose the
// decoder's KnownFields setting.
type catalogFile struct {
	Plans []planFile `yaml:"plans"`
}

type planFile struct {
	Name     string                 `yaml:"name"`
	Features []string               `yaml:"features"`
	Limits   map[string][]limitFile `yaml:"limits"`
}

type limitFile struct {
	Max       *maxValue    `yaml:"max"`    // required
	Period    *periodValue `yaml:"period"` // required
	MaxPerUse int64        `yaml:"max_per_use"`
}

// maxValue is a limit's max in a file: a non-negative integer or
// "unlimited".
type maxValue int64

const unlimitedName = "unlimited"

// errMax and errPeriod report a value that is no max or period; v is the
// value as written, or "" for a list or a mapping.
func errMax(v string) error {
	return fmt.Errorf("max%s: want a non-negative integer or %q", quoteValue(v), unlimitedName)
}

func errPeriod(v string) error {
	return fmt.Errorf("period%s: want none, hour, day, week, month or year", quoteValue(v))
}

func quoteValue(v string) string {
	if v == "" {
		return ""
	}
	if len(v) > 40 {
		v = v[:40] + "..."
	}
	return " " + strconv.Quote(v)
}

// jsonScalar returns the text of a JSON scalar, unquoted if a string, or ""
// for an object or an array.
func jsonScalar(b []byte) string {
	var s string
	switch {
	case json.Unmarshal(b, &s) == nil:
		return s
	case len(b) > 0 && (b[0] == '{' || b[0] == '['):
		return ""
	}
	return string(b)
}

// yamlScalar returns the text of a YAML scalar, or "" for another node.
func yamlScalar(n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode {
		return ""
	}
	return n.Value
}

// UnmarshalJSON implements json.Unmarshaler.
func (m *maxValue) UnmarshalJSON(b []byte) error {
	if string(b) == `"`+unlimitedName+`"` {
		*m = maxValue(Unlimited)
		return nil
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil || n < 0 {
		return errMax(jsonScalar(b))
	}
	*m = maxValue(n)
	return nil
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (m *maxValue) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		switch n.ShortTag() {
		case "!!str":
			if n.Value == unlimitedName {
				*m = maxValue(Unlimited)
				return nil
			}
		case "!!int":
			var v int64
			if err := n.Decode(&v); err == nil && v >= 0 {
				*m = maxValue(v)
				return nil
			}
		}
	}
	return yamlTypeError(n, errMax(yamlScalar(n)))
}

// periodValue is a limit's period in a file: a name ParsePeriod accepts.
type periodValue Period

// UnmarshalJSON implements json.Unmarshaler.
func (p *periodValue) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		if v, err := ParsePeriod(s); err == nil {
			*p = periodValue(v)
			return nil
		}
	}
	return errPeriod(jsonScalar(b))
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (p *periodValue) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
		if v, err := ParsePeriod(n.Value); err == nil {
			*p = periodValue(v)
			return nil
		}
	}
	return yamlTypeError(n, errPeriod(yamlScalar(n)))
}

// yamlTypeError returns err as yaml.v3 reports a value it cannot decode, so
// that the decoder goes on and reports it with the others, by line.
func yamlTypeError(n *yaml.Node, err error) error {
	return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: %v", n.Line, err)}}
}

// plans converts the catalog and validates it.
func (c *catalogFile) plans(src string) ([]Plan, error) {
	if len(c.Plans) == 0 {
		return nil, &catalogError{src: src, err: errors.New("no plans")}
	}
	out := make([]Plan, len(c.Plans))
	for i, pf := range c.Plans {
		label := pf.Name
		if label == "" {
			label = "#" + strconv.Itoa(i+1)
		}
		p := Plan{Name: pf.Name}
		if len(pf.Features) > 0 {
			p.Features = pf.Features
		}
		if len(pf.Limits) > 0 {
			p.Limits = make(map[string][]Limit, len(pf.Limits))
		}
		actions := make([]string, 0, len(pf.Limits))
		for a := range pf.Limits {
			actions = append(actions, a)
		}
		sort.Strings(actions)
		for _, a := range actions {
			ls := make([]Limit, len(pf.Limits[a]))
			for j, lf := range pf.Limits[a] {
				switch {
				case lf.Max == nil:
					return nil, &PlanError{Plan: label, Action: a, Field: "max", Err: fmt.Errorf("limit %d has no max", j+1)}
				case lf.Period == nil:
					return nil, &PlanError{Plan: label, Action: a, Field: "period", Err: fmt.Errorf("limit %d has no period", j+1)}
				}
				ls[j] = Limit{Max: int64(*lf.Max), Period: Period(*lf.Period), MaxPerUse: lf.MaxPerUse}
			}
			p.Limits[a] = ls
		}
		out[i] = p
	}
	if _, err := validatePlans(out); err != nil {
		return nil, err
	}
	return out, nil
}

func parsePlansYAML(src string, data []byte) ([]Plan, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c catalogFile
	if err := dec.Decode(&c); err != nil {
		if err == io.EOF {
			return nil, &catalogError{src: src, err: errors.New("empty document")}
		}
		return nil, yamlError(src, err)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == io.EOF:
	case err != nil:
		return nil, yamlError(src, err)
	default:
		return nil, &catalogError{src: src, line: next.Line, err: errors.New("more than one YAML document")}
	}
	return c.plans(src)
}

var (
	// yamlLine matches a yaml.v3 error, or one of the errors of a
	// *yaml.TypeError, that names its line.
	yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	// yamlUnknown matches yaml.v3's report of an unknown field.
	yamlUnknown = regexp.MustCompile(`^field (.*) not found in type \S+$`)
)

// yamlParserErrors are the problems that yaml.v3's parser, as opposed to
// its scanner, reports. It numbers their lines from 0 (its scanner and
// decoder from 1), so yamlError adds one.
var yamlParserErrors = map[string]bool{
	"did not find expected <stream-start>":   true,
	"did not find expected <document start>": true,
	"found undefined tag handle":             true,
	"did not find expected node content":     true,
	"did not find expected '-' indicator":    true,
	"did not find expected key":              true,
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found duplicate %TAG directive":         true,
}

// yamlError turns an error of yaml.v3 into a *catalogError that names the
// line of the first problem, as a JSON catalog's errors do.
func yamlError(src string, err error) error {
	msgs := []string{err.Error()}
	if te, ok := err.(*yaml.TypeError); ok && len(te.Errors) > 0 {
		msgs = te.Errors
	}
	ce := &catalogError{src: src}
	for i, msg := range msgs {
		line := 0
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = m[2]
			if i == 0 && yamlParserErrors[msg] {
				line++
			}
		}
		if m := yamlUnknown.FindStringSubmatch(msg); m != nil {
			msg = "unknown field " + strconv.Quote(m[1])
		}
		if i == 0 {
			ce.line = line
			msgs[i] = msg
		} else if line > 0 {
			msgs[i] = "line " + strconv.Itoa(line) + ": " + msg
		}
	}
	ce.err = errors.New(strings.Join(msgs, "; "))
	return ce
}

func parsePlansJSON(src string, data []byte) ([]Plan, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &catalogError{src: src, err: errors.New("empty document")}
	}
	// Check the syntax of the whole input first: a *json.SyntaxError has
	// the offset of the fault, and the walk below can then assume a
	// well-formed stream of tokens.
	var raw json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return nil, &catalogError{src: src, line: lineAt(data, se.Offset), err: errors.New(strings.TrimPrefix(se.Error(), "json: "))}
		}
		return nil, &catalogError{src: src, err: err}
	}
	w := &jsonWalker{src: src, data: data, dec: json.NewDecoder(bytes.NewReader(data))}
	var c catalogFile
	if err := w.catalog(&c); err != nil {
		return nil, err
	}
	return c.plans(src)
}

// lineAt returns the 1-based line of data's byte at offset off.
func lineAt(data []byte, off int64) int {
	off = max(0, min(off, int64(len(data))))
	return 1 + bytes.Count(data[:off], []byte{'\n'})
}

// jsonWalker decodes a JSON catalog token by token, so that its errors can
// name their line: encoding/json reports an unknown field without its
// offset, and the offset of a value that fails to decode relative to the
// value, not to the input.
type jsonWalker struct {
	src  string
	data []byte
	dec  *json.Decoder
}

func (w *jsonWalker) errorf(off int64, format string, args ...any) error {
	return &catalogError{src: w.src, line: lineAt(w.data, off), err: fmt.Errorf(format, args...)}
}

// next returns the offset of the next token: the decoder's offset past
// white space and separators.
func (w *jsonWalker) next() int64 {
	off := w.dec.InputOffset()
	for off < int64(len(w.data)) && strings.IndexByte(" \t\r\n:,", w.data[off]) >= 0 {
		off++
	}
	return off
}

// open reads the opening delimiter of a composite value: it reports false
// for null, and an error for anything but delim.
func (w *jsonWalker) open(what string, delim json.Delim) (bool, error) {
	off := w.next()
	tok, err := w.dec.Token()
	if err != nil {
		return false, w.errorf(off, "%s: %v", what, err)
	}
	if tok == nil {
		return false, nil
	}
	if tok != delim {
		kind := "an object"
		if delim == '[' {
			kind = "an array"
		}
		return false, w.errorf(off, "%s: want %s, got %s", what, kind, jsonKind(tok))
	}
	return true, nil
}

func jsonKind(tok json.Token) string {
	switch tok := tok.(type) {
	case json.Delim:
		if tok == '[' {
			return "an array"
		}
		return "an object"
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "a boolean"
	}
	return "null"
}

// object reads an object, or null, calling member for each of its members
// with the decoder before the member's value; member must consume it.
func (w *jsonWalker) object(what string, member func(key string, off int64) error) error {
	ok, err := w.open(what, '{')
	if !ok || err != nil {
		return err
	}
	seen := make(map[string]bool)
	for w.dec.More() {
		off := w.next()
		tok, err := w.dec.Token()
		if err != nil {
			return w.errorf(off, "%s: %v", what, err)
		}
		key, _ := tok.(string) // the syntax was checked: a key is a string
		if seen[key] {
			return w.errorf(off, "duplicate key %q", key)
		}
		seen[key] = true
		if err := member(key, off); err != nil {
			return err
		}
	}
	_, err = w.dec.Token() // '}'
	return err
}

// array reads an array, or null, calling elem for each element with the
// decoder before it; elem must consume it.
func (w *jsonWalker) array(what string, elem func() error) error {
	ok, err := w.open(what, '[')
	if !ok || err != nil {
		return err
	}
	for w.dec.More() {
		if err := elem(); err != nil {
			return err
		}
	}
	_, err = w.dec.Token() // ']'
	return err
}

// value decodes the next value into v.
func (w *jsonWalker) value(what string, v any) error {
	off := w.next()
	if err := w.dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return w.errorf(off, "%s: got a JSON %s, want %s", what, te.Value, jsonType(te.Type))
		}
		return w.errorf(off, "%v", err)
	}
	return nil
}

func jsonType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int64:
		return "an integer"
	case reflect.Slice:
		return "an array of strings"
	}
	return t.String()
}

func unknownField(w *jsonWalker, key string, off int64) error {
	return w.errorf(off, "unknown field %q", key)
}

func (w *jsonWalker) catalog(c *catalogFile) error {
	return w.object("catalog", func(key string, off int64) error {
		if key != "plans" {
			return unknownField(w, key, off)
		}
		return w.array("plans", func() error {
			var p planFile
			if err := w.plan(&p); err != nil {
				return err
			}
			c.Plans = append(c.Plans, p)
			return nil
		})
	})
}

func (w *jsonWalker) plan(p *planFile) error {
	return w.object("plan", func(key string, off int64) error {
		switch key {
		case "name":
			return w.value("name", &p.Name)
		case "features":
			return w.value("features", &p.Features)
		case "limits":
			return w.object("limits", func(action string, _ int64) error {
				if p.Limits == nil {
					p.Limits = make(map[string][]limitFile)
				}
				var ls []limitFile
				err := w.array("limits of "+strconv.Quote(action), func() error {
					var l limitFile
					if err := w.limit(&l); err != nil {
						return err
					}
					ls = append(ls, l)
					return nil
				})
				p.Limits[action] = ls
				return err
			})
		}
		return unknownField(w, key, off)
	})
}

func (w *jsonWalker) limit(l *limitFile) error {
	return w.object("limit", func(key string, off int64) error {
		switch key {
		case "max":
			return w.value("max", &l.Max)
		case "period":
			return w.value("period", &l.Period)
		case "max_per_use":
			return w.value("max_per_use", &l.MaxPerUse)
		}
		return unknownField(w, key, off)
	})
}
