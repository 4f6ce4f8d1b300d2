package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/segmentio/kafka-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
)

// Observation is what a check's request met on the wire.
type Observation struct {
	Verdict Verdict
	// Detail says what was seen: "200 Ship landed", "403 Access denied",
	// "connect timeout", ...
	Detail string
}

// ProbeOptions bound a check's request.
type ProbeOptions struct {
	// ConnectTimeout: a connection not established by then is dropped.
	ConnectTimeout time.Duration
	// Timeout bounds the whole request.
	Timeout time.Duration
}

// DefaultProbeOptions: 1.5 s to connect, 5 s in all.
func DefaultProbeOptions() ProbeOptions {
	return ProbeOptions{ConnectTimeout: 1500 * time.Millisecond, Timeout: 5 * time.Second}
}

// KafkaClientID is the client id of the Kafka checks' requests.
const KafkaClientID = "l7gate-demo"

// Send runs a check's request from inside the source host's namespace to
// the destination's address and classifies what happened.
func (t *Topology) Send(ctx context.Context, c Check, o ProbeOptions) Observation {
	src, dst := t.hosts[c.From], t.hosts[c.To]
	if svc := t.sc.Host(c.To); svc != nil && svc.Service != nil {
		switch {
		case c.From == NodeHost:
			return t.sendToService(ctx, svc, t.Node, c, o)
		case src != nil:
			return t.sendToService(ctx, svc, src.NS, c, o)
		}
		return Observation{Verdict: Errored, Detail: "unknown host"}
	}
	if c.From == NodeHost && dst != nil {
		// from the node's own namespace and address (kubelet's probes)
		if c.Name != "" {
			return t.sendByName(ctx, t.Node, c, o)
		}
		return send(ctx, netnsDialer(t.Node, o.ConnectTimeout), netip.AddrPortFrom(dst.Host.Addr(c.Family), c.Port), c, o)
	}
	if src == nil || dst == nil {
		return Observation{Verdict: Errored, Detail: "unknown host"}
	}
	if c.Name != "" {
		return t.sendByName(ctx, src.NS, c, o)
	}
	return send(ctx, netnsDialer(src.NS, o.ConnectTimeout), netip.AddrPortFrom(dst.Host.Addr(c.Family), c.Port), c, o)
}

// sendByName resolves c.Name by asking the DNS server c.ResolvedBy from
// the source's namespace srcNS (the node's for checks from the node;
// through the DNS proxy when rules.dns apply,
// whose answer the agent holds until toFQDNs admit the address), then
// sends the HTTP request to the answered address with Host: c.Name. A
// refused or unanswered query is the check's outcome. Over IPv6 the query
// is for AAAA and goes to the server's IPv6 address, and the answer must
// be an IPv6 address (never a silent IPv4 request).
func (t *Topology) sendByName(ctx context.Context, srcNS string, c Check, o ProbeOptions) Observation {
	server := t.hosts[c.ResolvedBy]
	if server == nil {
		return Observation{Verdict: Errored, Detail: "unknown DNS server " + c.ResolvedBy}
	}
	dial := netnsDialer(srcNS, o.ConnectTimeout)
	q := c
	q.HTTP, q.DNS = nil, &DNSQuery{Name: c.Name, AAAA: c.Family == FamilyIPv6}
	obs := send(ctx, dial, netip.AddrPortFrom(server.Host.Addr(c.Family), 53), q, o)
	if obs.Verdict != Allowed {
		obs.Detail = "resolving " + strings.TrimSuffix(c.Name, ".") + ": " + obs.Detail
		return obs
	}
	var ip netip.Addr
	for _, f := range strings.Fields(strings.TrimPrefix(obs.Detail, "NOERROR")) {
		for _, a := range strings.Split(f, ",") {
			if addr, err := netip.ParseAddr(a); err == nil && !ip.IsValid() {
				ip = addr
			}
		}
	}
	if !ip.IsValid() {
		return Observation{Verdict: Errored, Detail: "resolving " + c.Name + ": no address (" + obs.Detail + ")"}
	}
	if ip.Is6() != (c.Family == FamilyIPv6) {
		return Observation{Verdict: Errored, Detail: "resolving " + c.Name + ": answer " + ip.String() + " is not of the check's family"}
	}
	name := strings.TrimSuffix(c.Name, ".")
	h := *c.HTTP
	if h.Host == "" {
		h.Host = name
	}
	c.HTTP = &h
	res := send(ctx, dial, netip.AddrPortFrom(ip, c.Port), c, o)
	res.Detail = name + " → " + ip.String() + ": " + res.Detail
	return res
}

