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
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/twmb/franz-go/pkg/kfake"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/l7gate/l7gate/policy"
)

// ServeAnnotation is the Pod annotation naming the built-in servers to
// start in the pod, e.g. "http:80,grpc:50051,kafka:9092".
const ServeAnnotation = "l7gate.io/serve"

// ServerHeader is set by the built-in HTTP and gRPC servers on every
// response (value: the host's name), so a check can tell the server's
// answer from one the proxy made up.
const ServerHeader = "X-L7gate-Demo-Server"

// Protocol of a built-in server.
type Protocol string

// Built-in server protocols.
const (
	ProtoHTTP  Protocol = "http"
	ProtoGRPC  Protocol = "grpc"
	ProtoKafka Protocol = "kafka"
	// ProtoDNS is a DNS server (UDP and TCP on the port) answering A
	// queries from the host's zone (DNSZoneAnnotation).
	ProtoDNS Protocol = "dns"
)

// DNSZoneAnnotation is the Pod annotation giving a built-in DNS server's
// zone: "name=address,name=address", e.g. "api.example.test=198.18.20.10":
// an IPv4 address is the name's A record, an IPv6 address its AAAA record
// (a name may have one of each).
const DNSZoneAnnotation = "l7gate.io/dns-zone"

// Zone is a built-in DNS server's zone: normalised name → address, A
// records and AAAA records.
type Zone struct {
	A    map[string]netip.Addr `json:"a,omitempty"`
	AAAA map[string]netip.Addr `json:"aaaa,omitempty"`
}

// Has reports whether the zone has a record for the normalised name.
func (z Zone) Has(name string) bool {
	_, a := z.A[name]
	_, aaaa := z.AAAA[name]
	return a || aaaa
}

// ParseZone parses a DNSZoneAnnotation value into normalised names.
func ParseZone(s string) (Zone, error) {
	out := Zone{A: map[string]netip.Addr{}, AAAA: map[string]netip.Addr{}}
	for item := range strings.SplitSeq(s, ",") {
		name, ip, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok {
			return Zone{}, fmt.Errorf("want name=address, not %q", item)
		}
		n, err := policy.NormalizeDNSName(strings.TrimSpace(name))
		if err != nil {
			return Zone{}, fmt.Errorf("%q: %w", name, err)
		}
		a, err := netip.ParseAddr(strings.TrimSpace(ip))
		if err != nil || a.Zone() != "" || a.Is4In6() {
			return Zone{}, fmt.Errorf("%q: want an IPv4 or IPv6 address", ip)
		}
		m := out.A
		if a.Is6() {
			m = out.AAAA
		}
		if old, dup := m[n]; dup {
			return Zone{}, fmt.Errorf("%s: two addresses of one family (%s, %s)", strings.TrimSuffix(n, "."), old, a)
		}
		m[n] = a
	}
	return out, nil
}

// Service is one built-in server: a protocol on a TCP port.
type Service struct {
	Proto Protocol
	Port  uint16
}

func (s Service) String() string { return fmt.Sprintf("%s:%d", s.Proto, s.Port) }

// MarshalText renders "proto:port".
func (s Service) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses "proto:port".
func (s *Service) UnmarshalText(b []byte) error {
	l, err := ParseServe(string(b))
	if err != nil {
		return err
	}
	if len(l) != 1 {
		return fmt.Errorf("want one proto:port, not %q", b)
	}
	*s = l[0]
	return nil
}

// ParseServe parses a serve list, "http:80,grpc:50051,kafka:9092": comma
// separated proto:port pairs, proto one of http, grpc, kafka, each port
// once, at most one kafka.
func ParseServe(s string) ([]Service, error) {
	var out []Service
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("empty serve list (want e.g. http:80,grpc:50051,kafka:9092)")
	}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		proto, port, ok := strings.Cut(item, ":")
		if !ok {
			return nil, fmt.Errorf("want proto:port, not %q", item)
		}
		p := Protocol(strings.ToLower(strings.TrimSpace(proto)))
		switch p {
		case ProtoHTTP, ProtoGRPC, ProtoKafka, ProtoDNS:
		default:
			return nil, fmt.Errorf("unknown protocol %q in %q (want http, grpc, kafka or dns)", proto, item)
		}
		n, err := strconv.ParseUint(strings.TrimSpace(port), 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("want a port number (1-65535) in %q", item)
		}
		if slices.ContainsFunc(out, func(o Service) bool { return o.Port == uint16(n) }) {
			return nil, fmt.Errorf("port %d given twice", n)
		}
		if p == ProtoKafka && slices.ContainsFunc(out, func(o Service) bool { return o.Proto == ProtoKafka }) {
			return nil, errors.New("at most one kafka server per host")
		}
		out = append(out, Service{Proto: p, Port: uint16(n)})
	}
	return out, nil
}

