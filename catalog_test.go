package quota

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// catalogPlans is what testdata/plans.yaml and testdata/plans.json say.
var catalogPlans = []Plan{
	{
		Name: "FREE",
		Limits: map[string][]Limit{
			"diagram.upload": {PerMonth(5)},
			"ai.analysis":    {PerMonth(3)},
			"procedure.view": {PerMonth(Unlimited)},
			"export.pdf":     {PerMonth(0)},
			"export.dxf":     {PerMonth(0)},
			"api.call":       {PerMonth(0)},
			"storage.bytes":  {Total(1 << 30).WithMaxPerUse(10 << 20)},
			"team.seats":     {Total(1)},
		},
	},
	{
		Name: "PROFESSIONAL",
		Limits: map[string][]Limit{
			"diagram.upload": {PerMonth(100)},
			"ai.analysis":    {PerMonth(100)},
			"procedure.view": {PerMonth(Unlimited)},
			"export.pdf":     {PerMonth(100)},
			"export.dxf":     {PerMonth(0)},
			"api.call":       {PerMonth(0)},
			"storage.bytes":  {Total(50 << 30).WithMaxPerUse(100 << 20)},
			"team.seats":     {Total(5)},
		},
		Features: []string{"priority_support"},
	},
	{
		Name: "ENTERPRISE",
		Limits: map[string][]Limit{
			"diagram.upload": {PerMonth(Unlimited)},
			"ai.analysis":    {PerMonth(Unlimited)},
			"procedure.view": {PerMonth(Unlimited)},
			"export.pdf":     {PerMonth(Unlimited)},
			"export.dxf":     {PerMonth(Unlimited)},
			"api.call":       {PerMonth(Unlimited)},
			"storage.bytes":  {Total(Unlimited).WithMaxPerUse(1 << 30)},
			"team.seats":     {Total(Unlimited)},
		},
		Features: []string{"team_collaboration", "api_access", "priority_support", "custom_ai_training", "white_labeling"},
	},
}

