package quotaotel_test

import (
	"context"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/quotakit/quota"
	quotaotel "github.com/quotakit/quota/contrib/otel"
)

// discard is a span processor that drops every span once the SDK has
// recorded it: the SDK's cost without an exporter's.
type discard struct{}

func (discard) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (discard) OnEnd(sdktrace.ReadOnlySpan)                     {}
func (discard) Shutdown(context.Context) error                  { return nil }
func (discard) ForceFlush(context.Context) error                { return nil }

// BenchmarkConsume measures what the adapter adds to Consume over
// MemoryStore, on one subject: no Observer (otel=off); the adapter over
// the no-op providers, as with an app that links OpenTelemetry but set
// no SDK (otel=noop); over the SDK's meter provider (otel=metrics); and
// over the SDK's meter and tracer providers, sampling every call
// (otel=metrics+traces: two spans per Consume, the call's and its
// store's). Besides ns/op, it reports cpu-ns/op where Linux tells the
// CPU time of a thread, as the root package's BenchmarkConsume does.
func BenchmarkConsume(b *testing.B) {
	sampled := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()), sdktrace.WithSpanProcessor(discard{}))
	cases := []struct {
		name string
		opts []quotaotel.Option
		off  bool
	}{
		{name: "off", off: true},
		{name: "noop", opts: []quotaotel.Option{
			quotaotel.WithMeterProvider(metricnoop.NewMeterProvider()),
			quotaotel.WithTracerProvider(tracenoop.NewTracerProvider()),
		}},
		{name: "metrics", opts: []quotaotel.Option{
			quotaotel.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))),
			quotaotel.WithTracerProvider(tracenoop.NewTracerProvider()),
		}},
		{name: "metrics+traces", opts: []quotaotel.Option{
			quotaotel.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))),
			quotaotel.WithTracerProvider(sampled),
		}},
	}
	for _, c := range cases {
		b.Run("otel="+c.name, func(b *testing.B) {
			cfg := quota.Config{
				Plans: []quota.Plan{{Name: "PRO", Limits: map[string][]quota.Limit{
					"api.call": {quota.PerMonth(quota.MaxAmount)},
				}}},
				DefaultPlan: "PRO",
			}
			if !c.off {
				obs, err := quotaotel.NewObserver(c.opts...)
				if err != nil {
					b.Fatal(err)
				}
				cfg.Observer = obs
			}
			q, err := quota.New(quota.NewMemoryStore(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			ctx := context.Background()
			u := quota.Use{Subject: "subject-1", Action: "api.call", Amount: 1}
			b.ReportAllocs()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			cpu0, cpuOK := threadCPU()
			for b.Loop() {
				if d, err := q.Consume(ctx, u); err != nil || !d.Allowed {
					b.Fatalf("Consume = %+v, %v", d, err)
				}
			}
			if cpu1, ok := threadCPU(); ok && cpuOK {
				b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
			}
		})
	}
}

// threadCPU returns the CPU time of the calling thread, from Linux's
// /proc/thread-self/schedstat; ok is false elsewhere.
func threadCPU() (ns int64, ok bool) {
	b, err := os.ReadFile("/proc/thread-self/schedstat")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, false
	}
	ns, err = strconv.ParseInt(f[0], 10, 64)
	return ns, err == nil
}
