package demo

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/l7gate/l7gate/policy"
)

//go:embed scenarios
var builtinFS embed.FS

// BuiltinName is the name of the built-in scenario.
const BuiltinName = "starwars"

// Builtin loads the built-in Star Wars scenario.
func Builtin() (*Scenario, error) {
	sub, err := fs.Sub(builtinFS, "scenarios/"+BuiltinName)
	if err != nil {
		return nil, fmt.Errorf("builtin scenario: %w", err)
	}
	return LoadScenario(sub, "builtin:"+BuiltinName)
}

// subnet is the range every host (pod or external) must be in.
var subnet = netip.MustParsePrefix("198.18.0.0/15")

// nodeAddr is the node's address on every host-side veth; hosts route
// through it.
var nodeAddr = netip.MustParseAddr("198.18.255.254")

// subnet6 is the range a host's IPv6 address (status.podIPs) must be in.
var subnet6 = netip.MustParsePrefix("2001:db8::/32")

// nodeAddr6 is the node's IPv6 address, the IPv6 gateway of every host
// with an IPv6 address.
var nodeAddr6 = netip.MustParseAddr("2001:db8::fffe")

// NodeHost names the node itself as a check's source ("from: node"): the
// request leaves the node's network namespace from the node's address, as
// kubelet's probes do, and policy sees the host identity.
const NodeHost = "node"

// node is the node as a host (never a destination: it serves nothing).
var node = &Host{Name: NodeHost, IP: nodeAddr, IP6: nodeAddr6}

// Host is a pod or external host of a scenario.
type Host struct {
	// Name is "namespace/pod" or "external:name".
	Name string
	IP   netip.Addr
	// IP6 is a pod's IPv6 address (from status.podIPs; invalid: none).
	IP6 netip.Addr
	// Pod is nil for external hosts.
	Pod    *policy.Pod
	Serve  []Service
	Topics []string // Kafka topics the checks name, for the broker
	Zone   Zone     // a dns server's zone (DNSZoneAnnotation)
	// Service is set for a Service destination ("svc/<ns>/<name>"): IP
	// is its ClusterIP, Frontends its ports and backends (services.go).
	Service   *policy.Service
	Frontends []policy.ServiceFrontend
}

// Addr is the host's address in the family (FamilyIPv6: IP6, else IP).
func (h *Host) Addr(family Family) netip.Addr {
	if family == FamilyIPv6 {
		return h.IP6
	}
	return h.IP
}

// Serves reports whether the host runs a server of proto on port.
func (h *Host) Serves(proto Protocol, port uint16) bool {
	return slices.Contains(h.Serve, Service{Proto: proto, Port: port})
}

// File is a file of a scenario: its path in the scenario folder and content.
type File struct {
	Path string
	Data []byte
}

// Scenario is a loaded and validated scenario folder.
type Scenario struct {
	// Name is the folder as given, or builtin:<name>.
	Name        string
	Description string
	// Hosts are the pods (sorted by namespace/name), then the externals.
	Hosts []*Host
	Steps []Step
	// ObjectFiles are the files under objects/.
	ObjectFiles []File
	// Objects are the objects decoded from ObjectFiles.
	Objects *policy.Objects
	// policies[i] are the policy documents in force at step i.
	policies [][]policyDoc
	// services are the Service destinations by name (svc/<ns>/<name>).
	services map[string]*Host
}

// policyDoc is one YAML document of an applied file holding one policy.
type policyDoc struct {
	key  string // kind/namespace/name
	from string // the file it came from
	data []byte
}

// LoadScenarioDir loads a scenario folder.
func LoadScenarioDir(dir string) (*Scenario, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("scenario: %s is not a folder", dir)
	}
	return LoadScenario(os.DirFS(dir), dir)
}

