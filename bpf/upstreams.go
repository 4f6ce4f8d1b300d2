package bpf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Proxy upstream pre-filter
//
// An untracked TCP segment into a pod whose flows were redirected to a
// proxy (proxied_clients) may be a reply to one of the proxy's transparent
// upstream sockets; tc finds out with the kernel's socket lookup, which
// costs about 1.6× as much for IPv6 as for IPv4. proxy_upstreams records
// the 4-tuples of the proxy upstream sockets (c/datapath.c); while it is
// known to be complete, tc runs the lookup only for a packet whose 4-tuple
// is recorded. Completeness needs every socket that may be a proxy's:
//
//   - the recorder (sockops on the cgroup v2 root) records each socket that
//     carries a from-proxy mark when it connects, from its attach on; its
//     link is pinned and, like the tc links, replaced in place by the next
//     Open, so an upgrade leaves no gap;
//   - sockets connected before it was attached are seeded from a dump of
//     the node namespace's TCP sockets (every non-listening one: the lookup
//     still decides, so a socket too many only costs the lookup);
//   - a socket the recorder cannot record (map full) sets the overflow
//     flag, which turns the filter off until the next EnableUpstreamFilter.
//
// Until EnableUpstreamFilter succeeds the filter is off and tc looks every
// candidate up, as it did before the filter existed.

// upstreamOpsPin is the pin name of the recorder's cgroup link.
const upstreamOpsPin = "sockops_upstreams"

// Values of proxy_upstreams (c/datapath.c).
const (
	upstreamRecorded = 1
	upstreamSeeded   = 2
)

// Indexes of upstream_filter (c/datapath.c).
const (
	upstreamFilterOn       = 0
	upstreamFilterOverflow = 1
)

// UpstreamFilterActive reports whether tc uses the proxy upstream
// pre-filter: on, and the recorder has not overflowed since.
func (d *Datapath) UpstreamFilterActive() (bool, error) {
	var on, ovf uint32
	if err := d.objs.UpstreamFilter.Lookup(uint32(upstreamFilterOn), &on); err != nil {
		return false, fmt.Errorf("read upstream filter: %w", err)
	}
	if err := d.objs.UpstreamFilter.Lookup(uint32(upstreamFilterOverflow), &ovf); err != nil {
		return false, fmt.Errorf("read upstream filter: %w", err)
	}
	return on == 1 && ovf == 0, nil
}

// disableUpstreamFilter turns the pre-filter off: tc looks every candidate
// up in the kernel again.
func (d *Datapath) disableUpstreamFilter() error {
	if err := d.objs.UpstreamFilter.Update(uint32(upstreamFilterOn), uint32(0), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("turn upstream filter off: %w", err)
	}
	return nil
}

