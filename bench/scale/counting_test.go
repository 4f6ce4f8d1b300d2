package scale

import (
	"encoding/binary"
	"maps"
	"testing"
)

func TestWatchFrames(t *testing.T) {
	var stream []byte
	for _, n := range []int{5, 0, 300, 1} {
		stream = binary.BigEndian.AppendUint32(stream, uint32(n))
		stream = append(stream, make([]byte, n)...)
	}
	// Any split of the stream into reads counts four frames.
	for _, chunk := range []int{1, 2, 3, 4, 7, 64, len(stream)} {
		b := &watchBody{framed: true}
		got := 0
		for p := stream; len(p) > 0; {
			k := min(chunk, len(p))
			got += b.frames(p[:k])
			p = p[k:]
		}
		if got != 4 {
			t.Errorf("reads of %d bytes: %d frames, want 4", chunk, got)
		}
	}
}

func TestParseAPIPath(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want apiPath
	}{
		{"/api/v1/pods", apiPath{Resource: "pods"}},
		{"/api/v1/namespaces", apiPath{Resource: "namespaces"}},
		{"/api/v1/namespaces/shop", apiPath{Resource: "namespaces", Name: "shop"}},
		{"/api/v1/namespaces/shop/pods/web", apiPath{Resource: "pods", Namespace: "shop", Name: "web"}},
		{"/apis/cilium.io/v2/namespaces/shop/ciliumnetworkpolicies/p/status",
			apiPath{Resource: "ciliumnetworkpolicies", Namespace: "shop", Name: "p", Subresource: "status"}},
		{"/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies/c/status",
			apiPath{Resource: "ciliumclusterwidenetworkpolicies", Name: "c", Subresource: "status"}},
	} {
		if got := parseAPIPath(tc.in); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestParseRequestTotals(t *testing.T) {
	text := `# HELP apiserver_request_total x
apiserver_request_total{code="200",component="apiserver",dry_run="",group="cilium.io",resource="ciliumnetworkpolicies",scope="resource",subresource="status",verb="PATCH",version="v2"} 7
apiserver_request_total{code="409",component="apiserver",dry_run="",group="cilium.io",resource="ciliumnetworkpolicies",scope="resource",subresource="status",verb="PATCH",version="v2"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="cluster",subresource="",verb="WATCH",version="v1"} 3
apiserver_request_duration_seconds_bucket{le="0.1"} 9
`
	got, err := parseRequestTotals([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if got.sum(agentStatusWrite) != 9 || got.sum(func(k requestKey) bool { return k.Code == "409" }) != 2 || len(got) != 3 {
		t.Errorf("parsed %v", got)
	}
}

func TestParseWatchTotals(t *testing.T) {
	text := `# HELP apiserver_watch_events_total x
apiserver_watch_events_total{group="cilium.io",resource="ciliumnetworkpolicies",version="v2"} 106
apiserver_watch_events_total{group="l7gate.io",resource="policynodestatuses",version="v1alpha1"} 50
apiserver_watch_events_sizes_bucket{group="cilium.io",resource="ciliumnetworkpolicies",version="v2",le="1024"} 0
apiserver_watch_events_sizes_sum{group="cilium.io",resource="ciliumnetworkpolicies",version="v2"} 392200
apiserver_watch_events_sizes_count{group="cilium.io",resource="ciliumnetworkpolicies",version="v2"} 106
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="cluster",subresource="",verb="WATCH",version="v1"} 3
`
	got, err := parseWatchTotals([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	want := requestTotals{
		{Verb: "events", Group: "cilium.io", Resource: "ciliumnetworkpolicies"}: 106,
		{Verb: "events", Group: "l7gate.io", Resource: "policynodestatuses"}:    50,
		{Verb: "bytes", Group: "cilium.io", Resource: "ciliumnetworkpolicies"}:  392200,
	}
	if !maps.Equal(got, want) {
		t.Errorf("parsed %v; want %v", got, want)
	}
}
