package source

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
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
// Changes are seen through inotify: a file closed after writing, moved
// in or out, created or deleted anywhere in the tree, a folder created,
// removed or renamed (it is watched again under its new name). Events
// are debounced (Debounce of quiet, at most MaxDelay after the first) so
// a tool writing many files yields one update. Only the files inotify
// names, or whose size, mtime or inode changed, are read again, and only
// those whose content changed are decoded again (a policy change in a
// folder with 10k pods neither reads nor decodes the pods again, and
// policy.Tracker.ApplyFiles neither merges nor tracks them again). Every
// Interval the folder is listed and stat'ed as a fallback (where inotify
// cannot watch, or with NoInotify), and every 50 polls every file is read
// (filesystems with coarse mtimes).
//
// A file is never applied half written: a file a writer modified and has
// not closed keeps its last complete version in force (a new file stays
// out) until the writer closes it or it has not changed for Settle; a
// change seen only by polling applies once the file looked the same at
// two polls; a file that changes while it is read is read again. Write
// files atomically (a temporary file renamed over the old one) where you
// can: then there is nothing to wait for. Invalid content keeps the last
// valid objects in force (policy.Tracker), the error names file and field.
type Folder struct {
	Dir      string
	Interval time.Duration // polling fallback; default 100ms
	Logger   *slog.Logger
	// NoInotify: poll only.
	NoInotify bool
	// Debounce: quiet time after an inotify event before the folder is
	// read (default 2ms); MaxDelay bounds it from the first event
	// (default 50ms).
	Debounce, MaxDelay time.Duration
	// Settle: a file modified and still open for writing is applied
	// anyway once it has not changed for this long (a writer that never
	// closes it); default 2s.
	Settle time.Duration
}

// fileSig is a cheap signature of a file: when it is unchanged and no
// event names the file, its content is not read again.
type fileSig struct {
	size, mtime int64
	ino, dev    uint64
}

func sigOf(st os.FileInfo) fileSig {
	s := fileSig{size: st.Size(), mtime: st.ModTime().UnixNano()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		s.ino, s.dev = sys.Ino, uint64(sys.Dev)
	}
	return s
}

// decoded is one file's decoded objects, by the hash of its content.
type decoded struct {
	sig  fileSig
	sum  [sha256.Size]byte
	objs *policy.Objects
	errs []error
}

// folderCache holds every file's last complete decoded content.
type folderCache struct {
	files map[string]decoded
	// seen: the signature a changed file had at the last look (a change
	// seen only by polling applies once the file looks the same twice).
	seen map[string]fileSig
	// held: since when a file being written has looked unchanged.
	held map[string]heldFile
	// again: files to read at the next look as if an event named them
	// (they changed while read, or a writer began meanwhile).
	again map[string]bool
	// loaded: the first load is done (it reads every file at once).
	loaded bool
}

type heldFile struct {
	sig   fileSig
	since time.Time
}

// readFile reads name and its signature; it fails with errChanged when
// the file changed while it was read.
func readFile(name string) ([]byte, fileSig, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fileSig{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fileSig{}, err
	}
	var b bytes.Buffer
	b.Grow(int(st.Size()) + 512)
	if _, err := b.ReadFrom(f); err != nil {
		return nil, fileSig{}, err
	}
	data := b.Bytes()
	st2, err := f.Stat()
	if err != nil {
		return nil, fileSig{}, err
	}
	if sigOf(st) != sigOf(st2) || int64(len(data)) != st2.Size() {
		return nil, fileSig{}, errChanged
	}
	return data, sigOf(st2), nil
}

var errChanged = errors.New("changed while read")

