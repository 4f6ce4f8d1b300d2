//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

const workloadImage = "l7gate.local/e2e:1"

// server is a pod or deployment template running l7gate's built-in servers
// (demo/serve.go): HTTP answers like Cilium's deathstar, kafka is kfake.
func serverContainer(host, serve string, extra string) string {
	return fmt.Sprintf(`      containers:
      - name: server
        image: %s
        imagePullPolicy: Never
        command: [l7gate, demo, serve, --config, '{"host":"%s","ip":"$(POD_IP)","serve":["%s"]}']
        env:
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
%s`, workloadImage, host, serve, extra)
}

func clientPod(name, labels, node string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  labels: {%s}
spec:
  nodeSelector: {kubernetes.io/hostname: %s}
  terminationGracePeriodSeconds: 1
  containers:
  - name: client
    image: %s
    imagePullPolicy: Never
    command: [sleep, "1000000"]
---
`, name, labels, node, workloadImage)
}

// starwars: Cilium's getting-started objects. deathstar (2 replicas) runs
// on node1; tiefighter and xwing on node1 (same node) and, with two nodes,
// tiefighter-remote and xwing-remote on node2 (across nodes).
func starwars(nodes int) string {
	y := `apiVersion: v1
kind: Service
metadata:
  name: deathstar
  labels: {app.kubernetes.io/name: deathstar}
spec:
  type: ClusterIP
  ports:
  - {port: 80}
  selector: {org: empire, class: deathstar}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: deathstar
spec:
  replicas: 2
  selector:
    matchLabels: {org: empire, class: deathstar}
  template:
    metadata:
      labels: {org: empire, class: deathstar, app.kubernetes.io/name: deathstar}
    spec:
      nodeSelector: {kubernetes.io/hostname: node1}
      terminationGracePeriodSeconds: 1
` + serverContainer("deathstar", "http:80", "") + `---
` + clientPod("tiefighter", "org: empire, class: tiefighter, app.kubernetes.io/name: tiefighter", "node1") +
		clientPod("xwing", "org: alliance, class: xwing, app.kubernetes.io/name: xwing", "node1")
	if nodes > 1 {
		y += clientPod("tiefighter-remote", "org: empire, class: tiefighter", "node2") +
			clientPod("xwing-remote", "org: alliance, class: xwing", "node2")
	}
	return y
}

func readExample(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const svc = "deathstar.default.svc.cluster.local"

// curl from a pod; returns the body and curl's exit code (28: timed out).
func (c cluster) curl(t *testing.T, pod, method, path string) (string, int) {
	t.Helper()
	return c.exec(t, pod, "curl", "-s", "--max-time", "5", "-X"+method, svc+path)
}

func (c cluster) clients(kind string) []string {
	if c.nodes > 1 {
		return []string{kind, kind + "-remote"}
	}
	return []string{kind}
}

func (c cluster) setupStarwars(t *testing.T) {
	t.Helper()
	c.k(t, "delete", "cnp", "rule1", "--ignore-not-found") //nolint:errcheck
	c.apply(t, starwars(c.nodes))
	c.waitReady(t, 3*time.Minute, "pod", "-l", "org")
	c.must(t, "rollout", "status", "deploy/deathstar", "--timeout=120s")
	// kube-proxy and CoreDNS see the endpoints
	eventually(t, 60*time.Second, "deathstar by Service name", func() error {
		if out, code := c.curl(t, "tiefighter", "POST", "/v1/request-landing"); code != 0 || !strings.Contains(out, "Ship landed") {
			return fmt.Errorf("curl exit %d: %q", code, out)
		}
		return nil
	})
}

// Step 1: the seed walkthrough verbatim, by Service DNS name through
// kube-proxy and CoreDNS, on one node and across nodes.
func TestStep1Walkthrough(t *testing.T) {
	c := env(t)
	c.agentLogsOnFailure(t)
	c.setupStarwars(t)
	t.Cleanup(func() { c.k(t, "delete", "cnp", "rule1", "--ignore-not-found") }) //nolint:errcheck

	t.Run("no policy: both land", func(t *testing.T) {
		for _, p := range append(c.clients("tiefighter"), c.clients("xwing")...) {
			if out, code := c.curl(t, p, "POST", "/v1/request-landing"); code != 0 || strings.TrimSpace(out) != "Ship landed" {
				t.Errorf("%s: exit %d %q, want Ship landed", p, code, out)
			}
		}
	})
	t.Run("L3/L4 rule1: xwing times out, tiefighter lands", func(t *testing.T) {
		c.apply(t, readExample(t, "examples/starwars/policy-l4.yaml"))
		c.waitPolicy(t, "default", "rule1")
		for _, p := range c.clients("tiefighter") {
			if out, code := c.curl(t, p, "POST", "/v1/request-landing"); code != 0 || strings.TrimSpace(out) != "Ship landed" {
				t.Errorf("%s: exit %d %q, want Ship landed", p, code, out)
			}
		}
		for _, p := range c.clients("xwing") {
			if out, code := c.curl(t, p, "POST", "/v1/request-landing"); code != 28 {
				t.Errorf("%s: exit %d %q, want a timeout (curl exit 28)", p, code, out)
			}
		}
	})
	t.Run("L7 rule1: PUT exhaust-port denied, POST lands", func(t *testing.T) {
		c.apply(t, readExample(t, "examples/starwars/policy-l7.yaml"))
		c.waitPolicy(t, "default", "rule1")
		l7 := func(t *testing.T, p string, report func(timedOut bool, format string, args ...any)) {
			if out, code := c.curl(t, p, "PUT", "/v1/exhaust-port"); code != 0 || strings.TrimSpace(out) != "Access denied" {
				report(code == 28, "%s PUT /v1/exhaust-port: exit %d %q, want Access denied", p, code, out)
			}
			if out, code := c.curl(t, p, "POST", "/v1/request-landing"); code != 0 || strings.TrimSpace(out) != "Ship landed" {
				report(code == 28, "%s POST: exit %d %q, want Ship landed", p, code, out)
			}
		}
		for _, p := range c.clients("tiefighter") {
			if p == "tiefighter" { // on deathstar's node
				sameNode(t, "same node", func(t *testing.T, report func(bool, string, ...any)) { l7(t, p, report) })
				continue
			}
			l7(t, p, func(_ bool, format string, args ...any) { t.Errorf(format, args...) })
		}
		for _, p := range c.clients("xwing") {
			if out, code := c.curl(t, p, "POST", "/v1/request-landing"); code != 28 {
				t.Errorf("%s: exit %d %q, want a timeout", p, code, out)
			}
		}
	})
}

// Step 2: pods selected by an ingress policy stay Ready: the kubelet's HTTP
// and TCP readiness probes (from the node) pass under default-deny.
func TestStep2ProbesUnderDefaultDeny(t *testing.T) {
	c := env(t)
	c.agentLogsOnFailure(t)
	probe := func(kind string) string {
		p := `httpGet: {path: /, port: 80}`
		if kind == "tcp" {
			p = `tcpSocket: {port: 80}`
		}
		return fmt.Sprintf(`        readinessProbe:
          %s
          periodSeconds: 2
          failureThreshold: 2
`, p)
	}
	y := ""
	for _, kind := range []string{"http", "tcp"} {
		y += fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: probed-%[1]s
spec:
  replicas: 1
  selector:
    matchLabels: {app: probed, probe: %[1]s}
  template:
    metadata:
      labels: {app: probed, probe: %[1]s}
    spec:
      terminationGracePeriodSeconds: 1
%[2]s---
`, kind, serverContainer("probed", "http:80", probe(kind)))
	}
	y += `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: probed-ingress
spec:
  endpointSelector:
    matchLabels: {app: probed}
  ingress:
  - fromEndpoints:
    - matchLabels: {org: empire}
    toPorts:
    - ports:
      - {port: "80", protocol: TCP}
`
	c.apply(t, y)
	t.Cleanup(func() { c.deleteYAML(t, y) })
	c.waitPolicy(t, "default", "probed-ingress")
	// Ready within a minute with the policy in force, and still Ready after
	// a few more probe periods.
	c.waitReady(t, time.Minute, "pod", "-l", "app=probed")
	time.Sleep(10 * time.Second)
	out := c.must(t, "get", "pod", "-l", "app=probed", "-o", `jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasSuffix(l, " True") {
			t.Errorf("not Ready under default-deny: %s", l)
		}
	}
}

// Step 3: CNP status from the cluster: the per-node revision, and an
// invalid CNP's condition naming the field while the others stay enforced.
func TestStep3PolicyStatus(t *testing.T) {
	c := env(t)
	c.agentLogsOnFailure(t)
	c.setupStarwars(t)
	c.apply(t, readExample(t, "examples/starwars/policy-l7.yaml"))
	t.Cleanup(func() { c.k(t, "delete", "cnp", "rule1", "broken", "--ignore-not-found") }) //nolint:errcheck
	c.waitPolicy(t, "default", "rule1")
	out := c.must(t, "get", "cnp", "rule1", "-o", "yaml")
	for i := 1; i <= c.nodes; i++ {
		if !strings.Contains(out, fmt.Sprintf("node%d:", i)) || !strings.Contains(out, "revision:") {
			t.Errorf("kubectl get cnp rule1 -o yaml lacks node%d's revision:\n%s", i, out)
		}
	}
	// L7 rules on a port range are rejected (DESIGN: L7 needs one TCP port).
	c.apply(t, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: broken
spec:
  endpointSelector:
    matchLabels: {class: xwing}
  ingress:
  - toPorts:
    - ports:
      - {port: "80", endPort: 90, protocol: TCP}
      rules:
        http:
        - method: GET
`)
	eventually(t, 60*time.Second, "broken's Valid=False condition", func() error {
		out, err := c.k(t, "get", "cnp", "broken", "-o", `jsonpath={.status.conditions[?(@.type=="Valid")]}`)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		var cond struct{ Status, Reason, Message string }
		if err := json.Unmarshal([]byte(out), &cond); err != nil {
			return fmt.Errorf("%v: %q", err, out)
		}
		if cond.Status != "False" || !strings.Contains(cond.Message, "endPort") {
			return fmt.Errorf("condition %+v, want False naming endPort", cond)
		}
		t.Logf("broken: %s: %s", cond.Reason, cond.Message)
		return nil
	})
	// rule1 still enforced (L7 checked from node2 when there is one: the
	// same-node ClusterIP + L7 case is step 1's)
	tf := c.clients("tiefighter")[len(c.clients("tiefighter"))-1]
	if out, code := c.curl(t, tf, "PUT", "/v1/exhaust-port"); code != 0 || strings.TrimSpace(out) != "Access denied" {
		t.Errorf("rule1 no longer enforced beside an invalid CNP: %s: exit %d %q", tf, code, out)
	}
	if out, code := c.curl(t, tf, "POST", "/v1/request-landing"); code != 0 || strings.TrimSpace(out) != "Ship landed" {
		t.Errorf("POST beside an invalid CNP: %s: exit %d %q", tf, code, out)
	}
	if out, code := c.curl(t, "xwing", "POST", "/v1/request-landing"); code != 28 {
		t.Errorf("xwing beside an invalid CNP: exit %d %q, want a timeout", code, out)
	}
}

