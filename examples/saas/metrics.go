package main

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/quotakit/quota"
	quotaotel "github.com/quotakit/quota/contrib/otel"
)

// newMetrics returns the Quota's Observer, which records the quota
// metrics with OpenTelemetry (github.com/quotakit/quota/contrib/otel),
// and the handler of GET /metrics, which serves them in Prometheus's
// text format through OpenTelemetry's Prometheus exporter. Each app has
// a registry of its own (not Prometheus's default one), so that several
// apps, in tests, do not count into each other.
func newMetrics() (*quota.Observer, http.Handler, error) {
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(
		otelprom.WithRegisterer(reg),
		otelprom.WithoutScopeInfo(),  // no otel_scope_* labels
		otelprom.WithoutTargetInfo(), // no target_info series
	)
	if err != nil {
		return nil, nil, err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	obs, err := quotaotel.NewObserver(quotaotel.WithMeterProvider(mp))
	if err != nil {
		return nil, nil, err
	}
	return obs, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), nil
}
