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
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ParsePlansJSON parses a JSON plan catalog (see LoadPlans for its format)
// and validates its plans. A malformed catalog yields an error that names
// the line at fault and matches ErrInvalidPlan; an invalid plan yields a
// *PlanError. It returns the plans in the order of the file.
func ParsePlansJSON(data []byte) ([]Plan, error) { return parsePlansJSON("JSON plans", data) }

// ParsePlansYAML parses a YAML plan catalog (see LoadPlans for its format)
// and validates its plans. A malformed catalog, or one of more than one
// YAML document, yields an error that matches ErrInvalidPlan and names
// the line at fault, except for a YAML syntax error, which keeps the YAML
// parser's own message; an invalid plan yields a *PlanError. It returns
// the plans in the order of the file.
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

// Error names the source, the line where known, and the problem.
func (e *catalogError) Error() string {
	if e.line > 0 {
		return fmt.Sprintf("quota: %s line %d: %v", e.src, e.line, e.err)
	}
	return fmt.Sprintf("quota: %s: %v", e.src, e.err)
}

// Unwrap returns the problem.
func (e *catalogError) Unwrap() error { return e.err }

// Is reports whether target is ErrInvalidPlan.
func (e *catalogError) Is(target error) bool { return target == ErrInvalidPlan }

// The catalog as written in a file. The JSON walker decodes its leaves
// with their UnmarshalJSON methods; the YAML walker decodes every node
// itself.
type catalogFile struct {
	Plans []planFile
}

type planFile struct {
	Name     string
	Features []string
	Limits   map[string][]limitFile
}

type limitFile struct {
	Max       *maxValue    // required
	Period    *periodValue // required
	MaxPerUse int64
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

// yamlMax returns the max that node n (not an alias) spells.
func yamlMax(n *yaml.Node) (maxValue, error) {
	if n.Kind == yaml.ScalarNode {
		switch n.ShortTag() {
		case "!!str":
			if n.Value == unlimitedName {
				return maxValue(Unlimited), nil
			}
		case "!!int":
			var v int64
			if err := n.Decode(&v); err == nil && v >= 0 {
				return maxValue(v), nil
			}
		}
	}
	return 0, errMax(yamlScalar(n))
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

// yamlPeriod returns the period that node n (not an alias) spells.
func yamlPeriod(n *yaml.Node) (periodValue, error) {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
		if v, err := ParsePeriod(n.Value); err == nil {
			return periodValue(v), nil
		}
	}
	return 0, errPeriod(yamlScalar(n))
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
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err == io.EOF {
			return nil, &catalogError{src: src, err: errors.New("empty document")}
		}
		// Decoding into a yaml.Node fails only on a syntax error, which
		// yaml.v3 reports as text alone: keep its message whole.
		return nil, &catalogError{src: src, err: err}
	}
	var c catalogFile
	if err := walkYAML(src, &doc, &c); err != nil {
		return nil, err
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == io.EOF:
	case err != nil:
		return nil, &catalogError{src: src, err: err}
	default:
		return nil, &catalogError{src: src, line: next.Line, err: errors.New("more than one YAML document")}
	}
	return c.plans(src)
}

// walkYAML decodes doc, the node of a YAML document, into c. Its errors
// name the line of the first problem, and list the others after it.
func walkYAML(src string, doc *yaml.Node, c *catalogFile) error {
	w := &yamlWalker{aliases: make(map[*yaml.Node]bool)}
	w.decode(doc, func(doc *yaml.Node) bool {
		if len(doc.Content) != 1 {
			return false
		}
		w.decode(doc.Content[0], func(n *yaml.Node) bool { return w.catalog(n, c) })
		return true
	})
	if w.fatal != nil {
		return &catalogError{src: src, err: w.fatal}
	}
	if len(w.problems) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString(w.problems[0].msg)
	for _, p := range w.problems[1:] {
		fmt.Fprintf(&b, "; line %d: %s", p.line, p.msg)
	}
	return &catalogError{src: src, line: w.problems[0].line, err: errors.New(b.String())}
}

