// Package envoy holds what l7gate needs around a stock upstream Envoy that
// its xDS server configures: the access-log record Envoy's requests become
// (Record), and in sub-packages the bootstrap (bootstrap), the gRPC
// access-log service (als) and the admin client for config dumps (admin).
//
// The packages import the Envoy protos and grpc only; they never import
// policy or xds (the names they share with xds/envoytranslate, such as the
// RBAC policy id format, are documented on both sides).
package envoy
