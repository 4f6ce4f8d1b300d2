package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l7gate/l7gate/internal/acceptretry"
)

// The hand-over protocol, on a Unix socket in the run dir (the old process
// serves it, the new one connects):
//
//  1. old → new: one message, {"ports":[...],"udpPorts":[...]} with the
//     listener sockets of those ports, then the UDP sockets of the dns
//     listeners' udpPorts, as SCM_RIGHTS, in the same order;
//  2. the new process applies its first config with those sockets (the
//     datapath's socket map holds the same sockets, so nothing changes
//     there and no SYN finds no listener), takes over the admin socket,
//     and writes "ready\n";
//  3. the old process drains (Drain) and exits.
//
// If the new process goes away before "ready", the old one keeps serving.
// Only a peer of the same user (SO_PEERCRED) is answered.

// maxHandOverListeners bounds the sockets of one hand-over.
const maxHandOverListeners = 256

type handOverHeader struct {
	Ports    []uint16 `json:"ports"`
	UDPPorts []uint16 `json:"udpPorts,omitempty"`
	// Ports6 are the ports of the IPv6 listeners (Options.ListenHost6),
	// UDPPorts6 those of the dns listeners' IPv6 UDP sockets. Sockets
	// follow in this order: Ports, Ports6, UDPPorts, UDPPorts6.
	Ports6    []uint16 `json:"ports6,omitempty"`
	UDPPorts6 []uint16 `json:"udpPorts6,omitempty"`
}

// ServeHandOver serves the hand-over socket at path until ctx ends or a
// hand-over completed (then the proxy has drained: its caller exits).
func (p *Proxy) ServeHandOver(ctx context.Context, path string) error {
	ln, err := listenUnixReplacing(path)
	if err != nil {
		return fmt.Errorf("hand-over socket: %w", err)
	}
	defer ln.Close()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var backoff acceptretry.Backoff
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// The socket is still fine (see acceptretry): returning here
			// left the proxy unable ever to be handed over (an upgrade or
			// a version replacement then starts a second proxy beside it).
			if !backoff.Wait(ctx.Done(), p.log, "hand-over socket: accept failed; retrying", err) {
				return nil
			}
			continue
		}
		backoff.Reset()
		ready, err := p.handOver(c)
		c.Close()
		if err != nil {
			p.log.Warn("hand-over failed; still serving", "error", err)
			continue
		}
		if ready {
			p.log.Info("handed over to a new process; draining", "timeout", p.opts.DrainTimeout)
			dctx, cancel := context.WithTimeout(context.Background(), p.opts.DrainTimeout)
			p.Drain(dctx)
			cancel()
			return nil
		}
	}
}

