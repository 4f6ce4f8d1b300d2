package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/internal/netns"
)

// TestPrivilegedAgentIPv6L7: the real agent and its Go proxy enforce the
// starwars L7 HTTP policy over IPv6 on dual-stack pods, and over IPv4 on
// the same proxy port: the tiefighter may request landing (200) and is
// denied the exhaust port (403) on both families, the xwing is dropped on
// both, and the proxy's access records carry the IPv6 addresses.
func TestPrivilegedAgentIPv6L7(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	n := &starwarsNode{run: filepath.Join(dir, "run"), state: filepath.Join(dir, "state"),
		src: filepath.Join(dir, "src"), bpffs: filepath.Join(dir, "bpffs"), bin: filepath.Join(dir, "l7gate")}
	for _, d := range []string{n.run, n.state, n.src, n.bpffs} {
		os.MkdirAll(d, 0o755)
	}
	run(t, "go", "build", "-o", n.bin, "github.com/l7gate/l7gate/cmd/l7gate")
	run(t, "mount", "-t", "bpf", "bpf", n.bpffs)
	t.Cleanup(func() { exec.Command("umount", n.bpffs).Run() })
	n.topo = netns.NewT(t, netns.Config{Prefix: netns.RandomPrefix("l7a6"), NodeAddr: netip.MustParseAddr(starwarsNodeAddr),
		NodeAddr6: netip.MustParseAddr("2001:db8::fffe"),
		Sysctls:   map[string]string{"ipv4/ip_forward": "1", "ipv4/conf/all/rp_filter": "0", "ipv4/conf/default/rp_filter": "0"}})
	n.prefix, n.node = n.topo.Prefix, n.topo.Node
	t.Cleanup(func() {
		n.stopAgent()
		if pid, err := os.ReadFile(agentapi.ProxyPIDFile(n.run)); err == nil {
			if p, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
		removeProxyCgroup(t, n.run)
	})
	for i, pod := range []struct{ name, ip, ip6 string }{
		{"deathstar", "198.18.1.10", "2001:db8:1::10"}, {"tiefighter", "198.18.1.11", "2001:db8:1::11"}, {"xwing", "198.18.1.12", "2001:db8:1::12"},
	} {
		n.topo.MustAddDualHost(t, pod.name, n.hostVeth(i), pod.ip, pod.ip6)
	}
	// The deathstar serves HTTP on both families and says whom it saw.
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" && r.URL.Path == "/v1/request-landing" {
			fmt.Fprintf(w, "Ship landed from %s\n", r.RemoteAddr)
			return
		}
		io.WriteString(w, "Panic: deathstar exploded\n")
	})}
	defer srv.Close()
	for _, addr := range []string{"198.18.1.10:80", "[2001:db8:1::10]:80"} {
		var ln net.Listener
		if err := inNS(n.podNS("deathstar"), func() error {
			var err error
			ln, err = net.Listen("tcp", addr)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
	}
	for _, f := range []string{"policy-l7.yaml"} {
		data, err := os.ReadFile(filepath.Join("../examples/starwars", f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(n.src, f), data, 0o644)
	}
	os.WriteFile(filepath.Join(n.src, "objects.yaml"), []byte(dualStackStarwars), 0o644)
	n.startAgent(t)
	n.waitImplemented(t, 0)

	// request sends one HTTP request on a new connection from a pod (the
	// dial in the pod's namespace, on the goroutine inNS locked there).
	request := func(from, method, hostPath string) (int, string, error) {
		host, path, _ := strings.Cut(hostPath, "/")
		var c net.Conn
		if err := inNS(n.podNS(from), func() error {
			var err error
			c, err = net.DialTimeout("tcp", host+":80", 2*time.Second)
			return err
		}); err != nil {
			return 0, "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		fmt.Fprintf(c, "%s /%s HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", method, path)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	for _, host := range []string{"[2001:db8:1::10]", "198.18.1.10"} {
		for _, c := range []struct {
			from, method, path string
			status             int // 0: no connection
			body               string
		}{
			{"tiefighter", "POST", "/v1/request-landing", 200, "Ship landed from "},
			{"tiefighter", "PUT", "/v1/exhaust-port", 403, "Access denied"},
			{"xwing", "POST", "/v1/request-landing", 0, ""},
		} {
			status, body, err := request(c.from, c.method, host+c.path)
			if c.status == 0 {
				if err == nil {
					t.Errorf("%s %s %s%s: answered %d %q, want dropped", c.from, c.method, host, c.path, status, body)
				}
				continue
			}
			if err != nil || status != c.status || !strings.HasPrefix(body, c.body) {
				log, _ := os.ReadFile(filepath.Join(n.run, "agent.log"))
				plog, _ := os.ReadFile(filepath.Join(n.run, "proxy.log"))
				t.Fatalf("%s %s %s%s: %v %d %q, want %d %q\nagent log:\n%s\nproxy log:\n%s", c.from, c.method, host, c.path, err, status, body, c.status, c.body, log, plog)
			}
			// The deathstar sees the tiefighter's own address (the
			// proxy is transparent on both families).
			if c.status == 200 && !strings.Contains(body, strings.Trim(strings.Replace(host, "::10", "::11", 1), "[]")) &&
				!strings.Contains(body, strings.Replace(host, ".10", ".11", 1)) {
				t.Errorf("%s: the deathstar saw %q, want the tiefighter's address", host, body)
			}
		}
	}
	// The proxy's access records carry the IPv6 addresses.
	var got []string
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		page, err := agentapi.FetchFlows(context.Background(), n.run, 0)
		if err != nil {
			t.Fatal(err)
		}
		got = got[:0]
		for _, f := range page.Flows {
			if f.Protocol == "http" && f.Source.Addr() == netip.MustParseAddr("2001:db8:1::11") &&
				f.Destination == netip.MustParseAddrPort("[2001:db8:1::10]:80") {
				got = append(got, fmt.Sprintf("%s %s %d %s", f.Method, f.Path, f.Status, f.Verdict))
			}
		}
		if len(got) >= 2 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	joined := strings.Join(got, "; ")
	if !strings.Contains(joined, "POST /v1/request-landing 200") || !strings.Contains(joined, "PUT /v1/exhaust-port 403") {
		t.Errorf("IPv6 access records: %q, want the landing (200) and the exhaust-port denial (403)", joined)
	}
}
