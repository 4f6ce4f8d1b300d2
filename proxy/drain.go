package proxy

import (
	"context"
	"time"
)

// DrainStats is what a drain did.
type DrainStats struct {
	// Took is how long the open connections took to end.
	Took time.Duration
	// Cut is the number of client connections still open at the drain
	// timeout, closed then.
	Cut int64
}

// Drain stops accepting (closing the proxy's listener sockets: a process
// that took them over, or the agent holding duplicates, keeps them
// listening), then lets every connection end on its own: HTTP/1.1
// connections close between requests (a response in flight carries
// "Connection: close"), HTTP/2 connections get GOAWAY and close after
// their streams, Kafka connections close between request/response pairs.
// What is still open when ctx ends is closed. Config updates keep applying
// to the connections left, but open no listener. Drain is idempotent:
// later calls wait for the first one.
func (p *Proxy) Drain(ctx context.Context) DrainStats {
	p.drainOnce.Do(func() {
		start := time.Now()
		p.mu.Lock()
		p.draining = true
		for port, st := range p.listeners {
			st.close()
			delete(p.listeners, port)
		}
		p.inherited.Close() // those no listener took (no Apply opens one now)
		p.mu.Unlock()
		p.log.Info("draining: stopped accepting", "connections", p.conns.Load())
		p.drainCancel()
		done := make(chan struct{})
		go func() { p.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			p.drainStats.Cut = p.conns.Load()
			p.cancel()
			<-done
		}
		p.drainStats.Took = time.Since(start)
		p.log.Info("drained", "took", p.drainStats.Took.Round(time.Millisecond), "cut", p.drainStats.Cut)
		close(p.drained)
	})
	<-p.drained
	return p.drainStats
}

// Drained is closed when a drain has ended.
func (p *Proxy) Drained() <-chan struct{} { return p.drained }

// Draining reports whether a drain began.
func (p *Proxy) Draining() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.draining
}
