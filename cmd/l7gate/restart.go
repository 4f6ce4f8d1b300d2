//go:build !l7gate_proxyonly

package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// restartOnSIGHUP turns SIGHUP to the agent into a hitless restart of the
// Go proxy it supervises: a new proxy (the l7gate binary as it is on disk
// now, so this is also how an upgraded binary takes over) takes the running
// proxy's listener sockets, and the old one drains and exits.
func restartOnSIGHUP(ctx context.Context, log *slog.Logger) <-chan struct{} {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	out := make(chan struct{}, 1)
	go func() {
		defer signal.Stop(sig)
		for {
			select {
			case <-ctx.Done():
				return
			case <-sig:
				log.Info("SIGHUP: restarting the proxy (hand-over)")
				select {
				case out <- struct{}{}:
				default: // one pending restart is enough
				}
			}
		}
	}()
	return out
}
