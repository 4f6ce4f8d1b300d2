package source

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l7gate/l7gate/policy"
)

// Folder watches a folder of Kubernetes YAML/JSON (recursively). Services
// there need no EndpointSlices: one with a selector and no slice naming
// it gets its pods as endpoints (policy.Objects.DeriveEndpointSlices),
// ready as given; write EndpointSlices to say otherwise (readiness,
// Services without selector).
//
// Changes are seen through inotify (a file closed after writing, moved,
// created or deleted anywhere in the tree), with polling as the fallback
// (every 100 ms by default; contents are re-read only when file names,
// sizes or modification times change, or every 50 polls). Only files
// whose content changed are decoded again: the rest come from a per-file
// cache, so a policy change in a folder with 10k pods does not decode the
// pods again.
type Folder struct {
	Dir      string
	Interval time.Duration // default 100ms
	Logger   *slog.Logger
	// NoInotify: poll only.
	NoInotify bool
}

// folderStat is a cheap signature of the files (names, sizes, mtimes):
// when it is unchanged the content is not read again.
func folderStat(dir string) (string, error) {
	files, err := policy.ListFiles(dir)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s\x00%d\x00%d\n", f, st.Size(), st.ModTime().UnixNano())
	}
	return b.String(), nil
}

// decoded is one file's decoded objects, by the hash of its content.
type decoded struct {
	sum  [sha256.Size]byte
	objs *policy.Objects
	errs []error
}

// folderCache loads a folder as policy.Load does, decoding only the
// files whose content changed since the last load.
type folderCache struct {
	files map[string]decoded
}

// load returns what policy.Load(dir) returns and the digest of the files'
// names and contents (sha256 over name, NUL, content, NUL per file).
func (c *folderCache) load(dir string) (*policy.Objects, []error, string, error) {
	files, err := policy.ListFiles(dir)
	if err != nil {
		return nil, nil, "", err
	}
	if c.files == nil {
		c.files = map[string]decoded{}
	}
	h := sha256.New()
	out := &policy.Objects{}
	var errs []error
	seen := make(map[string]bool, len(files))
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, nil, "", err
		}
		h.Write([]byte(f))
		h.Write([]byte{0})
		h.Write(data)
		h.Write([]byte{0})
		seen[f] = true
		sum := sha256.Sum256(data)
		d, ok := c.files[f]
		if !ok || d.sum != sum {
			objs, derrs := policy.Decode(f, data)
			d = decoded{sum: sum, objs: objs, errs: derrs}
			c.files[f] = d
		}
		errs = append(errs, d.errs...)
		errs = append(errs, out.Merge(d.objs)...)
	}
	for f := range c.files {
		if !seen[f] {
			delete(c.files, f)
		}
	}
	return out, errs, hex.EncodeToString(h.Sum(nil)), nil
}

// Run implements Source.
func (s *Folder) Run(ctx context.Context, updates chan<- Update) error {
	interval := s.Interval
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var changed <-chan struct{}
	var w *watcher
	if !s.NoInotify {
		var err error
		if w, err = newWatcher(ctx, s.Dir); err != nil {
			log.Warn("cannot watch the source folder with inotify; polling only", "dir", s.Dir, "interval", interval, "error", err)
		} else {
			defer w.close()
			changed = w.changed
		}
	}
	last, lastStat := "", ""
	cache := &folderCache{}
	// An object whose update does not decode keeps its last valid version
	// in force; a new invalid policy holds what it selects in default-deny.
	tracker := policy.NewTracker()
	t := time.NewTicker(interval)
	defer t.Stop()
	for polls := 0; ; polls++ {
		// Only read the files when their names, sizes or mtimes changed
		// (and every 50 polls, for filesystems with coarse mtimes).
		if w != nil {
			w.addDirs(s.Dir, log) // folders created since, before their files are listed
		}
		sig, serr := folderStat(s.Dir)
		if serr != nil || last == "" || sig != lastStat || polls%50 == 0 {
			objs, errs, d, err := cache.load(s.Dir)
			// Files may change while we read them: only publish a view
			// whose files are unchanged across the read.
			sig2, _ := folderStat(s.Dir)
			switch {
			case err != nil:
				log.Warn("read source folder", "dir", s.Dir, "error", err)
			case sig2 != sig:
				// read again at once
				polls = -1
				continue
			case d != last:
				objs, errs = tracker.Apply(objs, errs)
				// No EndpointSlice controller here: a Service with a
				// selector and no slice gets the endpoints of its pods.
				objs.DeriveEndpointSlices()
				select {
				case updates <- Update{Objects: objs, Errors: errs, Digest: d}:
					last = d
				case <-ctx.Done():
					return nil
				}
			}
			lastStat = sig
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-changed:
		}
	}
}

// watcher reports changes in a folder tree through inotify.
type watcher struct {
	fd      int // the inotify descriptor (f's; f.Fd would make it blocking)
	f       *os.File
	changed chan struct{}
	dirs    map[string]bool
}

// inotifyMask: a file written and closed, moved in or out, created or
// deleted; not every write (a half-written file is read once closed).
const inotifyMask = unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_CREATE | unix.IN_DELETE |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF

// relevant reports whether a batch of inotify events changes what the
// folder holds: a new file is read once it is closed after writing (its
// IN_CREATE alone would show it empty), a new folder at once (to watch it).
func relevant(buf []byte) bool {
	for len(buf) >= unix.SizeofInotifyEvent {
		mask := binary.NativeEndian.Uint32(buf[4:8])
		nameLen := int(binary.NativeEndian.Uint32(buf[12:16]))
		if mask&unix.IN_CREATE == 0 || mask&unix.IN_ISDIR != 0 || mask&unix.IN_Q_OVERFLOW != 0 {
			return true
		}
		if unix.SizeofInotifyEvent+nameLen > len(buf) {
			return true
		}
		buf = buf[unix.SizeofInotifyEvent+nameLen:]
	}
	return false
}

func newWatcher(ctx context.Context, dir string) (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	w := &watcher{fd: fd, f: os.NewFile(uintptr(fd), "inotify"), changed: make(chan struct{}, 1), dirs: map[string]bool{}}
	if err := w.addDirs(dir, nil); err != nil {
		w.f.Close()
		return nil, err
	}
	go w.read(ctx)
	return w, nil
}

// addDirs watches dir and the folders under it not watched yet.
func (w *watcher) addDirs(dir string, log *slog.Logger) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if p != dir && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir // policy.ListFiles skips hidden folders
		}
		if w.dirs[p] {
			return nil
		}
		if _, err := unix.InotifyAddWatch(w.fd, p, inotifyMask); err != nil {
			if log != nil {
				log.Warn("inotify watch; changes there are seen by polling", "dir", p, "error", err)
				w.dirs[p] = true // logged once
				return nil
			}
			return fmt.Errorf("inotify watch %s: %w", p, err)
		}
		w.dirs[p] = true
		return nil
	})
}

// read signals w.changed (coalesced) for every batch of events until the
// file is closed.
func (w *watcher) read(ctx context.Context) {
	buf := make([]byte, 64*1024)
	for {
		n, err := w.f.Read(buf)
		if err != nil {
			return
		}
		if !relevant(buf[:n]) {
			continue
		}
		select {
		case w.changed <- struct{}{}:
		case <-ctx.Done():
			return
		default:
		}
	}
}

func (w *watcher) close() { w.f.Close() }
