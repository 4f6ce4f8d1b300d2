package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/internal/acceptretry"
	dnsmsg "github.com/l7gate/l7gate/parsers/dns"
	"github.com/l7gate/l7gate/policy"
)

// Defaults of Config.
const (
	DefaultUpstreamTimeout = 2 * time.Second
	DefaultMaxInFlight     = 512
	DefaultMaxConns        = 256
	DefaultTCPIdle         = 10 * time.Second
	DefaultHoldTimeout     = time.Second
)

// Config configures a Proxy.
type Config struct {
	Logger *slog.Logger
	// Policy decides queries (required).
	Policy Policy
	// OriginalDst finds where a query was headed (required).
	OriginalDst OriginalDst
	// Cache receives the addresses of answers for names that toFQDNs
	// selectors match (nil: none kept).
	Cache *Cache
	// DenyRcode answers denied queries: mdns.RcodeRefused (0: the
	// default) or mdns.RcodeNameError (NXDOMAIN).
	DenyRcode int
	// UpstreamTimeout bounds one forwarded query (0: default).
	UpstreamTimeout time.Duration
	// MaxInFlight bounds UDP queries being answered; more are dropped and
	// counted (0: default).
	MaxInFlight int
	// MaxConns bounds TCP connections (0: default).
	MaxConns int
	// TCPIdle closes an idle TCP connection (0: default).
	TCPIdle time.Duration
	// AccessLog receives one record per query (nil: none).
	AccessLog func(*flow.Record)
	// Dialer dials the upstream server (nil: a plain net.Dialer).
	Dialer *net.Dialer
	// Mark returns the SO_MARK for the upstream socket of a query from
	// client (nil or 0: none): the datapath then knows the query is the
	// proxy's on behalf of client (bpf.ProxyMark(Egress, client)).
	Mark func(client policy.Identity) uint32
	// Learn is told the addresses of every allowed answer for a name a
	// toFQDNs selector matches, before the answer is released: it returns
	// once the datapath admits connections to them (the agent implemented
	// a revision with them) or fails. The answer waits at most
	// HoldTimeout, then is released anyway and the miss counted
	// (HoldTimeouts): the client may then race the policy, never widen it.
	Learn func(ctx context.Context, name string, ips []netip.Addr, ttl time.Duration) error
	// HoldTimeout bounds Learn (0: DefaultHoldTimeout).
	HoldTimeout time.Duration
	// FastPathNames bounds the names whose confirmed addresses the fast
	// path remembers, releasing answers already in force without Learn
	// (see fast.go; 0: DefaultFastPathNames, negative: no fast path, every
	// answer held).
	FastPathNames int
	// FastPathHeadroom is added to an answer's TTL in what Learn is
	// asked to keep (0: DefaultFastPathHeadroom): the fast path releases
	// an answer only while the agent keeps its addresses for the whole
	// TTL, and background refreshes (at most one a second per name) keep
	// that true.
	FastPathHeadroom time.Duration
	// AgentEpoch changes whenever the connection to the agent does (its
	// end closed: the agent may have restarted; nil: never). A change
	// clears the fast path.
	AgentEpoch func() uint64
	// Now is the clock of the fast path (nil: time.Now).
	Now func() time.Time
}

// Stats are the proxy's counters.
type Stats struct {
	Queries        uint64 `json:"queries"`
	Allowed        uint64 `json:"allowed"`
	Denied         uint64 `json:"denied"`
	Malformed      uint64 `json:"malformed"`      // dropped or answered FORMERR
	UpstreamErrors uint64 `json:"upstreamErrors"` // answered SERVFAIL
	Dropped        uint64 `json:"dropped"`        // over MaxInFlight / MaxConns
	ReplyErrors    uint64 `json:"replyErrors"`    // UDP answers that could not be sent
	Held           uint64 `json:"held"`           // answers held until Learn returned
	HoldTimeouts   uint64 `json:"holdTimeouts"`   // answers released after Learn failed or timed out
	CacheInserts   uint64 `json:"cacheInserts"`
	CacheOverflow  uint64 `json:"cacheOverflow"`
	// The fast path (fast.go).
	Known         uint64 `json:"known"`         // answers released at once: addresses known in force
	Learns        uint64 `json:"learns"`        // Learn round trips (held answers and refreshes)
	Refreshes     uint64 `json:"refreshes"`     // background refreshes started
	RefreshErrors uint64 `json:"refreshErrors"` // refreshes that failed (each cleared the fast path)
	FastNames     int    `json:"fastNames"`     // names remembered
	FastClears    uint64 `json:"fastClears"`    // fast path cleared (config change, agent error or epoch change)
	FastOverflow  uint64 `json:"fastOverflow"`  // names not remembered: FastPathNames reached
}

