package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/l7gate/l7gate/policy"
)

// TestPrivilegedProxyKeepsSource: with KeepSource the upstream server sees
// the client's address (from a port of the proxy's choosing, not the
// client's own), without it the proxy's.
func TestPrivilegedProxyKeepsSource(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: IP_TRANSPARENT")
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, r.RemoteAddr) }))
	defer srv.Close()
	up := netip.MustParseAddrPort(srv.Listener.Addr().String())
	for _, keep := range []bool{true, false} {
		no := false
		p := New(Options{ListenHost: "127.0.0.1", Transparent: &no, KeepSource: keep,
			OriginalDestination: func(net.Conn) (netip.AddrPort, error) { return up, nil }})
		port := freePort(t)
		if err := p.Apply(httpConfig("1", port, up.Port(), policy.HTTPRule{})); err != nil {
			t.Fatal(err)
		}
		c := dialFrom(t, "127.0.0.2", port)
		client := netip.MustParseAddrPort(c.LocalAddr().String())
		code, body := get(t, c, bufio.NewReader(c), "/who")
		seen, err := netip.ParseAddrPort(body)
		switch {
		case code != 200 || err != nil:
			t.Errorf("keep-source %v: %d %q", keep, code, body)
		case keep && (seen.Addr() != client.Addr() || seen.Port() == client.Port()):
			t.Errorf("keep-source: server saw %s, want %s from another port", seen, client.Addr())
		case !keep && seen.Addr() != up.Addr():
			t.Errorf("no keep-source: server saw %s, want the proxy's address %s", seen, up.Addr())
		}
		t.Logf("keep-source %v: client %s, server saw %s", keep, client, seen)
		// An upstream bound to the client's address must not take the
		// port of a client connection the proxy holds, until it closes.
		inUse := p.clientPortInUse(client.Addr())
		if !inUse(client.Port()) {
			t.Errorf("client port %d not reported in use while its connection is open", client.Port())
		}
		c.Close()
		deadline := time.Now().Add(3 * time.Second)
		for inUse(client.Port()) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if inUse(client.Port()) {
			t.Errorf("client port %d still reported in use after its connection closed", client.Port())
		}
		p.Close()
	}
}
