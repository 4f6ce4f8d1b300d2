package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/l7gate/l7gate/policy"
)

// Hostile-input tests of the proxy's Kafka path: the real Proxy (listeners,
// policy lookup, the kafka filter) between raw Kafka clients and brokers
// that are kfake or hand-made liars.

const hostileBroker policy.Identity = 402 // 127.0.0.4: another local endpoint

// kafkaConn is a raw Kafka client: it sends kmsg requests and decodes
// responses by hand, so it can send what no client library would.
type kafkaConn struct {
	t    *testing.T
	c    net.Conn
	corr int32
}

func dialKafka(t *testing.T, src string, port uint16) *kafkaConn {
	return &kafkaConn{t: t, c: dialFrom(t, src, port)}
}

func readFrame(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > 64<<20 {
		return nil, fmt.Errorf("frame of %d bytes", n)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

// decodeResponse decodes a response frame body (after the size) to req.
func decodeResponse(req kmsg.Request, frame []byte) (kmsg.Response, int32, error) {
	if len(frame) < 4 {
		return nil, 0, errors.New("short response")
	}
	corr := int32(binary.BigEndian.Uint32(frame))
	resp := req.ResponseKind()
	resp.SetVersion(req.GetVersion())
	body := frame[4:]
	if resp.IsFlexible() && req.Key() != 18 {
		if len(body) == 0 || body[0] != 0 {
			return nil, corr, errors.New("response header tags")
		}
		body = body[1:]
	}
	return resp, corr, resp.ReadFrom(body)
}

func (k *kafkaConn) roundTrip(req kmsg.Request) (kmsg.Response, error) {
	k.t.Helper()
	k.corr++
	frame := kmsg.NewRequestFormatter(kmsg.FormatterClientID("hostile-test")).AppendRequest(nil, req, k.corr)
	if _, err := k.c.Write(frame); err != nil {
		return nil, err
	}
	_ = k.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := readFrame(k.c)
	if err != nil {
		return nil, err
	}
	resp, corr, err := decodeResponse(req, b)
	if err == nil && corr != k.corr {
		err = fmt.Errorf("correlation id %d, want %d", corr, k.corr)
	}
	return resp, err
}

func metadataReq(v int16, topics ...string) *kmsg.MetadataRequest {
	m := kmsg.NewPtrMetadataRequest()
	m.SetVersion(v)
	for _, name := range topics {
		t := kmsg.NewMetadataRequestTopic()
		t.Topic = kmsg.StringPtr(name)
		m.Topics = append(m.Topics, t)
	}
	return m
}

func fetchByIDReq(id [16]byte) *kmsg.FetchRequest {
	f := kmsg.NewPtrFetchRequest()
	f.SetVersion(13)
	f.MaxWaitMillis, f.MaxBytes = 10, 1<<20
	t := kmsg.NewFetchRequestTopic()
	t.TopicID = id
	p := kmsg.NewFetchRequestTopicPartition()
	p.PartitionMaxBytes = 1 << 20
	t.Partitions = append(t.Partitions, p)
	f.Topics = append(f.Topics, t)
	return f
}

// fakeBroker is a hostile "broker": answer builds the response body (after
// the response header) for each request, or nil to close the connection.
type fakeBroker struct {
	ln     net.Listener
	answer func(key, ver int16, corr int32, body []byte) []byte
	wg     sync.WaitGroup
}

func startFakeBroker(t *testing.T, addr string, answer func(key, ver int16, corr int32, body []byte) []byte) *fakeBroker {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fb := &fakeBroker{ln: ln, answer: answer}
	fb.wg.Add(1)
	go func() {
		defer fb.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fb.wg.Add(1)
			go func() {
				defer fb.wg.Done()
				defer c.Close()
				for {
					req, err := readFrame(c)
					if err != nil || len(req) < 8 {
						return
					}
					key := int16(binary.BigEndian.Uint16(req))
					ver := int16(binary.BigEndian.Uint16(req[2:]))
					corr := int32(binary.BigEndian.Uint32(req[4:]))
					out := answer(key, ver, corr, req)
					if out == nil {
						return
					}
					if _, err := c.Write(out); err != nil {
						return
					}
				}
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); fb.wg.Wait() })
	return fb
}

func (fb *fakeBroker) port() uint16 { return uint16(fb.ln.Addr().(*net.TCPAddr).Port) }

// responseFrame frames a response body with its header.
func responseFrame(corr int32, resp kmsg.Response) []byte {
	out := []byte{0, 0, 0, 0}
	out = binary.BigEndian.AppendUint32(out, uint32(corr))
	if resp.IsFlexible() && resp.Key() != 18 {
		out = append(out, 0)
	}
	out = resp.AppendTo(out)
	binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	return out
}

// metadataAnswer is a Metadata response (at the request's version) naming
// topics with the given IDs, as the cluster clusterID.
func metadataAnswer(ver int16, corr int32, clusterID *string, brokerPort int32, topics map[string][16]byte) []byte {
	m := kmsg.NewPtrMetadataResponse()
	m.SetVersion(ver)
	m.ClusterID = clusterID
	b := kmsg.NewMetadataResponseBroker()
	b.NodeID, b.Host, b.Port = 0, "127.0.0.4", brokerPort
	m.Brokers = append(m.Brokers, b)
	m.ControllerID = 0
	for name, id := range topics {
		t := kmsg.NewMetadataResponseTopic()
		t.Topic, t.TopicID = kmsg.StringPtr(name), id
		p := kmsg.NewMetadataResponseTopicPartition()
		t.Partitions = append(t.Partitions, p)
		m.Topics = append(m.Topics, t)
	}
	return responseFrame(corr, m)
}

// kafkaTopicsEnv is a real broker (kfake, topics public and secret, the
// endpoint 127.0.0.1) and a proxy in front of it on which friend may
// consume "public" only.
type kafkaTopicsEnv struct {
	p         *Proxy
	rec       *recorder
	cluster   *kfake.Cluster
	clusterID *string
	ids       map[string][16]byte // the real cluster's topic IDs
	realPort  uint16              // proxy port to the real broker
	upstreams map[uint16]netip.AddrPort
}

func consumePublic(port uint16, t *testing.T) policy.L7RuleSet {
	return policy.L7RuleSet{Protocol: policy.ProtoTCP, Port: port, Parser: policy.ParserKafka, Rules: []policy.L7Rule{{
		Peers:  []policy.Identity{friend},
		Kafka:  &policy.KafkaRule{Role: "consume", APIKeys: mustRole(t, "consume"), Topic: "public"},
		Origin: policy.Provenance{Policy: "ns/kafka", Direction: policy.Ingress, Kind: policy.KindAllow, Path: "spec.ingress[0]", L7: "kafka[0]"},
	}}}
}

// newKafkaTopicsEnv starts the real broker and a proxy with one listener
// per upstream: the real broker, plus every extra (proxy port → upstream).
func newKafkaTopicsEnv(t *testing.T, opts func(*Options), extra map[netip.AddrPort]policy.Identity) *kafkaTopicsEnv {
	t.Helper()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(1), kfake.SeedTopics(1, "public", "secret"),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) { return net.Listen(network, "127.0.0.1:0") }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	env := &kafkaTopicsEnv{cluster: cluster, ids: map[string][16]byte{}, upstreams: map[uint16]netip.AddrPort{}}
	real := netip.MustParseAddrPort(cluster.ListenAddrs()[0])

	// The real cluster's IDs, asked directly.
	c, err := net.Dial("tcp", real.String())
	if err != nil {
		t.Fatal(err)
	}
	direct := &kafkaConn{t: t, c: c}
	resp, err := direct.roundTrip(metadataReq(12, "public", "secret"))
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	md := resp.(*kmsg.MetadataResponse)
	env.clusterID = md.ClusterID
	for _, tp := range md.Topics {
		env.ids[*tp.Topic] = tp.TopicID
	}

	env.realPort = freePort(t)
	env.upstreams[env.realPort] = real
	byAddr := map[netip.Addr]*Endpoint{}
	ep := func(a netip.Addr, id policy.Identity) *Endpoint {
		if e, ok := byAddr[a]; ok {
			return e
		}
		byAddr[a] = &Endpoint{Identity: id, IPs: []netip.Addr{a}}
		return byAddr[a]
	}
	e := ep(real.Addr(), server)
	e.Ingress = append(e.Ingress, consumePublic(real.Port(), t))
	cfg := &Config{Version: "1", Members: append(members(), IdentityMembership{Identity: hostileBroker, Prefixes: []netip.Prefix{netip.MustParsePrefix("127.0.0.4/32")}})}
	cfg.Listeners = append(cfg.Listeners, Listener{Name: "real", Port: env.realPort, Direction: policy.Ingress, Parser: policy.ParserKafka})
	for up, id := range extra {
		port := freePort(t)
		env.upstreams[port] = up
		cfg.Listeners = append(cfg.Listeners, Listener{Name: fmt.Sprintf("extra-%d", port), Port: port, Direction: policy.Ingress, Parser: policy.ParserKafka})
		e := ep(up.Addr(), id)
		e.Ingress = append(e.Ingress, consumePublic(up.Port(), t))
	}
	for _, e := range byAddr {
		cfg.Endpoints = append(cfg.Endpoints, *e)
	}
	no := false
	env.rec = &recorder{}
	o := Options{
		ListenHost:  "127.0.0.1",
		Transparent: &no,
		OriginalDestination: func(c net.Conn) (netip.AddrPort, error) {
			if up, ok := env.upstreams[addrPort(c.LocalAddr()).Port()]; ok {
				return up, nil
			}
			return netip.AddrPort{}, errors.New("unknown listener")
		},
		AccessLog: env.rec.add,
	}
	if opts != nil {
		opts(&o)
	}
	env.p = New(o)
	t.Cleanup(func() { env.p.Close() })
	if err := env.p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	return env
}

