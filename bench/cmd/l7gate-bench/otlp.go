package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	"google.golang.org/grpc"

	"github.com/l7gate/l7gate/internal/netns"
)

// The OTLP phase: the agent's OTLP access-log export on vs off.
const (
	otlpSinkAddr     = "127.0.0.1:4317" // in the node namespace
	agentMetricsAddr = "127.0.0.1:9962"
)

// otlpResult is one keep-alive L7 run with the agent's OTLP export on or
// off: the proxy's and the agent's CPU per 1000 requests (the Go proxy
// forwards every access record to the agent's flow pipeline in both
// modes; with OTLP on the agent also renders and sends each as a log).
type otlpResult struct {
	wrkResult
	AgentCPUPer1000 float64 `json:"agentCpuSecPer1000"`
	// OTLPDelivered/OTLPLost: the agent's l7gate_flows_delivered_total /
	// l7gate_flows_lost_total for the otlp sink over the run.
	OTLPDelivered float64 `json:"otlpDelivered"`
	OTLPLost      float64 `json:"otlpLost"`
	// RoundsProxyCPU: proxy CPU-s / 1000 req of every round (the best
	// round by req/s is reported).
	RoundsProxyCPU []float64 `json:"roundsProxyCpuPer1000,omitempty"`
	RoundsAgentCPU []float64 `json:"roundsAgentCpuPer1000,omitempty"`
}

// otlpSinkMain is `l7gate-bench otlp-sink ADDR`: an OTLP gRPC LogsService
// that counts log records (printed every second while they change), run
// in the node namespace as a process of its own, so its CPU is nobody's.
func otlpSinkMain(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: otlp-sink ADDR")
	}
	ln, err := listenTCP(args[0])
	if err != nil {
		return err
	}
	s := &countingLogs{}
	gs := grpc.NewServer()
	collogspb.RegisterLogsServiceServer(gs, s)
	go gs.Serve(ln)
	ctx, stop := signalContext()
	defer stop()
	var last int64
	for {
		select {
		case <-ctx.Done():
			gs.Stop()
			fmt.Printf("otlp-sink: %d log records\n", s.n.Load())
			return nil
		case <-time.After(time.Second):
			if n := s.n.Load(); n != last {
				fmt.Printf("otlp-sink: %d log records\n", n)
				last = n
			}
		}
	}
}

type countingLogs struct {
	collogspb.UnimplementedLogsServiceServer
	n atomic.Int64
}

func (c *countingLogs) Export(_ context.Context, req *collogspb.ExportLogsServiceRequest) (*collogspb.ExportLogsServiceResponse, error) {
	var n int64
	for _, rl := range req.GetResourceLogs() {
		for _, sl := range rl.GetScopeLogs() {
			n += int64(len(sl.GetLogRecords()))
		}
	}
	c.n.Add(n)
	return &collogspb.ExportLogsServiceResponse{}, nil
}

