package demo

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/l7gate/l7gate/agentapi"
)

// dnsQuery is one query of TestPrivilegedDNSProxyCrashHeldSockets.
type dnsQuery struct {
	network, server, name string
	qtype                 uint16
	want                  string // "REFUSED", or the answered address
}

// TestPrivilegedDNSProxyCrashHeldSockets: the dns-dualstack scenario with
// the Go proxy killed (SIGKILL) after the policy step. While no proxy runs
// (the supervisor restarts one no sooner than 500 ms after it exited) the
// app sends DNS over TCP to the server's IPv6 address and over UDP to
// both of its addresses, each query once. The agent holds every socket of
// the dns port (the [::1] TCP listener, the 127.0.0.1 and [::1] UDP
// sockets), so they stay in the datapath's socket map: the TCP handshake
// completes into the backlog at once (connect timeout 900 ms, shorter
// than a SYN retransmit) and the datagrams wait in the receive buffers;
// the restarted proxy inherits the sockets and answers all of them, the
// allowed names with the server's answer, the denied one REFUSED — never
// an answer that skipped the proxy.
func TestPrivilegedDNSProxyCrashHeldSockets(t *testing.T) {
	sc := scenarioByName(t, "dns-dualstack")
	sc.Steps = sc.Steps[:2]
	runScenarioAfter(t, sc, func(ctx context.Context, step int, topo *Topology) error {
		if step != 1 {
			return nil
		}
		run := filepath.Join(topo.WorkDir(), "run")
		app := topo.Host("default/app").NS
		pid := readPID(t, run)
		if pid <= 0 {
			return fmt.Errorf("no proxy pid in %s", run)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			return fmt.Errorf("kill the proxy: %w", err)
		}
		// Gone before any query is sent.
		for deadline := time.Now().Add(2 * time.Second); syscall.Kill(pid, 0) == nil; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				return fmt.Errorf("proxy %d still alive 2s after SIGKILL", pid)
			}
		}
		sent := time.Now()
		queries := []dnsQuery{
			{"tcp", "[2001:db8:31::53]:53", "api.example.test.", mdns.TypeAAAA, "2001:db8:131::10"},
			{"tcp", "[2001:db8:31::53]:53", "www.other.test.", mdns.TypeA, "REFUSED"},
			{"udp", "198.18.31.53:53", "api.example.test.", mdns.TypeA, "198.19.31.10"},
			{"udp", "[2001:db8:31::53]:53", "api.example.test.", mdns.TypeAAAA, "2001:db8:131::10"},
			{"udp", "[2001:db8:31::53]:53", "www.other.test.", mdns.TypeA, "REFUSED"},
		}
		results := make([]string, len(queries))
		var wg sync.WaitGroup
		for i, q := range queries {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i] = queryOnce(ctx, app, q)
			}()
		}
		wg.Wait()
		if now := readPID(t, run); now == pid {
			t.Errorf("no proxy was restarted (pid %d)", pid)
		}
		t.Logf("queries sent while no proxy ran, all answered or failed %s later", time.Since(sent).Round(time.Millisecond))
		failed := false
		for i, q := range queries {
			t.Logf("%s %s %s %s: %s", q.network, q.server, q.name, mdns.TypeToString[q.qtype], results[i])
			if results[i] != q.want {
				failed = true
				t.Errorf("%s %s %s %s while no proxy ran: got %s, want %s", q.network, q.server, q.name, mdns.TypeToString[q.qtype], results[i], q.want)
			}
		}
		if failed {
			// The scenario's own checks passed, so Run prints no logs:
			// what the agent held and what the new proxy inherited and
			// served tells which socket the queries waited in.
			t.Logf("agent log (sockets, proxy):\n%s", grepLines(filepath.Join(topo.WorkDir(), "agent.log"), "socket", "listener", "proxy", "held"))
			t.Logf("proxy log ends:\n%s", tail(filepath.Join(run, "proxy.log"), 60))
		}
		return nil
	})
}

// queryOnce sends one query from namespace ns and waits for its answer
// (20 s): the answered address, the rcode if not NOERROR, or what failed.
// A TCP connection must be established within 900 ms (no SYN
// retransmit); a UDP query is not resent.
func queryOnce(ctx context.Context, ns string, q dnsQuery) string {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c, err := netnsDialer(ns, 900*time.Millisecond)(ctx, q.network, q.server)
	if err != nil {
		return "connect: " + connectFailure(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	m := new(mdns.Msg)
	m.SetQuestion(q.name, q.qtype)
	conn := &mdns.Conn{Conn: c}
	if err := conn.WriteMsg(m); err != nil {
		return "write: " + err.Error()
	}
	r, err := conn.ReadMsg()
	switch {
	case err != nil:
		return "no answer: " + err.Error()
	case r.Id != m.Id:
		return "answer to another query"
	case r.Rcode != mdns.RcodeSuccess:
		return mdns.RcodeToString[r.Rcode]
	}
	var ips []string
	for _, rr := range r.Answer {
		switch a := rr.(type) {
		case *mdns.A:
			ips = append(ips, a.A.String())
		case *mdns.AAAA:
			ips = append(ips, a.AAAA.String())
		}
	}
	return strings.Join(ips, ",")
}

func readPID(t *testing.T, run string) int {
	t.Helper()
	b, err := os.ReadFile(agentapi.ProxyPIDFile(run))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// grepLines returns the lines of file containing any of words.
func grepLines(file string, words ...string) string {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	var out []string
	for line := range strings.SplitSeq(string(data), "\n") {
		for _, w := range words {
			if strings.Contains(line, w) {
				out = append(out, "  "+line)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
