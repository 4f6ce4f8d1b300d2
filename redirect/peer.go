package redirect

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// PeerPID returns the pid of the process serving the Unix socket at path
// (SO_PEERCRED of a connection to it). The agent finds the Go proxy this
// way, through its admin socket, to take its listeners.
func PeerPID(path string) (int, error) {
	c, err := net.Dial("unix", path)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	rc, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, fmt.Errorf("SO_PEERCRED of %s: %w", path, cerr)
	}
	return int(cred.Pid), nil
}
