package kafka

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// advertisedListener makes kfake advertise the proxy's address in Metadata
// while it really listens elsewhere, so clients that follow Metadata keep
// going through the proxy.
type advertisedListener struct {
	net.Listener
	addr net.Addr
}

func (l advertisedListener) Addr() net.Addr { return l.addr }

// proxyEnv is a kfake broker behind a test proxy running Filter.Serve.
type proxyEnv struct {
	addr     string // what clients dial: the proxy
	upstream string // the broker's real address
	cluster  *kfake.Cluster
	accepted atomic.Int64
	filter   *Filter

	mu        sync.Mutex
	records   []AccessRecord
	serveErrs []error
}

func newProxyEnv(t testing.TB, decide Decider, mutate func(*Config), topics ...string) *proxyEnv {
	t.Helper()
	return newProxyEnvOpts(t, decide, mutate, nil, topics...)
}

func newProxyEnvOpts(t testing.TB, decide Decider, mutate func(*Config), extra []kfake.Opt, topics ...string) *proxyEnv {
	t.Helper()
	env := &proxyEnv{}
	pln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env.addr = pln.Addr().String()
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.DefaultNumPartitions(1),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			ln, err := net.Listen(network, "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			env.upstream = ln.Addr().String()
			return advertisedListener{Listener: ln, addr: pln.Addr()}, nil
		}),
	}
	if len(topics) > 0 {
		opts = append(opts, kfake.SeedTopics(1, topics...))
	}
	opts = append(opts, extra...)
	cluster, err := kfake.NewCluster(opts...)
	if err != nil {
		pln.Close()
		t.Fatal(err)
	}
	env.cluster = cluster

	cfg := Config{
		Decide: decide,
		AccessLog: func(r *AccessRecord) {
			c := *r
			c.Topics = slices.Clone(r.Topics)
			c.Groups = slices.Clone(r.Groups)
			c.DeniedTopics = slices.Clone(r.DeniedTopics)
			c.UnresolvedTopicIDs = slices.Clone(r.UnresolvedTopicIDs)
			env.mu.Lock()
			env.records = append(env.records, c)
			env.mu.Unlock()
		},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	f, err := NewFilter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	env.filter = f
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := pln.Accept()
			if err != nil {
				return
			}
			env.accepted.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				up, err := net.Dial("tcp", env.upstream)
				if err != nil {
					c.Close()
					return
				}
				if err := f.Serve(ctx, c, up); err != nil {
					env.mu.Lock()
					env.serveErrs = append(env.serveErrs, err)
					env.mu.Unlock()
				}
			}()
		}
	}()
	t.Cleanup(func() {
		pln.Close()
		cancel()
		wg.Wait()
		cluster.Close()
	})
	return env
}

func (e *proxyEnv) accessRecords() []AccessRecord {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.records)
}

func (e *proxyEnv) errs() []error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.serveErrs)
}

