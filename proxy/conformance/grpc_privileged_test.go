package conformance

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// interopCases are grpc-go's interop test cases that need no credentials.
var interopCases = []string{
	"empty_unary", "large_unary", "client_streaming", "server_streaming", "ping_pong", "empty_stream",
	"timeout_on_sleeping_server", "cancel_after_begin", "cancel_after_first_response",
	"status_code_and_message", "special_status_message", "custom_metadata",
	"unimplemented_method", "unimplemented_service",
}

// interopRounds is how often every case runs: L7GATE_INTEROP_ROUNDS,
// default 25. A race that hits 1 call in 20 shows with probability
// 1-0.95^(14r) when any case can hit it (99.9% at r=10) but only
// 1-0.95^(4r) when, like the lost-status race, only the 4 cases answered
// with a bodiless status can: 87% at 10 rounds, 99% from 23. One round
// takes ~2.5 s here.
func interopRounds(t *testing.T) int {
	n := 25
	if s := os.Getenv("L7GATE_INTEROP_ROUNDS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("L7GATE_INTEROP_ROUNDS=%q: want a positive number", s)
		}
		n = v
	}
	return n
}

type interopResult struct {
	calls    int
	failures map[string]int    // by case
	first    map[string]string // first failure output by case
	// excused: failures not counted because the same case, run at once
	// without the proxy, failed as well (the machine, not the proxy).
	excused int
}

func (r interopResult) failed() int {
	n := 0
	for _, v := range r.failures {
		n += v
	}
	return n
}

// runInterop runs every case rounds times with the interop client in
// namespace ns against host:port. When recheck is set, a failed case is
// run once more with recheck's arguments (directly, without the proxy);
// if that fails too the failure is excused, as the machine is too loaded
// for that case right now.
func runInterop(ctx context.Context, n *node, client, ns, host string, port, rounds int, recheck *[2]string) interopResult {
	res := interopResult{failures: map[string]int{}, first: map[string]string{}}
	for range rounds {
		for _, tc := range interopCases {
			cctx, cancel := context.WithTimeout(ctx, time.Minute)
			out, err := n.run(cctx, ns, client, "-server_host", host, "-server_port", strconv.Itoa(port), "-test_case", tc)
			cancel()
			res.calls++
			if err != nil && recheck != nil {
				cctx, cancel := context.WithTimeout(ctx, time.Minute)
				_, derr := n.run(cctx, recheck[0], client, "-server_host", recheck[1], "-server_port", strconv.Itoa(port), "-test_case", tc)
				cancel()
				if derr != nil {
					res.excused++
					continue
				}
			}
			if err != nil {
				res.failures[tc]++
				if _, ok := res.first[tc]; !ok {
					res.first[tc] = fmt.Sprintf("%v: %s", err, lastLines(out, 3))
				}
			}
		}
	}
	return res
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// TestPrivilegedGRPCInterop runs grpc-go's interop client against its
// interop server (both from the grpc module version in go.mod), from the
// client pod through the datapath and the L7 proxy (allow-all rule) to
// the backend pod, and the same directly. The proxy must add no failure
// and must carry the calls.
func TestPrivilegedGRPCInterop(t *testing.T) {
	for _, dp := range dataplanes {
		t.Run(dp.name, func(t *testing.T) {
			requireRoot(t)
			if why := dp.available(); why != "" {
				t.Skipf("%s dataplane: %s", dp.name, why)
			}
			version := moduleVersion(t, "google.golang.org/grpc")
			client := tool(t, "google.golang.org/grpc/interop/client", version)
			server := tool(t, "google.golang.org/grpc/interop/server", version)
			const port = 10000
			n := startNode(t, dp, port, allowAll("http"))
			srv := n.startProc(t, "interop-server", n.Backend, server, "-port", strconv.Itoa(port))
			waitListening(t, n.Backend, fmt.Sprintf("127.0.0.1:%d", port), srv)
			rounds := interopRounds(t)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
			defer cancel()

			start := time.Now()
			direct := runInterop(ctx, n, client, n.Backend, "127.0.0.1", port, rounds, nil)
			t.Logf("direct: %d of %d calls failed (%s)", direct.failed(), direct.calls, time.Since(start).Round(time.Second))
			for tc, out := range direct.first {
				t.Logf("direct %s failed %d times; first: %s", tc, direct.failures[tc], out)
			}
			before := n.requests()
			start = time.Now()
			proxied := runInterop(ctx, n, client, n.Client, backendIP, port, rounds, &[2]string{n.Backend, "127.0.0.1"})
			carried := n.requests() - before
			t.Logf("through the %s proxy: %d of %d calls failed (%d more excused: the direct rerun failed too), %d requests carried (%s)",
				dp.name, proxied.failed(), proxied.calls, proxied.excused, carried, time.Since(start).Round(time.Second))

			var added []string
			for _, tc := range interopCases {
				if d := proxied.failures[tc] - direct.failures[tc]; d > 0 {
					added = append(added, fmt.Sprintf("%s: %d of %d failed through the proxy, %d directly; first: %s",
						tc, proxied.failures[tc], rounds, direct.failures[tc], proxied.first[tc]))
				}
			}
			sort.Strings(added)
			if len(added) > 0 {
				t.Errorf("the proxy adds failures:\n%s", strings.Join(added, "\n"))
			}
			// Every case makes at least one request (a cancelled one may
			// not reach the proxy): most must have been carried.
			if min := int64(rounds * (len(interopCases) - 2)); carried < min {
				t.Errorf("the proxy carried %d requests for %d calls, want at least %d: the traffic did not go through it", carried, proxied.calls, min)
			}
		})
	}
}