func signalContext() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		select {
		case <-sig:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// otlpOverhead measures keep-alive L7 with the agent restarted with and
// without --otlp-endpoint (the proxy it started keeps running and is
// adopted), in interleaved rounds.
func (s *scenario) otlpOverhead(ctx context.Context) error {
	n := s.n
	if err := s.use("l7"); err != nil {
		return err
	}
	if _, err := startProc(n.cl, filepath.Join(n.dir, "otlp-sink.log"), "ip", "netns", "exec", n.nodeNS, "taskset", "-c", allCPUs(),
		n.self, "otlp-sink", otlpSinkAddr); err != nil {
		return err
	}
	if err := waitTCP(n.nodeNS, otlpSinkAddr, 10*time.Second); err != nil {
		return fmt.Errorf("otlp sink: %w", err)
	}
	s.res.OTLP = map[string]*otlpResult{}
	for round := range rounds {
		for _, mode := range roundOrder([]string{"off", "on"}, round) {
			args := []string{"--metrics-address", agentMetricsAddr}
			if mode == "on" {
				args = append(args, "--otlp-endpoint", otlpSinkAddr, "--otlp-insecure")
			}
			if err := s.restartAgent(args...); err != nil {
				return fmt.Errorf("otlp %s: %w", mode, err)
			}
			runWrk(ctx, n.dir, n.clientNS, s.url("l7"), 64, time.Second, false, 0)
			d0, l0 := agentOTLPCounters(n.nodeNS)
			apid := n.agent.Process.Pid
			a0 := procCPU(apid)
			r, err := runWrk(ctx, n.dir, n.clientNS, s.url("l7"), 64, s.cfg.keepDur, false, s.proxyPIDFor("l7"))
			if err != nil {
				return fmt.Errorf("otlp %s: %w", mode, err)
			}
			a1 := procCPU(apid)
			time.Sleep(1500 * time.Millisecond) // the exporter's last batch
			d1, l1 := agentOTLPCounters(n.nodeNS)
			res := &otlpResult{wrkResult: *r, OTLPDelivered: d1 - d0, OTLPLost: l1 - l0}
			if r.Requests > 0 {
				res.AgentCPUPer1000 = (a1 - a0) / float64(r.Requests) * 1000
			}
			log.Printf("  keep-alive L7, OTLP %-3s round %d: %9.0f req/s p99 %6.0fus proxy cpu/1000 %.4fs agent cpu/1000 %.4fs otlp delivered %.0f lost %.0f non2xx %d",
				mode, round, r.ReqPerSec, r.P99us, r.ProxyCPUPer1000, res.AgentCPUPer1000, res.OTLPDelivered, res.OTLPLost, r.Non2xx)
			prev := s.res.OTLP[mode]
			if prev != nil {
				res.Rounds, res.RoundsProxyCPU, res.RoundsAgentCPU = prev.Rounds, prev.RoundsProxyCPU, prev.RoundsAgentCPU
			}
			res.Rounds = append(res.Rounds, r.ReqPerSec)
			res.RoundsProxyCPU = append(res.RoundsProxyCPU, r.ProxyCPUPer1000)
			res.RoundsAgentCPU = append(res.RoundsAgentCPU, res.AgentCPUPer1000)
			if prev == nil || r.ReqPerSec > prev.ReqPerSec {
				s.res.OTLP[mode] = res
			} else {
				prev.Rounds, prev.RoundsProxyCPU, prev.RoundsAgentCPU = res.Rounds, res.RoundsProxyCPU, res.RoundsAgentCPU
			}
		}
	}
	// leave an agent without OTLP for later phases
	return s.restartAgent()
}

// restartAgent stops the agent (SIGTERM; the proxy it started keeps
// running) and starts it again with extra flags; it adopts the proxy.
func (s *scenario) restartAgent(extra ...string) error {
	n := s.n
	n.agent.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { n.agent.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		n.agent.Process.Kill()
		<-done
	}
	if err := n.startAgent(append(slices.Clone(s.cfg.agentArgs), extra...)...); err != nil {
		return err
	}
	if _, err := n.waitImplemented(0, 60*time.Second); err != nil {
		return err
	}
	if err := waitTCP(n.clientNS, s.addr("l7"), 20*time.Second); err != nil {
		return err
	}
	if pid := n.proxyPID(); pid > 0 {
		pinPID(pid, proxyCPU)
	}
	time.Sleep(time.Second)
	return nil
}

// agentOTLPCounters reads the agent's OTLP sink counters from its
// metrics endpoint (0, 0 when it does not answer).
func agentOTLPCounters(ns string) (delivered, lost float64) {
	var body []byte
	netns.In(ns, func() error {
		c, err := net.DialTimeout("tcp", agentMetricsAddr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")
		body, _ = io.ReadAll(c)
		return nil
	})
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `sink="otlp"`) && !strings.Contains(line, `stage="otlp"`) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(line, "l7gate_flows_delivered_total{"):
			delivered += v
		case strings.HasPrefix(line, "l7gate_flows_lost_total{"):
			lost += v
		}
	}
	return delivered, lost
}
