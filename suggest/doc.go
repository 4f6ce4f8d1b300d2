// Package suggest writes least-privilege CiliumNetworkPolicies from
// observed traffic (`l7gate policy suggest`) and checks observed traffic
// against policies (the round trip, and `--diff`).
//
// Input is flow.Record values (the datapath's flows and the proxies'
// access-log records, read as JSON lines by JSONLines; Reader is the seam
// for other formats) and the cluster objects (Pods and Namespaces, as
// policy.Load returns them) that map addresses to workloads and labels.
//
// A workload is the pods of one namespace with the same stable labels
// (policy.StableLabelKey: never pod-template-hash, controller-revision-hash,
// statefulset.kubernetes.io/pod-name and the like, never pod names). Each
// workload gets one CiliumNetworkPolicy: one ingress rule (and, with
// Options.Egress, one egress rule) per peer and port, the peer selected by
// its stable labels (an entity for reserved identities, a /32 for any
// other address), with L7 rules where the proxies recorded requests: HTTP
// method and path template (numeric and UUID segments generalised; gRPC
// is HTTP POST /pkg.Service/Method), Kafka role or API key and topic.
// YAML comments say how many flows each rule covers.
//
// Fail closed: only traffic that was let through (verdict allowed, or
// audit) becomes an allow, unless Options.IncludeDenied; a connection the
// datapath redirected to a proxy becomes a rule only through the requests
// the proxy recorded on it; records that cannot be placed (no address, an
// unknown protocol, a destination that is not a pod of the objects) are
// skipped and counted in Stats, so a suggestion is never wider than what
// was observed and understood.
package suggest
