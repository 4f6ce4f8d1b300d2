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
// On a node it runs inside the Go proxy (package proxy serves listeners
// with parser dns with it): the datapath redirects a pod's UDP and TCP DNS
// to the proxy port (ListenUDP reads a datagram's original destination,
// answers go out from it through a transparent socket); answers for names
// a toFQDNs selector matches are held until Config.Learn returns (the
// proxy command asks the agent, POST /fqdn, which returns once its
// datapath admits the addresses), bounded by HoldTimeout — unless the
// agent confirmed those addresses before, for this name and client
// identity, for at least the answer's TTL: then the answer is released at
// once and the name refreshed in the background (the fast path, fast.go).
//
// It imports parsers/dns, policy and flow only (the proxy side).
package dnsproxy
