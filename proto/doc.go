// Package proto holds l7gate's own protobuf definitions (proto/l7gate/v1)
// and, in proto/l7gatev1, the Go code generated from them, committed.
//
// proto/hubble holds Hubble's flow, observer and relay protos, copied
// verbatim from Cilium v1.20.2 (api/v1; Apache-2.0, "Copyright Authors of
// Hubble"), and their Go code in proto/hubble/{flowpb,observerpb,relaypb}:
// the agent serves the Observer API from them so the hubble CLI works
// against it. They are generated here rather than imported from
// github.com/cilium/cilium because requiring that module moves 50+ of this
// module's requirements (k8s.io/* to v0.36, cel-go, etcd, otel, go-openapi)
// and breaks the build; the wire format is the same (same proto packages,
// messages and service names).
//
// Regenerate with `go generate ./proto` (or `make generate`): it runs the
// Debian `protoc` (package protobuf-compiler, installed by
// hack/install-deps.sh) with protoc-gen-go pinned as a Go tool in go.mod,
// using paths relative to this directory so the output is byte-identical
// wherever the tree lives. This package imports nothing internal.
package proto

//go:generate protoc --plugin=protoc-gen-go=protoc-gen-go.sh --go_out=. --go_opt=module=github.com/l7gate/l7gate/proto -I . l7gate/v1/policy.proto
//go:generate protoc --plugin=protoc-gen-go=protoc-gen-go.sh --plugin=protoc-gen-go-grpc=protoc-gen-go-grpc.sh -I hubble --go_out=hubble --go-grpc_out=hubble --go_opt=module=github.com/l7gate/l7gate/proto/hubble --go-grpc_opt=module=github.com/l7gate/l7gate/proto/hubble --go_opt=Mflow/flow.proto=github.com/l7gate/l7gate/proto/hubble/flowpb;flowpb --go_opt=Mobserver/observer.proto=github.com/l7gate/l7gate/proto/hubble/observerpb;observerpb --go_opt=Mrelay/relay.proto=github.com/l7gate/l7gate/proto/hubble/relaypb;relaypb --go-grpc_opt=Mflow/flow.proto=github.com/l7gate/l7gate/proto/hubble/flowpb;flowpb --go-grpc_opt=Mobserver/observer.proto=github.com/l7gate/l7gate/proto/hubble/observerpb;observerpb --go-grpc_opt=Mrelay/relay.proto=github.com/l7gate/l7gate/proto/hubble/relaypb;relaypb flow/flow.proto observer/observer.proto relay/relay.proto