// send sends c's request to addr over connections from dial.
func send(ctx context.Context, dial dialFunc, addr netip.AddrPort, c Check, o ProbeOptions) Observation {
	if o.ConnectTimeout <= 0 || o.Timeout <= 0 {
		o = DefaultProbeOptions()
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	rd := &recordingDialer{dial: dial}
	switch {
	case c.HTTP != nil:
		return sendHTTP(ctx, rd, addr, c.HTTP)
	case c.GRPC != nil:
		return sendGRPC(ctx, rd, addr, c.GRPC)
	case c.Kafka != nil:
		return sendKafka(ctx, rd, addr, c.Kafka, o)
	case c.DNS != nil:
		return sendDNS(ctx, rd, addr, c.DNS, o)
	}
	return Observation{Verdict: Errored, Detail: "no request"}
}

// recordingDialer remembers whether connecting failed, so that a client
// error can be told apart: no connection (dropped) or something after it.
type recordingDialer struct {
	dial dialFunc
	mu   sync.Mutex
	err  error // the last dial error
	ok   int   // connections established
}

func (d *recordingDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := d.dial(ctx, network, addr)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		d.err = err
	} else {
		d.ok++
	}
	return c, err
}

// dropped classifies a request that failed: a failed connect, or a
// connection reset or closed before any answer, is dropped; anything else
// is an error.
func (d *recordingDialer) dropped(err error) Observation {
	d.mu.Lock()
	dialErr, ok := d.err, d.ok
	d.mu.Unlock()
	if dialErr != nil && ok == 0 {
		return Observation{Verdict: Dropped, Detail: connectFailure(dialErr)}
	}
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return Observation{Verdict: Dropped, Detail: "connection reset"}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return Observation{Verdict: Dropped, Detail: "connection closed before an answer"}
	}
	return Observation{Verdict: Errored, Detail: shorten(err.Error())}
}

// connectFailure names why a connection could not be made.
func connectFailure(err error) string {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return "connect timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "unreachable"
	}
	return "connect failed: " + shorten(err.Error())
}

func shorten(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 160 {
		s = s[:157] + "..."
	}
	return s
}

// firstLine is the first line of a response body, shortened.
func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return shorten(s)
}

func sendHTTP(ctx context.Context, rd *recordingDialer, addr netip.AddrPort, r *HTTPRequest) Observation {
	tr := &http.Transport{DialContext: rd.DialContext, DisableKeepAlives: true, MaxResponseHeaderBytes: 64 << 10}
	defer tr.CloseIdleConnections()
	client := &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, "http://"+addr.String()+r.Path, nil)
	if err != nil {
		return Observation{Verdict: Errored, Detail: shorten(err.Error())}
	}
	req.Host = httpHost(r, addr)
	for _, k := range slices.Sorted(maps.Keys(r.Headers)) {
		req.Header.Set(k, r.Headers[k])
	}
	resp, err := client.Do(req)
	if err != nil {
		return rd.dropped(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return rd.dropped(err)
	}
	got := fmt.Sprintf("%d %s", resp.StatusCode, firstLine(body))
	switch {
	case resp.Header.Get(ServerHeader) != "":
		return Observation{Verdict: Allowed, Detail: got}
	case resp.StatusCode == http.StatusForbidden && strings.TrimSpace(string(body)) == "Access denied":
		return Observation{Verdict: Denied, Detail: got}
	}
	return Observation{Verdict: Errored, Detail: "not the server's answer: " + got}
}

// httpHost is the Host header of a check's request: the given one, or the
// destination address (without the port when it is 80).
func httpHost(r *HTTPRequest, addr netip.AddrPort) string {
	switch {
	case r.Host != "":
		return r.Host
	case addr.Port() == 80:
		return addr.Addr().String()
	}
	return addr.String()
}

func sendGRPC(ctx context.Context, rd *recordingDialer, addr netip.AddrPort, r *GRPCRequest) Observation {
	conn, err := grpc.NewClient("passthrough:///"+addr.String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			return rd.DialContext(ctx, "tcp", a)
		}),
	)
	if err != nil {
		return Observation{Verdict: Errored, Detail: shorten(err.Error())}
	}
	defer conn.Close()
	var hdr metadata.MD
	err = conn.Invoke(ctx, r.Method, &emptypb.Empty{}, &emptypb.Empty{}, grpc.Header(&hdr))
	st := status.Convert(err)
	got := st.Code().String()
	if st.Message() != "" {
		got += ": " + shorten(st.Message())
	}
	switch st.Code() {
	case codes.OK:
		if len(hdr.Get(ServerHeader)) > 0 {
			return Observation{Verdict: Allowed, Detail: got}
		}
		return Observation{Verdict: Errored, Detail: "OK without the server's header"}
	case codes.PermissionDenied:
		return Observation{Verdict: Denied, Detail: got}
	case codes.Unavailable, codes.DeadlineExceeded:
		rd.mu.Lock()
		dialErr, ok := rd.err, rd.ok
		rd.mu.Unlock()
		switch {
		case dialErr != nil && ok == 0:
			return Observation{Verdict: Dropped, Detail: connectFailure(dialErr)}
		case st.Code() == codes.Unavailable && ok > 0:
			return Observation{Verdict: Dropped, Detail: "connection closed: " + got}
		}
	}
	return Observation{Verdict: Errored, Detail: got}
}

