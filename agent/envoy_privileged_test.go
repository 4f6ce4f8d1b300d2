package agent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l7gate/l7gate/agentapi"
)

// TestPrivilegedEnvoyRedirect runs the agent with --http-proxy envoy and
// a stand-in Envoy (agent/internal/fakeenvoy: an xDS client that ACKs and
// binds the listeners it is given): once it ACKed, the HTTP redirect
// reaches its listener with the original destination, also when the
// client reuses its source port for two back-to-back connections (the
// TIME_WAIT case DESIGN warns about), and the Go proxy gets no HTTP
// listener.
func TestPrivilegedEnvoyRedirect(t *testing.T) {
	requireRoot(t)
	n := newStarwarsNode(t)
	// Its comm must be "envoy": the agent finds Envoy's pid by name.
	envoyBin := filepath.Join(t.TempDir(), "envoy")
	run(t, "go", "build", "-o", envoyBin, "github.com/l7gate/l7gate/agent/internal/fakeenvoy")
	const port = "15001"
	for _, f := range []string{"objects.yaml", "policy-l7.yaml"} {
		data, _ := os.ReadFile(filepath.Join("../examples/starwars", f))
		os.WriteFile(filepath.Join(n.src, f), data, 0o644)
	}
	n.startAgent(t, "--http-proxy", "envoy", "--proxy-port-range", port+"-"+port)
	// `ip netns exec` execs envoy in place, so its comm is "envoy".
	envoy := exec.Command("ip", "netns", "exec", n.node, envoyBin, agentapi.XDSSocket(n.run), "test")
	envoy.Stderr = os.Stderr
	// Envoy runs in a cgroup of its own (its container's, on a node): the
	// datapath believes from-proxy marks only from the proxies' cgroups.
	cg := newCgroup(t, "l7gate-test-envoy-"+n.prefix)
	envoy.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if err := envoy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { envoy.Process.Signal(syscall.SIGKILL); envoy.Wait() })
	n.waitImplemented(t, 0)
	// Envoy ACKs after the revision is implemented (with its redirects
	// dropped until then); the agent retries until they are in force.
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := agentapi.FetchStatus(t.Context(), n.run)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Failures) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("endpoints still fail closed: %+v", st.Failures)
		}
		time.Sleep(100 * time.Millisecond)
	}

	st, err := agentapi.FetchStatus(t.Context(), n.run)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.ProxyPorts) != 1 || fmt.Sprint(st.ProxyPorts[0].Port) != port || st.ProxyPorts[0].Parser != "http" {
		t.Fatalf("proxy ports %+v", st.ProxyPorts)
	}
	// Two connections from the same source port, back to back: the second
	// finds the first's 4-tuple in TIME_WAIT on the client.
	for i := range 2 {
		var got string
		err := inNS(n.prefix+"-tiefighter", func() error {
			d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP("198.18.1.11"), Port: 40123},
				Control: func(_, _ string, c syscall.RawConn) error {
					c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) })
					return nil
				}}
			c, err := d.Dial("tcp", "198.18.1.10:80")
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: deathstar\r\n\r\n")
			r := bufio.NewReader(c)
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					rest := make([]byte, 100)
					k, _ := r.Read(rest)
					got = strings.TrimSpace(line + string(rest[:k]))
					break
				}
				if line == "\r\n" {
					rest := make([]byte, 100)
					k, _ := r.Read(rest)
					got = string(rest[:k])
					break
				}
			}
			// Wait for the server's FIN before closing, so the server side
			// (the node) holds the TIME_WAIT the next connection meets;
			// a client-side TIME_WAIT would refuse the bind (EADDRNOTAVAIL).
			io.Copy(io.Discard, r)
			return nil
		})
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if got != "envoy saw 198.18.1.10:80" {
			t.Fatalf("connection %d: got %q, want the stand-in Envoy with the original destination", i, got)
		}
	}
	// The xwing is still dropped at L3.
	err = inNS(n.prefix+"-xwing", func() error {
		c, err := net.DialTimeout("tcp", "198.18.1.10:80", 500*time.Millisecond)
		if err == nil {
			c.Close()
			return fmt.Errorf("xwing connected")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
