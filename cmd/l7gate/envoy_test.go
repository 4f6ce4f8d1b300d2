//go:build !l7gate_proxyonly

package main

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/proxy"
)

// TestConfigDumpOfGoProxy reads the Go proxy's Envoy-compatible admin
// socket with `l7gate envoy config-dump`.
func TestConfigDumpOfGoProxy(t *testing.T) {
	no := false
	p := proxy.New(proxy.Options{ListenHost: "127.0.0.1", Transparent: &no})
	defer p.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	rule := policy.HTTPRule{Method: "POST", Path: "/v1/request-landing"}
	if err := p.Apply(&proxy.Config{Version: "3",
		Listeners: []proxy.Listener{{Name: "ingress/http", Port: port, Direction: policy.Ingress, Parser: policy.ParserHTTP}},
		Endpoints: []proxy.Endpoint{{Identity: 256, IPs: []netip.Addr{netip.MustParseAddr("198.18.1.10")}, Ingress: []policy.L7RuleSet{{
			Protocol: policy.ProtoTCP, Port: 80, Parser: policy.ParserHTTP,
			Rules: []policy.L7Rule{{Peers: []policy.Identity{257}, HTTP: &rule,
				Origin: policy.Provenance{Policy: "default/rule1", Path: "spec.ingress[0]", L7: "http[0]", Kind: policy.KindAllow}}},
		}}}},
	}); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "admin.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.ServeAdmin(ctx, sock)
	for range 100 {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	code, out, errOut := runCLI(t, "envoy", "config-dump", "--admin", "unix:"+sock)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"listener ingress/http", "endpoint dst 198.18.1.10", "routes l7gate/ingress/256/80", "default/rule1 spec.ingress[0].http[0]",
		"identities 257", "method=POST", "path=/v1/request-landing"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runCLI(t, "envoy", "config-dump", "--admin", "unix:"+sock, "-o", "json")
	var dump struct {
		Configs []map[string]any `json:"configs"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &dump) != nil || len(dump.Configs) != 1 || dump.Configs[0]["@type"] != proxy.ConfigDumpType {
		t.Errorf("json dump (exit %d):\n%s", code, out)
	}
}
