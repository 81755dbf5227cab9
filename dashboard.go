package quota

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
)

// MaxUsageDays is the largest number of days that UsageHandler serves a
// daily series for (?days=N).
const MaxUsageDays = 366

// UsageResponse is the body of a 200 response of UsageHandler: the
// subject's Report (with the time zone of its days) and, on request, its
// daily usage per action. UsageHandler's documentation describes every
// field.
type UsageResponse struct {
	Report
	// Daily is the usage per action and day of the days asked for with
	// ?days=N; nil (omitted) otherwise.
	Daily []ActionSeries `json:"daily,omitzero"`
}

// ActionSeries is the usage of one action over consecutive buckets.
type ActionSeries struct {
	Action string `json:"action"`
	// Points are the buckets in time order, with zeros where nothing
	// was used. Their Action is empty.
	Points []Point `json:"points"`
}

// UsageHandler returns a handler that serves the current subject's usage
// as JSON, for a dashboard: q.Usage of the subject, its time zone and,
// with the query ?days=N, its daily usage of every action over the last N
// days. It is safe for concurrent use, and works with http.ServeMux and
// any router. subject names who is asking, as for Middleware (usually the
// same function): nothing of the request is trusted otherwise.
//
// A request is answered as follows; each error response is an RFC 9457
// problem (Content-Type ContentTypeProblem, a Problem body that never
// holds an error's text):
//
//   - 405 to a method other than GET and HEAD, with Allow: GET, HEAD.
//   - 401 when subject(r) fails, returns "" or returns a name that
//     ValidateName refuses (or the WithUnauthorized handler).
//   - 400 when the query has a days parameter that is not one decimal
//     integer from 1 to MaxUsageDays (366), without sign or leading zero,
//     or has it more than once.
//   - 403, type ProblemTypeNoSubscription, to a subject with no
//     subscription while Config.DefaultPlan is empty, or whose plan the
//     catalog no longer defines (also reported to the error hook).
//   - 503 with Retry-After (WithUnavailableRetryAfter, default
//     DefaultUnavailableRetryAfter) to any other error of the engine or
//     the store (ErrClosed, a cancelled request), reported to the error
//     hook (WithErrorHook, default Config.Logger).
//   - 200 otherwise: Content-Type application/json, a UsageResponse. A
//     HEAD request gets the same status and headers without the body.
//
// Every response has Cache-Control: no-store, and every response it
// writes X-Content-Type-Options: nosniff and a Content-Length. The 200
// body is one JSON object; its field names are stable.
// Times are RFC 3339 strings in UTC; amounts are integers in the unit of
// the action (uses, bytes, seats). Its fields:
//
//   - subject (string): the subject, as subject(r) named it.
//   - plan (string): the name of the plan in force now (after a plan
//     change scheduled by SchedulePlan has taken effect).
//   - at (time): the instant of the report; the days end with the one
//     that holds it.
//   - time_zone (string): the IANA zone in which the subject's days,
//     weeks and months begin ("UTC" by default); show reset times and
//     the daily buckets in it.
//   - features (array of strings): the features the plan grants, in
//     alphabetical order; [] when none.
//   - actions (array): one object per action that the plan or the
//     subject's overrides limit, in action-name order. Its members
//     describe the action's most used limit (highest percent; the first
//     of equals), then every limit:
//   - actions[].action (string): the action, "diagram.upload".
//   - actions[].period (string): "hour", "day", "week", "month" or
//     "year" for a counter that resets; "none" for an allocation (storage
//     bytes, seats) that goes up with use and down with release.
//   - actions[].limit (integer): the most the period allows; -1
//     (Unlimited) for no limit; 0 when the plan does not include the
//     action (percent is then 100 and level "exceeded": show it as not
//     included rather than as a warning).
//   - actions[].max_per_use (integer): the largest single use (a file
//     size cap, in the action's unit); omitted when there is none.
//   - actions[].used (integer): what is counted in the current window
//     (for an allocation: what is allocated now), reservations included.
//   - actions[].remaining (integer): limit - used, at least 0; -1 when
//     unlimited.
//   - actions[].percent (number): used as a percentage of limit, not
//     rounded and possibly over 100; 0 when unlimited, 100 when the limit
//     is 0.
//   - actions[].level (string): "ok", "warning" (percent at or above
//     Thresholds.Warning, default 80), "critical" (default 90) or
//     "exceeded" (default 100): a toast, a banner, a modal.
//   - actions[].period_start (time): the start of the current window;
//     omitted for an allocation.
//   - actions[].reset_at (time): when the next window starts and the
//     count resets; omitted for an allocation, which never resets.
//   - actions[].limits (array): every limit of the action in period
//     order (an allocation, then hour, day, week, month, year), each with
//     the members period, limit, max_per_use, used, remaining, percent,
//     level, period_start and reset_at above.
//   - actions[].previous (array): for each of limits in the same order,
//     the window before the current one: start (time), end (time) and
//     used (integer, what was used in it: "last month"); {"used": 0}
//     alone for an allocation.
//   - daily (array): present only with ?days=N. One object per action of
//     the plan or the overrides and per other action used in those days,
//     in action-name order:
//   - daily[].action (string): the action.
//   - daily[].points (array): exactly N objects, one per calendar day in
//     time_zone, oldest first, the last being the day that holds the
//     report's instant (today, still running). A day lasts 23 or 25
//     hours when clocks change. Each has start (time, the day's local midnight), end (time,
//     the next day's), amount (integer, the sum of the amounts recorded
//     that day, in the action's unit; a release counts negative) and
//     count (integer, the number of records); 0 and 0 for a day without
//     usage.
//
// A request reads the subject's subscription once: q.Usage, then, for
// ?days=N, q.Series over the report's actions and time zone.
//
// The options are the HTTPOption values that Middleware takes too
// (WithErrorHook, WithUnauthorized, WithUnavailableRetryAfter); an
// option of Middleware alone does not compile here. UsageHandler panics
// if q or subject is nil, or if WithUnavailableRetryAfter is negative.
func UsageHandler(q *Quota, subject func(*http.Request) (string, error), opts ...UsageHandlerOption) http.Handler {
	if q == nil {
		panic("quota: UsageHandler: nil *Quota")
	}
	if subject == nil {
		panic("quota: UsageHandler: nil subject function")
	}
	h := &usageHandler{q: q, subject: subject}
	for _, o := range opts {
		if o != nil {
			o.applyUsageHandler(&h.cfg)
		}
	}
	h.cfg.validate("UsageHandler")
	h.cfg.logger = q.logger
	h.cfg.setDefaults("quota usage handler")
	return h
}

