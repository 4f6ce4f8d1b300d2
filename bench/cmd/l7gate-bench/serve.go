package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// body1K is the 1 KB response every HTTP path serves.
var body1K = []byte(strings.Repeat("x", 1023) + "\n")

// serveMain is `l7gate-bench serve`: the upstream servers, run in a pod
// namespace (or the iptables namespace) as a process of their own.
func serveMain(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	httpAddrs := fs.String("http", "", "HTTP/1.1 + h2c addresses (comma-separated)")
	grpcAddr := fs.String("grpc", "", "gRPC (health service) address")
	kafkaAddr := fs.String("kafka", "", "kfake broker address")
	dnsAddr := fs.String("dns", "", "DNS server address (UDP): every *.bench.test. A query is answered (see dnsAnswerAddr)")
	fs.Parse(args)
	raiseNofile(1 << 17)

	errc := make(chan error, 4)
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Content-Length", "1024")
		w.Write(body1K)
	})}
	for _, addr := range strings.Split(*httpAddrs, ",") {
		if addr == "" {
			continue
		}
		ln, err := listenTCP(addr)
		if err != nil {
			return err
		}
		go func() { errc <- srv.Serve(ln) }()
	}
	if *grpcAddr != "" {
		ln, err := listenTCP(*grpcAddr)
		if err != nil {
			return err
		}
		gs := grpc.NewServer()
		healthpb.RegisterHealthServer(gs, health.NewServer())
		go func() { errc <- gs.Serve(ln) }()
	}
	if *kafkaAddr != "" {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(1), kfake.SeedTopics(1, "bench"),
			kfake.ListenFn(func(network, _ string) (net.Listener, error) { return listenTCP(*kafkaAddr) }))
		if err != nil {
			return fmt.Errorf("kfake: %w", err)
		}
		defer c.Close()
	}
	if *dnsAddr != "" {
		stopDNS, err := startDNSServer(*dnsAddr)
		if err != nil {
			return err
		}
		defer stopDNS()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case err := <-errc:
		return err
	case <-sig:
		return nil
	}
}

func listenTCP(addr string) (net.Listener, error) {
	lc := net.ListenConfig{}
	lc.SetMultipathTCP(false)
	return lc.Listen(context.Background(), "tcp", addr)
}

func raiseNofile(n uint64) {
	var r syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r)
	if r.Max < n {
		r.Max = n
	}
	r.Cur = r.Max
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &r)
}
