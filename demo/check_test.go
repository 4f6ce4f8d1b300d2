package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// listenLoopback opens a TCP listener on 127.0.0.1 (servers outside
// namespaces listen on loopback only).
func listenLoopback(t *testing.T) (net.Listener, netip.AddrPort) {
	t.Helper()
	l, err := listenTCP(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, netip.MustParseAddrPort(l.Addr().String())
}

func probe() ProbeOptions {
	return ProbeOptions{ConnectTimeout: 300 * time.Millisecond, Timeout: 3 * time.Second}
}

func expectObs(t *testing.T, what string, got Observation, want Verdict, detail string) {
	t.Helper()
	if got.Verdict != want || !strings.Contains(got.Detail, detail) {
		t.Errorf("%s: got %s (%s), want %s (%s)", what, got.Verdict, got.Detail, want, detail)
	}
}

// blackhole dials nothing: it waits out the connect timeout, as a
// datapath drop does.
func blackhole(ctx context.Context, _, _ string) (net.Conn, error) {
	<-ctx.Done()
	return nil, &net.OpError{Op: "dial", Err: ctx.Err()}
}

func timeoutDialer(d time.Duration) dialFunc {
	return func(ctx context.Context, n, a string) (net.Conn, error) {
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return blackhole(ctx, n, a)
	}
}

func TestSendHTTP(t *testing.T) {
	ctx := context.Background()
	l, addr := listenLoopback(t)
	srv := &http.Server{Handler: DeathstarHandler("default/deathstar")}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	dial := netnsDialer("", time.Second)
	check := func(method, path string) Check {
		return Check{HTTP: &HTTPRequest{Method: method, Path: path, Headers: map[string]string{"X-Token": "1"}}}
	}
	expectObs(t, "landing", send(ctx, dial, addr, check("POST", "/v1/request-landing"), probe()), Allowed, "200 Ship landed")
	expectObs(t, "exhaust port", send(ctx, dial, addr, check("PUT", "/v1/exhaust-port"), probe()), Allowed, "503 Panic: deathstar exploded")
	expectObs(t, "echo", send(ctx, dial, addr, check("GET", "/x?y=1"), probe()), Allowed, "200 GET /x?y=1")

	// What the proxy answers for an L7 denial.
	dl, daddr := listenLoopback(t)
	deny := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/other" {
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, "Forbidden\n")
			return
		}
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, "Access denied\r\n")
	})}
	go deny.Serve(dl)
	t.Cleanup(func() { deny.Close() })
	expectObs(t, "denied", send(ctx, dial, daddr, check("PUT", "/v1/exhaust-port"), probe()), Denied, "403 Access denied")
	expectObs(t, "someone else's 403", send(ctx, dial, daddr, check("GET", "/other"), probe()), Errored, "not the server's answer: 403 Forbidden")

	// A connection reset after connect (a proxy failing closed).
	rl, raddr := listenLoopback(t)
	go func() {
		for {
			c, err := rl.Accept()
			if err != nil {
				return
			}
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}()
	got := send(ctx, dial, raddr, check("GET", "/"), probe())
	if got.Verdict != Dropped {
		t.Errorf("reset: got %s (%s)", got.Verdict, got.Detail)
	}

	// Nobody listening: refused. A blackhole: connect timeout.
	l2, caddr := listenLoopback(t)
	l2.Close()
	expectObs(t, "refused", send(ctx, dial, caddr, check("GET", "/"), probe()), Dropped, "connection refused")
	start := time.Now()
	expectObs(t, "timeout", send(ctx, timeoutDialer(200*time.Millisecond), addr, check("GET", "/"), probe()), Dropped, "connect timeout")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("timeout took %s", d)
	}
}

func TestSendGRPC(t *testing.T) {
	ctx := context.Background()
	l, addr := listenLoopback(t)
	srv := NewGRPCServer("shop/backend")
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	dial := netnsDialer("", time.Second)
	for _, m := range []string{"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/List", "/shop.Catalog/ListItems", "/grpc.health.v1.Health/Nope"} {
		expectObs(t, m, send(ctx, dial, addr, Check{GRPC: &GRPCRequest{Method: m}}, probe()), Allowed, "OK")
	}
	// What the proxy answers for an L7 denial.
	dl, daddr := listenLoopback(t)
	deny := grpc.NewServer(grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error {
		return status.Error(codes.PermissionDenied, "Access denied")
	}))
	go deny.Serve(dl)
	t.Cleanup(deny.Stop)
	expectObs(t, "denied", send(ctx, dial, daddr, Check{GRPC: &GRPCRequest{Method: "/shop.Admin/Reset"}}, probe()), Denied, "PermissionDenied: Access denied")
	l2, caddr := listenLoopback(t)
	l2.Close()
	expectObs(t, "refused", send(ctx, dial, caddr, Check{GRPC: &GRPCRequest{Method: "/a.B/C"}}, probe()), Dropped, "connection refused")
	expectObs(t, "timeout", send(ctx, timeoutDialer(200*time.Millisecond), addr, Check{GRPC: &GRPCRequest{Method: "/a.B/C"}}, probe()), Dropped, "connect timeout")
}

