// Package redirect owns how redirected connections reach the L7 proxy and
// leave it: transparent listener sockets on proxy ports, the original
// destination of an accepted connection, and upstream sockets that carry
// the SO_MARK the datapath recognises (and, optionally, the pod's source
// address). Proxy-port allocation lives here too.
//
// It imports no other l7gate package (DESIGN: redirect is below policy,
// the agent and the proxy both use it).
package redirect
