// Package envoy holds what l7gate needs around a stock upstream Envoy that
// its xDS server configures: the names shared by the resources
// xds/envoytranslate renders and the access logs Envoy sends back (route
// names, RBAC policy ids: names.go is their one owner), and in
// sub-packages the bootstrap (bootstrap), the gRPC access-log service that
// turns Envoy's entries into flow records (als) and the admin client for
// config dumps (admin).
//
// The packages import the Envoy protos, grpc and the shared contract
// package flow only; never policy, xds or the agent.
package envoy
