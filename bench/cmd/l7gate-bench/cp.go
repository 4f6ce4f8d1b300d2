package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/l7gate/l7gate/agentapi"
)

// cpResult: control-plane latency of CNP changes with many synthetic pods.
type cpResult struct {
	LocalLookingPods int    `json:"localLookingPods"`
	ClusterPods      int    `json:"clusterPods"`
	Changes          int    `json:"changes"`
	Budget           string `json:"budget"`
	// EndToEnd: file written → the agent logged "policy implemented" for
	// the new revision (includes the folder source's inotify debounce, at most 50 ms, and
	// reading the changed file).
	E2EP50ms float64 `json:"e2eP50ms"`
	E2EP99ms float64 `json:"e2eP99ms"`
	// Took: the agent's own "took": compute + apply (local endpoints,
	// datapath syncs, xDS push and ACKs); agents before w12 left the
	// compute out.
	TookP50ms float64 `json:"tookP50ms"`
	TookP99ms float64 `json:"tookP99ms"`
	// Split: where the end-to-end time went, per component, p50 and p99
	// over the changes (ms): source = file written → the agent received
	// the update (inotify, debounce, reading, decoding, merging); agent =
	// received → implemented (compute and took); then the agent's own
	// parts: compute, find (local endpoints over netlink), sync (datapath),
	// push (xDS push and ACKs), inforce (the part of push after the
	// completion: awaitInForce), and from agents since w14 ports
	// (allocating proxy ports), services (the service maps) and status
	// (recording the revision: status, flow index, metrics, reporter).
	// From the agent's "split" log field.
	Split map[string][2]float64 `json:"splitP50P99ms,omitempty"`
	// AgentCPUPerChangeMs: the agent process's CPU time (user+system)
	// over the changes, per change (less load-sensitive than wall time;
	// the pauses between changes add the agent's idle work).
	AgentCPUPerChangeMs float64 `json:"agentCpuPerChangeMs,omitempty"`
	// Agent RSS before/after adding the pods, each read right after the
	// agent collected its garbage and returned the freed pages to the OS
	// (agentapi.FetchMemory; agents before w15 have no such endpoint:
	// then as it was, and HeapPerPodBytes is 0). Unscavenged, the growth
	// moved ±600 B per pod with the heap the agent had before (GC timing,
	// free pages kept from the 1.1k tier).
	AgentRSSBeforeKiB int64   `json:"agentRssBeforeKiB"`
	AgentRSSAfterKiB  int64   `json:"agentRssAfterKiB"`
	RSSPerPodBytes    float64 `json:"agentRssPerPodBytes"`
	// RawRSSAfterKiB: VmRSS after adding the pods before the collection
	// (what RSSPerPodBytes measured before w15).
	RawRSSAfterKiB int64 `json:"agentRawRssAfterKiB,omitempty"`
	// Live heap before/after adding the pods (after a collection), and
	// its growth per pod: independent of GC timing.
	HeapBeforeBytes uint64  `json:"agentHeapBeforeBytes,omitempty"`
	HeapAfterBytes  uint64  `json:"agentHeapAfterBytes,omitempty"`
	HeapPerPodBytes float64 `json:"agentHeapPerPodBytes,omitempty"`
	InitialImplMs   float64 `json:"initialImplementMs"`
	Identities      int     `json:"identities"`
	Endpoints       int     `json:"endpoints"`
}

func syntheticPodsYAML(local, cluster int) string {
	var b strings.Builder
	for i := range local + cluster {
		var ip, kind string
		if i < local {
			// inside the node's pod range, but no veth routes to them
			ip, kind = fmt.Sprintf("198.18.%d.%d", 64+i/250, 1+i%250), "local"
		} else {
			j := i - local
			ip, kind = fmt.Sprintf("198.19.%d.%d", j/250, 1+j%250), "remote"
		}
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: syn-%s-%d\n  namespace: bench\n  labels:\n    app: svc-%d\n    tier: %s\nstatus:\n  podIP: %s\n",
			kind, i, i%500, kind, ip)
	}
	return b.String()
}