// yamlWalker decodes the node tree of a YAML catalog into a catalogFile,
// as yaml.v3's Decoder with KnownFields set would decode the document:
// the same values from the same nodes, and the same problems in the same
// order, with the same treatment of null, aliases and merge keys ("<<"),
// and the same guard against excessive aliasing. But it finds the problems
// itself, from the nodes, so that it knows their lines and kinds without
// reading yaml.v3's messages, and words them as yaml.v3 did when it found
// them, so that they read as they always have. It leaves to yaml.v3
// (Node.Decode) only the resolution of single scalars, which fails, with
// yaml.v3's message, where a scalar's explicit tag does not fit its value
// ("!!int abc"), and the failure of mergedKeysError.
//
// A problem, like a *yaml.TypeError's, does not stop the walk, which
// goes on to report the others; a fatal error, like the failures of
// yaml.v3's decoder, does. A decoding function reports whether it decoded
// its node, false for null where yaml.v3 leaves the Go value be: sequence
// elements and map entries that are not decoded are left out.
type yamlWalker struct {
	problems []yamlProblem
	fatal    error

	aliases map[*yaml.Node]bool // the aliases being followed

	// The counts of decoded nodes, in all and under an alias.
	decodes, aliasDecodes, aliasDepth int

	// merged holds, while a merge key's mappings are decoded, the keys
	// they may no longer set: those of the mapping that has the merge
	// key, and those of the mappings merged before. Like yaml.v3, it
	// holds each key as a scalar resolves when decoded into an any.
	merged map[any]bool
}

// A yamlProblem is one of the problems of a document.
type yamlProblem struct {
	line int
	msg  string
}

func (w *yamlWalker) problem(line int, format string, args ...any) {
	w.problems = append(w.problems, yamlProblem{line: line, msg: fmt.Sprintf(format, args...)})
}

func (w *yamlWalker) fail(err error) {
	if w.fatal == nil {
		w.fatal = err
	}
}

// The fatal errors that the walk finds itself, worded as yaml.v3 words
// them.
var (
	errYAMLAliasing = errors.New("yaml: document contains excessive aliasing")
	errYAMLMerge    = errors.New("yaml: map merge requires map or sequence of maps as the value")
)

// yamlAliasRatio returns the share of the first decodes nodes that may be
// decoded through aliases, as yaml.v3 allows: 99% up to 400,000 nodes,
// then less and less, down to 10% from 4,000,000 nodes.
func yamlAliasRatio(decodes int) float64 {
	const low, high = 400_000, 4_000_000
	switch {
	case decodes <= low:
		return 0.99
	case decodes >= high:
		return 0.10
	}
	return 0.99 - 0.89*float64(decodes-low)/float64(high-low)
}

// decode hands n to f, which decodes it, and reports what f reports. It
// follows an alias to its anchor's node, which f receives instead, and
// counts n as yaml.v3 counts the nodes it decodes. Every node is decoded
// through decode, which does nothing once the walk has failed.
func (w *yamlWalker) decode(n *yaml.Node, f func(*yaml.Node) bool) bool {
	if w.fatal != nil {
		return false
	}
	w.decodes++
	if w.aliasDepth > 0 {
		w.aliasDecodes++
	}
	if w.aliasDecodes > 100 && w.decodes > 1000 && float64(w.aliasDecodes)/float64(w.decodes) > yamlAliasRatio(w.decodes) {
		w.fail(errYAMLAliasing)
		return false
	}
	if n.Kind != yaml.AliasNode {
		return f(n)
	}
	if w.aliases[n] {
		w.fail(fmt.Errorf("yaml: anchor '%s' value contains itself", n.Value))
		return false
	}
	w.aliases[n] = true
	w.aliasDepth++
	good := w.decode(n.Alias, f)
	w.aliasDepth--
	delete(w.aliases, n)
	return good
}