// ServerConfig is what a built-in server process runs: the services of one
// host, listening on its address (the process runs inside the host's
// network namespace).
type ServerConfig struct {
	Host string     `json:"host"`
	IP   netip.Addr `json:"ip"`
	// IP6, when valid, is the host's IPv6 address: every server listens
	// on it too (a Kafka broker advertises, on each family, that family's
	// address).
	IP6    netip.Addr `json:"ip6,omitzero"`
	Serve  []Service  `json:"serve"`
	Topics []string   `json:"topics,omitempty"` // seeded in the Kafka broker
	// Zone is what a dns server answers.
	Zone Zone `json:"zone,omitzero"`
}

// Args is the command line tail of a server process (see ParseServerArgs).
func (c ServerConfig) Args() []string {
	b, _ := json.Marshal(c) // plain data: cannot fail
	return []string{"--config", string(b)}
}

// ParseServerConfig decodes the value of a server process's --config.
func ParseServerConfig(s string) (ServerConfig, error) {
	var c ServerConfig
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("server config: %w", err)
	}
	if !c.IP.IsValid() || len(c.Serve) == 0 {
		return c, errors.New("server config: ip and serve are required")
	}
	return c, nil
}

// ParseServerArgs parses the arguments Args produced.
func ParseServerArgs(args []string) (ServerConfig, error) {
	if len(args) != 2 || args[0] != "--config" {
		return ServerConfig{}, errors.New("usage: --config JSON")
	}
	return ParseServerConfig(args[1])
}

// Serve runs the built-in servers of cfg in the current network namespace
// until ctx ends. ready is called once every listener is open. Each
// server listens on the host's IPv4 address and, when the host has one,
// its IPv6 address: HTTP, gRPC and DNS serve both from one server; Kafka
// runs a broker per family (a broker advertises the address it listens
// on, and a client must be sent back to the family it came in on, as a
// real broker's per-listener advertised.listeners do), so the two
// families' brokers share no data.
func Serve(ctx context.Context, cfg ServerConfig, log *slog.Logger, ready func()) error {
	var stops []func()
	defer func() {
		for _, s := range slices.Backward(stops) {
			s()
		}
	}()
	ips := []netip.Addr{cfg.IP}
	if cfg.IP6.IsValid() {
		ips = append(ips, cfg.IP6)
	}
	errc := make(chan error, 2*len(ips)*len(cfg.Serve)) // DNS serves UDP and TCP
	for _, svc := range cfg.Serve {
		var addrs []string
		for _, ip := range ips {
			addrs = append(addrs, netip.AddrPortFrom(ip, svc.Port).String())
		}
		switch svc.Proto {
		case ProtoHTTP, ProtoGRPC:
			var lns []net.Listener
			for _, a := range addrs {
				l, err := listenTCP(ctx, a)
				if err != nil {
					for _, l := range lns {
						l.Close()
					}
					return err
				}
				lns = append(lns, l)
			}
			var serve func(net.Listener) error
			if svc.Proto == ProtoHTTP {
				srv := &http.Server{Handler: DeathstarHandler(cfg.Host), ReadHeaderTimeout: 10 * time.Second}
				stops = append(stops, func() { srv.Close() })
				serve = func(l net.Listener) error {
					if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
						return err
					}
					return nil
				}
			} else {
				srv := NewGRPCServer(cfg.Host)
				stops = append(stops, srv.Stop)
				serve = func(l net.Listener) error {
					if err := srv.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
						return err
					}
					return nil
				}
			}
			for i, l := range lns {
				go func() {
					if err := serve(l); err != nil {
						errc <- fmt.Errorf("%s %s: %w", svc.Proto, addrs[i], err)
					}
				}()
			}
		case ProtoKafka:
			for _, a := range addrs {
				c, err := NewKafkaBroker(ctx, a, cfg.Topics)
				if err != nil {
					return err
				}
				stops = append(stops, c.Close)
			}
		case ProtoDNS:
			for _, a := range addrs {
				stop, err := serveDNS(ctx, a, cfg.Zone, errc)
				if err != nil {
					return err
				}
				stops = append(stops, stop)
			}
		default:
			return fmt.Errorf("unknown protocol %q", svc.Proto)
		}
		log.Info("serving", "host", cfg.Host, "service", svc.String(), "addrs", addrs)
	}
	if ready != nil {
		ready()
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

func listenTCP(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	return l, nil
}

// DeathstarHandler answers like the deathstar of Cilium's Star Wars demo:
// POST /v1/request-landing lands a ship, PUT /v1/exhaust-port blows the
// station up (a 503 with a panic), anything else echoes method and path.
// Every response carries ServerHeader: host.
func DeathstarHandler(host string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
		w.Header().Set(ServerHeader, host)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		switch {
		case r.Method == http.MethodPost && r.URL.Path == "/v1/request-landing":
			io.WriteString(w, "Ship landed\n")
		case r.Method == http.MethodPut && r.URL.Path == "/v1/exhaust-port":
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "Panic: deathstar exploded\n\ngoroutine 1 [running]:\nmain.HandleGarbage(0x2080c3f50, 0x2, 0x4, 0x425c0, 0x5, 0xa)\n\t/code/src/github.com/empire/deathstar/temp/main.go:9 +0x64\nmain.main()\n\t/code/src/github.com/empire/deathstar/temp/main.go:5 +0x85\n")
		default:
			fmt.Fprintf(w, "%s %s\n", r.Method, r.URL.RequestURI())
		}
	})
}

