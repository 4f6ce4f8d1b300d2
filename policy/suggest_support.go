package policy

// Helpers for `l7gate policy suggest` (package suggest): which pod labels
// are stable enough to select a workload by, and the trace evaluator on a
// snapshot computed once for many flows.

// StableLabelKey reports whether a pod label key is the same on every
// replica and across rollouts of a workload: false for the per-replica and
// per-revision labels identities leave out (pod-template-hash,
// controller-revision-hash, statefulset.kubernetes.io/pod-name, …).
func StableLabelKey(key string) bool {
	_, k := parseLabelKey(key)
	return !identityExcludedLabel(k)
}

// TraceIdentities evaluates one flow from src to dst against snap exactly
// as Trace does (the sender's egress and the receiver's ingress, at L3/L4
// and at L7 when req carries a request), for callers that evaluate many
// flows against one computed snapshot. req.Src, req.Dst and req.Options
// are ignored: the identities are given and snap is computed.
func TraceIdentities(snap *Snapshot, src, dst Identity, req *TraceRequest) *TraceResult {
	if req.Protocol == ProtoAny {
		req.Protocol = ProtoTCP
	}
	party := func(id Identity) TraceParty {
		return TraceParty{Identity: id, Labels: snap.Labels(id).Strings(), Endpoint: snap.Policy(id) != nil}
	}
	res := &TraceResult{Protocol: req.Protocol, DPort: req.DPort, Source: party(src), Destination: party(dst)}
	res.Egress = traceDirection(snap, res.Source, Egress, dst, req)
	res.Ingress = traceDirection(snap, res.Destination, Ingress, src, req)
	res.combine()
	return res
}