// null reports whether scalar n is null. Resolving the scalar fails, and
// so the walk, where yaml.v3 fails: on an explicit tag that does not fit
// the value, as in "!!int abc".
func (w *yamlWalker) null(n *yaml.Node) bool {
	var v any
	if err := n.Decode(&v); err != nil {
		w.fail(err)
		return false
	}
	return v == nil
}

// mismatch records that node n cannot be decoded into a Go value of type
// typ, in yaml.v3's words: "cannot unmarshal !!str `abc` into int64".
func (w *yamlWalker) mismatch(n *yaml.Node, typ string) {
	tag, value := n.ShortTag(), n.Value
	if tag != "!!seq" && tag != "!!map" {
		if len(value) > 10 {
			value = value[:7] + "..."
		}
		value = " `" + value + "`"
	}
	w.problem(n.Line, "cannot unmarshal %s%s into %s", tag, value, typ)
}

// uniqueKeys reports whether mapping n has no key twice, by kind and text,
// and records a problem for each key that repeats an earlier one. Like
// yaml.v3, the walk checks every mapping it decodes, whatever it decodes
// it into, except a max or a period, which spell their own errors.
func (w *yamlWalker) uniqueKeys(n *yaml.Node) bool {
	unique := true
	for i := 0; i < len(n.Content); i += 2 {
		for j := i + 2; j < len(n.Content); j += 2 {
			ki, kj := n.Content[i], n.Content[j]
			if ki.Kind == kj.Kind && ki.Value == kj.Value {
				w.problem(kj.Line, "mapping key %#v already defined at line %d", kj.Value, ki.Line)
				unique = false
			}
		}
	}
	return unique
}

// isMergeKey reports whether key node k is the merge key, "<<".
func isMergeKey(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" && (k.Tag == "" || k.Tag == "!" || k.ShortTag() == "!!merge")
}

// typeName returns the name of Go type T, as yaml.v3 names the types it
// cannot decode a node into: "int64", "[]quota.planFile".
func typeName[T any]() string { return reflect.TypeFor[T]().String() }

// yamlLeaf decodes n into *v, a string or an int64, and reports false for
// null and for a node of another kind or type.
func yamlLeaf[T string | int64](w *yamlWalker, n *yaml.Node, v *T) bool {
	return w.decode(n, func(n *yaml.Node) bool {
		switch n.Kind {
		case yaml.ScalarNode:
			var p *T // nil for null
			if err := n.Decode(&p); err != nil {
				if errors.As(err, new(*yaml.TypeError)) {
					w.mismatch(n, typeName[T]())
				} else {
					w.fail(err)
				}
				return false
			}
			if p == nil {
				return false
			}
			*v = *p
			return true
		case yaml.MappingNode:
			if !w.uniqueKeys(n) {
				return false
			}
		}
		w.mismatch(n, typeName[T]())
		return false
	})
}

// yamlPointer decodes n into *p, a limit's max or period, with spell,
// which returns the value that a node (not an alias) spells. Null sets *p
// to nil; a node of any other tag goes to spell.
func yamlPointer[T any](w *yamlWalker, n *yaml.Node, p **T, spell func(*yaml.Node) (T, error)) {
	w.decode(n, func(n *yaml.Node) bool {
		if n.ShortTag() == "!!null" {
			switch n.Kind {
			case yaml.ScalarNode:
				if w.null(n) {
					*p = nil
					return true
				}
				return false
			case yaml.MappingNode:
				if !w.uniqueKeys(n) {
					return false
				}
			}
			w.mismatch(n, typeName[*T]())
			return false
		}
		v, err := spell(n)
		*p = &v
		if err != nil {
			w.problem(n.Line, "%v", err)
			return false
		}
		return true
	})
}

