//go:build !l7gate_proxyonly

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/l7gate/l7gate/policy"
)

func (a *app) policyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Validate policies, trace flows against them, suggest policies from observed flows",
	}
	cmd.AddCommand(a.policyValidateCommand(), a.policyTraceCommand(), a.policySuggestCommand())
	return cmd
}

// loadObjects loads -f paths and prints warnings; errors are returned.
func (a *app) loadObjects(paths []string) (*policy.Objects, []error) {
	objs, errs := policy.Load(paths...)
	for _, w := range objs.Warnings {
		fmt.Fprintln(a.stderr, "warning:", w.String())
	}
	return objs, errs
}

func (a *app) policyValidateCommand() *cobra.Command {
	var files []string
	cmd := &cobra.Command{
		Use:   "validate -f PATH...",
		Short: "Check policy, pod and namespace objects and summarise them",
		Long: `validate decodes every object in the given files and folders (folders are read
recursively for *.yaml, *.yml and *.json; a file may hold several documents)
and checks CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy,
NetworkPolicy, Pod and Namespace objects.

It prints one summary line per valid object. Warnings (unknown kinds skipped,
fields l7gate does not enforce, allows that lift other rules' L7 rules) go
to stderr. Every invalid object is reported with its file, kind/namespace/
name and field path, and with what l7gate enforces in its place: an invalid
policy whose endpointSelector decodes holds the endpoints it selects in
default-deny in the directions it names; the agent keeps the last valid
version of an object whose update is invalid.

Exit status: 0 when every object is valid, 2 when any is not (or on bad
arguments).`,
		Example: `  l7gate policy validate -f examples/starwars
  l7gate policy validate -f policy.yaml -f pods/`,
		RunE: func(cmd *cobra.Command, args []string) error {
			files = append(files, args...)
			if len(files) == 0 {
				return usageErrorf("give at least one file or folder with -f")
			}
			objs, errs := a.loadObjects(files)
			for _, s := range objs.Summaries {
				fmt.Fprintln(a.stdout, s)
			}
			// What only the computed policy shows: rules that lift other
			// rules' L7 rules, named ports that resolve nowhere, ...
			snap, err := policy.Compute(objs, policy.NewIdentityAllocator())
			if err != nil {
				errs = append(errs, fmt.Errorf("compute: %w", err))
			} else {
				for _, w := range snap.Warnings {
					fmt.Fprintln(a.stderr, "warning:", w)
				}
			}
			for _, w := range policy.ShadowWarnings(objs, snap) {
				fmt.Fprintln(a.stderr, "warning:", w.String())
			}
			if len(errs) > 0 {
				for _, err := range errs {
					fmt.Fprintln(a.stderr, "error:", strings.ReplaceAll(err.Error(), "\n", "\n  "))
				}
				return &exitError{code: 2, err: fmt.Errorf("%d invalid object(s), %d valid", len(errs), len(objs.Summaries))}
			}
			fmt.Fprintf(a.stdout, "%d object(s) valid\n", len(objs.Summaries))
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "file or folder of Kubernetes YAML/JSON (repeatable)")
	return cmd
}

type traceFlags struct {
	files                               []string
	srcLabels, srcNS, srcCIDR, srcEnt   string
	dstLabels, dstNS, dstCIDR, dstEnt   string
	dstService, family                  string
	dport                               int
	protocol                            string
	httpMethod, httpPath, httpHost      string
	httpHeaders                         []string
	httpEscapedSlashes                  string
	kafkaKey, kafkaVersion, kafkaClient string
	kafkaTopics                         []string
	output                              string
	allowLocalhost                      string
	auditMode                           bool
	apiServers                          []string
	dnsName, dstFQDN, fqdnCache         string
	protocolSet                         bool
}

func (a *app) policyTraceCommand() *cobra.Command {
	var f traceFlags
	cmd := &cobra.Command{
		Use:   "trace -f PATH... SOURCE DESTINATION --dport N [L7 request]",
		Short: "Show whether a flow (and an HTTP or Kafka request) is allowed, and which rule decided",
		Long: `trace evaluates one flow against the policies in the given files: the sender's
egress policy and the receiver's ingress policy, at L3/L4 and, when you
describe a request, at L7 (HTTP or Kafka rules on a redirected port).

The source and the destination are each one of:
  --src-labels k=v,...  [--src-namespace NS]   a pod with these labels (default namespace "default")
  --src-cidr IP                                  an address: a pod's IP among the inputs is that pod,
                                                 any other address is world or a CIDR identity
  --src-entity NAME                              world, host, remote-node, kube-apiserver, init,
                                                 health, unmanaged or ingress
(and the same with --dst-). Namespace labels come from Namespace objects in
the inputs. A destination may also be a Service:
  --dst-service NS/NAME                          --dport is the Service's port; the flow is traced
                                                 to every backend it resolves to (its EndpointSlices,
                                                 or for a Service with a selector and no slice in the
                                                 inputs, the pods it selects), as the socket load
                                                 balancer sends connections there
  --dst-service NS/NAME --family ipv4|ipv6       a dual-stack Service through its ClusterIP of that
                                                 family, to its backends' addresses of that family
                                                 (default: its first ClusterIP, IPv4 before IPv6)
  --dst-cidr CLUSTERIP                           a Service's ClusterIP (IPv4 or IPv6) with one of its
                                                 ports is traced as that Service (the same as
                                                 --dst-service with the ClusterIP's family; a warning
                                                 says so); with a port the Service lacks, as the
                                                 address itself (not load-balanced)

Invalid objects are reported and traced as the agent enforces them: an
invalid policy whose endpointSelector decodes holds the endpoints it selects
in default-deny (fail closed).

Exit status: 0 when the trace ran, whatever the verdict; 2 on bad input.`,
		Example: `  l7gate policy trace -f examples/starwars \
    --src-labels org=empire,class=tiefighter --dst-labels org=empire,class=deathstar \
    --dport 80 --http-method POST --http-path /v1/request-landing

  l7gate policy trace -f kafka-policy.yaml --src-labels app=empire-hq --dst-labels app=kafka \
    --dport 9092 --kafka-api-key produce --kafka-topic deathstar-plans -o json

  # rules.dns: may the pod resolve this name through kube-dns? (UDP/53 by default)
  l7gate policy trace -f dns-policy.yaml --src-labels app=app \
    --dst-labels k8s-app=kube-dns --dst-namespace kube-system --dns-name api.github.com

  # toFQDNs: may the pod connect to this name, given the names the DNS proxy has seen?
  l7gate policy trace -f dns-policy.yaml --src-labels app=app --dst-fqdn api.github.com \
    --dport 443 --fqdn-cache fqdn-cache.json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			f.files = append(f.files, args...)
			f.protocolSet = cmd.Flags().Changed("protocol")
			return a.runTrace(&f)
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVarP(&f.files, "filename", "f", nil, "file or folder of Kubernetes YAML/JSON (repeatable)")
	fl.StringVar(&f.srcLabels, "src-labels", "", "source pod labels, k=v,...")
	fl.StringVar(&f.srcNS, "src-namespace", "", "source pod namespace (default \"default\")")
	fl.StringVar(&f.srcCIDR, "src-cidr", "", "source IP address")
	fl.StringVar(&f.srcEnt, "src-entity", "", "source entity (world, host, remote-node, kube-apiserver, ...)")
	fl.StringVar(&f.dstLabels, "dst-labels", "", "destination pod labels, k=v,...")
	fl.StringVar(&f.dstNS, "dst-namespace", "", "destination pod namespace (default \"default\")")
	fl.StringVar(&f.dstCIDR, "dst-cidr", "", "destination IP address")
	fl.StringVar(&f.dstEnt, "dst-entity", "", "destination entity")
	fl.StringVar(&f.dstService, "dst-service", "", "destination Service, namespace/name: the flow is traced to each backend its port --dport resolves to (socket load balancing)")
	fl.StringVar(&f.family, "family", "", "with --dst-service: trace through the Service's ClusterIP of this family, ipv4 or ipv6 (default: its first)")
	fl.IntVar(&f.dport, "dport", -1, "destination port (required)")
	fl.StringVar(&f.protocol, "protocol", "TCP", "L4 protocol: TCP, UDP or SCTP")
	fl.StringVar(&f.httpMethod, "http-method", "", "HTTP request method, e.g. GET")
	fl.StringVar(&f.httpPath, "http-path", "", "HTTP request path (and query), e.g. /v1/request-landing")
	fl.StringVar(&f.httpHost, "http-host", "", "HTTP Host header")
	fl.StringArrayVar(&f.httpHeaders, "http-header", nil, "HTTP header 'Name: value' (repeatable)")
	fl.StringVar(&f.httpEscapedSlashes, "http-escaped-slashes", "reject", "as the proxy's flag: paths with %2F or %5C are rejected, kept or unescaped")
	fl.StringVar(&f.kafkaKey, "kafka-api-key", "", "Kafka API key name or number, e.g. produce or 0")
	fl.StringVar(&f.kafkaVersion, "kafka-api-version", "", "Kafka API version (default 0)")
	fl.StringVar(&f.kafkaClient, "kafka-client-id", "", "Kafka client id")
	fl.StringArrayVar(&f.kafkaTopics, "kafka-topic", nil, "Kafka topic named by the request (repeatable)")
	fl.StringVarP(&f.output, "output", "o", "text", "output format: text or json")
	fl.BoolVar(&f.auditMode, "policy-audit-mode", false, "evaluate as an agent with --policy-audit-mode: every policy in audit mode (per policy or namespace: the annotation l7gate.io/audit: \"true\" in the files)")
	fl.StringVar(&f.allowLocalhost, "allow-localhost", "always", "always: the host (kubelet probes) reaches every endpoint, as the agent does by default; policy: the host is a peer like any other")
	fl.StringVar(&f.dnsName, "dns-name", "", "DNS query name, evaluated against rules.dns (default --protocol UDP, --dport 53)")
	fl.StringVar(&f.dstFQDN, "dst-fqdn", "", "destination DNS name, resolved through --fqdn-cache for toFQDNs (instead of --dst-*)")
	fl.StringVar(&f.fqdnCache, "fqdn-cache", "", "FQDN cache file (the DNS proxy's state file, or a YAML/JSON list of {name, ips}); without it no name is cached")
	fl.StringArrayVar(&f.apiServers, "kube-apiserver", nil, "address of the kube-apiserver entity (repeatable; besides a default/kubernetes EndpointSlice among the inputs)")
	return cmd
}

func tracePeer(labels, ns, cidr, entity, side string) (policy.TracePeer, error) {
	var p policy.TracePeer
	n := 0
	if labels != "" {
		n++
		ls, err := policy.ParseLabels(labels)
		if err != nil {
			return p, usageErrorf("--%s-labels: %v", side, err)
		}
		p.Labels, p.Namespace = ls, ns
	}
	if cidr != "" {
		n++
		s := cidr
		if i := strings.IndexByte(s, '/'); i >= 0 {
			if s[i:] != "/32" && s[i:] != "/128" {
				return p, usageErrorf("--%s-cidr: give one address, not a range: %q", side, cidr)
			}
			s = s[:i]
		}
		addr, err := netip.ParseAddr(s)
		if err != nil {
			return p, usageErrorf("--%s-cidr: invalid address %q", side, cidr)
		}
		p.Addr = addr
	}
	if entity != "" {
		n++
		p.Entity = entity
	}
	if n != 1 {
		return p, usageErrorf("give exactly one of --%[1]s-labels, --%[1]s-cidr or --%[1]s-entity", side)
	}
	if ns != "" && labels == "" {
		return p, usageErrorf("--%s-namespace needs --%s-labels", side, side)
	}
	return p, nil
}

func (a *app) runTrace(f *traceFlags) error {
	if len(f.files) == 0 {
		return usageErrorf("give at least one file or folder with -f")
	}
	if f.output != "text" && f.output != "json" {
		return usageErrorf("-o: want text or json, not %q", f.output)
	}
	if f.dport < 0 && f.dnsName != "" {
		f.dport = 53
	}
	if f.dport < 0 || f.dport > 65535 {
		return usageErrorf("--dport: give the destination port (0-65535)")
	}
	req := policy.TraceRequest{DPort: uint16(f.dport), Options: policy.Options{AuditMode: f.auditMode}}
	var err error
	if req.Options.AllowLocalhost, err = policy.ParseLocalhostMode(f.allowLocalhost); err != nil {
		return usageErrorf("--%v", err)
	}
	for _, s := range f.apiServers {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return usageErrorf("--kube-apiserver: invalid address %q", s)
		}
		req.Options.KubeAPIServer = append(req.Options.KubeAPIServer, a)
	}
	if req.Src, err = tracePeer(f.srcLabels, f.srcNS, f.srcCIDR, f.srcEnt, "src"); err != nil {
		return err
	}
	if f.family != "" && f.dstService == "" {
		return usageErrorf("--family needs --dst-service (an address is traced in its own family)")
	}
	if f.dstFQDN != "" {
		if f.dstLabels != "" || f.dstCIDR != "" || f.dstEnt != "" || f.dstNS != "" || f.dstService != "" {
			return usageErrorf("give --dst-fqdn or --dst-*, not both")
		}
		req.DstFQDN = f.dstFQDN
	} else if f.dstService != "" {
		if f.dstLabels != "" || f.dstNS != "" || f.dstCIDR != "" || f.dstEnt != "" {
			return usageErrorf("--dst-service: give no other --dst- flag")
		}
		req.Dst = policy.TracePeer{Service: f.dstService}
		switch strings.ToLower(f.family) {
		case "":
		case "ipv4":
			req.Dst.Family = "IPv4"
		case "ipv6":
			req.Dst.Family = "IPv6"
		default:
			return usageErrorf("--family: want ipv4 or ipv6, not %q", f.family)
		}
	} else if req.Dst, err = tracePeer(f.dstLabels, f.dstNS, f.dstCIDR, f.dstEnt, "dst"); err != nil {
		return err
	}
	if f.fqdnCache != "" {
		cache, err := loadFQDNCache(f.fqdnCache)
		if err != nil {
			return usageErrorf("--fqdn-cache: %v", err)
		}
		req.Options.FQDNCache = cache
	}
	if f.dnsName != "" && !f.protocolSet {
		f.protocol = "UDP"
	}
	if req.Protocol, err = policy.ParseProtocol(f.protocol); err != nil || req.Protocol == policy.ProtoAny {
		return usageErrorf("--protocol: want TCP, UDP or SCTP, not %q", f.protocol)
	}
	req.DNSName = f.dnsName
	if f.httpMethod != "" || f.httpPath != "" || f.httpHost != "" || len(f.httpHeaders) > 0 {
		h := &policy.HTTPRequest{Method: f.httpMethod, Path: f.httpPath, Host: f.httpHost}
		if h.Method == "" {
			h.Method = "GET"
		}
		if h.Path == "" {
			h.Path = "/"
		}
		for _, hv := range f.httpHeaders {
			name, val, ok := strings.Cut(hv, ":")
			if !ok || strings.TrimSpace(name) == "" {
				return usageErrorf("--http-header: want 'Name: value', not %q", hv)
			}
			h.Headers = append(h.Headers, policy.HTTPHeader{Name: strings.TrimSpace(name), Value: strings.TrimSpace(val)})
		}
		req.HTTP = h
	}
	var pathNote string
	if req.HTTP != nil {
		// The proxy matches (and forwards) the normalized path: trace it.
		slashes, err := policy.ParseEscapedSlashAction(f.httpEscapedSlashes)
		if err != nil {
			return usageErrorf("--http-escaped-slashes: %v", err)
		}
		norm, err := policy.NormalizeRequestTarget(req.HTTP.Path, slashes)
		if err != nil {
			return a.printRejectedTarget(f.output, req.HTTP.Path, err)
		}
		if norm != req.HTTP.Path {
			pathNote = fmt.Sprintf("HTTP path %q is matched as %q (the proxy normalizes paths before matching)", req.HTTP.Path, norm)
		}
		req.HTTP.Path = norm
	}
	if f.dnsName != "" && (req.HTTP != nil || f.kafkaKey != "") {
		return usageErrorf("give --dns-name or --http-*/--kafka-* flags, not both")
	}
	if f.kafkaKey != "" || f.kafkaVersion != "" || f.kafkaClient != "" || len(f.kafkaTopics) > 0 {
		if req.HTTP != nil {
			return usageErrorf("give either --http-* or --kafka-* flags, not both")
		}
		if f.kafkaKey == "" {
			return usageErrorf("--kafka-api-key is required with --kafka-* flags")
		}
		k := &policy.KafkaRequest{ClientID: f.kafkaClient, Topics: f.kafkaTopics}
		if k.APIKey, err = policy.ParseKafkaAPIKey(f.kafkaKey); err != nil {
			return usageErrorf("--kafka-api-key: %v", err)
		}
		if f.kafkaVersion != "" {
			v, err := strconv.ParseInt(f.kafkaVersion, 10, 16)
			if err != nil || v < 0 {
				return usageErrorf("--kafka-api-version: want a non-negative integer, not %q", f.kafkaVersion)
			}
			k.APIVersion = int16(v)
		}
		req.Kafka = k
	}
	objs, errs := a.loadObjects(f.files)
	if len(errs) > 0 {
		// Traced as the agent enforces them: an invalid policy holds the
		// endpoints it selects in default-deny (fail closed).
		for _, err := range errs {
			fmt.Fprintln(a.stderr, "error:", strings.ReplaceAll(err.Error(), "\n", "\n  "))
		}
		fmt.Fprintf(a.stderr, "note: %d invalid object(s) are traced as l7gate enforces them (see each error)\n", len(errs))
	}
	// As the folder source does: Services with a selector and no
	// EndpointSlice get the pods they select.
	objs.DeriveEndpointSlices()
	res, err := policy.Trace(objs, req)
	if err != nil {
		return usageErrorf("%v", err)
	}
	if pathNote != "" {
		res.Warnings = append(res.Warnings, pathNote)
	}
	if f.output == "json" {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	printTrace(a.stdout, res)
	return nil
}

// printRejectedTarget reports a request the L7 proxy refuses (400) before
// any policy sees it.
func (a *app) printRejectedTarget(output, path string, err error) error {
	if output == "json" {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(struct {
			Verdict  policy.Decision `json:"verdict"`
			Rejected string          `json:"rejected"`
		}{policy.DecisionDenied, fmt.Sprintf("400 Bad Request: %v", err)})
	}
	fmt.Fprintf(a.stdout, "Verdict: %s\nHTTP path %q: the L7 proxy answers 400 Bad Request before any policy: %v\n", strings.ToUpper(string(policy.DecisionDenied)), path, err)
	return nil
}

func partyString(p policy.TraceParty) string {
	kind := "not a local endpoint"
	if p.Endpoint {
		kind = "endpoint"
	}
	return fmt.Sprintf("identity %s (%s) [%s]", p.Identity, strings.Join(p.Labels, ", "), kind)
}

func printTrace(w io.Writer, r *policy.TraceResult) {
	fmt.Fprintf(w, "Verdict: %s\n", strings.ToUpper(string(r.Verdict)))
	if r.Verdict == policy.DecisionAudit {
		fmt.Fprintln(w, "  forwarded: the decisive policy is in audit mode; enforced, it would deny this flow (flows record it with verdict AUDIT)")
	}
	if s := r.Service; s != nil {
		fmt.Fprintf(w, "Service: %s %s/%s (%s), %d backend(s)\n", s.Service, s.Frontend, r.Protocol, s.State, len(s.Backends))
		for _, b := range s.Backends {
			pod := b.Pod
			if pod == "" {
				pod = "-"
			}
			fmt.Fprintf(w, "  backend %s (pod %s, identity %s): %s\n", b.Backend, pod, b.Destination.Identity, b.Verdict)
		}
		if s.Note != "" {
			fmt.Fprintf(w, "  note: %s\n", s.Note)
		}
		if len(s.Backends) == 0 {
			return
		}
		fmt.Fprintln(w, "Below: the first denied backend, else the first one.")
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "Flow:    %s/%d\n", r.Protocol, r.DPort)
	fmt.Fprintf(w, "Source:      %s\n", partyString(r.Source))
	fmt.Fprintf(w, "Destination: %s\n", partyString(r.Destination))
	if q := r.FQDN; q != nil {
		fmt.Fprintf(w, "FQDN:        %s: %s\n", q.Name, q.Note)
		if len(q.IPs) > 0 {
			ips := make([]string, len(q.IPs))
			for i, ip := range q.IPs {
				ips[i] = ip.String()
			}
			fmt.Fprintf(w, "  cached addresses: %s\n", strings.Join(ips, ", "))
		}
		for _, s := range q.Selectors {
			fmt.Fprintf(w, "  selected by toFQDNs: %s\n", s)
		}
		if len(q.Selectors) == 0 {
			fmt.Fprintln(w, "  no toFQDNs selector matches this name")
		}
	}
	for _, d := range []struct {
		name string
		t    policy.DirectionTrace
		who  string
	}{{"Egress", r.Egress, "source"}, {"Ingress", r.Ingress, "destination"}} {
		fmt.Fprintf(w, "\n%s (policy of the %s): %s\n", d.name, d.who, d.t.Verdict)
		switch {
		case !d.t.Applies:
			fmt.Fprintf(w, "  the %s is not a local endpoint: no policy applies\n", d.who)
			continue
		case !d.t.Enforced && len(d.t.DecidedBy) == 0 && d.t.L7 == nil:
			fmt.Fprintf(w, "  no policy selects the %s in this direction: not enforced\n", d.who)
			continue
		}
		fmt.Fprintf(w, "  L3/L4: %s\n", d.t.L4)
		if l7 := d.t.L7; l7 != nil {
			if l7.Evaluated {
				fmt.Fprintf(w, "  L7 (%s): %s\n", l7.Parser, l7.Verdict)
				if len(l7.DeniedTopics) > 0 {
					fmt.Fprintf(w, "  denied topics: %s\n", strings.Join(l7.DeniedTopics, ", "))
				}
			} else {
				fmt.Fprintf(w, "  L7 (%s): not evaluated\n", l7.Parser)
			}
			if l7.Note != "" {
				fmt.Fprintf(w, "  note: %s\n", l7.Note)
			}
		}
		for _, p := range d.t.DecidedBy {
			fmt.Fprintf(w, "  decided by: %s\n", p)
		}
		if l7 := d.t.L7; l7 != nil {
			for _, p := range l7.Shadowed {
				fmt.Fprintf(w, "  shadows (not checked for this peer): %s\n", p)
			}
		}
	}
	if len(r.Warnings) > 0 {
		fmt.Fprintln(w)
		for _, s := range r.Warnings {
			fmt.Fprintf(w, "warning: %s\n", s)
		}
	}
}

// loadFQDNCache reads an FQDN cache for trace: the DNS proxy's state file
// (entries live now), or a YAML or JSON list of {name, ips}.
func loadFQDNCache(path string) (policy.FQDNCache, error) {
	if c, err := fqdnCacheFromFile(path); err == nil {
		return c, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cache policy.StaticFQDNCache
	if err := yaml.Unmarshal(b, &cache); err != nil {
		return nil, fmt.Errorf("%s: neither a saved FQDN cache nor a list of {name, ips}: %w", path, err)
	}
	return cache, nil
}
