package agent

import (
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"sync"
)

// heldListeners are duplicates of the Go proxy's listener sockets the agent
// keeps (taken with pidfd_getfd when registering them). If the proxy dies
// without a hand-over, its sockets stay open through these, and so in the
// datapath's socket map: connections redirected meanwhile complete their
// handshake into the listen backlog instead of being refused, and the
// restarted proxy, which the supervisor hands the duplicates to, accepts
// them. Nothing passes unproxied: a queued connection waits for a proxy.
type heldListeners struct {
	mu  sync.Mutex
	lns map[uint16]*net.TCPListener
}

// hold keeps ln for port, closing a duplicate held before.
func (h *heldListeners) hold(port uint16, ln *net.TCPListener) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lns == nil {
		h.lns = map[uint16]*net.TCPListener{}
	}
	if old := h.lns[port]; old != nil {
		old.Close()
	}
	h.lns[port] = ln
}

// keepOnly closes the duplicates of ports not in ports (listeners the
// proxy no longer serves).
func (h *heldListeners) keepOnly(ports map[uint16]bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for port, ln := range h.lns {
		if !ports[port] {
			ln.Close()
			delete(h.lns, port)
		}
	}
}

// files returns new duplicates of the held sockets (the caller closes
// them), by port, for a proxy process to inherit.
func (h *heldListeners) files() (map[uint16]*os.File, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := map[uint16]*os.File{}
	for _, port := range slices.Sorted(maps.Keys(h.lns)) {
		f, err := h.lns[port].File()
		if err != nil {
			for _, f := range out {
				f.Close()
			}
			return nil, fmt.Errorf("duplicate held listener %d: %w", port, err)
		}
		out[port] = f
	}
	return out, nil
}