type usageHandler struct {
	q       *Quota
	subject func(*http.Request) (string, error)
	cfg     usageHandlerConfig
}

func (h *usageHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeProblem(w, statusProblem(http.StatusMethodNotAllowed, "Use GET or HEAD."))
		return
	}
	subject, err := h.subject(r)
	if err != nil || subject == "" || ValidateName(subject) != nil {
		h.unauthorized(w, r)
		return
	}
	days, ok := parseDays(r.URL.Query())
	if !ok {
		writeProblem(w, statusProblem(http.StatusBadRequest, fmt.Sprintf("days must be a whole number from 1 to %d.", MaxUsageDays)))
		return
	}
	res, err := h.response(r.Context(), subject, days)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	b, err := json.Marshal(res)
	if err != nil {
		h.fail(w, r, err) // cannot happen: every field encodes
		return
	}
	b = append(b, '\n')
	hd := w.Header()
	hd.Set("Content-Type", "application/json")
	hd.Set("Content-Length", strconv.Itoa(len(b)))
	hd.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(b) // the client may be gone; nothing to do
	}
}

// parseDays returns the days parameter of query, 0 when it is absent,
// and false when it is invalid.
func parseDays(query url.Values) (int, bool) {
	vs, ok := query["days"]
	if !ok {
		return 0, true
	}
	if len(vs) != 1 {
		return 0, false
	}
	s := vs[0]
	if s == "" || len(s) > 3 || s[0] == '0' {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n, n <= MaxUsageDays
}

// response builds the body of a 200 response: subject's report and, if
// days > 0, its daily series of the last days. The series is asked for
// with the report's time zone and actions, so that the subscription is
// read once.
func (h *usageHandler) response(ctx context.Context, subject string, days int) (*UsageResponse, error) {
	rep, err := h.q.Usage(ctx, subject)
	if err != nil {
		return nil, err
	}
	res := &UsageResponse{Report: rep}
	if days == 0 {
		return res, nil
	}
	actions := make([]string, len(rep.Actions)) // not nil, even if empty
	for i, a := range rep.Actions {
		actions[i] = a.Action
	}
	points, err := h.q.Series(ctx, SeriesQuery{
		Subject:  subject,
		To:       rep.At,
		Last:     days,
		Step:     PeriodDay,
		TimeZone: rep.TimeZone,
		Actions:  actions,
		ByAction: true,
		Dense:    true,
	})
	if err != nil {
		return nil, err
	}
	res.Daily = dailySeries(points)
	return res, nil
}

// dailySeries splits points, dense and ordered by start then action,
// into one series per action, in action order.
func dailySeries(points []Point) []ActionSeries {
	index := map[string]int{}
	out := []ActionSeries{}
	for _, p := range points {
		i, ok := index[p.Action]
		if !ok {
			i = len(out)
			index[p.Action] = i
			out = append(out, ActionSeries{Action: p.Action})
		}
		p.Action = ""
		out[i].Points = append(out[i].Points, p)
	}
	return out
}

func (h *usageHandler) unauthorized(w http.ResponseWriter, r *http.Request) {
	writeUnauthorized(w, r, h.cfg.unauthorized)
}

// fail answers an error of the engine or the store.
func (h *usageHandler) fail(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, ErrInvalidSubject) {
		h.unauthorized(w, r)
		return
	}
	writeFailure(w, r, err, &h.cfg.httpConfig,
		"You have no plan.",
		"Usage is not available right now; try again later.")
}
