package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/policy"
)

// Services in scenarios
//
// objects/ may hold Services (and EndpointSlices; a Service with a
// selector and no slice gets the pods it selects, as in the folder
// source). A check may name a Service as its destination,
// `to: svc/<namespace>/<name>` with the Service's port: the request goes to
// the ClusterIP from a process in the cgroup the agent's socket load
// balancer is attached to, which sends it to a backend pod — so the
// datapath's egress policy and the proxies see the backend.

// ServicePrefix starts a check's Service destination: svc/<ns>/<name>.
const ServicePrefix = "svc/"

// serviceHosts makes a destination Host of each Service with a ClusterIP
// in the scenario's subnets: IP is its IPv4 ClusterIP, IP6 its IPv6 one
// (checks with family: ipv6 go there); either may be missing.
func (sc *Scenario) serviceHosts() []error {
	var errs []error
	fronts, _ := policy.ServiceFrontends(sc.Objects, "")
	byIP := map[netip.Addr]string{}
	for _, h := range sc.Hosts {
		byIP[h.IP] = h.Name
		if h.IP6.IsValid() {
			byIP[h.IP6] = h.Name
		}
	}
	sc.services = map[string]*Host{}
	for i := range sc.Objects.Services {
		s := &sc.Objects.Services[i]
		name := ServicePrefix + s.Namespace + "/" + s.Name
		where := fmt.Sprintf("%s: %s", s.Ref.File, s.Ref)
		var ip, ip6 netip.Addr
		for _, a := range s.ClusterIPs {
			switch {
			case a.Is4() && !ip.IsValid():
				ip = a
			case a.Is6() && !ip6.IsValid():
				ip6 = a
			}
		}
		if !ip.IsValid() && !ip6.IsValid() {
			continue // not a check destination (headless, ExternalName, …)
		}
		bad := false
		for _, a := range []netip.Addr{ip, ip6} {
			if !a.IsValid() {
				continue
			}
			check := checkHostIP
			if a.Is6() {
				check = checkHostIP6
			}
			if err := check(a); err != nil {
				errs = append(errs, fmt.Errorf("%s: spec.clusterIPs: %w", where, err))
				bad = true
			} else if other, ok := byIP[a]; ok {
				errs = append(errs, fmt.Errorf("%s: clusterIP %s is also %s's", where, a, other))
				bad = true
			}
		}
		if bad {
			continue
		}
		h := &Host{Name: name, IP: ip, IP6: ip6, Service: s}
		for _, f := range fronts {
			if f.Service == s.Namespace+"/"+s.Name {
				h.Frontends = append(h.Frontends, f)
			}
		}
		sc.services[name] = h
	}
	return errs
}

// frontend returns the Service host's frontend for a TCP port on its
// ClusterIP of the family.
func (h *Host) frontend(port uint16, family Family) *policy.ServiceFrontend {
	ip := h.Addr(family)
	if !ip.IsValid() {
		return nil
	}
	for i := range h.Frontends {
		if f := &h.Frontends[i]; f.Address.Port() == port && f.Protocol == policy.ProtoTCP && f.Address.Addr() == ip {
			return f
		}
	}
	return nil
}

// servesViaService checks a Service destination: the port is one of the
// Service's and every backend is a host serving proto on its port. A
// Service without backends serves nothing: connections are refused. The
// Service needs a ClusterIP of the check's family.
func (sc *Scenario) servesViaService(h *Host, proto Protocol, port uint16, family Family) error {
	if !h.Addr(family).IsValid() {
		fam := "IPv4"
		if family == FamilyIPv6 {
			fam = "IPv6"
		}
		return fmt.Errorf("service %s has no %s ClusterIP (add one to its spec.clusterIPs)", h.Name, fam)
	}
	f := h.frontend(port, family)
	if f == nil {
		var ports []string
		for _, f := range h.Frontends {
			if f.Address.Addr() != h.Addr(family) {
				continue
			}
			ports = append(ports, fmt.Sprintf("%d/%s", f.Address.Port(), f.Protocol))
		}
		return fmt.Errorf("service %s has no TCP port %d (it has %s)", h.Name, port, strings.Join(ports, ", "))
	}
	for _, b := range f.Backends {
		i := slices.IndexFunc(sc.Hosts, func(x *Host) bool { return x.Addr(family) == b.Address.Addr() })
		if i < 0 {
			return fmt.Errorf("service %s: backend %s is no host of the scenario", h.Name, b.Address)
		}
		if !sc.Hosts[i].Serves(proto, b.Address.Port()) {
			return fmt.Errorf("service %s: backend %s serves no %s on port %d (add %s:%d to its %s)", h.Name, sc.Hosts[i].Name, proto,
				b.Address.Port(), proto, b.Address.Port(), serveWhere(sc.Hosts[i]))
		}
	}
	return nil
}