func TestSendKafka(t *testing.T) {
	ctx := context.Background()
	// The broker advertises its port: pick a free one.
	l, addr := listenLoopback(t)
	l.Close()
	c, err := NewKafkaBroker(ctx, addr.String(), []string{"deathstar-plans", "empire-announce"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	dial := netnsDialer("", time.Second)
	produce := Check{Kafka: &KafkaRequest{Produce: "deathstar-plans"}}
	consume := Check{Kafka: &KafkaRequest{Consume: "deathstar-plans"}}
	expectObs(t, "produce", send(ctx, dial, addr, produce, probe()), Allowed, "produced")
	expectObs(t, "consume", send(ctx, dial, addr, consume, probe()), Allowed, "fetched")

	// What the proxy answers for a denial: the API's own response with
	// TOPIC_AUTHORIZATION_FAILED, the connection stays up.
	const authFailed = 29
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		r := req.(*kmsg.ProduceRequest)
		resp := r.ResponseKind().(*kmsg.ProduceResponse)
		for _, tp := range r.Topics {
			rt := kmsg.NewProduceResponseTopic()
			rt.Topic = tp.Topic
			for _, p := range tp.Partitions {
				rp := kmsg.NewProduceResponseTopicPartition()
				rp.Partition = p.Partition
				rp.ErrorCode = authFailed
				rt.Partitions = append(rt.Partitions, rp)
			}
			resp.Topics = append(resp.Topics, rt)
		}
		return resp, nil, true
	})
	c.ControlKey(int16(kmsg.Fetch), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		r := req.(*kmsg.FetchRequest)
		resp := r.ResponseKind().(*kmsg.FetchResponse)
		for _, tp := range r.Topics {
			rt := kmsg.NewFetchResponseTopic()
			rt.Topic, rt.TopicID = tp.Topic, tp.TopicID
			for _, p := range tp.Partitions {
				rp := kmsg.NewFetchResponseTopicPartition()
				rp.Partition = p.Partition
				rp.ErrorCode = authFailed
				rt.Partitions = append(rt.Partitions, rp)
			}
			resp.Topics = append(resp.Topics, rt)
		}
		return resp, nil, true
	})
	expectObs(t, "produce denied", send(ctx, dial, addr, produce, probe()), Denied, "TOPIC_AUTHORIZATION_FAILED")
	expectObs(t, "consume denied", send(ctx, dial, addr, consume, probe()), Denied, "TOPIC_AUTHORIZATION_FAILED")

	expectObs(t, "timeout", send(ctx, timeoutDialer(200*time.Millisecond), addr, produce, probe()), Dropped, "connect timeout")
}

