package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// loadCPU is the CPU load generators are pinned to; proxies get proxyCPU.
var (
	proxyCPU = "0"
	loadCPU  = "1"
)

// wrkResult is one wrk run.
type wrkResult struct {
	Requests  int64   `json:"requests"`
	Errors    int64   `json:"errors"`
	Non2xx    int64   `json:"non2xx"`
	ReqPerSec float64 `json:"reqPerSec"`
	P50us     float64 `json:"p50us"`
	P99us     float64 `json:"p99us"`
	P999us    float64 `json:"p999us"`
	// ProxyCPUPer1000 is the proxy process's user+system CPU seconds per
	// 1000 requests (0 when no proxy is in the path).
	ProxyCPUPer1000 float64 `json:"proxyCpuSecPer1000,omitempty"`
	ProxyCPUSec     float64 `json:"proxyCpuSec,omitempty"`
	// Rounds: req/s of every interleaved round (the best is reported).
	Rounds []float64 `json:"roundsReqPerSec,omitempty"`
}

const wrkScript = `
local close = os.getenv("BENCH_CLOSE")
if close == "1" then wrk.headers["Connection"] = "close" end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCHRESULT %d %d %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    e.connect + e.read + e.write + e.timeout, e.status))
end
`

var benchResultRE = regexp.MustCompile(`BENCHRESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)`)

// runWrk runs wrk pinned to loadCPU in ns against url for d; cpuPID, when
// > 0, is the proxy whose CPU time is charged per request.
func runWrk(ctx context.Context, dir, ns, url string, conns int, d time.Duration, closeConns bool, cpuPID int) (*wrkResult, error) {
	script := filepath.Join(dir, "wrk.lua")
	if err := os.WriteFile(script, []byte(wrkScript), 0o644); err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, "ip", "netns", "exec", ns, "taskset", "-c", loadCPU,
		"wrk", "-t1", "-c"+strconv.Itoa(conns), "-d"+strconv.Itoa(int(d.Seconds()))+"s", "--timeout", "5s", "--latency", "-s", script, url)
	cmd.Env = append(os.Environ(), "BENCH_CLOSE="+map[bool]string{true: "1", false: "0"}[closeConns])
	cpu0 := procCPU(cpuPID)
	out, err := cmd.CombinedOutput()
	cpu1 := procCPU(cpuPID)
	if err != nil {
		return nil, fmt.Errorf("wrk: %v: %s", err, out)
	}
	m := benchResultRE.FindStringSubmatch(string(out))
	if m == nil {
		return nil, fmt.Errorf("wrk: no result in %s", out)
	}
	f := func(i int) float64 { v, _ := strconv.ParseFloat(m[i], 64); return v }
	r := &wrkResult{Requests: int64(f(1)), P50us: f(3), P99us: f(4), P999us: f(5), Errors: int64(f(6)), Non2xx: int64(f(7))}
	r.ReqPerSec = f(1) / (f(2) / 1e6)
	if cpuPID > 0 && r.Requests > 0 {
		r.ProxyCPUSec = cpu1 - cpu0
		r.ProxyCPUPer1000 = r.ProxyCPUSec / float64(r.Requests) * 1000
	}
	return r, nil
}

// procCPU is utime+stime of pid in seconds (0 for pid <= 0).
func procCPU(pid int) float64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	// fields after ")": state(0) ... utime is field 14 overall => index 11 here
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / 100 // USER_HZ
}

// procCtxt is the voluntary plus involuntary context switches of every
// thread of pid (0 for pid <= 0).
func procCtxt(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	dirs, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	var n int64
	for _, f := range dirs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "voluntary_ctxt_switches:") || strings.HasPrefix(l, "nonvoluntary_ctxt_switches:") {
				v, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
				n += v
			}
		}
	}
	return n
}

// procRSSKiB is VmRSS of pid in KiB.
func procRSSKiB(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			v, _ := strconv.ParseInt(strings.Fields(l)[1], 10, 64)
			return v
		}
	}
	return 0
}

