package quotaotel_test

import (
	"context"
	"fmt"
	"log"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/quotakit/quota"
	quotaotel "github.com/quotakit/quota/contrib/otel"
)

// The Observer records into the meter provider it is given (here one
// read by hand; in an app, one with an exporter) and, by default, the
// global tracer provider.
func ExampleNewObserver() {
	reader := sdkmetric.NewManualReader()
	obs, err := quotaotel.NewObserver(quotaotel.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))))
	if err != nil {
		log.Fatal(err)
	}
	q, err := quota.New(quota.NewMemoryStore(), quota.Config{
		Plans:       []quota.Plan{{Name: "FREE", Limits: map[string][]quota.Limit{"ai.analysis": {quota.PerMonth(3)}}}},
		DefaultPlan: "FREE",
		Observer:    obs,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer q.Close()
	ctx := context.Background()
	for range 4 {
		if _, err := q.Consume(ctx, quota.Use{Subject: "alice", Action: "ai.analysis", Amount: 1}); err != nil {
			log.Fatal(err)
		}
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if m.Name != "quota.decisions" {
			continue
		}
		counts := map[string]int64{}
		for _, p := range m.Data.(metricdata.Sum[int64]).DataPoints {
			outcome, _ := p.Attributes.Value(quotaotel.AttrOutcome)
			counts[outcome.AsString()] += p.Value
		}
		fmt.Println("allowed:", counts["allowed"], "denied:", counts["denied"])
	}
	// Output:
	// allowed: 3 denied: 1
}