// portFor returns the proxy port leading to upstream.
func (env *kafkaTopicsEnv) portFor(up netip.AddrPort) uint16 {
	for p, u := range env.upstreams {
		if u == up {
			return p
		}
	}
	panic("no port for " + up.String())
}

// fetchSecretByID sends Fetch v13 naming the real "secret" topic by its ID
// through the proxy to the real broker, and reports whether the broker
// answered it (no error) and what the proxy logged.
func (env *kafkaTopicsEnv) fetchSecretByID(t *testing.T) (answered bool, rec *AccessRecord) {
	t.Helper()
	k := dialKafka(t, "127.0.0.2", env.realPort)
	resp, err := k.roundTrip(fetchByIDReq(env.ids["secret"]))
	if err != nil {
		t.Fatalf("fetch by id: %v", err)
	}
	f := resp.(*kmsg.FetchResponse)
	answered = len(f.Topics) == 1 && len(f.Topics[0].Partitions) == 1 && f.Topics[0].Partitions[0].ErrorCode == 0
	isFetch := func(r *AccessRecord) bool { return r.Protocol == "kafka" && r.APIKey == "fetch" }
	recs := env.rec.waitUntil(func(recs []*AccessRecord) bool { return slices.ContainsFunc(recs, isFetch) })
	for _, r := range recs {
		if isFetch(r) {
			rec = r
		}
	}
	if rec == nil {
		t.Fatal("no access record for the fetch")
	}
	return answered, rec
}

