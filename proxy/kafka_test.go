package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/l7gate/l7gate/policy"
)

// advertised makes kfake advertise the proxy's address, so clients keep
// coming through the proxy after Metadata.
type advertised struct {
	net.Listener
	addr net.Addr
}

func (l advertised) Addr() net.Addr { return l.addr }

// TestProxyKafka runs kafka-go through the proxy to a kfake broker with a
// policy that lets 127.0.0.2 produce to "orders" only.
func TestProxyKafka(t *testing.T) {
	port := freePort(t)
	proxyAddr := &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: int(port)}
	var brokerAddr string
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "orders", "payments"),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			brokerAddr = ln.Addr().String()
			return advertised{Listener: ln, addr: proxyAddr}, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	p, rec := newTestProxy(t, brokerAddr)
	up := netip.MustParseAddrPort(brokerAddr)
	rs := policy.L7RuleSet{Protocol: policy.ProtoTCP, Port: up.Port(), Parser: policy.ParserKafka, Rules: []policy.L7Rule{{
		Peers:  []policy.Identity{friend},
		Kafka:  &policy.KafkaRule{Role: "produce", APIKeys: mustRole(t, "produce"), Topic: "orders"},
		Origin: policy.Provenance{Policy: "ns/kafka", Direction: policy.Ingress, Kind: policy.KindAllow, Path: "spec.ingress[0]", L7: "kafka[0]"},
	}}}
	cfg := &Config{Version: "1",
		Listeners: []Listener{{Name: "kafka-ingress", Port: port, Direction: policy.Ingress, Parser: policy.ParserKafka}},
		Endpoints: []Endpoint{{Identity: server, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Ingress: []policy.L7RuleSet{rs}}},
		Members:   members(),
	}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	w := &kafkago.Writer{
		Addr: proxyAddr, Balancer: &kafkago.LeastBytes{}, BatchTimeout: 10 * time.Millisecond, MaxAttempts: 1, RequiredAcks: kafkago.RequireAll,
		Transport: &kafkago.Transport{Dial: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext},
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, kafkago.Message{Topic: "orders", Value: []byte("order-1")}); err != nil {
		t.Fatalf("allowed produce: %v", err)
	}
	err = w.WriteMessages(ctx, kafkago.Message{Topic: "payments", Value: []byte("pay-1")})
	var werrs kafkago.WriteErrors
	if !errors.Is(err, kafkago.TopicAuthorizationFailed) && !(errors.As(err, &werrs) && len(werrs) == 1 && errors.Is(werrs[0], kafkago.TopicAuthorizationFailed)) {
		t.Errorf("denied produce: %v, want TopicAuthorizationFailed", err)
	}
	if err := w.WriteMessages(ctx, kafkago.Message{Topic: "orders", Value: []byte("order-2")}); err != nil {
		t.Fatalf("produce after a denial: %v", err)
	}
	produces := func(recs []*AccessRecord) (n int) {
		for _, r := range recs {
			if r.Protocol == "kafka" && r.APIKey == "produce" {
				n++
			}
		}
		return n
	}
	var allowed, denied int
	for _, r := range rec.waitUntil(func(recs []*AccessRecord) bool { return produces(recs) >= 3 }) {
		if r.Protocol != "kafka" || r.APIKey != "produce" {
			continue
		}
		if r.Verdict == "allowed" {
			allowed++
		} else {
			denied++
			if r.SrcIdentity != friend || len(r.Topics) != 1 || r.Topics[0] != "payments" {
				t.Errorf("denied record: %+v", r)
			}
		}
	}
	if allowed < 2 || denied < 1 {
		t.Errorf("produce records: %d allowed, %d denied", allowed, denied)
	}
}

func mustRole(t *testing.T, role string) []int16 {
	keys, ok := policy.KafkaRoleAPIKeys(role)
	if !ok {
		t.Fatal(role)
	}
	return keys
}

// TestProxyKafkaReasonFollowsPolicy: the access record's reason names the
// rule that decided each request, also when a policy change on a live
// connection gives the same request another deciding rule (the proxy
// caches a connection's last rendered reason).
func TestProxyKafkaReasonFollowsPolicy(t *testing.T) {
	port := freePort(t)
	proxyAddr := &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: int(port)}
	var brokerAddr string
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "orders"),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			brokerAddr = ln.Addr().String()
			return advertised{Listener: ln, addr: proxyAddr}, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	p, rec := newTestProxy(t, brokerAddr)
	up := netip.MustParseAddrPort(brokerAddr)
	apply := func(version, path string) {
		t.Helper()
		rs := policy.L7RuleSet{Protocol: policy.ProtoTCP, Port: up.Port(), Parser: policy.ParserKafka, Rules: []policy.L7Rule{{
			Peers:  []policy.Identity{friend},
			Kafka:  &policy.KafkaRule{Role: "produce", APIKeys: mustRole(t, "produce"), Topic: "orders"},
			Origin: policy.Provenance{Policy: "ns/kafka", PolicyKind: policy.KindCNP, Direction: policy.Ingress, Kind: policy.KindAllow, Path: path, L7: "kafka[0]"},
		}}}
		if err := p.Apply(&Config{Version: version,
			Listeners: []Listener{{Name: "kafka-ingress", Port: port, Direction: policy.Ingress, Parser: policy.ParserKafka}},
			Endpoints: []Endpoint{{Identity: server, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Ingress: []policy.L7RuleSet{rs}}},
			Members:   members(),
		}); err != nil {
			t.Fatal(err)
		}
	}
	apply("1", "spec.ingress[0]")
	tr := &kafkago.Transport{Dial: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext}
	defer tr.CloseIdleConnections()
	w := &kafkago.Writer{Addr: proxyAddr, Topic: "orders", BatchTimeout: time.Millisecond, MaxAttempts: 1, RequiredAcks: kafkago.RequireOne, Transport: tr}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	produces := func(recs []*AccessRecord) (out []*AccessRecord) {
		for _, r := range recs {
			if r.Protocol == "kafka" && r.APIKey == "produce" {
				out = append(out, r)
			}
		}
		return out
	}
	for i := range 2 {
		if err := w.WriteMessages(ctx, kafkago.Message{Value: []byte(fmt.Sprint("a", i))}); err != nil {
			t.Fatalf("produce under rule 0: %v", err)
		}
	}
	apply("2", "spec.ingress[3]")
	for i := range 2 {
		if err := w.WriteMessages(ctx, kafkago.Message{Value: []byte(fmt.Sprint("b", i))}); err != nil {
			t.Fatalf("produce under rule 3: %v", err)
		}
	}
	recs := produces(rec.waitUntil(func(recs []*AccessRecord) bool { return len(produces(recs)) >= 4 }))
	want := []string{
		"allow ns/kafka (CiliumNetworkPolicy spec.ingress[0].kafka[0])", "allow ns/kafka (CiliumNetworkPolicy spec.ingress[0].kafka[0])",
		"allow ns/kafka (CiliumNetworkPolicy spec.ingress[3].kafka[0])", "allow ns/kafka (CiliumNetworkPolicy spec.ingress[3].kafka[0])",
	}
	if len(recs) != len(want) {
		t.Fatalf("%d produce records, want %d", len(recs), len(want))
	}
	for i, r := range recs {
		if r.Verdict != "allowed" || r.Reason != want[i] {
			t.Errorf("produce %d: %s %q, want allowed %q", i, r.Verdict, r.Reason, want[i])
		}
	}
}
