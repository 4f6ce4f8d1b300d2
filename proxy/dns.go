package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/l7gate/l7gate/policy"
	dnsproxy "github.com/l7gate/l7gate/proxy/dns"
	"github.com/l7gate/l7gate/redirect"
)

// DNSOptions configure the DNS proxy that serves listeners with parser
// dns (package dnsproxy): UDP and TCP on the listener's port.
type DNSOptions struct {
	// Learn is told the addresses of allowed answers for names a toFQDNs
	// selector matches, and holds the answer until it returns (see
	// dnsproxy.Config.Learn): the proxy command asks the agent, which
	// answers once the datapath admits them.
	Learn func(ctx context.Context, name string, ips []netip.Addr, ttl time.Duration) error
	// HoldTimeout bounds Learn (0: dnsproxy's default).
	HoldTimeout time.Duration
	// AgentEpoch changes when the connection Learn uses to the agent
	// does; a change clears the fast path (dnsproxy.Config.AgentEpoch).
	AgentEpoch func() uint64
	// FastPathNames bounds the DNS proxy's fast path (0: its default,
	// negative: off; dnsproxy.Config.FastPathNames).
	FastPathNames int
	// DenyRcode answers denied queries (0: REFUSED; or NXDOMAIN).
	DenyRcode int
	// Cache keeps the names toFQDNs selectors match (nil: none).
	Cache *dnsproxy.Cache
}

// newDNS returns the DNS proxy (deciding nothing until Apply: every query
// is denied).
func newDNS(opts Options) *dnsproxy.Proxy {
	empty, _ := dnsproxy.NewEndpointPolicy(nil, func(netip.Addr) policy.Identity { return policy.IdentityWorld })
	cfg := dnsproxy.Config{Logger: opts.Logger, Policy: empty, OriginalDst: dnsproxy.LocalDst{}, Cache: opts.DNS.Cache,
		DenyRcode: opts.DNS.DenyRcode, AccessLog: opts.AccessLog, Learn: opts.DNS.Learn, HoldTimeout: opts.DNS.HoldTimeout, AgentEpoch: opts.DNS.AgentEpoch, FastPathNames: opts.DNS.FastPathNames}
	if opts.Mark != nil {
		cfg.Mark = func(client policy.Identity) uint32 { return opts.Mark(client, policy.Egress) }
	}
	p, err := dnsproxy.New(cfg)
	if err != nil {
		// only an invalid DenyRcode gets here: deny with the default
		cfg.DenyRcode = 0
		p, _ = dnsproxy.New(cfg)
	}
	return p
}

// DNSStats returns the DNS proxy's counters.
func (p *Proxy) DNSStats() dnsproxy.Stats { return p.dns.Stats() }

// dnsPolicy compiles the DNS part of cfg (an error fails Apply).
func dnsPolicy(cfg *Config, c *compiled) (*dnsproxy.SnapshotPolicy, error) {
	eps := make([]dnsproxy.PolicyEndpoint, 0, len(cfg.Endpoints))
	for _, ep := range cfg.Endpoints {
		eps = append(eps, dnsproxy.PolicyEndpoint{Identity: ep.Identity, IPs: ep.IPs, Egress: ep.Egress, FQDNSelectors: ep.FQDNSelectors})
	}
	return dnsproxy.NewEndpointPolicy(eps, c.identityOf)
}

// serveDNS serves a dns listener: its TCP listener and a UDP socket on
// the same port (the datapath's socket map holds both; the agent takes
// the UDP socket as it takes the listener).
func (p *Proxy) serveDNS(st *listenerState) error {
	// Called with p.mu held (Apply). A handed-over UDP socket is the one
	// the socket map holds: served as is, no datagram finds no socket.
	udp := p.inherited.UDP[st.spec.Port]
	delete(p.inherited.UDP, st.spec.Port)
	p.log.Info("dns udp socket", "port", st.spec.Port, "family", "ipv4", "inherited", udp != nil)
	if udp == nil {
		var err error
		udp, err = dnsproxy.ListenUDP(p.ctx, net.JoinHostPort(p.opts.ListenHost, strconv.Itoa(int(st.spec.Port))), *p.opts.Transparent)
		if err != nil {
			return err
		}
	}
	st.udp = udp
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		if err := p.dns.ServeTCP(p.ctx, st.ln); err != nil && !errors.Is(err, net.ErrClosed) {
			p.log.Warn("dns listener", "port", st.spec.Port, "error", err)
		}
	}()
	go func() {
		defer p.wg.Done()
		if err := p.dns.ServeUDP(p.ctx, udp); err != nil && !errors.Is(err, net.ErrClosed) {
			p.log.Warn("dns listener", "port", st.spec.Port, "protocol", "udp", "error", err)
		}
	}()
	return nil
}

// open6DNS opens a dns port's IPv6 sockets it lacks (p.mu held): the
// TCP listener and the UDP socket on Options.ListenHost6, handed over or
// new. Each is served once open; the agent takes both into the socket
// map (their own family's keys). One that cannot be opened is logged and
// retried on the next Apply: DNS over IPv6 to the port drops no-listener
// meanwhile (fail closed).
func (p *Proxy) open6DNS(st *listenerState) {
	port := st.spec.Port
	addr := net.JoinHostPort(p.opts.ListenHost6, strconv.Itoa(int(port)))
	if st.ln6 == nil {
		ln, ok := p.inherited.TCP6[port]
		delete(p.inherited.TCP6, port)
		var err error
		if !ok {
			ln, err = redirect.ListenTransparent(p.ctx, addr, *p.opts.Transparent)
		}
		if err == nil && p.opts.OnListener != nil {
			if err = p.opts.OnListener(port, ln); err != nil {
				ln.Close()
			}
		}
		if err != nil {
			p.log.Warn("no IPv6 dns listener: DNS over IPv6 (TCP) to the port drops until one opens", "port", port, "error", err)
		} else {
			st.ln6 = ln
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				if err := p.dns.ServeTCP(p.ctx, ln); err != nil && !errors.Is(err, net.ErrClosed) {
					p.log.Warn("dns listener", "port", port, "family", "ipv6", "error", err)
				}
			}()
		}
	}
	if st.udp6 == nil {
		udp, ok := p.inherited.UDP6[port]
		delete(p.inherited.UDP6, port)
		p.log.Info("dns udp socket", "port", port, "family", "ipv6", "inherited", ok)
		var err error
		if !ok {
			udp, err = dnsproxy.ListenUDP(p.ctx, addr, *p.opts.Transparent)
		}
		if err != nil {
			p.log.Warn("no IPv6 dns socket: DNS over IPv6 (UDP) to the port drops until one opens", "port", port, "error", err)
			return
		}
		st.udp6 = udp
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if err := p.dns.ServeUDP(p.ctx, udp); err != nil && !errors.Is(err, net.ErrClosed) {
				p.log.Warn("dns listener", "port", port, "protocol", "udp", "family", "ipv6", "error", err)
			}
		}()
	}
}

// close closes a listener's sockets.
func (st *listenerState) close() {
	st.ln.Close()
	if st.ln6 != nil {
		st.ln6.Close()
	}
	if st.udp != nil {
		st.udp.Close()
	}
	if st.udp6 != nil {
		st.udp6.Close()
	}
}