// TestHostileKafkaTopicIDRemapByAnotherBroker: a hostile broker (another
// endpoint) answers Metadata mapping the real cluster's "secret" topic ID
// to "public", claiming the real cluster's id. A Fetch by that ID to the
// real broker must not be decided as "public".
func TestHostileKafkaTopicIDRemapByAnotherBroker(t *testing.T) {
	var fake *fakeBroker
	var env *kafkaTopicsEnv
	fake = startFakeBroker(t, "127.0.0.4:0", func(key, ver int16, corr int32, _ []byte) []byte {
		if key != 3 {
			return nil
		}
		return metadataAnswer(ver, corr, env.clusterID, int32(fake.port()), map[string][16]byte{"public": env.ids["secret"]})
	})
	fakeUp := netip.MustParseAddrPort(fake.ln.Addr().String())
	env = newKafkaTopicsEnv(t, func(o *Options) { topicIDMode(o) }, map[netip.AddrPort]policy.Identity{fakeUp: hostileBroker})

	k := dialKafka(t, "127.0.0.2", env.portFor(fakeUp))
	if _, err := k.roundTrip(metadataReq(12, "public")); err != nil {
		t.Fatalf("metadata from the hostile broker: %v", err)
	}
	answered, rec := env.fetchSecretByID(t)
	if answered || rec.Verdict != "denied" {
		t.Errorf("Fetch v13 of secret's ID after a hostile remap: answered by the broker %v, logged %s topics %v (%s)", answered, rec.Verdict, rec.Topics, rec.Reason)
	}
}