// pinPID pins every thread of pid (and threads it creates later) to cpus.
func pinPID(pid int, cpus string) error {
	return sh("taskset", "-apc", cpus, strconv.Itoa(pid))
}

// fixedRateResult: a coordinated-omission-free fixed-rate run (latency
// measured from each request's scheduled send time).
type fixedRateResult struct {
	Rate   int     `json:"rate"`
	Conns  int     `json:"conns"`
	Sent   int     `json:"sent"`
	Errors int     `json:"errors"`
	P50us  float64 `json:"p50us"`
	P99us  float64 `json:"p99us"`
	P999us float64 `json:"p999us"`
	// AddedP50, AddedP99, AddedP999: over direct; with Added set (since
	// wave 15) the medians of the per-round differences, before it the
	// best rounds' difference.
	AddedP50  float64 `json:"addedP50us,omitempty"`
	AddedP99  float64 `json:"addedP99us,omitempty"`
	AddedP999 float64 `json:"addedP999us,omitempty"`
	// RoundsP99: p99 of every interleaved round.
	RoundsP99 []float64 `json:"roundsP99us,omitempty"`
	// Rounds: every round of the path, each next to the direct run it is
	// paired with; Added: the per-round differences' median and range
	// (then P50us, P99us, P999us are the medians of the path's rounds, and
	// Sent, Errors the sums).
	Rounds []*fixedRateRound `json:"rounds,omitempty"`
	Added  *fixedRateAdded   `json:"added,omitempty"`
	// SlowPerHalfSecond: of one run, how many requests took longer than
	// its p99, by the half second of the run they were scheduled in
	// (whether the tail clusters, e.g. at the run's start, or spreads).
	SlowPerHalfSecond []int `json:"slowPerHalfSecond,omitempty"`
	// ReadyP50us, ReadyP99us, ReadyP999us: latency without the load
	// generator's own lateness in waking up to send: from the schedule
	// when the previous response on the connection came after it (that
	// wait stays counted: no coordinated omission), else from the actual
	// send. ClientLateP50us / P99us: that lateness (send time − the later
	// of the schedule and the previous response).
	ReadyP50us      float64 `json:"readyP50us,omitempty"`
	ReadyP99us      float64 `json:"readyP99us,omitempty"`
	ReadyP999us     float64 `json:"readyP999us,omitempty"`
	ClientLateP50us float64 `json:"clientLateP50us,omitempty"`
	ClientLateP99us float64 `json:"clientLateP99us,omitempty"`
	// ProxyCPUPer1000, ProxyCtxtPerRequest: the proxy's (Go proxy,
	// relay or HAProxy) CPU-s per 1000 requests and context switches per
	// request at this rate; AgentCPUPer1000: the agent's (it receives the
	// Go proxy's flow records).
	ProxyCPUPer1000     float64 `json:"proxyCpuSecPer1000,omitempty"`
	ProxyCtxtPerRequest float64 `json:"proxyCtxtPerRequest,omitempty"`
	AgentCPUPer1000     float64 `json:"agentCpuSecPer1000,omitempty"`
	// ProxyGCPer1000: the Go proxy's (or relay build's) GC cycles per
	// 1000 requests (its admin socket's go_gc_duration_seconds_count).
	ProxyGCPer1000 float64 `json:"proxyGcCyclesPer1000,omitempty"`
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	// nearest rank
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	i = min(max(i, 0), len(sorted)-1)
	return float64(sorted[i].Nanoseconds()) / 1e3
}

