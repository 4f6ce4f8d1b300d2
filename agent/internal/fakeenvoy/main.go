// Command fakeenvoy stands in for Envoy in the agent's privileged tests
// (Envoy cannot be installed where they run). Like Envoy it is an ADS
// (state-of-the-world) client of the agent with node id "envoy~NODE" that
// ACKs what it accepts, and for each Listener it is given it binds a
// transparent listener on the listener's port (after xDS named the port,
// as Envoy does). Each connection gets an HTTP answer naming the
// connection's original destination (its local address).
//
// Usage: fakeenvoy XDS_SOCKET NODE
package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: fakeenvoy XDS_SOCKET NODE")
		os.Exit(2)
	}
	bound := map[uint32]bool{}
	for {
		if err := run(os.Args[1], "envoy~"+os.Args[2], bound); err != nil {
			fmt.Fprintln(os.Stderr, "fakeenvoy:", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func run(sock, nodeID string, bound map[uint32]bool) error {
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(context.Background())
	if err != nil {
		return err
	}
	node := &corev3.Node{Id: nodeID}
	for _, t := range []string{resourcev3.ClusterType, resourcev3.ListenerType, resourcev3.RouteType} {
		if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: t}); err != nil {
			return err
		}
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		if resp.GetTypeUrl() == resourcev3.ListenerType {
			for _, r := range resp.GetResources() {
				var l listenerv3.Listener
				if err := r.UnmarshalTo(&l); err != nil {
					return err
				}
				port := l.GetAddress().GetSocketAddress().GetPortValue()
				if port != 0 && !bound[port] {
					if err := serve(port); err != nil {
						return err
					}
					bound[port] = true
				}
			}
		}
		ack := &discovery.DiscoveryRequest{Node: node, TypeUrl: resp.GetTypeUrl(), VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
		if err := stream.Send(ack); err != nil {
			return err
		}
	}
}

func serve(port uint32) error {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_IP, syscall.IP_TRANSPARENT, 1)
			if serr == nil {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			}
		})
		return serr
	}}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(context.Background(), "tcp4", fmt.Sprintf("0.0.0.0:%d", port))
	if err != nil {
		return err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				bufio.NewReader(c).ReadString('\n')
				body := "envoy saw " + c.LocalAddr().String()
				fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
			}()
		}
	}()
	return nil
}