// TestHostileKafkaTopicIDRemapSameEndpoint: the same endpoint (same
// identity) serves a second "broker" that claims another cluster id and
// maps secret's ID to "public": tables are per cluster, so the remap never
// reaches the real cluster's table.
func TestHostileKafkaTopicIDRemapSameEndpoint(t *testing.T) {
	var fake *fakeBroker
	var env *kafkaTopicsEnv
	other := "not-the-real-cluster"
	fake = startFakeBroker(t, "127.0.0.1:0", func(key, ver int16, corr int32, _ []byte) []byte {
		if key != 3 {
			return nil
		}
		return metadataAnswer(ver, corr, &other, int32(fake.port()), map[string][16]byte{"public": env.ids["secret"]})
	})
	fakeUp := netip.MustParseAddrPort(fake.ln.Addr().String())
	env = newKafkaTopicsEnv(t, func(o *Options) { topicIDMode(o) }, map[netip.AddrPort]policy.Identity{fakeUp: server})

	k := dialKafka(t, "127.0.0.2", env.portFor(fakeUp))
	if _, err := k.roundTrip(metadataReq(12, "public")); err != nil {
		t.Fatalf("metadata from the hostile broker: %v", err)
	}
	answered, rec := env.fetchSecretByID(t)
	if answered || rec.Verdict != "denied" {
		t.Errorf("Fetch v13 of secret's ID after a remap by another cluster: answered %v, logged %s topics %v (%s)", answered, rec.Verdict, rec.Topics, rec.Reason)
	}
}

