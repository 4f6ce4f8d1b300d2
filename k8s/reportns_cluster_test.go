package k8s

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/l7gate/l7gate/source"
)

// lockedBuffer collects a logger's output across goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testReportNamespaceRefused: an agent whose report namespace does not
// grant it ConfigMap writes (a --status-namespace the chart did not set
// up) fails visibly, naming the namespace and the missing permission, and
// never counts as having reported; the elected agent that may not list
// the reports there says so instead of waiting for reports it cannot see.
func testReportNamespaceRefused(ctx context.Context, t *testing.T, c *cluster) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	const readOnly, none = "l7gate-reports-readonly", "l7gate-reports-none"
	for _, ns := range []string{readOnly, none} {
		mustCreateNamespace(ctx, t, c, ns, nil)
	}
	// readOnly: the agent may read ConfigMaps there, not write them.
	if _, err := c.client.RbacV1().Roles(readOnly).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "read"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"get", "list", "watch"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.client.RbacV1().RoleBindings(readOnly).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "read"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "read"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "l7gate", Namespace: "kube-system"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	const node = "node-refused"
	if _, err := c.client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	defer c.client.CoreV1().Nodes().Delete(context.WithoutCancel(ctx), node, metav1.DeleteOptions{})

	client, dyn, _ := agentClients(t, c)
	var logs lockedBuffer
	reported := make(chan uint64, 1)
	w, err := NewStatusWriter(StatusWriterConfig{Client: client, Dynamic: dyn, Node: node,
		Election: ElectionConfig{ReportNamespace: readOnly, Disabled: true},
		Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
		Reported: func(rev uint64) {
			select {
			case reported <- rev:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); w.Run(wctx) }()
	defer func() { wcancel(); <-done }()
	w.Implemented(ctx, 1, source.Update{}, nil)
	want := "the agent may not create or patch configmaps in namespace " + readOnly
	for !strings.Contains(logs.String(), want) {
		select {
		case rev := <-reported:
			t.Fatalf("revision %d reported although the agent may not write its report in %s; log: %s", rev, readOnly, logs.String())
		case <-ctx.Done():
			t.Fatalf("no error naming the namespace and the permission (%q); log: %s", want, logs.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	select {
	case rev := <-reported:
		t.Errorf("revision %d reported although its report was refused", rev)
	default:
	}
	if _, err := c.client.CoreV1().ConfigMaps(readOnly).Get(ctx, reportName(node), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("report in %s: %v, want none", readOnly, err)
	}

	// The elected agent, in a namespace where it may not list reports.
	a := &aggregator{dyn: dyn, namespace: none, log: testLogger(t), nodesLimit: defaultStatusNodesLimit}
	err = a.run(ctx)
	if err == nil || !strings.Contains(err.Error(), "the agent may not list configmaps in namespace "+none) {
		t.Errorf("merge with reports it may not list: %v, want an error naming namespace %s and configmaps list", err, none)
	}
}
