package main

import (
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestListenServiceMap: the page listens on loopback only, or on an
// inherited listening socket (what l7gate demo passes).
func TestListenServiceMap(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "198.18.0.1:0", "[::]:0", "example.com:80", "fd:x", "fd:1", "127.0.0.1"} {
		if ln, err := listenServiceMap(addr); err == nil {
			ln.Close()
			t.Errorf("listenServiceMap(%q) listened on %s; want refused", addr, ln.Addr())
		}
	}
	ln, err := listenServiceMap("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()

	// fd:N: the socket of an inherited file
	orig, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	f, err := orig.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// listenServiceMap takes the descriptor (closes it): give it a copy
	fd, err := syscall.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	ln, err = listenServiceMap("fd:" + strconv.Itoa(fd))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if ln.Addr().String() != orig.Addr().String() {
		t.Errorf("fd listener on %s, want %s", ln.Addr(), orig.Addr())
	}
	go func() {
		if c, err := ln.Accept(); err == nil {
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", orig.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, 2)
	if _, err := c.Read(b); err != nil || string(b) != "hi" {
		t.Errorf("read %q, %v", b, err)
	}
	// a file that is not a socket
	nf, _ := os.Open(os.DevNull)
	defer nf.Close()
	nfd, err := syscall.Dup(int(nf.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := listenServiceMap("fd:" + strconv.Itoa(nfd)); err == nil || !strings.Contains(err.Error(), "fd:") {
		t.Errorf("fd of /dev/null: %v", err)
	}
}
