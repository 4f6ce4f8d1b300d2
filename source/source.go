// Package source is the contract between the places cluster objects come
// from and the agent that enforces them: Source delivers Updates (a
// complete view of the objects as policy.Objects), PolicyReporter learns
// what the agent made of each one. Folder, the standalone source (a folder
// of Kubernetes YAML), lives here too; the Kubernetes source is package
// k8s.
//
// It imports policy only, so a source (k8s) depends on this contract and
// policy, never on the agent and what the agent composes.
package source

import (
	"context"

	"github.com/l7gate/l7gate/policy"
)

// Update is a new view of the cluster's objects.
type Update struct {
	Objects *policy.Objects
	// Errors are invalid objects (they are left out; the rest applies).
	Errors []error
	// Digest identifies the content the update was read from.
	Digest string
}

// Source delivers the objects the agent enforces. Run sends an update
// whenever they change (and once at start) until ctx ends. The folder
// source is one implementation; the Kubernetes source is another.
type Source interface {
	Run(ctx context.Context, updates chan<- Update) error
}

// PolicyReporter learns which source update a revision implemented, and
// which endpoints of this node could not be given that revision's policy
// (they fail closed; see EndpointFailure).
type PolicyReporter interface {
	Implemented(ctx context.Context, rev uint64, u Update, failures []EndpointFailure)
}

// EndpointFailure is an endpoint of this node that a revision could not be
// implemented for. The endpoint fails closed (what that means for each
// step is documented in package agent); every other endpoint proceeds.
type EndpointFailure struct {
	// Endpoint is "namespace/name".
	Endpoint string `json:"endpoint"`
	// Step is what failed, e.g. "datapath policy", "attach", "proxy
	// rejected", "proxy ACK".
	Step string `json:"step"`
	// Directions that fail closed: "ingress", "egress" or both.
	Directions []string `json:"directions"`
	Error      string   `json:"error"`
	// Policies whose rules the failed part carried.
	Policies []PolicyRef `json:"policies,omitempty"`
}

// PolicyRef names a policy object as policy.Provenance does.
type PolicyRef struct {
	Kind policy.PolicyKind `json:"kind"`
	// Name is "namespace/name", or "name" for clusterwide policies.
	Name string `json:"name"`
}