// waitServeErr waits for a Serve call to end with an error matching target.
func (e *proxyEnv) waitServeErr(t *testing.T, target error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, err := range e.errs() {
			if errors.Is(err, target) {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no Serve error matching %v; got %v", target, e.errs())
}

// rawClient speaks Kafka over one connection with kmsg, to observe exactly
// what the proxy does on that connection.
type rawClient struct {
	t        *testing.T
	c        net.Conn
	fr       *FrameReader
	corr     int32
	clientID string
}

func dialRaw(t *testing.T, addr, clientID string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, c: c, fr: NewFrameReader(c, 0), clientID: clientID}
}

func (rc *rawClient) send(req kmsg.Request) int32 {
	rc.t.Helper()
	rc.corr++
	if _, err := rc.c.Write(appendFrame(nil, req, rc.corr, rc.clientID)); err != nil {
		rc.t.Fatalf("send: %v", err)
	}
	return rc.corr
}

// recv reads one response to req and returns it with its correlation id.
func (rc *rawClient) recv(req kmsg.Request) (kmsg.Response, int32, error) {
	_ = rc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	frame, err := rc.fr.Next()
	if err != nil {
		return nil, 0, err
	}
	corr := int32(binary.BigEndian.Uint32(frame[4:]))
	resp := req.ResponseKind()
	resp.SetVersion(req.GetVersion())
	body := frame[8:]
	if resp.IsFlexible() && req.Key() != 18 {
		w := wire{b: body}
		w.skipTags()
		body = w.b
	}
	if err := resp.ReadFrom(body); err != nil {
		return nil, corr, err
	}
	return resp, corr, nil
}

func (rc *rawClient) roundTrip(req kmsg.Request) kmsg.Response {
	rc.t.Helper()
	corr := rc.send(req)
	resp, got, err := rc.recv(req)
	if err != nil {
		rc.t.Fatalf("recv %s: %v", APIKeyName(req.Key()), err)
	}
	if got != corr {
		rc.t.Fatalf("correlation id %d, want %d", got, corr)
	}
	return resp
}

// expectClosed asserts the proxy closes the connection.
func (rc *rawClient) expectClosed() {
	rc.t.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	for {
		_, err := rc.c.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			rc.t.Fatal("connection still open")
		}
		return
	}
}

func produceReq(v int16, topic string, acks int16, values ...string) *kmsg.ProduceRequest {
	r := kmsg.NewPtrProduceRequest()
	r.SetVersion(v)
	r.Acks = acks
	r.TimeoutMillis = 5000
	t := kmsg.NewProduceRequestTopic()
	t.Topic = topic
	p := kmsg.NewProduceRequestTopicPartition()
	p.Records = recordBatch(values...)
	t.Partitions = append(t.Partitions, p)
	r.Topics = append(r.Topics, t)
	return r
}

// recordBatch builds a v2 record batch (uncompressed).
func recordBatch(values ...string) []byte {
	var recs []byte
	for i, v := range values {
		rec := kmsg.Record{OffsetDelta: int32(i), Value: []byte(v)}
		var body []byte
		body = append(body, 0)                                   // attributes
		body = binary.AppendVarint(body, 0)                      // timestamp delta
		body = binary.AppendVarint(body, int64(rec.OffsetDelta)) // offset delta
		body = binary.AppendVarint(body, -1)                     // key
		body = binary.AppendVarint(body, int64(len(rec.Value)))
		body = append(body, rec.Value...)
		body = binary.AppendVarint(body, 0) // headers
		recs = binary.AppendVarint(recs, int64(len(body)))
		recs = append(recs, body...)
	}
	now := time.Now().UnixMilli()
	b := kmsg.RecordBatch{
		PartitionLeaderEpoch: -1,
		Magic:                2,
		LastOffsetDelta:      int32(len(values) - 1),
		FirstTimestamp:       now,
		MaxTimestamp:         now,
		ProducerID:           -1,
		ProducerEpoch:        -1,
		FirstSequence:        -1,
		NumRecords:           int32(len(values)),
		Records:              recs,
	}
	raw := b.AppendTo(nil)
	// Length counts from PartitionLeaderEpoch; CRC covers from Attributes.
	binary.BigEndian.PutUint32(raw[8:], uint32(len(raw)-12))
	binary.BigEndian.PutUint32(raw[17:], crc32c(raw[21:]))
	return raw
}

func produceCodes(resp kmsg.Response) []int16 {
	var codes []int16
	for _, t := range resp.(*kmsg.ProduceResponse).Topics {
		for _, p := range t.Partitions {
			codes = append(codes, p.ErrorCode)
		}
	}
	return codes
}

// denyTopics denies requests touching any of the topics.
func denyTopics(denied ...string) Decider {
	return func(r *Request) Decision {
		if r.AllTopics && len(denied) > 0 {
			return Deny("all topics requested while some are denied")
		}
		for _, t := range r.Topics {
			if slices.Contains(denied, t) {
				return Deny("rule deny-"+t, t)
			}
		}
		return Allow("rule allow-all")
	}
}

