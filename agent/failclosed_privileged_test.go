package agent

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/l7gate/l7gate/agentapi"
)

// icmpPolicy selects the tiefighter with an egress ICMP rule. The datapath
// of this tree rejects ICMP entries; whatever it does with them, the
// tiefighter alone may be affected.
const icmpPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: icmp-out
  namespace: default
spec:
  endpointSelector:
    matchLabels: {class: tiefighter}
  egress:
  - toEndpoints: [{matchLabels: {class: deathstar}}]
    icmps:
    - fields: [{type: 8, family: IPv4}]
`

// latePod is a pod whose object is in the source from the start but whose
// veth appears while the agent runs.
const latePod = `apiVersion: v1
kind: Pod
metadata:
  name: probe
  namespace: default
  labels: {class: probe}
status:
  podIP: 198.18.1.13
`

// tcxAttached reports whether a program is attached at the TCX ingress of
// the node's link ifname.
func (n *starwarsNode) tcxAttached(ifname string) (bool, error) {
	var attached bool
	err := inNS(n.node, func() error {
		ifc, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		attached = len(res.Programs) > 0
		return nil
	})
	return attached, err
}

// dialFrom tries a TCP connection from a pod to addr.
func (n *starwarsNode) dialFrom(pod, addr string) error {
	return inNS(n.podNS(pod), func() error {
		c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	})
}

// TestPrivilegedOneBadEndpointConfined: a valid CNP whose entries the
// datapath may reject (ICMP rules on the tiefighter) must not freeze the
// node: the deathstar's policy is enforced (the xwing is dropped), a pod
// whose veth appears later gets its program, and a rejected entry is
// named on the tiefighter in the status, which fails closed.
func TestPrivilegedOneBadEndpointConfined(t *testing.T) {
	requireRoot(t)
	n := newStarwarsNode(t)
	for _, f := range []string{"objects.yaml", "policy-l7.yaml"} {
		data, err := os.ReadFile(filepath.Join("../examples/starwars", f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(n.src, f), data, 0o644)
	}
	os.WriteFile(filepath.Join(n.src, "icmp.yaml"), []byte(icmpPolicy), 0o644)
	os.WriteFile(filepath.Join(n.src, "probe.yaml"), []byte(latePod), 0o644)
	// a server on the deathstar so an allowed connection would succeed
	var ln net.Listener
	if err := inNS(n.podNS("deathstar"), func() error {
		var err error
		ln, err = net.Listen("tcp", "198.18.1.10:80")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	n.startAgent(t)

	// The deathstar's ingress policy gets enforced: the xwing is dropped.
	deadline := time.Now().Add(20 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = n.dialFrom("xwing", "198.18.1.10:80"); err != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err == nil {
		log, _ := os.ReadFile(filepath.Join(n.run, "agent.log"))
		t.Fatalf("the xwing still reaches the deathstar 20s after start: one bad endpoint froze the node\nagent log:\n%s", tail(log, 3000))
	}

	// A pod whose veth appears now gets its program.
	n.addPod(t, "probe", "198.18.1.13", 3)
	deadline = time.Now().Add(15 * time.Second)
	attached := false
	for !attached && time.Now().Before(deadline) {
		if attached, err = n.tcxAttached(n.hostVeth(3)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !attached {
		log, _ := os.ReadFile(filepath.Join(n.run, "agent.log"))
		t.Fatalf("the late pod's veth got no program within 15s\nagent log:\n%s", tail(log, 3000))
	}

	// The status names what happened to the tiefighter, if anything.
	st, err := agentapi.FetchStatus(context.Background(), n.run)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range st.Endpoints {
		for _, f := range e.Failures {
			if e.Name != "tiefighter" {
				t.Errorf("endpoint %s/%s fails closed too: %+v", e.Namespace, e.Name, f)
				continue
			}
			if f.Step != "datapath policy" || !slices.Contains(f.Directions, "egress") || len(f.Policies) == 0 || f.Policies[0].Name != "default/icmp-out" {
				t.Errorf("tiefighter failure %+v, want the datapath policy step in egress naming default/icmp-out", f)
			}
			t.Logf("tiefighter fails closed: %s: %s", f.Step, f.Error)
		}
	}
	if st.ImplementedRevision != st.Revision {
		t.Errorf("revision %d not implemented (implemented %d): %s", st.Revision, st.ImplementedRevision, st.LastError)
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// TestPrivilegedAttachWindow measures, for pods whose objects the agent
// already knows, the time from the route to their veth appearing (the
// last thing a CNI plugin does on the node side; the test adds it with
// netlink and takes the time when the call returns) to the datapath
// program being attached to the veth. It prints the numbers; it asserts
// only that each pod gets its program.
func TestPrivilegedAttachWindow(t *testing.T) {
	requireRoot(t)
	n := newStarwarsNode(t)
	const pods = 5
	var objs strings.Builder
	for i := range pods {
		fmt.Fprintf(&objs, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: late%d, namespace: default, labels: {class: late}}\nstatus: {podIP: 198.18.2.%d}\n", i, 10+i)
	}
	data, _ := os.ReadFile("../examples/starwars/objects.yaml")
	os.WriteFile(filepath.Join(n.src, "objects.yaml"), data, 0o644)
	os.WriteFile(filepath.Join(n.src, "late.yaml"), []byte(objs.String()), 0o644)
	n.startAgent(t)
	n.waitImplemented(t, 0)
	var windows []time.Duration
	for i := range pods {
		name, ip, host := fmt.Sprintf("late%d", i), fmt.Sprintf("198.18.2.%d", 10+i), n.hostVeth(3+i)
		ns := n.podNS(name)
		n.topo.MustAddNS(t, ns)
		run(t, "ip", "-n", n.node, "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns)
		run(t, "ip", "-n", n.node, "link", "set", host, "up")
		var window time.Duration
		err := inNS(n.node, func() error {
			runtime.LockOSThread()
			ifc, err := net.InterfaceByName(host)
			if err != nil {
				return err
			}
			if err := netlink.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.ParseIP(ip).To4(), Mask: net.CIDRMask(32, 32)}, LinkIndex: ifc.Index}); err != nil {
				return err
			}
			routed := time.Now()
			for time.Since(routed) < 30*time.Second {
				res, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: ebpf.AttachTCXIngress})
				if err != nil {
					return err
				}
				if len(res.Programs) > 0 {
					window = time.Since(routed)
					return nil
				}
				time.Sleep(100 * time.Microsecond)
			}
			return fmt.Errorf("no program 30s after the route")
		})
		if err != nil {
			t.Fatalf("pod %s: %v", name, err)
		}
		windows = append(windows, window)
		t.Logf("pod %s: route → program attached %v", name, window.Round(time.Microsecond))
	}
	slices.Sort(windows)
	fmt.Printf("attach window (route added → tcx program attached) over %d pods: min %v, median %v, max %v\n",
		pods, windows[0].Round(time.Microsecond), windows[len(windows)/2].Round(time.Microsecond), windows[len(windows)-1].Round(time.Microsecond))
}
