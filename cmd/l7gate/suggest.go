//go:build !l7gate_proxyonly

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/suggest"
)

type suggestFlags struct {
	files         []string
	flowFiles     []string
	runDir        string
	since, until  string
	window        time.Duration
	namespace     string
	workload      string
	egress        bool
	includeDenied bool
	outDir        string
	diff          string
}

func (a *app) policySuggestCommand() *cobra.Command {
	var f suggestFlags
	cmd := &cobra.Command{
		Use:   "suggest -f OBJECTS... (--flows FILE... | --run-dir DIR) [-o DIR] [--diff POLICY]",
		Short: "Write least-privilege CiliumNetworkPolicies from observed flows, or show what a policy would newly deny",
		Long: `suggest reads observed flows and writes one CiliumNetworkPolicy per workload
that allows exactly what was observed, rule by rule, with YAML comments saying
how many flows each rule covers.

Flows are flow records as JSON lines: the agent's datapath flows
("l7gate observe -o json") and the proxy's access log (RUN_DIR/proxy.log;
its own log lines are skipped), from --flows files ("-" is stdin) or read
live from a running agent with --run-dir (its flow buffer and proxy.log).
-f gives the cluster objects (Pods and Namespaces, as "policy validate"
reads them) that map addresses to workloads and labels; policies among them
are ignored.

What a suggestion holds:
  - A workload is the pods of a namespace with the same stable labels; a
    policy selects it by them. Stable: every label but the per-replica and
    per-revision ones (pod-template-hash, controller-revision-hash,
    statefulset.kubernetes.io/pod-name, ...). Pod names never select.
  - One ingress rule per peer and port (and with --egress, egress rules):
    a pod peer by its stable labels (with its namespace when it is not the
    policy's), a reserved identity as an entity (host, remote-node, ...),
    any other address as a /32.
  - L7 rules where the proxy recorded requests: HTTP method and path, the
    path a regular expression (anchored, as policy paths are) with numeric
    segments as [0-9]+ and UUID segments as a UUID pattern; gRPC is HTTP
    POST /package.Service/Method; Kafka role (produce, consume) or API key
    per topic.
  - Fail closed: only traffic that went through (verdict allowed, or audit)
    becomes an allow (--include-denied adds denied flows); a connection
    the datapath handed to the proxy becomes a rule only through the
    requests the proxy recorded on it. Records that cannot be placed are
    skipped and counted on stderr.

--diff POLICY evaluates the same flows against the policies in POLICY (a
file or folder, with the Pods and Namespaces of -f) as "policy trace" does,
and lists each observed flow that policy would deny, with the rule that
would decide. Nothing is suggested then.

Output: the policies on stdout as one YAML stream, or with -o DIR one file
per policy (DIR/NAMESPACE.NAME.yaml). Apply a suggestion in audit mode
first and check it with --diff against fresh traffic.

Exit status: 0 on success (with --diff: nothing would be denied); 1 when
--diff finds flows the policy would deny; 2 on bad input.`,
		Example: `  l7gate observe -o json > flows.jsonl
  l7gate policy suggest -f objects/ --flows flows.jsonl --flows /run/l7gate/proxy.log

  l7gate policy suggest -f objects/ --run-dir /run/l7gate --namespace default --window 1h -o suggested/

  l7gate policy suggest -f objects/ --flows flows.jsonl --diff policies/`,
		RunE: func(cmd *cobra.Command, args []string) error {
			f.files = append(f.files, args...)
			return a.runSuggest(cmd.Context(), &f)
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVarP(&f.files, "filename", "f", nil, "file or folder of Kubernetes YAML/JSON with the Pods and Namespaces (repeatable)")
	fl.StringArrayVar(&f.flowFiles, "flows", nil, "file of flow records as JSON lines, - for stdin (repeatable)")
	fl.StringVar(&f.runDir, "run-dir", "", "read the flows of the agent running with this run directory (its flow buffer and proxy.log)")
	fl.StringVar(&f.since, "since", "", "use flows at or after this time (RFC 3339)")
	fl.StringVar(&f.until, "until", "", "use flows before this time (RFC 3339)")
	fl.DurationVar(&f.window, "window", 0, "use the flows of this long a window ending at --until (default: the newest flow's time)")
	fl.StringVar(&f.namespace, "namespace", "", "suggest for the workloads of this namespace only")
	fl.StringVar(&f.workload, "workload", "", "suggest for this workload only (its name or NAMESPACE/NAME, as the policy names show)")
	fl.BoolVar(&f.egress, "egress", false, "suggest egress rules as well as ingress rules")
	fl.BoolVar(&f.includeDenied, "include-denied", false, "also turn denied flows into allows")
	fl.StringVarP(&f.outDir, "output-dir", "o", "", "write one file per policy into this folder instead of stdout")
	fl.StringVar(&f.diff, "diff", "", "file or folder with policies: list the observed flows they would deny")
	return cmd
}

func (a *app) runSuggest(ctx context.Context, f *suggestFlags) error {
	if len(f.files) == 0 {
		return usageErrorf("give the Pods and Namespaces with -f")
	}
	if len(f.flowFiles) == 0 && f.runDir == "" {
		return usageErrorf("give flows with --flows or --run-dir")
	}
	if f.window < 0 {
		return usageErrorf("--window: want a positive duration")
	}
	opts := suggest.Options{Namespace: f.namespace, Workload: f.workload, Egress: f.egress, IncludeDenied: f.includeDenied}
	var err error
	if opts.Since, err = parseTime("--since", f.since); err != nil {
		return err
	}
	if opts.Until, err = parseTime("--until", f.until); err != nil {
		return err
	}
	if f.window > 0 && !opts.Since.IsZero() {
		return usageErrorf("give --since or --window, not both")
	}
	objs, errs := a.loadObjects(f.files)
	for _, err := range errs {
		fmt.Fprintln(a.stderr, "error:", strings.ReplaceAll(err.Error(), "\n", "\n  "))
	}
	if len(objs.Pods) == 0 {
		return usageErrorf("-f: no Pods among the objects: suggest needs them to place addresses")
	}
	objs.Policies = nil

	recs, err := a.readFlows(ctx, f)
	if err != nil {
		return err
	}
	if f.window > 0 {
		end := opts.Until
		if end.IsZero() {
			for _, r := range recs {
				if r.Time.After(end) {
					end = r.Time
				}
			}
			end = end.Add(time.Nanosecond) // Until is exclusive
		}
		opts.Since, opts.Until = end.Add(-f.window), end
	}

	if f.diff != "" {
		return a.runSuggestDiff(f.diff, objs, recs, opts)
	}
	res, err := suggest.Suggest(objs, recs, opts)
	if err != nil {
		return err
	}
	printStats(a.stderr, "suggest", &res.Stats)
	for _, w := range res.Warnings {
		fmt.Fprintln(a.stderr, "warning:", w)
	}
	if len(res.Policies) == 0 {
		fmt.Fprintln(a.stderr, "no policy suggested: no usable flow")
		return nil
	}
	if f.outDir == "" {
		_, err := a.stdout.Write(res.YAML())
		return err
	}
	if err := os.MkdirAll(f.outDir, 0o755); err != nil {
		return fmt.Errorf("output dir: %w", err)
	}
	for _, p := range res.Policies {
		path := filepath.Join(f.outDir, p.Namespace+"."+p.Name+".yaml")
		if err := os.WriteFile(path, p.YAML, 0o644); err != nil {
			return fmt.Errorf("write policy: %w", err)
		}
		fmt.Fprintf(a.stdout, "%s (%d flows)\n", path, p.Flows)
	}
	return nil
}

func (a *app) runSuggestDiff(path string, objs *policy.Objects, recs []*flow.Record, opts suggest.Options) error {
	pols, errs := a.loadObjects([]string{path})
	if len(errs) > 0 {
		for _, err := range errs {
			fmt.Fprintln(a.stderr, "error:", strings.ReplaceAll(err.Error(), "\n", "\n  "))
		}
		return &exitError{code: 2, err: fmt.Errorf("--diff: %d invalid object(s)", len(errs))}
	}
	if len(pols.Policies) == 0 {
		return usageErrorf("--diff: no policies in %s", path)
	}
	denials, st, err := suggest.Check(objs, pols.Policies, recs, opts)
	if err != nil {
		return err
	}
	printStats(a.stderr, "diff", &st)
	for _, d := range denials {
		fmt.Fprintln(a.stdout, "would deny:", d)
	}
	if len(denials) > 0 {
		n := 0
		for _, d := range denials {
			n += d.Count
		}
		return &exitError{code: 1, err: fmt.Errorf("%d of %d observed flows would be denied", n, st.Used)}
	}
	fmt.Fprintf(a.stdout, "none of %d observed flows would be denied\n", st.Used)
	return nil
}

func printStats(w io.Writer, what string, st *suggest.Stats) {
	fmt.Fprintf(w, "%s: %d flow records read, %d used\n", what, st.Read, st.Used)
	for _, r := range st.Reasons() {
		fmt.Fprintf(w, "  skipped %s\n", r)
	}
}

func parseTime(flag, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return t, usageErrorf("%s: want an RFC 3339 time such as 2026-01-02T15:04:05Z, not %q", flag, s)
	}
	return t, nil
}

// readFlows reads the --flows files and the agent's flows (--run-dir).
func (a *app) readFlows(ctx context.Context, f *suggestFlags) ([]*flow.Record, error) {
	var recs []*flow.Record
	read := func(name string, r io.Reader) error {
		jl := suggest.NewJSONLines(r)
		got, err := suggest.ReadAll(jl)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if jl.Malformed > 0 {
			fmt.Fprintf(a.stderr, "warning: %s: %d malformed line(s) skipped, the first: %v\n", name, jl.Malformed, jl.FirstError)
		}
		recs = append(recs, got...)
		return nil
	}
	for _, name := range f.flowFiles {
		if name == "-" {
			if err := read("stdin", os.Stdin); err != nil {
				return nil, err
			}
			continue
		}
		fh, err := os.Open(name)
		if err != nil {
			return nil, usageErrorf("--flows: %v", err)
		}
		err = read(name, fh)
		fh.Close()
		if err != nil {
			return nil, err
		}
	}
	if f.runDir != "" {
		var cursor uint64
		for range 10000 {
			page, err := agentapi.FetchFlows(ctx, f.runDir, cursor)
			if err != nil {
				return nil, fmt.Errorf("agent flows: %w", err)
			}
			if len(page.Flows) == 0 || page.Cursor == cursor {
				break
			}
			cursor = page.Cursor
			for i := range page.Flows {
				recs = append(recs, &page.Flows[i])
			}
		}
		log := filepath.Join(f.runDir, "proxy.log")
		fh, err := os.Open(log)
		switch {
		case errors.Is(err, os.ErrNotExist):
			fmt.Fprintf(a.stderr, "warning: %s does not exist: no L7 requests\n", log)
		case err != nil:
			return nil, fmt.Errorf("proxy log: %w", err)
		default:
			err = read(log, fh)
			fh.Close()
			if err != nil {
				return nil, err
			}
		}
	}
	return recs, nil
}
