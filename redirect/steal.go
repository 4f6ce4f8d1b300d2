package redirect

import (
	"bufio"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// FindProcess returns the pid of the first process whose command name
// (/proc/PID/comm) is name, or 0.
func FindProcess(name string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err == nil && strings.TrimSpace(string(comm)) == name {
			return pid, nil
		}
	}
	return 0, nil
}

// listeningInodes maps the socket inodes of TCP listeners on port (IPv4
// and IPv6) in pid's network namespace.
func listeningInodes(pid int, port uint16) (map[string]bool, error) {
	return socketInodes(pid, port, []string{"tcp", "tcp6"}, "0A") // TCP_LISTEN
}

// socketInodes maps the inodes of the sockets in /proc/PID/net/<files>
// bound to port in state.
func socketInodes(pid int, port uint16, files []string, state string) (map[string]bool, error) {
	out := map[string]bool{}
	for _, f := range files {
		fh, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "net", f))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != state {
				continue
			}
			_, hexPort, ok := strings.Cut(fields[1], ":")
			if !ok {
				continue
			}
			p, err := strconv.ParseUint(hexPort, 16, 16)
			if err == nil && uint16(p) == port {
				out[fields[9]] = true
			}
		}
		fh.Close()
	}
	return out, nil
}

// TakeListener duplicates another process's TCP listener on port into
// this process with pidfd_getfd(2) (needs CAP_SYS_PTRACE over it and a
// shared PID namespace). The agent uses it to put Envoy's transparent
// listeners into the datapath's socket map, so connections redirected to
// Envoy's proxy ports take the same sk_lookup path as the Go proxy's
// (which handles a client reusing a TIME_WAIT 4-tuple correctly).
func TakeListener(pid int, port uint16) (*net.TCPListener, error) {
	inodes, err := listeningInodes(pid, port)
	if err != nil {
		return nil, err
	}
	if len(inodes) == 0 {
		return nil, fmt.Errorf("process %d has no TCP listener on port %d", pid, port)
	}
	f, err := takeFile(pid, port, inodes)
	if err != nil {
		return nil, err
	}
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("listener of process %d on port %d: %w", pid, port, err)
	}
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		ln.Close()
		return nil, fmt.Errorf("listener of process %d on port %d is not TCP", pid, port)
	}
	return tl, nil
}

// TakeListeners is TakeListener for every TCP listener pid has on port:
// a proxy serving both families listens on 127.0.0.1:port and [::1]:port
// (ListenTransparent), and the datapath wants both (an IPv6 redirect needs
// the port's IPv6 socket). Sorted IPv4 first.
func TakeListeners(pid int, port uint16) ([]*net.TCPListener, error) {
	inodes, err := listeningInodes(pid, port)
	if err != nil {
		return nil, err
	}
	if len(inodes) == 0 {
		return nil, fmt.Errorf("process %d has no TCP listener on port %d", pid, port)
	}
	var out []*net.TCPListener
	closeAll := func() {
		for _, l := range out {
			l.Close()
		}
	}
	for inode := range inodes {
		f, err := takeFile(pid, port, map[string]bool{inode: true})
		if err != nil {
			closeAll()
			return nil, err
		}
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("listener of process %d on port %d: %w", pid, port, err)
		}
		tl, ok := ln.(*net.TCPListener)
		if !ok {
			ln.Close()
			closeAll()
			return nil, fmt.Errorf("listener of process %d on port %d is not TCP", pid, port)
		}
		out = append(out, tl)
	}
	slices.SortFunc(out, func(a, b *net.TCPListener) int {
		return boolInt(a.Addr().(*net.TCPAddr).AddrPort().Addr().Unmap().Is6()) - boolInt(b.Addr().(*net.TCPAddr).AddrPort().Addr().Unmap().Is6())
	})
	return out, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TakeUDPSocket duplicates another process's unconnected UDP socket bound
// to port (the DNS proxy's) into this process, as TakeListener does for
// TCP listeners.
func TakeUDPSocket(pid int, port uint16) (*net.UDPConn, error) {
	inodes, err := socketInodes(pid, port, []string{"udp", "udp6"}, "07") // TCP_CLOSE: unconnected
	if err != nil {
		return nil, err
	}
	if len(inodes) == 0 {
		return nil, fmt.Errorf("process %d has no UDP socket on port %d", pid, port)
	}
	f, err := takeFile(pid, port, inodes)
	if err != nil {
		return nil, err
	}
	c, err := net.FilePacketConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("udp socket of process %d on port %d: %w", pid, port, err)
	}
	uc, ok := c.(*net.UDPConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("socket of process %d on port %d is not UDP", pid, port)
	}
	return uc, nil
}

// TakeUDPSockets is TakeUDPSocket for every unconnected UDP socket pid
// has on port: a DNS proxy serving both families has one on 127.0.0.1 and
// one on [::1], and the datapath keeps a socket per family. Sorted IPv4
// first. A socket on the port that pid does not hold (another process's
// in the same network namespace) is left alone.
func TakeUDPSockets(pid int, port uint16) ([]*net.UDPConn, error) {
	inodes, err := socketInodes(pid, port, []string{"udp", "udp6"}, "07") // TCP_CLOSE: unconnected
	if err != nil {
		return nil, err
	}
	var out []*net.UDPConn
	closeAll := func() {
		for _, c := range out {
			c.Close()
		}
	}
	for _, inode := range slices.Sorted(maps.Keys(inodes)) {
		f, err := takeFile(pid, port, map[string]bool{inode: true})
		if errors.Is(err, errNoFD) {
			continue
		}
		if err != nil {
			closeAll()
			return nil, err
		}
		c, err := net.FilePacketConn(f)
		f.Close()
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("udp socket of process %d on port %d: %w", pid, port, err)
		}
		uc, ok := c.(*net.UDPConn)
		if !ok {
			c.Close()
			closeAll()
			return nil, fmt.Errorf("socket of process %d on port %d is not UDP", pid, port)
		}
		out = append(out, uc)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("process %d has no UDP socket on port %d", pid, port)
	}
	slices.SortStableFunc(out, func(a, b *net.UDPConn) int {
		return boolInt(a.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap().Is6()) - boolInt(b.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap().Is6())
	})
	return out, nil
}

// errNoFD: the process holds none of the sockets.
var errNoFD = errors.New("no file descriptor for the socket")

// takeFile duplicates pid's file descriptor of one of the socket inodes.
func takeFile(pid int, port uint16, inodes map[string]bool) (*os.File, error) {
	fdDir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return nil, fmt.Errorf("list fds of process %d: %w", pid, err)
	}
	for _, e := range fds {
		target, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil || !strings.HasPrefix(target, "socket:[") {
			continue
		}
		inode := strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")
		if !inodes[inode] {
			continue
		}
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		pidfd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
		}
		nfd, err := unix.PidfdGetfd(pidfd, fd, 0)
		unix.Close(pidfd)
		if err != nil {
			return nil, fmt.Errorf("pidfd_getfd %d/%d (needs CAP_SYS_PTRACE): %w", pid, fd, err)
		}
		return os.NewFile(uintptr(nfd), fmt.Sprintf("socket-%d-%d", pid, port)), nil
	}
	return nil, fmt.Errorf("process %d: %w on port %d", pid, errNoFD, port)
}
