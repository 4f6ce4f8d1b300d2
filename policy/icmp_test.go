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