func TestProxyDenialKeepsConnectionUpAndOrder(t *testing.T) {
	env := newProxyEnv(t, func(r *Request) Decision {
		if r.APIKey == 0 && slices.Contains(r.Topics, "secret") {
			return Deny("produce to secret", "secret")
		}
		return Allow("ok")
	}, nil, "orders", "secret")
	rc := dialRaw(t, env.addr, "raw")

	// A fetch the broker holds for 300 ms, then a denied produce: the
	// local denial must not overtake the fetch response.
	fetch := kmsg.NewPtrFetchRequest()
	fetch.SetVersion(11)
	fetch.MaxWaitMillis = 300
	fetch.MinBytes = 1 << 20
	ft := kmsg.NewFetchRequestTopic()
	ft.Topic = "orders"
	fp := kmsg.NewFetchRequestTopicPartition()
	fp.FetchOffset = 0
	fp.PartitionMaxBytes = 1 << 20
	ft.Partitions = append(ft.Partitions, fp)
	fetch.Topics = append(fetch.Topics, ft)
	denied := produceReq(9, "secret", -1, "nope")
	allowed := produceReq(9, "orders", -1, "yes")

	c1 := rc.send(fetch)
	c2 := rc.send(denied)
	c3 := rc.send(allowed)
	for i, want := range []struct {
		corr int32
		req  kmsg.Request
	}{{c1, fetch}, {c2, denied}, {c3, allowed}} {
		resp, corr, err := rc.recv(want.req)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		if corr != want.corr {
			t.Fatalf("response %d has correlation id %d, want %d (out of order)", i, corr, want.corr)
		}
		switch i {
		case 1:
			if codes := produceCodes(resp); !slices.Equal(codes, []int16{29}) {
				t.Errorf("denied produce codes = %v, want [29]", codes)
			}
		case 2:
			if codes := produceCodes(resp); !slices.Equal(codes, []int16{0}) {
				t.Errorf("allowed produce codes = %v, want [0]", codes)
			}
		}
	}
	// The same connection keeps working.
	if codes := produceCodes(rc.roundTrip(produceReq(9, "orders", -1, "again"))); !slices.Equal(codes, []int16{0}) {
		t.Errorf("later produce codes = %v", codes)
	}
	if env.accepted.Load() != 1 {
		t.Errorf("%d connections accepted, want 1", env.accepted.Load())
	}

	var sawDeny bool
	for _, r := range env.accessRecords() {
		if r.Verdict == VerdictDeny {
			sawDeny = true
			if r.APIName != "produce" || r.ErrorCode != 29 || r.Reason != "produce to secret" ||
				!slices.Equal(r.Topics, []string{"secret"}) || r.ClientID != "raw" || r.CorrelationID != c2 {
				t.Errorf("deny record = %+v", r)
			}
		}
	}
	if !sawDeny {
		t.Error("no deny access record")
	}
}

