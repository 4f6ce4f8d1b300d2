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
// zone: "name=IPv4,name=IPv4", e.g. "api.example.test=198.18.20.10".
const DNSZoneAnnotation = "l7gate.io/dns-zone"

// ParseZone parses a DNSZoneAnnotation value into normalised names.
func ParseZone(s string) (map[string]netip.Addr, error) {
	out := map[string]netip.Addr{}
	for item := range strings.SplitSeq(s, ",") {
		name, ip, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok {
			return nil, fmt.Errorf("want name=IPv4, not %q", item)
		}
		n, err := policy.NormalizeDNSName(strings.TrimSpace(name))
		if err != nil {
			return nil, fmt.Errorf("%q: %w", name, err)
		}
		a, err := netip.ParseAddr(strings.TrimSpace(ip))
		if err != nil || !a.Is4() {
			return nil, fmt.Errorf("%q: want an IPv4 address", ip)
		}
		out[n] = a
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
	// IP6, when valid, is the host's IPv6 address: HTTP servers listen
	// on it too.
	IP6    netip.Addr `json:"ip6,omitzero"`
	Serve  []Service  `json:"serve"`
	Topics []string   `json:"topics,omitempty"` // seeded in the Kafka broker
	// Zone is what a dns server answers (normalised name → address).
	Zone map[string]netip.Addr `json:"zone,omitempty"`
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
// until ctx ends. ready is called once every listener is open.
func Serve(ctx context.Context, cfg ServerConfig, log *slog.Logger, ready func()) error {
	var stops []func()
	defer func() {
		for _, s := range slices.Backward(stops) {
			s()
		}
	}()
	errc := make(chan error, 2*len(cfg.Serve)) // HTTP may listen on two addresses
	for _, svc := range cfg.Serve {
		addr := netip.AddrPortFrom(cfg.IP, svc.Port).String()
		switch svc.Proto {
		case ProtoHTTP:
			l, err := listenTCP(ctx, addr)
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: DeathstarHandler(cfg.Host), ReadHeaderTimeout: 10 * time.Second}
			stops = append(stops, func() { srv.Close() })
			ls := map[string]net.Listener{addr: l}
			if cfg.IP6.IsValid() {
				addr6 := netip.AddrPortFrom(cfg.IP6, svc.Port).String()
				if ls[addr6], err = listenTCP(ctx, addr6); err != nil {
					l.Close()
					return err
				}
			}
			for a, l := range ls {
				go func() {
					if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
						errc <- fmt.Errorf("http %s: %w", a, err)
					}
				}()
			}
		case ProtoGRPC:
			l, err := listenTCP(ctx, addr)
			if err != nil {
				return err
			}
			srv := NewGRPCServer(cfg.Host)
			go func() {
				if err := srv.Serve(l); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
					errc <- fmt.Errorf("grpc %s: %w", addr, err)
				}
			}()
			stops = append(stops, srv.Stop)
		case ProtoKafka:
			c, err := NewKafkaBroker(ctx, addr, cfg.Topics)
			if err != nil {
				return err
			}
			stops = append(stops, c.Close)
		case ProtoDNS:
			stop, err := serveDNS(ctx, addr, cfg.Zone, errc)
			if err != nil {
				return err
			}
			stops = append(stops, stop)
		default:
			return fmt.Errorf("unknown protocol %q", svc.Proto)
		}
		log.Info("serving", "host", cfg.Host, "service", svc.String(), "addr", addr)
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

// serveDNS runs a DNS server on addr (UDP and TCP) answering A queries
// from zone (TTL 30 s); other names are NXDOMAIN.
func serveDNS(ctx context.Context, addr string, zone map[string]netip.Addr, errc chan<- error) (func(), error) {
	var lc net.ListenConfig
	pc, err := lc.ListenPacket(ctx, "udp4", addr)
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
		ip, ok := zone[name]
		switch {
		case err != nil || !ok:
			m.Rcode = mdns.RcodeNameError
		case q.Qtype == mdns.TypeA:
			m.Answer = append(m.Answer, &mdns.A{Hdr: mdns.RR_Header{Name: q.Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: 30}, A: ip.AsSlice()})
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