// backendAddrs lists the addresses a check to a Service (over the
// family's ClusterIP) may reach.
func (h *Host) backendAddrs(port uint16, family Family) []netip.AddrPort {
	f := h.frontend(port, family)
	if f == nil {
		return nil
	}
	out := make([]netip.AddrPort, len(f.Backends))
	for i, b := range f.Backends {
		out[i] = b.Address
	}
	return out
}

// LBCgroupName is the cgroup v2 directory (under the root) whose processes
// a demo topology's socket load balancer translates: the checks to
// Services run there.
func (t *Topology) LBCgroupName() string { return "l7gate-demo-" + t.Prefix }

// CreateLBCgroup creates the topology's socket-LB cgroup (removed with the
// topology) and returns its path relative to the cgroup v2 root, for the
// agent's --socket-lb-cgroup. The demo never lets the agent attach to the
// root cgroup: only the checks' processes are translated. ok is false
// without a cgroup v2 hierarchy.
func (t *Topology) CreateLBCgroup() (rel string, ok bool, err error) {
	mount, err := bpf.Cgroup2Mount()
	if err != nil {
		return "", false, nil
	}
	dir := filepath.Join(mount, t.LBCgroupName())
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", false, fmt.Errorf("socket-lb cgroup: %w", err)
	}
	if err := t.led.addCgroup(dir); err != nil {
		return "", false, err
	}
	t.lbCgroup = dir
	return "/" + t.LBCgroupName(), true, nil
}

// probeSpec is what a probe process does: send one check's request from a
// network namespace to an address and print the Observation (JSON).
type probeSpec struct {
	NetNS string
	Addr  netip.AddrPort
	Check Check
	Probe ProbeOptions
}

// sendToService sends a check to a Service's ClusterIP of the check's
// family from a probe process started in the socket-LB cgroup (the load
// balancer only sees sockets of processes in it).
func (t *Topology) sendToService(ctx context.Context, svc *Host, ns string, c Check, o ProbeOptions) Observation {
	if t.lbCgroup == "" {
		return Observation{Verdict: Errored, Detail: "no socket load balancer: the topology has no socket-LB cgroup"}
	}
	if len(t.cfg.ProbeCommand) == 0 {
		return Observation{Verdict: Errored, Detail: "no probe command"}
	}
	ip := svc.Addr(c.Family)
	if !ip.IsValid() {
		return Observation{Verdict: Errored, Detail: "service " + svc.Name + " has no ClusterIP of the check's family"}
	}
	spec, err := json.Marshal(probeSpec{NetNS: ns, Addr: netip.AddrPortFrom(ip, c.Port), Check: c, Probe: o})
	if err != nil {
		return Observation{Verdict: Errored, Detail: err.Error()}
	}
	cg, err := os.Open(t.lbCgroup)
	if err != nil {
		return Observation{Verdict: Errored, Detail: "socket-lb cgroup: " + err.Error()}
	}
	defer cg.Close()
	ctx, cancel := context.WithTimeout(ctx, o.Timeout+5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, t.cfg.ProbeCommand[0], append(slices.Clone(t.cfg.ProbeCommand[1:]), "--spec", string(spec))...)
	cmd.Env = append(os.Environ(), t.cfg.ProbeEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Pdeathsig: syscall.SIGKILL}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return Observation{Verdict: Errored, Detail: shorten(fmt.Sprintf("probe: %v: %s", err, stderr.Bytes()))}
	}
	var obs Observation
	if err := json.Unmarshal(stdout.Bytes(), &obs); err != nil {
		return Observation{Verdict: Errored, Detail: shorten(fmt.Sprintf("probe output %q: %v", stdout.Bytes(), err))}
	}
	return obs
}

// ProbeMain is the probe process (`l7gate demo probe --spec JSON`): it
// sends one check's request and prints what it observed as JSON. It
// returns the exit status.
func ProbeMain(args []string) int {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	raw := fs.String("spec", "", "probe spec (JSON)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	var s probeSpec
	if err := json.Unmarshal([]byte(*raw), &s); err != nil {
		fmt.Fprintln(os.Stderr, "probe: --spec:", err)
		return 2
	}
	if s.Probe.ConnectTimeout <= 0 || s.Probe.Timeout <= 0 {
		s.Probe = DefaultProbeOptions()
	}
	obs := send(context.Background(), netnsDialer(s.NetNS, s.Probe.ConnectTimeout), s.Addr, s.Check, s.Probe)
	if err := json.NewEncoder(os.Stdout).Encode(obs); err != nil {
		return 1
	}
	return 0
}
