package k8s

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/source"
)

// Condition types written on CiliumNetworkPolicy and
// CiliumClusterwideNetworkPolicy status.
const (
	// ConditionValid is False when the policy was rejected (not applied
	// at all); the message names the field and the reason.
	ConditionValid = "Valid"
	// ConditionSupported is False when the policy applies but parts of it
	// are not enforced by l7gate (each named with its field).
	ConditionSupported = "Supported"
	// ConditionImplemented (written when the cluster has more nodes than
	// status.nodes lists) counts, of the nodes that should run an agent
	// (ElectionConfig.StatusNodeSelector), those that enforce the current
	// generation, and names the nodes that have not reported it; it is
	// True when every such node does.
	ConditionImplemented = "Implemented"
)

// Condition reasons.
const (
	ReasonValid         = "Valid"
	ReasonInvalid       = "InvalidPolicy"
	ReasonSupported     = "Supported"
	ReasonUnsupported   = "UnsupportedFields"
	ReasonAllNodes      = "AllNodes"
	ReasonPending       = "NodesPending"
	eventInvalid        = "PolicyInvalid"
	eventUnsupported    = "PolicyUnsupported"
	maxConditionMessage = 4096
)

// PolicyStatus is what one node reports about one policy.
type PolicyStatus struct {
	// Revision is the agent revision that implemented the policy on this
	// node (for an invalid policy: the revision that rejected it).
	Revision uint64
	// Generation is the object's metadata.generation the revision held
	// (0: unknown; the writer then uses the object's current one).
	Generation int64
	// Err is set when the policy was rejected; it names the field.
	Err error
	// Warnings are unsupported parts, each "path: message".
	Warnings []string
	// EndpointFailures name the endpoints of this node that could not be
	// given this policy's rules (they fail closed), each
	// "namespace/name: step: error".
	EndpointFailures []string
}

// StatusWriterConfig configures a StatusWriter. Client and Dynamic are
// required.
type StatusWriterConfig struct {
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	Node    string
	// Source, when set, tells which object generation a digest held.
	Source *Source
	// Election: the agents elect one of them to merge their reports
	// into the policies' status.
	Election ElectionConfig
	Logger   *slog.Logger
	// Reported, when set, is called from Run after the statuses of
	// revision rev were written (or found unchanged, so not written): an
	// observer (tests, make scale) can wait for it instead of sleeping.
	Reported func(rev uint64)
}

// ElectionConfig configures the election (a coordination.k8s.io Lease) of
// the agent that merges the nodes' reports into each policy's status. Zero values take the defaults.
type ElectionConfig struct {
	// Namespace of the Lease: default the agent's own (its service
	// account's), else kube-system.
	Namespace string
	// ReportNamespace of the nodes' report ConfigMaps (each agent writes
	// its node's, the elected one reads them all): default
	// DefaultReportNamespace. It must hold nothing but these reports:
	// every agent may write every ConfigMap in it, so a node's agent must
	// not be able to write any other ConfigMap (the chart's Envoy
	// bootstrap, CoreDNS's in kube-system).
	ReportNamespace string
	// LeaseName defaults to l7gate-policy-status.
	LeaseName string
	// LeaseDuration (45s), RenewDeadline (30s), RetryPeriod (15s): as in
	// client-go's leaderelection.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Disabled: this agent never merges.
	Disabled bool
	// StatusNodesLimit: up to this many nodes (default 32), a policy's
	// status.nodes lists every node; beyond, only the nodes with an error
	// or behind the current generation (at most this many, errors first),
	// and the Implemented condition
	// counts the others (every node's own report stays in its report
	// ConfigMap). Negative: always list every node.
	StatusNodesLimit int
	// StatusNodeSelector is a label selector (labels.Parse syntax, e.g.
	// "kubernetes.io/os=linux") of the Nodes that should run an agent:
	// the agent DaemonSet's nodeSelector (the chart passes it). Empty:
	// every Node. A policy's status counts these nodes, and any other
	// existing Node that has a report: a node without a report is
	// pending (listed in status.nodes, named by the Implemented
	// condition), and a report whose Node no longer exists counts for
	// nothing.
	StatusNodeSelector string
}

