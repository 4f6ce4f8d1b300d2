package agent

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/internal/netns"
)

// dualStackStarwars: the starwars pods with an IPv6 address each.
const dualStackStarwars = `apiVersion: v1
kind: Pod
metadata: {name: deathstar, namespace: default, labels: {org: empire, class: deathstar}}
status: {podIP: 198.18.1.10, podIPs: [{ip: 198.18.1.10}, {ip: "2001:db8:1::10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: tiefighter, namespace: default, labels: {org: empire, class: tiefighter}}
status: {podIP: 198.18.1.11, podIPs: [{ip: 198.18.1.11}, {ip: "2001:db8:1::11"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: xwing, namespace: default, labels: {org: alliance, class: xwing}}
status: {podIP: 198.18.1.12, podIPs: [{ip: 198.18.1.12}, {ip: "2001:db8:1::12"}]}
`

// TestPrivilegedAgentIPv6: the real agent, from a folder of YAML, enforces
// the starwars L3/L4 policy on dual-stack pods with the same verdicts over
// IPv6 as over IPv4: status.podIPs give the pods' IPv6 identities, the
// endpoints are attached with their IPv6 address, the node is set up for
// IPv6, neighbour discovery works under enforced policy.
func TestPrivilegedAgentIPv6(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	n := &starwarsNode{run: filepath.Join(dir, "run"), state: filepath.Join(dir, "state"),
		src: filepath.Join(dir, "src"), bpffs: filepath.Join(dir, "bpffs"), bin: filepath.Join(dir, "l7gate")}
	for _, d := range []string{n.run, n.state, n.src, n.bpffs} {
		os.MkdirAll(d, 0o755)
	}
	run(t, "go", "build", "-o", n.bin, "github.com/l7gate/l7gate/cmd/l7gate")
	run(t, "mount", "-t", "bpf", "bpf", n.bpffs)
	t.Cleanup(func() { exec.Command("umount", n.bpffs).Run() })
	n.topo = netns.NewT(t, netns.Config{Prefix: netns.RandomPrefix("l7ag"), NodeAddr: netip.MustParseAddr(starwarsNodeAddr),
		NodeAddr6: netip.MustParseAddr("2001:db8::fffe"),
		Sysctls:   map[string]string{"ipv4/ip_forward": "1", "ipv4/conf/all/rp_filter": "0", "ipv4/conf/default/rp_filter": "0"}})
	n.prefix, n.node = n.topo.Prefix, n.topo.Node
	t.Cleanup(func() {
		n.stopAgent()
		if pid, err := os.ReadFile(agentapi.ProxyPIDFile(n.run)); err == nil {
			if p, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
		removeProxyCgroup(t, n.run)
	})
	for i, pod := range []struct{ name, ip, ip6 string }{
		{"deathstar", "198.18.1.10", "2001:db8:1::10"}, {"tiefighter", "198.18.1.11", "2001:db8:1::11"}, {"xwing", "198.18.1.12", "2001:db8:1::12"},
	} {
		n.topo.MustAddDualHost(t, pod.name, n.hostVeth(i), pod.ip, pod.ip6)
	}
	// The deathstar answers on both families.
	for _, addr := range []string{"198.18.1.10:80", "[2001:db8:1::10]:80"} {
		var ln net.Listener
		if err := inNS(n.podNS("deathstar"), func() error {
			var err error
			ln, err = net.Listen("tcp", addr)
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
				fmt.Fprintf(c, "deathstar %s\n", c.LocalAddr())
				c.Close()
			}
		}()
	}
	os.WriteFile(filepath.Join(n.src, "objects.yaml"), []byte(dualStackStarwars), 0o644)
	policy, err := os.ReadFile("../examples/starwars/policy-l4.yaml")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(n.src, "policy-l4.yaml"), policy, 0o644)
	n.startAgent(t)
	n.waitImplemented(t, 0)

	dial := func(from, addr string) error {
		return inNS(n.podNS(from), func() error {
			c, err := net.DialTimeout("tcp", addr, 2*time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			buf := make([]byte, 64)
			k, err := c.Read(buf)
			if err != nil {
				return err
			}
			if !strings.HasPrefix(string(buf[:k]), "deathstar ") {
				return fmt.Errorf("answer %q", buf[:k])
			}
			return nil
		})
	}
	for _, c := range []struct {
		from, addr string
		allowed    bool
	}{
		{"tiefighter", "[2001:db8:1::10]:80", true},
		{"tiefighter", "198.18.1.10:80", true},
		{"xwing", "[2001:db8:1::10]:80", false},
		{"xwing", "198.18.1.10:80", false},
	} {
		err := dial(c.from, c.addr)
		if (err == nil) != c.allowed {
			log, _ := os.ReadFile(filepath.Join(n.run, "agent.log"))
			t.Errorf("%s -> %s: %v, want allowed=%v\nagent log:\n%s", c.from, c.addr, err, c.allowed, log)
		}
	}
	// The IPv6 drop is named in the datapath's flows.
	out, err := exec.Command(n.bin, "observe", "--run-dir", n.run, "-o", "json").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "2001:db8:1::12") {
		t.Errorf("observe: %v; no flow from xwing's IPv6 address in\n%s", err, out)
	}
}