// list decodes n into a slice of Go type typ, calling elem with each
// element of a sequence, and reports whether the slice is to be set: to
// the elements that elem decoded, or to nil for null.
func (w *yamlWalker) list(n *yaml.Node, typ string, elem func(*yaml.Node)) bool {
	return w.decode(n, func(n *yaml.Node) bool {
		switch n.Kind {
		case yaml.SequenceNode:
			for _, e := range n.Content {
				elem(e)
			}
			return true
		case yaml.ScalarNode:
			if w.null(n) {
				return true
			}
		case yaml.MappingNode:
			if !w.uniqueKeys(n) {
				return false
			}
		}
		w.mismatch(n, typ)
		return false
	})
}

// object decodes n, which decode handed over, into a struct of Go type
// typ, calling the function of fields that has its key with the value of
// each of its entries. It reports an entry whose key no field has, and a
// field set twice (by keys that differ as text but not as strings).
func (w *yamlWalker) object(n *yaml.Node, typ string, fields map[string]func(*yaml.Node)) bool {
	switch n.Kind {
	case yaml.MappingNode:
	case yaml.ScalarNode:
		if !w.null(n) {
			w.mismatch(n, typ)
		}
		return false
	default:
		w.mismatch(n, typ)
		return false
	}
	if !w.uniqueKeys(n) {
		return false
	}
	set := make(map[string]bool, len(fields))
	w.entries(n, func(m *yaml.Node) bool { return w.object(m, typ, fields) }, func(k *yaml.Node, key string, v *yaml.Node) {
		field, ok := fields[key]
		switch {
		case !ok:
			w.problem(k.Line, "unknown field %q", key)
		case set[key]:
			w.problem(k.Line, "field %s already set in type %s", key, typ)
		default:
			set[key] = true
			field(v)
		}
	})
	return true
}

// entries calls each for every key of mapping n that decodes as a
// string, in order, then decodes n's merge key, if any, with into. Under
// a merge (w.merged set), a key that an earlier mapping set is skipped.
func (w *yamlWalker) entries(n *yaml.Node, into func(*yaml.Node) bool, each func(k *yaml.Node, key string, v *yaml.Node)) {
	merged := w.merged
	w.merged = nil
	var merge *yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if isMergeKey(k) {
			merge = v
			continue
		}
		var key string
		if !yamlLeaf(w, k, &key) {
			continue
		}
		if merged != nil {
			if merged[key] {
				continue
			}
			merged[key] = true
		}
		each(k, key, v)
	}
	w.merged = merged
	if merge != nil {
		w.merge(n, merge, into)
	}
}

// merge decodes value m of the merge key of mapping parent, a mapping or
// a sequence of mappings, with into, as yaml.v3 does: a merged mapping
// sets only the keys that neither parent nor a mapping merged before set.
func (w *yamlWalker) merge(parent, m *yaml.Node, into func(*yaml.Node) bool) {
	outer := w.merged
	if outer == nil {
		w.mergedKeys(parent)
	}
	switch m.Kind {
	case yaml.MappingNode:
		w.decode(m, into)
	case yaml.AliasNode:
		if m.Alias.Kind != yaml.MappingNode {
			w.fail(errYAMLMerge)
			return
		}
		w.decode(m, into)
	case yaml.SequenceNode:
		for _, e := range m.Content {
			if e.Kind != yaml.MappingNode && (e.Kind != yaml.AliasNode || e.Alias.Kind != yaml.MappingNode) {
				w.fail(errYAMLMerge)
				return
			}
			w.decode(e, into)
		}
	default:
		w.fail(errYAMLMerge)
		return
	}
	w.merged = outer
}

// mergedKeys starts w.merged with the keys of mapping parent, each decoded
// into an any as yaml.v3 decodes it.
func (w *yamlWalker) mergedKeys(parent *yaml.Node) {
	w.merged = make(map[any]bool)
	for i := 0; i < len(parent.Content); i += 2 {
		var key any
		good := w.decode(parent.Content[i], func(k *yaml.Node) bool {
			switch k.Kind {
			case yaml.ScalarNode:
				if err := k.Decode(&key); err != nil {
					w.fail(err)
					return false
				}
				return true
			case yaml.MappingNode:
				if !w.uniqueKeys(k) {
					return false
				}
			}
			w.fail(mergedKeysError(parent))
			return false
		})
		if good {
			w.merged[key] = true
		}
	}
}

