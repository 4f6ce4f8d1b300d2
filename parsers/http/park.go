package http

import (
	"container/heap"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Poller holds parked connections: idle kept-alive HTTP/1 connections
// and idle HTTP/2 connections (no open stream) whose goroutines returned
// (Server.Serve). It watches them all with one
// epoll instance of its own (a socket may be in the runtime's netpoll and
// in it at once) and one goroutine, their idle deadlines in a heap, and
// hands a connection back to a goroutine (run) when its socket becomes
// readable or hangs up, when its idle deadline passes, or when a drain or
// its context's end needs it.
type Poller struct {
	epfd, evfd int
	run        func(func())
	// delay is how long a connection waits idle on its own goroutine
	// before it parks: a keep-alive client that sends its next request at
	// once never goes through the poller.
	delay time.Duration

	mu     sync.Mutex
	conns  map[uint64]*parkedConn // by epoll token (one per socket watched)
	n      int                    // connections parked
	dl     parkHeap
	next   uint64 // the last token given
	closed bool
	done   chan struct{}

	// h2Readers and h2Writers hold the read and write buffers
	// (*bufio.Reader, *bufio.Writer) HTTP/2 connections gave back when
	// they parked, for those that resume.
	h2Readers, h2Writers sync.Pool
}

// parkDelay is Poller.delay. Back-to-back keep-alive requests never park
// (the next one comes within microseconds); a burst of new connections
// holds its goroutines this long at most once idle.
const parkDelay = 250 * time.Millisecond

// parkedConn is a connection's entry in the poller (embedded in its
// session), guarded by Poller.mu.
type parkedConn struct {
	raw syscall.RawConn
	// extra are further sockets of the connection watched with raw (an
	// HTTP/2 connection's upstream connections): any of them readable
	// hands the connection back.
	extra    []syscall.RawConn
	tokens   []uint64 // extra's tokens while parked
	resume   func()
	deadline time.Time
	token    uint64 // while parked, else 0
	index    int    // in Poller.dl while parked
	// wake: a wake-up came while the connection was not parked: its next
	// park resumes it at once instead.
	wake bool
}

// NewPoller starts a poller; run starts a goroutine for a connection
// handed back (a worker pool's, or go).
func NewPoller(run func(func())) (*Poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &unix.EpollEvent{Events: unix.EPOLLIN}); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	p := &Poller{epfd: epfd, evfd: evfd, run: run, delay: parkDelay, conns: map[uint64]*parkedConn{}, done: make(chan struct{})}
	go p.loop()
	return p, nil
}

// Close hands every parked connection back and stops the poller's
// goroutine; later parks resume at once.
func (p *Poller) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.signal()
	<-p.done
	unix.Close(p.epfd)
	unix.Close(p.evfd)
	return nil
}

// Parked returns the number of connections parked.
func (p *Poller) Parked() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// park adds c with its idle deadline; c.resume runs (on a goroutine run
// starts) when it is handed back. It is the last thing the goroutine that
// served c does with it. A connection that cannot be watched (closed
// meanwhile, the poller closed) or was woken meanwhile resumes at once.
func (p *Poller) park(c *parkedConn, deadline time.Time) {
	p.mu.Lock()
	if p.closed || c.wake {
		c.wake = false
		p.mu.Unlock()
		p.run(c.resume)
		return
	}
	p.next++
	tok := p.next
	// (the epoll registration under mu: a wake-up that takes c out
	// meanwhile would leave the socket registered)
	err := p.add(c.raw, tok)
	c.tokens = c.tokens[:0]
	for _, raw := range c.extra {
		if err != nil {
			break
		}
		p.next++
		if err = p.add(raw, p.next); err == nil {
			c.tokens = append(c.tokens, p.next)
		}
	}
	if err != nil {
		p.del(c)
		c.tokens = c.tokens[:0]
		p.mu.Unlock()
		p.run(c.resume)
		return
	}
	c.token, c.deadline = tok, deadline
	p.conns[tok] = c
	for _, t := range c.tokens {
		p.conns[t] = c
	}
	p.n++
	heap.Push(&p.dl, c)
	first := c.index == 0
	p.mu.Unlock()
	if first {
		p.signal() // the poller's wait ends earlier now
	}
}

// unregister takes c's socket out of the epoll set once it was handed
// back (with the socket held open meanwhile: a closed descriptor's number
// may name another socket already). Closed, the socket left the set.
// (A closed poller's epoll instance is gone, and its number may name
// another descriptor.)
func (p *Poller) unregister(c *parkedConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	p.del(c)
}

