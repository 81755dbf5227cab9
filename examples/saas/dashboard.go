package main

import (
	"bytes"
	"embed"
	"html/template"
	"net/http"
)

// The usage dashboard: a page for the signed-in user, built with plain
// HTML, CSS and JavaScript embedded in the binary, that draws itself from
// GET /me/dashboard.json?days=30 (quota.UsageHandler).

//go:embed web/dashboard.html
var dashboardHTML string

//go:embed web/dashboard.css web/dashboard.js
var dashboardAssets embed.FS

// upgradeURL is where the dashboard's upgrade button leads. DEMO ONLY: a
// real app links its billing page.
const upgradeURL = "mailto:sales@example.com?subject=Upgrade%20my%20plan"

// dashboardCSP lets the page load its own script, style and JSON, and
// nothing else.
const dashboardCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
	"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

// dashboardPage is the page, rendered once with the upgrade messages.
var dashboardPage = func() []byte {
	t := template.Must(template.New("dashboard").Parse(dashboardHTML))
	var b bytes.Buffer
	err := t.Execute(&b, struct {
		Upgrades   map[string]string
		UpgradeURL string
	}{upgrades, upgradeURL})
	if err != nil {
		panic("dashboard template: " + err.Error())
	}
	return b.Bytes()
}()

// serveDashboard serves the page. It needs no credentials: the page asks
// for them (?user=, DEMO ONLY) and sends them to /me/dashboard.json.
func serveDashboard(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", dashboardCSP)
	// The demo's ?user= is a credential: keep it out of Referer.
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	_, _ = w.Write(dashboardPage)
}

// serveAsset serves the page's stylesheet and script.
func serveAsset(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	if name != "dashboard.css" && name != "dashboard.js" {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeFileFS(w, r, dashboardAssets, "web/"+name)
}
