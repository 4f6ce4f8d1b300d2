//go:build l7gate_component

// Command mkimage assembles a single-layer OCI image from files on this
// machine with go-containerregistry and writes it as an image tarball that
// `ctr images import` (and `docker load`) read. No registry, no daemon.
//
//	mkimage -o out.tar -tag ghcr.io/l7gate/l7gate:0.1.0 \
//	  -bin /usr/bin/curl            # the binary and every shared library ldd lists
//	  -add /src/file:/dst/file      # one file (mode kept)
//	  -link /bin/sh:busybox         # a symlink in the image
//	  -dir /tmp:1777                # an empty directory
//	  -entrypoint l7gate -env PATH=/usr/local/bin:/usr/bin:/bin
//
// Entries are written in sorted order with zero times, so the same inputs
// give the same layer digest (identical layers are stored once by
// containerd).
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

type entry struct {
	src    string // host file (regular file entries)
	mode   int64
	link   string // symlink target
	isDir  bool
	dirMod int64
}

func main() {
	var out, tags string
	var bins, adds, links, dirs, envs, entrypoint, cmd list
	var workdir string
	flag.StringVar(&out, "o", "", "output tarball")
	flag.StringVar(&tags, "tag", "", "image references, comma separated")
	flag.Var(&bins, "bin", "host binary to add with its shared libraries (SRC[:DST])")
	flag.Var(&adds, "add", "host file to add (SRC[:DST])")
	flag.Var(&links, "link", "symlink PATH:TARGET")
	flag.Var(&dirs, "dir", "empty directory PATH[:MODE(octal)]")
	flag.Var(&envs, "env", "environment K=V")
	flag.Var(&entrypoint, "entrypoint", "entrypoint element (repeat)")
	flag.Var(&cmd, "cmd", "cmd element (repeat)")
	flag.StringVar(&workdir, "workdir", "/", "working directory")
	flag.Parse()
	if err := run(out, tags, bins, adds, links, dirs, envs, entrypoint, cmd, workdir); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(out, tags string, bins, adds, links, dirs, envs, entrypoint, cmd list, workdir string) error {
	if out == "" || tags == "" {
		return fmt.Errorf("-o and -tag are required")
	}
	files := map[string]*entry{}
	addFile := func(src, dst string) error {
		st, err := os.Stat(src) // follows symlinks: the image gets the content at the path asked for
		if err != nil {
			return err
		}
		files[path.Clean("/"+dst)] = &entry{src: src, mode: int64(st.Mode().Perm())}
		return nil
	}
	split := func(s string) (string, string) {
		src, dst, ok := strings.Cut(s, ":")
		if !ok {
			dst = src
		}
		return src, dst
	}
	for _, a := range adds {
		src, dst := split(a)
		if err := addFile(src, dst); err != nil {
			return err
		}
	}
	for _, b := range bins {
		src, dst := split(b)
		if err := addFile(src, dst); err != nil {
			return err
		}
		libs, err := sharedLibs(src)
		if err != nil {
			return err
		}
		for _, l := range libs {
			if err := addFile(l, l); err != nil {
				return err
			}
		}
	}
	for _, l := range links {
		p, target, ok := strings.Cut(l, ":")
		if !ok {
			return fmt.Errorf("-link %q: want PATH:TARGET", l)
		}
		files[path.Clean("/"+p)] = &entry{link: target}
	}
	for _, d := range dirs {
		p, m, _ := strings.Cut(d, ":")
		mode := int64(0o755)
		if m != "" {
			v, err := strconv.ParseInt(m, 8, 32)
			if err != nil {
				return fmt.Errorf("-dir %q: %w", d, err)
			}
			mode = v
		}
		files[path.Clean("/"+p)] = &entry{isDir: true, dirMod: mode}
	}
	layerTar, err := buildTar(files)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Env = envs
	cf.Config.Entrypoint = entrypoint
	cf.Config.Cmd = cmd
	cf.Config.WorkingDir = workdir
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return err
	}
	refs := map[name.Reference]v1.Image{}
	for _, t := range strings.Split(tags, ",") {
		tag, err := name.NewTag(t)
		if err != nil {
			return err
		}
		refs[tag] = img
	}
	f, err := os.Create(out + ".tmp")
	if err != nil {
		return err
	}
	if err := tarball.MultiRefWrite(refs, f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(out+".tmp", out)
}

var lddLine = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x`)

// sharedLibs lists the libraries (and the loader) ldd reports for a binary;
// none for a static one.
func sharedLibs(bin string) ([]string, error) {
	b, err := exec.Command("ldd", bin).CombinedOutput()
	if err != nil {
		if strings.Contains(string(b), "not a dynamic executable") || strings.Contains(string(b), "statically linked") {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %w: %s", bin, err, b)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if m := lddLine.FindStringSubmatch(l); m != nil {
			out = append(out, m[1])
		}
	}
	return out, nil
}

func buildTar(files map[string]*entry) ([]byte, error) {
	// every parent directory gets an entry
	all := map[string]*entry{}
	for p, e := range files {
		all[p] = e
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = &entry{isDir: true, dirMod: 0o755}
			}
		}
	}
	names := make([]string, 0, len(all))
	for p := range all {
		names = append(names, p)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	zero := time.Unix(0, 0)
	for _, p := range names {
		e := all[p]
		n := strings.TrimPrefix(p, "/")
		h := &tar.Header{Name: n, ModTime: zero, Format: tar.FormatPAX}
		switch {
		case e.isDir:
			h.Typeflag, h.Name, h.Mode = tar.TypeDir, n+"/", e.dirMod
		case e.link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, e.link, 0o777
		default:
			b, err := os.ReadFile(filepath.Clean(e.src))
			if err != nil {
				return nil, err
			}
			h.Typeflag, h.Mode, h.Size = tar.TypeReg, e.mode, int64(len(b))
			if err := tw.WriteHeader(h); err != nil {
				return nil, err
			}
			if _, err := tw.Write(b); err != nil {
				return nil, err
			}
			continue
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
