package quota

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

func TestLimitConstructors(t *testing.T) {
	tests := []struct {
		got, want Limit
	}{
		{PerHour(3), Limit{Max: 3, Period: PeriodHour}},
		{PerDay(4), Limit{Max: 4, Period: PeriodDay}},
		{PerWeek(5), Limit{Max: 5, Period: PeriodWeek}},
		{PerMonth(6), Limit{Max: 6, Period: PeriodMonth}},
		{PerYear(7), Limit{Max: 7, Period: PeriodYear}},
		{Total(8), Limit{Max: 8, Period: PeriodNone}},
		{Total(8).WithMaxPerUse(2), Limit{Max: 8, Period: PeriodNone, MaxPerUse: 2}},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %#v; want %#v", tt.got, tt.want)
		}
	}
	if l := PerMonth(Unlimited); !l.IsUnlimited() || l.IsAllocation() {
		t.Errorf("PerMonth(Unlimited): IsUnlimited() = %v, IsAllocation() = %v; want true, false", l.IsUnlimited(), l.IsAllocation())
	}
	if l := Total(0); l.IsUnlimited() || !l.IsAllocation() {
		t.Errorf("Total(0): IsUnlimited() = %v, IsAllocation() = %v; want false, true", l.IsUnlimited(), l.IsAllocation())
	}
}

func TestLimitString(t *testing.T) {
	tests := []struct {
		l    Limit
		want string
	}{
		{PerMonth(100), "100 per month"},
		{PerDay(Unlimited), "unlimited per day"},
		{PerHour(0), "0 per hour"},
		{PerWeek(7), "7 per week"},
		{PerYear(1), "1 per year"},
		{Total(5368709120), "5368709120 total"},
		{PerMonth(0).WithMaxPerUse(10485760), "0 per month, at most 10485760 per use"},
		{Total(Unlimited).WithMaxPerUse(1 << 30), "unlimited total, at most 1073741824 per use"},
		{Limit{Max: 2, Period: Period(9)}, "2 per Period(9)"},
	}
	for _, tt := range tests {
		if got := tt.l.String(); got != tt.want {
			t.Errorf("%#v.String() = %q; want %q", tt.l, got, tt.want)
		}
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		s    string
		ok   bool
	}{
		{"empty", "", false},
		{"ascii", "diagram.upload", true},
		{"unicode", "Zürich 東京 😀", true},
		{"256 bytes", strings.Repeat("a", 256), true},
		{"257 bytes", strings.Repeat("a", 257), false},
		{"256 bytes of 4-byte runes", strings.Repeat("😀", 64), true},
		{"258 bytes of 3-byte runes", strings.Repeat("東", 86), false},
		{"invalid utf-8", "ab\xffcd", false},
		{"truncated rune", "東"[:2], false},
		{"NUL", "a\x00b", false},
		{"tab", "a\tb", false},
		{"newline", "a\n", false},
		{"DEL", "a\x7f", false},
		{"C1 control U+0085", "a\u0085b", false},
		{"C1 control U+009F", "\u009f", false},
		{"space", " ", true},
		{"16 bytes", "0123456789abcdef", true},
		{"printable ASCII", " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~", true},
	}
	// A forbidden byte at every place of the first and second eight.
	for i := range 17 {
		for _, c := range []string{"\x00", "\x1f", "\x7f", "\x80", "\xff"} {
			tests = append(tests, struct {
				name string
				s    string
				ok   bool
			}{fmt.Sprintf("%q at %d", c, i), strings.Repeat("a", i) + c + strings.Repeat("b", 16-i), false})
		}
	}
	for _, tt := range tests {
		err := ValidateName(tt.s)
		if tt.ok && err != nil {
			t.Errorf("%s: ValidateName(%q) = %v; want nil", tt.name, tt.s, err)
		}
		if !tt.ok && !errors.Is(err, ErrInvalidName) {
			t.Errorf("%s: ValidateName(%q) = %v; want an error matching ErrInvalidName", tt.name, tt.s, err)
		}
		// checkName wraps the kind it is given.
		if err := checkName(tt.s, ErrInvalidAction); !tt.ok && !errors.Is(err, ErrInvalidAction) {
			t.Errorf("%s: checkName(%q, ErrInvalidAction) = %v; want an error matching ErrInvalidAction", tt.name, tt.s, err)
		}
	}
}

