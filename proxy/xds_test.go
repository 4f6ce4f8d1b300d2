package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/xds/client"
	xdsserver "github.com/l7gate/l7gate/xds/server"
	"github.com/l7gate/l7gate/xds/translate"
)

const xdsObjects = `
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
status: {podIP: 127.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
status: {podIP: 127.0.0.2}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "%d"}]
      rules:
        http: [{method: GET, path: "%s"}]
`

// TestProxyOverXDS drives the proxy through a real xDS round trip over a
// Unix socket: the agent's translation and server, the proxy's client.
// Rule changes apply to the next request on an open connection; a config
// the proxy rejects is NACKed and the previous one stays in force.
func TestProxyOverXDS(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok "+r.URL.Path) }))
	defer srv.Close()
	upPort := srv.Listener.Addr().(*net.TCPAddr).Port
	p, _ := newTestProxy(t, srv.Listener.Addr().String())
	proxyPort := freePort(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sock := filepath.Join(t.TempDir(), "xds.sock")
	xs, err := xdsserver.New(xdsserver.Config[translate.Input]{SocketPath: sock, ACKTimeout: 10 * time.Second,
		Producers: map[string]xdsserver.Producer[translate.Input]{"l7proxy~": translate.L7ProxyResources}})
	if err != nil {
		t.Fatal(err)
	}
	go xs.ListenAndServe(ctx)
	version := 0
	c, err := client.New(client.Config{SocketPath: sock, Node: "n1", Handler: func(_ context.Context, u client.Update) error {
		if !u.Resources.Complete() {
			return nil
		}
		version++
		cfg, err := ConfigFromXDS(u.Resources, fmt.Sprint(version))
		if err != nil {
			return err
		}
		return p.Apply(cfg)
	}})
	if err != nil {
		t.Fatal(err)
	}
	go c.Run(ctx)

	push := func(path string, listeners []translate.ListenerSpec) error {
		objs, errs := policy.Decode("test.yaml", []byte(fmt.Sprintf(xdsObjects, upPort, path)))
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		snap, err := policy.Compute(objs, policy.NewIdentityAllocator())
		if err != nil {
			t.Fatal(err)
		}
		var local []policy.Endpoint
		for _, ep := range snap.Endpoints {
			if ep.Name == "web" {
				local = append(local, ep)
			}
		}
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		defer wcancel()
		return xs.Update(wctx, translate.Input{Node: "n1", Snapshot: snap, LocalEndpoints: local, Listeners: listeners}).Wait(wctx)
	}
	// Wait for the proxy to subscribe, then push.
	deadline := time.Now().Add(10 * time.Second)
	for len(xs.Consumers()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	httpListener := []translate.ListenerSpec{{Direction: policy.Ingress, Parser: policy.ParserHTTP, ProxyPort: proxyPort}}
	if err := push("/v1/.*", httpListener); err != nil {
		t.Fatalf("first push: %v", err)
	}
	conn := dialFrom(t, "127.0.0.2", proxyPort)
	r := bufio.NewReader(conn)
	if s, b := get(t, conn, r, "/v1/items"); s != 200 || b != "ok /v1/items" {
		t.Fatalf("allowed: %d %q", s, b)
	}
	if s, _ := get(t, conn, r, "/v2/items"); s != 403 {
		t.Fatalf("denied: %d", s)
	}
	if err := push("/v2/.*", httpListener); err != nil {
		t.Fatalf("second push: %v", err)
	}
	if s, _ := get(t, conn, r, "/v1/items"); s != 403 {
		t.Fatalf("after the update, /v1: %d", s)
	}
	if s, _ := get(t, conn, r, "/v2/items"); s != 200 {
		t.Fatalf("after the update, /v2: %d", s)
	}
	// A listener for a parser the Go proxy does not serve: NACK naming the
	// consumer and the reason; the proxy keeps the previous listeners (xDS
	// accepts or rejects each resource type on its own).
	bad := append(httpListener, translate.ListenerSpec{Direction: policy.Egress, Parser: "envoy.filters.network.redis", ProxyPort: freePort(t)})
	err = push("/v2/.*", bad)
	if err == nil || !strings.Contains(err.Error(), "l7proxy~n1") || !strings.Contains(err.Error(), "not supported by the Go proxy") {
		t.Fatalf("NACK: %v", err)
	}
	if s, _ := get(t, conn, r, "/v2/items"); s != 200 {
		t.Fatalf("after the NACK, the previous rules: %d", s)
	}
	if got := len(p.Config().Listeners); got != 1 {
		t.Fatalf("after the NACK the proxy has %d listeners, want the previous 1", got)
	}
}
