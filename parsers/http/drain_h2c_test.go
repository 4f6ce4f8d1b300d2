package http

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/l7gate/l7gate/policy"
)

// TestDrainH2CUpgrade drains a proxy holding an idle connection that was
// upgraded from HTTP/1.1 to h2c (Upgrade: h2c, as curl --http2 does): the
// client gets GOAWAY and the connection ends, as a prior-knowledge HTTP/2
// connection does, instead of staying open until the drain timeout cuts it.
func TestDrainH2CUpgrade(t *testing.T) {
	up := slowUpstream(t, make(chan struct{}, 1))
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := startDrainProxy(t, ln, up, ruleDecider(t, policy.HTTPRule{Path: "/.*"}))

	c, fr := h2cUpgraded(t, ln.Addr().String())
	defer c.Close()
	stopped := make(chan time.Duration, 1)
	go func() { stopped <- p.stop(t, 3*time.Second) }()
	goaway := false
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Errorf("after the drain began: %v; want GOAWAY, then EOF", err)
			}
			break
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			goaway = true
			t.Logf("GOAWAY last stream %d, %v", g.LastStreamID, g.ErrCode)
		}
	}
	took := <-stopped
	if !goaway {
		t.Errorf("no GOAWAY on the h2c-upgraded connection during the drain")
	}
	t.Logf("drain took %s", took.Round(time.Millisecond))
}

// h2cUpgraded opens a connection, upgrades it to h2c with a GET and reads
// that request's response (stream 1).
func h2cUpgraded(t *testing.T, addr string) (net.Conn, *http2.Framer) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := nethttp.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != nethttp.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, br)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	// The upgraded request is stream 1: read until its response ended.
	for done := false; !done; {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading the upgraded request's response: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.DataFrame:
			done = f.StreamID == 1 && f.StreamEnded()
		case *http2.HeadersFrame:
			done = f.StreamID == 1 && f.StreamEnded()
		}
	}
	return c, fr
}

// TestH2CUpgradeSessionEnds: when the client closes an upgraded
// connection, the proxy's session for it ends (it used to wait for the
// proxy's shutdown: the check that the request was an upgrade read a
// header the upgraded request's handling had removed).
func TestH2CUpgradeSessionEnds(t *testing.T) {
	up := slowUpstream(t, make(chan struct{}, 1))
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := startDrainProxy(t, ln, up, ruleDecider(t, policy.HTTPRule{Path: "/.*"}))
	c, _ := h2cUpgraded(t, ln.Addr().String())
	if n := p.active.Load(); n != 1 {
		t.Fatalf("%d sessions, want 1", n)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for p.active.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := p.active.Load(); n != 0 {
		t.Errorf("%d sessions still open 5s after the client closed its upgraded connection", n)
	}
}
