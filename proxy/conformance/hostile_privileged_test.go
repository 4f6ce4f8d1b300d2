package conformance

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l7gate/l7gate/agentapi"
)

// recordingBackend is a raw HTTP/1.1 server in the backend pod: it records
// every request head it receives (request line and headers, as bytes on
// the wire) and answers 200, or 101 to any Upgrade (a lenient server a
// proxy must not open a tunnel to unless it is WebSocket).
type recordingBackend struct {
	mu    sync.Mutex
	heads []string
}

func (b *recordingBackend) serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				req, err := http.ReadRequest(r)
				if err != nil {
					return
				}
				var sb strings.Builder
				fmt.Fprintf(&sb, "%s %s", req.Method, req.RequestURI)
				for k, v := range req.Header {
					fmt.Fprintf(&sb, "\n%s: %s", k, strings.Join(v, ","))
				}
				body := make([]byte, 0)
				if req.Body != nil {
					body, _ = readAllLimit(req.Body, 1<<20)
				}
				if len(body) > 0 {
					fmt.Fprintf(&sb, "\n\n%s", body)
				}
				b.mu.Lock()
				b.heads = append(b.heads, sb.String())
				b.mu.Unlock()
				if up := req.Header.Get("Upgrade"); up != "" {
					fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n", up)
					buf := make([]byte, 4096)
					for {
						n, err := r.Read(buf)
						if n > 0 {
							c.Write(buf[:n])
						}
						if err != nil {
							return
						}
					}
				}
				c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
			}
		}()
	}
}

func readAllLimit(r interface{ Read([]byte) (int, error) }, max int) ([]byte, error) {
	var out []byte
	buf := make([]byte, 4096)
	for len(out) < max {
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			return out, nil
		}
	}
	return out, nil
}

func (b *recordingBackend) take() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.heads
	b.heads = nil
	return h
}

