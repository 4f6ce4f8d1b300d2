package client

import (
	"bytes"
	"errors"
	"slices"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestWireRequestIsEnvoys: the requests the client writes decode with
// go-control-plane's DeltaDiscoveryRequest to what the generated client
// sent (a subscription with the node and the versions held, an ACK, a
// NACK with its detail).
func TestWireRequestIsEnvoys(t *testing.T) {
	for _, c := range []struct {
		ours deltaRequest
		want *discovery.DeltaDiscoveryRequest
	}{
		{deltaRequest{nodeID: "l7proxy~n1", typeURL: "type.googleapis.com/l7gate.v1.Listener", subscribe: []string{"*"}, initialVersions: map[string]string{"a": "1", "b": "", "ingress/http": "v7"}},
			&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "l7proxy~n1"}, TypeUrl: "type.googleapis.com/l7gate.v1.Listener", ResourceNamesSubscribe: []string{"*"},
				InitialResourceVersions: map[string]string{"a": "1", "b": "", "ingress/http": "v7"}}},
		{deltaRequest{typeURL: "t", responseNonce: "n42"}, &discovery.DeltaDiscoveryRequest{TypeUrl: "t", ResponseNonce: "n42"}},
		{deltaRequest{typeURL: "t", responseNonce: "n43", errorCode: int32(codes.InvalidArgument), errorMessage: "cannot bind: é"},
			&discovery.DeltaDiscoveryRequest{TypeUrl: "t", ResponseNonce: "n43", ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "cannot bind: é"}}},
		{deltaRequest{}, &discovery.DeltaDiscoveryRequest{}},
	} {
		var got discovery.DeltaDiscoveryRequest
		b, err := wireCodec{}.Marshal(&c.ours)
		if err != nil {
			t.Fatal(err)
		}
		if err := proto.Unmarshal(b, &got); err != nil {
			t.Fatalf("%+v: %v", c.ours, err)
		}
		if !proto.Equal(&got, c.want) {
			t.Errorf("%+v decodes to %v, want %v", c.ours, &got, c.want)
		}
		// (deterministic: the versions' map is written in key order)
		if again, _ := (wireCodec{}).Marshal(&c.ours); !bytes.Equal(again, b) {
			t.Errorf("%+v: two encodings differ", c.ours)
		}
	}
}

// TestWireResponseIsEnvoys: a DeltaDiscoveryResponse go-control-plane
// encodes, with every field set (those the client does not read too),
// decodes to its type URL, nonce, resources and removed names.
func TestWireResponseIsEnvoys(t *testing.T) {
	in := &discovery.DeltaDiscoveryResponse{
		SystemVersionInfo: "sys1", TypeUrl: "type.googleapis.com/l7gate.v1.Listener", Nonce: "n9",
		Resources: []*discovery.Resource{
			{Name: "ingress/http", Version: "v1", Resource: &anypb.Any{TypeUrl: "type.googleapis.com/l7gate.v1.Listener", Value: []byte{8, 1}},
				Aliases: []string{"x"}, Ttl: durationpb.New(5), ResourceName: &discovery.ResourceName{Name: "ingress/http"},
				CacheControl: &discovery.Resource_CacheControl{DoNotCache: true}, Metadata: &core.Metadata{}},
			{Name: "egress/http", Version: "v2"}, // no resource (a heartbeat, in Envoy's protocol)
			{},
		},
		RemovedResources:     []string{"gone", ""},
		RemovedResourceNames: []*discovery.ResourceName{{Name: "gone"}},
		ControlPlane:         &core.ControlPlane{Identifier: "agent"},
		ResourceErrors:       []*discovery.ResourceError{{ResourceName: &discovery.ResourceName{Name: "bad"}}},
	}
	b, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var got deltaResponse
	if err := (wireCodec{}).Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.typeURL != in.TypeUrl || got.nonce != in.Nonce || !slices.Equal(got.removedResources, in.RemovedResources) || len(got.resources) != len(in.Resources) {
		t.Fatalf("decoded %+v", got)
	}
	for i, r := range got.resources {
		want := in.Resources[i]
		if r.name != want.Name || r.version != want.Version || (r.any == nil) != (want.Resource == nil) || r.any != nil && !proto.Equal(r.any, want.Resource) {
			t.Errorf("resource %d: %+v, want %v", i, r, want)
		}
	}
	// The decoded bytes are the client's own: the receive buffer may be reused.
	b[len(b)-1] ^= 0xff
	if got.resources[0].any.Value[1] != 1 {
		t.Error("a resource's value aliases the received bytes")
	}
}

