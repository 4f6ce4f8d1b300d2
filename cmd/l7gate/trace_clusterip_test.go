//go:build !l7gate_proxyonly

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTraceDstCIDRClusterIP: a Service's ClusterIP given with --dst-cidr
// (IPv4 or IPv6) is traced as that Service, to its backends, exactly as
// --dst-service (with the ClusterIP's family) traces it, and the output
// says so; the client pod would otherwise be traced to "world" (allowed
// here only to the backends). A ClusterIP with a port the Service does
// not have is traced as the address itself, and the output names the
// Service and its ports.
func TestTraceDstCIDRClusterIP(t *testing.T) {
	f := filepath.Join(t.TempDir(), "dual.yaml")
	if err := os.WriteFile(f, []byte(dualStackServices), 0o644); err != nil {
		t.Fatal(err)
	}
	type traceOut struct {
		Verdict string          `json:"verdict"`
		Service json.RawMessage `json:"service"`
		Dest    json.RawMessage `json:"destination"`
		Warn    []string        `json:"warnings"`
	}
	trace := func(args ...string) traceOut {
		t.Helper()
		code, out, errOut := runCLI(t, append([]string{"policy", "trace", "-f", f, "--src-labels", "app=client", "-o", "json"}, args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, errOut)
		}
		var res traceOut
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("%v: output is not JSON: %v\n%s", args, err, out)
		}
		return res
	}
	for _, c := range []struct{ cidr, family string }{
		{"198.19.4.10", "ipv4"},
		{"fd00:7e2e:2::10", "ipv6"},
		{"198.19.4.11", ""}, // server4: IPv4 only
	} {
		svc := "default/server"
		if c.cidr == "198.19.4.11" {
			svc = "default/server4"
		}
		byAddr := trace("--dst-cidr", c.cidr, "--dport", "8080")
		svcArgs := []string{"--dst-service", svc, "--dport", "8080"}
		if c.family != "" {
			svcArgs = append(svcArgs, "--family", c.family)
		}
		bySvc := trace(svcArgs...)
		if byAddr.Verdict != "allowed" || len(byAddr.Service) == 0 || string(byAddr.Service) != string(bySvc.Service) {
			t.Errorf("--dst-cidr %s: %s, service %s; want allowed and as --dst-service %s: %s", c.cidr, byAddr.Verdict, byAddr.Service, svc, bySvc.Service)
		}
		if !hasWarning(byAddr.Warn, c.cidr, svc, "--dst-service") {
			t.Errorf("--dst-cidr %s: warnings %q, want one naming the address as %s's ClusterIP and --dst-service", c.cidr, byAddr.Warn, svc)
		}
	}

	// A port the Service does not have: not load-balanced, traced as the
	// address (world: the client may only reach the server pods).
	other := trace("--dst-cidr", "198.19.4.10", "--dport", "9999")
	if other.Verdict != "denied" || len(other.Service) != 0 {
		t.Errorf("--dst-cidr 198.19.4.10 --dport 9999: %s, service %s; want denied as the address itself", other.Verdict, other.Service)
	}
	if !hasWarning(other.Warn, "198.19.4.10", "default/server", "8080/TCP") {
		t.Errorf("--dst-cidr 198.19.4.10 --dport 9999: warnings %q, want one naming default/server and its ports", other.Warn)
	}

	// Text output: the Service line and the note.
	code, out, errOut := runCLI(t, "policy", "trace", "-f", f, "--src-labels", "app=client", "--dst-cidr", "fd00:7e2e:2::10", "--dport", "8080")
	if code != 0 || !strings.Contains(out, "Service: default/server [fd00:7e2e:2::10]:8080/TCP") || !strings.Contains(out, "ClusterIP of Service default/server") {
		t.Errorf("text: exit %d, stdout:\n%s\nstderr: %s\nwant the Service line and the ClusterIP note", code, out, errOut)
	}
}

func hasWarning(ws []string, parts ...string) bool {
	for _, w := range ws {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(w, p)
		}
		if ok {
			return true
		}
	}
	return false
}