// Step 4: Cilium's Kafka guide with kcat by Service name.
func TestStep4Kafka(t *testing.T) {
	c := env(t)
	c.agentLogsOnFailure(t)
	node2 := "node1"
	if c.nodes > 1 {
		node2 = "node2"
	}
	y := `apiVersion: v1
kind: Service
metadata:
  name: kafka-service
spec:
  ports:
  - {port: 9092}
  selector: {app: kafka}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: kafka-broker
spec:
  replicas: 1
  selector:
    matchLabels: {app: kafka}
  template:
    metadata:
      labels: {app: kafka}
    spec:
      nodeSelector: {kubernetes.io/hostname: node1}
      terminationGracePeriodSeconds: 1
` + serverContainer("kafka-broker", "kafka:9092", "") + `---
` + clientPod("empire-hq", "app: empire-hq", "node1") +
		clientPod("empire-outpost-8888", "app: empire-outpost, outpost: \"8888\"", node2) +
		clientPod("empire-outpost-9999", "app: empire-outpost, outpost: \"9999\"", "node1") +
		clientPod("empire-backup", "app: empire-backup", node2)
	c.apply(t, y)
	pol := readExample(t, "examples/scenarios/kafka/policies/kafka-security.yaml")
	t.Cleanup(func() { c.deleteYAML(t, pol); c.deleteYAML(t, y) })
	c.waitReady(t, 3*time.Minute, "pod", "-l", "app in (kafka,empire-hq,empire-outpost,empire-backup)")
	const broker = "kafka-service.default.svc.cluster.local:9092"
	// a connection that gets no answer says so within the metadata timeout
	// ("Connection setup timed out in state CONNECT")
	const setup = "socket.connection.setup.timeout.ms=5000"
	produce := func(t *testing.T, pod, topic string) (string, int) {
		return c.exec(t, pod, "sh", "-c", fmt.Sprintf("echo 'msg from %s' | kcat -b %s -P -t %s -m 10 -X topic.metadata.refresh.interval.ms=1000 -X %s 2>&1", pod, broker, topic, setup))
	}
	consume := func(t *testing.T, pod, topic string) (string, int) {
		return c.exec(t, pod, "kcat", "-b", broker, "-C", "-t", topic, "-o", "beginning", "-e", "-c", "1", "-m", "10", "-X", setup)
	}
	// no policy: topics exist and every client may produce and consume
	for _, topic := range []string{"deathstar-plans", "empire-announce"} {
		eventually(t, 60*time.Second, "produce to "+topic, func() error {
			if out, code := produce(t, "empire-hq", topic); code != 0 {
				return fmt.Errorf("exit %d: %s", code, out)
			}
			return nil
		})
	}
	if out, code := consume(t, "empire-outpost-8888", "deathstar-plans"); code != 0 || !strings.Contains(out, "msg from") {
		t.Fatalf("no policy: outpost consume deathstar-plans: exit %d %q", code, out)
	}
	c.apply(t, pol)
	c.waitPolicy(t, "default", "secure-empire-kafka")
	type try struct {
		pod, role, topic string
		allowed          bool
	}
	tries := []try{
		{"empire-hq", "produce", "deathstar-plans", true},
		{"empire-hq", "produce", "empire-announce", true},
		{"empire-backup", "consume", "deathstar-plans", true},
		{"empire-outpost-8888", "consume", "empire-announce", true},
		{"empire-outpost-9999", "consume", "empire-announce", true},
		{"empire-outpost-8888", "consume", "deathstar-plans", false},
		{"empire-outpost-9999", "produce", "empire-announce", false},
		{"empire-backup", "produce", "deathstar-plans", false},
	}
	check := func(t *testing.T, a try, report func(timedOut bool, format string, args ...any)) {
		var out string
		var code int
		if a.role == "produce" {
			out, code = produce(t, a.pod, a.topic)
		} else {
			out, code = consume(t, a.pod, a.topic)
		}
		// the bootstrap connection to the Service timed out (librdkafka:
		// "Connection setup timed out in state CONNECT")
		timedOut := code != 0 && strings.Contains(strings.ToLower(out), "timed out")
		switch {
		case a.allowed && (code != 0 || strings.Contains(out, "Authorization")):
			report(timedOut, "%s %s %s: exit %d %q, want allowed", a.pod, a.role, a.topic, code, out)
		case !a.allowed && (code == 0 || !strings.Contains(strings.ToLower(out), "authoriz")):
			report(timedOut, "%s %s %s: exit %d %q, want a topic authorization error", a.pod, a.role, a.topic, code, out)
		case !a.allowed:
			t.Logf("%s %s %s denied: %s", a.pod, a.role, a.topic, firstLine(out))
		}
	}
	brokerNode := "node1"
	var local []try
	for _, a := range tries {
		if c.nodeOf(t, a.pod) == brokerNode {
			local = append(local, a)
			continue
		}
		check(t, a, func(_ bool, format string, args ...any) { t.Errorf(format, args...) })
	}
	sameNode(t, "same node", func(t *testing.T, report func(bool, string, ...any)) {
		for _, a := range local {
			check(t, a, report)
		}
	})
}

