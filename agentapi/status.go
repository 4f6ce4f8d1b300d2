package agentapi

import (
	"time"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/source"
)

// Status is what `l7gate status` shows.
type Status struct {
	Node      string    `json:"node"`
	StartedAt time.Time `json:"startedAt"`
	// Ready: a revision has been implemented.
	Ready bool `json:"ready"`
	// Revision counts source changes; ImplementedRevision is the last one
	// implemented: endpoints attached and synced, pushed to every proxy,
	// ACKed (or the endpoints concerned failed closed) and redirects
	// synced.
	Revision            uint64 `json:"revision"`
	ImplementedRevision uint64 `json:"implementedRevision"`
	SourceDigest        string `json:"sourceDigest,omitempty"`
	// LastError is a node-wide failure of the last attempt (the previous
	// state stays in force); failures confined to endpoints are in
	// Endpoints[].Failures and Failures.
	LastError string   `json:"lastError,omitempty"`
	Errors    []string `json:"errors"`
	Warnings  []string `json:"warnings,omitempty"`
	// Failures lists the local endpoints that fail closed, and why.
	Failures   []source.EndpointFailure `json:"failures,omitempty"`
	Policies   []PolicyStatus           `json:"policies"`
	Endpoints  []EndpointStatus         `json:"endpoints"`
	Identities []policy.IdentityInfo    `json:"identities"`
	ProxyPorts []ProxyPortStatus        `json:"proxyPorts"`
	Proxies    []ProxyConsumer          `json:"proxies"`
	// SocketLB says where Services are load-balanced: the cgroup the
	// socket-LB programs are attached to, or "off".
	SocketLB string `json:"socketLB,omitempty"`
	// Services are the Service frontends of the last implemented
	// revision, as this node balances them.
	Services []ServiceStatus `json:"services"`
	// AuditMode: the node runs with --policy-audit-mode (every policy in
	// audit mode). Audit lists the policies in audit mode for this node's
	// endpoints (their annotation, their endpoints' namespace's, or the
	// node's flag), sorted: what they would drop or deny is forwarded and
	// recorded with verdict audit.
	AuditMode bool          `json:"auditMode,omitempty"`
	Audit     []AuditStatus `json:"audit,omitempty"`
}

// AuditStatus is one policy in audit mode and the local endpoints it is
// in audit for.
type AuditStatus struct {
	// Policy is "namespace/name" (or "name"), PolicyKind its kind.
	Policy     string            `json:"policy"`
	PolicyKind policy.PolicyKind `json:"policyKind"`
	Endpoints  []string          `json:"endpoints"`
}

// ServiceStatus is one Service frontend (ClusterIP, port, protocol) and
// its backends on this node.
type ServiceStatus struct {
	policy.ServiceFrontend
	// Error: the frontend could not be written to the socket load
	// balancer; it refuses connections, or is not translated at all when
	// the error says so.
	Error string `json:"error,omitempty"`
}

// PolicyStatus is one policy object and the revision that implemented it.
type PolicyStatus struct {
	Name                string `json:"name"`
	Kind                string `json:"kind"`
	File                string `json:"file,omitempty"`
	ImplementedRevision uint64 `json:"implementedRevision"`
}

// EndpointStatus is one endpoint of the cluster and whether it is local.
type EndpointStatus struct {
	policy.Endpoint
	Local   bool   `json:"local"`
	Ifindex int    `json:"ifindex,omitempty"`
	Device  string `json:"device,omitempty"`
	// Failures: why this local endpoint fails closed (empty when it has
	// its policy).
	Failures []source.EndpointFailure `json:"failures,omitempty"`
}

// ProxyPortStatus is one proxy port allocation.
type ProxyPortStatus struct {
	Direction string `json:"direction"`
	Parser    string `json:"parser"`
	Port      uint16 `json:"port"`
}

// ProxyConsumer is one xDS consumer and its ACK state per resource type.
type ProxyConsumer struct {
	ID      string          `json:"id"`
	Streams int             `json:"streams"`
	Acked   map[string]bool `json:"acked"`
}

// FlowPage is a page of recent flow records; Cursor is passed as ?after=
// to get the next one.
type FlowPage struct {
	Flows  []flow.Record `json:"flows"`
	Cursor uint64        `json:"cursor"`
}
