// Package proxy is the l7gate Go proxy (`l7gate proxy`): transparent
// listeners on proxy ports, per-connection dispatch to the L7 parsers
// (parsers/http for HTTP/1.1, HTTP/2 and gRPC; parsers/kafka for Kafka),
// policy lookup by IP for every request, access logs, and an admin socket
// with an Envoy-compatible /config_dump, /ready and /stats/prometheus, and
// the runtime's profiles under /debug/pprof/.
//
// Config is a plain value built from the xDS resources the agent pushes;
// Apply validates and compiles it, and returns an error (a NACK) that
// leaves the previous config in force. Until a config is applied no
// listener exists, so redirected connections are refused, never passed.
//
// Restarts are hitless: ServeHandOver hands the listener sockets to a new
// process (ReceiveHandOver, Options.Inherited), and Drain ends the old
// one's connections between requests (HTTP/1.1 Connection: close, HTTP/2
// GOAWAY, Kafka between request/response pairs), bounded by a timeout.
package proxy
