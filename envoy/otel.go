package envoy

// OpenTelemetry access logs: xds/envoytranslate configures Envoy's
// envoy.access_loggers.open_telemetry logger with these attributes (each a
// command operator Envoy substitutes per request), and envoy/als reads them
// back into flow records. This file is their one owner.

// OTelLogName is the log_name of l7gate's OpenTelemetry access logger.
const OTelLogName = "l7gate"

// OTel attribute keys: OpenTelemetry semantic-convention names where one
// exists, l7gate.* for what only l7gate's route names and RBAC metadata
// carry.
const (
	OTelSourceAddress      = "source.address"
	OTelSourcePort         = "source.port"
	OTelDestinationAddress = "destination.address"
	OTelDestinationPort    = "destination.port"
	OTelMethod             = "http.request.method"
	OTelPath               = "url.path"
	OTelAuthority          = "server.address"
	OTelStatus             = "http.response.status_code"
	OTelGRPCStatus         = "rpc.grpc.status_code"
	OTelDurationMS         = "l7gate.latency_ms"
	OTelRoute              = "l7gate.route"
	OTelRBACResult         = "l7gate.rbac.result"
	OTelRBACPolicy         = "l7gate.rbac.policy"
	// The shadow rules' decision (rule sets in audit mode).
	OTelRBACShadowResult = "l7gate.rbac.shadow_result"
	OTelRBACShadowPolicy = "l7gate.rbac.shadow_policy"
	OTelResponseDetails  = "l7gate.response_code_details"
	OTelObserver         = "l7gate.observer"
)

// OTelAttribute is one attribute of the logger and the command operator
// that fills it.
type OTelAttribute struct {
	Key, Format string
}

// OTelAttributes are the logger's attributes, in order. A value Envoy does
// not know renders as "-".
func OTelAttributes() []OTelAttribute {
	return []OTelAttribute{
		{OTelSourceAddress, "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
		{OTelSourcePort, "%DOWNSTREAM_REMOTE_PORT%"},
		{OTelDestinationAddress, "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%"},
		{OTelDestinationPort, "%DOWNSTREAM_LOCAL_PORT%"},
		{OTelMethod, "%REQ(:METHOD)%"},
		{OTelPath, "%REQ(:PATH)%"},
		{OTelAuthority, "%REQ(:AUTHORITY)%"},
		{OTelStatus, "%RESPONSE_CODE%"},
		// a denied gRPC call is trailers-only: grpc-status is a header then
		{OTelGRPCStatus, "%RESP(GRPC-STATUS)%%TRAILER(GRPC-STATUS)%"},
		{OTelDurationMS, "%DURATION%"},
		{OTelRoute, "%ROUTE_NAME%"},
		{OTelRBACResult, "%DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_engine_result)%"},
		{OTelRBACPolicy, "%DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_effective_policy_id)%"},
		{OTelRBACShadowResult, "%DYNAMIC_METADATA(envoy.filters.http.rbac:shadow_engine_result)%"},
		{OTelRBACShadowPolicy, "%DYNAMIC_METADATA(envoy.filters.http.rbac:shadow_effective_policy_id)%"},
		{OTelResponseDetails, "%RESPONSE_CODE_DETAILS%"},
		{OTelObserver, "envoy"},
	}
}

// OTelBody is the log body: Envoy's own access-log line, short.
const OTelBody = "%REQ(:METHOD)% %REQ(:AUTHORITY)%%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS%"
