package bpf

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Reason tells why the datapath decided as it did.
type Reason uint8

const (
	ReasonPolicy      Reason = 0 // a policy entry decided
	ReasonDefault     Reason = 1 // no entry matched (default allow/deny)
	ReasonNoListener  Reason = 2 // redirect target missing: fail closed
	ReasonFragment    Reason = 3 // non-first fragment of an unknown datagram
	ReasonNoEndpoint  Reason = 4 // veth not registered
	ReasonUnsupported Reason = 5 // no longer emitted (IPv6 before it was enforced)
	ReasonMalformed   Reason = 6
	ReasonRevalidate  Reason = 7 // established flow no longer allowed
	ReasonSpoofed     Reason = 8 // a pod sent from an address not its own (IPv4 or ARP)
	// ReasonVLAN: a VLAN-tagged frame (any tag, VID 0 and stacked tags
	// included, in the frame or as the skb's accelerated tag).
	ReasonVLAN Reason = 9
	// ReasonEtherTypeMismatch: skb->protocol disagrees with the frame's
	// ethertype.
	ReasonEtherTypeMismatch Reason = 10
	// ReasonUnsupportedEtherType: neither IPv4, ARP nor IPv6.
	ReasonUnsupportedEtherType Reason = 11
	// ReasonFailClosed: the endpoint direction's policy could not be
	// written (SyncError), so it drops everything until a sync succeeds.
	ReasonFailClosed Reason = 12
	// ReasonIPOptions: a source-routed IPv4 datagram (LSRR, SSRR).
	ReasonIPOptions Reason = 13
	// ReasonIPv6ExtHeader: an IPv6 extension header the datapath does not
	// walk (Mobility, HIP, Shim6, experimental), a chain longer than its
	// bound (8), a hop-by-hop header not first, a repeated fragment or
	// routing header.
	ReasonIPv6ExtHeader Reason = 14
	// ReasonIPv6Routing: an IPv6 routing header of type 0, or one with
	// segments left (a source route).
	ReasonIPv6Routing Reason = 15
	// ReasonNDRouter: a router advertisement or redirect sent by a pod, or
	// a redirect towards a pod.
	ReasonNDRouter Reason = 16
	// ReasonWrongFamily: ICMP (IPv4's) in IPv6 or ICMPv6 in IPv4, which
	// must never match the other family's ICMP rules.
	ReasonWrongFamily Reason = 17
	// ReasonMLD: multicast listener discovery sent by a pod (a link-local
	// protocol; the node is no multicast router). Not spoofing: every
	// pod's kernel sends MLD reports from its link-local address.
	ReasonMLD Reason = 18
)