var implLineRE = regexp.MustCompile(`msg="policy implemented" revision=(\d+) .*took=(\S+)`)

// splitRE: the agent's "split" field (agent/implement.go revisionTiming):
// received/compute/find/sync/push/inforce in ms, then (agents since w14)
// /ports/services/status.
var splitRE = regexp.MustCompile(`split=([0-9.]+)/([0-9.]+)/([0-9.]+)/([0-9.]+)/([0-9.]+)/([0-9.]+)(?:/([0-9.]+)/([0-9.]+)/([0-9.]+))?`)

var splitNames = []string{"agent", "compute", "find", "sync", "push", "inforce", "ports", "services", "status"}

// splitBase: the fields every agent logs (a prebuilt older agent logs
// only these).
const splitBase = 6

// logTail follows the agent log from its current end.
type logTail struct {
	f   *os.File
	buf []byte
	// split: the last matched line's split field (ms), if it had one.
	split []float64
}

func newLogTail(p string) (*logTail, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	f.Seek(0, 2)
	return &logTail{f: f}, nil
}

// waitRevision waits for a "policy implemented" line with revision > after.
func (t *logTail) waitRevision(after uint64, limit time.Duration) (uint64, time.Duration, error) {
	deadline := time.Now().Add(limit)
	chunk := make([]byte, 64<<10)
	for time.Now().Before(deadline) {
		n, _ := t.f.Read(chunk)
		if n > 0 {
			t.buf = append(t.buf, chunk[:n]...)
			for {
				i := slices.Index(t.buf, '\n')
				if i < 0 {
					break
				}
				line := string(t.buf[:i])
				t.buf = t.buf[i+1:]
				if m := implLineRE.FindStringSubmatch(line); m != nil {
					rev, _ := strconv.ParseUint(m[1], 10, 64)
					took, _ := time.ParseDuration(m[2])
					if rev > after {
						t.split = nil
						if sm := splitRE.FindStringSubmatch(line); sm != nil {
							for _, v := range sm[1:] {
								if v == "" {
									break // an older agent's split
								}
								f, _ := strconv.ParseFloat(v, 64)
								t.split = append(t.split, f)
							}
						}
						return rev, took, nil
					}
				}
			}
			continue
		}
		time.Sleep(time.Millisecond)
	}
	return 0, 0, fmt.Errorf("no 'policy implemented' revision > %d within %v", after, limit)
}

// agentMemory collects the agent's garbage, returns the freed pages to
// the OS and reads its live heap and VmRSS right after (heap 0: an agent
// without GET /debug/memory; VmRSS as it is).
func agentMemory(n *node, pid int) (heap uint64, rssKiB int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if m, err := agentapi.FetchMemory(ctx, n.run); err == nil {
		heap = m.HeapAlloc
	}
	return heap, procRSSKiB(pid)
}

// saveAgentHeap saves the agent's heap profile (after a collection) as
// out/name; go tool pprof -sample_index=inuse_space reads it.
func saveAgentHeap(n *node, out, name string) {
	if out == "" {
		return
	}
	hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", agentapi.StatusSocket(n.run))
	}}}
	resp, err := hc.Get("http://agent/debug/pprof/heap?gc=1")
	if err != nil {
		log.Printf("  agent heap profile: %v", err)
		return
	}
	defer resp.Body.Close()
	if data, err := io.ReadAll(resp.Body); err == nil && resp.StatusCode == http.StatusOK {
		os.MkdirAll(out, 0o755)
		os.WriteFile(filepath.Join(out, name), data, 0o644)
	}
}