// LoadScenario loads and validates a scenario from fsys: objects/ (Pods
// and Namespaces, *.yaml, *.yml, *.json, recursively) and steps.yaml.
// name prefixes the file names in errors.
func LoadScenario(fsys fs.FS, name string) (*Scenario, error) {
	sc := &Scenario{Name: name, Objects: &policy.Objects{}}
	fname := func(p string) string { return path.Join(name, p) }
	data, err := fs.ReadFile(fsys, "steps.yaml")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", fname("steps.yaml"), err)
	}
	sf, err := parseSteps(fname("steps.yaml"), data)
	if err != nil {
		return nil, err
	}
	sc.Description, sc.Steps = sf.Description, sf.Steps

	var errs []error
	err = fs.WalkDir(fsys, "objects", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != "objects" && strings.HasPrefix(d.Name(), ".") {
				return fs.SkipDir
			}
			return nil
		}
		switch strings.ToLower(path.Ext(p)) {
		case ".yaml", ".yml", ".json":
		default:
			return nil
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		sc.ObjectFiles = append(sc.ObjectFiles, File{Path: p, Data: b})
		objs, derrs := policy.Decode(fname(p), b)
		errs = append(errs, derrs...)
		errs = append(errs, sc.Objects.Merge(objs)...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", fname("objects"), err)
	}
	if len(sc.Objects.Policies) > 0 {
		errs = append(errs, fmt.Errorf("%s: objects/ holds Pods, Namespaces, Services and EndpointSlices only; policies belong in the files steps apply (found %s)", name, sc.Objects.Policies[0].Ref))
	}
	// As the folder source the agent reads: a Service with a selector and
	// no EndpointSlice gets the pods it selects.
	sc.Objects.DeriveEndpointSlices()
	if len(sc.Objects.Pods) == 0 && len(errs) == 0 {
		errs = append(errs, fmt.Errorf("%s: objects/ holds no Pod", name))
	}
	errs = append(errs, sc.hosts(sf.Externals)...)
	errs = append(errs, sc.serviceHosts()...)
	errs = append(errs, sc.resolveCheckNames(fname("steps.yaml"))...)
	errs = append(errs, sc.validateSteps(fsys, fname)...)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	sc.resolveNames()
	return sc, nil
}

// resolveCheckNames finds, for each check by name, the DNS server whose
// zone has the name (the first in host order) and the host at the zone's
// address: its A record, or for a check over IPv6 its AAAA record (the
// check asks for AAAA then).
func (sc *Scenario) resolveCheckNames(file string) []error {
	var errs []error
	for i := range sc.Steps {
		for j := range sc.Steps[i].Checks {
			c := &sc.Steps[i].Checks[j]
			if c.Name == "" {
				continue
			}
			where := fmt.Sprintf("%s: steps[%d].checks[%d].to", file, i, j)
			records := func(h *Host) map[string]netip.Addr { return h.Zone.A }
			record := ""
			if c.Family == FamilyIPv6 {
				records, record = func(h *Host) map[string]netip.Addr { return h.Zone.AAAA }, "an AAAA record of "
			}
			var server *Host
			for _, h := range sc.Hosts {
				if _, ok := records(h)[c.Name]; ok && h.Serves(ProtoDNS, 53) {
					server = h
					break
				}
			}
			if server == nil {
				errs = append(errs, fmt.Errorf("%s: no DNS server of the scenario (serve dns:53) has %s%s in its zone", where, record, strings.TrimSuffix(c.Name, ".")))
				continue
			}
			ip := records(server)[c.Name]
			i := slices.IndexFunc(sc.Hosts, func(h *Host) bool { return h.Addr(c.Family) == ip })
			if i < 0 {
				errs = append(errs, fmt.Errorf("%s: %s is %s in %s's zone, which no pod or external host has", where, strings.TrimSuffix(c.Name, "."), ip, server.Name))
				continue
			}
			c.To, c.ResolvedBy = sc.Hosts[i].Name, server.Name
		}
	}
	return errs
}

