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
// HTTP/2 with prior knowledge (gRPC included) is proxied frame by frame
// (h2frame.go): x/net/http2's Framer reads frames and decodes HPACK within
// the header-list bound, each stream's request is decided on its decoded
// headers (denied: 403, or gRPC status 7 trailers-only, without touching
// other streams), allowed streams go out with re-encoded headers on one
// upstream HTTP/2 connection per client connection, DATA frames are passed
// on as they come, and flow control is managed per hop so the proxy never
// holds more than the windows it granted. Connection-level abuse (rapid
// reset, SETTINGS floods, CONTINUATION floods) ends the connection with
// GOAWAY. Config.LegacyHTTP2 selects the earlier path (h2.go: net/http's
// server and ReverseProxy), which also still serves h2c upgrades.
package http
