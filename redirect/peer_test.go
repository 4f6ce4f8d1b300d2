package redirect

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestPeerPID(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	pid, err := PeerPID(path)
	if err != nil || pid != os.Getpid() {
		t.Errorf("PeerPID = %d, %v; want %d", pid, err, os.Getpid())
	}
	if _, err := PeerPID(filepath.Join(t.TempDir(), "none.sock")); err == nil {
		t.Error("PeerPID of a missing socket succeeded")
	}
}
