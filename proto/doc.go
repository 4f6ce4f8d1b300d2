// Package proto holds l7gate's own protobuf definitions (proto/l7gate/v1)
// and, in proto/l7gatev1, the Go code generated from them, committed.
//
// Regenerate with `go generate ./proto` (or `make generate`): it runs the
// Debian `protoc` (package protobuf-compiler, installed by
// hack/install-deps.sh) with protoc-gen-go pinned as a Go tool in go.mod,
// using paths relative to this directory so the output is byte-identical
// wherever the tree lives. This package imports nothing internal.
package proto

//go:generate protoc --plugin=protoc-gen-go=protoc-gen-go.sh --go_out=. --go_opt=module=github.com/l7gate/l7gate/proto -I . l7gate/v1/policy.proto