// nodeOf is the node a pod runs on.
func (c cluster) nodeOf(t *testing.T, pod string) string {
	t.Helper()
	return strings.TrimSpace(c.must(t, "get", "pod", pod, "-o", "jsonpath={.spec.nodeName}"))
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// loop is a client loop inside a pod: one curl per 100 ms with Connection:
// close, one line per request: "<unix second it started> <http code> <curl
// exit>".
func (c cluster) startLoop(t *testing.T, pod, method, path, logName string) {
	t.Helper()
	script := fmt.Sprintf(`rm -f /tmp/%[4]s /tmp/%[4]s.stop; (while [ ! -e /tmp/%[4]s.stop ]; do
  ts=$(date +%%s); code=$(curl -s -o /dev/null -w '%%{http_code}' --max-time 3 --retry 0 -H 'Connection: close' -X%[1]s %[2]s%[3]s); rc=$?
  echo "$ts $code $rc" >>/tmp/%[4]s; sleep 0.1; done) >/dev/null 2>&1 &`, method, svc, path, logName)
	if out, code := c.exec(t, pod, "sh", "-c", script); code != 0 {
		t.Fatalf("start loop in %s: exit %d %s", pod, code, out)
	}
}

// sample is one request of a loop: when it started and what it saw
// ("200 0": HTTP 200, curl exit 0; "000 28": timed out).
type sample struct {
	at     int64
	result string
}

func (c cluster) stopLoop(t *testing.T, pod, logName string) []sample {
	t.Helper()
	c.exec(t, pod, "touch", "/tmp/"+logName+".stop")
	time.Sleep(4 * time.Second)
	out, _ := c.exec(t, pod, "cat", "/tmp/"+logName)
	var samples []sample
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		ts, rest, ok := strings.Cut(l, " ")
		at, err := strconv.ParseInt(ts, 10, 64)
		if !ok || err != nil {
			t.Fatalf("%s: loop line %q", pod, l)
		}
		samples = append(samples, sample{at, rest})
	}
	return samples
}

// phase is a named time window of step 5 (unix seconds, end exclusive).
type phase struct {
	name       string
	start, end int64
}

// byPhase counts each phase's results: "agent pod restart: map[200 0:12 000 28:2]".
func byPhase(samples []sample, phases []phase) []string {
	var lines []string
	for _, p := range phases {
		counts := map[string]int{}
		for _, s := range samples {
			if s.at >= p.start && s.at < p.end {
				counts[s.result]++
			}
		}
		lines = append(lines, fmt.Sprintf("%s (%ds): %v", p.name, p.end-p.start, counts))
	}
	return lines
}