// resolveNames gives every check the names earlier DNS checks expected
// answered (from the queried server's zone): the FQDN cache the DNS proxy
// has built by then, which toFQDNs resolve through (policy.Trace too).
// Only queries the DNS proxy sees (rules.dns in force) fill the agent's
// cache: a scenario's DNS checks before any rules.dns would make the
// trace more generous than the node, so put them after.
func (sc *Scenario) resolveNames() {
	seen := map[string][]netip.Addr{}
	for i := range sc.Steps {
		for j := range sc.Steps[i].Checks {
			c := &sc.Steps[i].Checks[j]
			if c.Name != "" && c.Expect == Allowed {
				// resolved by the check itself, first
				if to := sc.Host(c.To); to != nil && !slices.Contains(seen[c.Name], to.Addr(c.Family)) {
					seen[c.Name] = append(seen[c.Name], to.Addr(c.Family))
				}
			}
			for _, n := range slices.Sorted(maps.Keys(seen)) {
				c.Resolved = append(c.Resolved, policy.FQDNName{Name: n, IPs: seen[n]})
			}
			if c.DNS == nil || c.Expect != Allowed {
				continue
			}
			n, err := policy.NormalizeDNSName(c.DNS.Name)
			to := sc.Host(c.To)
			if err != nil || to == nil {
				continue
			}
			zone := to.Zone.A
			if c.DNS.AAAA {
				zone = to.Zone.AAAA
			}
			if ip, ok := zone[n]; ok && !slices.Contains(seen[n], ip) {
				seen[n] = append(seen[n], ip)
			}
		}
	}
}

// hosts builds the host list from the pods and externals.
func (sc *Scenario) hosts(externals []External) []error {
	var errs []error
	byIP := map[netip.Addr]string{}
	add := func(h *Host, where string) {
		if other, ok := byIP[h.IP]; ok {
			errs = append(errs, fmt.Errorf("%s: address %s is also %s's", where, h.IP, other))
			return
		}
		byIP[h.IP] = h.Name
		if h.IP6.IsValid() {
			byIP[h.IP6] = h.Name
		}
		sc.Hosts = append(sc.Hosts, h)
	}
	for i := range sc.Objects.Pods {
		p := &sc.Objects.Pods[i]
		where := fmt.Sprintf("%s: Pod %s/%s", p.Ref.File, p.Namespace, p.Name)
		if p.HostNetwork {
			errs = append(errs, fmt.Errorf("%s: hostNetwork pods are not supported", where))
			continue
		}
		var ip netip.Addr
		for _, a := range p.IPs {
			if a.Is4() {
				ip = a
				break
			}
		}
		if !ip.IsValid() {
			errs = append(errs, fmt.Errorf("%s: status.podIP: missing (give an IPv4 address in %s)", where, subnet))
			continue
		}
		if err := checkHostIP(ip); err != nil {
			errs = append(errs, fmt.Errorf("%s: status.podIP: %w", where, err))
			continue
		}
		var ip6 netip.Addr
		for _, a := range p.IPs {
			if a.Is6() && !a.Is4In6() {
				ip6 = a
				break
			}
		}
		if ip6.IsValid() {
			if err := checkHostIP6(ip6); err != nil {
				errs = append(errs, fmt.Errorf("%s: status.podIPs: %w", where, err))
				continue
			}
			if other, ok := byIP[ip6]; ok {
				errs = append(errs, fmt.Errorf("%s: address %s is also %s's", where, ip6, other))
				continue
			}
		}
		h := &Host{Name: p.Namespace + "/" + p.Name, IP: ip, IP6: ip6, Pod: p}
		if s, ok := p.Annotations[ServeAnnotation]; ok {
			svc, err := ParseServe(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: metadata.annotations[%s]: %w", where, ServeAnnotation, err))
				continue
			}
			h.Serve = svc
		}
		if s, ok := p.Annotations[DNSZoneAnnotation]; ok {
			zone, err := ParseZone(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: metadata.annotations[%s]: %w", where, DNSZoneAnnotation, err))
				continue
			}
			h.Zone = zone
		}
		add(h, where)
	}
	for _, x := range externals {
		name := "external:" + x.Name
		if sc.Host(name) != nil {
			errs = append(errs, fmt.Errorf("%s: steps.yaml: externals: %s given twice", sc.Name, name))
			continue
		}
		where := fmt.Sprintf("%s: steps.yaml: externals %s", sc.Name, x.Name)
		if other, ok := byIP[x.IP6]; ok && x.IP6.IsValid() {
			errs = append(errs, fmt.Errorf("%s: address %s is also %s's", where, x.IP6, other))
			continue
		}
		add(&Host{Name: name, IP: x.IP, IP6: x.IP6, Serve: x.Serve}, where)
	}
	return errs
}

