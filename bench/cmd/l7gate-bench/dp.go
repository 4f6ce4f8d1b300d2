package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/l7gate/l7gate/internal/netns"
)

// dpRow is one BenchmarkDatapath sub-benchmark.
type dpRow struct {
	Entries int     `json:"entries"`
	Path    string  `json:"path"`
	NsPkt   float64 `json:"nsPerPacket"`
	XVs10   float64 `json:"xVs10"`
}

// dp6Row is one BenchmarkDatapathIPv6 sub-benchmark: the same packet
// over IPv4 and IPv6 on one 10k-entry datapath, alternated.
//
// The benchmark runs dp6Rounds times (go test -count); a path's row holds
// the medians over those runs (V6VsV4: the median of the per-run ratios,
// each run's v4 and v6 measured alternately on the same datapath) and
// Ratios every run's ratio, in run order.
type dp6Row struct {
	Path   string    `json:"path"`
	NsV4   float64   `json:"nsPerPacketV4"`
	NsV6   float64   `json:"nsPerPacketV6"`
	V6VsV4 float64   `json:"v6VsV4"`
	Ratios []float64 `json:"ratios,omitempty"`
}

// dp6Rounds is how many times BenchmarkDatapathIPv6 runs: the issue's
// method asks for at least five rounds per path and the median, as one
// run's ratio moves by a few percent on this machine.
const dp6Rounds = 5

// mergeDP6 folds the runs of BenchmarkDatapathIPv6 (rows in output order,
// one per path and run) into one row per path, in first-seen order: the
// median of each field over the path's runs and every run's ratio.
func mergeDP6(runs []dp6Row) []dp6Row {
	var order []string
	by := map[string][]dp6Row{}
	for _, r := range runs {
		if _, ok := by[r.Path]; !ok {
			order = append(order, r.Path)
		}
		by[r.Path] = append(by[r.Path], r)
	}
	out := make([]dp6Row, 0, len(order))
	for _, path := range order {
		rs := by[path]
		var v4, v6, ratio []float64
		for _, r := range rs {
			v4 = append(v4, r.NsV4)
			v6 = append(v6, r.NsV6)
			ratio = append(ratio, r.V6VsV4)
		}
		m4, _, _ := medianRange(v4)
		m6, _, _ := medianRange(v6)
		mr, _, _ := medianRange(ratio)
		out = append(out, dp6Row{Path: path, NsV4: m4, NsV6: m6, V6VsV4: mr, Ratios: ratio})
	}
	return out
}

var dp6LineRE = regexp.MustCompile(`^BenchmarkDatapathIPv6/([a-z0-9-]+)-\d+\s+\d+\s+\S+ ns/op\s+(\S+) ns/pkt-v4\s+(\S+) ns/pkt-v6\s+(\S+) v6-vs-v4`)

var dpLineRE = regexp.MustCompile(`^BenchmarkDatapath/entries=(\d+)/([a-z-]+)-\d+\s+\d+\s+\S+ ns/op\s+(\S+) ns/pkt\s+(\S+) x-vs-10`)

// runDatapathBench runs the bpf package's BenchmarkDatapath once (it pins
// itself to one CPU and alternates each size with the 10-entry datapath)
// and BenchmarkDatapathIPv6 dp6Rounds times (see mergeDP6).
func runDatapathBench(ctx context.Context, repo string) ([]dpRow, []dp6Row, string, error) {
	cctx, cancel := context.WithTimeout(ctx, 8*time.Minute)
	defer cancel()
	var out []byte
	for _, args := range [][]string{
		{"-bench", "^BenchmarkDatapath$", "-count", "1"},
		{"-bench", "^BenchmarkDatapathIPv6$", "-count", strconv.Itoa(dp6Rounds)},
	} {
		cmd := exec.CommandContext(cctx, "taskset", append([]string{"-c", allCPUs(), "go", "test", "-run", "^$"}, append(args, "./bpf/")...)...)
		cmd.Dir = repo
		o, err := cmd.CombinedOutput()
		out = append(out, o...)
		if err != nil {
			return nil, nil, string(out), fmt.Errorf("go test %s ./bpf/: %v", strings.Join(args, " "), err)
		}
	}
	var rows []dpRow
	var rows6 []dp6Row
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if m := dp6LineRE.FindStringSubmatch(sc.Text()); m != nil {
			r := dp6Row{Path: m[1]}
			r.NsV4, _ = strconv.ParseFloat(m[2], 64)
			r.NsV6, _ = strconv.ParseFloat(m[3], 64)
			r.V6VsV4, _ = strconv.ParseFloat(m[4], 64)
			rows6 = append(rows6, r)
			continue
		}
		m := dpLineRE.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		r := dpRow{Path: m[2]}
		r.Entries, _ = strconv.Atoi(m[1])
		r.NsPkt, _ = strconv.ParseFloat(m[3], 64)
		r.XVs10, _ = strconv.ParseFloat(m[4], 64)
		rows = append(rows, r)
	}
	if len(rows) == 0 {
		return nil, nil, string(out), fmt.Errorf("no BenchmarkDatapath lines in output")
	}
	return rows, mergeDP6(rows6), string(out), nil
}

