//go:build !l7gate_proxyonly

package main

import (
	"context"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestListenServiceMap: the page listens on loopback only, or on an
// inherited listening socket (what l7gate demo passes).
func TestListenServiceMap(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "198.18.0.1:0", "[::]:0", "example.com:80", "fd:x", "fd:1", "127.0.0.1"} {
		if ln, err := listenServiceMap(addr); err == nil {
			ln.Close()
			t.Errorf("listenServiceMap(%q) listened on %s; want refused", addr, ln.Addr())
		}
	}
	ln, err := listenServiceMap("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()

	// fd:N: the socket of an inherited file
	orig, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	f, err := orig.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// listenServiceMap takes the descriptor (closes it): give it a copy
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	ln, err = listenServiceMap("fd:" + strconv.Itoa(fd))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Addr().String() != orig.Addr().String() {
		t.Errorf("fd listener on %s, want %s", ln.Addr(), orig.Addr())
	}
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", orig.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, 2)
	if _, err := c.Read(b); err != nil || string(b) != "hi" {
		t.Errorf("read %q, %v", b, err)
	}
	// a file that is not a socket
	nf, _ := os.Open(os.DevNull)
	defer nf.Close()
	nfd, err := syscall.Dup(int(nf.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := listenServiceMap("fd:" + strconv.Itoa(nfd)); err == nil || !strings.Contains(err.Error(), "fd:") {
		t.Errorf("fd of /dev/null: %v", err)
	}
}

// TestAgentPortsDuringRollingUpdate: with the chart's maxSurge the new
// pod's agent starts on the node (host network) while the old pod's still
// serves the metrics and service-map ports. Both must bind: a plain bind
// failed with EADDRINUSE, so the new agent had no metrics ("metrics
// listener: … address already in use" on the real cluster) and, with the
// service map on, did not start at all — and the rollout never finished.
func TestAgentPortsDuringRollingUpdate(t *testing.T) {
	old, err := listenServiceMap("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	succ, err := listenServiceMap(old.Addr().String())
	if err != nil {
		t.Fatalf("service map of the new agent: %v", err)
	}
	succ.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := prometheus.NewRegistry()
	oldMetrics, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := oldMetrics.Addr().String()
	oldMetrics.Close()
	errs := make(chan error, 2)
	go func() { errs <- serveMetrics(ctx, addr, reg) }()
	waitListening(t, addr)
	go func() { errs <- serveMetrics(ctx, addr, reg) }()
	select {
	case err := <-errs:
		t.Fatalf("metrics of the new agent while the old one serves: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	cancel()
	for range 2 {
		if err := <-errs; err != nil {
			t.Errorf("metrics server: %v", err)
		}
	}
}

func waitListening(t *testing.T, addr string) {
	t.Helper()
	for range 100 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s", addr)
}