// NewGRPCServer is the built-in gRPC service: grpc.health.v1.Health
// (Check, List, Watch; status SERVING) and, for every other method of any
// service, a unary handler that reads one message and answers with an
// empty one. Every response carries ServerHeader (lowercase) in its
// headers.
func NewGRPCServer(host string) *grpc.Server {
	hdr := metadata.Pairs(strings.ToLower(ServerHeader), host)
	srv := grpc.NewServer(
		grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
			// The stream interceptor below has set ServerHeader.
			if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
				return err
			}
			return stream.SendMsg(&emptypb.Empty{})
		}),
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			grpc.SetHeader(ctx, hdr)
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			ss.SetHeader(hdr)
			return h(srv, ss)
		}),
	)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	return srv
}

// NewKafkaBroker starts a one-broker Kafka-protocol cluster (kfake)
// listening on addr (host:port) and advertising it, with topics created
// with one partition each (other topics are created on first use).
func NewKafkaBroker(ctx context.Context, addr string, topics []string) (*kfake.Cluster, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("kafka address: %w", err)
	}
	var once sync.Once
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(int(ap.Port())),
		kfake.DefaultNumPartitions(1),
		kfake.AllowAutoTopicCreation(),
		kfake.ListenFn(func(string, string) (net.Listener, error) {
			// kfake asks for 127.0.0.1:port; the broker must listen on,
			// and advertise, the host's own address.
			var l net.Listener
			var err error
			once.Do(func() { l, err = listenTCP(ctx, addr) })
			if l == nil && err == nil {
				err = errors.New("kafka: one listener only")
			}
			return l, err
		}),
	}
	if len(topics) > 0 {
		opts = append(opts, kfake.SeedTopics(1, topics...))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka broker: %w", err)
	}
	return c, nil
}

// serveDNS runs a DNS server on addr (UDP and TCP) answering A and AAAA
// queries from zone (TTL 30 s); other names are NXDOMAIN, other types of
// a known name an empty NOERROR.
func serveDNS(ctx context.Context, addr string, zone Zone, errc chan<- error) (func(), error) {
	var lc net.ListenConfig
	pc, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil {
		return nil, fmt.Errorf("dns %s: %w", addr, err)
	}
	ln, err := listenTCP(ctx, addr)
	if err != nil {
		pc.Close()
		return nil, err
	}
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		if len(r.Question) != 1 {
			m.Rcode = mdns.RcodeFormatError
			w.WriteMsg(m)
			return
		}
		q := r.Question[0]
		name, err := policy.NormalizeDNSName(q.Name)
		switch {
		case err != nil || !zone.Has(name):
			m.Rcode = mdns.RcodeNameError
		case q.Qtype == mdns.TypeA:
			if ip, ok := zone.A[name]; ok {
				m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 30}, A: ip.AsSlice()})
			}
		case q.Qtype == mdns.TypeAAAA:
			if ip, ok := zone.AAAA[name]; ok {
				m.Answer = append(m.Answer, &mdns.AAAA{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeAAAA, Class: mdns.ClassINET, Ttl: 30}, AAAA: ip.AsSlice()})
			}
		}
		w.WriteMsg(m)
	})
	udp := &mdns.Server{PacketConn: pc, Handler: h}
	tcp := &mdns.Server{Listener: ln, Handler: h}
	for _, s := range []*mdns.Server{udp, tcp} {
		go func() {
			if err := s.ActivateAndServe(); err != nil && ctx.Err() == nil {
				errc <- fmt.Errorf("dns %s: %w", addr, err)
			}
		}()
	}
	return func() { udp.Shutdown(); tcp.Shutdown() }, nil
}