// runFixedRate sends rate req/s over conns keep-alive connections for d.
func runFixedRate(ctx context.Context, dial *nsDialer, addr, host, path string, rate, conns int, d time.Duration) (*fixedRateResult, error) {
	interval := time.Duration(int64(time.Second) * int64(conns) / int64(rate))
	req := []byte(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: l7gate-bench\r\n\r\n", path, host))
	var mu sync.Mutex
	var lat, fromReady, late []time.Duration
	var when []time.Duration // each latency's scheduled time since start
	errs := 0
	sent := 0
	var wg sync.WaitGroup
	start := time.Now().Add(200 * time.Millisecond)
	for c := range conns {
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := dial.DialContext(dctx, "tcp", addr)
		cancel()
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			br := bufio.NewReaderSize(conn, 16<<10)
			mine := make([]time.Duration, 0, int(d/interval)+1)
			myWhen := make([]time.Duration, 0, int(d/interval)+1)
			myReady := make([]time.Duration, 0, int(d/interval)+1)
			myLate := make([]time.Duration, 0, int(d/interval)+1)
			var prevDone time.Time
			myErrs, mySent := 0, 0
			first := start.Add(interval * time.Duration(c) / time.Duration(conns))
			for i := 0; ; i++ {
				at := first.Add(time.Duration(i) * interval)
				if at.Sub(start) >= d || ctx.Err() != nil {
					break
				}
				if w := time.Until(at); w > 0 {
					time.Sleep(w)
				}
				mySent++
				// from: where the ready latency starts. The schedule when
				// the previous response came after it (that wait is the
				// path's: no coordinated omission); else the actual send
				// (the time from the schedule to it is this load
				// generator's own lateness in waking up).
				sendAt := time.Now()
				from, ready := at, at
				if prevDone.After(at) {
					ready = prevDone
				} else {
					from = sendAt
				}
				conn.SetDeadline(sendAt.Add(5 * time.Second))
				if _, err := conn.Write(req); err != nil {
					myErrs++
					break
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					myErrs++
					break
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					myErrs++
				}
				prevDone = time.Now()
				mine = append(mine, prevDone.Sub(at))
				myWhen = append(myWhen, at.Sub(start))
				myReady = append(myReady, prevDone.Sub(from))
				myLate = append(myLate, sendAt.Sub(ready))
			}
			mu.Lock()
			lat = append(lat, mine...)
			when = append(when, myWhen...)
			fromReady = append(fromReady, myReady...)
			late = append(late, myLate...)
			errs += myErrs
			sent += mySent
			mu.Unlock()
		}()
	}
	wg.Wait()
	byTime := slices.Clone(lat)
	slices.Sort(lat)
	r := &fixedRateResult{Rate: rate, Conns: conns, Sent: sent, Errors: errs,
		P50us: percentile(lat, 50), P99us: percentile(lat, 99), P999us: percentile(lat, 99.9)}
	r.SlowPerHalfSecond = slowPerBin(byTime, when, time.Duration(r.P99us*1e3), d, 500*time.Millisecond)
	slices.Sort(fromReady)
	slices.Sort(late)
	r.ReadyP50us, r.ReadyP99us, r.ReadyP999us = percentile(fromReady, 50), percentile(fromReady, 99), percentile(fromReady, 99.9)
	r.ClientLateP50us, r.ClientLateP99us = percentile(late, 50), percentile(late, 99)
	return r, nil
}

// slowPerBin counts the latencies above limit by the bin of their
// scheduled time.
func slowPerBin(lat, when []time.Duration, limit, d, bin time.Duration) []int {
	out := make([]int, int((d+bin-1)/bin))
	for i, l := range lat {
		if l > limit {
			out[min(int(when[i]/bin), len(out)-1)]++
		}
	}
	return out
}

// h2loadResult is one h2load run.
type h2loadResult struct {
	ReqPerSec       float64 `json:"reqPerSec"`
	Succeeded       int64   `json:"succeeded"`
	Failed          int64   `json:"failed"`
	MeanReqUs       float64 `json:"meanRequestUs"`
	ProxyCPUPer1000 float64 `json:"proxyCpuSecPer1000,omitempty"`
	// ServerCPUPer1000, ClientCPUPer1000: the upstream server process's
	// this process's (the clients') and the agent's CPU-s per 1000 calls
	// (Kafka);
	// ProxyCtxtPerCall: the proxy's context switches per call.
	ServerCPUPer1000 float64 `json:"serverCpuSecPer1000,omitempty"`
	ClientCPUPer1000 float64 `json:"clientCpuSecPer1000,omitempty"`
	AgentCPUPer1000  float64 `json:"agentCpuSecPer1000,omitempty"`
	ProxyCtxtPerCall float64 `json:"proxyCtxtPerCall,omitempty"`
}

