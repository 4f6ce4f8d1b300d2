package policy

import "testing"

// TestParseICMPType: numbers 0-255 and every name Cilium accepts, per
// family (CiliumNetworkPolicy icmps[].fields[].type).
func TestParseICMPType(t *testing.T) {
	for _, c := range []struct {
		in    string
		proto Protocol
		want  uint8
	}{
		{"0", ProtoICMP, 0}, {"8", ProtoICMP, 8}, {"255", ProtoICMP, 255},
		{"EchoReply", ProtoICMP, 0}, {"DestinationUnreachable", ProtoICMP, 3}, {"Redirect", ProtoICMP, 5},
		{"Echo", ProtoICMP, 8}, {"EchoRequest", ProtoICMP, 8}, {"RouterAdvertisement", ProtoICMP, 9},
		{"RouterSelection", ProtoICMP, 10}, {"TimeExceeded", ProtoICMP, 11}, {"ParameterProblem", ProtoICMP, 12},
		{"Timestamp", ProtoICMP, 13}, {"TimestampReply", ProtoICMP, 14}, {"Photuris", ProtoICMP, 40},
		{"ExtendedEchoRequest", ProtoICMP, 42}, {"ExtendedEchoReply", ProtoICMP, 43},
		{"DestinationUnreachable", ProtoICMPv6, 1}, {"PacketTooBig", ProtoICMPv6, 2}, {"TimeExceeded", ProtoICMPv6, 3},
		{"ParameterProblem", ProtoICMPv6, 4}, {"EchoRequest", ProtoICMPv6, 128}, {"EchoReply", ProtoICMPv6, 129},
		{"MulticastListenerQuery", ProtoICMPv6, 130}, {"MulticastListenerReport", ProtoICMPv6, 131},
		{"MulticastListenerDone", ProtoICMPv6, 132}, {"RouterSolicitation", ProtoICMPv6, 133},
		{"RouterAdvertisement", ProtoICMPv6, 134}, {"NeighborSolicitation", ProtoICMPv6, 135},
		{"NeighborAdvertisement", ProtoICMPv6, 136}, {"RedirectMessage", ProtoICMPv6, 137},
		{"RouterRenumbering", ProtoICMPv6, 138}, {"ICMPNodeInformationQuery", ProtoICMPv6, 139},
		{"ICMPNodeInformationResponse", ProtoICMPv6, 140}, {"InverseNeighborDiscoverySolicitation", ProtoICMPv6, 141},
		{"InverseNeighborDiscoveryAdvertisement", ProtoICMPv6, 142}, {"HomeAgentAddressDiscoveryRequest", ProtoICMPv6, 144},
		{"HomeAgentAddressDiscoveryReply", ProtoICMPv6, 145}, {"MobilePrefixSolicitation", ProtoICMPv6, 146},
		{"MobilePrefixAdvertisement", ProtoICMPv6, 147}, {"DuplicateAddressRequestCodeSuffix", ProtoICMPv6, 157},
		{"DuplicateAddressConfirmationCodeSuffix", ProtoICMPv6, 158}, {"ExtendedEchoRequest", ProtoICMPv6, 160},
		{"ExtendedEchoReply", ProtoICMPv6, 161},
	} {
		got, err := parseICMPType(c.in, c.proto)
		if err != nil || got != c.want {
			t.Errorf("%s %q: got %d %v, want %d", c.proto, c.in, got, err, c.want)
		}
	}
	for _, c := range []struct {
		in    string
		proto Protocol
	}{
		{"256", ProtoICMP}, {"-1", ProtoICMP}, {"echorequest", ProtoICMP}, {"PacketTooBig", ProtoICMP},
		{"Echo", ProtoICMPv6}, {"NeighborSolicitation", ProtoICMP}, {"", ProtoICMP},
	} {
		if got, err := parseICMPType(c.in, c.proto); err == nil {
			t.Errorf("%s %q: accepted as %d", c.proto, c.in, got)
		}
	}
}

// TestEvaluateICMPTypeZeroIsEchoReply: an icmps rule for type 0
// (EchoReply) admits echo replies only, as the datapath does
// (bpf/compile.go stores ICMP types as exact ports). The evaluator used to
// read port 0 as "every port" and told `policy trace` that an echo request
// (type 8) was allowed by it.
func TestEvaluateICMPTypeZeroIsEchoReply(t *testing.T) {
	d := &DirectionPolicy{Enforced: true, Entries: []Entry{
		{Peer: IdentityAny, Protocol: ProtoICMP, Port: 0, EndPort: 0, Verdict: VerdictAllow,
			Origins: []Provenance{{Policy: "ns/echo-reply", Kind: KindAllow}}},
	}}
	if got := d.EvaluateL4(IdentityAny, ProtoICMP, 0).Decision; got != DecisionAllowed {
		t.Errorf("type 0 (EchoReply): %s, want allowed", got)
	}
	for _, typ := range []uint16{3, 8, 11} {
		if got := d.EvaluateL4(IdentityAny, ProtoICMP, typ).Decision; got != DecisionDenied {
			t.Errorf("type %d under an EchoReply-only rule: %s, want denied", typ, got)
		}
	}
	// TCP port 0 entries still mean every port.
	d = &DirectionPolicy{Enforced: true, Entries: []Entry{{Peer: IdentityAny, Protocol: ProtoTCP, Verdict: VerdictAllow,
		Origins: []Provenance{{Policy: "ns/any-tcp", Kind: KindAllow}}}}}
	if got := d.EvaluateL4(IdentityAny, ProtoTCP, 8080).Decision; got != DecisionAllowed {
		t.Errorf("TCP any port: %s, want allowed", got)
	}
}
