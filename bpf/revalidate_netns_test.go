package bpf

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// httpRecorder is an HTTP server that answers "<tag> <path>" and records
// the paths it was asked for.
type httpRecorder struct {
	mu    sync.Mutex
	paths []string
}

func serveHTTP(t *testing.T, l net.Listener, tag string) *httpRecorder {
	rec := &httpRecorder{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.paths = append(rec.paths, r.URL.Path)
		rec.mu.Unlock()
		fmt.Fprintf(w, "%s %s", tag, r.URL.Path)
	}), IdleTimeout: time.Minute}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(l) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return rec
}

func (r *httpRecorder) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.paths)
}

// keepAliveConn is one raw HTTP/1.1 keep-alive connection.
type keepAliveConn struct {
	c  net.Conn
	br *bufio.Reader
}

func dialKeepAlive(t *testing.T, ns, addr string) *keepAliveConn {
	t.Helper()
	var c net.Conn
	mustInNS(t, ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, 3*time.Second)
		return err
	})
	t.Cleanup(func() { c.Close() })
	return &keepAliveConn{c: c, br: bufio.NewReader(c)}
}

// get sends GET path on the connection and returns the response body.
func (k *keepAliveConn) get(path string) (string, error) {
	k.c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintf(k.c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestPrivilegedKeepAliveToRedirect: keep-alive connections admitted under
// an L4 allow; policy then redirects them (ingress, then egress). The next
// request on the live connection never reaches the server: the proxy's
// stack resets the connection. A real HTTP client's retry and new
// connections land on the proxy.
func TestPrivilegedKeepAliveToRedirect(t *testing.T) {
	requireRoot(t)
	tp := newTopology(t)
	a := tp.addPod("a", "198.18.1.10", 1, identA)
	b := tp.addPod("b", "198.18.1.11", 2, identB)
	d := attachedDatapath(t, tp, a, b)
	server := serveHTTP(t, listenTCP(t, b.ns, "198.18.1.11:80", false), "server")
	ingressProxy := listenTCP(t, tp.node, "127.0.0.1:0", true)
	inRec := serveHTTP(t, ingressProxy, "ingress-proxy")
	egressProxy := listenTCP(t, tp.node, "127.0.0.1:0", true)
	outRec := serveHTTP(t, egressProxy, "egress-proxy")
	for port, l := range map[uint16]*net.TCPListener{ingressProxyPort: ingressProxy, egressProxyPort: egressProxy} {
		if err := d.RegisterProxyListener(port, l); err != nil {
			t.Fatal(err)
		}
	}
	sync := func(egressVerdict, ingressVerdict Verdict) {
		t.Helper()
		entry := func(v Verdict, proxyPort uint16, peer Identity, rule uint32) PolicyEntry {
			e := PolicyEntry{Peer: peer, Protocol: ProtoTCP, Port: 80, Verdict: v, RuleID: rule}
			if v == VerdictRedirect {
				e.ProxyPort = proxyPort
			}
			return e
		}
		if _, err := d.SyncPolicy([]EndpointPolicy{
			{Endpoint: a.id, Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{entry(egressVerdict, egressProxyPort, b.ident, 1)}}},
			{Endpoint: b.id, Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{entry(ingressVerdict, ingressProxyPort, a.ident, 2)}}},
		}); err != nil {
			t.Fatal(err)
		}
	}
	client := func() *http.Client {
		tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := inNS(a.ns, func() error {
				var err error
				c, err = (&net.Dialer{Timeout: 3 * time.Second}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 5 * time.Second}
	}
	httpGet := func(c *http.Client, path string) (string, error) {
		resp, err := c.Get("http://198.18.1.11:80" + path)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		return string(body), err
	}

	for _, step := range []struct {
		name            string
		egress, ingress Verdict
		proxy           string
		proxyRec        *httpRecorder
	}{
		{"ingress redirect", VerdictAllow, VerdictRedirect, "ingress-proxy", inRec},
		{"egress redirect", VerdictRedirect, VerdictAllow, "egress-proxy", outRec},
	} {
		t.Run(step.name, func(t *testing.T) {
			sync(VerdictAllow, VerdictAllow)
			before := len(server.seen())
			raw := dialKeepAlive(t, a.ns, "198.18.1.11:80")
			hc := client()
			for i := range 2 {
				if got, err := raw.get(fmt.Sprintf("/raw-before-%d", i)); err != nil || got != fmt.Sprintf("server /raw-before-%d", i) {
					t.Fatalf("raw request %d under the L4 allow: %q %v", i, got, err)
				}
				if got, err := httpGet(hc, fmt.Sprintf("/http-before-%d", i)); err != nil || got != fmt.Sprintf("server /http-before-%d", i) {
					t.Fatalf("http request %d under the L4 allow: %q %v", i, got, err)
				}
			}

			sync(step.egress, step.ingress)
			got, err := raw.get("/raw-after")
			if err == nil {
				t.Errorf("raw keep-alive request after the redirect was added answered %q", got)
			} else if !errors.Is(err, syscall.ECONNRESET) {
				// The proxy's listener answers the mid-stream segment with
				// a reset, so the client fails at once, not at a timeout.
				t.Errorf("raw keep-alive request after the redirect: %v, want a connection reset", err)
			}
			// net/http retries a GET that failed on a reused connection; the
			// retry is a new connection, which the proxy gets.
			if got, err := httpGet(hc, "/http-after"); err != nil || got != step.proxy+" /http-after" {
				t.Errorf("http keep-alive client after the redirect: %q %v, want the %s", got, err, step.proxy)
			}
			if got, err := httpGet(client(), "/new"); err != nil || got != step.proxy+" /new" {
				t.Errorf("new connection after the redirect: %q %v", got, err)
			}
			for _, p := range server.seen()[before:] {
				if strings.Contains(p, "after") || p == "/new" {
					t.Errorf("the server got %s after the redirect was added", p)
				}
			}
			if seen := step.proxyRec.seen(); !slices.Contains(seen, "/new") {
				t.Errorf("%s saw %v", step.proxy, seen)
			}
		})
	}
}
