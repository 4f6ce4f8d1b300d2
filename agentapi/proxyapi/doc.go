// Package proxyapi is the part of the agent's local API the Go proxy
// uses: the client of POST /fqdn (the DNS proxy's answers for toFQDNs
// names) and ListenTCP (its metrics listener). It imports only the
// standard library and x/sys, so the proxy-only build links neither
// package agentapi's gRPC Observer client nor the Hubble protos.
package proxyapi
