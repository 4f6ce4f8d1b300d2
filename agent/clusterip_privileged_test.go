package agent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l7gate/l7gate/agent/node"
)

// kubeProxyVIP is the ClusterIP the tests' kube-proxy-like rules translate
// to the deathstar (198.18.1.10:80).
const kubeProxyVIP = "198.19.0.10"

// kubeProxyRules installs what kube-proxy in iptables mode puts in the
// node for a ClusterIP Service with one local backend, with the given
// iptables binary (iptables-nft or iptables-legacy): the DNAT in nat
// PREROUTING and OUTPUT, and the drop of conntrack-INVALID packets in
// FORWARD (KUBE-FORWARD).
func kubeProxyRules(t *testing.T, node, iptables string) {
	t.Helper()
	if _, err := exec.LookPath(iptables); err != nil {
		t.Skipf("needs %s", iptables)
	}
	for _, args := range [][]string{
		{"-t", "nat", "-N", "KUBE-SERVICES"},
		{"-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES"},
		{"-t", "nat", "-A", "OUTPUT", "-j", "KUBE-SERVICES"},
		{"-t", "nat", "-A", "KUBE-SERVICES", "-d", kubeProxyVIP + "/32", "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "198.18.1.10:80"},
		{"-t", "filter", "-N", "KUBE-FORWARD"},
		{"-t", "filter", "-A", "FORWARD", "-j", "KUBE-FORWARD"},
		{"-t", "filter", "-A", "KUBE-FORWARD", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"},
	} {
		run(t, "ip", append([]string{"netns", "exec", node, iptables, "-w"}, args...)...)
	}
}

// serveDeathstar serves the deathstar in its pod namespace: POST
// /v1/request-landing lands a ship; every response names the peer the
// server saw in X-Peer.
func serveDeathstar(t *testing.T, ns string) {
	t.Helper()
	var ln net.Listener
	if err := inNS(ns, func() error {
		var err error
		ln, err = net.Listen("tcp4", "198.18.1.10:80")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Peer", r.RemoteAddr)
		if r.Method == "POST" && r.URL.Path == "/v1/request-landing" {
			io.WriteString(w, "Ship landed\n")
			return
		}
		io.WriteString(w, "Panic: deathstar exploded\n")
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// podRequest sends one HTTP/1.1 request on a new connection from a pod
// namespace and returns status, body and the X-Peer header.
func podRequest(ns, method, addr, path string, timeout time.Duration) (int, string, string, error) {
	var c net.Conn
	if err := inNS(ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, timeout)
		return err
	}); err != nil {
		return 0, "", "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", method, path); err != nil {
		return 0, "", "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header.Get("X-Peer"), err
}

// startStarwarsL7 starts the agent on n with the Star Wars objects and the
// L7 rule (empire ships may only request landing at the deathstar).
func startStarwarsL7(t *testing.T, n *starwarsNode, extra ...string) {
	t.Helper()
	for _, f := range []string{"objects.yaml", "policy-l7.yaml"} {
		data, err := os.ReadFile(filepath.Join("../examples/starwars", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(n.src, f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n.startAgent(t, extra...)
	n.waitImplemented(t, 0)
}

// TestPrivilegedClusterIPIngressRedirect: a pod reaches a same-node
// backend through a ClusterIP that kube-proxy-like rules DNAT in the node
// (iptables-nft and iptables-legacy), and the backend's ingress L7 rules
// redirect the connection to the Go proxy. The datapath turns the packet
// around into the node's stack; without the agent's notrack rule for
// turned-around packets, netfilter tracks them a second time, NAT remaps
// the port and the proxy's SYN-ACK never reaches the client (the
// connection hangs). With it, the policy decides: landing allowed,
// exhaust-port 403.
func TestPrivilegedClusterIPIngressRedirect(t *testing.T) {
	requireRoot(t)
	for _, iptables := range []string{"iptables-nft", "iptables-legacy"} {
		t.Run(iptables, func(t *testing.T) {
			n := newStarwarsNode(t)
			kubeProxyRules(t, n.node, iptables)
			serveDeathstar(t, n.podNS("deathstar"))
			startStarwarsL7(t, n)
			tie := n.podNS("tiefighter")
			vip := kubeProxyVIP + ":80"
			for i := range 3 {
				code, body, peer, err := podRequest(tie, "POST", vip, "/v1/request-landing", 3*time.Second)
				if err != nil || code != 200 || body != "Ship landed\n" {
					conntrack, _ := exec.Command("ip", "netns", "exec", n.node, "conntrack", "-L").CombinedOutput()
					t.Fatalf("POST %d via ClusterIP: %d %q %v; want 200 Ship landed\nconntrack:\n%s", i, code, body, err, conntrack)
				}
				t.Logf("POST %d landed; the deathstar saw %s", i, peer)
			}
			// Only the turn-around skips conntrack: the connections'
			// first pass was tracked and DNATed as kube-proxy expects.
			if out, err := exec.Command("ip", "netns", "exec", n.node, "conntrack", "-L", "-p", "tcp", "--orig-dst", kubeProxyVIP).CombinedOutput(); err != nil || strings.Count(string(out), "dst="+kubeProxyVIP) < 3 {
				t.Errorf("conntrack entries for the ClusterIP (want one per request): %v\n%s", err, out)
			}
			// The turned-around packets went untracked: the notrack rule
			// counted them.
			if err := inNS(n.node, func() error {
				pkts, err := node.NoTrackPackets()
				if err == nil && pkts == 0 {
					err = fmt.Errorf("the notrack rule matched no packet")
				}
				return err
			}); err != nil {
				t.Error(err)
			}
			code, body, _, err := podRequest(tie, "PUT", vip, "/v1/exhaust-port", 3*time.Second)
			if err != nil || code != 403 || !strings.HasPrefix(body, "Access denied") {
				t.Errorf("PUT via ClusterIP: %d %q %v; want 403 Access denied", code, body, err)
			}
			// The agent's rule is in place and idempotent across restarts.
			n.stopAgent()
			startStarwarsL7(t, n)
			if code, _, _, err := podRequest(tie, "POST", vip, "/v1/request-landing", 3*time.Second); err != nil || code != 200 {
				t.Errorf("POST after an agent restart: %d %v", code, err)
			}
		})
	}
}
