package testutil

import (
	"bytes"
	"os"
	"sync"
	"syscall"
	"testing"
)

// LogBuffer is a bytes.Buffer for concurrent writers (a logger's sink
// that a test reads while the code under test writes).
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *LogBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *LogBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// ScarceFileLimit lowers the test process's RLIMIT_NOFILE to the
// descriptors open now plus spare, so that servers in the process run
// out of descriptors (EMFILE) soon. The returned restore puts the limit
// back; it also runs at the test's end.
func ScarceFileLimit(t testing.TB, spare int) (restore func()) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	low := lim
	low.Cur = uint64(len(fds) + spare)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	restore = func() {
		once.Do(func() {
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(restore)
	return restore
}
