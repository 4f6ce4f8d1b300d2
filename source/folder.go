package source

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/l7gate/l7gate/policy"
)

// Folder watches a folder of Kubernetes YAML/JSON (recursively) by
// polling it. Services there need no EndpointSlices: one with a selector
// and no slice naming it gets its pods as endpoints
// (policy.Objects.DeriveEndpointSlices), ready as given; write
// EndpointSlices to say otherwise (readiness, Services without selector).
// It polls (every 100 ms by default; contents are re-read only when file
// names, sizes or modification times change).
type Folder struct {
	Dir      string
	Interval time.Duration // default 100ms
	Logger   *slog.Logger
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

// folderDigest hashes the names and contents of the files Load would read.
func folderDigest(dir string) (string, error) {
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
		h.Write([]byte(f))
		h.Write([]byte{0})
		h.Write(data)
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)), nil
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
	last, lastStat := "", ""
	// An object whose update does not decode keeps its last valid version
	// in force; a new invalid policy holds what it selects in default-deny.
	tracker := policy.NewTracker()
	t := time.NewTicker(interval)
	defer t.Stop()
	for polls := 0; ; polls++ {
		// Only read and hash the files when their names, sizes or mtimes
		// changed (and every 50 polls, for filesystems with coarse mtimes).
		sig, serr := folderStat(s.Dir)
		if serr == nil && last != "" && sig == lastStat && polls%50 != 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				continue
			}
		}
		lastStat = sig
		d, err := folderDigest(s.Dir)
		switch {
		case err != nil:
			log.Warn("read source folder", "dir", s.Dir, "error", err)
		case d != last:
			objs, errs := policy.Load(s.Dir)
			// Files may change while we read them: only publish a view
			// whose digest is stable across the read.
			if d2, err := folderDigest(s.Dir); err == nil && d2 == d {
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
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