// EnableUpstreamFilter turns the proxy upstream pre-filter on: it attaches
// the recorder to the root of the cgroup v2 hierarchy mounted at
// cgroupPath (it must be the root: every socket is seen there) (or keeps
// the pinned one, updated by Open), empties proxy_upstreams, records every
// TCP socket of the network namespace at netnsPath (the node's, where the
// proxies' upstream sockets live; see AttachSocketLookup) and only then
// switches tc to the filter. On any error the filter stays off (tc looks
// every candidate up, as without it).
func (d *Datapath) EnableUpstreamFilter(netnsPath, cgroupPath string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.disableUpstreamFilter(); err != nil {
		return err
	}
	// Sockets that could not be recorded before this point are seeded
	// below: the dump comes after this reset.
	if err := d.objs.UpstreamFilter.Update(uint32(upstreamFilterOverflow), uint32(0), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("reset upstream filter overflow: %w", err)
	}
	if _, ok := d.links[upstreamOpsPin]; !ok {
		// Below the root (a cgroup namespace's view), the recorder would
		// not see the sockets of processes outside.
		id, err := CgroupID(cgroupPath)
		if err != nil {
			return err
		}
		if id != rootCgroupID {
			return fmt.Errorf("upstream recorder: %s is cgroup %d, not the cgroup v2 root", cgroupPath, id)
		}
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: ebpf.AttachCGroupSockOps, Program: d.objs.ProxyUpstreamOps})
		if err != nil {
			return fmt.Errorf("attach upstream recorder: %w", err)
		}
		if err := l.Pin(filepath.Join(d.cfg.BPFFSPath, linksDir, upstreamOpsPin)); err != nil {
			l.Close()
			return fmt.Errorf("pin link: %w", err)
		}
		d.links[upstreamOpsPin] = l
	}
	// Drop what earlier seeds left (sockets gone since). A socket the
	// recorder adds meanwhile and this deletes exists before the dump
	// starts, so the dump has it.
	if err := clearMap[datapathUpstreamKey, uint32](d.objs.ProxyUpstreams); err != nil {
		return err
	}
	keys, err := nodeTCPSockets(netnsPath)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := d.objs.ProxyUpstreams.Update(k, uint32(upstreamSeeded), ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			if errors.Is(err, unix.E2BIG) {
				return fmt.Errorf("proxy upstreams: %d sockets to seed, map holds %d: %w", len(keys), d.objs.ProxyUpstreams.MaxEntries(), ErrMapFull)
			}
			return fmt.Errorf("seed proxy upstream: %w", err)
		}
	}
	var ovf uint32
	if err := d.objs.UpstreamFilter.Lookup(uint32(upstreamFilterOverflow), &ovf); err != nil {
		return fmt.Errorf("read upstream filter: %w", err)
	}
	if ovf != 0 {
		return fmt.Errorf("proxy upstreams: the recorder could not record a socket: %w", ErrMapFull)
	}
	// tc also checks the overflow flag: a socket the recorder fails to
	// record from here on turns the filter off by itself.
	if err := d.objs.UpstreamFilter.Update(uint32(upstreamFilterOn), uint32(1), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("turn upstream filter on: %w", err)
	}
	d.log.Info("proxy upstream pre-filter on", "seeded", len(keys))
	return nil
}

// clearMap deletes every key of m.
func clearMap[K comparable, V any](m *ebpf.Map) error {
	var keys []K
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", m, err)
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("clear %s: %w", m, err)
		}
	}
	return nil
}

// nodeTCPSockets lists the non-listening TCP sockets of the network
// namespace at netnsPath as proxy_upstreams keys. An interrupted dump may
// miss sockets: it is retried, and an error if it keeps failing.
func nodeTCPSockets(netnsPath string) ([]datapathUpstreamKey, error) {
	f, err := os.Open(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns: %w", err)
	}
	defer f.Close()
	h, err := netlink.NewHandleAt(netns.NsHandle(f.Fd()), unix.NETLINK_INET_DIAG)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", netnsPath, err)
	}
	defer h.Close()
	var keys []datapathUpstreamKey
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		var socks []*netlink.Socket
		for try := 0; ; try++ {
			socks, err = h.SocketDiagTCP(fam)
			if err == nil {
				break
			}
			if !errors.Is(err, netlink.ErrDumpInterrupted) || try == 4 {
				return nil, fmt.Errorf("list tcp sockets: %w", err)
			}
		}
		for _, s := range socks {
			if s.State == tcpListen {
				continue
			}
			if k, ok := upstreamKey(s.ID.Source, s.ID.SourcePort, s.ID.Destination, s.ID.DestinationPort); ok {
				keys = append(keys, k)
			}
		}
	}
	return keys, nil
}

// tcpListen is TCP_LISTEN (include/net/tcp_states.h).
const tcpListen = 10

// upstreamKey is the proxy_upstreams key of a socket with local address
// laddr:lport connected to raddr:rport: what tc sees in its replies. An
// IPv4-mapped IPv6 socket is keyed as IPv4, as its packets are.
func upstreamKey(laddr net.IP, lport uint16, raddr net.IP, rport uint16) (datapathUpstreamKey, bool) {
	k := datapathUpstreamKey{Lport: htons(lport), Rport: htons(rport)}
	l4, r4 := laddr.To4(), raddr.To4()
	switch {
	case l4 != nil && r4 != nil:
		k.Family = unix.AF_INET
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&k.Laddr[0])), 4), l4)
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&k.Raddr[0])), 4), r4)
	case len(laddr) == net.IPv6len && len(raddr) == net.IPv6len:
		k.Family = unix.AF_INET6
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&k.Laddr[0])), 16), laddr)
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&k.Raddr[0])), 16), raddr)
	default:
		return k, false
	}
	return k, true
}