// handOver sends the listeners to the process on c and waits for its
// "ready".
func (p *Proxy) handOver(c *net.UnixConn) (bool, error) {
	if err := samePeerUser(c); err != nil {
		return false, err
	}
	p.mu.Lock()
	if p.draining {
		p.mu.Unlock()
		return false, errors.New("already draining")
	}
	var hdr handOverHeader
	var files []*os.File
	ports := make([]uint16, 0, len(p.listeners))
	for port := range p.listeners {
		ports = append(ports, port)
	}
	slices.Sort(ports)
	for _, port := range ports {
		f, err := p.listeners[port].ln.File()
		if err != nil {
			p.mu.Unlock()
			closeFiles(files)
			return false, fmt.Errorf("duplicate listener %d: %w", port, err)
		}
		files = append(files, f)
		hdr.Ports = append(hdr.Ports, port)
	}
	for _, port := range ports {
		ln6 := p.listeners[port].ln6
		if ln6 == nil {
			continue
		}
		f, err := ln6.File()
		if err != nil {
			p.mu.Unlock()
			closeFiles(files)
			return false, fmt.Errorf("duplicate IPv6 listener %d: %w", port, err)
		}
		files = append(files, f)
		hdr.Ports6 = append(hdr.Ports6, port)
	}
	for _, port := range ports {
		// A dns listener's UDP socket: the socket map holds it too.
		udp := p.listeners[port].udp
		if udp == nil {
			continue
		}
		f, err := udp.File()
		if err != nil {
			p.mu.Unlock()
			closeFiles(files)
			return false, fmt.Errorf("duplicate udp socket %d: %w", port, err)
		}
		files = append(files, f)
		hdr.UDPPorts = append(hdr.UDPPorts, port)
	}
	for _, port := range ports {
		udp6 := p.listeners[port].udp6
		if udp6 == nil {
			continue
		}
		f, err := udp6.File()
		if err != nil {
			p.mu.Unlock()
			closeFiles(files)
			return false, fmt.Errorf("duplicate IPv6 udp socket %d: %w", port, err)
		}
		files = append(files, f)
		hdr.UDPPorts6 = append(hdr.UDPPorts6, port)
	}
	p.mu.Unlock()
	defer closeFiles(files)
	b, _ := json.Marshal(hdr)
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := c.WriteMsgUnix(append(b, '\n'), oob, nil); err != nil {
		return false, fmt.Errorf("send listeners: %w", err)
	}
	// The new process gets its config before it answers: give it as long
	// as a drain.
	c.SetDeadline(time.Now().Add(p.opts.DrainTimeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return false, fmt.Errorf("wait for the new process to be ready: %w", err)
	}
	return line == "ready\n", nil
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

func samePeerUser(c *net.UnixConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	if int(cred.Uid) != os.Geteuid() {
		return fmt.Errorf("peer uid %d is not ours (%d)", cred.Uid, os.Geteuid())
	}
	return nil
}

// Sockets are the sockets a proxy inherits, by proxy port: a hand-over's
// (ReceiveHandOver), or those the agent held across a proxy crash
// (l7gate proxy --inherit-listener). The datapath's socket map holds the
// same sockets, so a proxy serves them instead of binding new ones.
type Sockets struct {
	// TCP are the listeners, TCP6 the IPv6 ones (Options.ListenHost6).
	TCP, TCP6 map[uint16]*net.TCPListener
	// UDP are the dns listeners' UDP sockets, UDP6 their IPv6 ones.
	UDP, UDP6 map[uint16]*net.UDPConn
}

// NewSockets returns Sockets with empty maps.
func NewSockets() Sockets {
	return Sockets{TCP: map[uint16]*net.TCPListener{}, TCP6: map[uint16]*net.TCPListener{}, UDP: map[uint16]*net.UDPConn{}, UDP6: map[uint16]*net.UDPConn{}}
}

// Len is the number of sockets of every kind.
func (s Sockets) Len() int { return len(s.TCP) + len(s.TCP6) + len(s.UDP) + len(s.UDP6) }

// Close closes every socket and removes it from its map.
func (s Sockets) Close() {
	closeAll(s.TCP)
	closeAll(s.TCP6)
	closeAll(s.UDP)
	closeAll(s.UDP6)
}

func closeAll[C io.Closer](m map[uint16]C) {
	for port, c := range m {
		c.Close()
		delete(m, port)
	}
}

// clone copies s into new maps (nil maps become empty ones).
func (s Sockets) clone() Sockets {
	c := NewSockets()
	maps.Copy(c.TCP, s.TCP)
	maps.Copy(c.TCP6, s.TCP6)
	maps.Copy(c.UDP, s.UDP)
	maps.Copy(c.UDP6, s.UDP6)
	return c
}

// HandOver is the receiving side of a hand-over: the sockets of the
// running proxy (for Options.Inherited), and the connection to tell it
// the new one is ready.
type HandOver struct {
	Sockets
	c *net.UnixConn
}

// ReceiveHandOver connects to a running proxy's hand-over socket and
// receives its listener sockets. It returns (nil, nil) when no proxy
// serves the socket (a first start, or after a crash).
func ReceiveHandOver(ctx context.Context, path string) (*HandOver, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, nil
		}
		return nil, fmt.Errorf("hand-over: %w", err)
	}
	c := conn.(*net.UnixConn)
	if dl, ok := ctx.Deadline(); ok {
		c.SetReadDeadline(dl)
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*4*maxHandOverListeners)) // listeners and UDP sockets, both families
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("hand-over: receive listeners: %w", err)
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("hand-over: %w", err)
		}
		for _, m := range msgs {
			got, err := unix.ParseUnixRights(&m)
			if err == nil {
				fds = append(fds, got...)
			}
		}
	}
	h := &HandOver{Sockets: NewSockets(), c: c}
	fail := func(err error) (*HandOver, error) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		h.Close()
		return nil, fmt.Errorf("hand-over: %w", err)
	}
	var hdr handOverHeader
	if err := json.Unmarshal(buf[:n], &hdr); err != nil {
		return fail(err)
	}
	if len(hdr.Ports)+len(hdr.Ports6)+len(hdr.UDPPorts)+len(hdr.UDPPorts6) != len(fds) || len(hdr.Ports) > maxHandOverListeners || len(hdr.Ports6) > maxHandOverListeners || len(hdr.UDPPorts) > maxHandOverListeners || len(hdr.UDPPorts6) > maxHandOverListeners {
		return fail(fmt.Errorf("%d ports, %d IPv6 ports, %d udp ports and %d IPv6 udp ports but %d sockets", len(hdr.Ports), len(hdr.Ports6), len(hdr.UDPPorts), len(hdr.UDPPorts6), len(fds)))
	}
	for i, port := range append(slices.Clone(hdr.Ports), hdr.Ports6...) {
		f := os.NewFile(uintptr(fds[i]), fmt.Sprintf("handed-over-%d", port))
		ln, err := net.FileListener(f)
		f.Close()
		fds[i] = -1
		if err != nil {
			return fail(fmt.Errorf("listener %d: %w", port, err))
		}
		tl, ok := ln.(*net.TCPListener)
		if !ok {
			ln.Close()
			return fail(fmt.Errorf("listener %d is not TCP", port))
		}
		if i < len(hdr.Ports) {
			h.TCP[port] = tl
		} else {
			h.TCP6[port] = tl
		}
	}
	for i, port := range append(slices.Clone(hdr.UDPPorts), hdr.UDPPorts6...) {
		j := len(hdr.Ports) + len(hdr.Ports6) + i
		f := os.NewFile(uintptr(fds[j]), fmt.Sprintf("handed-over-udp-%d", port))
		pc, err := net.FilePacketConn(f)
		f.Close()
		fds[j] = -1
		if err != nil {
			return fail(fmt.Errorf("udp socket %d: %w", port, err))
		}
		uc, ok := pc.(*net.UDPConn)
		if !ok {
			pc.Close()
			return fail(fmt.Errorf("udp socket %d is not UDP", port))
		}
		if i < len(hdr.UDPPorts) {
			h.UDP[port] = uc
		} else {
			h.UDP6[port] = uc
		}
	}
	c.SetReadDeadline(time.Time{})
	return h, nil
}

// Ready tells the old process to drain, and ends the hand-over.
func (h *HandOver) Ready() error {
	defer h.c.Close()
	h.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := h.c.Write([]byte("ready\n")); err != nil {
		return fmt.Errorf("hand-over: tell the old process: %w", err)
	}
	return nil
}

// Close abandons the hand-over (the old process keeps serving) and closes
// sockets not handed to a Proxy.
func (h *HandOver) Close() {
	h.c.Close()
	h.Sockets.Close()
}

// listenUnixReplacing binds a Unix socket at a temporary name (in path's
// directory) and renames
// it over path, so a socket that was there answers until the new one does
// (no moment without one).
func listenUnixReplacing(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	// The temporary name is never longer than path (a Unix socket path
	// has 108 bytes at most: "path.PID" overflowed it in deep run dirs)
	// and differs per final name and process.
	base := filepath.Base(path)
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".%c%d-%d", base[0], len(base), os.Getpid()))
	os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false) // the name is the next process's once renamed over
	if err := os.Chmod(tmp, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, err
	}
	return ln, nil
}