func TestProxyTopicIDsLearnedFromMetadata(t *testing.T) {
	env := newProxyEnv(t, denyTopics("secret"), func(c *Config) { c.AllowTopicIDs = true }, "orders", "secret")
	rc := dialRaw(t, env.addr, "ids")

	md := kmsg.NewPtrMetadataRequest()
	md.SetVersion(12)
	mt := kmsg.NewMetadataRequestTopic()
	mt.Topic = sp("orders")
	md.Topics = append(md.Topics, mt)
	mresp := rc.roundTrip(md).(*kmsg.MetadataResponse)
	if len(mresp.Topics) != 1 || mresp.Topics[0].ErrorCode != 0 {
		t.Fatalf("metadata = %+v", mresp.Topics)
	}
	id := mresp.Topics[0].TopicID

	// Produce v13 addresses the topic by the learned ID: allowed.
	p := produceReq(13, "", -1, "by-id")
	p.Topics[0].TopicID = id
	if codes := produceCodes(rc.roundTrip(p)); !slices.Equal(codes, []int16{0}) {
		t.Fatalf("produce by learned id codes = %v", codes)
	}
	// An ID never seen on the connection is denied, not passed, with
	// UNKNOWN_TOPIC_ID (the client refreshes its metadata).
	p = produceReq(13, "", -1, "by-unknown-id")
	p.Topics[0].TopicID = [16]byte{9, 9, 9}
	if codes := produceCodes(rc.roundTrip(p)); !slices.Equal(codes, []int16{ErrCodeUnknownTopicID}) {
		t.Fatalf("produce by unknown id codes = %v, want [100]", codes)
	}
	recs := env.accessRecords()
	var found bool
	for _, r := range recs {
		if r.APIName == "produce" && r.Verdict == VerdictAllow && slices.Equal(r.Topics, []string{"orders"}) {
			found = true
		}
	}
	if !found {
		t.Errorf("no allowed produce naming orders in %+v", recs)
	}
	if last := recs[len(recs)-1]; last.Verdict != VerdictDeny || len(last.UnresolvedTopicIDs) != 1 || last.Reason != "unresolved topic id" {
		t.Errorf("last record = %+v", last)
	}
}

func TestProxyApiVersionsAreClamped(t *testing.T) {
	for _, tc := range []struct {
		name         string
		allowIDs     bool
		wantProduce  int16
		passUnknown  bool
		wantDescACLs bool
	}{
		{"default", false, 12, false, false},
		{"topic-ids", true, 13, false, false},
		{"pass-unknown", false, 12, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newProxyEnv(t, denyTopics(), func(c *Config) {
				c.AllowTopicIDs = tc.allowIDs
				c.PassUnknown = tc.passUnknown
			})
			rc := dialRaw(t, env.addr, "av")
			req := kmsg.NewPtrApiVersionsRequest()
			req.SetVersion(3)
			req.ClientSoftwareName, req.ClientSoftwareVersion = "l7gate-test", "1.0"
			resp := rc.roundTrip(req).(*kmsg.ApiVersionsResponse)
			var produceMax int16 = -1
			var descACLs bool
			for _, k := range resp.ApiKeys {
				switch k.ApiKey {
				case 0:
					produceMax = k.MaxVersion
				case 29:
					descACLs = true
				}
				if ours := AdmittedMaxVersion(k.ApiKey); ours >= 0 && k.MaxVersion > ours {
					t.Errorf("key %d advertised up to v%d, we decode v%d", k.ApiKey, k.MaxVersion, ours)
				}
			}
			if produceMax != tc.wantProduce {
				t.Errorf("produce max v%d, want v%d", produceMax, tc.wantProduce)
			}
			if descACLs != tc.wantDescACLs {
				t.Errorf("describeacls advertised = %v", descACLs)
			}
		})
	}
}

func TestProxyUnsupportedAPI(t *testing.T) {
	t.Run("denied by default: connection closed after earlier responses", func(t *testing.T) {
		env := newProxyEnv(t, denyTopics(), nil, "orders")
		rc := dialRaw(t, env.addr, "u")
		md := kmsg.NewPtrMetadataRequest()
		md.SetVersion(4)
		c1 := rc.send(md)
		acl := kmsg.NewPtrDescribeACLsRequest()
		acl.SetVersion(1)
		rc.send(acl)
		if _, corr, err := rc.recv(md); err != nil || corr != c1 {
			t.Fatalf("earlier response: corr %d err %v", corr, err)
		}
		rc.expectClosed()
		recs := env.accessRecords()
		last := recs[len(recs)-1]
		if last.APIName != "describeacls" || last.Verdict != VerdictDeny || !last.ConnectionClosed {
			t.Errorf("record = %+v", last)
		}
	})
	t.Run("PassUnknown forwards when the decider allows", func(t *testing.T) {
		env := newProxyEnv(t, func(r *Request) Decision {
			if !r.Supported && r.ClientID == "admin" {
				return Allow("admin may use any api")
			}
			return Allow("")
		}, func(c *Config) { c.PassUnknown = true }, "orders")
		rc := dialRaw(t, env.addr, "admin")
		acl := kmsg.NewPtrDescribeACLsRequest()
		acl.SetVersion(1)
		rc.roundTrip(acl)
	})
}

