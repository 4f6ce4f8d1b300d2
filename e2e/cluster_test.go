//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// cluster is the environment hack/cluster.sh exported.
type cluster struct {
	kubectl, helm, kubeconfig, work string
	nodes                           int
	imageTag                        string
	kubeVersion                     string
}

func env(t *testing.T) cluster {
	t.Helper()
	c := cluster{
		kubectl: os.Getenv("KUBECTL"), helm: os.Getenv("HELM"), kubeconfig: os.Getenv("KUBECONFIG"),
		work: os.Getenv("E2E_WORK"), imageTag: os.Getenv("IMAGE_TAG"), kubeVersion: os.Getenv("KUBE_VERSION"),
	}
	if c.kubectl == "" || c.kubeconfig == "" {
		t.Skip("no cluster: run `make e2e` (hack/cluster.sh exports KUBECTL and KUBECONFIG)")
	}
	c.nodes, _ = strconv.Atoi(os.Getenv("E2E_NODES"))
	if c.nodes == 0 {
		c.nodes = 1
	}
	return c
}

// run runs a command with a deadline and returns its combined output.
func run(ctx context.Context, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (c cluster) k(t *testing.T, args ...string) (string, error) {
	t.Helper()
	return run(context.Background(), 2*time.Minute, c.kubectl, args...)
}

// must runs kubectl and fails the test on error.
func (c cluster) must(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.k(t, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// stdin runs kubectl with yaml on its standard input.
func (c cluster) stdin(yaml string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.kubectl, args...)
	cmd.Stdin = strings.NewReader(yaml)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (c cluster) apply(t *testing.T, yaml string) {
	t.Helper()
	if out, err := c.stdin(yaml, "apply", "-f", "-"); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
}

func (c cluster) deleteYAML(t *testing.T, yaml string) {
	t.Helper()
	c.stdin(yaml, "delete", "--ignore-not-found", "--wait=true", "--timeout=60s", "-f", "-") //nolint:errcheck
}

// exec runs a command in a pod and returns its output and exit code.
func (c cluster) exec(t *testing.T, pod string, cmd ...string) (string, int) {
	t.Helper()
	args := append([]string{"exec", pod, "--"}, cmd...)
	out, err := run(context.Background(), 90*time.Second, c.kubectl, args...)
	if err == nil {
		return out, 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return out, ee.ExitCode()
	}
	t.Fatalf("kubectl exec %s: %v\n%s", pod, err, out)
	return "", -1
}

// eventually polls f until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(time.Second)
	}
}

// agentLogsOnFailure prints the last lines of every l7gate container and of
// the node components when the test fails.
func (c cluster) agentLogsOnFailure(t *testing.T) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, ctr := range []string{"agent", "proxy"} {
			out, _ := c.k(t, "-n", "kube-system", "logs", "-l", "app.kubernetes.io/name=l7gate", "-c", ctr, "--tail=25", "--prefix")
			t.Logf("---- l7gate %s logs\n%s", ctr, out)
		}
		out, _ := c.k(t, "get", "pods", "-A", "-o", "wide")
		t.Logf("---- pods\n%s", out)
	})
}

func (c cluster) waitReady(t *testing.T, timeout time.Duration, args ...string) {
	t.Helper()
	a := append([]string{"wait", "--for=condition=Ready", fmt.Sprintf("--timeout=%ds", int(timeout.Seconds()))}, args...)
	if out, err := c.k(t, a...); err != nil {
		d, _ := c.k(t, append([]string{"describe"}, args...)...)
		t.Fatalf("kubectl %s: %v\n%s\n%s", strings.Join(a, " "), err, out, d)
	}
}

// waitPolicy waits until every l7gate agent reports the CNP implemented:
// status.nodes has every node with ok and a revision.
func (c cluster) waitPolicy(t *testing.T, ns, name string) {
	t.Helper()
	eventually(t, 60*time.Second, "policy "+ns+"/"+name+" implemented on every node", func() error {
		out, err := c.k(t, "-n", ns, "get", "cnp", name, "-o", "json")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		var obj struct {
			Metadata struct{ Generation int64 } `json:"metadata"`
			Status   struct {
				Nodes map[string]struct {
					OK                 bool   `json:"ok"`
					Revision           int64  `json:"revision"`
					ObservedGeneration int64  `json:"observedGeneration"`
					Error              string `json:"error"`
				} `json:"nodes"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(out), &obj); err != nil {
			return err
		}
		for i := 1; i <= c.nodes; i++ {
			n, ok := obj.Status.Nodes[fmt.Sprintf("node%d", i)]
			if !ok || !n.OK || n.Revision == 0 || n.ObservedGeneration != obj.Metadata.Generation {
				return fmt.Errorf("status.nodes: %+v (generation %d)", obj.Status.Nodes, obj.Metadata.Generation)
			}
		}
		return nil
	})
	// No settling sleep: an agent writes ok only for a revision it
	// implemented, i.e. after its proxies ACKed the listeners and the
	// redirects to them were synced (agent/implement.go).
}

// sameNode runs check as a subtest for a client on the L7 pod's own node:
// the case where kube-proxy's DNAT and the ingress redirect's turnaround
// meet in the node's conntrack (the agent's notrack rule, agent/node,
// keeps the turned-around packets out of it). check reports problems;
// timedOut says the client saw a connection time out, which the report
// names apart (before that rule existed this was the failure).
func sameNode(t *testing.T, name string, check func(t *testing.T, report func(timedOut bool, format string, args ...any))) {
	t.Helper()
	t.Run(name, func(t *testing.T) {
		check(t, func(timedOut bool, format string, args ...any) {
			t.Helper()
			if timedOut {
				format = "same-node ClusterIP + L7 (conntrack of the redirect turnaround?): " + format
			}
			t.Errorf(format, args...)
		})
	})
}