// StatusWriter reports what this node implemented: one write of its
// report ConfigMap (every policy's generation, the revision that first
// implemented it, errors, unsupported fields, endpoints failing closed),
// plus an Event when a policy is rejected or partly unsupported. One
// agent, elected, merges the nodes' reports into each policy's
// status.nodes[node] and its Valid and Supported conditions, so users read
// `kubectl get cnp -o yaml` as before while a policy change costs one
// small write per node, no conflicts, and a few merged writes per policy
// instead of one per node that every agent received (make scale). It
// writes only when what it would write changed, so revisions caused by
// pod churn cost the API server nothing.
type StatusWriter struct {
	cfg StatusWriterConfig
	log *slog.Logger
	// nodeSelector: cfg.Election.StatusNodeSelector, parsed.
	nodeSelector labels.Selector

	mu       sync.Mutex
	recorder record.EventRecorder
	// written is the last status reported per object (by fingerprint).
	written map[objectKey]string
	pending *implemented
	wake    chan struct{}

	// Used by Run's goroutine only. nodeWritten is this node's report
	// as last written (nil: not read yet); nodeUID the Node's UID (its
	// owner).
	nodeWritten map[string]nodePolicyStatus
	nodeUID     types.UID
	// nodeExists: this node's report exists (so a write is a patch);
	// nodeOwned: it names the Node as its owner; legacyDeleted: the
	// node's PolicyNodeStatus (an older agent's report) is gone.
	nodeExists, nodeOwned, legacyDeleted bool
	// reportNamespace: where the node reports live (ReportNamespace).
	reportNamespace string
}

type implemented struct {
	rev      uint64
	u        source.Update
	failures []source.EndpointFailure
}

// NewStatusWriter returns a StatusWriter; Run it to process Implemented
// calls and to send Events.
func NewStatusWriter(cfg StatusWriterConfig) (*StatusWriter, error) {
	if cfg.Client == nil || cfg.Dynamic == nil {
		return nil, errors.New("status writer: client and dynamic client required")
	}
	if cfg.Node == "" {
		return nil, errors.New("status writer: node name required")
	}
	sel, err := labels.Parse(cfg.Election.StatusNodeSelector)
	if err != nil {
		return nil, fmt.Errorf("status writer: status node selector: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &StatusWriter{cfg: cfg, log: cfg.Logger, nodeSelector: sel, written: map[objectKey]string{}, wake: make(chan struct{}, 1),
		reportNamespace: NodeReportNamespace(cfg.Election.ReportNamespace)}, nil
}

// Run sends Events and writes the statuses Implemented queued, until ctx
// ends. A failed write is retried with the next call or after
// statusRetryDelay: 0.5 s doubling up to 10 s, jittered, so a brief API
// server overload costs a node half a second, not ten, and the nodes that
// failed together do not retry together.
func (w *StatusWriter) Run(ctx context.Context) error {
	b := record.NewBroadcaster(record.WithContext(ctx))
	defer b.Shutdown()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: w.cfg.Client.CoreV1().Events("")})
	w.mu.Lock()
	w.recorder = b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "l7gate", Host: w.cfg.Node})
	w.mu.Unlock()
	if !w.cfg.Election.Disabled {
		done := make(chan struct{})
		go func() {
			defer close(done)
			w.runElected(ctx)
		}()
		defer func() { <-done }()
	}
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	failed := 0 // consecutive failed writes
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.wake:
		case <-retry.C:
		}
		w.mu.Lock()
		p := w.pending
		w.pending = nil
		w.mu.Unlock()
		if p == nil {
			continue
		}
		err := w.reportUpdate(ctx, p.rev, p.u, p.failures)
		if err == nil && w.cfg.Reported != nil {
			w.cfg.Reported(p.rev)
		}
		if err == nil {
			failed = 0
		}
		if err != nil && ctx.Err() == nil {
			d := statusRetryDelay(failed, rand.Float64())
			failed++
			w.log.Warn("policy status not written; retrying", "in", d, "error", err)
			w.mu.Lock()
			if w.pending == nil {
				w.pending = p
			}
			w.mu.Unlock()
			retry.Reset(d)
		}
	}
}

