//go:build !l7gate_benchrelay

package proxy

import (
	"context"
	"net"
)

// benchRelayBuild is false in every build but make bench's splice relay
// (-tags l7gate_benchrelay, benchrelay.go): the compiler drops the branch
// that would call the relay, and this stub, never called, is not linked
// (TestBenchRelayNotInDefaultBuild checks the binary).
const benchRelayBuild = false

func (p *Proxy) serveBenchRelay(connInfo, *net.TCPConn, func(context.Context) (net.Conn, error)) {
	panic("l7gate: the bench relay is not in this build")
}
