package policy

import (
	"net/netip"
	"os"
	"reflect"
	"testing"
)

// TestTraceIdentitiesIsTrace: on one computed snapshot, TraceIdentities
// gives what Trace gives for the same flows (Star Wars, L7 policy).
func TestTraceIdentitiesIsTrace(t *testing.T) {
	var all []byte
	for _, f := range []string{"../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(append(all, b...), "\n---\n"...)
	}
	objs, errs := Decode("starwars", all)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	snap, err := Compute(objs, NewIdentityAllocator())
	if err != nil {
		t.Fatal(err)
	}
	ip := func(name string) netip.Addr {
		for _, p := range objs.Pods {
			if p.Name == name {
				return p.IPs[0]
			}
		}
		t.Fatalf("no pod %s", name)
		return netip.Addr{}
	}
	for _, tc := range []struct {
		src  string
		http *HTTPRequest
	}{
		{"tiefighter", &HTTPRequest{Method: "POST", Path: "/v1/request-landing"}},
		{"tiefighter", &HTTPRequest{Method: "PUT", Path: "/v1/exhaust-port"}},
		{"xwing", &HTTPRequest{Method: "POST", Path: "/v1/request-landing"}},
		{"tiefighter", nil},
	} {
		req := TraceRequest{Src: TracePeer{Addr: ip(tc.src)}, Dst: TracePeer{Addr: ip("deathstar")}, Protocol: ProtoTCP, DPort: 80, HTTP: tc.http}
		want, err := Trace(objs, req)
		if err != nil {
			t.Fatal(err)
		}
		want.Warnings = nil
		got := TraceIdentities(snap, snap.IdentityOf(ip(tc.src)), snap.IdentityOf(ip("deathstar")), &req)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s %+v:\n got %+v\nwant %+v", tc.src, tc.http, got, want)
		}
	}
}

func TestStableLabelKey(t *testing.T) {
	for k, want := range map[string]bool{"app": true, "k8s:app": true, "pod-template-hash": false, "k8s:pod-template-hash": false,
		"controller-revision-hash": false, "statefulset.kubernetes.io/pod-name": false, "apps.kubernetes.io/pod-index": false} {
		if got := StableLabelKey(k); got != want {
			t.Errorf("StableLabelKey(%q) = %v, want %v", k, got, want)
		}
	}
}