// TestHostileKafkaTopicIDRemapSameCluster: a second broker claiming the real
// cluster id (same endpoint) contradicts what the real broker said: both
// the remapped ID and the name it was remapped to become unresolved.
func TestHostileKafkaTopicIDRemapSameCluster(t *testing.T) {
	var fake *fakeBroker
	var env *kafkaTopicsEnv
	fake = startFakeBroker(t, "127.0.0.1:0", func(key, ver int16, corr int32, _ []byte) []byte {
		if key != 3 {
			return nil
		}
		return metadataAnswer(ver, corr, env.clusterID, int32(fake.port()), map[string][16]byte{"public": env.ids["secret"]})
	})
	fakeUp := netip.MustParseAddrPort(fake.ln.Addr().String())
	env = newKafkaTopicsEnv(t, func(o *Options) { topicIDMode(o) }, map[netip.AddrPort]policy.Identity{fakeUp: server})

	// The real broker's answer first: public and secret with their IDs.
	k := dialKafka(t, "127.0.0.2", env.realPort)
	if _, err := k.roundTrip(metadataReq(12, "public", "secret")); err != nil {
		t.Fatal(err)
	}
	// Fetching "public" by its real ID works.
	resp, err := k.roundTrip(fetchByIDReq(env.ids["public"]))
	if err != nil {
		t.Fatal(err)
	}
	if code := resp.(*kmsg.FetchResponse).Topics[0].Partitions[0].ErrorCode; code != 0 {
		t.Fatalf("fetch of public by its id before the remap: error %d", code)
	}
	f := dialKafka(t, "127.0.0.2", env.portFor(fakeUp))
	if _, err := f.roundTrip(metadataReq(12, "public")); err != nil {
		t.Fatalf("metadata from the hostile broker: %v", err)
	}
	answered, rec := env.fetchSecretByID(t)
	if answered || rec.Verdict != "denied" {
		t.Errorf("Fetch v13 of secret's ID after a contradicting remap: answered %v, logged %s topics %v (%s)", answered, rec.Verdict, rec.Topics, rec.Reason)
	}
	resp, err = k.roundTrip(fetchByIDReq(env.ids["public"]))
	if err != nil {
		t.Fatal(err)
	}
	if code := resp.(*kmsg.FetchResponse).Topics[0].Partitions[0].ErrorCode; code == 0 {
		t.Errorf("public's own ID still resolves after its name was claimed by a second ID")
	}
}
func topicIDMode(o *Options) { o.KafkaTopicIDs = true }

// TestHostileKafkaTopicIDVersionsNeedTheMode: with topic-ID mode off (the
// default) a request addressing topics by ID is denied, even for an ID the
// proxy could name.
func TestHostileKafkaTopicIDVersionsNeedTheMode(t *testing.T) {
	env := newKafkaTopicsEnv(t, nil, nil)
	k := dialKafka(t, "127.0.0.2", env.realPort)
	if _, err := k.roundTrip(metadataReq(12, "public")); err != nil {
		t.Fatal(err)
	}
	resp, err := k.roundTrip(fetchByIDReq(env.ids["public"]))
	if err != nil {
		t.Fatal(err)
	}
	if code := resp.(*kmsg.FetchResponse).Topics[0].Partitions[0].ErrorCode; code == 0 {
		t.Errorf("Fetch v13 (topic ids) answered by the broker with topic-ID mode off")
	}
}

// TestHostileKafkaMetadataHidesDeniedTopicIDs: Metadata answers sent to
// the client carry no ID for topics the client may not use, whether the
// request named them (denied, answered with 29) or asked for every topic.
func TestHostileKafkaMetadataHidesDeniedTopicIDs(t *testing.T) {
	for _, mode := range []bool{false, true} {
		t.Run(fmt.Sprintf("topic-id-mode=%v", mode), func(t *testing.T) {
			env := newKafkaTopicsEnv(t, func(o *Options) {
				if mode {
					topicIDMode(o)
				}
			}, nil)
			k := dialKafka(t, "127.0.0.2", env.realPort)
			for _, req := range []*kmsg.MetadataRequest{metadataReq(12, "public", "secret"), metadataReq(12)} {
				if len(req.Topics) == 0 {
					req.Topics = nil // all topics
				}
				resp, err := k.roundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				seen := map[string]bool{}
				for _, tp := range resp.(*kmsg.MetadataResponse).Topics {
					name := *tp.Topic
					seen[name] = true
					switch {
					case name == "public" && tp.TopicID != env.ids["public"]:
						t.Errorf("%d topics asked: public's ID %x, want %x", len(req.Topics), tp.TopicID, env.ids["public"])
					case name == "secret" && tp.TopicID != [16]byte{}:
						t.Errorf("%d topics asked: secret's ID %x sent to a client that may not use it", len(req.Topics), tp.TopicID)
					}
				}
				if !seen["public"] {
					t.Errorf("%d topics asked: public missing", len(req.Topics))
				}
			}
		})
	}
}

