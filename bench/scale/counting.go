package scale

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// reqKey is one class of API request as the client saw it.
type reqKey struct {
	Verb, Resource, Subresource string
	Code                        int
}

// objectWrite is one write an agent made to one object, as seen on the
// wire.
type objectWrite struct {
	Resource, Subresource, Namespace, Name string
	Code                                   int
	At                                     time.Time
}

// apiCounters counts what one agent sent and received: requests by class,
// bytes and JSON lines (one per watch event) of watch response bodies per
// resource, bytes read from its TCP connections, and every write.
type apiCounters struct {
	mu          sync.Mutex
	requests    map[reqKey]int
	watchBytes  map[string]int64
	watchEvents map[string]int64
	writes      []objectWrite
	// watchTypes: the Content-Type of each resource's watch.
	watchTypes  map[string]string
	wireRead    atomic.Int64
	wireWritten atomic.Int64
}

func newAPICounters() *apiCounters {
	return &apiCounters{requests: map[reqKey]int{}, watchBytes: map[string]int64{}, watchEvents: map[string]int64{},
		watchTypes: map[string]string{}}
}

// counterSnapshot is a copy of apiCounters at one moment.
type counterSnapshot struct {
	Requests    map[reqKey]int
	WatchBytes  map[string]int64
	WatchEvents map[string]int64
	WatchTypes  map[string]string
	Writes      int
	WireRead    int64
	WireWritten int64
}

func (c *apiCounters) snapshot() counterSnapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := counterSnapshot{Requests: map[reqKey]int{}, WatchBytes: map[string]int64{}, WatchEvents: map[string]int64{}, WatchTypes: map[string]string{},
		Writes: len(c.writes), WireRead: c.wireRead.Load(), WireWritten: c.wireWritten.Load()}
	for k, v := range c.requests {
		s.Requests[k] = v
	}
	for k, v := range c.watchBytes {
		s.WatchBytes[k] = v
	}
	for k, v := range c.watchEvents {
		s.WatchEvents[k] = v
	}
	for k, v := range c.watchTypes {
		s.WatchTypes[k] = v
	}
	return s
}

// writesSince returns the writes after the first n.
func (c *apiCounters) writesSince(n int) []objectWrite {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.writes[min(n, len(c.writes)):])
}

// apiPath is what a Kubernetes API URL path names.
type apiPath struct {
	Resource, Subresource, Namespace, Name string
}

// parseAPIPath reads /api/v1/[namespaces/NS/]RESOURCE[/NAME[/SUB]] and
// /apis/GROUP/VERSION/... paths.
func parseAPIPath(p string) apiPath {
	parts := strings.Split(strings.Trim(p, "/"), "/")
	switch {
	case len(parts) >= 2 && parts[0] == "api":
		parts = parts[2:]
	case len(parts) >= 3 && parts[0] == "apis":
		parts = parts[3:]
	default:
		return apiPath{Resource: "(" + p + ")"}
	}
	var out apiPath
	if len(parts) >= 3 && parts[0] == "namespaces" {
		out.Namespace = parts[1]
		parts = parts[2:]
	}
	if len(parts) > 0 {
		out.Resource = parts[0]
	}
	if len(parts) > 1 {
		out.Name = parts[1]
	}
	if len(parts) > 2 {
		out.Subresource = parts[2]
	}
	return out
}

// verbOf names a request the way apiserver_request_total does.
func verbOf(r *http.Request, name string) string {
	switch r.Method {
	case http.MethodGet:
		if r.URL.Query().Get("watch") == "true" || r.URL.Query().Get("watch") == "1" {
			return "WATCH"
		}
		if name == "" {
			return "LIST"
		}
		return "GET"
	case http.MethodPatch:
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/apply-patch") {
			return "APPLY"
		}
		return "PATCH"
	case http.MethodPut:
		return "PUT"
	case http.MethodPost:
		return "POST"
	case http.MethodDelete:
		return "DELETE"
	}
	return r.Method
}

// countingTransport counts requests and watch bodies for one agent.
type countingTransport struct {
	next http.RoundTripper
	c    *apiCounters
}

func (t *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	ap := parseAPIPath(r.URL.Path)
	verb := verbOf(r, ap.Name)
	resp, err := t.next.RoundTrip(r)
	code := 0
	if resp != nil {
		code = resp.StatusCode
	}
	t.c.mu.Lock()
	t.c.requests[reqKey{Verb: verb, Resource: ap.Resource, Subresource: ap.Subresource, Code: code}]++
	switch verb {
	case "PATCH", "APPLY", "PUT", "POST", "DELETE":
		t.c.writes = append(t.c.writes, objectWrite{Resource: ap.Resource, Subresource: ap.Subresource,
			Namespace: ap.Namespace, Name: ap.Name, Code: code, At: time.Now()})
	}
	t.c.mu.Unlock()
	if err == nil && verb == "WATCH" {
		t.c.mu.Lock()
		t.c.watchTypes[ap.Resource] = resp.Header.Get("Content-Type")
		t.c.mu.Unlock()
		resp.Body = &watchBody{ReadCloser: resp.Body, c: t.c, resource: ap.Resource,
			framed: strings.HasPrefix(resp.Header.Get("Content-Type"), "application/vnd.kubernetes.protobuf")}
	}
	return resp, err
}

// watchBody counts a watch stream's bytes and events: JSON lines, or
// length-prefixed frames (protobuf: a 4-byte big-endian length, then the
// event).
type watchBody struct {
	io.ReadCloser
	c        *apiCounters
	resource string
	framed   bool
	// For framed streams: bytes of the current frame still to come, and
	// the length prefix read so far.
	left   int
	header []byte
}

// frames counts the frames that start in p.
func (b *watchBody) frames(p []byte) int {
	n := 0
	for len(p) > 0 {
		if b.left > 0 {
			k := min(b.left, len(p))
			b.left -= k
			p = p[k:]
			continue
		}
		k := min(4-len(b.header), len(p))
		b.header = append(b.header, p[:k]...)
		p = p[k:]
		if len(b.header) == 4 {
			b.left = int(binary.BigEndian.Uint32(b.header))
			b.header = b.header[:0]
			n++
		}
	}
	return n
}

func (b *watchBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		var ev int
		if b.framed {
			ev = b.frames(p[:n])
		} else {
			ev = bytes.Count(p[:n], []byte{'\n'})
		}
		b.c.mu.Lock()
		b.c.watchBytes[b.resource] += int64(n)
		b.c.watchEvents[b.resource] += int64(ev)
		b.c.mu.Unlock()
	}
	return n, err
}

// countingDialer gives an agent its own TCP connection(s) and counts the
// bytes on them (TLS and HTTP/2 framing included).
func countingDialer(c *apiCounters) func(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: conn, c: c}, nil
	}
}

type countingConn struct {
	net.Conn
	c *apiCounters
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.c.wireRead.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.c.wireWritten.Add(int64(n))
	return n, err
}
