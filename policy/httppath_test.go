package policy

import (
	"errors"
	"testing"
)

func TestNormalizeRequestTarget(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		slashes  EscapedSlashAction
		err      bool
	}{
		{in: "/", want: "/"},
		{in: "/public/a?x=1", want: "/public/a?x=1"},
		{in: "*", want: "*"},
		{in: "/public/../admin", want: "/admin"},
		{in: "/public/%2e%2e/admin", want: "/admin"},
		{in: "/public/.%2e/admin", want: "/admin"},
		{in: "/public/%2E%2E/admin", want: "/admin"},
		{in: "/public/./a/./b", want: "/public/a/b"},
		{in: "/../../etc/passwd", want: "/etc/passwd"},
		{in: "/a/..", want: "/"},
		{in: "/a/.", want: "/a/"},
		{in: "/a/b/", want: "/a/b/"},
		{in: "//admin", want: "/admin"},
		{in: "/public//..//admin//", want: "/admin/"},
		{in: "/public\\..\\admin", want: "/admin"},
		{in: "/%41%42c%7e", want: "/ABc~"},
		{in: "/a%3fb%20c", want: "/a%3Fb%20c"},
		{in: "/a%25", want: "/a%25"},
		{in: "/..?q=/../x", want: "/?q=/../x"},
		{in: "/a/../b?%2e%2e", want: "/b?%2e%2e"},
		{in: "/a%2Fb", err: true},
		{in: "/a%2fb", err: true},
		{in: "/a%5Cb", err: true},
		{in: "/a%2Fb", slashes: EscapedSlashesKeep, want: "/a%2Fb"},
		{in: "/a%2f..%2fb", slashes: EscapedSlashesKeep, want: "/a%2F..%2Fb"},
		{in: "/public/..%2fadmin", slashes: EscapedSlashesUnescape, want: "/admin"},
		{in: "/public/%5c..%5cadmin", slashes: EscapedSlashesUnescape, want: "/admin"},
		{in: "/a%", err: true},
		{in: "/a%4", err: true},
		{in: "/a%zz", err: true},
		{in: "/a%00.html", err: true},
		{in: "/a#frag", err: true},
		{in: "/a?b#frag", err: true},
		{in: "a/b", err: true},
		{in: "", err: true},
		{in: "http://x/", err: true},
	} {
		got, err := NormalizeRequestTarget(tc.in, tc.slashes)
		var pe *PathError
		if tc.err {
			if err == nil || !errors.As(err, &pe) {
				t.Errorf("%q: got %q, %v; want a *PathError", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q (%s): got %q, %v; want %q", tc.in, tc.slashes, got, err, tc.want)
		}
	}
}

func TestNormalizeRequestTargetNoAlloc(t *testing.T) {
	n := testing.AllocsPerRun(100, func() {
		NormalizeRequestTarget("/api/v1/service500/items?x=1&y=/./", EscapedSlashesReject)
	})
	if n != 0 {
		t.Errorf("%v allocations for a normal target, want 0", n)
	}
}

// FuzzNormalizeRequestTarget: normalizing is idempotent and its output
// never holds a dot segment, an empty segment or an encoded slash.
func FuzzNormalizeRequestTarget(f *testing.F) {
	for _, s := range []string{"/", "/a/../b", "/%2e%2E/x?y", "/a//b/", "/a%2Fb", "/\\x", "*"} {
		f.Add(s, uint8(0))
	}
	f.Fuzz(func(t *testing.T, in string, mode uint8) {
		slashes := []EscapedSlashAction{EscapedSlashesReject, EscapedSlashesKeep, EscapedSlashesUnescape}[int(mode)%3]
		out, err := NormalizeRequestTarget(in, slashes)
		if err != nil {
			return
		}
		again, err := NormalizeRequestTarget(out, slashes)
		if err != nil || again != out {
			t.Fatalf("%q -> %q -> %q, %v: not idempotent", in, out, again, err)
		}
		if out == "*" {
			return
		}
		p := out
		if i := indexByte(p, '?'); i >= 0 {
			p = p[:i]
		}
		if !isNormalPathKeep(p) {
			t.Fatalf("%q -> %q: path still has a dot or empty segment", in, out)
		}
	})
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// isNormalPathKeep is isNormalPath allowing percent-encodings.
func isNormalPathKeep(p string) bool {
	for i := 0; i < len(p); i++ {
		if p[i] == '\\' {
			return false
		}
		if p[i] == '/' {
			rest := p[i+1:]
			if len(rest) > 0 && rest[0] == '/' || rest == "." || rest == ".." || len(rest) >= 2 && rest[:2] == "./" || len(rest) >= 3 && rest[:3] == "../" {
				return false
			}
		}
	}
	return true
}

func BenchmarkNormalizeRequestTarget(b *testing.B) {
	for _, in := range []string{"/api/v1/service500/items?x=1", "/api/v1/./service500//items/../items?x=1"} {
		b.Run(in, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				NormalizeRequestTarget(in, EscapedSlashesReject)
			}
		})
	}
}