// rawUpstream accepts one connection and records every byte it receives
// until the proxy closes it or sends nothing for 2s; it never answers.
func rawUpstream(t *testing.T) (netip.AddrPort, <-chan []byte) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		var b []byte
		buf := make([]byte, 4096)
		for {
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			n, err := c.Read(buf)
			b = append(b, buf[:n]...)
			if err != nil {
				break
			}
		}
		got <- b
	}()
	return netip.MustParseAddrPort(ln.Addr().String()), got
}

// kafkaProxyTo runs a proxy on which friend may consume "public" at
// upstream, and returns its port.
func kafkaProxyTo(t *testing.T, up netip.AddrPort, opts func(*Options)) (uint16, *recorder) {
	t.Helper()
	p, rec := newTestProxyOpts(t, up.String(), opts)
	port := freePort(t)
	cfg := &Config{Version: "1",
		Listeners: []Listener{{Name: "kafka", Port: port, Direction: policy.Ingress, Parser: policy.ParserKafka}},
		Endpoints: []Endpoint{{Identity: server, IPs: []netip.Addr{up.Addr()}, Ingress: []policy.L7RuleSet{consumePublic(up.Port(), t)}}},
		Members:   members(),
	}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	return port, rec
}

func newTestProxyOpts(t *testing.T, upstream string, opts func(*Options)) (*Proxy, *recorder) {
	t.Helper()
	up := netip.MustParseAddrPort(upstream)
	no := false
	rec := &recorder{}
	o := Options{
		ListenHost:          "127.0.0.1",
		Transparent:         &no,
		OriginalDestination: func(net.Conn) (netip.AddrPort, error) { return up, nil },
		AccessLog:           rec.add,
	}
	if opts != nil {
		opts(&o)
	}
	p := New(o)
	t.Cleanup(func() { p.Close() })
	return p, rec
}

// expectClosedBy reads until the proxy closes the connection and returns
// what arrived.
func expectClosedBy(t *testing.T, c net.Conn, within time.Duration) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %s", within)
	}
	return b
}

// validFrames reports whether b is a sequence of whole Kafka frames.
func validFrames(b []byte) bool {
	for len(b) > 0 {
		if len(b) < 4 {
			return false
		}
		n := int(binary.BigEndian.Uint32(b))
		if n < 0 || len(b) < 4+n {
			return false
		}
		b = b[4+n:]
	}
	return true
}

// TestHostileKafkaGarbageAfterAValidFrame: bytes after a valid request that
// do not form a request the proxy understands never reach the broker, and
// the client connection is closed.
func TestHostileKafkaGarbageAfterAValidFrame(t *testing.T) {
	valid := kmsg.NewRequestFormatter(kmsg.FormatterClientID("g")).AppendRequest(nil, metadataReq(1, "public"), 1)
	for name, garbage := range map[string][]byte{
		"negative size":      {0xff, 0xff, 0xff, 0xf0, 1, 2, 3},
		"size above limit":   {0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 1},
		"unknown api":        {0, 0, 0, 10, 0x7f, 0x7f, 0, 0, 0, 0, 0, 2, 0xff, 0xff},
		"short header":       {0, 0, 0, 3, 0, 3, 0},
		"truncated at close": {0, 0, 0, 50, 0, 3, 0, 1},
		"tls client hello":   {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03},
	} {
		t.Run(name, func(t *testing.T) {
			up, got := rawUpstream(t)
			port, _ := kafkaProxyTo(t, up, nil)
			c := dialFrom(t, "127.0.0.2", port)
			if _, err := c.Write(append(append([]byte(nil), valid...), garbage...)); err != nil {
				t.Fatal(err)
			}
			if name == "truncated at close" {
				c.(*net.TCPConn).CloseWrite()
			}
			if name == "unknown api" {
				// Denied by closing after the answers owed: the broker
				// owes one for the valid request and never sends it.
				c.SetReadDeadline(time.Now().Add(time.Second))
				if b, err := io.ReadAll(c); len(b) != 0 || !isNetTimeout(err) {
					t.Errorf("client got %d bytes, %v, while the broker owes an answer", len(b), err)
				}
			} else if b := expectClosedBy(t, c, 10*time.Second); len(b) != 0 && name != "truncated at close" {
				t.Errorf("client got %d bytes before the close", len(b))
			}
			up1 := <-got
			if !validFrames(up1) || bytes.Contains(up1, garbage) || len(up1) > len(valid) {
				t.Errorf("broker received %x (valid request %x)", up1, valid)
			}
		})
	}
}

