// Package marks is the encoding of the from-proxy marks (SO_MARK on a
// proxy's upstream connections) that package bpf documents and the
// datapath reads. It imports nothing, so the proxy-only build sets the
// mark without linking bpf (cilium/ebpf, netlink).
package marks

const (
	// MagicProxyIngress and MagicProxyEgress are the mark nibbles of the
	// ingress and the egress proxy's upstream connections (bpf.MarkMagic…).
	MagicProxyIngress uint32 = 0x0A00
	MagicProxyEgress  uint32 = 0x0B00

	// MaxIdentity is the largest identity a proxy mark can carry.
	MaxIdentity = 1<<28 - 1
)

// Proxy is the SO_MARK a proxy sets on its upstream connection for a
// client of identity src; egress tells the egress proxy's mark from the
// ingress proxy's. Only 28 identity bits fit.
func Proxy(egress bool, src uint32) uint32 {
	magic := MagicProxyIngress
	if egress {
		magic = MagicProxyEgress
	}
	id := src & MaxIdentity
	return magic | (id&0xFFFF)<<16 | (id>>16)&0xFF | ((id>>24)&0xF)<<12
}

// Identity decodes the source identity from a proxy mark.
func Identity(mark uint32) uint32 {
	return (mark>>16)&0xFFFF | (mark&0xFF)<<16 | ((mark>>12)&0xF)<<24
}
