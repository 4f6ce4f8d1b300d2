// Package xds holds what the xDS pieces of l7gate share: the type URLs of
// l7gate's own resources, the node-id convention that tells consumers
// apart, and the contract of the Go proxy's resources on the receiving
// side (ListenerSpec and the *FromProto converters back into policy
// values), so the proxy imports this package rather than the translator.
// Translation lives in xds/translate (pure functions, golden tested), the
// ADS server with ACK/NACK completions in xds/server, and the Go proxy's
// client in xds/client.
//
// Consumers are told apart by node id: "l7proxy~<node>" is the l7gate Go
// proxy, which receives the resources in proto/l7gatev1; "envoy~<node>" is
// stock Envoy, which receives standard Envoy resources.
//
// Imports: policy, proto and go-control-plane only; never bpf, envoy or
// redirect.
package xds

import (
	"strings"

	"google.golang.org/protobuf/proto"
)

// DefaultSocketPath is where the agent serves xDS and the Go proxy
// connects.
const DefaultSocketPath = "/run/l7gate/xds.sock"

// Node-id prefixes of the consumer kinds.
const (
	L7ProxyPrefix = "l7proxy~"
	EnvoyPrefix   = "envoy~"
)

const typePrefix = "type.googleapis.com/"

// Type URLs of l7gate's resources for the Go proxy (TestTypeURLs checks
// them against the generated descriptors).
const (
	TypeNetworkPolicy      = typePrefix + "l7gate.v1.NetworkPolicy"
	TypeIdentityMembership = typePrefix + "l7gate.v1.IdentityMembership"
	TypeListener           = typePrefix + "l7gate.v1.Listener"
)

// L7ProxyTypes lists the resource types an l7proxy consumer subscribes to.
func L7ProxyTypes() []string {
	return []string{TypeListener, TypeNetworkPolicy, TypeIdentityMembership}
}

// TypeURL returns the type URL of a resource message.
func TypeURL(m proto.Message) string {
	return typePrefix + string(m.ProtoReflect().Descriptor().FullName())
}

// L7ProxyNodeID returns the node id of the Go proxy on node.
func L7ProxyNodeID(node string) string { return L7ProxyPrefix + node }

// NodeOf returns the node name of a node id "<kind>~<node>", or "".
func NodeOf(nodeID string) string {
	_, node, ok := strings.Cut(nodeID, "~")
	if !ok {
		return ""
	}
	return node
}
