package bpf

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A socket-LB client is this test binary started inside a cgroup (and a
// pod's network namespace): the socket-LB programs only see sockets of
// processes in the cgroup they are attached to.

const lbClientEnv = "L7GATE_BPF_TEST_LBCLIENT"

// lbClientSpec is what a client child does.
type lbClientSpec struct {
	NetNS string
	Ops   []lbOp
	// Loop: repeat Ops until stdin closes, tagging each result with the
	// epoch (the number of lines read from stdin so far) at which the
	// operation started.
	Loop bool
}

// lbOp is one operation: "tcp" (connect, read the banner, getpeername),
// "udp" (connected: connect, write, read; getpeername) or "udpto"
// (unconnected: sendto, recvfrom), Count times. Family "" is IPv4, "6"
// IPv6, "mapped" an AF_INET6 dual-stack socket given the v4-mapped form
// (::ffff:a.b.c.d) of the IPv4 address Addr.
type lbOp struct {
	Kind   string
	Addr   string
	Count  int
	Family string `json:",omitempty"`
}

// lbResult is one operation's outcome, one JSON line each.
type lbResult struct {
	Op    int    `json:"op"`
	Epoch int64  `json:"epoch"`
	Reply string `json:"reply,omitempty"` // banner or echo: names the backend
	Peer  string `json:"peer,omitempty"`  // getpeername, or recvfrom's source
	Err   string `json:"err,omitempty"`
	Errno int    `json:"errno,omitempty"`
}

func lbClientChild(raw string) error {
	var s lbClientSpec
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		return err
	}
	var epoch atomic.Int64
	stdinDone := make(chan struct{})
	if s.Loop {
		go func() {
			defer close(stdinDone)
			sc := bufio.NewScanner(os.Stdin)
			for sc.Scan() {
				epoch.Add(1)
			}
		}()
	}
	enc := json.NewEncoder(os.Stdout)
	return inNS(s.NetNS, func() error {
		for {
			for i, op := range s.Ops {
				for range max(op.Count, 1) {
					r := lbResult{Op: i, Epoch: epoch.Load()}
					lbRun(op, &r)
					if err := enc.Encode(r); err != nil {
						return err
					}
				}
			}
			if !s.Loop {
				return nil
			}
			select {
			case <-stdinDone:
				return nil
			default:
			}
		}
	})
}

func lbRun(op lbOp, r *lbResult) {
	fail := func(err error) {
		r.Err = err.Error()
		var errno syscall.Errno
		if errors.As(err, &errno) {
			r.Errno = int(errno)
		}
	}
	if op.Family == "mapped" {
		lbRunMapped(op, r, fail)
		return
	}
	fam := "4"
	if op.Family == "6" {
		fam = "6"
	}
	switch op.Kind {
	case "tcp":
		d := net.Dialer{Timeout: 2 * time.Second}
		d.SetMultipathTCP(false)
		c, err := d.Dial("tcp"+fam, op.Addr)
		if err != nil {
			fail(err)
			return
		}
		defer c.Close()
		// Go takes RemoteAddr from getpeername(2) after connect.
		r.Peer = c.RemoteAddr().String()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			fail(err)
			return
		}
		r.Reply = strings.TrimSpace(line)
	case "udp":
		c, err := net.Dial("udp"+fam, op.Addr)
		if err != nil {
			fail(err)
			return
		}
		defer c.Close()
		r.Peer = c.RemoteAddr().String()
		if _, err := c.Write([]byte("q")); err != nil {
			fail(err)
			return
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			fail(err)
			return
		}
		r.Reply = string(buf[:n])
	case "udpto":
		pc, err := net.ListenPacket("udp"+fam, ":0")
		if err != nil {
			fail(err)
			return
		}
		defer pc.Close()
		to, err := net.ResolveUDPAddr("udp"+fam, op.Addr)
		if err != nil {
			fail(err)
			return
		}
		if _, err := pc.WriteTo([]byte("q"), to); err != nil {
			fail(err)
			return
		}
		pc.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 512)
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			fail(err)
			return
		}
		r.Reply, r.Peer = string(buf[:n]), from.String()
	default:
		r.Err = "unknown op " + strconv.Quote(op.Kind)
	}
}