// TestPrivilegedHostileHTTP sends hostile raw HTTP from the client pod
// through the datapath and the Go proxy (rule: GET /public/.* and POST
// /upload) and checks what the backend pod received: smuggling forms,
// path games, upgrades, requests pipelined behind denials, oversized
// heads, and direct connections to the proxy's own port from the node.
// (Slow heads and bodies are covered against the same proxy code with
// short timeouts in parsers/http and proxy: the agent starts the proxy
// with the 30 s defaults.)
func TestPrivilegedHostileHTTP(t *testing.T) {
	const port = 80
	n := startNode(t, goProxy, port, `http: [{method: GET, path: "/public/.*"}, {method: POST, path: "/upload"}]`)
	be := &recordingBackend{}
	go be.serve(listen(t, n.Backend, fmt.Sprintf("0.0.0.0:%d", port)))
	target := fmt.Sprintf("%s:%d", backendIP, port)

	// exchange sends raw bytes from the client pod and returns what came
	// back before the proxy closed the connection (or 5 s passed).
	exchange := func(raw string, after func(net.Conn)) string {
		t.Helper()
		c, err := dial(n.Client, target)
		if err != nil {
			t.Fatalf("connect from the client pod: %v", err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(raw)); err != nil {
			t.Fatal(err)
		}
		if after != nil {
			after(c)
		}
		return readAll(c, 5*time.Second)
	}
	statuses := func(resp string) []string {
		var out []string
		r := bufio.NewReader(strings.NewReader(resp))
		for {
			res, err := http.ReadResponse(r, nil)
			if err != nil {
				return out
			}
			readAllLimit(res.Body, 1<<20)
			out = append(out, strconv.Itoa(res.StatusCode))
			if res.StatusCode == 101 {
				return out
			}
		}
	}
	before := n.requests()

	t.Run("smuggling", func(t *testing.T) {
		for name, raw := range map[string]string{
			"CL.TE":         "POST /upload HTTP/1.1\r\nHost: b\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /public/smuggled HTTP/1.1\r\nHost: b\r\n\r\n",
			"TE.CL":         "POST /upload HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
			"TE obfuscated": "POST /upload HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
			"two CL":        "POST /upload HTTP/1.1\r\nHost: b\r\nContent-Length: 5\r\nContent-Length: 41\r\n\r\nhelloGET /public/smuggled HTTP/1.1\r\nHost: b\r\n\r\n",
			"bare LF":       "GET /public/a HTTP/1.1\nHost: b\n\n",
			"bad chunk":     "POST /upload HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\nGET /public/smuggled HTTP/1.1\r\nHost: b\r\n\r\n",
		} {
			resp := exchange(raw, nil)
			if st := statuses(resp); len(st) == 0 || st[0] == "200" {
				t.Errorf("%s: answered %v, want an error and a closed connection", name, st)
			}
		}
		for _, h := range be.take() {
			if strings.Contains(h, "smuggled") || strings.Contains(h, "SMUGGLED") {
				t.Errorf("the backend received a smuggled request:\n%s", h)
			}
		}
	})

	t.Run("path normalization", func(t *testing.T) {
		for _, tc := range []struct{ target, status, backend string }{
			{"/public/../admin", "403", ""},
			{"/public/%2e%2e/admin", "403", ""},
			{"/public/.%2e/admin", "403", ""},
			{"/public//..//admin", "403", ""},
			{"/public\\..\\admin", "403", ""},
			{"/public/..%2fadmin", "400", ""},
			{"/public/a%00.html", "400", ""},
			{"/public/./a//b?q=/../x", "200", "GET /public/a/b?q=/../x"},
			{"/public/%61%62", "200", "GET /public/ab"},
		} {
			resp := exchange("GET "+tc.target+" HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n", nil)
			got := be.take()
			if st := statuses(resp); len(st) != 1 || st[0] != tc.status {
				t.Errorf("%s: answered %v, want %s", tc.target, st, tc.status)
			}
			switch {
			case tc.backend == "" && len(got) > 0:
				t.Errorf("%s: the backend received %q", tc.target, got)
			case tc.backend != "" && (len(got) != 1 || strings.SplitN(got[0], "\n", 2)[0] != tc.backend):
				t.Errorf("%s: the backend received %q, want %q", tc.target, got, tc.backend)
			}
		}
	})

	t.Run("upgrades", func(t *testing.T) {
		for _, tc := range []struct {
			upgrade string
			tunnel  bool
		}{{"websocket", true}, {"tls/1.3", false}, {"h2c", false}, {"websocket, evil", false}} {
			extra := ""
			if tc.upgrade == "h2c" {
				extra = "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
			}
			var echoed string
			resp := exchange("GET /public/ws HTTP/1.1\r\nHost: b\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: "+tc.upgrade+"\r\n"+extra+"\r\n", func(c net.Conn) {
				time.Sleep(300 * time.Millisecond)
				c.Write([]byte("PING"))
				buf := make([]byte, 512)
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				k, _ := c.Read(buf)
				echoed = string(buf[:k])
			})
			resp = echoed + resp
			got := strings.Join(be.take(), "\n---\n")
			if tc.tunnel {
				if !strings.Contains(resp, "101 Switching Protocols") || !strings.Contains(resp, "PING") {
					t.Errorf("%s: no tunnel: %q", tc.upgrade, resp)
				}
				continue
			}
			if tc.upgrade == "h2c" {
				// The proxy answers an h2c upgrade itself (HTTP/2 to the
				// client, HTTP/1.1 to the backend): never a raw tunnel.
				if strings.Contains(got, "Upgrade:") {
					t.Errorf("h2c: the backend received the upgrade:\n%s", got)
				}
				continue
			}
			if strings.Contains(got, "Upgrade:") || strings.Contains(resp, "PING") {
				t.Errorf("%s: forwarded as an upgrade (backend saw:\n%s\nclient got %q)", tc.upgrade, got, resp)
			}
		}
	})

	t.Run("pipelined after denial", func(t *testing.T) {
		hidden := "GET /public/hidden HTTP/1.1\r\nHost: b\r\n\r\n"
		raw := "POST /admin HTTP/1.1\r\nHost: b\r\nContent-Length: " + fmt.Sprint(len(hidden)) + "\r\n\r\n" + hidden +
			"DELETE /public/x HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\n" + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(hidden), hidden) +
			"GET /public/ok HTTP/1.1\r\nHost: b\r\n\r\n" +
			"POST /admin HTTP/1.1\r\nHost: b\r\nExpect: 100-continue\r\nContent-Length: " + fmt.Sprint(len(hidden)) + "\r\n\r\n" + hidden +
			"GET /public/after-close HTTP/1.1\r\nHost: b\r\n\r\n"
		st := statuses(exchange(raw, nil))
		if strings.Join(st, ",") != "403,403,200,403" {
			t.Errorf("answers %v, want 403,403,200,403", st)
		}
		got := be.take()
		if len(got) != 1 || strings.SplitN(got[0], "\n", 2)[0] != "GET /public/ok" {
			t.Errorf("the backend received %q, want only GET /public/ok", got)
		}
	})

	t.Run("oversized heads", func(t *testing.T) {
		for name, tc := range map[string]struct{ raw, status string }{
			"request line": {"GET /public/" + strings.Repeat("a", 20000) + " HTTP/1.1\r\nHost: b\r\n\r\n", "414"},
			"headers":      {"GET /public/a HTTP/1.1\r\nHost: b\r\nX: " + strings.Repeat("b", 70000) + "\r\n\r\n", "431"},
			"many headers": {"GET /public/a HTTP/1.1\r\nHost: b\r\n" + strings.Repeat("X-A: y\r\n", 101) + "\r\n", "431"},
		} {
			if st := statuses(exchange(tc.raw, nil)); len(st) != 1 || st[0] != tc.status {
				t.Errorf("%s: answered %v, want %s", name, st, tc.status)
			}
		}
		if got := be.take(); len(got) > 0 {
			t.Errorf("the backend received %d oversized requests", len(got))
		}
	})

	if carried := n.requests() - before; carried < 10 {
		t.Errorf("the proxy counted %d requests: the traffic did not go through it", carried)
	}

	t.Run("direct connection to the proxy port", func(t *testing.T) {
		port := httpProxyPort(t, n)
		ss, _ := exec.Command("ip", "netns", "exec", n.topo.Node, "ss", "-Hltn", fmt.Sprintf("sport = :%d", port)).Output()
		t.Logf("proxy listener: %s (redirected connections reached it through sk_lookup above)", strings.TrimSpace(string(ss)))
		m0, err := n.proxyMetrics()
		if err != nil {
			t.Fatal(err)
		}
		for _, addr := range []string{"127.0.0.1", "198.18.255.254"} {
			c, err := dial(n.topo.Node, fmt.Sprintf("%s:%d", addr, port))
			if err != nil {
				t.Logf("%s:%d from the node: %v", addr, port, err)
				continue
			}
			c.Write([]byte("GET /public/loop HTTP/1.1\r\nHost: b\r\n\r\n"))
			if resp := readAll(c, 3*time.Second); resp != "" {
				t.Errorf("%s:%d from the node answered %q", addr, port, resp)
			}
			c.Close()
		}
		time.Sleep(300 * time.Millisecond)
		m1, err := n.proxyMetrics()
		if err != nil {
			t.Fatal(err)
		}
		if d := m1["l7gate_proxy_upstream_connections_total"] - m0["l7gate_proxy_upstream_connections_total"]; d != 0 {
			t.Errorf("the proxy opened %d upstream connections for direct connections to itself", d)
		}
		if d := m1["l7gate_proxy_connections_total"] - m0["l7gate_proxy_connections_total"]; d != 0 {
			t.Errorf("the proxy accepted %d direct connections", d)
		}
		if got := be.take(); len(got) > 0 {
			t.Errorf("the backend received %q", got)
		}
	})
}

// httpProxyPort reads the HTTP listener's port from the proxy's
// /config_dump.
func httpProxyPort(t *testing.T, n *node) uint16 {
	t.Helper()
	resp, err := unixHTTPClient(agentapi.ProxyAdminSocket(n.runDir)).Get("http://proxy/config_dump")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var dump struct {
		Configs []struct {
			Listeners []struct {
				Port   uint16 `json:"port"`
				Parser string `json:"parser"`
			} `json:"listeners"`
		} `json:"configs"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&dump); err != nil {
		t.Fatal(err)
	}
	for _, c := range dump.Configs {
		for _, l := range c.Listeners {
			if l.Parser == "http" {
				return l.Port
			}
		}
	}
	t.Fatal("no HTTP listener in the proxy's config dump")
	return 0
}