func TestLoadPlansTestdata(t *testing.T) {
	yamlPlans, err := LoadPlans(filepath.Join("testdata", "plans.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(catalogPlans, yamlPlans); diff != "" {
		t.Errorf("LoadPlans(plans.yaml) mismatch (-want +got):\n%s", diff)
	}
	jsonPlans, err := LoadPlans(filepath.Join("testdata", "plans.json"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(yamlPlans, jsonPlans); diff != "" {
		t.Errorf("plans.json differs from plans.yaml (-yaml +json):\n%s", diff)
	}
	// The facts the original app states, one by one.
	byName := map[string]*Plan{}
	for i := range yamlPlans {
		byName[yamlPlans[i].Name] = &yamlPlans[i]
	}
	facts := []struct {
		plan, action string
		want         Limit
	}{
		{"FREE", "diagram.upload", PerMonth(5)},
		{"FREE", "ai.analysis", PerMonth(3)},
		{"FREE", "procedure.view", PerMonth(Unlimited)},
		{"PROFESSIONAL", "diagram.upload", PerMonth(100)},
		{"PROFESSIONAL", "ai.analysis", PerMonth(100)},
		{"ENTERPRISE", "export.dxf", PerMonth(Unlimited)},
	}
	for _, f := range facts {
		if got := byName[f.plan].Limits[f.action]; len(got) != 1 || got[0] != f.want {
			t.Errorf("%s %s = %v; want [%v]", f.plan, f.action, got, f.want)
		}
	}
	for _, f := range []string{"team_collaboration", "api_access", "priority_support", "custom_ai_training", "white_labeling"} {
		if !byName["ENTERPRISE"].HasFeature(f) {
			t.Errorf("ENTERPRISE.HasFeature(%q) = false; want true", f)
		}
		if byName["FREE"].HasFeature(f) {
			t.Errorf("FREE.HasFeature(%q) = true; want false", f)
		}
	}
}

// parsers runs a test against both formats.
var parsers = []struct {
	format string
	src    string // how errors name the input
	parse  func([]byte) ([]Plan, error)
}{
	{"yaml", "YAML plans", ParsePlansYAML},
	{"json", "JSON plans", ParsePlansJSON},
}

func TestParsePlansUnlimited(t *testing.T) {
	docs := map[string]string{
		"yaml": "plans:\n  - name: P\n    limits:\n      a: [{max: unlimited, period: day}]\n      b: [{max: \"unlimited\", period: none, max_per_use: 3}]\n      c: [{max: 0, period: hour}, {max: 9223372036854775807, period: week}]\n",
		"json": `{"plans": [{"name": "P", "limits": {"a": [{"max": "unlimited", "period": "day"}], "b": [{"max": "unlimited", "period": "none", "max_per_use": 3}], "c": [{"max": 0, "period": "hour"}, {"max": 9223372036854775807, "period": "week"}]}}]}`,
	}
	for _, p := range parsers {
		_, err := p.parse([]byte(docs[p.format]))
		// 1<<63-1 parses, and validation refuses it as larger than 1<<62.
		var pe *PlanError
		if !errors.As(err, &pe) || pe.Action != "c" || pe.Field != "max" {
			t.Errorf("%s: parse(max 1<<63-1) = %v; want a *PlanError on action c, field max", p.format, err)
		}
		doc := strings.Replace(docs[p.format], "9223372036854775807", "4611686018427387904", 1)
		got, err := p.parse([]byte(doc))
		if err != nil {
			t.Fatalf("%s: parse() = %v", p.format, err)
		}
		want := []Plan{{Name: "P", Limits: map[string][]Limit{
			"a": {PerDay(Unlimited)},
			"b": {Total(Unlimited).WithMaxPerUse(3)},
			"c": {PerHour(0), PerWeek(1 << 62)},
		}}}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: parse() mismatch (-want +got):\n%s", p.format, diff)
		}
	}
}

func TestParsePlansYAMLAnchors(t *testing.T) {
	// A plan may reuse another's limits through an anchor and a merge key.
	doc := `plans:
- name: FREE
  limits: &free
    a: [{max: 1, period: day}]
    b: [{max: 2, period: none}]
- name: PRO
  limits:
    <<: *free
    a: [{max: 10, period: day}]
`
	got, err := ParsePlansYAML([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := []Plan{
		{Name: "FREE", Limits: map[string][]Limit{"a": {PerDay(1)}, "b": {Total(2)}}},
		{Name: "PRO", Limits: map[string][]Limit{"a": {PerDay(10)}, "b": {Total(2)}}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ParsePlansYAML() mismatch (-want +got):\n%s", diff)
	}
}

func TestParsePlansErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		json string
		// want is the message of both parsers, after "quota: <src>";
		// wantYAML and wantJSON, where set, the whole message of one.
		want, wantYAML, wantJSON string
	}{
		{
			name: "unknown limit field",
			yaml: `plans:
  - name: FREE
    limits:
      diagram.upload:
        - max: 5
          period: month
          maxx: 7
`,
			json: `{
  "plans": [
    {
      "name": "FREE",
      "limits": {
        "diagram.upload": [
          {"period": "month", "maxx": 5}
        ]
      }
    }
  ]
}`,
			want: ` line 7: unknown field "maxx"`,
		},
		{
			name: "unknown plan field",
			yaml: "plans:\n  - name: FREE\n    limits: {}\n\n    feature: [a]\n",
			json: "{\"plans\": [\n {\"name\": \"FREE\",\n\n\n  \"feature\": [\"a\"]}]}",
			want: ` line 5: unknown field "feature"`,
		},
		{
			name: "unknown top-level field",
			yaml: "# comment\nplan:\n  - name: FREE\n",
			json: "\n{\"plan\": []}",
			want: ` line 2: unknown field "plan"`,
		},
		{
			name: "negative max",
			yaml: "plans:\n- name: P\n  limits:\n    a:\n    - {max: -1, period: day}\n",
			json: "{\"plans\": [{\"name\": \"P\", \"limits\": {\"a\": [\n\n\n\n{\"max\": -1, \"period\": \"day\"}]}}]}",
			want: ` line 5: max "-1": want a non-negative integer or "unlimited"`,
		},
		{
			name: "fractional max",
			yaml: "plans:\n- name: P\n  limits:\n    a:\n    - {max: 1.5, period: day}\n",
			json: "{\"plans\": [{\"name\": \"P\", \"limits\": {\"a\": [\n\n\n\n{\"max\": 1.5, \"period\": \"day\"}]}}]}",
			want: ` line 5: max "1.5": want a non-negative integer or "unlimited"`,
		},
		{
			name: "max as a number in a string",
			yaml: "plans:\n- name: P\n  limits:\n    a:\n    - {max: \"5\", period: day}\n",
			json: "{\"plans\": [{\"name\": \"P\", \"limits\": {\"a\": [\n\n\n\n{\"max\": \"5\", \"period\": \"day\"}]}}]}",
			want: ` line 5: max "5": want a non-negative integer or "unlimited"`,
		},
		{
			name: "unknown period",
			yaml: "plans:\n- name: P\n  limits:\n    a:\n    - max: 5\n      period: monthly\n",
			json: "{\"plans\": [{\"name\": \"P\", \"limits\": {\"a\": [{\"max\": 5,\n\n\n\n\n \"period\": \"monthly\"}]}}]}",
			want: ` line 6: period "monthly": want none, hour, day, week, month or year`,
		},
		{
			name: "period as a number",
			yaml: "plans:\n- name: P\n  limits:\n    a:\n    - max: 5\n      period: 3\n",
			json: "{\"plans\": [{\"name\": \"P\", \"limits\": {\"a\": [{\"max\": 5,\n\n\n\n\n \"period\": 3}]}}]}",
			want: ` line 6: period "3": want none, hour, day, week, month or year`,
		},
		{
			name:     "duplicate key",
			yaml:     "plans:\n- name: P\n  name: Q\n",
			json:     "{\"plans\": [{\"name\": \"P\",\n \"name\": \"Q\"}]}",
			wantYAML: `quota: YAML plans line 3: mapping key "name" already defined at line 2`,
			wantJSON: `quota: JSON plans line 2: duplicate key "name"`,
		},
		{
			name:     "plans is not a list",
			yaml:     "plans: {}\n",
			json:     `{"plans": {}}`,
			wantYAML: `quota: YAML plans line 1: cannot unmarshal !!map into []quota.planFile`,
			wantJSON: `quota: JSON plans line 1: plans: want an array, got an object`,
		},
		{
			name: "empty",
			yaml: "\n# nothing\n",
			json: " \n",
			want: `: empty document`,
		},
		{
			name: "no plans",
			yaml: "plans: []\n",
			json: `{"plans": []}`,
			want: `: no plans`,
		},
		{
			name: "null",
			yaml: "null\n",
			json: "null",
			want: `: no plans`,
		},
	}
	for _, tt := range tests {
		for _, p := range parsers {
			doc, want := tt.yaml, tt.wantYAML
			if p.format == "json" {
				doc, want = tt.json, tt.wantJSON
			}
			if want == "" {
				want = "quota: " + p.src + tt.want
			}
			plans, err := p.parse([]byte(doc))
			if err == nil || err.Error() != want {
				t.Errorf("%s %s: parse() = %v, %v; want error %q", tt.name, p.format, plans, err, want)
				continue
			}
			if !errors.Is(err, ErrInvalidPlan) {
				t.Errorf("%s %s: parse() = %v; want an error matching ErrInvalidPlan", tt.name, p.format, err)
			}
		}
	}
}

func TestParsePlansSyntaxErrors(t *testing.T) {
	tests := []struct {
		format, doc string
		want        string
	}{
		// A syntax error keeps the message of yaml.v3, which reports the
		// position only in its text. It numbers the lines of its parser's
		// errors from 0 (the first four), of its scanner's from 1.
		{"yaml", "plans:\n  - name: FREE\n    limits: {a: [}\n", "quota: YAML plans: yaml: line 2: did not find expected node content"},
		{"yaml", "plans:\n- name: P\n  limits:\n    a: [{max: 1, period: day}]\n    b: [{max: 1, period: day}\n", "quota: YAML plans: yaml: line 4: did not find expected ',' or ']'"},
		{"yaml", "plans:\n  - name: P\n    limits: {}\n  x: 1\n", "quota: YAML plans: yaml: line 1: did not find expected '-' indicator"},
		{"yaml", "plans:\n- name: P\n  limits: {}\n\n- name: Q\n  limits: {}\n  - x\n", "quota: YAML plans: yaml: line 4: did not find expected key"},
		{"yaml", "plans:\n- name: P\n  features: [a]\n  limits: @x\n", "quota: YAML plans: yaml: line 4: found character that cannot start any token"},
		{"yaml", "plans:\n  - name: FREE\n\tlimits: {}\n", "quota: YAML plans: yaml: line 2: found a tab character that violates indentation"},
		{"yaml", "plans: []\n---\nplans: []\n", "quota: YAML plans line 2: more than one YAML document"},
		{"yaml", "plans:\n- name: P\n  limits:\n    a: [{max: 1, period: day}]\n    b: *nope\n", "quota: YAML plans: yaml: unknown anchor 'nope' referenced"},
		{"json", "{\n  \"plans\": [\n    {\"name\": \"FREE\"}\n    {\"name\": \"PRO\"}\n  ]\n}", "quota: JSON plans line 4: invalid character '{' after array element"},
		{"json", "{\"plans\": []}\n{}", "quota: JSON plans line 2: invalid character '{' after top-level value"},
		{"json", "{\"plans\": [\n", "quota: JSON plans line 2: unexpected end of JSON input"},
		{"json", "{\"plans\": [{\"name\":\n 5}]}", "quota: JSON plans line 2: name: got a JSON number, want a string"},
		{"json", "{\"plans\": [{\"name\": \"P\", \"limits\": {\"a\": [{\"max\": 1, \"period\": \"day\",\n\"max_per_use\": \"big\"}]}}]}", "quota: JSON plans line 2: max_per_use: got a JSON string, want an integer"},
	}
	for _, tt := range tests {
		parse := ParsePlansYAML
		if tt.format == "json" {
			parse = ParsePlansJSON
		}
		plans, err := parse([]byte(tt.doc))
		if err == nil || err.Error() != tt.want {
			t.Errorf("parse %s %q = %v, %v; want error %q", tt.format, tt.doc, plans, err, tt.want)
			continue
		}
		if !errors.Is(err, ErrInvalidPlan) {
			t.Errorf("parse %s %q = %v; want an error matching ErrInvalidPlan", tt.format, tt.doc, err)
		}
	}
}

// TestParsePlansValidation checks that the parsers return the *PlanError of
// validation, naming plan, action and field.
func TestParsePlansValidation(t *testing.T) {
	tests := []struct {
		name, yaml, json string
		want             PlanError
	}{
		{
			"per-use cap", "plans:\n- name: P\n  limits:\n    a: [{max: 1, period: none, max_per_use: -1}]\n",
			`{"plans": [{"name": "P", "limits": {"a": [{"max": 1, "period": "none", "max_per_use": -1}]}}]}`,
			PlanError{Plan: "P", Action: "a", Field: "max_per_use"},
		},
		{
			"missing max", "plans:\n- name: P\n  limits:\n    a: [{period: day}]\n",
			`{"plans": [{"name": "P", "limits": {"a": [{"period": "day"}]}}]}`,
			PlanError{Plan: "P", Action: "a", Field: "max"},
		},
		{
			"null max", "plans:\n- name: P\n  limits:\n    a: [{max: null, period: day}]\n",
			`{"plans": [{"name": "P", "limits": {"a": [{"max": null, "period": "day"}]}}]}`,
			PlanError{Plan: "P", Action: "a", Field: "max"},
		},
		{
			"missing period", "plans:\n- name: P\n  limits:\n    a: [{max: 3}]\n",
			`{"plans": [{"name": "P", "limits": {"a": [{"max": 3}]}}]}`,
			PlanError{Plan: "P", Action: "a", Field: "period"},
		},
		{
			"no limits", "plans:\n- name: P\n  limits:\n    a: []\n",
			`{"plans": [{"name": "P", "limits": {"a": []}}]}`,
			PlanError{Plan: "P", Action: "a", Field: "limits"},
		},
		{
			"unnamed", "plans:\n- name: P\n- limits: {}\n",
			`{"plans": [{"name": "P"}, {"limits": {}}]}`,
			PlanError{Plan: "#2", Field: "name"},
		},
		{
			"mixed periods", "plans:\n- name: P\n  limits:\n    a: [{max: 3, period: none}, {max: 3, period: day}]\n",
			`{"plans": [{"name": "P", "limits": {"a": [{"max": 3, "period": "none"}, {"max": 3, "period": "day"}]}}]}`,
			PlanError{Plan: "P", Action: "a", Field: "period"},
		},
		{
			"feature", "plans:\n- name: P\n  features: [x, x]\n",
			`{"plans": [{"name": "P", "features": ["x", "x"]}]}`,
			PlanError{Plan: "P", Field: "features"},
		},
	}
	for _, tt := range tests {
		for _, p := range parsers {
			doc := tt.yaml
			if p.format == "json" {
				doc = tt.json
			}
			_, err := p.parse([]byte(doc))
			var pe *PlanError
			if !errors.As(err, &pe) {
				t.Errorf("%s %s: parse() = %v; want a *PlanError", tt.name, p.format, err)
				continue
			}
			if got := (PlanError{Plan: pe.Plan, Action: pe.Action, Field: pe.Field}); got != tt.want {
				t.Errorf("%s %s: parse() = %+v; want %+v", tt.name, p.format, got, tt.want)
			}
			if !errors.Is(err, ErrInvalidPlan) {
				t.Errorf("%s %s: parse() = %v; want an error matching ErrInvalidPlan", tt.name, p.format, err)
			}
		}
	}
}

func TestLoadPlansFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	ok := "plans:\n- name: P\n  limits: {a: [{max: 1, period: day}]}\n"
	for _, name := range []string{"a.yaml", "b.yml", "c.YAML"} {
		if _, err := LoadPlans(write(name, ok)); err != nil {
			t.Errorf("LoadPlans(%s) = %v; want nil", name, err)
		}
	}
	// Errors name the file.
	bad := write("bad.json", "{\"plans\": [{\"name\": \"P\",\n \"maxx\": 1}]}")
	_, err := LoadPlans(bad)
	if want := "quota: " + bad + ` line 2: unknown field "maxx"`; err == nil || err.Error() != want {
		t.Errorf("LoadPlans(%s) = %v; want error %q", bad, err, want)
	}
	// The extension picks the format: this YAML is not JSON.
	_, err = LoadPlans(write("d.json", ok))
	if !errors.Is(err, ErrInvalidPlan) || !strings.Contains(err.Error(), "d.json line 1: invalid character") {
		t.Errorf("LoadPlans(YAML in d.json) = %v; want a JSON syntax error on line 1", err)
	}
	_, err = LoadPlans(write("e.toml", ok))
	if !errors.Is(err, ErrInvalidPlan) || !strings.Contains(err.Error(), `unknown extension ".toml"`) {
		t.Errorf("LoadPlans(e.toml) = %v; want an unknown extension error matching ErrInvalidPlan", err)
	}
	_, err = LoadPlans(filepath.Join(dir, "missing.yaml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadPlans(missing.yaml) = %v; want an error matching fs.ErrNotExist", err)
	}
}

// fuzzCatalog checks what the catalog parsers accept: plans that validate.
func fuzzCatalog(t *testing.T, parse func([]byte) ([]Plan, error), data []byte) {
	plans, err := parse(data)
	if err != nil {
		if !errors.Is(err, ErrInvalidPlan) {
			t.Fatalf("parse(%q) = %v; want an error matching ErrInvalidPlan", data, err)
		}
		return
	}
	if len(plans) == 0 {
		t.Fatalf("parse(%q) = no plans, nil", data)
	}
	if _, err := validatePlans(plans); err != nil {
		t.Fatalf("parse(%q) = plans that do not validate: %v", data, err)
	}
}

func FuzzParsePlansYAML(f *testing.F) {
	for _, s := range []string{
		"plans:\n- name: P\n  limits: {a: [{max: unlimited, period: month}]}\n",
		"plans:\n- name: P\n  features: [x]\n  limits:\n    a:\n    - {max: 1, period: none, max_per_use: 3}\n",
		"plans:\n- name: P\n  limits: {a: [{max: 5, period: month, maxx: 1}]}\n",
		"plans:\n- &p {name: P}\n- *p\n",
		"plans: []\n---\n",
		"",
	} {
		f.Add([]byte(s))
	}
	if b, err := os.ReadFile(filepath.Join("testdata", "plans.yaml")); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) { fuzzCatalog(t, ParsePlansYAML, data) })
}