// iptRow is one iptables chain size measured with new connections.
type iptRow struct {
	Rules      int     `json:"rules"`
	Backend    string  `json:"backend"`
	LoadSec    float64 `json:"loadSeconds"`
	ConnPerSec float64 `json:"connPerSec"`
	// CostVs10 is rate(10 rules)/rate(this size): how many times slower
	// than with 10 rules (comparable to the datapath's x-vs-10).
	CostVs10 float64 `json:"costVs10"`
	Errors   int64   `json:"errors"`
	Skipped  string  `json:"skipped,omitempty"`
}

// runIptables builds a fresh client/server namespace pair joined by a veth,
// loads n rules (one per allow entry, a linear chain after a conntrack
// ESTABLISHED shortcut, the matching entry last, then DROP) into the
// server's INPUT with iptables-restore, and measures new connections/s.
func runIptables(ctx context.Context, cl *cleanups, n *node, sizes []int, d time.Duration) ([]iptRow, error) {
	restore, backend := "iptables-legacy-restore", "legacy"
	if _, err := exec.LookPath(restore); err != nil {
		restore, backend = "iptables-restore", "default"
		if _, err := exec.LookPath(restore); err != nil {
			return nil, fmt.Errorf("no iptables-restore (run hack/install-bench-deps.sh)")
		}
	}
	cns, sns := n.prefix+"-ipc", n.prefix+"-ips"
	for _, ns := range []string{cns, sns} {
		// the node's topology owns them: deleted with it
		if err := n.topo.AddNS(ctx, ns); err != nil {
			return nil, err
		}
		if err := netns.SetSysctls(ns, map[string]string{"ipv4/ip_local_port_range": "1024 65000", "ipv4/tcp_tw_reuse": "1",
			"core/somaxconn": "65535", "ipv4/tcp_max_syn_backlog": "65535"}); err != nil {
			return nil, err
		}
	}
	for _, args := range [][]string{
		{"-n", cns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", sns},
		{"-n", cns, "addr", "add", "198.18.2.1/24", "dev", "eth0"},
		{"-n", sns, "addr", "add", "198.18.2.2/24", "dev", "eth0"},
		{"-n", cns, "link", "set", "eth0", "up"},
		{"-n", sns, "link", "set", "eth0", "up"},
	} {
		if err := sh("ip", args...); err != nil {
			return nil, err
		}
	}
	if _, err := startProc(cl, filepath.Join(n.dir, "ipt-server.log"), "ip", "netns", "exec", sns, "taskset", "-c", allCPUs(),
		n.self, "serve", "-http", "198.18.2.2:80"); err != nil {
		return nil, err
	}
	if err := waitTCP(cns, "198.18.2.2:80", 15*time.Second); err != nil {
		return nil, err
	}
	var rows []iptRow
	for _, size := range sizes {
		row := iptRow{Rules: size, Backend: backend}
		var b strings.Builder
		b.WriteString("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:BENCH - [0:0]\n")
		if size > 0 {
			b.WriteString("-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n-A INPUT -p tcp --dport 80 -j BENCH\n")
			for i := range size - 1 {
				peer := i / 50
				fmt.Fprintf(&b, "-A BENCH -s 198.19.%d.%d/32 -p tcp -m tcp --dport %d -j ACCEPT\n", peer/256, peer%256, 1000+i%50)
			}
			b.WriteString("-A BENCH -s 198.18.2.1/32 -p tcp -m tcp --dport 80 -j ACCEPT\n-A BENCH -j DROP\n")
		}
		b.WriteString("COMMIT\n")
		t := time.Now()
		cctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		cmd := exec.CommandContext(cctx, "ip", "netns", "exec", sns, restore)
		cmd.Stdin = strings.NewReader(b.String())
		out, err := cmd.CombinedOutput()
		cancel()
		row.LoadSec = time.Since(t).Seconds()
		if err != nil {
			row.Skipped = fmt.Sprintf("%s: %v: %s", restore, err, bytes.TrimSpace(out))
			rows = append(rows, row)
			continue
		}
		r, err := runWrk(ctx, n.dir, cns, "http://198.18.2.2:80/", 16, d, true, 0)
		if err != nil {
			row.Skipped = err.Error()
			rows = append(rows, row)
			continue
		}
		row.ConnPerSec, row.Errors = r.ReqPerSec, r.Errors
		rows = append(rows, row)
	}
	// flush
	cmd := exec.Command("ip", "netns", "exec", sns, restore)
	cmd.Stdin = strings.NewReader("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
	cmd.Run()
	var base float64
	for _, r := range rows {
		if r.Rules == 10 {
			base = r.ConnPerSec
		}
	}
	for i := range rows {
		if base > 0 && rows[i].ConnPerSec > 0 {
			rows[i].CostVs10 = base / rows[i].ConnPerSec
		}
	}
	return rows, nil
}

func repoRoot() string {
	if wd, err := os.Getwd(); err == nil {
		for d := wd; d != "/"; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				return d
			}
		}
	}
	return "."
}