func TestProxyDeniedAcksZeroProduceClosesConnection(t *testing.T) {
	env := newProxyEnv(t, denyTopics("secret"), nil, "secret")
	rc := dialRaw(t, env.addr, "a0")
	rc.send(produceReq(9, "secret", 0, "fire-and-forget"))
	rc.expectClosed()
	recs := env.accessRecords()
	if len(recs) != 1 || !recs[0].ConnectionClosed || recs[0].Verdict != VerdictDeny {
		t.Errorf("records = %+v", recs)
	}
}

func TestProxyClosesOnOversizedOrMalformedFrame(t *testing.T) {
	env := newProxyEnv(t, denyTopics(), func(c *Config) { c.MaxFrameSize = 1 << 20 }, "orders")

	over := dialRaw(t, env.addr, "big")
	if _, err := over.c.Write([]byte{0x10, 0, 0, 0}); err != nil { // 256 MiB declared
		t.Fatal(err)
	}
	over.expectClosed()
	env.waitServeErr(t, ErrFrameTooLarge)

	bad := dialRaw(t, env.addr, "bad")
	if _, err := bad.c.Write([]byte{0, 0, 0, 6, 0, 0, 0xff, 0xff, 0, 0}); err != nil {
		t.Fatal(err)
	}
	bad.expectClosed()
	env.waitServeErr(t, ErrMalformed)

	negative := dialRaw(t, env.addr, "neg")
	if _, err := negative.c.Write([]byte{0xff, 0xff, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	negative.expectClosed()

	// The proxy survives and serves new connections.
	rc := dialRaw(t, env.addr, "after")
	if codes := produceCodes(rc.roundTrip(produceReq(9, "orders", -1, "still-alive"))); !slices.Equal(codes, []int16{0}) {
		t.Fatalf("produce after bad frames codes = %v", codes)
	}
}

func TestProxyServeEndsWithContext(t *testing.T) {
	f, err := NewFilter(Config{Decide: denyTopics()})
	if err != nil {
		t.Fatal(err)
	}
	c1, c2 := net.Pipe()
	u1, u2 := net.Pipe()
	defer c2.Close()
	defer u2.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Serve(ctx, c1, u1) }()
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Serve = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := c2.Write([]byte{0}); !errors.Is(err, io.ErrClosedPipe) {
		t.Errorf("client side still open: %v", err)
	}
}

func TestNewFilterNeedsDecider(t *testing.T) {
	if _, err := NewFilter(Config{}); err == nil {
		t.Fatal("nil decider accepted")
	}
}

func crc32c(b []byte) uint32 { return crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli)) }

