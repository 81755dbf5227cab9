package main

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/uptrace/bun"

	"github.com/quotakit/quota"
)

// Diagram is an uploaded diagram. Its bytes are not kept: the demo
// stores their size and digest, which is all the quota needs.
type Diagram struct {
	bun.BaseModel `bun:"table:saas_diagrams"`

	ID        int64     `bun:"id,pk,autoincrement" json:"id"`
	Owner     string    `bun:"owner,notnull" json:"-"`
	Name      string    `bun:"name,notnull" json:"name"`
	Size      int64     `bun:"size,notnull" json:"size"`
	SHA256    string    `bun:"sha256,notnull" json:"sha256"`
	CreatedAt time.Time `bun:"created_at,notnull" json:"created_at"`
}

// Procedure is a step-by-step procedure of the library: free to read on
// every plan, and counted.
type Procedure struct {
	ID    int      `json:"id"`
	Title string   `json:"title"`
	Steps []string `json:"steps"`
}

var procedures = map[int]Procedure{
	1: {1, "Lockout/tagout of a centrifugal pump", []string{"Notify the operators.", "Stop the pump at its local panel.", "Open and lock the breaker.", "Close and lock the suction and discharge valves.", "Bleed the casing and verify zero energy."}},
	2: {2, "Start-up of a cooling-water loop", []string{"Check the strainers.", "Vent the high points.", "Start the standby pump.", "Bring the loop to pressure."}},
	3: {3, "Inspection of a pressure-relief valve", []string{"Isolate the valve.", "Check the seal and the set-pressure tag.", "Record the inspection in the log."}},
}

// upgrades is the upgrade message shown when a plan's limit refuses an
// action, by plan and action.
var upgrades = map[string]string{
	"FREE/diagram.upload":         "The FREE plan includes 5 diagram uploads a month. Upgrade to PROFESSIONAL for 100.",
	"FREE/ai.analysis":            "The FREE plan includes 3 AI analyses a month. Upgrade to PROFESSIONAL for 100.",
	"FREE/storage.bytes":          "The FREE plan includes 1 GiB of storage and files up to 10 MiB. Upgrade to PROFESSIONAL for 50 GiB and files up to 100 MiB.",
	"FREE/export.pdf":             "PDF export comes with the PROFESSIONAL plan.",
	"FREE/export.dxf":             "DXF (CAD) export comes with the ENTERPRISE plan.",
	"FREE/api.call":               "API access comes with the ENTERPRISE plan.",
	"PROFESSIONAL/diagram.upload": "The PROFESSIONAL plan includes 100 diagram uploads a month. Upgrade to ENTERPRISE for unlimited uploads.",
	"PROFESSIONAL/ai.analysis":    "The PROFESSIONAL plan includes 100 AI analyses a month. Upgrade to ENTERPRISE for unlimited analyses.",
	"PROFESSIONAL/storage.bytes":  "The PROFESSIONAL plan includes 50 GiB of storage and files up to 100 MiB. Upgrade to ENTERPRISE for more.",
	"PROFESSIONAL/export.pdf":     "The PROFESSIONAL plan includes 100 PDF exports a month. Upgrade to ENTERPRISE for unlimited exports.",
	"PROFESSIONAL/export.dxf":     "DXF (CAD) export comes with the ENTERPRISE plan.",
	"PROFESSIONAL/api.call":       "API access comes with the ENTERPRISE plan.",
}

// App is the demo SaaS: a JSON API whose every metered route goes through
// quota.Middleware.
type App struct {
	db         bun.IDB
	q          *quota.Quota
	users      map[string]bool
	adminToken string
	log        *slog.Logger
	metrics    http.Handler // GET /metrics
}

// Config configures NewApp.
type Config struct {
	// Users maps each demo user to the plan it starts on.
	Users map[string]string
	// AdminToken is the bearer token of the admin routes.
	AdminToken string
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Log receives the middleware's errors; default slog.Default.
	Log *slog.Logger
}

