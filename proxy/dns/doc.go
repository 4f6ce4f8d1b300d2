// Package dnsproxy is l7gate's transparent DNS proxy: UDP and TCP
// listeners that check each query against the client endpoint's rules.dns,
// answer denied queries REFUSED (or NXDOMAIN), forward allowed ones to the
// query's original destination, and feed the addresses of answers for
// names that toFQDNs selectors match into the FQDN cache (Cache), which
// policy resolves toFQDNs through (policy.FQDNCache).
//
// What it is given, as small interfaces, so the redirect layer and the
// xDS client can supply them later: the original destination of a query
// (OriginalDst; the datapath redirect preserves it), the policy of the
// client endpoint (Policy; SnapshotPolicy builds one from a
// policy.Snapshot) and the toFQDNs selectors in force (SetFQDNSelectors).
//
// Not here yet (issue 16): the datapath's UDP redirect to this proxy
// (and reading a redirected datagram's original destination), holding a
// response until the datapath has the new entries, and running it in the
// proxy process from xDS (the resources carry it already: DNSRule in
// L7Rule, fqdn_selectors in DirectionPolicy; xds.PolicyFromProto decodes
// them into the policy.EndpointPolicy a SnapshotPolicy-like Policy needs).
//
// It imports parsers/dns, policy and flow only (the proxy side).
package dnsproxy
