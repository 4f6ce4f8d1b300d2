package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrACKTimeout: a consumer did not ACK an update within Config.ACKTimeout.
var ErrACKTimeout = errors.New("ACK timeout")

// Completion reports whether one Update is in force: it resolves when
// every consumer that was subscribed to a changed type has ACKed a version
// at least as new as the update, or fails with a *NACKError, a
// *PendingError (timeout, context end) or a rendering error.
type Completion struct {
	gen  uint64
	done chan struct{}
	err  error
	// pending consumer/type pairs, guarded by the server's mutex
	pending map[waitKey]struct{}
	stops   []func() bool
}

type waitKey struct{ consumer, typeURL string }

// Done is closed when the completion has resolved.
func (c *Completion) Done() <-chan struct{} { return c.done }

// Err is the outcome once Done is closed (nil: every consumer ACKed).
func (c *Completion) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

// Wait blocks until the completion resolves or ctx ends.
func (c *Completion) Wait(ctx context.Context) error {
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return fmt.Errorf("wait for xDS update %d: %w", c.gen, ctx.Err())
	}
}

// Generation is the update's sequence number on this server.
func (c *Completion) Generation() uint64 { return c.gen }

// NACKError is a consumer's rejection of a resource set. The consumer
// keeps, and the server keeps serving it, the previous version.
type NACKError struct {
	Consumer  string   // node id
	TypeURL   string   // resource type
	Version   string   // rejected version
	Resources []string // names in the rejected response (delta: the changed ones)
	Detail    string   // the NACK's error_detail message
	Code      int32    // the NACK's error_detail code
}

func (e *NACKError) Error() string {
	return fmt.Sprintf("xds: consumer %q rejected %s version %s (%s): %s",
		e.Consumer, e.TypeURL, e.Version, resourceList(e.Resources), e.Detail)
}

// Pending is one consumer/type that had not ACKed.
type Pending struct {
	Consumer  string
	TypeURL   string
	Version   string   // the version waited for
	Resources []string // its resource names
	Connected bool     // whether the consumer had a stream open
}

// PendingError: the completion ended (timeout or context) before every
// consumer ACKed. Unwraps to ErrACKTimeout or the context's error.
type PendingError struct {
	Pending []Pending
	After   time.Duration
	Cause   error
}

func (e *PendingError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "xds: update not ACKed after %s (%v):", e.After.Round(time.Millisecond), e.Cause)
	for i, p := range e.Pending {
		if i > 0 {
			b.WriteString(";")
		}
		state := "connected"
		if !p.Connected {
			state = "disconnected"
		}
		fmt.Fprintf(&b, " consumer %q (%s) has not ACKed %s version %s (%s)", p.Consumer, state, p.TypeURL, p.Version, resourceList(p.Resources))
	}
	return b.String()
}

func (e *PendingError) Unwrap() error { return e.Cause }

// resourceList names up to a few resources.
func resourceList(names []string) string {
	const max = 5
	switch {
	case len(names) == 0:
		return "no resources"
	case len(names) <= max:
		return "resources " + strings.Join(names, ", ")
	}
	return fmt.Sprintf("resources %s and %d more", strings.Join(names[:max], ", "), len(names)-max)
}