// load brings the cache up to date with the folder and returns the merged
// objects, their errors and the digest (FolderDigest's, for the files
// whose content is in force). named are files inotify saw closed, moved or
// created; writing those modified and not closed; full reads every file.
// recheck, when set, is asked after the files were read which files are
// being written now: what was read of those is not used (a writer may
// have begun before the read). changed reports whether anything in force
// changed; retry that a file is waited for (look again soon).
func (c *folderCache) load(dir string, named, writing map[string]bool, full bool, now time.Time, settle time.Duration, recheck func() map[string]bool) (parts []*policy.Objects, errs [][]error, digest string, changed, retry bool, err error) {
	files, err := policy.ListFiles(dir)
	if err != nil {
		return nil, nil, "", false, false, err
	}
	if c.files == nil {
		c.files, c.seen, c.held = map[string]decoded{}, map[string]fileSig{}, map[string]heldFile{}
	}
	if len(c.again) > 0 {
		n := make(map[string]bool, len(named)+len(c.again))
		for f := range named {
			n[f] = true
		}
		for f := range c.again {
			n[f] = true
		}
		named, c.again = n, nil
	}
	again := func(f string) {
		if c.again == nil {
			c.again = map[string]bool{}
		}
		c.again[f] = true
		retry = true
	}
	first := !c.loaded
	c.loaded = true
	listed := make(map[string]bool, len(files))
	read := map[string]decoded{}
	for _, f := range files {
		listed[f] = true
		st, err := os.Stat(f)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // gone since the listing: the next look sees it
			}
			return nil, nil, "", false, false, err
		}
		sig := sigOf(st)
		d, have := c.files[f]
		if have && d.sig == sig && !named[f] && !full {
			continue
		}
		if writing[f] {
			// Open for writing: keep what is in force until it is closed
			// or has not changed for settle.
			h, ok := c.held[f]
			if !ok || h.sig != sig {
				c.held[f] = heldFile{sig: sig, since: now}
				continue
			}
			if now.Sub(h.since) < settle {
				continue
			}
		} else if !named[f] && !first && !(have && d.sig == sig) {
			// Seen changed by polling only: apply once it looks the
			// same at two looks.
			if prev, ok := c.seen[f]; !ok || prev != sig {
				c.seen[f] = sig
				continue
			}
		}
		data, sig, err := readFile(f)
		if errors.Is(err, errChanged) || errors.Is(err, fs.ErrNotExist) {
			again(f)
			continue
		}
		if err != nil {
			return nil, nil, "", false, false, err
		}
		sum := sha256.Sum256(data)
		if have && d.sum == sum {
			d.sig = sig
			read[f] = d
			continue
		}
		o, derrs := policy.DecodeObjects(f, data) // no summaries: kept while in force
		read[f] = decoded{sig: sig, sum: sum, objs: o, errs: derrs}
	}
	var writingNow map[string]bool
	if recheck != nil && len(read) > 0 {
		writingNow = recheck()
	}
	for f, d := range read {
		if writingNow[f] {
			again(f) // read again once the writer is done
			continue
		}
		delete(c.seen, f)
		delete(c.held, f)
		if old, ok := c.files[f]; !ok || old.sum != d.sum {
			changed = true
		}
		c.files[f] = d
	}
	for f := range c.files {
		if !listed[f] {
			delete(c.files, f)
			changed = true
		}
	}
	for f := range c.seen {
		if !listed[f] {
			delete(c.seen, f)
		}
	}
	for f := range c.held {
		if !listed[f] {
			delete(c.held, f)
		}
	}
	if !changed && !first {
		return nil, nil, "", false, retry, nil
	}
	h := sha256.New()
	parts = make([]*policy.Objects, 0, len(files))
	for _, f := range files {
		d, ok := c.files[f]
		if !ok {
			continue
		}
		digestFile(h, f, d.sum)
		parts = append(parts, d.objs)
		errs = append(errs, d.errs)
	}
	return parts, errs, hex.EncodeToString(h.Sum(nil)), true, retry, nil
}

func digestFile(h interface{ Write([]byte) (int, error) }, name string, sum [sha256.Size]byte) {
	h.Write([]byte(name))
	h.Write([]byte{0})
	h.Write(sum[:])
	h.Write([]byte{0})
}

