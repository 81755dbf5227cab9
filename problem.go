package quota

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"
)

// ContentTypeProblem is the media type of the error responses that
// Middleware and UsageHandler write: an RFC 9457 problem details object.
const ContentTypeProblem = "application/problem+json"

// Problem types of the responses that Middleware and UsageHandler write.
// Responses whose status says it all (400, 401, 405, 411 and 503) have
// type "about:blank" and the status's text as title.
const (
	// DefaultProblemType is the type of a 429 response, unless
	// WithProblemType replaces it.
	DefaultProblemType = "https://quotakit.dev/problems/quota-exceeded"

	// ProblemTypeNotInPlan is the type of a 403 response to a use that the
	// subject's plan does not include: a required feature it lacks, or a
	// limit of 0 on the action.
	ProblemTypeNotInPlan = "https://quotakit.dev/problems/not-in-plan"

	// ProblemTypeNoSubscription is the type of a 403 response to a
	// subject that has no subscription (and no default plan applies), or
	// whose plan the catalog no longer defines.
	ProblemTypeNoSubscription = "https://quotakit.dev/problems/no-subscription"

	// ProblemTypeTooLarge is the type of a 413 response: a use larger than
	// the action's per-use cap, or a body larger than allowed.
	ProblemTypeTooLarge = "https://quotakit.dev/problems/too-large"
)

// DefaultUnavailableRetryAfter is the Retry-After of a 503 response to a
// store failure, unless WithUnavailableRetryAfter replaces it.
const DefaultUnavailableRetryAfter = 5 * time.Second

// Problem is the body of every error response that Middleware and
// UsageHandler write, an RFC 9457 problem details object; clients may
// decode into it. It never holds an error's text.
type Problem struct {
	// Type is a URI naming the kind of problem: DefaultProblemType,
	// ProblemTypeNotInPlan, ProblemTypeNoSubscription,
	// ProblemTypeTooLarge or "about:blank".
	Type string `json:"type"`
	// Title is a short summary of Type: "Quota exceeded".
	Title string `json:"title"`
	// Status is the response's status code.
	Status int `json:"status"`
	// Detail explains this occurrence to a person: the app's upgrade
	// message (WithMessage), or a default text naming the plan, the limit
	// and when it resets.
	Detail string `json:"detail"`
	// Feature is the feature the plan lacks, on a 403 response of the
	// feature gate.
	Feature string `json:"feature,omitempty"`
	// ProblemUsage holds the figures of the limit that refused the use,
	// on the responses that follow a decision (429, and 403 and 413
	// after Reserve); nil otherwise. Its members are inlined.
	*ProblemUsage
}

// ProblemUsage holds the figures of a limit, as extension members of a
// Problem. They are those of Decision's LimitStatus, under the names
// that UsageHandler's report gives them.
type ProblemUsage struct {
	Action string `json:"action"`
	Plan   string `json:"plan"`
	// Used counts what the subject used in the window, reservations
	// included.
	Used int64 `json:"used"`
	// Limit is the limit's Max.
	Limit     int64 `json:"limit"`
	Remaining int64 `json:"remaining"`
	// Percent is Used as a percentage of Limit, rounded to 2 decimals.
	Percent float64 `json:"percent"`
	Level   Level   `json:"level"`
	// MaxPerUse is the per-use cap, on a 413 response.
	MaxPerUse int64 `json:"max_per_use,omitempty"`
	// ResetAt is when the limit's window resets, in UTC (RFC 3339);
	// omitted for an allocation, which never resets.
	ResetAt time.Time `json:"reset_at,omitzero"`
}

// writeProblem writes p as the whole response: an RFC 9457 body with its
// status, never an error's text.
func writeProblem(w http.ResponseWriter, p *Problem) {
	b, err := json.Marshal(p)
	if err != nil {
		// A Problem always encodes; keep the status if it somehow does not.
		b = []byte(`{"type":"about:blank","status":` + strconv.Itoa(p.Status) + `}`)
	}
	b = append(b, '\n')
	h := w.Header()
	h.Set("Content-Type", ContentTypeProblem)
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Encoding")
	w.WriteHeader(p.Status)
	_, _ = w.Write(b) // the client may be gone; nothing to do
}

// statusProblem is a problem of type "about:blank", whose status says
// what it is.
func statusProblem(status int, detail string) *Problem {
	return &Problem{Type: "about:blank", Title: http.StatusText(status), Status: status, Detail: detail}
}

// featureProblem answers a plan that lacks feature.
func featureProblem(feature string) *Problem {
	return &Problem{
		Type:    ProblemTypeNotInPlan,
		Title:   "Feature not in plan",
		Status:  http.StatusForbidden,
		Detail:  fmt.Sprintf("Your plan does not include the feature %q.", feature),
		Feature: feature,
	}
}

