package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// watchSocket signals when a socket is created at, or renamed onto, path.
// For the Go proxy's admin socket: a proxy started, or a successor took
// the socket over in a hand-over (proxy.listenUnixReplacing binds a
// temporary name and renames it over path). The agent then finds the
// process serving it and registers its listeners at once. Without it the
// agent only looked every RetryInterval, and a successor that served for
// less than that (handed over again, or crashed) was never registered:
// its cgroup not trusted, its sockets not held under its pid. For the
// status socket: another agent took the run dir over (standingBy). The
// poll stays as a fallback (Envoy, a missed event). The channel closes
// when ctx ends.
func watchSocket(ctx context.Context, path string) (<-chan struct{}, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	dir, name := filepath.Dir(path), filepath.Base(path)
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watch %s: %w", dir, err)
	}
	// Non-blocking: reads go through the runtime poller, and Close
	// unblocks them.
	f := os.NewFile(uintptr(fd), "inotify")
	stop := context.AfterFunc(ctx, func() { f.Close() })
	ch := make(chan struct{}, 1)
	go func() {
		defer close(ch)
		defer stop()
		defer f.Close()
		buf := make([]byte, 64<<10)
		for {
			n, err := f.Read(buf)
			if err != nil {
				return // ctx ended (or a read error: the poll remains)
			}
			if adminEvent(buf[:n], name) {
				select {
				case ch <- struct{}{}:
				default: // one pending signal is enough
				}
			}
		}
	}()
	return ch, nil
}

// adminEvent reports whether the inotify events in b name name.
func adminEvent(b []byte, name string) bool {
	found := false
	for len(b) >= unix.SizeofInotifyEvent {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&b[0]))
		end := unix.SizeofInotifyEvent + int(ev.Len)
		if end > len(b) {
			break
		}
		raw := b[unix.SizeofInotifyEvent:end]
		for i, c := range raw {
			if c == 0 {
				raw = raw[:i]
				break
			}
		}
		if string(raw) == name || ev.Mask&unix.IN_Q_OVERFLOW != 0 {
			found = true
		}
		b = b[end:]
	}
	return found
}
