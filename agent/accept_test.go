package agent

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/internal/testutil"
	observerpb "github.com/l7gate/l7gate/proto/hubble/observerpb"
)

// TestAgentSocketsSurviveDescriptorExhaustion: when a burst of
// connections uses up the agent's RLIMIT_NOFILE, its accepts fail with
// EMFILE; once descriptors are free again, the flow intake takes the
// proxy's records again and the status and Observer API sockets answer.
// (The flow intake's accept loop used to end at the first such error:
// every proxy's access records were lost from then on.)
func TestAgentSocketsSurviveDescriptorExhaustion(t *testing.T) {
	logs := &testutil.LogBuffer{}
	h := newHarness(t, starwarsVeths())
	h.logger = slog.New(slog.NewTextHandler(logs, nil))
	h.start()
	fqdnClient(t, h) // the status socket is bound; the flow and Observer API sockets are bound before it
	send := func(path string) error {
		c, err := net.DialTimeout("unix", agentapi.FlowSocket(h.runDir), time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		r := &flow.Record{Time: time.Now(), Protocol: "http", Verdict: flow.VerdictAllowed, Method: "GET", Path: path}
		_, err = c.Write(append(flow.AppendJSON(nil, r), '\n'))
		return err
	}
	seen := func(path string) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		page, err := agentapi.FetchFlows(ctx, h.runDir, 0)
		if err != nil {
			t.Logf("flows: %v", err)
			return false
		}
		for _, r := range page.Flows {
			if r.Path == path {
				return true
			}
		}
		return false
	}
	awaitRecord := func(path string) {
		t.Helper()
		if err := send(path); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); !seen(path); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("record %s never reached the pipeline (log: %s)", path, logs.String())
			}
		}
	}
	awaitRecord("/before")

	restore := testutil.ScarceFileLimit(t, 8)
	var held []net.Conn
	for i := range 96 {
		sock := []string{agentapi.FlowSocket(h.runDir), agentapi.StatusSocket(h.runDir), agentapi.HubbleSocket(h.runDir)}[i%3]
		if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
			held = append(held, c) // until this side runs out too (EMFILE)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "too many open files") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the status and Observer API accepts fail too meanwhile
	for _, c := range held {
		c.Close()
	}
	restore()

	awaitRecord("/after")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := agentapi.FetchStatus(ctx, h.runDir); err != nil {
		t.Errorf("status api after the descriptors came back: %v", err)
	}
	conn, err := grpc.NewClient("unix://"+agentapi.HubbleSocket(h.runDir), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := observerpb.NewObserverClient(conn).ServerStatus(ctx, &observerpb.ServerStatusRequest{}); err != nil {
		t.Errorf("observer api after the descriptors came back: %v", err)
	}
	if t.Failed() {
		t.Logf("log: %s", logs.String())
	}
}
