package bpf

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
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
// (unconnected: sendto, recvfrom), Count times.
type lbOp struct {
	Kind  string
	Addr  string
	Count int
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
	switch op.Kind {
	case "tcp":
		d := net.Dialer{Timeout: 2 * time.Second}
		d.SetMultipathTCP(false)
		c, err := d.Dial("tcp4", op.Addr)
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
		c, err := net.Dial("udp4", op.Addr)
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
		pc, err := net.ListenPacket("udp4", ":0")
		if err != nil {
			fail(err)
			return
		}
		defer pc.Close()
		to, err := net.ResolveUDPAddr("udp4", op.Addr)
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