func FuzzParsePlansJSON(f *testing.F) {
	for _, s := range []string{
		`{"plans": [{"name": "P", "limits": {"a": [{"max": "unlimited", "period": "month"}]}}]}`,
		`{"plans": [{"name": "P", "features": ["x"], "limits": {"a": [{"max": 1, "period": "none", "max_per_use": 3}]}}]}`,
		`{"plans": [{"name": "P", "limits": {"a": [{"max": 5, "maxx": 1}]}}]}`,
		`{"plans": null}`,
		`[]`,
		"",
	} {
		f.Add([]byte(s))
	}
	if b, err := os.ReadFile(filepath.Join("testdata", "plans.json")); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) { fuzzCatalog(t, ParsePlansJSON, data) })
}

// TestParsePlansYAMLNodes checks the YAML parser's decoding of the nodes
// of a document: aliases and merge keys, null, and the problems it finds,
// each named with the line of the node at fault, in document order.
func TestParsePlansYAMLNodes(t *testing.T) {
	tests := []struct {
		name, doc string
		want      []Plan // when wantErr is ""
		wantErr   string
	}{
		{
			name: "every problem",
			doc: `plans:
- name: P
  nmae: x
  limits:
    a: [{max: 1, period: daily, max_per_use: big}]
- name: [Q]
- 5
plan: {}
`,
			wantErr: `quota: YAML plans line 3: unknown field "nmae"; line 5: period "daily": want none, hour, day, week, month or year; ` +
				"line 5: cannot unmarshal !!str `big` into int64; line 6: cannot unmarshal !!seq into string; " +
				"line 7: cannot unmarshal !!int `5` into quota.planFile; line 8: unknown field \"plan\"",
		},
		{
			name: "an alias's problem is on its anchor's line",
			doc: `plans:
- name: P
  limits:
    a: [{max: &m big, period: day}]
    b: [{max: *m, period: day}]
    c: &l [{max: 1, period: day}]
  features: *l
`,
			wantErr: `quota: YAML plans line 4: max "big": want a non-negative integer or "unlimited"; ` +
				`line 4: max "big": want a non-negative integer or "unlimited"; line 6: cannot unmarshal !!map into string`,
		},
		{
			name: "a field set twice through an alias key",
			doc: `plans:
- &n name: P
  *n : Q
`,
			wantErr: `quota: YAML plans line 3: field name already set in type quota.planFile`,
		},
		{
			name:    "long values are cut",
			doc:     "plans:\n- name: P\n  limits: {a: [{max: 1, period: day, max_per_use: 12345678901234567890}]}\n",
			wantErr: "quota: YAML plans line 3: cannot unmarshal !!int `1234567...` into int64",
		},
		{
			name: "null is left out",
			doc: `plans:
- null
- name: P
  features: [a, null, b]
  limits:
    a: [null, {max: 1, period: day, max_per_use: null}]
    ~: [{max: 2, period: day}]
`,
			want: []Plan{{Name: "P", Features: []string{"a", "b"}, Limits: map[string][]Limit{"a": {PerDay(1)}}}},
		},
		{
			name:    "null max",
			doc:     "plans:\n- name: P\n  limits: {a: [{max: ~, period: day}]}\n",
			wantErr: `quota: plan "P" action "a" field max: limit 1 has no max`,
		},
		{
			name: "merge keys fill in what a mapping lacks",
			doc: `plans:
- name: P
  limits:
    a: [&day {max: 1, period: day}]
    b: [{<<: *day, max: 2}]
    c: [{<<: [*day, {max_per_use: 3, period: hour}], period: none}]
`,
			want: []Plan{{Name: "P", Limits: map[string][]Limit{
				"a": {PerDay(1)},
				"b": {PerDay(2)},
				"c": {Total(1).WithMaxPerUse(3)},
			}}},
		},
		{
			name: "a merged mapping's unknown field",
			doc: `plans:
- name: P
  limits:
    a: [{<<: {maxx: 1, max: 5}, max: 1, period: day}]
`,
			wantErr: `quota: YAML plans line 4: unknown field "maxx"`,
		},
		{
			name:    "a merge key's value is no mapping",
			doc:     "plans:\n- name: P\n  <<: 5\n",
			wantErr: `quota: YAML plans: yaml: map merge requires map or sequence of maps as the value`,
		},
		{
			name:    "an alias within its own anchor",
			doc:     "plans:\n- name: P\n  limits: &l {<<: *l}\n",
			wantErr: `quota: YAML plans: yaml: anchor 'l' value contains itself`,
		},
		{
			name: "excessive aliasing",
			doc: "plans:\n- &p {name: P, features: [" + strings.Repeat("a, ", 200) + "a]}\n" +
				strings.Repeat("- *p\n", 300),
			wantErr: `quota: YAML plans: yaml: document contains excessive aliasing`,
		},
	}
	for _, tt := range tests {
		got, err := ParsePlansYAML([]byte(tt.doc))
		if tt.wantErr != "" {
			if err == nil || err.Error() != tt.wantErr {
				t.Errorf("%s: ParsePlansYAML() = %v, %v; want error %q", tt.name, got, err, tt.wantErr)
			} else if !errors.Is(err, ErrInvalidPlan) {
				t.Errorf("%s: ParsePlansYAML() = %v; want an error matching ErrInvalidPlan", tt.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: ParsePlansYAML() = %v", tt.name, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("%s: ParsePlansYAML() mismatch (-want +got):\n%s", tt.name, diff)
		}
	}

	// A key that is a mapping or a sequence, in a mapping with a merge
	// key, is beyond yaml.v3, which fails in its own words.
	for _, doc := range []string{
		"plans:\n- name: P\n  <<: {}\n  [a]: 1\n",
		"plans:\n- name: P\n  limits:\n    ? {a: 1}\n    : []\n    <<: {}\n",
	} {
		_, err := ParsePlansYAML([]byte(doc))
		if !errors.Is(err, ErrInvalidPlan) || !strings.HasPrefix(err.Error(), "quota: YAML plans: yaml: ") {
			t.Errorf("ParsePlansYAML(%q) = %v; want yaml.v3's error, matching ErrInvalidPlan", doc, err)
		}
	}
}