// Proxy is the DNS proxy.
type Proxy struct {
	cfg       Config
	policy    atomic.Pointer[policyBox]
	selectors atomic.Pointer[policy.DNSMatcher]
	// udpBufs holds upstream read buffers (a UDP answer can be 64 KiB;
	// most are small, so each is copied out at its size).
	udpBufs sync.Pool

	queries, allowed, denied, malformed, upstreamErrs, dropped, replyErrs, held, holdTimeouts, inserts, overflow atomic.Uint64

	fast                                  *fastCache
	known, learns, refreshes, refreshErrs atomic.Uint64
}

// New returns a proxy; Serve its listeners.
func New(cfg Config) (*Proxy, error) {
	if cfg.Policy == nil || cfg.OriginalDst == nil {
		return nil, errors.New("dns proxy: Policy and OriginalDst are required")
	}
	switch cfg.DenyRcode {
	case 0:
		cfg.DenyRcode = mdns.RcodeRefused
	case mdns.RcodeRefused, mdns.RcodeNameError:
	default:
		return nil, fmt.Errorf("dns proxy: deny rcode %d: want REFUSED or NXDOMAIN", cfg.DenyRcode)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = DefaultUpstreamTimeout
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	if cfg.TCPIdle <= 0 {
		cfg.TCPIdle = DefaultTCPIdle
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{}
	}
	if cfg.HoldTimeout <= 0 {
		cfg.HoldTimeout = DefaultHoldTimeout
	}
	if cfg.FastPathNames == 0 {
		cfg.FastPathNames = DefaultFastPathNames
	}
	if cfg.FastPathHeadroom <= 0 {
		cfg.FastPathHeadroom = DefaultFastPathHeadroom
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	p := &Proxy{cfg: cfg, fast: newFastCache(max(cfg.FastPathNames, 0))}
	p.policy.Store(&policyBox{cfg.Policy})
	p.udpBufs.New = func() any { b := make([]byte, dnsmsg.MaxMessageSize); return &b }
	p.selectors.Store(policy.NewDNSMatcher(nil))
	return p, nil
}

type policyBox struct{ Policy }

// SetPolicy replaces the policy queries are decided by (a new config).
func (p *Proxy) SetPolicy(pol Policy) {
	if pol != nil {
		p.policy.Store(&policyBox{pol})
		p.fast.clear()
	}
}

// dialer returns the dialer for a query from client: Dialer, with the
// client's SO_MARK when Mark gives one.
func (p *Proxy) dialer(client policy.Identity) *net.Dialer {
	var mark uint32
	if p.cfg.Mark != nil {
		mark = p.cfg.Mark(client)
	}
	if mark == 0 {
		return p.cfg.Dialer
	}
	d := *p.cfg.Dialer
	inner := d.Control
	d.Control = func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set SO_MARK %#x (needs CAP_NET_ADMIN): %w", mark, serr)
		}
		if inner != nil {
			return inner(network, address, c)
		}
		return nil
	}
	return &d
}

// SetFQDNSelectors sets the toFQDNs selectors in force on the node: only
// answers for names they match are cached.
func (p *Proxy) SetFQDNSelectors(sels []policy.DNSSelector) {
	p.selectors.Store(policy.NewDNSMatcher(sels))
	p.fast.clear()
}

// Stats returns the counters.
func (p *Proxy) Stats() Stats {
	names, clears, overflow := p.fast.stats()
	return Stats{Queries: p.queries.Load(), Allowed: p.allowed.Load(), Denied: p.denied.Load(), Malformed: p.malformed.Load(),
		UpstreamErrors: p.upstreamErrs.Load(), Dropped: p.dropped.Load(), ReplyErrors: p.replyErrs.Load(), Held: p.held.Load(), HoldTimeouts: p.holdTimeouts.Load(), CacheInserts: p.inserts.Load(), CacheOverflow: p.overflow.Load(),
		Known: p.known.Load(), Learns: p.learns.Load(), Refreshes: p.refreshes.Load(), RefreshErrors: p.refreshErrs.Load(), FastNames: names, FastClears: clears, FastOverflow: overflow}
}

// exchange forwards a query to the server and returns the raw response.
type exchange func(ctx context.Context, d *net.Dialer, server netip.AddrPort, query []byte, id uint16) ([]byte, error)