// Step 5: the agent pod deleted and recreated by the DaemonSet, then a
// helm upgrade changing the image tag, while clients keep requests flowing
// through the L7 proxy. Enforcement never lapses: the denied request never
// reaches the server (it would answer 503 "Panic"), it is refused (403) or
// gets no answer. Both clients are served again once the upgrade is
// rolled out. What the allowed client sees, phase by phase, is reported.
func TestStep5AgentRestartAndUpgrade(t *testing.T) {
	c := env(t)
	c.agentLogsOnFailure(t)
	c.setupStarwars(t)
	c.apply(t, readExample(t, "examples/starwars/policy-l7.yaml"))
	t.Cleanup(func() { c.k(t, "delete", "cnp", "rule1", "--ignore-not-found") }) //nolint:errcheck
	c.waitPolicy(t, "default", "rule1")
	// From node2 when there is one (across nodes); the same-node
	// ClusterIP + L7 case is step 1's; here the restart is measured.
	client := c.clients("tiefighter")[len(c.clients("tiefighter"))-1]
	t0 := time.Now().Unix()
	c.startLoop(t, client, "POST", "/v1/request-landing", "allowed")
	c.startLoop(t, client, "PUT", "/v1/exhaust-port", "denied")
	time.Sleep(5 * time.Second)

	// the agent pod on deathstar's node, deleted and recreated
	tDelete := time.Now().Unix()
	old := c.agentPod(t, "node1")
	c.must(t, "-n", "kube-system", "delete", old, "--wait=false")
	eventually(t, 3*time.Minute, "a new, Ready l7gate pod on node1", func() error {
		out, err := c.k(t, "-n", "kube-system", "get", "pod", "-l", "app.kubernetes.io/name=l7gate",
			"--field-selector", "spec.nodeName=node1", "-o", `jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		if f := strings.Fields(out); len(f) != 2 || "pod/"+f[0] == old || f[1] != "True" {
			return fmt.Errorf("l7gate pods on node1: %q", out)
		}
		return nil
	})
	tRestarted := time.Now().Unix()
	time.Sleep(5 * time.Second)

	tUpgrade := time.Now().Unix()
	upgradeTag := c.imageTag + "-upgrade"
	if out, err := run(t.Context(), 6*time.Minute, c.helm, "upgrade", "l7gate", "../deploy/helm/l7gate", "-n", "kube-system",
		"--reuse-values", "--set", "image.tag="+upgradeTag, "--wait", "--timeout", "5m"); err != nil {
		t.Fatalf("helm upgrade: %v\n%s", err, out)
	}
	c.must(t, "-n", "kube-system", "rollout", "status", "ds/l7gate", "--timeout=180s")
	if img := c.must(t, "-n", "kube-system", "get", "ds/l7gate", "-o", "jsonpath={.spec.template.spec.containers[0].image}"); !strings.HasSuffix(img, ":"+upgradeTag) {
		t.Errorf("after helm upgrade the DaemonSet runs %s", img)
	}
	tUpgraded := time.Now().Unix()
	time.Sleep(5 * time.Second)
	allowed := c.stopLoop(t, client, "allowed")
	denied := c.stopLoop(t, client, "denied")
	phases := []phase{
		{"before", t0, tDelete},
		{"agent pod deleted until its successor is Ready", tDelete, tRestarted},
		{"between", tRestarted, tUpgrade},
		{"helm upgrade (image tag) until rolled out", tUpgrade, tUpgraded},
		{"after", tUpgraded, time.Now().Unix() + 1},
	}
	t.Logf("allowed client (POST, Connection: close) on %s saw, by phase:\n  %s", client, strings.Join(byPhase(allowed, phases), "\n  "))
	t.Logf("denied client (PUT exhaust-port) saw, by phase:\n  %s", strings.Join(byPhase(denied, phases), "\n  "))
	for _, s := range denied {
		if s.result != "403 0" && !strings.HasPrefix(s.result, "000 ") {
			t.Errorf("enforcement lapsed: the denied request started at %d got %q", s.at, s.result)
		}
	}
	failed := 0
	for _, s := range allowed {
		if s.result != "200 0" {
			failed++
		}
	}
	t.Logf("allowed client: %d of %d requests failed across the restart and the upgrade (goal: 0)", failed, len(allowed))
	if failed > 0 {
		// When they failed, and what the new pods' agents and proxies
		// said meanwhile (the old pods are gone).
		var at []string
		for _, s := range allowed {
			if s.result != "200 0" {
				at = append(at, fmt.Sprintf("%s %q", time.Unix(s.at, 0).UTC().Format("15:04:05"), s.result))
			}
		}
		t.Logf("allowed client's failed requests started at: %s", strings.Join(at, ", "))
		for _, ctr := range []string{"agent", "proxy"} {
			out, _ := c.k(t, "-n", "kube-system", "logs", "-l", "app.kubernetes.io/name=l7gate", "-c", ctr, "--since=4m", "--prefix", "--timestamps")
			var lines []string
			for _, l := range strings.Split(out, "\n") {
				if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") || strings.Contains(l, "registered") ||
					strings.Contains(l, "trusted") || strings.Contains(l, "standing") || strings.Contains(l, "taking over") ||
					strings.Contains(l, "handed over") || strings.Contains(l, "xds consumer") || strings.Contains(l, "implemented\" revision") {
					lines = append(lines, l)
				}
			}
			t.Logf("---- l7gate %s logs (new pods, filtered)\n%s", ctr, strings.Join(lines, "\n"))
		}
	}
	// served again at the end: the last requests of both clients were
	// answered by the proxy
	for name, ss := range map[string][]sample{"allowed": allowed, "denied": denied} {
		want := map[string]string{"allowed": "200 0", "denied": "403 0"}[name]
		if len(ss) < 3 {
			t.Fatalf("%s client: only %d requests", name, len(ss))
		}
		for _, s := range ss[len(ss)-3:] {
			if s.result != want {
				t.Errorf("%s client after the upgrade: request at %d got %q, want %q", name, s.at, s.result, want)
			}
		}
	}
}

// Step 6: scale a Deployment 0 -> 20 -> 0 under a policy; every new pod is
// enforced from its first connection (a denied client never gets an answer,
// not even a reset), and no stale entries remain.
func TestStep6PodChurn(t *testing.T) {
	c := env(t)
	c.agentLogsOnFailure(t)
	c.setupStarwars(t)
	y := `apiVersion: apps/v1
kind: Deployment
metadata:
  name: churn
spec:
  replicas: 0
  selector:
    matchLabels: {app: churn}
  template:
    metadata:
      labels: {app: churn}
    spec:
      terminationGracePeriodSeconds: 1
` + serverContainer("churn", "http:80", "") + `---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: churn-ingress
spec:
  endpointSelector:
    matchLabels: {app: churn}
  ingress:
  - fromEndpoints:
    - matchLabels: {org: empire}
    toPorts:
    - ports:
      - {port: "80", protocol: TCP}
`
	c.apply(t, y)
	t.Cleanup(func() { c.deleteYAML(t, y) })
	c.waitPolicy(t, "default", "churn-ingress")
	c.must(t, "scale", "deploy/churn", "--replicas=20")
	probed := map[string]bool{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var lapses []string
	deadline := time.Now().Add(4 * time.Minute)
	for len(probed) < 20 && time.Now().Before(deadline) {
		out, _ := c.k(t, "get", "pod", "-l", "app=churn", "-o", `jsonpath={range .items[*]}{.status.podIP} {.spec.nodeName}{"\n"}{end}`)
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(l)
			if len(f) != 2 || probed[f[0]] {
				continue
			}
			probed[f[0]] = true
			wg.Add(1)
			go func(ip, node string) {
				defer wg.Done()
				// curl exit 28 (timeout) = dropped; 0 or 7 (refused: a reset
				// came back) means the packet reached the pod.
				out, code := c.exec(t, "xwing", "curl", "-s", "--max-time", "3", "http://"+ip+"/")
				if code != 28 {
					mu.Lock()
					lapses = append(lapses, fmt.Sprintf("%s on %s: curl exit %d %q", ip, node, code, out))
					mu.Unlock()
				}
			}(f[0], f[1])
		}
		time.Sleep(300 * time.Millisecond)
	}
	wg.Wait()
	if len(probed) < 20 {
		t.Fatalf("only %d churn pods got an IP", len(probed))
	}
	for _, l := range lapses {
		t.Errorf("new pod not enforced from its first connection: %s", l)
	}
	c.waitReady(t, 3*time.Minute, "pod", "-l", "app=churn")
	// the allowed client reaches them all
	for ip := range probed {
		if out, code := c.exec(t, "tiefighter", "curl", "-s", "--max-time", "5", "http://"+ip+"/"); code != 0 {
			t.Errorf("tiefighter -> churn %s: exit %d %q", ip, code, out)
		}
	}
	c.must(t, "scale", "deploy/churn", "--replicas=0")
	eventually(t, 2*time.Minute, "churn pods gone", func() error {
		out, _ := c.k(t, "get", "pod", "-l", "app=churn", "-o", "name")
		if strings.TrimSpace(out) != "" {
			return fmt.Errorf("still: %s", out)
		}
		return nil
	})
	// no stale entries: the agents' endpoints and ipcache forget the IPs
	eventually(t, time.Minute, "no stale endpoint or ipcache entries", func() error {
		agents := strings.Fields(c.must(t, "-n", "kube-system", "get", "pod", "-l", "app.kubernetes.io/name=l7gate", "-o", "name"))
		for _, a := range agents {
			eps, _ := c.k(t, "-n", "kube-system", "exec", a, "-c", "agent", "--", "l7gate", "endpoint", "list", "-o", "json")
			ipc, _ := c.k(t, "-n", "kube-system", "exec", a, "-c", "agent", "--", "l7gate", "bpf", "ipcache", "list")
			for ip := range probed {
				if strings.Contains(eps, `"`+ip+`"`) {
					return fmt.Errorf("%s: endpoint list still has %s", a, ip)
				}
				if slices.ContainsFunc(strings.Split(ipc, "\n"), func(l string) bool {
					return strings.HasPrefix(strings.TrimSpace(l), ip+"/") || strings.HasPrefix(strings.TrimSpace(l), ip+" ")
				}) {
					return fmt.Errorf("%s: ipcache still has %s", a, ip)
				}
			}
		}
		return nil
	})
}

// Step 7: the inspection commands work in the agent's pod.
func TestStep7Inspection(t *testing.T) {
	c := env(t)
	c.agentLogsOnFailure(t)
	c.setupStarwars(t)
	c.apply(t, readExample(t, "examples/starwars/policy-l7.yaml"))
	t.Cleanup(func() { c.k(t, "delete", "cnp", "rule1", "--ignore-not-found") }) //nolint:errcheck
	c.waitPolicy(t, "default", "rule1")
	c.curl(t, "xwing", "POST", "/v1/request-landing") // a drop to observe
	xwingIP := strings.TrimSpace(c.must(t, "get", "pod", "xwing", "-o", "jsonpath={.status.podIP}"))
	deathstarIPs := strings.Fields(c.must(t, "get", "pod", "-l", "class=deathstar", "-o", `jsonpath={range .items[*]}{.status.podIP}{" "}{end}`))
	agent := c.agentPod(t, "node1")
	// the drop of xwing -> deathstar:80, decided by rule1 (earlier steps
	// leave other drops from xwing in the flow buffer)
	eventually(t, 30*time.Second, "l7gate observe shows xwing's dropped flow to deathstar under rule1", func() error {
		// Filtered on the server (Hubble's filters): other clients' flows
		// and DNS would push the drop out of the last 20 lines.
		out, err := c.k(t, "-n", "kube-system", "exec", agent, "-c", "agent", "--", "l7gate", "observe",
			"--from-ip", xwingIP, "--drops", "--last", "50")
		for _, l := range strings.Split(out, "\n") {
			// Endpoints print as namespace/pod:port, others as IP:port.
			toDeathstar := strings.Contains(l, "default/deathstar") && strings.Contains(l, ":80 ") ||
				slices.ContainsFunc(deathstarIPs, func(ip string) bool { return strings.Contains(l, " "+ip+":80 ") })
			fromXwing := strings.Contains(l, "default/xwing:") || strings.Contains(l, " "+xwingIP+":")
			if strings.Contains(l, "ingress") && fromXwing && toDeathstar &&
				strings.Contains(l, "DROPPED") && strings.Contains(l, "default/rule1") {
				t.Logf("observe: %s", l)
				return nil
			}
		}
		c.curl(t, "xwing", "POST", "/v1/request-landing")
		return fmt.Errorf("%v: no drop from %s to deathstar %v by default/rule1:\n%s", err, xwingIP, deathstarIPs, out)
	})
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-c", "agent", "--", "l7gate", "status"}, "rule1"},
		{[]string{"-c", "agent", "--", "l7gate", "endpoint", "list"}, "deathstar"},
		{[]string{"-c", "agent", "--", "l7gate", "envoy", "config-dump", "--admin", "unix:/run/l7gate/proxy-admin.sock"}, "listener"},
	} {
		args := append([]string{"-n", "kube-system", "exec", agent}, tc.args...)
		out, err := c.k(t, args...)
		if err != nil || !strings.Contains(strings.ToLower(out), tc.want) {
			t.Errorf("kubectl %s: %v, want %q in:\n%s", strings.Join(args, " "), err, tc.want, out)
		}
	}
}

// agentPod is the l7gate pod on a node ("pod/l7gate-xxxxx").
func (c cluster) agentPod(t *testing.T, node string) string {
	t.Helper()
	out := strings.TrimSpace(c.must(t, "-n", "kube-system", "get", "pod", "-l", "app.kubernetes.io/name=l7gate",
		"--field-selector", "spec.nodeName="+node, "-o", "name"))
	if out == "" || strings.Contains(out, "\n") {
		t.Fatalf("l7gate pods on %s: %q", node, out)
	}
	return out
}

// egressYAML is step 8's policies: tiefighter may resolve names with
// kube-dns and only request landing at deathstar pods (an L7 egress rule
// on the backend pods' labels, not on the ClusterIP); xwing may resolve
// names and nothing else (egress default-deny). No ingress policy: every
// verdict is the clients' egress one.
const egressYAML = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: tiefighter-egress
spec:
  endpointSelector:
    matchLabels: {org: empire, class: tiefighter}
  egress:
  - toEndpoints:
    - matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
  - toEndpoints:
    - matchLabels: {org: empire, class: deathstar}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: POST, path: /v1/request-landing}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: xwing-egress
spec:
  endpointSelector:
    matchLabels: {org: alliance, class: xwing}
  egress:
  - toEndpoints:
    - matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
`

// Step 8: the seed walkthrough with EGRESS policy, by Service DNS name:
// CoreDNS resolves deathstar's name to its ClusterIP, the socket LB turns
// the ClusterIP into a deathstar pod at connect(), so the clients' egress
// rules (written on the deathstar pods' labels) apply to Service traffic.
// kube-proxy stays installed and keeps its rules for the ClusterIP. The
// verdicts are the ingress walkthrough's: POST lands, PUT exhaust-port is
// refused by the proxy (403), xwing's connection is dropped (its egress
// drop names the deathstar pod, not the ClusterIP).
func TestStep8EgressByServiceName(t *testing.T) {
	c := env(t)
	c.agentLogsOnFailure(t)
	c.setupStarwars(t)
	t.Cleanup(func() { c.deleteYAML(t, egressYAML) })
	clusterIP := strings.TrimSpace(c.must(t, "get", "svc", "deathstar", "-o", "jsonpath={.spec.clusterIP}"))
	deathstarIPs := strings.Fields(c.must(t, "get", "pod", "-l", "class=deathstar", "-o", `jsonpath={range .items[*]}{.status.podIP}{" "}{end}`))

	// kube-proxy is installed and programs deathstar's ClusterIP on every
	// node (what pods would hit without the socket LB).
	if id := os.Getenv("E2E_ID"); id != "" {
		for i := 1; i <= c.nodes; i++ {
			ns := fmt.Sprintf("l7e2e-%s-node%d", id, i)
			out, err := run(t.Context(), 30*time.Second, "ip", "netns", "exec", ns, "iptables", "-t", "nat", "-S", "KUBE-SERVICES")
			if err != nil || !strings.Contains(out, clusterIP+"/32") {
				t.Errorf("node%d: kube-proxy's KUBE-SERVICES has no rule for deathstar's ClusterIP %s: %v\n%s", i, clusterIP, err, out)
			}
		}
	}

	c.apply(t, egressYAML)
	c.waitPolicy(t, "default", "tiefighter-egress")
	c.waitPolicy(t, "default", "xwing-egress")
	for _, p := range c.clients("tiefighter") {
		if out, code := c.curl(t, p, "PUT", "/v1/exhaust-port"); code != 0 || strings.TrimSpace(out) != "Access denied" {
			t.Errorf("%s PUT /v1/exhaust-port by Service name: exit %d %q, want Access denied (egress L7)", p, code, out)
		}
		if out, code := c.curl(t, p, "POST", "/v1/request-landing"); code != 0 || strings.TrimSpace(out) != "Ship landed" {
			t.Errorf("%s POST /v1/request-landing by Service name: exit %d %q, want Ship landed", p, code, out)
		}
	}
	for _, p := range c.clients("xwing") {
		// resolving works (DNS is allowed), the connection is dropped
		if out, code := c.exec(t, p, "busybox", "nslookup", svc); code != 0 || !strings.Contains(out, clusterIP) {
			t.Errorf("%s resolves %s: exit %d %q, want %s", p, svc, code, out, clusterIP)
		}
		if out, code := c.curl(t, p, "POST", "/v1/request-landing"); code != 28 {
			t.Errorf("%s POST by Service name: exit %d %q, want a timeout (egress drop)", p, code, out)
		}
	}

	// The drop is xwing's egress one, to a deathstar pod: the datapath saw
	// the backend, not the ClusterIP.
	xwingIP := strings.TrimSpace(c.must(t, "get", "pod", "xwing", "-o", "jsonpath={.status.podIP}"))
	agent := c.agentPod(t, "node1")
	eventually(t, 30*time.Second, "l7gate observe shows xwing's egress drop to a deathstar pod", func() error {
		out, err := c.k(t, "-n", "kube-system", "exec", agent, "-c", "agent", "--", "l7gate", "observe",
			"--from-ip", xwingIP, "--drops", "--last", "50")
		for _, l := range strings.Split(out, "\n") {
			toDeathstar := strings.Contains(l, "default/deathstar") && strings.Contains(l, ":80 ") ||
				slices.ContainsFunc(deathstarIPs, func(ip string) bool { return strings.Contains(l, " "+ip+":80 ") })
			if strings.Contains(l, "spec.egress") && strings.Contains(l, "DROPPED") && toDeathstar && !strings.Contains(l, clusterIP+":") {
				t.Logf("observe: %s", l)
				return nil
			}
		}
		c.curl(t, "xwing", "POST", "/v1/request-landing")
		return fmt.Errorf("%v: no egress drop from %s to deathstar %v:\n%s", err, xwingIP, deathstarIPs, out)
	})
}

// The dual-stack cluster's IPv6 ranges (hack/cluster.sh).
var (
	podCIDR6 = netip.MustParsePrefix("fd00:7e2e:1::/56")
	svcCIDR6 = netip.MustParsePrefix("fd00:7e2e:2::/112")
)

// dsYAML is step 9's dual-stack workload: a deathstar-like HTTP server
// (2 replicas on node1) listening on the pod's IPv4 and IPv6 addresses
// (both from status.podIPs), behind a Service that requires both families.
const dsYAML = `apiVersion: v1
kind: Service
metadata:
  name: ds-deathstar
spec:
  type: ClusterIP
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  ports:
  - {port: 80}
  selector: {app: ds-deathstar}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ds-deathstar
spec:
  replicas: 2
  selector:
    matchLabels: {app: ds-deathstar}
  template:
    metadata:
      labels: {app: ds-deathstar}
    spec:
      nodeSelector: {kubernetes.io/hostname: node1}
      terminationGracePeriodSeconds: 1
      containers:
      - name: server
        image: ` + workloadImage + `
        imagePullPolicy: Never
        # POD_IPS is "<IPv4>,<IPv6>" (IPv4 is the cluster's primary family)
        command: [sh, -c, 'exec l7gate demo serve --config "{\"host\":\"ds-deathstar\",\"ip\":\"${POD_IPS%%,*}\",\"ip6\":\"${POD_IPS##*,}\",\"serve\":[\"http:80\"]}"']
        env:
        - name: POD_IPS
          valueFrom: {fieldRef: {fieldPath: status.podIPs}}
        readinessProbe:
          tcpSocket: {port: 80}
          periodSeconds: 2
`

// dsIngressL4 and dsIngressL7 select the dual-stack servers: empire pods
// may reach port 80 (L4), then only with GET (L7); every other peer and
// port is denied (default deny of the selected pods).
const dsIngressL4 = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: ds-ingress
spec:
  endpointSelector:
    matchLabels: {app: ds-deathstar}
  ingress:
  - fromEndpoints:
    - matchLabels: {org: empire}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
`

const dsIngressL7 = dsIngressL4 + `      rules:
        http:
        - method: GET
`

// dsEgressYAML: tiefighter may resolve names and GET from the dual-stack
// servers (an L7 egress rule on the backend pods' labels); xwing may only
// resolve names. No ingress policy.
const dsEgressYAML = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: ds-tiefighter-egress
spec:
  endpointSelector:
    matchLabels: {org: empire, class: tiefighter}
  egress:
  - toEndpoints:
    - matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
  - toEndpoints:
    - matchLabels: {app: ds-deathstar}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: GET
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: ds-xwing-egress
spec:
  endpointSelector:
    matchLabels: {org: alliance, class: xwing}
  egress:
  - toEndpoints:
    - matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
`

// podIPs is a pod's status.podIPs from the API server, one per family;
// it fails the test unless the pod has exactly one IPv4 address and one
// IPv6 address in the cluster's IPv6 pod CIDR.
func (c cluster) podIPs(t *testing.T, pod string) (v4, v6 netip.Addr) {
	t.Helper()
	out := c.must(t, "get", "pod", pod, "-o", "jsonpath={.status.podIPs[*].ip}")
	for _, s := range strings.Fields(out) {
		a, err := netip.ParseAddr(s)
		switch {
		case err != nil:
			t.Fatalf("%s: status.podIPs %q: %v", pod, out, err)
		case a.Is4() && !v4.IsValid():
			v4 = a
		case a.Is6() && podCIDR6.Contains(a) && !v6.IsValid():
			v6 = a
		default:
			t.Fatalf("%s: status.podIPs %q: unexpected %s", pod, out, a)
		}
	}
	if !v4.IsValid() || !v6.IsValid() {
		t.Fatalf("%s: status.podIPs %q, want one IPv4 and one IPv6 in %s", pod, out, podCIDR6)
	}
	return v4, v6
}

// url is http://ADDR:PORT/PATH with an IPv6 address bracketed.
func url(a netip.Addr, port uint16, path string) string {
	return "http://" + netip.AddrPortFrom(a, port).String() + path
}

// curlAddr requests url from a pod (curl -g: brackets are literal); safe
// to call from several goroutines: a failure to run kubectl is exit -1.
func (c cluster) curlAddr(pod, method, u string) (string, int) {
	out, err := run(context.Background(), 90*time.Second, c.kubectl, "exec", pod, "--", "curl", "-g", "-s", "--max-time", "5", "-X"+method, u)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out, 0
	case errors.As(err, &ee):
		return out, ee.ExitCode()
	}
	return fmt.Sprintf("kubectl exec %s: %v: %s", pod, err, out), -1
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// req is one request of step 9 and the verdict it should get.
type req struct {
	client, method string
	dst            netip.Addr
	port           uint16
	want           string
}

func (r req) url() string {
	if r.method == "PUT" {
		return url(r.dst, r.port, "/v1/exhaust-port")
	}
	return url(r.dst, r.port, "/v1/ships")
}

// Step 9: dual-stack over IPv6 in the real cluster, beside the same
// checks over IPv4 (same verdicts): pods' IPv6 addresses from
// status.podIPs reach every agent's ipcache with the pod's identity; an
// L3/L4 ingress policy and its default deny decide by IPv6 as by IPv4 on
// one node and across nodes; a RequireDualStack Service's IPv6 ClusterIP
// (programmed by kube-proxy in ip6tables) is reached with an L7 rule
// deciding over IPv6 (GET allowed, PUT 403); with egress rules on the
// backends' labels only the socket LB's connect()-time translation of the
// IPv6 ClusterIP to a backend's IPv6 address lets a request through, and
// a denied client's IPv6 connection is dropped (timeout, never a reset or
// an answer), observed as an egress drop to a backend's IPv6 address.
func TestStep9DualStack(t *testing.T) {
	c := env(t)
	c.agentLogsOnFailure(t)
	c.setupStarwars(t)
	c.apply(t, dsYAML)
	t.Cleanup(func() {
		c.k(t, "delete", "cnp", "ds-ingress", "ds-tiefighter-egress", "ds-xwing-egress", "--ignore-not-found") //nolint:errcheck
		c.deleteYAML(t, dsYAML)
	})
	c.must(t, "rollout", "status", "deploy/ds-deathstar", "--timeout=180s")

	// Addresses from the API server: every pod has both families, the
	// Service an IPv6 ClusterIP in the IPv6 service CIDR.
	clients := append(c.clients("tiefighter"), c.clients("xwing")...)
	ip4, ip6 := map[string]netip.Addr{}, map[string]netip.Addr{}
	for _, p := range clients {
		ip4[p], ip6[p] = c.podIPs(t, p)
	}
	backends := strings.Fields(c.must(t, "get", "pod", "-l", "app=ds-deathstar", "-o", `jsonpath={range .items[*]}{.metadata.name}{" "}{end}`))
	if len(backends) != 2 {
		t.Fatalf("ds-deathstar pods: %v", backends)
	}
	backend6 := map[netip.Addr]bool{}
	for _, b := range backends {
		v4, v6 := c.podIPs(t, b)
		backend6[v6] = true
		if b == backends[0] {
			ip4[b], ip6[b] = v4, v6
		}
	}
	cips := strings.Fields(c.must(t, "get", "svc", "ds-deathstar", "-o", `jsonpath={.spec.clusterIPs[*]}`))
	if len(cips) != 2 {
		t.Fatalf("ds-deathstar clusterIPs %v, want an IPv4 and an IPv6 one", cips)
	}
	cip4, err4 := netip.ParseAddr(cips[0])
	cip6, err6 := netip.ParseAddr(cips[1])
	if err4 != nil || err6 != nil || !cip4.Is4() || !svcCIDR6.Contains(cip6) {
		t.Fatalf("ds-deathstar clusterIPs %v, want [IPv4, IPv6 in %s]", cips, svcCIDR6)
	}
	t.Logf("ds-deathstar ClusterIPs %s %s, backends %v; tiefighter %s %s", cip4, cip6, backends, ip4["tiefighter"], ip6["tiefighter"])

	// kube-proxy runs dual-stack: the IPv6 ClusterIP is in ip6tables on
	// every node (what a pod hits without the socket LB).
	if id := os.Getenv("E2E_ID"); id != "" {
		for i := 1; i <= c.nodes; i++ {
			ns := fmt.Sprintf("l7e2e-%s-node%d", id, i)
			eventually(t, 30*time.Second, fmt.Sprintf("node%d: ip6tables KUBE-SERVICES has %s", i, cip6), func() error {
				out, err := run(t.Context(), 30*time.Second, "ip", "netns", "exec", ns, "ip6tables", "-t", "nat", "-S", "KUBE-SERVICES")
				if err != nil || !strings.Contains(out, cip6.String()+"/128") {
					return fmt.Errorf("%v\n%s", err, out)
				}
				return nil
			})
		}
	}

	// No policy yet: both families reach a backend, by pod IP and by
	// ClusterIP (the first IPv6 packets wait for neighbour discovery).
	first := backends[0]
	for _, a := range []netip.Addr{ip4[first], ip6[first], cip4, cip6} {
		eventually(t, 60*time.Second, "tiefighter GET "+url(a, 80, "/v1/ships")+" without policy", func() error {
			if out, code := c.curlAddr("tiefighter", "GET", url(a, 80, "/v1/ships")); code != 0 || strings.TrimSpace(out) != "GET /v1/ships" {
				return fmt.Errorf("exit %d %q", code, out)
			}
			return nil
		})
	}

	// want: "ok" (200 and the echo), "403" (the proxy's Access denied) or
	// "dropped" (curl timed out: exit 28).
	verdict := func(out string, code int) string {
		switch {
		case code == 28:
			return "dropped"
		case code == 0 && strings.TrimSpace(out) == "Access denied":
			return "403"
		case code == 0 && strings.HasPrefix(strings.TrimSpace(out), "GET /"):
			return "ok"
		}
		return fmt.Sprintf("exit %d %q", code, firstLine(out))
	}
	// check runs the requests, a few at a time (a dropped one waits for
	// curl's timeout), and reports each wrong verdict; a same-node
	// client's timeouts through the L7 proxy are named as such (sameNode).
	check := func(t *testing.T, reqs []req, report func(timedOut bool, format string, args ...any)) {
		t.Helper()
		got := make([]string, len(reqs))
		codes := make([]int, len(reqs))
		sem := make(chan struct{}, 6)
		var wg sync.WaitGroup
		for i, r := range reqs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				out, code := c.curlAddr(r.client, r.method, r.url())
				got[i], codes[i] = verdict(out, code), code
			}()
		}
		wg.Wait()
		for i, r := range reqs {
			if got[i] != r.want {
				report(codes[i] == 28, "%s %s %s over %s: %s, want %s", r.client, r.method, r.url(), family(r.dst), got[i], r.want)
			} else {
				t.Logf("%s %s %s over %s: %s", r.client, r.method, r.url(), family(r.dst), got[i])
			}
		}
	}
	errorf := func(t *testing.T) func(bool, string, ...any) {
		return func(_ bool, format string, args ...any) { t.Helper(); t.Errorf(format, args...) }
	}
	// both: the same requests over IPv4 and over IPv6
	both := func(client, method string, dst4, dst6 netip.Addr, port uint16, want string) []req {
		return []req{{client, method, dst4, port, want}, {client, method, dst6, port, want}}
	}

	t.Run("L3/L4 ingress by IPv6 as by IPv4", func(t *testing.T) {
		c.apply(t, dsIngressL4)
		c.waitPolicy(t, "default", "ds-ingress")
		// node1's agent (the backends') knows every client's IPv6 address
		// (from status.podIPs), with the identity of its IPv4 address
		agent := c.agentPod(t, "node1")
		ipc := c.must(t, "-n", "kube-system", "exec", agent, "-c", "agent", "--", "l7gate", "bpf", "ipcache", "list")
		idOf := func(a netip.Addr) string {
			for _, l := range strings.Split(ipc, "\n") {
				if f := strings.Fields(l); len(f) == 2 && f[0] == netip.PrefixFrom(a, a.BitLen()).String() {
					return f[1]
				}
			}
			return ""
		}
		for _, p := range clients {
			if id4, id6 := idOf(ip4[p]), idOf(ip6[p]); id6 == "" || id6 != id4 {
				t.Errorf("node1 ipcache: %s's IPv6 %s has identity %q, its IPv4 %s %q", p, ip6[p], id6, ip4[p], id4)
			}
		}
		var reqs []req
		for _, p := range c.clients("tiefighter") {
			reqs = append(reqs, both(p, "GET", ip4[first], ip6[first], 80, "ok")...)
			reqs = append(reqs, both(p, "GET", cip4, cip6, 80, "ok")...)
			// a port the rule does not allow: dropped, not refused by the pod
			reqs = append(reqs, both(p, "GET", ip4[first], ip6[first], 81, "dropped")...)
		}
		for _, p := range c.clients("xwing") {
			reqs = append(reqs, both(p, "GET", ip4[first], ip6[first], 80, "dropped")...)
			reqs = append(reqs, both(p, "GET", cip4, cip6, 80, "dropped")...)
		}
		check(t, reqs, errorf(t))
	})

	t.Run("L7 ingress over IPv6 ClusterIP: GET allowed, PUT 403", func(t *testing.T) {
		c.apply(t, dsIngressL7)
		c.waitPolicy(t, "default", "ds-ingress")
		var remote []req
		for _, p := range c.clients("tiefighter") {
			reqs := append(both(p, "GET", cip4, cip6, 80, "ok"), both(p, "PUT", cip4, cip6, 80, "403")...)
			reqs = append(reqs, both(p, "PUT", ip4[first], ip6[first], 80, "403")...)
			if p == "tiefighter" {
				sameNode(t, "same node", func(t *testing.T, report func(bool, string, ...any)) { check(t, reqs, report) })
				continue
			}
			remote = append(remote, reqs...)
		}
		for _, p := range c.clients("xwing") {
			remote = append(remote, both(p, "GET", cip4, cip6, 80, "dropped")...)
		}
		check(t, remote, errorf(t))
		c.must(t, "delete", "cnp", "ds-ingress")
	})

	t.Run("egress through the socket LB over IPv6", func(t *testing.T) {
		c.apply(t, dsEgressYAML)
		c.waitPolicy(t, "default", "ds-tiefighter-egress")
		c.waitPolicy(t, "default", "ds-xwing-egress")
		var reqs []req
		for _, p := range c.clients("tiefighter") {
			reqs = append(reqs, both(p, "GET", cip4, cip6, 80, "ok")...)
			reqs = append(reqs, both(p, "PUT", cip4, cip6, 80, "403")...)
		}
		for _, p := range c.clients("xwing") {
			reqs = append(reqs, both(p, "GET", cip4, cip6, 80, "dropped")...)
		}
		check(t, reqs, errorf(t))
		// by name over IPv6: CoreDNS answers the AAAA record (the IPv6
		// ClusterIP), the L7 egress rule decides
		const name = "ds-deathstar.default.svc.cluster.local"
		for _, p := range c.clients("tiefighter") {
			out, code := c.exec(t, p, "curl", "-6", "-s", "--max-time", "5", "-w", " %{remote_ip}", "-XPUT", "http://"+name+"/v1/exhaust-port")
			if code != 0 || !strings.HasPrefix(out, "Access denied") || !strings.HasSuffix(out, " "+cip6.String()) {
				t.Errorf("%s curl -6 PUT %s: exit %d %q, want Access denied from %s", p, name, code, out, cip6)
			}
			out, code = c.exec(t, p, "curl", "-6", "-s", "--max-time", "5", "-w", " %{remote_ip}", "http://"+name+"/v1/ships")
			if code != 0 || !strings.HasPrefix(out, "GET /v1/ships") || !strings.HasSuffix(out, " "+cip6.String()) {
				t.Errorf("%s curl -6 GET %s: exit %d %q, want GET /v1/ships from %s", p, name, code, out, cip6)
			}
		}
		// xwing's IPv6 drop is an egress drop to a backend's IPv6 address:
		// the datapath saw the backend, not the IPv6 ClusterIP
		agent := c.agentPod(t, "node1")
		eventually(t, 30*time.Second, "l7gate observe shows xwing's IPv6 egress drop to a ds-deathstar pod", func() error {
			out, err := c.k(t, "-n", "kube-system", "exec", agent, "-c", "agent", "--", "l7gate", "observe",
				"--from-ip", ip6["xwing"].String(), "--drops", "--last", "50")
			for _, l := range strings.Split(out, "\n") {
				// this run's backends (the flow buffer outlives pods)
				toBackend := false
				for _, b := range backends {
					toBackend = toBackend || strings.Contains(l, "default/"+b+":80 ")
				}
				for b := range backend6 {
					toBackend = toBackend || strings.Contains(l, " "+netip.AddrPortFrom(b, 80).String()+" ")
				}
				if strings.Contains(l, "spec.egress") && strings.Contains(l, "DROPPED") && toBackend && !strings.Contains(l, cip6.String()) {
					t.Logf("observe: %s", l)
					return nil
				}
			}
			c.curlAddr("xwing", "GET", url(cip6, 80, "/v1/ships"))
			return fmt.Errorf("%v: no egress drop from %s to %v:\n%s", err, ip6["xwing"], backend6, out)
		})
	})

	t.Run("DNS rules over kube-dns's IPv6 ClusterIP as over IPv4", func(t *testing.T) {
		// kube-dns is dual-stack (e2e/manifests/coredns.yaml); the socket
		// LB sends a query to either ClusterIP to a CoreDNS pod, the
		// egress redirect to l7gate's DNS proxy, which applies rules.dns.
		dns := strings.Fields(c.must(t, "-n", "kube-system", "get", "svc", "kube-dns", "-o", `jsonpath={.spec.clusterIPs[*]}`))
		if len(dns) != 2 {
			t.Fatalf("kube-dns clusterIPs %v, want an IPv4 and an IPv6 one", dns)
		}
		dns4, err4 := netip.ParseAddr(dns[0])
		dns6, err6 := netip.ParseAddr(dns[1])
		if err4 != nil || err6 != nil || !dns4.Is4() || !svcCIDR6.Contains(dns6) {
			t.Fatalf("kube-dns clusterIPs %v, want [IPv4, IPv6 in %s]", dns, svcCIDR6)
		}
		c.apply(t, dsDNSRulesYAML)
		c.waitPolicy(t, "default", "ds-tiefighter-egress")
		const allowed = "ds-deathstar.default.svc.cluster.local"
		// A name CoreDNS answers (NOERROR), outside rules.dns: only the
		// DNS proxy answers it REFUSED.
		const denied = "kube-dns.kube-system.svc.cluster.local"
		for _, p := range c.clients("tiefighter") {
			for _, server := range []netip.Addr{dns4, dns6} {
				// busybox nslookup asks for A and AAAA: both ClusterIPs
				eventually(t, 30*time.Second, fmt.Sprintf("%s nslookup %s %s answered", p, allowed, server), func() error {
					out, code := c.exec(t, p, "busybox", "nslookup", allowed, server.String())
					if code != 0 || !strings.Contains(out, cip4.String()) || !strings.Contains(out, cip6.String()) {
						return fmt.Errorf("exit %d %q, want %s and %s", code, out, cip4, cip6)
					}
					return nil
				})
				out, code := c.exec(t, p, "busybox", "nslookup", denied, server.String())
				if code == 0 || !strings.Contains(out, "REFUSED") {
					t.Errorf("%s nslookup %s %s (over %s): exit %d %q, want REFUSED by the DNS proxy", p, denied, server, family(server), code, out)
				} else {
					t.Logf("%s nslookup %s %s (over %s): REFUSED", p, denied, server, family(server))
				}
			}
		}
	})
}

// dsDNSRulesYAML is ds-tiefighter-egress (dsEgressYAML) with DNS rules on
// its kube-dns port: only ds-deathstar's name.
const dsDNSRulesYAML = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: ds-tiefighter-egress
spec:
  endpointSelector:
    matchLabels: {org: empire, class: tiefighter}
  egress:
  - toEndpoints:
    - matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
      rules:
        dns:
        - matchName: ds-deathstar.default.svc.cluster.local
  - toEndpoints:
    - matchLabels: {app: ds-deathstar}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: GET
`
