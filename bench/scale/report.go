package scale

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Report is bench/results/scale-<time>.json.
type Report struct {
	Time string `json:"time"`
	// Label says which code was measured (e.g. the commit).
	Label string    `json:"label,omitempty"`
	CPUs  int       `json:"cpus"`
	Runs  []*Result `json:"runs"`
}

// Write writes scale-<time>.json and .md into dir and returns the
// Markdown path.
func (r *Report) Write(dir string) (string, error) {
	stamp := strings.ReplaceAll(r.Time, ":", "")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	base := filepath.Join(dir, "scale-"+stamp)
	if err := os.WriteFile(base+".json", append(js, '\n'), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(base+".md", []byte(r.Markdown()), 0o644); err != nil {
		return "", err
	}
	return base + ".md", nil
}

func newReport(label string, cpus int) *Report {
	return &Report{Time: time.Now().UTC().Format("2006-01-02T150405Z"), Label: label, CPUs: cpus}
}

// Markdown renders the report's tables.
func (r *Report) Markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# make scale — %s\n\n", r.Time)
	if r.Label != "" {
		fmt.Fprintf(&b, "Code: %s. ", r.Label)
	}
	fmt.Fprintf(&b, "%d CPUs shared with other work: times are noisy (load average per run below); the counts are not.\n\n", r.CPUs)
	b.WriteString("## Policy changes\n\n")
	b.WriteString("| N | P | converge p50 / p99 ms | implemented p50 / p99 ms | every node reported p50 / p99 ms | status writes / change (node reports + policy status) | writes / node | 409s (total) | failed writes / change | GETs / change | watch KB / agent / change | agent CPU ms / change | apiserver CPU ms / change | timed out |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, x := range r.Runs {
		fmt.Fprintf(&b, "| %d | %d | %.0f / %.0f | %.0f / %.0f | %.0f / %.0f | %.1f (%.1f + %.1f) | %.2f | %.0f | %.1f | %.1f | %.1f | %.1f | %.0f | %d |\n",
			x.Nodes, x.Pods, x.ConvergeP50Ms, x.ConvergeP99Ms, x.ImplementP50Ms, x.ImplementP99Ms, x.ReportedP50Ms, x.ReportedP99Ms, x.Writes, x.NodeStatusWrites, x.PolicyStatusWrites, x.WritesPerNode,
			x.Conflicts, x.Retries, x.Gets, x.WatchBytesPerPolicyChange/1024, x.AgentCPUMsPerPolicyChange, x.APIServerCPUMsPerPolicyChange, x.TimedOut)
	}
	b.WriteString("\n## Pod changes\n\n")
	b.WriteString("| N | P | converge p50 / p99 ms | watch bytes / agent / change (full agents only) | watch events / agent / change | wire bytes / agent / change | pod object bytes | agent writes | agent CPU ms / change | apiserver CPU ms / change |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, x := range r.Runs {
		fmt.Fprintf(&b, "| %d | %d | %.0f / %.0f | %.0f (%.0f) | %.2f | %.0f | %d | %d | %.1f | %.0f |\n",
			x.Nodes, x.Pods, x.PodConvergeP50Ms, x.PodConvergeP99Ms, x.WatchBytesPerPodChange, x.FullWatchBytesPerPodChange, x.WatchEventsPerPodChange,
			x.WireBytesPerPodChange, x.PodObjectBytes, x.WritesDuringPodChanges, x.AgentCPUMsPerPodChange, x.APIServerCPUMsPerPodChange)
	}
	b.WriteString("\n## Start-up and per agent\n\n")
	b.WriteString("| N | P | full agents (rest light) | status nodes limit | nodes in status.nodes | policy object bytes | first view s | status on every node s | status writes | 409s (on status writes) | agents' process RSS MiB | RSS MiB / agent | heap MiB / agent | one policy computation ms | shared computation | load average (start, after policies, after pods) | run s |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|\n")
	for _, x := range r.Runs {
		fmt.Fprintf(&b, "| %d | %d | %d | %d | %d | %d | %.1f | %.1f | %.0f | %.0f (%.0f) | %.0f | %.1f | %.1f | %.0f | %v | %s | %.0f |\n",
			x.Nodes, x.Pods, x.FullAgents, x.StatusNodesLimit, x.StatusNodesListed, x.PolicyObjectBytes, x.StartupSyncS, x.StartupStatusS, x.StartupWrites, x.StartupConflicts, x.StartupStatusConflicts, x.AgentsRSSMiB, x.AgentRSSMiB, x.AgentHeapMiB,
			x.ComputeMs, x.SharedCompute, strings.Join(x.LoadAvg, "; "), x.DurationS)
	}
	b.WriteString("\n## What the API server sent to watchers per policy change (apiserver_watch_events_total / _sizes)\n\n")
	b.WriteString("| N | P | events (all watchers) | KiB (all watchers) | by resource: events / KiB | node report bytes (of it managedFields) |\n")
	b.WriteString("|---:|---:|---:|---:|---|---:|\n")
	for _, x := range r.Runs {
		var ev, kib float64
		var parts []string
		for _, k := range sortedByValue(x.APIServerWatchEventsPerPolicyChange) {
			ev += x.APIServerWatchEventsPerPolicyChange[k]
			kib += x.APIServerWatchKiBPerPolicyChange[k]
			if x.APIServerWatchEventsPerPolicyChange[k] >= 0.5 { // (bookmarks aside)
				parts = append(parts, fmt.Sprintf("%s %.1f / %.1f", k, x.APIServerWatchEventsPerPolicyChange[k], x.APIServerWatchKiBPerPolicyChange[k]))
			}
		}
		fmt.Fprintf(&b, "| %d | %d | %.1f | %.1f | %s | %d (%d) |\n", x.Nodes, x.Pods, ev, kib, strings.Join(parts, ", "), x.NodeReportBytes, x.NodeReportManagedFieldsBytes)
	}
	b.WriteString("\n## API requests per policy change (apiserver_request_total)\n\n")
	for _, x := range r.Runs {
		fmt.Fprintf(&b, "N = %d: ", x.Nodes)
		var parts []string
		for _, k := range sortedByValue(x.RequestsPerPolicyChange) {
			if x.RequestsPerPolicyChange[k] >= 0.05 {
				parts = append(parts, fmt.Sprintf("`%s` %.1f", k, x.RequestsPerPolicyChange[k]))
			}
		}
		b.WriteString(strings.Join(parts, ", "))
		b.WriteString("\n\n")
	}
	for _, x := range r.Runs {
		for _, e := range x.Errors {
			fmt.Fprintf(&b, "- N = %d: %s\n", x.Nodes, e)
		}
	}
	return b.String()
}

func sortedByValue(m map[string]float64) []string {
	t := requestTotals{}
	keys := map[requestKey]string{}
	for k, v := range m {
		rk := requestKey{Verb: k}
		t[rk] = v
		keys[rk] = k
	}
	var out []string
	for _, k := range t.sortedKeys() {
		out = append(out, keys[k])
	}
	return out
}