// TestHostileKafkaOversizedAndSlowFrames: through the real proxy, a frame
// above KafkaMaxFrameSize closes the connection at once, and a frame
// trickled byte by byte is cut at KafkaFrameTimeout; neither reaches the
// broker.
func TestHostileKafkaOversizedAndSlowFrames(t *testing.T) {
	t.Run("oversized", func(t *testing.T) {
		up, got := rawUpstream(t)
		port, _ := kafkaProxyTo(t, up, func(o *Options) { o.KafkaMaxFrameSize = 1 << 20 })
		c := dialFrom(t, "127.0.0.2", port)
		c.Write([]byte{0, 0x20, 0, 0, 0, 0, 0, 9}) // 2 MiB declared
		start := time.Now()
		expectClosedBy(t, c, 5*time.Second)
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("oversized frame cut after %s", took)
		}
		if b := <-got; len(b) != 0 {
			t.Errorf("broker received %d bytes", len(b))
		}
	})
	t.Run("slow", func(t *testing.T) {
		up, got := rawUpstream(t)
		port, _ := kafkaProxyTo(t, up, func(o *Options) { o.KafkaFrameTimeout = time.Second })
		c := dialFrom(t, "127.0.0.2", port)
		frame := kmsg.NewRequestFormatter(kmsg.FormatterClientID("slow")).AppendRequest(nil, metadataReq(1, "public"), 1)
		start := time.Now()
		var err error
		for i := 0; i < len(frame) && err == nil && time.Since(start) < 10*time.Second; i++ {
			_, err = c.Write(frame[i : i+1])
			time.Sleep(150 * time.Millisecond)
			c.SetReadDeadline(time.Now().Add(time.Millisecond))
			if _, rerr := c.Read(make([]byte, 1)); rerr != nil && !isNetTimeout(rerr) {
				err = rerr
			}
		}
		if err == nil {
			t.Fatalf("a frame trickled over %s was not cut", time.Since(start).Round(time.Millisecond))
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("slow frame cut after %s, frame timeout 1s", took.Round(time.Millisecond))
		}
		if b := <-got; len(b) != 0 {
			t.Errorf("broker received %d bytes of a frame that never completed", len(b))
		}
	})
}

func isNetTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestHostileKafkaBrokerCorrelationGames: a broker that answers out of
// order, twice, or unasked gets the connection closed; the client never
// receives an answer paired with the wrong request.
func TestHostileKafkaBrokerCorrelationGames(t *testing.T) {
	md := func(ver int16, corr int32) []byte {
		m := kmsg.NewPtrMetadataResponse()
		m.SetVersion(ver)
		t := kmsg.NewMetadataResponseTopic()
		t.Topic = kmsg.StringPtr("public")
		m.Topics = append(m.Topics, t)
		return responseFrame(corr, m)
	}
	for name, answer := range map[string]func(held *[][]byte, ver int16, corr int32) []byte{
		// Holds the first answer and sends both, reversed, with the second.
		"out of order": func(held *[][]byte, ver int16, corr int32) []byte {
			if len(*held) == 0 {
				*held = append(*held, md(ver, corr))
				return []byte{}
			}
			return append(md(ver, corr), (*held)[0]...)
		},
		"answered twice": func(_ *[][]byte, ver int16, corr int32) []byte {
			return append(md(ver, corr), md(ver, corr)...)
		},
		"unknown correlation id": func(_ *[][]byte, ver int16, corr int32) []byte {
			return md(ver, corr+1000)
		},
	} {
		t.Run(name, func(t *testing.T) {
			var held [][]byte
			fb := startFakeBroker(t, "127.0.0.1:0", func(key, ver int16, corr int32, _ []byte) []byte {
				return answer(&held, ver, corr)
			})
			port, _ := kafkaProxyTo(t, netip.MustParseAddrPort(fb.ln.Addr().String()), nil)
			c := dialFrom(t, "127.0.0.2", port)
			f := kmsg.NewRequestFormatter(kmsg.FormatterClientID("corr"))
			var reqs []byte
			for corr := int32(1); corr <= 2; corr++ {
				reqs = f.AppendRequest(reqs, metadataReq(1, "public"), corr)
			}
			c.Write(reqs)
			got := expectClosedBy(t, c, 10*time.Second)
			// Whatever arrived must be answers in request order: 1, then 2.
			want := int32(1)
			for len(got) >= 8 {
				n := int(binary.BigEndian.Uint32(got))
				if corr := int32(binary.BigEndian.Uint32(got[4:])); corr != want {
					t.Errorf("client got an answer with correlation id %d, want %d", corr, want)
				}
				want++
				got = got[min(4+n, len(got)):]
			}
			if want > 2 && name != "answered twice" {
				t.Errorf("client got %d answers from a broker playing %q", want-1, name)
			}
		})
	}
}

// TestHostileKafkaResponsePanicRecovered: a panic on the goroutine that
// forwards broker responses (fault injected through KafkaOnResponse) closes
// that connection only and is counted, as for HTTP; the proxy and its
// other Kafka connections go on.
func TestHostileKafkaResponsePanicRecovered(t *testing.T) {
	fb := startFakeBroker(t, "127.0.0.1:0", func(key, ver int16, corr int32, _ []byte) []byte {
		if key != 3 {
			return nil
		}
		return metadataAnswer(ver, corr, nil, 0, map[string][16]byte{"public": {1}})
	})
	up := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), fb.port())
	var calls sync.Map
	p, _ := newTestProxyOpts(t, up.String(), func(o *Options) {
		o.KafkaOnResponse = func(key, _ int16) {
			if _, seen := calls.LoadOrStore("first", true); !seen {
				panic("injected kafka response fault")
			}
		}
	})
	port := freePort(t)
	if err := p.Apply(&Config{Version: "1",
		Listeners: []Listener{{Name: "kafka", Port: port, Direction: policy.Ingress, Parser: policy.ParserKafka}},
		Endpoints: []Endpoint{{Identity: server, IPs: []netip.Addr{up.Addr()}, Ingress: []policy.L7RuleSet{consumePublic(up.Port(), t)}}},
		Members:   members(),
	}); err != nil {
		t.Fatal(err)
	}
	bad := dialKafka(t, "127.0.0.2", port)
	if resp, err := bad.roundTrip(metadataReq(4, "public")); err == nil {
		t.Errorf("the connection whose response panicked got an answer: %+v", resp)
	}
	good := dialKafka(t, "127.0.0.2", port)
	resp, err := good.roundTrip(metadataReq(4, "public"))
	if err != nil {
		t.Fatalf("another connection after the panic: %v", err)
	}
	if m := resp.(*kmsg.MetadataResponse); len(m.Topics) != 1 || m.Topics[0].ErrorCode != 0 {
		t.Errorf("another connection after the panic: %+v", m.Topics)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		n, _ := metric(t, p, "l7gate_proxy_connection_panics_total")
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("l7gate_proxy_connection_panics_total %d, want 1", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
