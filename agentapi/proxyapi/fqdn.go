package proxyapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// FQDNAnswer is a DNS answer the DNS proxy saw for a name a toFQDNs
// selector matches (POST /fqdn).
type FQDNAnswer struct {
	Name       string       `json:"name"`
	IPs        []netip.Addr `json:"ips"`
	TTLSeconds uint32       `json:"ttlSeconds"`
}

// FQDNClient posts DNS answers to the agent (the Go proxy's side of POST
// /fqdn), over one kept-alive connection pool.
type FQDNClient struct {
	c     *http.Client
	epoch atomic.Uint64
}

// NewFQDNClient returns a client of the agent's API socket (StatusSocket).
func NewFQDNClient(sock string) *FQDNClient {
	f := &FQDNClient{}
	f.c = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", sock)
			if err != nil {
				f.epoch.Add(1)
				return nil, err
			}
			return &epochConn{Conn: c, epoch: &f.epoch}, nil
		},
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     time.Minute,
	}}
	return f
}

// Epoch changes whenever a connection to the agent ends (closed by
// either side, failed, or could not be made): what the agent confirmed
// before may not hold for an agent that restarted since. A kept-alive
// idle connection the agent closes ends at once (the transport reads
// it), so a restarting agent changes the epoch before it serves again.
func (f *FQDNClient) Epoch() uint64 { return f.epoch.Load() }

// epochConn bumps epoch once, when the connection fails or closes.
type epochConn struct {
	net.Conn
	epoch *atomic.Uint64
	once  sync.Once
}

func (c *epochConn) end() { c.once.Do(func() { c.epoch.Add(1) }) }

func (c *epochConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil {
		c.end()
	}
	return n, err
}

func (c *epochConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil {
		c.end()
	}
	return n, err
}

func (c *epochConn) Close() error {
	c.end()
	return c.Conn.Close()
}

// Learn posts an answer and waits until the agent has implemented it
// (ctx bounds the wait).
func (f *FQDNClient) Learn(ctx context.Context, a FQDNAnswer) error {
	body, err := json.Marshal(a)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent/fqdn", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := f.c.Do(req)
	if err != nil {
		return fmt.Errorf("agent fqdn: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("agent fqdn: %s: %s", resp.Status, bytes.TrimSpace(msg))
	}
	return nil
}