func TestProxyDeniedMetadataIsFilteredPerTopic(t *testing.T) {
	env := newProxyEnv(t, denyTopics("secret", "autocreated"), func(c *Config) {}, "orders", "secret")
	rc := dialRaw(t, env.addr, "md")

	topicsOf := func(resp *kmsg.MetadataResponse) map[string]int16 {
		m := map[string]int16{}
		for _, tp := range resp.Topics {
			if tp.Topic != nil {
				m[*tp.Topic] = tp.ErrorCode
			}
		}
		return m
	}
	for _, v := range []int16{4, 9, 12} {
		// All topics: the denied one is left out; brokers stay.
		all := kmsg.NewPtrMetadataRequest()
		all.SetVersion(v)
		resp := rc.roundTrip(all).(*kmsg.MetadataResponse)
		got := topicsOf(resp)
		if _, ok := got["secret"]; ok || got["orders"] != 0 || len(resp.Brokers) != 1 {
			t.Errorf("v%d all topics: topics %v, %d brokers", v, got, len(resp.Brokers))
		}
		// Named topics: the denied one answers 29, the allowed one is real.
		named := kmsg.NewPtrMetadataRequest()
		named.SetVersion(v)
		for _, name := range []string{"orders", "secret"} {
			tp := kmsg.NewMetadataRequestTopic()
			tp.Topic = sp(name)
			named.Topics = append(named.Topics, tp)
		}
		resp = rc.roundTrip(named).(*kmsg.MetadataResponse)
		got = topicsOf(resp)
		if got["secret"] != 29 || got["orders"] != 0 || len(resp.Brokers) != 1 {
			t.Errorf("v%d named topics: %v, %d brokers", v, got, len(resp.Brokers))
		}
		for _, tp := range resp.Topics {
			if *tp.Topic == "secret" && len(tp.Partitions) != 0 {
				t.Errorf("v%d: denied topic leaks %d partitions", v, len(tp.Partitions))
			}
		}
	}
	// A denied request never auto-creates its topic.
	auto := kmsg.NewPtrMetadataRequest()
	auto.SetVersion(9)
	auto.AllowAutoTopicCreation = true
	tp := kmsg.NewMetadataRequestTopic()
	tp.Topic = sp("autocreated")
	auto.Topics = append(auto.Topics, tp)
	if got := topicsOf(rc.roundTrip(auto).(*kmsg.MetadataResponse)); got["autocreated"] != 29 {
		t.Errorf("autocreated = %v", got)
	}
	direct := dialRaw(t, env.upstream, "direct")
	all := kmsg.NewPtrMetadataRequest()
	all.SetVersion(9)
	if got := topicsOf(direct.roundTrip(all).(*kmsg.MetadataResponse)); len(got) != 2 {
		t.Errorf("broker topics after denied metadata = %v, want only orders and secret", got)
	}
	// v1 cannot turn auto-creation off: denied whole, locally.
	old := kmsg.NewPtrMetadataRequest()
	old.SetVersion(1)
	old.Topics = append(old.Topics, tp)
	if got := topicsOf(rc.roundTrip(old).(*kmsg.MetadataResponse)); got["autocreated"] != 29 {
		t.Errorf("v1 denied metadata = %v", got)
	}
}

func TestProxyClientHalfCloseStillGetsResponses(t *testing.T) {
	env := newProxyEnv(t, denyTopics("secret"), nil, "orders", "secret")
	rc := dialRaw(t, env.addr, "half")
	md := kmsg.NewPtrMetadataRequest()
	md.SetVersion(9)
	c1 := rc.send(md)
	c2 := rc.send(produceReq(9, "secret", -1, "x"))
	if err := rc.c.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, corr, err := rc.recv(md); err != nil || corr != c1 {
		t.Fatalf("metadata after half-close: corr %d, %v", corr, err)
	}
	resp, corr, err := rc.recv(produceReq(9, "secret", -1))
	if err != nil || corr != c2 || !slices.Equal(produceCodes(resp), []int16{29}) {
		t.Fatalf("denial after half-close: corr %d, %v", corr, err)
	}
	rc.expectClosed()
}