var (
	h2FinishedRE = regexp.MustCompile(`finished in [^,]+, ([\d.]+) req/s`)
	h2ReqsRE     = regexp.MustCompile(`requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed`)
	h2TimeRE     = regexp.MustCompile(`time for request:\s+\S+\s+\S+\s+(\S+)`)
)

func parseDur(s string) float64 {
	for _, u := range []struct {
		suf string
		mul float64
	}{{"us", 1}, {"ms", 1e3}, {"s", 1e6}} {
		if strings.HasSuffix(s, u.suf) {
			v, _ := strconv.ParseFloat(strings.TrimSuffix(s, u.suf), 64)
			return v * u.mul
		}
	}
	return 0
}

func runH2load(ctx context.Context, ns, url string, conns, streams int, d time.Duration, cpuPID int) (*h2loadResult, error) {
	cctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	cpu0 := procCPU(cpuPID)
	out, err := exec.CommandContext(cctx, "ip", "netns", "exec", ns, "taskset", "-c", loadCPU,
		"h2load", "-t1", "-c"+strconv.Itoa(conns), "-m"+strconv.Itoa(streams), "-D"+strconv.Itoa(int(d.Seconds())), url).CombinedOutput()
	cpu1 := procCPU(cpuPID)
	if err != nil {
		return nil, fmt.Errorf("h2load: %v: %s", err, out)
	}
	s := string(out)
	m1, m2, m3 := h2FinishedRE.FindStringSubmatch(s), h2ReqsRE.FindStringSubmatch(s), h2TimeRE.FindStringSubmatch(s)
	if m1 == nil || m2 == nil {
		return nil, fmt.Errorf("h2load: cannot parse %s", s)
	}
	r := &h2loadResult{}
	r.ReqPerSec, _ = strconv.ParseFloat(m1[1], 64)
	r.Succeeded, _ = strconv.ParseInt(m2[1], 10, 64)
	r.Failed, _ = strconv.ParseInt(m2[2], 10, 64)
	if m3 != nil {
		r.MeanReqUs = parseDur(m3[1])
	}
	if cpuPID > 0 && r.Succeeded > 0 {
		r.ProxyCPUPer1000 = (cpu1 - cpu0) / float64(r.Succeeded) * 1000
	}
	if r.Succeeded == 0 {
		return r, fmt.Errorf("h2load: no request succeeded: %s", s)
	}
	return r, nil
}

// rpcResult is a closed-loop unary-call run (grpc-go health checks, or
// kafka-go produce calls).
type rpcResult struct {
	Calls     int64   `json:"calls"`
	Errors    int64   `json:"errors"`
	PerSec    float64 `json:"perSec"`
	P50us     float64 `json:"p50us"`
	P99us     float64 `json:"p99us"`
	FirstErr  string  `json:"firstError,omitempty"`
	MsgPerSec float64 `json:"messagesPerSec,omitempty"`
	// ProxyCPUPer1000 is the Go proxy's CPU-s per 1000 calls (L7 runs).
	ProxyCPUPer1000 float64 `json:"proxyCpuSecPer1000,omitempty"`
	// ServerCPUPer1000, ClientCPUPer1000: the upstream server process's
	// this process's (the clients') and the agent's CPU-s per 1000 calls
	// (Kafka);
	// ProxyCtxtPerCall: the proxy's context switches per call.
	ServerCPUPer1000 float64 `json:"serverCpuSecPer1000,omitempty"`
	ClientCPUPer1000 float64 `json:"clientCpuSecPer1000,omitempty"`
	AgentCPUPer1000  float64 `json:"agentCpuSecPer1000,omitempty"`
	ProxyCtxtPerCall float64 `json:"proxyCtxtPerCall,omitempty"`
}