func checkHostIP(ip netip.Addr) error {
	switch {
	case !ip.Is4():
		return fmt.Errorf("%s: want an IPv4 address", ip)
	case !subnet.Contains(ip):
		return fmt.Errorf("%s is outside %s", ip, subnet)
	case ip == nodeAddr:
		return fmt.Errorf("%s is the node's address", ip)
	case ip == subnet.Addr() || ip == netip.MustParseAddr("198.19.255.255"):
		return fmt.Errorf("%s is not a host address", ip)
	}
	return nil
}

func checkHostIP6(ip netip.Addr) error {
	switch {
	case !subnet6.Contains(ip):
		return fmt.Errorf("%s is outside %s", ip, subnet6)
	case ip == nodeAddr6:
		return fmt.Errorf("%s is the node's address", ip)
	case ip == subnet6.Addr():
		return fmt.Errorf("%s is not a host address", ip)
	}
	return nil
}

// Host returns the host with the given name (NodeHost: the node), or nil.
func (sc *Scenario) Host(name string) *Host {
	if name == NodeHost {
		return node
	}
	if h, ok := sc.services[name]; ok {
		return h
	}
	for _, h := range sc.Hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// validateSteps checks apply files and checks, and computes the policies
// in force at every step.
func (sc *Scenario) validateSteps(fsys fs.FS, fname func(string) string) []error {
	var errs []error
	var current []policyDoc
	for si, st := range sc.Steps {
		where := fmt.Sprintf("%s: steps[%d]", fname("steps.yaml"), si)
		for ai, p := range st.Apply {
			docs, err := readPolicyFile(fsys, p, fname(p))
			if err != nil {
				errs = append(errs, fmt.Errorf("%s.apply[%d]: %w", where, ai, err))
				continue
			}
			for _, d := range docs {
				if i := slices.IndexFunc(current, func(c policyDoc) bool { return c.key == d.key }); i >= 0 {
					current[i] = d
				} else {
					current = append(current, d)
				}
			}
		}
		sc.policies = append(sc.policies, slices.Clone(current))
		if _, err := sc.ObjectsAt(si); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", where, err))
		}
		for ci, c := range st.Checks {
			cw := fmt.Sprintf("%s.checks[%d]", where, ci)
			from, to := sc.Host(c.From), sc.Host(c.To)
			if from == nil {
				errs = append(errs, fmt.Errorf("%s.from: no pod or external host %q", cw, c.From))
			}
			if to == nil {
				errs = append(errs, fmt.Errorf("%s.to: no pod or external host %q", cw, c.To))
			}
			if from == nil || to == nil {
				continue
			}
			if from.Service != nil {
				errs = append(errs, fmt.Errorf("%s.from: a Service is only a destination", cw))
				continue
			}
			if to.Service != nil {
				if c.Family == FamilyIPv6 && !from.IP6.IsValid() {
					errs = append(errs, fmt.Errorf("%s: family: ipv6: %s has no IPv6 address (add one to its status.podIPs)", cw, from.Name))
					continue
				}
				if c.Kafka != nil {
					errs = append(errs, fmt.Errorf("%s: Kafka checks to a Service are not supported (a client asks the broker for its own address)", cw))
				} else if err := sc.servesViaService(to, c.Protocol(), c.Port, c.Family); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", cw, err))
				}
				continue
			}
			if from == to {
				errs = append(errs, fmt.Errorf("%s: from and to are the same host (traffic would not leave it)", cw))
			}
			if to == node {
				errs = append(errs, fmt.Errorf("%s.to: the node serves nothing; it may only be a check's source (from: node)", cw))
				continue
			}
			if c.Family == FamilyIPv6 {
				if err := checkIPv6Check(c, from, to, sc.Host(c.ResolvedBy)); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", cw, err))
					continue
				}
			}
			proto := c.Protocol()
			if !to.Serves(proto, c.Port) {
				errs = append(errs, fmt.Errorf("%s: %s serves no %s on port %d (add %s:%d to its %s)", cw, c.To, proto, c.Port, proto, c.Port, serveWhere(to)))
			}
			if c.Kafka != nil && !slices.Contains(to.Topics, c.Kafka.Topic()) {
				to.Topics = append(to.Topics, c.Kafka.Topic())
			}
		}
	}
	return errs
}