// FolderDigest is the digest a Folder reports for dir as it is now: a
// sha256 over every listed file's path and the sha256 of its content.
func FolderDigest(dir string) (string, error) {
	files, err := policy.ListFiles(dir)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		digestFile(h, f, sha256.Sum256(data))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Run implements Source.
func (s *Folder) Run(ctx context.Context, updates chan<- Update) error {
	interval := s.Interval
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	debounce, maxDelay, settle := s.Debounce, s.MaxDelay, s.Settle
	if debounce <= 0 {
		debounce = 2 * time.Millisecond
	}
	if maxDelay <= 0 {
		maxDelay = 50 * time.Millisecond
	}
	if settle <= 0 {
		settle = 2 * time.Second
	}
	log := s.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var w *watcher
	if !s.NoInotify {
		var err error
		if w, err = newWatcher(s.Dir); err != nil {
			log.Warn("cannot watch the source folder with inotify; polling only", "dir", s.Dir, "interval", interval, "error", err)
		} else {
			defer w.close()
			stop := context.AfterFunc(ctx, w.close)
			defer stop()
		}
	}
	cache := &folderCache{}
	// An object whose update does not decode keeps its last valid version
	// in force; a new invalid policy holds what it selects in default-deny.
	tracker := policy.NewTracker()
	nextPoll := time.Now().Add(interval)
	for polls := 0; ; {
		if ctx.Err() != nil {
			return nil
		}
		var named, writing map[string]bool
		if w != nil {
			w.addDirs(s.Dir, log) // folders created or replaced since, before their files are listed
			w.drain()
			named, writing = w.take()
		}
		var recheck func() map[string]bool
		if w != nil {
			recheck = func() map[string]bool { w.drain(); return w.writing }
		}
		parts, partErrs, d, changed, retry, err := cache.load(s.Dir, named, writing, polls > 0 && polls%50 == 0, time.Now(), settle, recheck)
		switch {
		case err != nil:
			log.Warn("read source folder", "dir", s.Dir, "error", err)
		case changed:
			// Merged in policy.Load's order (each file's errors, then
			// its duplicates); a folder's unchanged pods are neither
			// merged nor tracked again (Tracker.ApplyFiles). The decoded
			// files are never modified (the cache keeps them as decoded),
			// but for ApplyFiles making the pods of files that hold some
			// ranges of one array of them (equal pods, one copy of each).
			objs, errs := tracker.ApplyFiles(parts, partErrs)
			// No EndpointSlice controller here: a Service with a
			// selector and no slice gets the endpoints of its pods.
			objs.DeriveEndpointSlices()
			select {
			case updates <- Update{Objects: objs, Errors: errs, Digest: d}:
			case <-ctx.Done():
				return nil
			}
		}
		// Wait for an event, the next poll, or (retry) a short while.
		wake := nextPoll
		if retry {
			wake = earliest(wake, time.Now().Add(max(debounce, 10*time.Millisecond)))
		}
		if len(cache.held) > 0 {
			wake = earliest(wake, time.Now().Add(settle/2))
		}
		if w == nil {
			t := time.NewTimer(time.Until(wake))
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		} else if w.wait(wake, debounce, maxDelay) != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Warn("inotify stopped; polling only", "dir", s.Dir)
			w.close()
			w = nil
		}
		if !time.Now().Before(nextPoll) {
			polls++
			nextPoll = time.Now().Add(interval)
		}
	}
}

// watcher follows a folder tree through inotify. Only Run's goroutine
// uses it (events are read there, so what a check sees is every event
// the kernel queued before it).
type watcher struct {
	f  *os.File // the inotify descriptor (non-blocking; deadlines work)
	rc syscall.RawConn
	// wds: watched folder by watch descriptor; dirs: the reverse.
	wds  map[int32]string
	dirs map[string]int32
	// named: files closed after writing, moved, created or deleted since
	// the last take; writing: files modified and not closed since.
	named, writing map[string]bool
	// wake: an event that changes what the folder holds arrived.
	wake bool
	// fresh: folders watched since the last take (files written there
	// before the watch began were seen by no event).
	fresh []string
	buf   []byte
}

// inotifyMask: a file modified (held until closed), closed after
// writing, moved in or out, created or deleted; a watched folder
// deleted or moved.
const inotifyMask = unix.IN_MODIFY | unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_CREATE | unix.IN_DELETE |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

func newWatcher(dir string) (*watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify: %w", err)
	}
	f := os.NewFile(uintptr(fd), "inotify")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("inotify: %w", err)
	}
	w := &watcher{f: f, rc: rc, wds: map[int32]string{}, dirs: map[string]int32{},
		named: map[string]bool{}, writing: map[string]bool{}, buf: make([]byte, 64*1024)}
	if err := w.addDirs(dir, nil); err != nil {
		f.Close()
		return nil, err
	}
	w.fresh = nil // the first load reads every file
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
		if _, ok := w.dirs[p]; ok {
			return nil
		}
		var wd int
		err = w.rc.Control(func(fd uintptr) { wd, err = unix.InotifyAddWatch(int(fd), p, inotifyMask) })
		if err != nil {
			if log != nil {
				log.Warn("inotify watch; changes there are seen by polling", "dir", p, "error", err)
				w.dirs[p] = -1 // logged once
				return nil
			}
			return fmt.Errorf("inotify watch %s: %w", p, err)
		}
		if old, ok := w.wds[int32(wd)]; ok && old != p {
			delete(w.dirs, old) // the same folder under a new name
		}
		w.wds[int32(wd)] = p
		w.dirs[p] = int32(wd)
		w.fresh = append(w.fresh, p)
		return nil
	})
}

