package envoy

import (
	"net/netip"
	"time"
)

// Verdict of an L7 request as the proxy enforced it.
type Verdict string

// Verdicts. Unknown: Envoy's log entry carries no RBAC decision (the
// request failed before the RBAC filter, e.g. no route or a codec error).
const (
	VerdictAllowed Verdict = "allowed"
	VerdictDenied  Verdict = "denied"
	VerdictUnknown Verdict = "unknown"
)

// Rule kinds, in policy's vocabulary (policy.RuleKind).
const (
	KindAllow       = "allow"
	KindDefaultDeny = "default-deny"
)

// Record is one L7 request as an access-log record: what was asked, what
// came back and which policy rule decided. The Go proxy will converge on
// the same record.
type Record struct {
	Time        time.Time      `json:"time"`
	Source      netip.AddrPort `json:"source"`
	Destination netip.AddrPort `json:"destination"`
	Method      string         `json:"method,omitempty"`
	Path        string         `json:"path,omitempty"`
	Host        string         `json:"host,omitempty"`
	// Status is the HTTP status sent downstream (0: none was sent).
	Status int `json:"status"`
	// GRPCStatus is the grpc-status sent, "" for non-gRPC requests.
	GRPCStatus string  `json:"grpcStatus,omitempty"`
	Verdict    Verdict `json:"verdict"`
	// RuleSet names the rule set (Envoy route) that applied, e.g.
	// "l7gate/ingress/256/8080": direction, endpoint identity, port.
	RuleSet string `json:"ruleSet,omitempty"`
	// Kind is "allow" when a rule allowed, "default-deny" when none did.
	Kind string `json:"kind,omitempty"`
	// PolicyKind (cnp, ccnp, np), Policy ("namespace/name") and Rule
	// (field path, e.g. "spec.ingress[0].http[1]") name the rule that
	// allowed; empty for default-deny.
	PolicyKind string `json:"policyKind,omitempty"`
	Policy     string `json:"policy,omitempty"`
	Rule       string `json:"rule,omitempty"`
}
