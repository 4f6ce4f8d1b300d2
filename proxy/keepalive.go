package proxy

import (
	"net"
	"sync"
	"time"
)

// upstreamKeepAlive is the TCP keep-alive of upstream connections, Go's
// dialer defaults: the first probe after 15 s idle, then every 15 s, 9
// unanswered probes end the connection (a server that vanished while the
// proxy waits for its answer is found by keep-alive only).
func upstreamKeepAlive() net.KeepAliveConfig {
	return net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 15 * time.Second, Count: 9}
}

// keepAliveDelay is how long an upstream connection runs before its
// keep-alive is turned on (between one and two of it). Keep-alive probes
// only a connection idle for 15 s, so a connection that ends within a
// second never needs it: with a new connection per request (make bench's
// newconn phase) the four setsockopt calls Go's dialer makes per
// connection (SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT)
// were 5 % of the proxy's CPU. A longer-lived connection gets its first
// probe at most keepAliveDelay×2 later than with keep-alive set at dial.
const keepAliveDelay = time.Second

// keepAliveQueueMax bounds the connections dialed in one round that wait
// for keep-alive (what the armer holds: at most twice that many closed
// *net.TCPConn, about 300 bytes each); beyond it, a dial sets keep-alive
// itself, as before.
const keepAliveQueueMax = 8192

// keepAliveArmer turns keep-alive on for the upstream connections still
// open after keepAliveDelay: one goroutine (only while connections wait)
// arms, every keepAliveDelay, those dialed before its previous round;
// a connection closed by then costs no system call (net reports it
// closed). It holds a connection's *net.TCPConn (not its socket: closing
// frees that) for at most two rounds. A drain (which waits for the
// proxy's goroutines) ends it at once: it arms what waits, and
// connections dialed during a drain get keep-alive in the dial.
type keepAliveArmer struct {
	mu      sync.Mutex
	next    []*net.TCPConn // dialed since the last round
	due     []*net.TCPConn // dialed before the last round: armed at the next
	running bool
}

// armKeepAlive queues an upstream connection for keep-alive (see
// keepAliveArmer); a connection of another type gets it at once.
func (p *Proxy) armKeepAlive(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok || p.drainCtx.Err() != nil {
		if ka, ok := c.(interface {
			SetKeepAliveConfig(net.KeepAliveConfig) error
		}); ok {
			ka.SetKeepAliveConfig(upstreamKeepAlive())
		}
		return
	}
	a := &p.keepAlive
	a.mu.Lock()
	if len(a.next) >= p.keepAliveMax {
		a.mu.Unlock()
		tc.SetKeepAliveConfig(upstreamKeepAlive())
		return
	}
	a.next = append(a.next, tc)
	start := !a.running
	a.running = true
	a.mu.Unlock()
	if start {
		p.wg.Add(1)
		go p.keepAliveRounds()
	}
}

// keepAliveRounds arms the connections due every p.keepAliveEvery until
// none waits, or a drain or Close begins (then it arms all that wait).
func (p *Proxy) keepAliveRounds() {
	defer p.wg.Done()
	a := &p.keepAlive
	t := time.NewTimer(p.keepAliveEvery)
	defer t.Stop()
	cfg := upstreamKeepAlive()
	for {
		select {
		case <-t.C:
		case <-p.drainCtx.Done():
			a.mu.Lock()
			waiting := append(a.due, a.next...)
			a.next, a.due, a.running = nil, nil, false
			a.mu.Unlock()
			for _, c := range waiting {
				c.SetKeepAliveConfig(cfg)
			}
			return
		}
		a.mu.Lock()
		due := a.due
		a.due, a.next = a.next, nil
		if len(due) == 0 && len(a.due) == 0 {
			a.running = false
			a.mu.Unlock()
			return
		}
		a.mu.Unlock()
		for _, c := range due {
			// (closed since: an error, no system call)
			c.SetKeepAliveConfig(cfg)
		}
		clear(due)
		t.Reset(p.keepAliveEvery)
	}
}