// checkIPv6Check: a check over IPv6 is a request between two hosts with
// IPv6 addresses (the node has one). A check by name over IPv6 asks its
// DNS server (resolver) over IPv6 too, so that needs an IPv6 address.
func checkIPv6Check(c Check, from, to, resolver *Host) error {
	switch {
	case c.Name != "" && (resolver == nil || !resolver.IP6.IsValid()):
		return fmt.Errorf("family: ipv6: the DNS server of %s has no IPv6 address (add one to its status.podIPs)", strings.TrimSuffix(c.Name, "."))
	case !from.IP6.IsValid():
		return fmt.Errorf("family: ipv6: %s has no IPv6 address (add one to its status.podIPs)", from.Name)
	case !to.IP6.IsValid():
		return fmt.Errorf("family: ipv6: %s has no IPv6 address (add one to its status.podIPs)", to.Name)
	}
	return nil
}

func serveWhere(h *Host) string {
	if h.Pod == nil {
		return "serve field"
	}
	return ServeAnnotation + " annotation"
}

// Protocol is the server protocol the check talks.
func (c *Check) Protocol() Protocol {
	switch {
	case c.GRPC != nil:
		return ProtoGRPC
	case c.Kafka != nil:
		return ProtoKafka
	case c.DNS != nil:
		return ProtoDNS
	}
	return ProtoHTTP
}

// readPolicyFile reads an apply file: every document must hold policies
// only, one per document.
func readPolicyFile(fsys fs.FS, p, display string) ([]policyDoc, error) {
	data, err := fs.ReadFile(fsys, p)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", display, err)
	}
	var out []policyDoc
	for i, doc := range splitDocuments(data) {
		if len(bytes.TrimSpace(stripComments(doc))) == 0 {
			continue
		}
		objs, errs := policy.Decode(display, doc)
		if len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
		if len(objs.Pods)+len(objs.Namespaces) > 0 || len(objs.Policies) != 1 {
			return nil, fmt.Errorf("%s: document %d: want exactly one policy (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy) per document", display, i+1)
		}
		r := objs.Policies[0].Ref
		out = append(out, policyDoc{key: r.Kind + "/" + r.Namespace + "/" + r.Name, from: p, data: doc})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no policy", display)
	}
	return out, nil
}

// splitDocuments splits a YAML stream at "---" lines (as policy.Decode).
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	for line := range bytes.Lines(data) {
		if rest, ok := bytes.CutPrefix(line, []byte("---")); ok {
			rest = bytes.TrimSpace(rest)
			if len(rest) == 0 || rest[0] == '#' {
				docs = append(docs, bytes.Clone(cur.Bytes()))
				cur.Reset()
				continue
			}
		}
		cur.Write(line)
		if !bytes.HasSuffix(line, []byte("\n")) {
			cur.WriteByte('\n')
		}
	}
	return append(docs, cur.Bytes())
}

func stripComments(doc []byte) []byte {
	var out []byte
	for line := range bytes.Lines(doc) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out = append(out, line...)
		}
	}
	return out
}

// PolicyFile is the content of the one file holding every policy in force
// at step i (nil when there is none): the applied documents, each under a
// comment naming its file.
func (sc *Scenario) PolicyFile(i int) []byte {
	if i < 0 || i >= len(sc.policies) || len(sc.policies[i]) == 0 {
		return nil
	}
	var b bytes.Buffer
	for j, d := range sc.policies[i] {
		if j > 0 {
			b.WriteString("---\n")
		}
		fmt.Fprintf(&b, "# from %s\n", d.from)
		b.Write(d.data)
	}
	return b.Bytes()
}

// ObjectsAt decodes the objects and the policies in force at step i: what
// the agent sees then.
func (sc *Scenario) ObjectsAt(i int) (*policy.Objects, error) {
	out := &policy.Objects{}
	var errs []error
	for _, f := range sc.ObjectFiles {
		objs, derrs := policy.Decode(path.Join(sc.Name, f.Path), f.Data)
		errs = append(errs, derrs...)
		errs = append(errs, out.Merge(objs)...)
	}
	if pf := sc.PolicyFile(i); pf != nil {
		objs, derrs := policy.Decode(fmt.Sprintf("policies of step %d", i+1), pf)
		errs = append(errs, derrs...)
		errs = append(errs, out.Merge(objs)...)
	}
	out.DeriveEndpointSlices()
	return out, errors.Join(errs...)
}
