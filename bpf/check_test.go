package bpf

import (
	"errors"
	"testing"
)

func TestCheckPolicy(t *testing.T) {
	var d *Datapath // CheckPolicy touches no kernel object
	ok := EndpointPolicy{Endpoint: 7, Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
		{Peer: 256, Protocol: ProtoTCP, Port: 80, Verdict: VerdictRedirect, ProxyPort: 15001}}}}
	if err := d.CheckPolicy(ok); err != nil {
		t.Errorf("valid policy: %v", err)
	}
	bad := ok
	bad.Egress = DirectionPolicy{Enforced: true, Entries: []PolicyEntry{{Peer: 256, Protocol: ProtoTCP, Port: 80, Verdict: VerdictRedirect}}}
	if err := d.CheckPolicy(bad); !errors.Is(err, ErrInvalidEntry) {
		t.Errorf("redirect without proxy port: %v, want ErrInvalidEntry", err)
	}
}
