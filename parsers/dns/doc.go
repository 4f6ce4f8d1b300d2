// Package dns is l7gate's DNS message layer: it parses queries and
// responses from untrusted bytes (github.com/miekg/dns underneath, with
// l7gate's limits and named errors on top), builds denials (REFUSED or
// NXDOMAIN), follows a response's CNAME chain to the addresses that belong
// to the queried name, and checks a query against an endpoint's rules.dns
// (policy.L7RuleSet with parser "dns").
//
// Name semantics (matchName, matchPattern, normalisation) are policy's
// (policy.DNSSelector), the one owner of rule matchers: policy validates
// and explains rules with the same code the proxy enforces them with.
//
// It imports policy only; the DNS proxy (proxy/dns) builds on it.
package dns
