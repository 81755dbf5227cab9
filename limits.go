package quota

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Unlimited is the Max of a limit that never blocks. Usage under an
// unlimited limit is still counted and reported.
const Unlimited int64 = -1

// MaxAmount is the largest amount a single use may carry, in either
// direction. It keeps every amount exactly representable as a JSON number
// and as a float64, and leaves room for counters to grow without overflow.
const MaxAmount int64 = 1 << 53

// MaxLimits is the most limits an action may carry: one per period
// (hour, day, week, month, year), or an allocation limit alone.
const MaxLimits = 5

// maxLimit bounds Max, so that a counter at Max can still take MaxAmount.
const maxLimit int64 = 1 << 62

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
	// one is charged. An action may carry at most one limit per period,
	// and an allocation limit only alone: at most MaxLimits. An action
	// that another plan of the catalog limits but this one does not list
	// is blocked on this plan (as if limited to 0).
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

// Error describes the problem: "quota: plan "FREE" action "x" field max:
// max -2 is negative (...)".
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

// twoLimits reports two limits of one action with the same period p.
func twoLimits(p Period) error {
	if p == PeriodNone {
		return errors.New("two allocation limits (period none)")
	}
	return fmt.Errorf("two limits per %s", p)
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
			return nil, &PlanError{Action: action, Field: "period", Err: twoLimits(l.Period)}
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
