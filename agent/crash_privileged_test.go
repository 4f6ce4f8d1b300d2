package agent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestPrivilegedProxyCrash: the Go proxy is SIGKILLed three times while a
// tiefighter opens a new connection every 20 ms, plus a burst of ten
// while no proxy runs (half of the requests denied by the L7 rule).
// Nothing ever passes unproxied: no denied request reaches the deathstar.
// The agent holds duplicates of the proxy's listener sockets, so they stay
// in the datapath's socket map: a connection opened while no proxy runs
// completes its handshake into the backlog and is served by the restarted
// proxy (the supervisor hands it the sockets) as soon as it accepts.
// (Without the duplicates the datapath drops the SYN, reason no-listener,
// and the client's SYN retransmits carry it over, a second or more later.)
// Connections the killed proxy was serving fail; they are counted.
func TestPrivilegedProxyCrash(t *testing.T) {
	requireRoot(t)
	n := newStarwarsNode(t)
	bypassed := serveDeathstarH2C(t, n.podNS("deathstar"))
	startStarwarsL7(t, n)
	tie := n.podNS("tiefighter")

	type attempt struct {
		start   time.Time
		ok      bool
		burst   bool // opened while no proxy ran
		outcome string
		took    time.Duration
	}
	var mu sync.Mutex
	var attempts []attempt
	var leaked atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 5000; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			method, path, want := "POST", "/v1/request-landing", 200
			if i%2 == 1 {
				method, path, want = "PUT", "/v1/exhaust-port", 403
			}
			a := attempt{start: time.Now()}
			code, body, err := newConnRequest(n, tie, method, path, 15*time.Second)
			switch {
			case err != nil:
				a.outcome = classify(err)
			case want == 403 && code != 403:
				leaked.Add(1)
				a.outcome = fmt.Sprintf("denied request answered %d %q", code, body)
			case code != want:
				a.outcome = fmt.Sprintf("status %d", code)
			default:
				a.ok, a.outcome = true, "ok"
			}
			mu.Lock()
			attempts = append(attempts, a)
			mu.Unlock()
		}
	}()

	var kills []time.Time
	for round := range 3 {
		time.Sleep(1500 * time.Millisecond)
		pid := proxyPID(t, n.run)
		kills = append(kills, time.Now())
		syscall.Kill(pid, syscall.SIGKILL)
		// A burst of new connections while no proxy runs (the supervisor
		// restarts one no sooner than 500 ms after it exited).
		time.Sleep(100 * time.Millisecond)
		if now := proxyPID(t, n.run); now != pid {
			t.Fatalf("crash %d: a proxy (%d) was started within 100 ms", round, now)
		}
		for i := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				method, path, want := "POST", "/v1/request-landing", 200
				if i%2 == 1 {
					method, path, want = "PUT", "/v1/exhaust-port", 403
				}
				a := attempt{start: time.Now(), burst: true}
				code, body, err := newConnRequest(n, tie, method, path, 15*time.Second)
				a.took = time.Since(a.start)
				switch {
				case err != nil:
					a.outcome = classify(err)
				case want == 403 && code != 403:
					leaked.Add(1)
					a.outcome = fmt.Sprintf("denied request answered %d %q", code, body)
				case code != want:
					a.outcome = fmt.Sprintf("status %d", code)
				default:
					a.ok, a.outcome = true, "ok"
				}
				mu.Lock()
				attempts = append(attempts, a)
				mu.Unlock()
			}()
		}
		// Wait for the restarted proxy to serve again (bounded).
		deadline := time.Now().Add(40 * time.Second)
		for {
			if now := proxyPID(t, n.run); now != pid {
				if code, _, err := newConnRequest(n, tie, "POST", "/v1/request-landing", 5*time.Second); err == nil && code == 200 {
					break
				}
			}
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(filepath.Join(n.run, "proxy.log"))
				t.Fatalf("crash %d: no proxy serving 40s after the kill\n%s", round, tail(log, 3000))
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("crash %d: serving again %s after the kill", round, time.Since(kills[round]).Round(time.Millisecond))
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()

	var total, okTotal, inWindow, okInWindow int
	var burstTook []time.Duration
	outcomes := map[string]int{}
	for _, a := range attempts {
		total++
		if a.ok {
			okTotal++
		}
		outcomes[a.outcome]++
		if a.burst {
			burstTook = append(burstTook, a.took.Round(10*time.Millisecond))
			inWindow++
			if a.ok {
				okInWindow++
			}
		}
	}
	t.Logf("new connections: %d, ok %d, outcomes %v; opened while no proxy ran: %d, served %d; denied requests that reached the server: %d",
		total, okTotal, outcomes, inWindow, okInWindow, bypassed.Load())
	slices.Sort(burstTook)
	if len(burstTook) > 0 {
		t.Logf("connections opened while no proxy ran took %s to %s (median %s) to be answered", burstTook[0], burstTook[len(burstTook)-1], burstTook[len(burstTook)/2])
	}
	if leaked.Load() != 0 || bypassed.Load() != 0 {
		t.Errorf("fail open: %d denied requests answered otherwise, %d reached the deathstar", leaked.Load(), bypassed.Load())
	}
	if inWindow == 0 {
		t.Fatal("no connection was opened while no proxy ran")
	}
	if okInWindow != inWindow {
		t.Errorf("%d of %d connections opened while no proxy ran were not served (want them queued for the restarted proxy)", inWindow-okInWindow, inWindow)
	}
}

// newConnRequest sends one request on a new connection from a pod.
func newConnRequest(n *starwarsNode, ns, method, path string, timeout time.Duration) (int, string, error) {
	var c net.Conn
	if err := inNS(ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", "198.18.1.10:80", timeout)
		return err
	}); err != nil {
		return 0, "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", method, path); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

func classify(err error) string {
	s := err.Error()
	for _, k := range []string{"connection refused", "connection reset", "i/o timeout", "EOF"} {
		if strings.Contains(s, k) {
			return k
		}
	}
	return s
}