// handle decides one query and returns the bytes to answer with (nil: no
// answer — the query could not be read well enough to answer it).
func (p *Proxy) handle(ctx context.Context, proto policy.Protocol, client, local netip.AddrPort, query []byte, ex exchange) []byte {
	start := time.Now()
	p.queries.Add(1)
	rec := &flow.Record{Time: start, Protocol: "dns", Direction: flow.Egress, Source: client, Verdict: flow.VerdictDenied}
	defer func() {
		rec.LatencyMS = float64(time.Since(start).Microseconds()) / 1000
		if p.cfg.AccessLog != nil {
			p.cfg.AccessLog(rec)
		}
	}()
	msg, q, err := dnsmsg.ParseQuery(query)
	rec.DNSQuery, rec.DNSType = q.Name, q.TypeString()
	if rec.DNSQuery == "" {
		rec.DNSQuery = q.Raw
	}
	if q.Type == 0 {
		rec.DNSType = ""
	}
	switch {
	case err == nil:
	case errors.Is(err, dnsmsg.ErrName):
		// fall through to policy: an unmatchable name is denied with the
		// endpoint's rules named (below, Check never matches it)
	case msg != nil && errors.Is(err, dnsmsg.ErrQuestions):
		p.malformed.Add(1)
		rec.Reason, rec.Error = "malformed query", err.Error()
		return p.answer(rec, dnsmsg.Deny(msg, mdns.RcodeFormatError))
	default:
		// unreadable, or not a query at all: nothing to answer
		p.malformed.Add(1)
		rec.Reason, rec.Error = "malformed query", err.Error()
		return nil
	}
	server, err := p.cfg.OriginalDst.OriginalDst(proto, client, local)
	if err != nil {
		p.denied.Add(1)
		rec.Reason = "no original destination: " + err.Error()
		return p.answer(rec, dnsmsg.Deny(msg, p.cfg.DenyRcode))
	}
	rec.Destination = server
	d, err := p.policy.Load().Lookup(client.Addr(), server, proto)
	if err != nil {
		p.denied.Add(1)
		rec.Reason = "no DNS policy: " + err.Error()
		return p.answer(rec, dnsmsg.Deny(msg, p.cfg.DenyRcode))
	}
	rec.SrcIdentity, rec.DstIdentity = d.Client, d.Server
	i := -1
	if q.Name != "" {
		i = d.Checker.Check(d.Server, q.Name)
	}
	if i < 0 {
		p.denied.Add(1)
		rec.DecidedBy = d.Checker.DeniedBy(d.Server)
		rec.Reason = "no rules.dns entry matches the name"
		return p.answer(rec, dnsmsg.Deny(msg, p.cfg.DenyRcode))
	}
	rec.DecidedBy = []policy.Provenance{d.Checker.Rule(i).Origin}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.UpstreamTimeout)
	defer cancel()
	raw, err := ex(ctx, p.dialer(d.Client), server, query, msg.Id)
	var resp *mdns.Msg
	if err == nil {
		resp, err = dnsmsg.ParseResponse(raw, msg)
	}
	if err != nil {
		// An answer we cannot read is not forwarded: SERVFAIL.
		p.upstreamErrs.Add(1)
		rec.Verdict, rec.Error = flow.VerdictAllowed, "upstream: "+err.Error()
		return p.answer(rec, dnsmsg.Deny(msg, mdns.RcodeServerFailure))
	}
	p.allowed.Add(1)
	rec.Verdict = flow.VerdictAllowed
	rec.DNSRcode = mdns.RcodeToString[resp.Rcode]
	if resp.Rcode == mdns.RcodeSuccess {
		ans := dnsmsg.Resolve(resp, q.Name)
		rec.DNSIPs = ans.IPs
		if len(ans.IPs) > 0 && p.selectors.Load().Match(q.Name) >= 0 {
			ttl := time.Duration(ans.TTL) * time.Second
			if p.cfg.Cache != nil {
				if p.cfg.Cache.Insert(q.Name, ans.IPs, ttl) {
					p.inserts.Add(1)
				} else {
					p.overflow.Add(1)
				}
			}
			if p.cfg.Learn != nil {
				if ok, refresh := p.fast.hit(d.Client, q.Name, ans.IPs, ttl, p.cfg.Now(), p.epoch()); ok {
					// Known in force for the whole TTL: release at once.
					p.known.Add(1)
					if refresh {
						p.refresh(d.Client, q.Name, ans.IPs, ttl)
					}
					return raw
				}
				// Hold the answer until the datapath admits its addresses.
				if err := p.learn(ctx, d.Client, q.Name, ans.IPs, ttl, false); err != nil {
					p.holdTimeouts.Add(1)
					rec.Error = "answer released before the datapath had its addresses: " + err.Error()
				} else {
					p.held.Add(1)
				}
			}
		}
	}
	return raw
}

func (p *Proxy) answer(rec *flow.Record, m *mdns.Msg) []byte {
	rec.DNSRcode = mdns.RcodeToString[m.Rcode]
	b, err := m.Pack()
	if err != nil {
		rec.Error = "pack answer: " + err.Error()
		return nil
	}
	return b
}

