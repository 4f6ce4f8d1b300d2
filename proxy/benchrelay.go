//go:build l7gate_benchrelay

package proxy

import (
	"context"
	"io"
	"net"
	"sync"
)

// benchRelayBuild: this is make bench's splice relay build (-tags
// l7gate_benchrelay). Its proxy accepts redirected connections exactly as
// the Go proxy does (the same listeners, registered in the datapath's
// socket map the same way; the same steering check and connection limits)
// and dials upstream exactly as the Go proxy does (the client's source
// address, the from-proxy mark), then only copies bytes both ways: no
// parsing, NO POLICY, no access records. It is the ceiling a byte-splicing
// proxy reaches on the redirect path, measured by make bench next to the
// Go proxy. It must never run on a real node.
const benchRelayBuild = true

// serveBenchRelay copies c ↔ upstream with io.Copy (splice(2) between two
// TCP sockets on Linux), half-closing each direction at its EOF.
func (p *Proxy) serveBenchRelay(ci connInfo, c *net.TCPConn, dial func(context.Context) (net.Conn, error)) {
	up, err := dial(p.ctx)
	if err != nil {
		p.log.Debug("bench relay: upstream dial failed", "src", ci.src, "dst", ci.dst, "error", err)
		return
	}
	defer up.Close()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if _, err := io.Copy(up, c); err != nil {
			c.Close()
			up.Close()
			return
		}
		if cw, ok := up.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	if _, err := io.Copy(c, up); err != nil {
		c.Close()
		up.Close()
	} else {
		c.CloseWrite()
	}
	wg.Wait()
}