// lbRunMapped runs op on an AF_INET6 socket (IPV6_V6ONLY off) with the
// v4-mapped form of op.Addr, as a dual-stack application (Java, or C with
// AF_INET6 and AI_V4MAPPED) does. Go's net package would use AF_INET for
// such an address, hence raw syscalls. Peer is the address as the kernel
// returned it (v4-mapped).
func lbRunMapped(op lbOp, r *lbResult, fail func(error)) {
	ap, err := netip.ParseAddrPort(op.Addr)
	if err != nil || !ap.Addr().Is4() {
		fail(fmt.Errorf("mapped: want an IPv4 address and port, got %q", op.Addr))
		return
	}
	to := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: netip.AddrFrom16(ap.Addr().As16()).As16()}
	typ := unix.SOCK_STREAM
	if op.Kind != "tcp" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(unix.AF_INET6, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fail(err)
		return
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval((2 * time.Second).Nanoseconds())
	if err := errors.Join(unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0),
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv),
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)); err != nil {
		fail(err)
		return
	}
	peer := func(sa unix.Sockaddr) string {
		if s6, ok := sa.(*unix.SockaddrInet6); ok {
			return netip.AddrPortFrom(netip.AddrFrom16(s6.Addr), uint16(s6.Port)).String()
		}
		return fmt.Sprintf("not IPv6: %T", sa)
	}
	buf := make([]byte, 512)
	switch op.Kind {
	case "tcp", "udp":
		if err := unix.Connect(fd, to); err != nil {
			fail(err)
			return
		}
		sa, err := unix.Getpeername(fd)
		if err != nil {
			fail(err)
			return
		}
		r.Peer = peer(sa)
		if op.Kind == "udp" {
			if _, err := unix.Write(fd, []byte("q")); err != nil {
				fail(err)
				return
			}
		}
		n, err := unix.Read(fd, buf)
		if err != nil {
			fail(err)
			return
		}
		r.Reply = strings.TrimSpace(string(buf[:max(n, 0)]))
	case "udpto":
		if err := unix.Sendto(fd, []byte("q"), 0, to); err != nil {
			fail(err)
			return
		}
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			fail(err)
			return
		}
		r.Reply, r.Peer = string(buf[:n]), peer(from)
	default:
		r.Err = "unknown op " + strconv.Quote(op.Kind)
	}
}

// lbClient is a running client child.
type lbClient struct {
	cmd   *exec.Cmd
	out   *bufio.Scanner
	stdin interface{ Close() error }
	w     interface {
		Write([]byte) (int, error)
	}
}

// startLBClient starts a client child in the cgroup at dir (none: "").
func startLBClient(t *testing.T, dir string, spec lbClientSpec) *lbClient {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(spec)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), lbClientEnv+"="+string(raw))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if dir != "" {
		cg, err := os.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer cg.Close()
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cg.Fd())
	}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	return &lbClient{cmd: cmd, out: sc, stdin: stdin, w: stdin}
}

// next reads the next result (false at the end of the output).
func (c *lbClient) next(t *testing.T) (lbResult, bool) {
	t.Helper()
	if !c.out.Scan() {
		return lbResult{}, false
	}
	var r lbResult
	if err := json.Unmarshal(c.out.Bytes(), &r); err != nil {
		t.Fatalf("client output %q: %v", c.out.Text(), err)
	}
	return r, true
}

// runLBClient runs ops once in the cgroup at dir and returns the results.
func runLBClient(t *testing.T, dir, ns string, ops ...lbOp) []lbResult {
	t.Helper()
	c := startLBClient(t, dir, lbClientSpec{NetNS: ns, Ops: ops})
	var out []lbResult
	for {
		r, ok := c.next(t)
		if !ok {
			break
		}
		out = append(out, r)
	}
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("client: %v", err)
	}
	return out
}

func (r lbResult) String() string {
	if r.Err != "" {
		return fmt.Sprintf("op %d: error %s", r.Op, r.Err)
	}
	return fmt.Sprintf("op %d: %q from %s", r.Op, r.Reply, r.Peer)
}