// writeUnauthorized answers 401 with custom, the app's handler, or else a
// problem of its own.
func writeUnauthorized(w http.ResponseWriter, r *http.Request, custom http.Handler) {
	if custom != nil {
		custom.ServeHTTP(w, r)
		return
	}
	writeProblem(w, statusProblem(http.StatusUnauthorized, "This request needs valid credentials."))
}

// isNoPlan reports whether err says the subject has no plan in force.
func isNoPlan(err error) bool {
	return errors.Is(err, ErrNoSubscription) || errors.Is(err, ErrUnknownPlan)
}

// writeFailure answers an engine or store error that is not the client's:
// 403 (ProblemTypeNoSubscription) when the subject has no plan, 503 with
// Retry-After otherwise. Errors other than a missing subscription go to
// c.onError; the body never holds their text.
func writeFailure(w http.ResponseWriter, r *http.Request, err error, c *httpConfig, noPlan, unavailable string) {
	if !errors.Is(err, ErrNoSubscription) {
		c.onError(r, err)
	}
	if isNoPlan(err) {
		writeProblem(w, &Problem{
			Type:   ProblemTypeNoSubscription,
			Title:  "No subscription",
			Status: http.StatusForbidden,
			Detail: noPlan,
		})
		return
	}
	w.Header().Set(HeaderRetryAfter, strconv.FormatInt(ceilSeconds(c.retry503), 10))
	writeProblem(w, statusProblem(http.StatusServiceUnavailable, unavailable))
}

// deny answers a denied decision: 413 over a per-use cap, 403 for a
// limit of 0, 429 otherwise, with the quota headers, and Retry-After when
// the limit resets within WithMaxRetryAfter.
func (m *middleware) deny(w http.ResponseWriter, d Decision) {
	now := m.q.Now()
	m.setHeaders(w.Header(), d, now)
	if d.Reason == ReasonPerUse {
		m.tooLarge(w, &d, d.MaxPerUse)
		return
	}
	p := &Problem{ProblemUsage: usageOf(&d), Detail: m.detail(&d, 0)}
	if d.Limit == 0 {
		p.Type, p.Title, p.Status = ProblemTypeNotInPlan, "Not in plan", http.StatusForbidden
	} else {
		p.Type, p.Title, p.Status = m.cfg.problemType, "Quota exceeded", http.StatusTooManyRequests
		// A wait past the bound stays in the body and in RateLimit:
		// retrying clients sleep for whatever Retry-After says.
		if ra := d.RetryAfter(now); ra > 0 && ra <= m.cfg.maxRetryAfter {
			w.Header().Set(HeaderRetryAfter, strconv.FormatInt(ceilSeconds(ra), 10))
		}
	}
	writeProblem(w, p)
}

// tooLarge answers 413 to a body or amount over most. d, when not nil,
// is the per-use denial.
func (m *middleware) tooLarge(w http.ResponseWriter, d *Decision, most int64) {
	p := &Problem{
		Type:   ProblemTypeTooLarge,
		Title:  "Content Too Large",
		Status: http.StatusRequestEntityTooLarge,
		Detail: fmt.Sprintf("The request body is larger than the %d bytes allowed.", most),
	}
	if d != nil {
		p.ProblemUsage = usageOf(d)
		p.MaxPerUse = most
		p.Detail = m.detail(d, most)
	}
	writeProblem(w, p)
}

func usageOf(d *Decision) *ProblemUsage {
	u := &ProblemUsage{
		Action:    d.Action,
		Plan:      d.Plan,
		Used:      d.Used,
		Limit:     d.Limit,
		Remaining: d.Remaining,
		Percent:   math.Round(d.Percent*100) / 100,
		Level:     d.Level,
	}
	if !d.ResetAt.IsZero() {
		u.ResetAt = d.ResetAt.UTC()
	}
	return u
}

// detail returns the detail of a denial: the app's message, or the
// default text.
func (m *middleware) detail(d *Decision, most int64) string {
	if m.cfg.message != nil {
		if s := m.cfg.message(*d); s != "" {
			return s
		}
	}
	return defaultDetail(d, most)
}

// defaultDetail names the plan, the limit and when it resets. A limit
// that never resets, an allocation, is stated "in total", never "per
// none".
func defaultDetail(d *Decision, most int64) string {
	switch {
	case d.Reason == ReasonPerUse:
		return fmt.Sprintf("The %s plan allows at most %d %s per use.", d.Plan, most, d.Action)
	case d.Limit == 0:
		return fmt.Sprintf("The %s plan does not include %s.", d.Plan, d.Action)
	case d.Period == PeriodNone || d.ResetAt.IsZero():
		return fmt.Sprintf("The %s plan allows %d %s in total; %d are used and this request needs %d.", d.Plan, d.Limit, d.Action, d.Used, d.Amount)
	default:
		return fmt.Sprintf("The %s plan allows %d %s per %s; %d are used. The limit resets at %s.", d.Plan, d.Limit, d.Action, d.Period, d.Used, d.ResetAt.UTC().Format(time.RFC3339))
	}
}