func runControlPlane(ctx context.Context, n *node, local, cluster, changes int, budget time.Duration, out string) (*cpResult, error) {
	r := &cpResult{LocalLookingPods: local, ClusterPods: cluster, Budget: budget.String()}
	agentPID := n.agent.Process.Pid
	if err := n.setPolicy(policyYAML(true, 100, "")); err != nil {
		return nil, err
	}
	time.Sleep(2 * time.Second)
	r.HeapBeforeBytes, r.AgentRSSBeforeKiB = agentMemory(n, agentPID)
	st, err := n.status()
	if err != nil {
		return nil, err
	}
	tail, err := newLogTail(filepath.Join(n.run, "agent.log"))
	if err != nil {
		return nil, err
	}
	defer tail.f.Close()
	rev := st.Revision
	if local+cluster > 0 {
		t0 := time.Now()
		if err := writeAtomic(filepath.Join(n.src, "synthetic-pods.yaml"), []byte(syntheticPodsYAML(local, cluster))); err != nil {
			return nil, err
		}
		if rev, _, err = tail.waitRevision(st.Revision, 3*time.Minute); err != nil {
			return nil, err
		}
		r.InitialImplMs = float64(time.Since(t0).Microseconds()) / 1e3
		time.Sleep(3 * time.Second)
		r.RawRSSAfterKiB = procRSSKiB(agentPID)
		r.HeapAfterBytes, r.AgentRSSAfterKiB = agentMemory(n, agentPID)
		r.RSSPerPodBytes = float64(r.AgentRSSAfterKiB-r.AgentRSSBeforeKiB) * 1024 / float64(local+cluster)
		if r.HeapBeforeBytes > 0 && r.HeapAfterBytes > 0 {
			r.HeapPerPodBytes = (float64(r.HeapAfterBytes) - float64(r.HeapBeforeBytes)) / float64(local+cluster)
		}
		saveAgentHeap(n, out, fmt.Sprintf("agent-heap-%d+%d.pprof", local, cluster))
	}
	if st, err := n.status(); err == nil {
		r.Identities = len(st.Identities)
		r.Endpoints = len(st.Endpoints)
	}
	var e2e, took []time.Duration
	split := map[string][]float64{}
	deadline := time.Now().Add(budget)
	cpu0 := procCPU(agentPID)
	for i := 0; i < changes && (i == 0 || time.Now().Before(deadline)) && ctx.Err() == nil; i++ {
		// Stagger the writes (the folder source's 100 ms polling is only its
		// fallback when inotify fails).
		time.Sleep(time.Duration(100+(i*37)%300) * time.Millisecond)
		t0 := time.Now()
		if err := writeAtomic(filepath.Join(n.src, "policy.yaml"), []byte(policyYAML(true, 100, fmt.Sprintf("/api/v1/cp%d/[a-z]+", i)))); err != nil {
			return nil, err
		}
		nrev, tk, err := tail.waitRevision(rev, 2*time.Minute)
		if err != nil {
			return nil, err
		}
		e2e = append(e2e, time.Since(t0))
		took = append(took, tk)
		if len(tail.split) >= splitBase {
			split["source"] = append(split["source"], float64(e2e[len(e2e)-1].Microseconds())/1e3-tail.split[0])
			for j, v := range tail.split {
				split[splitNames[j]] = append(split[splitNames[j]], v)
			}
		}
		rev = nrev
	}
	if len(e2e) > 0 {
		r.AgentCPUPerChangeMs = (procCPU(agentPID) - cpu0) * 1e3 / float64(len(e2e))
	}
	slices.Sort(e2e)
	slices.Sort(took)
	r.Changes = len(e2e)
	r.E2EP50ms, r.E2EP99ms = percentile(e2e, 50)/1e3, percentile(e2e, 99)/1e3
	r.TookP50ms, r.TookP99ms = percentile(took, 50)/1e3, percentile(took, 99)/1e3
	for name, v := range split {
		slices.Sort(v)
		if r.Split == nil {
			r.Split = map[string][2]float64{}
		}
		r.Split[name] = [2]float64{v[(len(v)-1)/2], v[(len(v)-1)*99/100]}
	}
	// Back to the plain scenario.
	if local+cluster > 0 {
		os.Remove(filepath.Join(n.src, "synthetic-pods.yaml"))
		_, err = n.waitImplemented(rev, 3*time.Minute)
	}
	return r, err
}