// TestWireResponseMalformed: bytes that are no DeltaDiscoveryResponse
// (truncated, a length past the end, invalid UTF-8 in a string field)
// fail to decode, as with protobuf-go, and never panic.
func TestWireResponseMalformed(t *testing.T) {
	good, err := proto.Marshal(&discovery.DeltaDiscoveryResponse{TypeUrl: "t", Nonce: "n",
		Resources: []*discovery.Resource{{Name: "a", Version: "1", Resource: &anypb.Any{TypeUrl: "t", Value: []byte("v")}}}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(good); i++ {
		var r deltaResponse
		ours := r.unmarshal(good[:i])
		theirs := proto.Unmarshal(good[:i], &discovery.DeltaDiscoveryResponse{})
		if (ours == nil) != (theirs == nil) {
			t.Errorf("%d of %d bytes: ours %v, protobuf-go %v", i, len(good), ours, theirs)
		}
	}
	for _, b := range [][]byte{
		{0x22, 0x05, 't'},                    // type_url longer than the message
		{0x22, 0x02, 0xff, 0xfe},             // type_url not UTF-8
		{0x12, 0x04, 0x1a, 0x02, 0xc3, 0x28}, // a resource's name not UTF-8
		{0x12, 0x03, 0x12, 0x01, 0x0a},       // an Any cut short
		{0x0f},                               // wire type 7
	} {
		var r deltaResponse
		err := r.unmarshal(b)
		if !errors.Is(err, errMalformed) {
			t.Errorf("%x: %v, want malformed", b, err)
		}
		if proto.Unmarshal(b, &discovery.DeltaDiscoveryResponse{}) == nil {
			t.Errorf("%x: protobuf-go accepts it", b)
		}
	}
}

// FuzzWireResponse: the decoder never panics and accepts what protobuf-go
// accepts, with the same fields. (It may accept what protobuf-go rejects
// inside the fields it skips: invalid UTF-8 in a control_plane, say.)
func FuzzWireResponse(f *testing.F) {
	seed, _ := proto.Marshal(&discovery.DeltaDiscoveryResponse{TypeUrl: "t", Nonce: "n", RemovedResources: []string{"x"},
		Resources: []*discovery.Resource{{Name: "a", Version: "1", Resource: &anypb.Any{TypeUrl: "t", Value: []byte("v")}}}})
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		var ours deltaResponse
		oerr := ours.unmarshal(b)
		var theirs discovery.DeltaDiscoveryResponse
		if terr := proto.Unmarshal(b, &theirs); terr != nil {
			return
		}
		if oerr != nil {
			t.Fatalf("protobuf-go decodes it, ours: %v", oerr)
		}
		if ours.typeURL != theirs.TypeUrl || ours.nonce != theirs.Nonce || !slices.Equal(ours.removedResources, theirs.RemovedResources) || len(ours.resources) != len(theirs.Resources) {
			t.Fatalf("ours %+v, protobuf-go %v", ours, &theirs)
		}
		for i, r := range ours.resources {
			w := theirs.Resources[i]
			if r.name != w.Name || r.version != w.Version || (r.any == nil) != (w.Resource == nil) || r.any != nil && !proto.Equal(r.any, w.Resource) {
				t.Fatalf("resource %d: ours %+v, protobuf-go %v", i, r, w)
			}
		}
	})
}