// closedLoop runs call from workers goroutines for d and collects latency.
func closedLoop(ctx context.Context, workers int, d time.Duration, call func(ctx context.Context, w int) error) *rpcResult {
	var mu sync.Mutex
	var lat []time.Duration
	var errs int64
	var firstErr string
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			var e int64
			fe := ""
			for ctx.Err() == nil {
				t := time.Now()
				cctx, c := context.WithTimeout(context.Background(), 5*time.Second)
				err := call(cctx, w)
				c()
				if err != nil {
					e++
					if fe == "" {
						fe = err.Error()
					}
					time.Sleep(10 * time.Millisecond)
					continue
				}
				mine = append(mine, time.Since(t))
			}
			mu.Lock()
			lat = append(lat, mine...)
			errs += e
			if firstErr == "" {
				firstErr = fe
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	el := time.Since(start)
	slices.Sort(lat)
	return &rpcResult{Calls: int64(len(lat)), Errors: errs, PerSec: float64(len(lat)) / el.Seconds(),
		P50us: percentile(lat, 50), P99us: percentile(lat, 99), FirstErr: firstErr}
}

func runGRPC(ctx context.Context, dial *nsDialer, addr string, conns, workers int, d time.Duration) (*rpcResult, error) {
	clients := make([]healthpb.HealthClient, conns)
	for i := range conns {
		cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return dial.DialContext(ctx, "tcp", a) }))
		if err != nil {
			return nil, err
		}
		defer cc.Close()
		clients[i] = healthpb.NewHealthClient(cc)
	}
	// warm up (and fail fast when the path is broken)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for _, c := range clients {
		if _, err := c.Check(wctx, &healthpb.HealthCheckRequest{}); err != nil {
			return nil, fmt.Errorf("grpc warm-up: %w", err)
		}
	}
	return closedLoop(ctx, workers, d, func(ctx context.Context, w int) error {
		_, err := clients[w%conns].Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}), nil
}

// runKafka produces batches of batch messages of size bytes from workers
// writers (one connection each) for d; latency is per produce call.
func runKafka(ctx context.Context, dial *nsDialer, addr string, workers, batch, size int, d time.Duration) (*rpcResult, error) {
	tr := &kafka.Transport{Dial: dial.DialContext, ClientID: "l7gate-bench", IdleTimeout: time.Minute, MetadataTTL: time.Hour}
	defer tr.CloseIdleConnections()
	writers := make([]*kafka.Writer, workers)
	for i := range writers {
		writers[i] = &kafka.Writer{Addr: kafka.TCP(addr), Topic: "bench", Transport: tr, RequiredAcks: kafka.RequireOne,
			BatchSize: batch, BatchTimeout: time.Millisecond, WriteTimeout: 5 * time.Second}
		defer writers[i].Close()
	}
	val := make([]byte, size)
	msgs := make([]kafka.Message, batch)
	for i := range msgs {
		msgs[i] = kafka.Message{Value: val}
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := writers[0].WriteMessages(wctx, msgs...); err != nil {
		return nil, fmt.Errorf("kafka warm-up: %w", err)
	}
	r := closedLoop(ctx, workers, d, func(ctx context.Context, w int) error {
		return writers[w].WriteMessages(ctx, msgs...)
	})
	r.MsgPerSec = r.PerSec * float64(batch)
	return r, nil
}

// openIdle opens n keep-alive connections (one request each, so the proxy
// has its upstream too) and returns a closer.
func openIdle(ctx context.Context, dial *nsDialer, addr, path string, n int) (func(), int, error) {
	conns := make([]net.Conn, 0, n)
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
	}
	req := []byte(fmt.Sprintf("GET %s HTTP/1.1\r\nHost: bench\r\n\r\n", path))
	var mu sync.Mutex
	var firstErr error
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	deadline := time.Now().Add(90 * time.Second)
	for i := 0; i < n && time.Now().Before(deadline); i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			c, err := dial.DialContext(dctx, "tcp", addr)
			cancel()
			if err == nil {
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err = c.Write(req); err == nil {
					var resp *http.Response
					if resp, err = http.ReadResponse(bufio.NewReader(c), nil); err == nil {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				}
				c.SetDeadline(time.Time{})
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if c != nil {
					c.Close()
				}
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			conns = append(conns, c)
		}()
	}
	wg.Wait()
	if len(conns) < n && firstErr != nil {
		return closeAll, len(conns), firstErr
	}
	return closeAll, len(conns), nil
}