// add registers a socket with token tok (p.mu held).
func (p *Poller) add(raw syscall.RawConn, tok uint64) error {
	var cerr error
	err := raw.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(uint32(tok)), Pad: int32(uint32(tok >> 32))}
		cerr = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err == nil {
		err = cerr
	}
	return err
}

// del takes c's sockets out of the epoll set (p.mu held); one not in it
// (closed, or never added) is passed over.
func (p *Poller) del(c *parkedConn) {
	p.delRaw(c.raw)
	for _, raw := range c.extra {
		p.delRaw(raw)
	}
}

func (p *Poller) delRaw(raw syscall.RawConn) {
	raw.Control(func(fd uintptr) {
		unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
}

// wake hands c back now if it is parked, else makes its next park resume
// at once.
func (p *Poller) wake(c *parkedConn) { p.wakeAt(c, time.Time{}) }

// wakeAt hands c back at t (now if t passed) if it is parked, unless its
// deadline comes first; if it is not parked, its next park resumes at
// once.
func (p *Poller) wakeAt(c *parkedConn, t time.Time) {
	p.mu.Lock()
	if c.token == 0 {
		c.wake = true
		p.mu.Unlock()
		return
	}
	if !t.After(time.Now()) {
		p.remove(c)
		p.mu.Unlock()
		p.run(c.resume)
		return
	}
	if t.Before(c.deadline) {
		c.deadline = t
		heap.Fix(&p.dl, c.index)
	}
	first := c.index == 0
	p.mu.Unlock()
	if first {
		p.signal()
	}
}

// remove takes c out (p.mu held).
func (p *Poller) remove(c *parkedConn) {
	delete(p.conns, c.token)
	for _, t := range c.tokens {
		delete(p.conns, t)
	}
	c.tokens = c.tokens[:0]
	p.n--
	heap.Remove(&p.dl, c.index)
	c.token = 0
}

func (p *Poller) signal() {
	one := [8]byte{1}
	unix.Write(p.evfd, one[:])
}

func (p *Poller) loop() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 256)
	var ready []*parkedConn
	for {
		p.mu.Lock()
		timeout := -1
		if len(p.dl) > 0 {
			// rounded up: woken before the deadline, a connection would
			// wait on its goroutine for the rest
			d := time.Until(p.dl[0].deadline)
			timeout = max(0, int((d+time.Millisecond-1)/time.Millisecond))
		}
		closed := p.closed
		p.mu.Unlock()
		if closed {
			break
		}
		n, err := unix.EpollWait(p.epfd, events, timeout)
		if err != nil && !errors.Is(err, unix.EINTR) {
			// not expected (the arguments are ours): give every
			// connection back rather than strand it
			p.mu.Lock()
			p.closed = true
			p.mu.Unlock()
			break
		}
		p.mu.Lock()
		for _, ev := range events[:max(n, 0)] {
			tok := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if tok == 0 {
				var b [8]byte
				unix.Read(p.evfd, b[:])
				continue
			}
			if c := p.conns[tok]; c != nil {
				p.remove(c)
				ready = append(ready, c)
			}
		}
		now := time.Now()
		for len(p.dl) > 0 && !p.dl[0].deadline.After(now) {
			c := p.dl[0]
			p.remove(c)
			ready = append(ready, c)
		}
		p.mu.Unlock()
		for i, c := range ready {
			p.run(c.resume)
			ready[i] = nil
		}
		ready = ready[:0]
	}
	p.mu.Lock()
	for _, c := range p.conns {
		if c.token != 0 {
			p.remove(c) // (once: remove takes all its tokens out)
			ready = append(ready, c)
		}
	}
	p.mu.Unlock()
	for _, c := range ready {
		p.run(c.resume)
	}
}

// parkHeap orders parked connections by idle deadline.
type parkHeap []*parkedConn

func (h parkHeap) Len() int           { return len(h) }
func (h parkHeap) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }
func (h parkHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *parkHeap) Push(x any) {
	c := x.(*parkedConn)
	c.index = len(*h)
	*h = append(*h, c)
}
func (h *parkHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return c
}

// parker is a connection that parks: Server.serve hands it to the poller
// (parkWith) once the goroutine that served it is done with it; end ends
// it, later, after a resume.
type parker interface {
	parkWith(end func(error))
}

func (s *session) parkWith(end func(error)) {
	s.endConn = end
	s.srv.cfg.Poller.park(&s.pk, s.idleDeadline)
}