func TestValidatePlans(t *testing.T) {
	valid := func() Plan {
		return Plan{Name: "FREE", Limits: map[string][]Limit{"x": {PerMonth(5)}}}
	}
	with := func(f func(*Plan)) []Plan {
		p := valid()
		f(&p)
		return []Plan{p}
	}
	tests := []struct {
		name  string
		plans []Plan
		want  PlanError // Err is not compared
	}{
		{"empty name", with(func(p *Plan) { p.Name = "" }), PlanError{Plan: "#1", Field: "name"}},
		{"NUL in name", with(func(p *Plan) { p.Name = "FR\x00EE" }), PlanError{Plan: "FR\x00EE", Field: "name"}},
		{"duplicate", []Plan{valid(), valid()}, PlanError{Plan: "FREE", Field: "name"}},
		{"second unnamed", []Plan{valid(), {}}, PlanError{Plan: "#2", Field: "name"}},
		{"empty action", with(func(p *Plan) { p.Limits[""] = []Limit{PerDay(1)} }), PlanError{Plan: "FREE", Action: "", Field: "limits"}},
		{"no limits", with(func(p *Plan) { p.Limits["y"] = nil }), PlanError{Plan: "FREE", Action: "y", Field: "limits"}},
		{"negative max", with(func(p *Plan) { p.Limits["x"] = []Limit{PerDay(-2)} }), PlanError{Plan: "FREE", Action: "x", Field: "max"}},
		{"huge max", with(func(p *Plan) { p.Limits["x"] = []Limit{PerDay(1<<62 + 1)} }), PlanError{Plan: "FREE", Action: "x", Field: "max"}},
		{"bad period", with(func(p *Plan) { p.Limits["x"] = []Limit{{Max: 1, Period: 6}} }), PlanError{Plan: "FREE", Action: "x", Field: "period"}},
		{"negative per use", with(func(p *Plan) { p.Limits["x"] = []Limit{Total(1).WithMaxPerUse(-1)} }), PlanError{Plan: "FREE", Action: "x", Field: "max_per_use"}},
		{"huge per use", with(func(p *Plan) { p.Limits["x"] = []Limit{Total(1).WithMaxPerUse(MaxAmount + 1)} }), PlanError{Plan: "FREE", Action: "x", Field: "max_per_use"}},
		{"two per month", with(func(p *Plan) { p.Limits["x"] = []Limit{PerMonth(1), PerDay(1), PerMonth(2)} }), PlanError{Plan: "FREE", Action: "x", Field: "period"}},
		{"two totals", with(func(p *Plan) { p.Limits["x"] = []Limit{Total(1), Total(2)} }), PlanError{Plan: "FREE", Action: "x", Field: "period"}},
		{"allocation and counter", with(func(p *Plan) { p.Limits["x"] = []Limit{Total(1), PerDay(1)} }), PlanError{Plan: "FREE", Action: "x", Field: "period"}},
		{"bad feature", with(func(p *Plan) { p.Features = []string{"ok", "a\x7f"} }), PlanError{Plan: "FREE", Field: "features"}},
		{"duplicate feature", with(func(p *Plan) { p.Features = []string{"api", "api"} }), PlanError{Plan: "FREE", Field: "features"}},
	}
	for _, tt := range tests {
		_, err := validatePlans(tt.plans)
		var pe *PlanError
		if !errors.As(err, &pe) {
			t.Errorf("%s: validatePlans() = %v; want a *PlanError", tt.name, err)
			continue
		}
		if !errors.Is(err, ErrInvalidPlan) {
			t.Errorf("%s: validatePlans() = %v; want an error matching ErrInvalidPlan", tt.name, err)
		}
		got := PlanError{Plan: pe.Plan, Action: pe.Action, Field: pe.Field}
		if got != tt.want {
			t.Errorf("%s: validatePlans() = %+v; want %+v", tt.name, got, tt.want)
		}
		if msg := err.Error(); !strings.Contains(msg, "plan \""+strings.ReplaceAll(tt.want.Plan, "\x00", `\x00`)+"\"") ||
			(tt.want.Action != "" && !strings.Contains(msg, "action \""+tt.want.Action+"\"")) ||
			!strings.Contains(msg, "field "+tt.want.Field) {
			t.Errorf("%s: validatePlans() = %q; want a message naming plan, action and field of %+v", tt.name, msg, tt.want)
		}
	}

	// An exact message.
	_, err := validatePlans(with(func(p *Plan) { p.Limits["x"] = []Limit{PerDay(-2)} }))
	want := `quota: plan "FREE" action "x" field max: max -2 is negative (use Unlimited, -1, or "unlimited")`
	if err == nil || err.Error() != want {
		t.Errorf("validatePlans(max -2) = %v; want %s", err, want)
	}
	// An allocation limit is "total", never "per none".
	_, err = validatePlans(with(func(p *Plan) { p.Limits["x"] = []Limit{Total(1), Total(2)} }))
	want = `quota: plan "FREE" action "x" field period: two allocation limits (period none)`
	if err == nil || err.Error() != want {
		t.Errorf("validatePlans(two totals) = %v; want %s", err, want)
	}
	_, err = validatePlans(with(func(p *Plan) { p.Limits["x"] = []Limit{PerMonth(1), PerMonth(2)} }))
	want = `quota: plan "FREE" action "x" field period: two limits per month`
	if err == nil || err.Error() != want {
		t.Errorf("validatePlans(two per month) = %v; want %s", err, want)
	}

	// The limits at their bounds are valid.
	ok := with(func(p *Plan) {
		p.Limits["x"] = []Limit{PerMonth(1 << 62), PerDay(Unlimited)}
		p.Limits["y"] = []Limit{Total(0).WithMaxPerUse(MaxAmount)}
		p.Features = []string{"b", "a"}
	})
	got, err := validatePlans(ok)
	if err != nil {
		t.Fatalf("validatePlans(%+v) = %v; want nil", ok, err)
	}
	// It returns sorted copies that share nothing with its input.
	want2 := map[string]*Plan{"FREE": {
		Name:     "FREE",
		Limits:   map[string][]Limit{"x": {PerDay(Unlimited), PerMonth(1 << 62)}, "y": {Total(0).WithMaxPerUse(MaxAmount)}},
		Features: []string{"a", "b"},
	}}
	ok[0].Limits["x"][0] = PerMonth(1)
	ok[0].Features[0] = "z"
	if diff := cmp.Diff(want2, got); diff != "" {
		t.Errorf("validatePlans() mismatch (-want +got):\n%s", diff)
	}
}

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"", "a", "diagram.upload", "a\x00", "\x7f", "\u0085", "\xff", "東京", strings.Repeat("x", 257)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := ValidateName(s)
		valid := utf8.ValidString(s) && len(s) >= 1 && len(s) <= MaxNameLen &&
			strings.IndexFunc(s, unicode.IsControl) < 0
		if valid != (err == nil) {
			t.Fatalf("ValidateName(%q) = %v; want valid = %v", s, err, valid)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Fatalf("ValidateName(%q) = %v; want an error matching ErrInvalidName", s, err)
		}
	})
}