func sendKafka(ctx context.Context, rd *recordingDialer, addr netip.AddrPort, r *KafkaRequest, o ProbeOptions) Observation {
	tr := &kafka.Transport{
		Dial:        rd.DialContext,
		DialTimeout: o.ConnectTimeout,
		ClientID:    KafkaClientID,
		IdleTimeout: o.Timeout,
		MetadataTTL: o.Timeout,
		// Name the topic in Metadata requests: a proxy leaves denied topics
		// out of all-topic listings (a client would see "unknown topic")
		// and answers named ones with TOPIC_AUTHORIZATION_FAILED.
		MetadataTopics: []string{r.Topic()},
	}
	defer tr.CloseIdleConnections()
	cl := &kafka.Client{Addr: kafka.TCP(addr.String()), Transport: tr, Timeout: o.Timeout}
	// As clients do, look the topic up first: a denied Metadata request is
	// the first place a denial shows.
	md, err := cl.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{r.Topic()}})
	if err == nil {
		for _, tp := range md.Topics {
			if tp.Name == r.Topic() && tp.Error != nil && !errors.Is(tp.Error, kafka.UnknownTopicOrPartition) {
				err = tp.Error
			}
		}
	}
	var got string
	switch {
	case err != nil:
	case r.Produce != "":
		w := &kafka.Writer{
			Addr:         kafka.TCP(addr.String()),
			Topic:        r.Produce,
			RequiredAcks: kafka.RequireAll,
			Transport:    tr,
			MaxAttempts:  1,
			BatchTimeout: time.Millisecond,
			WriteTimeout: o.Timeout,
			ReadTimeout:  o.Timeout,
		}
		err = w.WriteMessages(ctx, kafka.Message{Value: []byte("l7gate demo")})
		w.Close()
		got = "produced 1 message to " + r.Produce
	default:
		var res *kafka.FetchResponse
		res, err = cl.Fetch(ctx, &kafka.FetchRequest{Topic: r.Consume, Partition: 0, Offset: 0, MinBytes: 1, MaxBytes: 1 << 20, MaxWait: 100 * time.Millisecond})
		if err == nil && res.Error != nil {
			err = res.Error
		}
		if err == nil {
			got = "fetched from " + r.Consume
		}
	}
	switch {
	case err == nil:
		return Observation{Verdict: Allowed, Detail: got}
	case kafkaErrorIs(err, kafka.TopicAuthorizationFailed):
		return Observation{Verdict: Denied, Detail: "TOPIC_AUTHORIZATION_FAILED"}
	}
	return rd.dropped(err)
}

// kafkaErrorIs looks for target in err, including inside kafka.WriteErrors
// (which does not unwrap).
func kafkaErrorIs(err error, target kafka.Error) bool {
	if errors.Is(err, target) {
		return true
	}
	var we kafka.WriteErrors
	if errors.As(err, &we) {
		for _, e := range we {
			if e != nil && errors.Is(e, target) {
				return true
			}
		}
	}
	return false
}

// sendDNS sends an A (or AAAA) query over UDP (retried once, as resolvers do): an
// answer from the server is allowed (its rcode in the detail), REFUSED —
// what the DNS proxy answers a denied name with — denied, no answer
// dropped.
func sendDNS(ctx context.Context, rd *recordingDialer, addr netip.AddrPort, q *DNSQuery, o ProbeOptions) Observation {
	c, err := rd.DialContext(ctx, "udp", addr.String())
	if err != nil {
		return rd.dropped(err)
	}
	defer c.Close()
	m := new(mdns.Msg)
	qtype := mdns.TypeA
	if q.AAAA {
		qtype = mdns.TypeAAAA
	}
	m.SetQuestion(mdns.Fqdn(q.Name), qtype)
	conn := &mdns.Conn{Conn: c}
	per := o.Timeout / 3
	for range 2 {
		c.SetDeadline(time.Now().Add(per))
		if err := conn.WriteMsg(m); err != nil {
			return Observation{Verdict: Errored, Detail: shorten(err.Error())}
		}
		r, err := conn.ReadMsg()
		if err != nil {
			continue
		}
		if r.Id != m.Id {
			continue
		}
		var ips []string
		for _, rr := range r.Answer {
			switch a := rr.(type) {
			case *mdns.A:
				ips = append(ips, a.A.String())
			case *mdns.AAAA:
				ips = append(ips, a.AAAA.String())
			}
		}
		detail := mdns.RcodeToString[r.Rcode]
		if len(ips) > 0 {
			detail += " " + strings.Join(ips, ",")
		}
		if r.Rcode == mdns.RcodeRefused {
			return Observation{Verdict: Denied, Detail: detail}
		}
		return Observation{Verdict: Allowed, Detail: detail}
	}
	return Observation{Verdict: Dropped, Detail: "no DNS answer"}
}