// TestSendKafkaMetadataDenied: a proxy may deny the Metadata request for
// a topic (TOPIC_AUTHORIZATION_FAILED in the topic's entry); the client
// then reports the denial before producing.
func TestSendKafkaMetadataDenied(t *testing.T) {
	ctx := context.Background()
	l, addr := listenLoopback(t)
	l.Close()
	c, err := NewKafkaBroker(ctx, addr.String(), []string{"deathstar-plans"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	c.ControlKey(int16(kmsg.Metadata), func(req kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		r := req.(*kmsg.MetadataRequest)
		resp := r.ResponseKind().(*kmsg.MetadataResponse)
		b := kmsg.NewMetadataResponseBroker()
		b.NodeID, b.Host, b.Port = 0, addr.Addr().String(), int32(addr.Port())
		resp.Brokers = append(resp.Brokers, b)
		for _, tp := range r.Topics {
			rt := kmsg.NewMetadataResponseTopic()
			rt.Topic, rt.TopicID = tp.Topic, tp.TopicID
			rt.ErrorCode = 29
			resp.Topics = append(resp.Topics, rt)
		}
		return resp, nil, true
	})
	dial := netnsDialer("", time.Second)
	expectObs(t, "produce", send(ctx, dial, addr, Check{Kafka: &KafkaRequest{Produce: "deathstar-plans"}}, probe()), Denied, "TOPIC_AUTHORIZATION_FAILED")
	expectObs(t, "consume", send(ctx, dial, addr, Check{Kafka: &KafkaRequest{Consume: "deathstar-plans"}}, probe()), Denied, "TOPIC_AUTHORIZATION_FAILED")
}

func TestAgentStatusJSON(t *testing.T) {
	var st AgentStatus
	if err := json.Unmarshal([]byte(`{"ready":true,"revision":"7","implementedRevision":7,"errors":["x"],"other":{"a":1}}`), &st); err != nil {
		t.Fatal(err)
	}
	if !st.Ready || st.Revision != 7 || st.ImplementedRevision != 7 || len(st.Errors) != 1 {
		t.Errorf("got %+v", st)
	}
	if err := json.Unmarshal([]byte(`{"revision":"x"}`), &st); err == nil || !errors.Is(err, err) || !strings.Contains(err.Error(), "revision") {
		t.Errorf("bad revision: %v", err)
	}
}

func TestTraceCheck(t *testing.T) {
	sc, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := sc.ObjectsAt(2)
	if err != nil {
		t.Fatal(err)
	}
	c := Check{From: "default/tiefighter", To: "default/deathstar", Port: 80, HTTP: &HTTPRequest{Method: "PUT", Path: "/v1/exhaust-port"}}
	tr := TraceCheck(objs, sc, c)
	if tr.Verdict != Denied || !strings.Contains(tr.String(), "default/rule1") {
		t.Errorf("exhaust port: %s", tr)
	}
	c.From = "default/xwing"
	if tr := TraceCheck(objs, sc, c); tr.Verdict != Dropped {
		t.Errorf("xwing: %s", tr)
	}
	c.HTTP = &HTTPRequest{Method: "POST", Path: "/v1/request-landing"}
	c.From = "default/tiefighter"
	if tr := TraceCheck(objs, sc, c); tr.Verdict != Allowed || !strings.Contains(tr.String(), "allowed by allow default/rule1") {
		t.Errorf("landing: %s", tr)
	}
}

// TestServeDualStack: with an IPv6 address, every built-in server listens
// on both families, and a client of one family only ever connects to
// that family's address (the Kafka broker of each family advertises its
// own address, so produce and fetch follow the metadata to it). DNS
// answers A and AAAA records from the zone.
func TestServeDualStack(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A port free for TCP and UDP on 127.0.0.1 and [::1] alike: one free
	// on 127.0.0.1 only was taken on [::1] in a clean-clone run ("listen
	// tcp [::1]:39755: bind: address already in use").
	free := func() uint16 {
		for range 100 {
			l, addr := listenLoopback(t)
			port := addr.Port()
			var held []io.Closer
			ok := true
			for _, a := range []struct{ n, addr string }{{"tcp6", "[::1]"}, {"udp4", "127.0.0.1"}, {"udp6", "[::1]"}} {
				var c io.Closer
				var err error
				if strings.HasPrefix(a.n, "tcp") {
					c, err = net.Listen(a.n, fmt.Sprintf("%s:%d", a.addr, port))
				} else {
					c, err = net.ListenPacket(a.n, fmt.Sprintf("%s:%d", a.addr, port))
				}
				if err != nil {
					ok = false
					break
				}
				held = append(held, c)
			}
			l.Close()
			for _, c := range held {
				c.Close()
			}
			if ok {
				return port
			}
		}
		t.Fatal("no port free on both loopback addresses")
		return 0
	}
	if l, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		l.Close()
	}
	ports := map[Protocol]uint16{ProtoHTTP: free(), ProtoGRPC: free(), ProtoKafka: free(), ProtoDNS: free()}
	zone, err := ParseZone("api.example.test=198.18.20.10,api.example.test=2001:db8:20::10")
	if err != nil {
		t.Fatal(err)
	}
	cfg := ServerConfig{Host: "x/server", IP: mustAddr("127.0.0.1"), IP6: mustAddr("::1"), Topics: []string{"plans"}, Zone: zone}
	for _, p := range []Protocol{ProtoHTTP, ProtoGRPC, ProtoKafka, ProtoDNS} {
		cfg.Serve = append(cfg.Serve, Service{Proto: p, Port: ports[p]})
	}
	ready := make(chan struct{})
	errc := make(chan error, 1)
	go func() { errc <- Serve(ctx, cfg, slog.New(slog.DiscardHandler), func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-errc:
		t.Fatal(err)
	}
	checks := []struct {
		c      Check
		detail string
	}{
		{Check{HTTP: &HTTPRequest{Method: "GET", Path: "/"}}, "200"},
		{Check{GRPC: &GRPCRequest{Method: "/grpc.health.v1.Health/Check"}}, "OK"},
		{Check{Kafka: &KafkaRequest{Produce: "plans"}}, "produced"},
		{Check{Kafka: &KafkaRequest{Consume: "plans"}}, "fetched"},
		{Check{DNS: &DNSQuery{Name: "api.example.test"}}, "NOERROR 198.18.20.10"},
		{Check{DNS: &DNSQuery{Name: "api.example.test", AAAA: true}}, "NOERROR 2001:db8:20::10"},
	}
	for _, ip := range []netip.Addr{cfg.IP, cfg.IP6} {
		for _, tc := range checks {
			var mu sync.Mutex
			var dialed []string
			inner := netnsDialer("", time.Second)
			dial := func(ctx context.Context, n, a string) (net.Conn, error) {
				mu.Lock()
				dialed = append(dialed, a)
				mu.Unlock()
				return inner(ctx, n, a)
			}
			addr := netip.AddrPortFrom(ip, ports[tc.c.Protocol()])
			expectObs(t, fmt.Sprintf("%s %s", addr, tc.c.Protocol()), send(ctx, dial, addr, tc.c, probe()), Allowed, tc.detail)
			mu.Lock()
			for _, a := range dialed {
				if ap, err := netip.ParseAddrPort(a); err != nil || ap.Addr() != ip {
					t.Errorf("%s %s: the client connected to %s, not only to %s", addr, tc.c.Protocol(), a, ip)
				}
			}
			mu.Unlock()
		}
	}
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("serve: %v", err)
	}
}
