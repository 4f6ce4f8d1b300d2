package als

import (
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/l7gate/l7gate/envoy"
	"github.com/l7gate/l7gate/flow"
)

// otelLog is a log record as Envoy's OpenTelemetry logger renders
// envoy.OTelAttributes for a request: every command operator replaced by
// its value, or "-" when Envoy does not know it.
func otelLog(values map[string]string) *logspb.LogRecord {
	lr := &logspb.LogRecord{TimeUnixNano: uint64(t0.UnixNano())}
	for _, a := range envoy.OTelAttributes() {
		v, ok := values[a.Key]
		if !ok {
			v = "-"
			if !strings.Contains(a.Format, "%") {
				v = a.Format // a constant
			}
		}
		lr.Attributes = append(lr.Attributes, &commonpb.KeyValue{Key: a.Key, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}})
	}
	return lr
}

// TestOTelIntake: Envoy's OpenTelemetry access logs, sent by a real OTLP
// gRPC client to the access-log socket, become flow records with the
// verdict and the rule from the RBAC metadata; a record that is not an
// l7gate Envoy log is rejected (partial success), not guessed at.
func TestOTelIntake(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sock := filepath.Join(t.TempDir(), "als.sock")
	var mu sync.Mutex
	var got []*flow.Record
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, Config{Socket: sock, Sink: func(r *flow.Record) { mu.Lock(); got = append(got, r); mu.Unlock() }})
	}()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := collogspb.NewLogsServiceClient(conn)
	req := &collogspb.ExportLogsServiceRequest{ResourceLogs: []*logspb.ResourceLogs{{ScopeLogs: []*logspb.ScopeLogs{{LogRecords: []*logspb.LogRecord{
		otelLog(map[string]string{envoy.OTelSourceAddress: "198.18.6.2", envoy.OTelSourcePort: "40123", envoy.OTelDestinationAddress: "198.18.6.1",
			envoy.OTelDestinationPort: "8080", envoy.OTelMethod: "GET", envoy.OTelPath: "/api/items", envoy.OTelAuthority: "shop", envoy.OTelStatus: "200",
			envoy.OTelDurationMS: "3", envoy.OTelRoute: "l7gate/ingress/256/8080", envoy.OTelRBACResult: "allowed",
			envoy.OTelRBACPolicy: "cnp:shop/http-rules:spec.ingress[0].http[1]", envoy.OTelGRPCStatus: "--"}),
		otelLog(map[string]string{envoy.OTelSourceAddress: "198.18.6.2", envoy.OTelSourcePort: "40124", envoy.OTelDestinationAddress: "198.18.6.3",
			envoy.OTelDestinationPort: "50051", envoy.OTelMethod: "POST", envoy.OTelPath: "/pkg.Svc/Delete", envoy.OTelStatus: "200",
			envoy.OTelRoute: "l7gate/egress/257/50051", envoy.OTelGRPCStatus: "7-",
			envoy.OTelResponseDetails: "rbac_access_denied_matched_policy[none]"}),
		{Attributes: []*commonpb.KeyValue{{Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "someone-else"}}}}},
	}}}}}}
	var resp *collogspb.ExportLogsServiceResponse
	for { // until the server listens
		if resp, err = client.Export(ctx, req); err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetPartialSuccess().GetRejectedLogRecords() != 1 {
		t.Errorf("response %v, want 1 rejected", resp)
	}
	cancel()
	<-served
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 {
		t.Fatalf("%d records, want 2", len(got))
	}
	a, d := got[0], got[1]
	if a.Verdict != flow.VerdictAllowed || a.Observer != flow.ObserverEnvoy || a.Source.String() != "198.18.6.2:40123" ||
		a.Destination.String() != "198.18.6.1:8080" || a.DstIdentity != 256 || a.Direction != flow.Ingress || a.Method != "GET" ||
		a.Status != 200 || a.LatencyMS != 3 || a.Error != "" || !a.Time.Equal(t0) || len(a.DecidedBy) != 1 ||
		a.DecidedBy[0].Policy != "shop/http-rules" || a.DecidedBy[0].L7 != "http[1]" {
		t.Errorf("allowed record %s", flow.AppendJSON(nil, a))
	}
	if d.Verdict != flow.VerdictDenied || d.Direction != flow.Egress || d.SrcIdentity != 257 || d.Error != "grpc-status 7" ||
		d.Host != "" || len(d.DecidedBy) != 1 || d.DecidedBy[0].Kind != flow.KindDefaultDeny {
		t.Errorf("denied record %s", flow.AppendJSON(nil, d))
	}
}
