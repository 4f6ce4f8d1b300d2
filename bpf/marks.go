package bpf

import "github.com/l7gate/l7gate/bpf/marks"

// Mark encoding (skb->mark / SO_MARK), mirrored from c/marks.h:
//
//	bits  8-11  magic nibble (MarkMagicMask)
//	  0x200     to proxy, set by tc on a redirected flow; bits 16-31 hold the
//	            proxy port (0 on replies steered to a proxy's upstream
//	            socket). The node needs
//	              ip rule add fwmark 0x200/0xf00 lookup 2004
//	              ip route add local 0.0.0.0/0 dev lo table 2004
//	            so that such packets are delivered locally, where the
//	            sk_lookup program picks the proxy's listener (or the stack
//	            finds the proxy's connected socket).
//	    bit 0   (MarkToProxyNoTrack) with 0x200: the packet was turned
//	            around into the node's stack (bpf_redirect to the veth's
//	            ingress: an ingress redirect, or a reply to a proxy's
//	            upstream socket met on its way into a pod). Netfilter
//	            tracked it on its first pass and the redirect dropped that
//	            reference, so the node's raw PREROUTING rule (NoTrackRule)
//	            keeps it from being tracked a second time, which would clash
//	            with a DNAT entry (kube-proxy's ClusterIP) and remap the
//	            flow's port. Redirects of traffic leaving a pod run before
//	            PREROUTING and keep the bit clear: tracked (and DNATed)
//	            once, as usual.
//	  0xA00     set by the proxy (SO_MARK) on upstream connections of the
//	            ingress proxy, 0xB00 for the egress proxy; the rest of the
//	            mark carries the source identity:
//	              bits 16-31 identity bits 0-15
//	              bits  0-7  identity bits 16-23
//	              bits 12-15 identity bits 24-27
//	            The receiver's ingress policy is applied as from that
//	            identity. Connections of the ingress proxy (0xA00) are never
//	            redirected again: that proxy enforced exactly the receiver's
//	            ingress L7 rules. Connections of the egress proxy (0xB00)
//	            enforced only the sender's egress rules, so they are
//	            redirected to the ingress proxy when the receiver's ingress
//	            policy redirects that identity.
//	            These marks are believed only from sockets of a registered
//	            proxy cgroup (SetTrustedProxyCgroups, cgroup.go); from any
//	            other socket they are ignored and the packet is judged by
//	            its source address (the node's own traffic: host). With no
//	            cgroup registered no mark is believed.
const (
	MarkMagicMask         uint32 = 0x0F00
	MarkMagicToProxy      uint32 = 0x0200
	MarkMagicProxyIngress uint32 = marks.MagicProxyIngress
	MarkMagicProxyEgress  uint32 = marks.MagicProxyEgress
	MarkToProxyNoTrack    uint32 = 0x0001

	// NoTrackMask and NoTrackValue select the packets the node must not
	// track in raw PREROUTING: mark & NoTrackMask == NoTrackValue.
	NoTrackMask  = MarkMagicMask | MarkToProxyNoTrack
	NoTrackValue = MarkMagicToProxy | MarkToProxyNoTrack

	// ProxyRoutingTable is the routing table the to-proxy mark selects.
	ProxyRoutingTable = 2004

	// maxMarkIdentity is the largest identity a proxy mark can carry.
	maxMarkIdentity = marks.MaxIdentity
)

// ToProxyMark is the mark tc puts on packets redirected to proxyPort
// (leaving a pod; an ingress redirect adds MarkToProxyNoTrack).
func ToProxyMark(proxyPort uint16) uint32 {
	return MarkMagicToProxy | uint32(proxyPort)<<16
}

// TurnedAroundMark is the mark of a packet tc turned around into the node's
// stack towards proxyPort (0: a reply to a proxy's upstream socket).
func TurnedAroundMark(proxyPort uint16) uint32 {
	return ToProxyMark(proxyPort) | MarkToProxyNoTrack
}

// ProxyMark is the SO_MARK a proxy sets on its upstream connection for a
// client of identity src; dir is the direction of the proxy (ingress or
// egress policy). Only 28 identity bits fit; check with CanEncodeIdentity.
func ProxyMark(dir Direction, src Identity) uint32 {
	return marks.Proxy(dir == Egress, uint32(src)) // (the encoding lives in the leaf package the proxy-only build links)
}

// CanEncodeIdentity reports whether id fits in a proxy mark.
func CanEncodeIdentity(id Identity) bool { return uint32(id) <= maxMarkIdentity }

// MarkIdentity decodes the source identity from a proxy mark.
func MarkIdentity(mark uint32) Identity {
	return Identity(marks.Identity(mark))
}