func TestServeUpstreamCloseEndsConnection(t *testing.T) {
	f, err := NewFilter(Config{Decide: denyTopics()})
	if err != nil {
		t.Fatal(err)
	}
	c1, c2 := net.Pipe()
	u1, u2 := net.Pipe()
	defer c2.Close()
	done := make(chan error, 1)
	go func() { done <- f.Serve(context.Background(), c1, u1) }()
	u2.Close() // the broker goes away
	select {
	case err := <-done:
		if !errors.Is(err, io.EOF) {
			t.Errorf("Serve = %v, want an upstream EOF", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the upstream closed")
	}
	if _, err := c2.Read(make([]byte, 1)); err == nil {
		t.Error("client connection still open")
	}
}

func TestServeRejectsUnexpectedUpstreamResponse(t *testing.T) {
	f, err := NewFilter(Config{Decide: denyTopics()})
	if err != nil {
		t.Fatal(err)
	}
	c1, c2 := net.Pipe()
	u1, u2 := net.Pipe()
	defer c2.Close()
	defer u2.Close()
	done := make(chan error, 1)
	go func() { done <- f.Serve(context.Background(), c1, u1) }()
	// A response nobody asked for.
	go u2.Write([]byte{0, 0, 0, 4, 0, 0, 0, 7})
	select {
	case err := <-done:
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("Serve = %v, want ErrMalformed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
}

func TestProxyHugeDeniedProduceClosesInsteadOfAnswering(t *testing.T) {
	env := newProxyEnv(t, denyTopics("secret"), nil, "secret")
	rc := dialRaw(t, env.addr, "huge")
	p := kmsg.NewPtrProduceRequest()
	p.SetVersion(7)
	p.Acks = -1
	tp := kmsg.NewProduceRequestTopic()
	tp.Topic = "secret"
	for i := range maxDenialPartitions + 1 {
		pp := kmsg.NewProduceRequestTopicPartition()
		pp.Partition = int32(i)
		tp.Partitions = append(tp.Partitions, pp)
	}
	p.Topics = append(p.Topics, tp)
	rc.send(p)
	rc.expectClosed()
	recs := env.accessRecords()
	if len(recs) != 1 || recs[0].Verdict != VerdictDeny || !recs[0].ConnectionClosed {
		t.Errorf("records = %+v", recs)
	}
}

func TestProxySharedTopicIDsAcrossConnections(t *testing.T) {
	reg := NewTopicIDRegistry(TopicIDLimits{})
	env := newProxyEnv(t, denyTopics("secret"), func(c *Config) {
		c.AllowTopicIDs = true
		c.TopicIDRegistry = reg
		c.TopicIDScope = "test"
	}, "orders")
	a := dialRaw(t, env.addr, "a")
	md := kmsg.NewPtrMetadataRequest()
	md.SetVersion(12)
	mt := kmsg.NewMetadataRequestTopic()
	mt.Topic = sp("orders")
	md.Topics = append(md.Topics, mt)
	mresp := a.roundTrip(md).(*kmsg.MetadataResponse)
	id := mresp.Topics[0].TopicID
	shared := reg.Table("test", *mresp.ClusterID)
	if name, ok := shared.Name(id); !ok || name != "orders" {
		t.Fatalf("shared table: %q, %v", name, ok)
	}
	// Another connection (as a client's leader connection would be) uses
	// the ID without sending Metadata itself.
	b := dialRaw(t, env.addr, "b")
	p := produceReq(13, "", -1, "via-other-conn")
	p.Topics[0].TopicID = id
	if codes := produceCodes(b.roundTrip(p)); !slices.Equal(codes, []int16{0}) {
		t.Fatalf("produce by shared id codes = %v", codes)
	}
}

func TestProxyDeciderPanicFailsClosed(t *testing.T) {
	env := newProxyEnv(t, func(r *Request) Decision {
		if r.APIKey == 0 {
			panic("policy bug")
		}
		return Allow("")
	}, nil, "orders")
	rc := dialRaw(t, env.addr, "p")
	if codes := produceCodes(rc.roundTrip(produceReq(9, "orders", -1, "x"))); !slices.Equal(codes, []int16{29}) {
		t.Fatalf("produce with a panicking decider: codes %v, want [29]", codes)
	}
	md := kmsg.NewPtrMetadataRequest()
	md.SetVersion(9)
	rc.roundTrip(md) // the connection and proxy survive
}
