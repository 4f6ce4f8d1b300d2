package bpf

import (
	"errors"
	"path/filepath"
	"testing"
)

// TestPrivilegedAttachWithFullEndpointMap: an endpoint that cannot be
// written to the endpoints map (full) still gets the programs on its veth,
// which drop what they cannot attribute to an endpoint (no endpoint:
// fail closed). It used to return before attaching, leaving the veth
// without a program: the pod's traffic passed unenforced.
func TestPrivilegedAttachWithFullEndpointMap(t *testing.T) {
	requireRoot(t)
	tp := newTopology(t)
	a := tp.addPod("a", "198.18.1.20", 1, identA)
	b := tp.addPod("b", "198.18.1.21", 2, identB)
	d := openTest(t, Config{BPFFSPath: mountBPFFS(t), MapSizes: MapSizes{Endpoints: 1}})
	sink := listenUDPSink(t, b.ns, "198.18.1.21:5000")
	mustInNS(t, tp.node, func() error {
		return d.AttachEndpoint(Endpoint{ID: a.id, Ifindex: tp.ifindex(a.hostDev), IPv4: a.ip})
	})
	if err := d.AttachSocketLookup(filepath.Join("/var/run/netns", tp.node)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SyncIPCache(tp.ipcache()); err != nil {
		t.Fatal(err)
	}
	// Control: a (attached, no policy) reaches b (not attached yet).
	if _, err := udpQueryOnce(a.ns, "198.18.1.21:5000", "before"); err != nil {
		t.Fatal(err)
	}
	if !sink.waitFor("before") {
		t.Fatal("control: a datagram from a did not reach b before b was attached")
	}
	var err error
	mustInNS(t, tp.node, func() error {
		err = d.AttachEndpoint(Endpoint{ID: b.id, Ifindex: tp.ifindex(b.hostDev), IPv4: b.ip})
		return nil
	})
	if !errors.Is(err, ErrMapFull) {
		t.Fatalf("attach b with a full endpoints map: %v, want ErrMapFull", err)
	}
	for i := range 3 {
		if _, err := udpQueryOnce(a.ns, "198.18.1.21:5000", "after"); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	if sink.waitFor("after") {
		t.Fatal("a datagram reached the pod whose endpoint could not be written: its veth passes traffic unenforced")
	}
}