func (r Reason) String() string {
	switch r {
	case ReasonPolicy:
		return "policy"
	case ReasonDefault:
		return "default"
	case ReasonNoListener:
		return "no-listener"
	case ReasonFragment:
		return "fragment"
	case ReasonNoEndpoint:
		return "no-endpoint"
	case ReasonUnsupported:
		return "unsupported"
	case ReasonMalformed:
		return "malformed"
	case ReasonRevalidate:
		return "revalidate"
	case ReasonSpoofed:
		return "spoofed"
	case ReasonVLAN:
		return "vlan-tagged"
	case ReasonEtherTypeMismatch:
		return "ethertype-mismatch"
	case ReasonUnsupportedEtherType:
		return "unsupported-ethertype"
	case ReasonFailClosed:
		return "fail-closed"
	case ReasonIPOptions:
		return "ip-options"
	case ReasonIPv6ExtHeader:
		return "ipv6-ext-header"
	case ReasonIPv6Routing:
		return "ipv6-routing"
	case ReasonNDRouter:
		return "nd-router"
	case ReasonWrongFamily:
		return "wrong-family"
	case ReasonMLD:
		return "mld"
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Event is a drop, or the verdict on a new flow.
type Event struct {
	// Monotonic is CLOCK_MONOTONIC at the event.
	Monotonic   uint64
	Endpoint    uint32
	Ifindex     uint32
	Direction   Direction
	SrcIdentity Identity
	DstIdentity Identity
	Src, Dst    netip.AddrPort
	Protocol    uint8
	Verdict     Verdict
	Reason      Reason
	Dropped     bool
	FromProxy   bool
	// UntrustedMark: the packet carried a from-proxy mark but its socket
	// is not in a proxy cgroup, so the mark was ignored.
	UntrustedMark bool
	// Related: an ICMP error about the flow shown (Src, Dst, Protocol are
	// the flow's).
	Related bool
	// Audited: forwarded although a policy in audit mode would drop it
	// (RuleID names the audited deny; 0 with ReasonDefault: the audited
	// default-deny).
	Audited   bool
	ProxyPort uint16
	RuleID    uint32
}

const (
	eventFlagDropped       = 1
	eventFlagFromProxy     = 2
	eventFlagUntrustedMark = 4
	eventFlagRelated       = 8
	eventFlagAudit         = 16
)

// Events streams datapath events until ctx is done, then closes the
// channel. Events are rate-limited per CPU in the kernel (Config) and are
// lost when the reader falls behind; only one reader should run at a time.
func (d *Datapath) Events(ctx context.Context) (<-chan Event, error) {
	rd, err := ringbuf.NewReader(d.objs.Events)
	if err != nil {
		return nil, fmt.Errorf("open ring buffer: %w", err)
	}
	ch := make(chan Event, 128)
	stop := context.AfterFunc(ctx, func() { rd.Close() })
	go func() {
		defer close(ch)
		defer stop()
		defer rd.Close()
		for {
			rec, err := rd.Read()
			if err != nil {
				if !errors.Is(err, os.ErrClosed) && !errors.Is(err, ringbuf.ErrClosed) {
					d.log.Warn("event reader stopped", "err", err)
				}
				return
			}
			ev, err := decodeEvent(rec.RawSample)
			if err != nil {
				d.log.Warn("bad event", "err", err)
				continue
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

func decodeEvent(b []byte) (Event, error) {
	var raw datapathEvent
	if err := binary.Read(bytes.NewReader(b), binary.NativeEndian, &raw); err != nil {
		return Event{}, fmt.Errorf("decode event: %w", err)
	}
	addr := func(a [16]byte) netip.Addr {
		if raw.Family == unix.AF_INET {
			return netip.AddrFrom4([4]byte(a[:4]))
		}
		return netip.AddrFrom16(a)
	}
	return Event{
		Monotonic:     raw.Timestamp,
		Endpoint:      raw.Endpoint,
		Ifindex:       raw.Ifindex,
		Direction:     Direction(raw.Dir),
		SrcIdentity:   Identity(raw.SrcIdentity),
		DstIdentity:   Identity(raw.DstIdentity),
		Src:           netip.AddrPortFrom(addr(raw.Saddr), htons(raw.Sport)),
		Dst:           netip.AddrPortFrom(addr(raw.Daddr), htons(raw.Dport)),
		Protocol:      raw.Proto,
		Verdict:       Verdict(raw.Verdict),
		Reason:        Reason(raw.Reason),
		Dropped:       raw.Flags&eventFlagDropped != 0,
		FromProxy:     raw.Flags&eventFlagFromProxy != 0,
		UntrustedMark: raw.Flags&eventFlagUntrustedMark != 0,
		Related:       raw.Flags&eventFlagRelated != 0,
		Audited:       raw.Flags&eventFlagAudit != 0,
		ProxyPort:     raw.ProxyPort,
		RuleID:        raw.RuleId,
	}, nil
}

// EventStats returns how many events were emitted and how many were
// suppressed by the rate limit or a full ring buffer, summed over CPUs.
func (d *Datapath) EventStats() (emitted, suppressed uint64, err error) {
	var vs []datapathEventLimit
	if err := d.objs.EventLimit.Lookup(uint32(0), &vs); err != nil {
		return 0, 0, fmt.Errorf("read event stats: %w", err)
	}
	for _, v := range vs {
		emitted += v.Emitted
		suppressed += v.Suppressed
	}
	return emitted, suppressed, nil
}

func (e Event) String() string {
	action := "forwarded"
	if e.Dropped {
		action = "dropped"
	}
	s := fmt.Sprintf("%s ep=%d %s %s(%d) -> %s(%d) proto=%d verdict=%s reason=%s rule=%d",
		action, e.Endpoint, e.Direction, e.Src, e.SrcIdentity, e.Dst, e.DstIdentity, e.Protocol, e.Verdict, e.Reason, e.RuleID)
	if e.ProxyPort != 0 {
		s += fmt.Sprintf(" proxy=%d", e.ProxyPort)
	}
	if e.FromProxy {
		s += " from-proxy"
	}
	if e.Audited {
		s += " audit"
	}
	if e.UntrustedMark {
		s += " untrusted-mark"
	}
	if e.Related {
		s += " icmp-error"
	}
	return s
}