// NewApp creates the app's table in db if needed, builds the Quota over
// store with plans, and subscribes every user that has no subscription
// yet, anchored on the first day of the current month (UTC), so that
// monthly quotas reset on the 1st.
func NewApp(ctx context.Context, db bun.IDB, store quota.Store, plans []quota.Plan, cfg Config) (*App, error) {
	if _, err := db.NewCreateTable().Model((*Diagram)(nil)).IfNotExists().Exec(ctx); err != nil {
		return nil, fmt.Errorf("create diagrams table: %w", err)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	obs, metrics, err := newMetrics()
	if err != nil {
		return nil, err
	}
	q, err := quota.New(store, quota.Config{Plans: plans, Now: now, Observer: obs, Logger: cfg.Log})
	if err != nil {
		return nil, err
	}
	a := &App{db: db, q: q, users: map[string]bool{}, adminToken: cfg.AdminToken, log: cfg.Log}
	a.metrics = metrics
	if a.log == nil {
		a.log = slog.Default()
	}
	y, m, _ := now().UTC().Date()
	anchor := time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
	for user, plan := range cfg.Users {
		a.users[user] = true
		_, err := q.Subscription(ctx, user)
		if err == nil {
			continue // keep the plan and anchor of an earlier run
		}
		if !errors.Is(err, quota.ErrNoSubscription) {
			return nil, err
		}
		if err := q.Subscribe(ctx, quota.Subscription{Subject: user, Plan: plan, Anchor: anchor}); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// Close closes the Quota (not the store or the database: the caller
// opened them).
func (a *App) Close() error { return a.q.Close() }

// subject is the middleware's subject function. DEMO ONLY: the bearer
// token is the user's name, unchecked. A real app verifies a session or a
// signed token here.
func (a *App) subject(r *http.Request) (string, error) {
	user, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || !a.users[user] {
		return "", errors.New("unknown user")
	}
	return user, nil
}

func (a *App) meter(action string, opts ...quota.MiddlewareOption) func(http.Handler) http.Handler {
	opts = append([]quota.MiddlewareOption{
		quota.WithMessage(func(d quota.Decision) string { return upgrades[d.Plan+"/"+d.Action] }),
		quota.WithErrorHook(func(r *http.Request, err error) {
			a.log.ErrorContext(r.Context(), "quota", "action", action, "path", r.URL.Path, "err", err)
		}),
		answer401,
	}, opts...)
	return quota.Middleware(a.q, action, a.subject, opts...)
}

// Handler returns the app's routes.
func (a *App) Handler() http.Handler {
	mux := http.NewServeMux()
	uploads := a.meter("diagram.upload")
	storage := a.meter("storage.bytes", quota.WithBodyBytes())
	mux.Handle("POST /diagrams", uploads(storage(http.HandlerFunc(a.upload))))
	mux.Handle("GET /diagrams", a.auth(a.listDiagrams))
	mux.Handle("DELETE /diagrams/{id}", a.auth(a.deleteDiagram))
	mux.Handle("GET /diagrams/{id}/export.pdf", a.meter("export.pdf")(http.HandlerFunc(a.export)))
	mux.Handle("GET /diagrams/{id}/export.dxf", a.meter("export.dxf")(http.HandlerFunc(a.export)))
	mux.Handle("POST /ai/ask", a.meter("ai.analysis")(http.HandlerFunc(a.ask)))
	mux.Handle("GET /procedures/{id}", a.meter("procedure.view")(http.HandlerFunc(a.procedure)))
	mux.Handle("GET /api/v1/diagrams", a.meter("api.call", quota.WithFeatures("api_access"))(a.auth(a.listDiagrams)))
	mux.Handle("GET /me/usage", a.auth(a.usage))
	// The dashboard's JSON: the library's handler answers its own 405s.
	mux.Handle("/me/dashboard.json", quota.UsageHandler(a.q, a.subject,
		answer401,
		quota.WithErrorHook(func(r *http.Request, err error) {
			a.log.ErrorContext(r.Context(), "usage dashboard", "path", r.URL.Path, "err", err)
		}),
	))
	mux.HandleFunc("GET /dashboard", serveDashboard)
	mux.HandleFunc("GET /assets/{file}", serveAsset)
	mux.Handle("GET /{$}", http.RedirectHandler("/dashboard", http.StatusFound))
	mux.HandleFunc("PUT /admin/users/{user}/plan", a.setPlan)
	mux.Handle("GET /metrics", a.metrics) // the quota metrics, for Prometheus
	return mux
}

// auth lets through requests of a known user, with the user in the
// context; the others get 401.
func (a *App) auth(h func(w http.ResponseWriter, r *http.Request, user string)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, err := a.subject(r)
		if err != nil {
			unauthorized(w, r)
			return
		}
		h(w, r, user)
	})
}

// answer401 makes the metered routes and the dashboard's JSON answer an
// unknown user as the app's other routes do: one option for both
// quota.Middleware and quota.UsageHandler.
var answer401 = quota.WithUnauthorized(http.HandlerFunc(unauthorized))

func unauthorized(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="saas demo"`)
	writeError(w, http.StatusUnauthorized, "unknown user: send Authorization: Bearer <user>")
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// upload stores a diagram: the raw request body. The middlewares count
// the upload and charge its bytes to storage.bytes; a body over the
// plan's file-size cap never gets past them.
func (a *App) upload(w http.ResponseWriter, r *http.Request) {
	user, _ := a.subject(r)
	name := r.URL.Query().Get("name")
	if name == "" || len(name) > 200 {
		writeError(w, http.StatusBadRequest, "name the diagram: POST /diagrams?name=pump.png")
		return
	}
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return // the middleware answers 413
		}
		writeError(w, http.StatusBadRequest, "could not read the diagram")
		return
	}
	if n == 0 {
		writeError(w, http.StatusBadRequest, "the diagram is empty")
		return
	}
	d := &Diagram{Owner: user, Name: name, Size: n, SHA256: hex.EncodeToString(h.Sum(nil)), CreatedAt: time.Now().UTC().Truncate(time.Second)}
	if _, err := a.db.NewInsert().Model(d).Returning("id").Exec(r.Context()); err != nil {
		a.log.ErrorContext(r.Context(), "insert diagram", "err", err)
		writeError(w, http.StatusInternalServerError, "could not store the diagram")
		return
	}
	w.Header().Set("Location", "/diagrams/"+strconv.FormatInt(d.ID, 10))
	writeJSON(w, http.StatusCreated, d)
}

func (a *App) listDiagrams(w http.ResponseWriter, r *http.Request, user string) {
	ds := []Diagram{}
	if err := a.db.NewSelect().Model(&ds).Where("owner = ?", user).Order("id").Scan(r.Context()); err != nil {
		a.log.ErrorContext(r.Context(), "list diagrams", "err", err)
		writeError(w, http.StatusInternalServerError, "could not list the diagrams")
		return
	}
	writeJSON(w, http.StatusOK, ds)
}

func (a *App) diagram(r *http.Request, user string) (*Diagram, int) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		return nil, http.StatusNotFound
	}
	d := new(Diagram)
	err = a.db.NewSelect().Model(d).Where("id = ? AND owner = ?", id, user).Scan(r.Context())
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, http.StatusNotFound
	case err != nil:
		a.log.ErrorContext(r.Context(), "get diagram", "err", err)
		return nil, http.StatusInternalServerError
	}
	return d, http.StatusOK
}

// deleteDiagram deletes a diagram and frees its storage. The release is
// keyed by the diagram, so a DELETE retried after a failure frees it
// once.
func (a *App) deleteDiagram(w http.ResponseWriter, r *http.Request, user string) {
	d, status := a.diagram(r, user)
	if d == nil {
		writeError(w, status, http.StatusText(status))
		return
	}
	_, err := a.q.Track(r.Context(), quota.Use{
		Subject:    user,
		Action:     "storage.bytes",
		Amount:     -d.Size,
		ResourceID: strconv.FormatInt(d.ID, 10),
		Key:        "delete-diagram-" + strconv.FormatInt(d.ID, 10),
	})
	if err != nil {
		a.log.ErrorContext(r.Context(), "free storage", "err", err)
		writeError(w, http.StatusServiceUnavailable, "could not free the storage; try again")
		return
	}
	if _, err := a.db.NewDelete().Model(d).WherePK().Exec(r.Context()); err != nil {
		a.log.ErrorContext(r.Context(), "delete diagram", "err", err)
		writeError(w, http.StatusInternalServerError, "could not delete the diagram; try again")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// export renders a diagram as PDF or DXF. The demo answers with a JSON
// receipt; a 404 releases the export the middleware held.
func (a *App) export(w http.ResponseWriter, r *http.Request) {
	user, _ := a.subject(r)
	d, status := a.diagram(r, user)
	if d == nil {
		writeError(w, status, http.StatusText(status))
		return
	}
	format := strings.TrimPrefix(r.URL.Path[strings.LastIndexByte(r.URL.Path, '.'):], ".")
	writeJSON(w, http.StatusOK, map[string]any{"diagram": d.ID, "name": d.Name, "format": format, "status": "rendered"})
}

// ask asks the AI teammate a question about a diagram.
func (a *App) ask(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Question string `json:"question"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&in); err != nil || in.Question == "" {
		writeError(w, http.StatusBadRequest, `send {"question": "..."}`)
		return
	}
	d, _ := quota.FromContext(r.Context())
	writeJSON(w, http.StatusOK, map[string]any{
		"question":       in.Question,
		"answer":         "Check the isolation valves first: the diagram shows no bypass around the pump.",
		"analyses_left":  remaining(d),
		"analyses_limit": limit(d),
	})
}

