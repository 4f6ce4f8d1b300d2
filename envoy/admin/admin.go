// Package admin reads an Envoy admin endpoint (a Unix socket in l7gate's
// deployment): it fetches /config_dump, decodes it with the Envoy protos
// and summarises what l7gate put there — listeners, the filter chain of
// each local endpoint and the RBAC rules of each rule set.
package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client talks to one Envoy admin endpoint.
type Client struct {
	http *http.Client
	base string
}

// maxDump bounds a config dump read into memory.
const maxDump = 256 << 20

// NewClient returns a client for addr: "unix:PATH" (also "unix://PATH")
// for an admin Unix socket, or an http:// URL.
func NewClient(addr string) (*Client, error) {
	switch {
	case strings.HasPrefix(addr, "unix:"):
		path := strings.TrimPrefix(strings.TrimPrefix(addr, "unix:"), "//")
		if path == "" {
			return nil, errors.New("empty unix socket path")
		}
		tr := &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
			DisableKeepAlives: true,
		}
		return &Client{http: &http.Client{Transport: tr, Timeout: 30 * time.Second}, base: "http://envoy-admin"}, nil
	case strings.HasPrefix(addr, "http://"):
		return &Client{http: &http.Client{Timeout: 30 * time.Second}, base: strings.TrimSuffix(addr, "/")}, nil
	}
	return nil, fmt.Errorf("admin address %q: want unix:PATH or http://HOST:PORT", addr)
}

// ConfigDump fetches /config_dump (with ?resource= when resource is set,
// e.g. "dynamic_listeners") and returns the body as Envoy sent it.
func (c *Client) ConfigDump(ctx context.Context, resource string) ([]byte, error) {
	u := c.base + "/config_dump"
	if resource != "" {
		u += "?resource=" + url.QueryEscape(resource)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("config dump: %w", err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("config dump: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDump))
	if err != nil {
		return nil, fmt.Errorf("config dump: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("config dump: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}