// ServeUDP answers queries arriving on conn until ctx ends or conn fails.
// A datagram the datapath redirected here (its original destination, read
// with IP_RECVORIGDSTADDR — see ListenUDP — is not conn's own address) is
// forwarded to that destination and answered from it, so the client sees
// the server it asked; a failed answer is counted (ReplyErrors).
func (p *Proxy) ServeUDP(ctx context.Context, conn *net.UDPConn) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	own, _ := netip.ParseAddrPort(conn.LocalAddr().String())
	own = netip.AddrPortFrom(own.Addr().Unmap(), own.Port())
	sem := make(chan struct{}, p.cfg.MaxInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	buf := make([]byte, dnsmsg.MaxMessageSize)
	oob := make([]byte, oobSize)
	for {
		n, oobn, _, from, err := conn.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("dns proxy: read udp: %w", err)
		}
		local := own
		if dst := origDst(oob[:oobn]); dst.IsValid() {
			local = dst
		}
		select {
		case sem <- struct{}{}:
		default:
			p.dropped.Add(1)
			continue
		}
		query := append([]byte(nil), buf[:n]...) // the read buffer is reused
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			resp := p.handle(ctx, policy.ProtoUDP, from, local, query, p.exchangeUDP)
			if resp == nil {
				return
			}
			var err error
			if local == own || (own.Addr().IsUnspecified() && local.Port() == own.Port()) {
				_, err = conn.WriteToUDPAddrPort(resp, from)
			} else {
				err = sendFrom(local, from, resp)
			}
			if err != nil {
				p.replyErrs.Add(1)
				p.cfg.Logger.Debug("dns answer", "client", from, "server", local, "err", err)
			}
		}()
	}
}

// exchangeUDP forwards a query over UDP: a connected socket (only the
// server's datagrams arrive), datagrams with another id skipped.
func (p *Proxy) exchangeUDP(ctx context.Context, d *net.Dialer, server netip.AddrPort, query []byte, id uint16) ([]byte, error) {
	c, err := d.DialContext(ctx, "udp", server.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := c.Write(query); err != nil {
		return nil, err
	}
	bp := p.udpBufs.Get().(*[]byte)
	defer p.udpBufs.Put(bp)
	buf := *bp
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		if n >= 2 && binary.BigEndian.Uint16(buf) == id {
			return append([]byte(nil), buf[:n]...), nil
		}
	}
}

// exchangeTCP forwards a query over a new TCP connection.
func (p *Proxy) exchangeTCP(ctx context.Context, d *net.Dialer, server netip.AddrPort, query []byte, _ uint16) ([]byte, error) {
	c, err := d.DialContext(ctx, "tcp", server.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if err := writeTCPMsg(c, query); err != nil {
		return nil, err
	}
	return readTCPMsg(c)
}

func writeTCPMsg(w io.Writer, m []byte) error {
	b := make([]byte, 2+len(m))
	binary.BigEndian.PutUint16(b, uint16(len(m)))
	copy(b[2:], m)
	_, err := w.Write(b)
	return err
}

// readTCPMsg reads one length-prefixed message; a length under a header's
// size is an error.
func readTCPMsg(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(l[:]))
	if n < 12 {
		return nil, fmt.Errorf("%w: tcp message of %d bytes", dnsmsg.ErrMalformed, n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

// ServeTCP answers queries on connections accepted from ln until ctx
// ends or ln fails.
func (p *Proxy) ServeTCP(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	sem := make(chan struct{}, p.cfg.MaxConns)
	var wg sync.WaitGroup
	defer wg.Wait()
	var backoff acceptretry.Backoff
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("dns proxy: accept: %w", err)
			}
			// The listener is still fine (see acceptretry): returning
			// here left DNS over TCP dead for good.
			if !backoff.Wait(ctx.Done(), p.cfg.Logger, "dns proxy: accept failed; retrying", err) {
				return nil
			}
			continue
		}
		backoff.Reset()
		select {
		case sem <- struct{}{}:
		default:
			p.dropped.Add(1)
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			p.serveConn(ctx, c)
		}()
	}
}

func (p *Proxy) serveConn(ctx context.Context, c net.Conn) {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	client, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	local, _ := netip.ParseAddrPort(c.LocalAddr().String())
	for {
		c.SetReadDeadline(time.Now().Add(p.cfg.TCPIdle))
		q, err := readTCPMsg(c)
		if err != nil {
			if errors.Is(err, dnsmsg.ErrMalformed) {
				p.malformed.Add(1)
			}
			return
		}
		resp := p.handle(ctx, policy.ProtoTCP, client, local, q, p.exchangeTCP)
		if resp == nil {
			return // unreadable: close, as a DNS server would
		}
		c.SetWriteDeadline(time.Now().Add(p.cfg.TCPIdle))
		if err := writeTCPMsg(c, resp); err != nil {
			return
		}
	}
}
