// Package http is l7gate's purpose-built HTTP/1.1 policy proxy: it parses
// request heads in place, asks a Decider, forwards allowed requests byte for
// byte, answers denied ones with 403 "Access denied" on a connection that
// stays usable, streams bodies, and tracks response framing only as far as
// ordering and injected denials need. Anything that could let two parties
// disagree about where a request ends (request smuggling) is rejected.
// Requests are decided and forwarded with their target normalized
// (policy.NormalizeRequestTarget); only WebSocket upgrades become tunnels;
// header-mismatch actions rewrite the forwarded head (rewrite.go).
//
// HTTP/2 (prior knowledge and h2c upgrade) and gRPC are served through
// golang.org/x/net/http2 in h2.go: throughput there is bounded by HTTP/2
// framing, not by this package's parser.
package http
