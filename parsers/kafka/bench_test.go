package kafka

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/twmb/franz-go/pkg/kfake"
)

// benchProduceFrame is a Produce v9 request carrying one batch of n
// records of size bytes each.
func benchProduceFrame(n, size int) []byte {
	vals := make([]string, n)
	for i := range vals {
		b := make([]byte, size)
		for j := range b {
			b[j] = byte('a' + (i+j)%26)
		}
		vals[i] = string(b)
	}
	return appendFrame(nil, produceReq(9, "bench", 1, vals...), 1, "bench-producer")
}

func BenchmarkDecodeProduce(b *testing.B) {
	const records = 100
	frame := benchProduceFrame(records, 100)
	dec := NewDecoder(nil, 0)
	var r Request
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		if err := dec.Decode(frame, &r); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(records)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "requests/s")
}

// produceLoad pipelines b.N produce requests (window in flight, like a
// client's max.in.flight) on one connection to addr and checks every
// response.
func produceLoad(b *testing.B, addr string, frame []byte, window int) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	frame = append([]byte(nil), frame...)
	errc := make(chan error, 1)
	sem := make(chan struct{}, window)
	b.SetBytes(int64(len(frame)))
	b.ResetTimer()
	go func() {
		fr := NewFrameReader(c, 0)
		for i := 0; i < b.N; i++ {
			resp, err := fr.Next()
			if err != nil {
				errc <- err
				return
			}
			if got := int32(binary.BigEndian.Uint32(resp[4:])); got != int32(i) {
				errc <- fmt.Errorf("response %d has correlation id %d", i, got)
				return
			}
			<-sem
		}
		errc <- nil
	}()
	for i := 0; i < b.N; i++ {
		sem <- struct{}{}
		binary.BigEndian.PutUint32(frame[8:], uint32(i))
		if _, err := c.Write(frame); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "requests/s")
}

func benchEnv(b *testing.B) *proxyEnv {
	return newProxyEnvOpts(b, func(r *Request) Decision {
		for _, t := range r.Topics {
			if t == "secret" {
				return Deny("deny secret", t)
			}
		}
		return Allow("allow")
	}, func(c *Config) {
		// A cheap access log, as a production one (a ring buffer or
		// counters) would be, instead of the tests' collecting one.
		var n, denied int
		c.AccessLog = func(r *AccessRecord) {
			n++
			if r.Verdict == VerdictDeny {
				denied++
			}
		}
	}, []kfake.Opt{kfake.BlackholeProduce()}, "bench")
}

// 100 records of 1 KiB per request, 5 in flight.
func BenchmarkProduceDirect(b *testing.B) {
	env := benchEnv(b)
	produceLoad(b, env.upstream, benchProduceFrame(100, 1024), 5)
}

func BenchmarkProduceThroughProxy(b *testing.B) {
	env := benchEnv(b)
	produceLoad(b, env.addr, benchProduceFrame(100, 1024), 5)
}

// Small requests stress per-request overhead rather than bytes.
func BenchmarkProduceSmallDirect(b *testing.B) {
	env := benchEnv(b)
	produceLoad(b, env.upstream, benchProduceFrame(1, 100), 5)
}

func BenchmarkProduceSmallThroughProxy(b *testing.B) {
	env := benchEnv(b)
	produceLoad(b, env.addr, benchProduceFrame(1, 100), 5)
}

// kafkaGoLoad writes b.N batches of 100 × 1 KiB messages with a kafka-go
// Writer, the way an application produces.
func kafkaGoLoad(b *testing.B, addr string) {
	tr := &kafkago.Transport{ClientID: "bench"}
	defer tr.CloseIdleConnections()
	w := &kafkago.Writer{
		Addr:         kafkago.TCP(addr),
		Topic:        "bench",
		BatchSize:    100,
		BatchTimeout: time.Millisecond,
		RequiredAcks: kafkago.RequireOne,
		Transport:    tr,
	}
	defer w.Close()
	msgs := make([]kafkago.Message, 100)
	for i := range msgs {
		msgs[i].Value = make([]byte, 1024)
	}
	ctx := context.Background()
	if err := w.WriteMessages(ctx, msgs...); err != nil { // warm metadata
		b.Fatal(err)
	}
	b.SetBytes(100 * 1024)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(100*b.N)/b.Elapsed().Seconds(), "records/s")
}

func BenchmarkKafkaGoWriterDirect(b *testing.B) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(1),
		kfake.SeedTopics(1, "bench"), kfake.BlackholeProduce())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	kafkaGoLoad(b, c.ListenAddrs()[0])
}

func BenchmarkKafkaGoWriterThroughProxy(b *testing.B) {
	env := benchEnv(b)
	kafkaGoLoad(b, env.addr)
}