// mergedKeysError returns the error on which yaml.v3 gives up when it
// notes the keys of mapping parent before a merge, and finds one that is
// a mapping or a sequence, which cannot be a key of a Go map. How and
// when it gives up depends on its internals (the keys noted so far are in
// force while it decodes that key), so mergedKeysError has it decode a
// mapping of the same keys, with nothing to merge, and returns its error.
func mergedKeysError(parent *yaml.Node) error {
	keys := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	for i := 0; i+1 < len(parent.Content); i += 2 {
		v := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null"}
		if isMergeKey(parent.Content[i]) {
			v = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
		}
		keys.Content = append(keys.Content, parent.Content[i], v)
	}
	err := keys.Decode(&struct{}{})
	if err == nil || errors.As(err, new(*yaml.TypeError)) {
		// Not expected: yaml.v3 cannot note such a key.
		return errYAMLMerge
	}
	return err
}

func (w *yamlWalker) catalog(n *yaml.Node, c *catalogFile) bool {
	return w.object(n, typeName[catalogFile](), map[string]func(*yaml.Node){
		"plans": func(v *yaml.Node) {
			var plans []planFile
			if w.list(v, typeName[[]planFile](), func(e *yaml.Node) {
				var p planFile
				if w.decode(e, func(e *yaml.Node) bool { return w.plan(e, &p) }) {
					plans = append(plans, p)
				}
			}) {
				c.Plans = plans
			}
		},
	})
}

func (w *yamlWalker) plan(n *yaml.Node, p *planFile) bool {
	return w.object(n, typeName[planFile](), map[string]func(*yaml.Node){
		"name": func(v *yaml.Node) { yamlLeaf(w, v, &p.Name) },
		"features": func(v *yaml.Node) {
			var features []string
			if w.list(v, typeName[[]string](), func(e *yaml.Node) {
				var f string
				if yamlLeaf(w, e, &f) {
					features = append(features, f)
				}
			}) {
				p.Features = features
			}
		},
		"limits": func(v *yaml.Node) {
			w.decode(v, func(v *yaml.Node) bool { return w.limits(v, &p.Limits) })
		},
	})
}

// limits decodes n, which decode handed over, into the map of a plan's
// limits by action.
func (w *yamlWalker) limits(n *yaml.Node, limits *map[string][]limitFile) bool {
	typ := typeName[map[string][]limitFile]()
	switch n.Kind {
	case yaml.MappingNode:
	case yaml.ScalarNode:
		if w.null(n) {
			*limits = nil
			return true
		}
		w.mismatch(n, typ)
		return false
	default:
		w.mismatch(n, typ)
		return false
	}
	if !w.uniqueKeys(n) {
		return false
	}
	if *limits == nil {
		*limits = make(map[string][]limitFile)
	}
	w.entries(n, func(m *yaml.Node) bool { return w.limits(m, limits) }, func(_ *yaml.Node, action string, v *yaml.Node) {
		var ls []limitFile
		if w.list(v, typeName[[]limitFile](), func(e *yaml.Node) {
			var l limitFile
			if w.decode(e, func(e *yaml.Node) bool { return w.limit(e, &l) }) {
				ls = append(ls, l)
			}
		}) {
			(*limits)[action] = ls
		}
	})
	return true
}

func (w *yamlWalker) limit(n *yaml.Node, l *limitFile) bool {
	return w.object(n, typeName[limitFile](), map[string]func(*yaml.Node){
		"max":         func(v *yaml.Node) { yamlPointer(w, v, &l.Max, yamlMax) },
		"period":      func(v *yaml.Node) { yamlPointer(w, v, &l.Period, yamlPeriod) },
		"max_per_use": func(v *yaml.Node) { yamlLeaf(w, v, &l.MaxPerUse) },
	})
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