// statusRetryDelay is the wait before retrying a status write after
// failed consecutive failures (0: the first): 0.5 s doubling up to 10 s,
// times a jitter factor between 0.8 and 1.2 taken from u in [0, 1).
func statusRetryDelay(failed int, u float64) time.Duration {
	d := 10 * time.Second
	if failed < 5 {
		d = min(d, 500*time.Millisecond<<failed)
	}
	return time.Duration(float64(d) * (0.8 + 0.4*u))
}

// Implemented queues the statuses of a source update the agent has
// implemented as revision rev (valid policies) or rejected (u.Errors), and
// the endpoints that fail closed under a policy's rules. It never blocks;
// only the newest update is kept.
func (w *StatusWriter) Implemented(_ context.Context, rev uint64, u source.Update, failures []source.EndpointFailure) {
	w.mu.Lock()
	w.pending = &implemented{rev: rev, u: u, failures: failures}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// reportUpdate reports every policy of an update, and forgets policies no
// longer present.
func (w *StatusWriter) reportUpdate(ctx context.Context, rev uint64, u source.Update, failures []source.EndpointFailure) error {
	failed := map[string][]string{} // by policy kind and name
	for _, f := range failures {
		for _, p := range f.Policies {
			k := string(p.Kind) + " " + p.Name
			failed[k] = append(failed[k], f.Endpoint+": "+f.Step+": "+f.Error)
		}
	}
	warns := map[objectKey][]string{}
	if u.Objects != nil {
		for _, wn := range u.Objects.Warnings {
			msg := wn.Message
			if wn.Path != "" {
				msg = wn.Path + ": " + msg
			}
			warns[keyOf(wn.Object)] = append(warns[keyOf(wn.Object)], msg)
		}
	}
	items := statusItems(rev, u, warns, failed)
	present := map[objectKey]bool{}
	var errs []error
	infos := make([]objectInfo, len(items))
	want := map[string]nodePolicyStatus{}
	for i := range items {
		it := &items[i]
		k := keyOf(it.ref)
		present[k] = true
		if w.cfg.Source != nil {
			if in, ok := w.cfg.Source.objectInfo(u.Digest, k); ok {
				it.st.Generation = in.Generation
				infos[i] = in
			}
		}
		if isCiliumKind(k.Kind) {
			want[policyStatusKey(k)] = nodePolicyStatus{UID: infos[i].UID, nodeStatus: nodeEntry(it.st)}
		}
	}
	// One write for every policy of this node: its report.
	if _, err := w.writeNodeStatus(ctx, want, time.Now()); err != nil {
		return err
	}
	for i, it := range items {
		if err := w.report(ctx, it.ref, it.st, infos[i]); err != nil {
			errs = append(errs, err)
		}
	}
	w.mu.Lock()
	for k := range w.written {
		if !present[k] {
			delete(w.written, k)
		}
	}
	w.mu.Unlock()
	return errors.Join(errs...)
}

func isCiliumKind(kind string) bool {
	return kind == string(policy.KindCNP) || kind == string(policy.KindCCNP)
}

type statusItem struct {
	ref policy.ObjectRef
	st  PolicyStatus
}

// statusItems is one status per policy of an update: invalid ones (their
// error says what stands in for them: the last valid version, or the
// fail-closed default-deny) and valid ones. A policy with an error is
// reported once, with its error, even when its last valid version or its
// fail-closed stand-in is among the objects.
func statusItems(rev uint64, u source.Update, warns map[objectKey][]string, failed map[string][]string) []statusItem {
	var items []statusItem
	invalid := map[objectKey]bool{}
	for _, e := range u.Errors {
		var oe *policy.ObjectError
		if errors.As(e, &oe) && isPolicyKind(oe.Object.Kind) {
			invalid[keyOf(oe.Object)] = true
			items = append(items, statusItem{oe.Object, PolicyStatus{Revision: rev, Err: oe.Err, Warnings: warns[keyOf(oe.Object)]}})
		}
	}
	if u.Objects != nil {
		for _, p := range u.Objects.Policies {
			if p.Invalid != "" || invalid[keyOf(p.Ref)] {
				continue
			}
			items = append(items, statusItem{p.Ref, PolicyStatus{Revision: rev, Warnings: warns[keyOf(p.Ref)],
				EndpointFailures: failed[string(p.Kind)+" "+p.Name()]}})
		}
	}
	return items
}

func isPolicyKind(kind string) bool {
	switch policy.PolicyKind(kind) {
	case policy.KindCNP, policy.KindCCNP, policy.KindNP:
		return true
	}
	return false
}

// nodeStatus is status.nodes[node]: the shape of Cilium's
// CiliumNetworkPolicyNodeStatus, plus observedGeneration and warnings.
type nodeStatus struct {
	OK                 bool     `json:"ok"`
	Enforcing          bool     `json:"enforcing"`
	Revision           uint64   `json:"revision,omitempty"`
	ObservedGeneration int64    `json:"observedGeneration,omitempty"`
	Error              string   `json:"error,omitempty"`
	Warnings           []string `json:"warnings,omitempty"`
	LastUpdated        string   `json:"lastUpdated,omitempty"`
}

type condition struct {
	Type               string `json:"type"`
	Status             string `json:"status"`
	LastTransitionTime string `json:"lastTransitionTime,omitempty"`
	Reason             string `json:"reason,omitempty"`
	Message            string `json:"message,omitempty"`
	ObservedGeneration int64  `json:"observedGeneration,omitempty"`
}

// Report writes one policy's status for this node (NetworkPolicy gets
// Events only: its status is not ours). It returns quickly when the same
// status was already written.
func (w *StatusWriter) Report(ctx context.Context, ref policy.ObjectRef, st PolicyStatus) error {
	return w.report(ctx, ref, st, objectInfo{})
}

// report is Report for a policy whose UID and API version may be known
// (in): a Cilium policy's status then needs no request here, its
// PolicyNodeStatus entry having been written.
func (w *StatusWriter) report(ctx context.Context, ref policy.ObjectRef, st PolicyStatus, in objectInfo) error {
	k := keyOf(ref)
	fp := fingerprint(st)
	w.mu.Lock()
	same := w.written[k] == fp
	rec := w.recorder
	w.mu.Unlock()
	if same {
		return nil
	}
	var err error
	var obj *unstructured.Unstructured
	switch policy.PolicyKind(ref.Kind) {
	case policy.KindCNP, policy.KindCCNP:
		// Written with this node's report; only the Event is
		// left to send.
		obj = &unstructured.Unstructured{}
		obj.SetAPIVersion(cmp.Or(in.APIVersion, "cilium.io/v2"))
		obj.SetKind(ref.Kind)
		obj.SetNamespace(ref.Namespace)
		obj.SetName(ref.Name)
		obj.SetUID(in.UID)
	case policy.KindNP:
		if st.Err == nil && len(st.Warnings) == 0 {
			break // nothing to tell: NetworkPolicy status is not ours
		}
		var np metav1.Object
		np, err = w.cfg.Client.NetworkingV1().NetworkPolicies(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err == nil {
			obj = &unstructured.Unstructured{}
			obj.SetAPIVersion("networking.k8s.io/v1")
			obj.SetKind(ref.Kind)
			obj.SetNamespace(np.GetNamespace())
			obj.SetName(np.GetName())
			obj.SetUID(np.GetUID())
		}
	default:
		return nil
	}
	if apierrors.IsNotFound(err) {
		return nil // deleted meanwhile
	}
	if err != nil {
		return fmt.Errorf("status of %s: %w", ref, err)
	}
	w.mu.Lock()
	w.written[k] = fp
	w.mu.Unlock()
	if rec != nil && obj != nil {
		or := &corev1.ObjectReference{APIVersion: obj.GetAPIVersion(), Kind: obj.GetKind(), Namespace: obj.GetNamespace(),
			Name: obj.GetName(), UID: obj.GetUID()}
		if st.Err != nil {
			rec.Eventf(or, corev1.EventTypeWarning, eventInvalid, "not applied on node %s: %s", w.cfg.Node, truncate(st.Err.Error()))
		} else if len(st.Warnings) > 0 {
			rec.Eventf(or, corev1.EventTypeWarning, eventUnsupported, "applied on node %s without: %s", w.cfg.Node, truncate(strings.Join(st.Warnings, "; ")))
		}
	}
	return nil
}

func fingerprint(st PolicyStatus) string {
	e := ""
	if st.Err != nil {
		e = st.Err.Error()
	}
	b, _ := json.Marshal([]any{st.Generation, e, st.Warnings, st.EndpointFailures})
	return string(b)
}

func truncate(s string) string {
	if len(s) > maxConditionMessage {
		return s[:maxConditionMessage-3] + "..."
	}
	return s
}

// readConditions reads a policy's status.conditions.
func readConditions(obj *unstructured.Unstructured) ([]condition, error) {
	var conds []condition
	if raw, ok, _ := unstructured.NestedSlice(obj.Object, "status", "conditions"); ok {
		b, err := json.Marshal(raw)
		if err != nil {
			return nil, fmt.Errorf("read conditions: %w", err)
		}
		if err := json.Unmarshal(b, &conds); err != nil {
			return nil, fmt.Errorf("read conditions: %w", err)
		}
	}
	return conds, nil
}

// validCondition is Valid for generation gen: False with the error when
// the policy was rejected.
func validCondition(errMsg string, gen int64) condition {
	if errMsg != "" {
		return condition{Type: ConditionValid, Status: "False", Reason: ReasonInvalid, Message: truncate(errMsg), ObservedGeneration: gen}
	}
	return condition{Type: ConditionValid, Status: "True", Reason: ReasonValid, Message: "policy accepted", ObservedGeneration: gen}
}

// supportedCondition is Supported for generation gen: False naming each
// unsupported part.
func supportedCondition(warnings []string, gen int64) condition {
	if len(warnings) > 0 {
		return condition{Type: ConditionSupported, Status: "False", Reason: ReasonUnsupported,
			Message: truncate(strings.Join(warnings, "; ")), ObservedGeneration: gen}
	}
	return condition{Type: ConditionSupported, Status: "True", Reason: ReasonSupported, Message: "every rule is enforced", ObservedGeneration: gen}
}

// mergeConditions sets each of want in conds, keeping a condition's
// lastTransitionTime unless its status changes; it reports whether
// anything changed.
func mergeConditions(conds, want []condition, ts string) ([]condition, bool) {
	out := slices.Clone(conds)
	changed := false
	for _, c := range want {
		i := slices.IndexFunc(out, func(x condition) bool { return x.Type == c.Type })
		if i < 0 {
			c.LastTransitionTime = ts
			out = append(out, c)
			changed = true
			continue
		}
		old := out[i]
		c.LastTransitionTime = old.LastTransitionTime
		if old.Status != c.Status || c.LastTransitionTime == "" {
			c.LastTransitionTime = ts
		}
		if old != c {
			out[i] = c
			changed = true
		}
	}
	return out, changed
}
