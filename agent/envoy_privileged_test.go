package agent

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeEnvoy is a stand-in for Envoy's transparent listener: a process
// named "envoy" that accepts on the proxy port and answers each request
// with the connection's original destination. Envoy itself cannot be
// installed here; what this test checks is the agent's part — taking
// another process's listener into the datapath's socket map.
const fakeEnvoy = `package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"syscall"
)

func main() {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_IP, 19 /* IP_TRANSPARENT */, 1)
			if serr == nil {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			}
		})
		return serr
	}}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(nil, "tcp4", "0.0.0.0:"+os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			r.ReadString('\n')
			body := "envoy saw " + c.LocalAddr().String()
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
		}()
	}
}
`

// TestPrivilegedEnvoyRedirect runs the agent with --http-proxy envoy: the
// HTTP redirect reaches the (stand-in) Envoy's listener with the original
// destination, also when the client reuses its source port for two
// back-to-back connections (the TIME_WAIT case DESIGN warns about), and
// the Go proxy gets no HTTP listener.
func TestPrivilegedEnvoyRedirect(t *testing.T) {
	requireRoot(t)
	n := newStarwarsNode(t)
	src := filepath.Join(t.TempDir(), "fakeenvoy")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "main.go"), []byte(fakeEnvoy), 0o644)
	os.WriteFile(filepath.Join(src, "go.mod"), []byte("module fakeenvoy\n\ngo 1.26\n"), 0o644)
	envoyBin := filepath.Join(t.TempDir(), "envoy")
	build := exec.Command("go", "build", "-o", envoyBin, ".")
	build.Dir = src
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build fake envoy: %v: %s", err, out)
	}
	const port = "15001"
	for _, f := range []string{"objects.yaml", "policy-l7.yaml"} {
		data, _ := os.ReadFile(filepath.Join("../examples/starwars", f))
		os.WriteFile(filepath.Join(n.src, f), data, 0o644)
	}
	n.startAgent(t, "--http-proxy", "envoy", "--proxy-port-range", port+"-"+port)
	// Envoy binds its listener once xDS told it the port, i.e. after the
	// agent allocated it; the agent then takes the listener (it retries
	// until it finds it).
	time.Sleep(time.Second)
	envoy := exec.Command("ip", "netns", "exec", n.node, envoyBin, port)
	envoy.Stderr = os.Stderr
	if err := envoy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { envoy.Process.Signal(syscall.SIGKILL); envoy.Wait() })
	// `ip netns exec` execs envoy in place, so its comm is "envoy".
	n.waitImplemented(t, 0)

	st, err := FetchStatus(t.Context(), n.run)
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
