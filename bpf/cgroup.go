package bpf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Proxy cgroups
//
// A from-proxy mark (0xA00/0xB00, marks.go) is believed only on packets
// whose socket belongs to a trusted cgroup: tc_to_pod compares
// bpf_skb_cgroup_id (the cgroup v2 id of the sending socket, fixed when the
// socket is created) with the ids in the proxy_cgroups map. Any other
// packet with such a mark is treated as unmarked, i.e. by the identity of
// its source address (the node's own traffic is host), so a host-network
// process with CAP_NET_RAW or CAP_NET_ADMIN cannot choose the identity
// the datapath believes. With no cgroup registered, no mark is believed.
//
// Each proxy must therefore run in a cgroup of its own (a leaf that holds
// nothing but the proxy) before it opens sockets: start it there
// (SysProcAttr.UseCgroupFD/CgroupFD) or, for a container, use its
// container's cgroup (CgroupIDOfPID). The root cgroup (which holds every
// process on a host that does not use cgroup v2) is refused. The v1
// net_cls and net_prio controllers, when in use, disable the kernel's
// socket cgroup v2 tracking: every socket then reports the root, so no
// mark is believed (fail closed).

// rootCgroupID is the id of every cgroup v2 hierarchy's root.
const rootCgroupID = 1

// maxProxyCgroups is the capacity of the proxy_cgroups map (c/datapath.c).
const maxProxyCgroups = 64

// Cgroup2Mount returns where the cgroup v2 hierarchy is mounted, from
// /proc/self/mountinfo: /sys/fs/cgroup on unified hosts,
// /sys/fs/cgroup/unified on hybrid ones.
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if mp, ok := cgroup2MountPoint(sc.Text()); ok {
			return mp, nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	return "", errors.New("no cgroup2 filesystem is mounted")
}

// EnsureCgroup2 returns where cgroup v2 is mounted (Cgroup2Mount) or, if
// nowhere in this mount namespace (`ip netns exec` replaces /sys, taking
// the cgroup mounts with it), mounts it at fallbackDir and returns that.
// Cgroup ids are the same at every mount point of the hierarchy.
func EnsureCgroup2(fallbackDir string) (string, error) {
	if mnt, err := Cgroup2Mount(); err == nil {
		return mnt, nil
	}
	if err := MountCgroup2(fallbackDir); err != nil {
		return "", err
	}
	return fallbackDir, nil
}

// MountCgroup2 mounts the cgroup v2 hierarchy at dir (created if needed).
func MountCgroup2(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := unix.Mount("cgroup2", dir, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount cgroup2 at %s: %w", dir, err)
	}
	return nil
}

// cgroup2MountPoint parses one mountinfo line:
// "id parent maj:min root mountpoint opts [optional...] - fstype source superopts".
func cgroup2MountPoint(line string) (string, bool) {
	pre, post, ok := strings.Cut(line, " - ")
	if !ok {
		return "", false
	}
	fields := strings.Fields(pre)
	post2 := strings.Fields(post)
	if len(fields) < 5 || len(post2) < 1 || post2[0] != "cgroup2" {
		return "", false
	}
	return unescapeMountinfo(fields[4]), true
}

// unescapeMountinfo undoes the octal escapes (\040 for a space, …).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// CgroupID returns the id of the cgroup v2 directory at path: what
// bpf_skb_cgroup_id reports for sockets created by its processes.
func CgroupID(path string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("%s is not on a cgroup2 filesystem", path)
	}
	// The kernfs file handle of a cgroup directory is its 64-bit id.
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, path, 0)
	if err == nil && len(h.Bytes()) == 8 {
		return binary.NativeEndian.Uint64(h.Bytes()), nil
	}
	var sb unix.Stat_t
	if err := unix.Stat(path, &sb); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return sb.Ino, nil
}

// CgroupPathOfPID returns the directory of the cgroup v2 a process is in,
// under cgroup2Mount (as from Cgroup2Mount), from /proc/<pid>/cgroup.
func CgroupPathOfPID(cgroup2Mount string, pid int) (string, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return "", fmt.Errorf("read cgroup of pid %d: %w", pid, err)
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if rel, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(cgroup2Mount, filepath.Clean("/"+rel)), nil
		}
	}
	return "", fmt.Errorf("pid %d has no cgroup v2 entry", pid)
}

// CgroupIDOfPID returns the id of the cgroup v2 a process is in.
func CgroupIDOfPID(cgroup2Mount string, pid int) (uint64, error) {
	p, err := CgroupPathOfPID(cgroup2Mount, pid)
	if err != nil {
		return 0, err
	}
	return CgroupID(p)
}

// CreateProxyCgroup creates (or reuses) the cgroup v2 directory name
// directly under cgroup2Mount for a proxy and returns its path and id.
// Start the proxy inside it (os/exec: SysProcAttr.UseCgroupFD with an
// open descriptor of the path) so that its sockets belong to it from the
// start, then pass the id to SetTrustedProxyCgroups. A cgroup2 mounted
// read-only (a container without cgroup delegation) cannot be used: trust
// the proxy container's own cgroup instead (CgroupIDOfPID).
func CreateProxyCgroup(cgroup2Mount, name string) (string, uint64, error) {
	if name == "" || strings.ContainsAny(name, "/") || name == "." || name == ".." {
		return "", 0, fmt.Errorf("%w: cgroup name %q", ErrInvalidEntry, name)
	}
	dir := filepath.Join(cgroup2Mount, name)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", 0, fmt.Errorf("create cgroup %s: %w", dir, err)
	}
	id, err := CgroupID(dir)
	if err != nil {
		return "", 0, err
	}
	return dir, id, nil
}

// SetTrustedProxyCgroups makes ids (from CgroupID or CgroupIDOfPID) the
// exact set of cgroups whose sockets may carry from-proxy marks, replacing
// the previous set (an empty set trusts no mark). The set is pinned with
// the maps, so it survives agent restarts; call it again after a proxy
// moves to another cgroup. Ids 0 and the root cgroup are refused
// (ErrInvalidEntry), as are more than 64 ids. New ids are added before
// stale ones are removed.
func (d *Datapath) SetTrustedProxyCgroups(ids []uint64) error {
	want := make(map[uint64]uint32, len(ids))
	for _, id := range ids {
		if id <= rootCgroupID {
			return fmt.Errorf("%w: proxy cgroup id %d (the root cgroup holds every process)", ErrInvalidEntry, id)
		}
		want[id] = 1
	}
	if len(want) > maxProxyCgroups {
		return fmt.Errorf("%d proxy cgroups, at most %d: %w", len(want), maxProxyCgroups, ErrMapFull)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	cur, err := dumpMap[uint64, uint32](d.objs.ProxyCgroups)
	if err != nil {
		return err
	}
	if _, err := syncMap(d.objs.ProxyCgroups, want, cur, nil); err != nil {
		return fmt.Errorf("proxy cgroups: %w", err)
	}
	d.log.Info("trusted proxy cgroups", "ids", ids)
	return nil
}

// TrustedProxyCgroups lists the cgroup ids whose sockets may carry
// from-proxy marks, sorted.
func (m Maps) TrustedProxyCgroups() ([]uint64, error) {
	raw, err := dumpMap[uint64, uint32](m.proxyCgroups)
	if err != nil {
		return nil, err
	}
	out := make([]uint64, 0, len(raw))
	for id := range raw {
		out = append(out, id)
	}
	slices.Sort(out)
	return out, nil
}
