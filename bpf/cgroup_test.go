package bpf

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestCgroup2MountPoint(t *testing.T) {
	for _, c := range []struct {
		line, want string
		ok         bool
	}{
		{"35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate", "/sys/fs/cgroup/unified", true},
		{"30 1 0:26 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw", "/sys/fs/cgroup", true},
		{`30 1 0:26 / /mnt/with\040space rw - cgroup2 none rw`, "/mnt/with space", true},
		{"36 25 0:31 / /sys/fs/cgroup/cpu rw,relatime shared:11 - cgroup cgroup rw,cpu", "", false},
		{"garbage", "", false},
	} {
		got, ok := cgroup2MountPoint(c.line)
		if got != c.want || ok != c.ok {
			t.Errorf("%q: got %q %v, want %q %v", c.line, got, ok, c.want, c.ok)
		}
	}
}

// testCgroup creates a cgroup v2 directory for this test (removed at
// cleanup, after the processes started in it have exited) and returns its
// path and id.
func testCgroup(t *testing.T, name string) (string, uint64) {
	t.Helper()
	mnt, err := Cgroup2Mount()
	if err != nil {
		t.Skipf("needs a cgroup2 mount: %v", err)
	}
	b := make([]byte, 3)
	rand.Read(b)
	dir := filepath.Join(mnt, "l7gt"+hex.EncodeToString(b)+"-"+name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		// Exited processes leave their cgroup asynchronously.
		for i := 0; ; i++ {
			err := unix.Rmdir(dir)
			if err == nil || i == 50 {
				if err != nil {
					t.Errorf("remove cgroup %s: %v", dir, err)
				}
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	id, err := CgroupID(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir, id
}

func TestPrivilegedCgroupID(t *testing.T) {
	requireRoot(t)
	dir, id := testCgroup(t, "id")
	mnt, err := Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	if root, err := CgroupID(mnt); err != nil || root != rootCgroupID {
		t.Errorf("root cgroup id %d %v, want %d", root, err, rootCgroupID)
	}
	if _, err := CgroupID(t.TempDir()); err == nil {
		t.Error("a directory outside cgroup2 has an id")
	}
	// A second mount point of the hierarchy has the same ids.
	second := t.TempDir()
	if err := MountCgroup2(second); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(second, unix.MNT_DETACH)
	if got, err := CgroupID(filepath.Join(second, filepath.Base(dir))); err != nil || got != id {
		t.Errorf("id through a second mount: %d %v, want %d", got, err, id)
	}
	if got, err := EnsureCgroup2(filepath.Join(t.TempDir(), "unused")); err != nil || got != mnt {
		t.Errorf("EnsureCgroup2 with cgroup2 mounted: %q %v, want %q", got, err, mnt)
	}
	// CreateProxyCgroup makes (or reuses) a child of the mount.
	name := filepath.Base(dir) + "-p"
	p, pid1, err := CreateProxyCgroup(mnt, name)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Rmdir(p)
	if _, pid2, err := CreateProxyCgroup(mnt, name); err != nil || pid2 != pid1 || pid1 <= rootCgroupID {
		t.Errorf("proxy cgroup ids %d then %d (%v)", pid1, pid2, err)
	}
	for _, bad := range []string{"", "..", "a/b"} {
		if _, _, err := CreateProxyCgroup(mnt, bad); !errors.Is(err, ErrInvalidEntry) {
			t.Errorf("name %q: %v", bad, err)
		}
	}
	// A process started in the cgroup reports it.
	out, pid := runInCgroup(t, dir, dialerSpec{Sleep: true})
	defer out.Close()
	got, err := CgroupIDOfPID(mnt, pid)
	if err != nil || got != id {
		t.Errorf("cgroup of pid %d: %d %v, want %d", pid, got, err, id)
	}
}

// dialerSpec is what a dialer child does: dial Addr from the network
// namespace NetNS with SO_MARK Mark and print the banner (or sleep until
// killed, to be looked at).
type dialerSpec struct {
	NetNS string
	Addr  string
	Mark  uint32
	Sleep bool
}

const dialerEnv = "L7GATE_BPF_TEST_DIALER"

// dialerChild runs in the child process (see TestMain).
func dialerChild(raw string) error {
	var s dialerSpec
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		return err
	}
	if s.Sleep {
		fmt.Println("ready")
		time.Sleep(time.Minute)
		return nil
	}
	got, err := dialRead(s.NetNS, s.Addr, dialOpts{mark: s.Mark, timeout: time.Second})
	if err != nil {
		fmt.Println("error", err)
		return nil
	}
	fmt.Println("ok", got)
	return nil
}

// runInCgroup starts this test binary as a dialer child inside the cgroup
// at dir (CLONE_INTO_CGROUP: its sockets belong to that cgroup from the
// start) and returns its output once it printed a line.
func runInCgroup(t *testing.T, dir string, spec dialerSpec) (*os.File, int) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	raw, _ := json.Marshal(spec)
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), dialerEnv+"="+string(raw))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return r, cmd.Process.Pid
}

// dialFromCgroup dials addr from the node namespace ns in a child process
// whose sockets belong to the cgroup at dir; it returns the banner.
func dialFromCgroup(t *testing.T, dir, ns, addr string, mark uint32) (string, error) {
	t.Helper()
	out, _ := runInCgroup(t, dir, dialerSpec{NetNS: ns, Addr: addr, Mark: mark})
	defer out.Close()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("dialer: %w", err)
	}
	line = strings.TrimSpace(line)
	if got, ok := strings.CutPrefix(line, "ok "); ok {
		return got, nil
	}
	return "", fmt.Errorf("dialer: %s", line)
}

func TestPrivilegedSetTrustedProxyCgroups(t *testing.T) {
	d := openTest(t, Config{})
	for _, bad := range [][]uint64{{0}, {rootCgroupID}, {5, rootCgroupID}} {
		if err := d.SetTrustedProxyCgroups(bad); !errors.Is(err, ErrInvalidEntry) {
			t.Errorf("%v: got %v, want ErrInvalidEntry", bad, err)
		}
	}
	for _, set := range [][]uint64{{7, 5}, {5, 9}, nil} {
		if err := d.SetTrustedProxyCgroups(set); err != nil {
			t.Fatal(err)
		}
		got, err := d.TrustedProxyCgroups()
		if err != nil {
			t.Fatal(err)
		}
		want := slices.Sorted(slices.Values(set))
		if !slices.Equal(got, want) && len(got)+len(want) > 0 {
			t.Errorf("after %v: %v", set, got)
		}
	}
}
