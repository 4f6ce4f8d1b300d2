package server_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/l7gate/l7gate/xds"
	"github.com/l7gate/l7gate/xds/client"
)

// BenchmarkPushRoundTrip: one Update whose only change is one
// IdentityMembership, from the call until its completion resolves (the
// real client over the Unix socket ACKs with a no-op handler).
func BenchmarkPushRoundTrip(b *testing.B) {
	srv := startServer(b, "", 10*time.Second)
	h := func(context.Context, client.Update) error { return nil }
	runClient(b, srv.socket, "bench", h)
	ctx := b.Context()
	if err := srv.Update(ctx, resources(15001, membership(7, "10.0.0.1/32"))).Wait(ctx); err != nil {
		b.Fatal(err)
	}
	for !connected(srv, xds.L7ProxyNodeID("bench"), 3)() {
		time.Sleep(time.Millisecond)
	}
	var lat []time.Duration
	b.ResetTimer()
	for i := range b.N {
		st := resources(15001, membership(7, "10.0.0.1/32"), membership(8, "10.0.1."+itoa(uint32(i%250))+"/32"))
		t0 := time.Now()
		if err := srv.Update(ctx, st).Wait(ctx); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[(len(lat)-1)*99/100].Microseconds())/1000, "p99-ms")
}