func remaining(d quota.Decision) any {
	if d.Remaining == quota.Unlimited {
		return "unlimited"
	}
	return d.Remaining
}

func limit(d quota.Decision) any {
	if d.Limit == quota.Unlimited {
		return "unlimited"
	}
	return d.Limit
}

func (a *App) procedure(w http.ResponseWriter, r *http.Request) {
	id, _ := strconv.Atoi(r.PathValue("id"))
	p, ok := procedures[id]
	if !ok {
		writeError(w, http.StatusNotFound, "no such procedure")
		return
	}
	writeJSON(w, http.StatusOK, p)
}

// usage answers the current user's usage of every action, for a
// dashboard: a quota.Report. With ?action=NAME, the report lists that
// action alone.
func (a *App) usage(w http.ResponseWriter, r *http.Request, user string) {
	rep, err := a.q.Usage(r.Context(), user)
	if err != nil {
		a.log.ErrorContext(r.Context(), "usage", "err", err)
		writeError(w, http.StatusServiceUnavailable, "usage is not available right now")
		return
	}
	if action := r.URL.Query().Get("action"); action != "" {
		var only []quota.ActionUsage
		for _, au := range rep.Actions {
			if au.Action == action {
				only = append(only, au)
			}
		}
		if only == nil {
			writeError(w, http.StatusNotFound, "the plan has no action "+strconv.Quote(action))
			return
		}
		rep.Actions = only
	}
	writeJSON(w, http.StatusOK, rep)
}

// setPlan changes a user's plan at once, keeping the billing anchor: the
// upgrade of the demo. DEMO ONLY: the admin token is a plain bearer
// token.
func (a *App) setPlan(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+a.adminToken || a.adminToken == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="saas admin"`)
		writeError(w, http.StatusUnauthorized, "admin only")
		return
	}
	user := r.PathValue("user")
	if !a.users[user] {
		writeError(w, http.StatusNotFound, "no such user")
		return
	}
	var in struct {
		Plan string `json:"plan"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10)).Decode(&in); err != nil {
		writeError(w, http.StatusBadRequest, `send {"plan": "PROFESSIONAL"}`)
		return
	}
	if _, err := a.q.Plan(in.Plan); err != nil {
		writeError(w, http.StatusBadRequest, "unknown plan")
		return
	}
	sub, err := a.q.Subscription(r.Context(), user)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "try again")
		return
	}
	sub.Plan = in.Plan
	if err := a.q.Subscribe(r.Context(), sub); err != nil {
		a.log.ErrorContext(r.Context(), "subscribe", "err", err)
		writeError(w, http.StatusServiceUnavailable, "try again")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"user": user, "plan": in.Plan})
}