// drain handles every event queued now, without waiting.
func (w *watcher) drain() {
	for {
		var n int
		var rerr error
		if err := w.rc.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), w.buf)
			return true
		}); err != nil || rerr != nil || n <= 0 {
			return
		}
		w.handle(w.buf[:n])
	}
}

// wait handles events until one changes what the folder holds and then
// no other came for debounce (at most maxDelay after the first), or until
// the deadline.
func (w *watcher) wait(deadline time.Time, debounce, maxDelay time.Duration) error {
	// events handled since the last take (during the last look) count
	w.wake = len(w.named) > 0 || len(w.fresh) > 0
	var first time.Time
	for {
		d := deadline
		if w.wake {
			if first.IsZero() {
				first = time.Now()
			}
			d = earliest(time.Now().Add(debounce), first.Add(maxDelay))
		}
		w.f.SetReadDeadline(d)
		n, err := w.f.Read(w.buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		if err != nil {
			return err
		}
		w.handle(w.buf[:n])
	}
}

// handle records a batch of events.
func (w *watcher) handle(buf []byte) {
	for len(buf) >= unix.SizeofInotifyEvent {
		wd := int32(binary.NativeEndian.Uint32(buf[0:4]))
		mask := binary.NativeEndian.Uint32(buf[4:8])
		nameLen := int(binary.NativeEndian.Uint32(buf[12:16]))
		if unix.SizeofInotifyEvent+nameLen > len(buf) {
			w.overflow()
			return
		}
		name := strings.TrimRight(string(buf[unix.SizeofInotifyEvent:unix.SizeofInotifyEvent+nameLen]), "\x00")
		buf = buf[unix.SizeofInotifyEvent+nameLen:]
		dir, known := w.wds[wd]
		switch {
		case mask&unix.IN_Q_OVERFLOW != 0:
			w.overflow()
		case mask&unix.IN_IGNORED != 0:
			// the watch is gone (folder deleted): watch it again if it
			// comes back
			if known && w.dirs[dir] == wd {
				delete(w.dirs, dir)
			}
			delete(w.wds, wd)
			w.wake = true
		case mask&(unix.IN_DELETE_SELF|unix.IN_MOVE_SELF) != 0:
			// the folder and the ones under it are no longer where they
			// were watched: forget them (addDirs watches what is there now)
			if known {
				for p, d := range w.dirs {
					if p == dir || strings.HasPrefix(p, dir+string(filepath.Separator)) {
						delete(w.dirs, p)
						delete(w.wds, d)
						if d >= 0 {
							w.rc.Control(func(fd uintptr) { unix.InotifyRmWatch(int(fd), uint32(d)) })
						}
					}
				}
			}
			w.wake = true
		case !known || name == "":
		case mask&unix.IN_ISDIR != 0:
			w.wake = true // a folder created, moved or deleted: list again
		default:
			p := filepath.Join(dir, name)
			if !listable(name) {
				continue
			}
			if mask&unix.IN_MODIFY != 0 {
				w.writing[p] = true // not read until closed
				continue
			}
			delete(w.writing, p)
			w.named[p] = true
			w.wake = true
		}
	}
}

// overflow: events were lost; what is being written is unknown, so
// every change is read as one seen by polling.
func (w *watcher) overflow() {
	clear(w.named)
	clear(w.writing)
	w.wake = true
}

// listable: a name policy.ListFiles lists.
func listable(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// take returns the files named since the last take and the files being
// written now.
func (w *watcher) take() (named, writing map[string]bool) {
	for _, dir := range w.fresh {
		files, _ := policy.ListFiles(dir)
		for _, f := range files {
			w.named[f] = true
		}
	}
	w.fresh = w.fresh[:0]
	named, w.named = w.named, map[string]bool{}
	return named, w.writing
}

func (w *watcher) close() { w.f.Close() }

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
