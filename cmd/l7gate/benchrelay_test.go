//go:build !l7gate_proxyonly

package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchRelayNotInDefaultBuild: make bench's splice relay (a proxy that
// copies bytes and enforces no policy, proxy/benchrelay.go) exists only in
// a -tags l7gate_benchrelay build. A default and a proxy-only build link
// none of it (neither the relay's code nor its banner), and no flag or
// environment variable can turn it on there; the relay build has both and
// prints the banner on every command.
func TestBenchRelayNotInDefaultBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds binaries")
	}
	dir := t.TempDir()
	build := func(name string, tags ...string) string {
		bin := filepath.Join(dir, name)
		args := []string{"build", "-o", bin}
		if len(tags) > 0 {
			args = append(args, "-tags", strings.Join(tags, ","))
		}
		if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
			t.Fatalf("go build %v: %v\n%s", tags, err, out)
		}
		return bin
	}
	// the relay's code is in the binary when its log message is (a
	// symbol name could be inlined away)
	hasRelay := func(bin string) (code, banner bool) {
		data, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		return bytes.Contains(data, []byte("bench relay: upstream dial failed")), bytes.Contains(data, []byte("ENFORCES NO L7 POLICY"))
	}
	for _, tags := range [][]string{nil, {"l7gate_proxyonly"}} {
		if code, banner := hasRelay(build("l7gate-"+strings.Join(tags, "-"), tags...)); code || banner {
			t.Errorf("a build with tags %v contains the bench relay (code %v, banner %v)", tags, code, banner)
		}
	}
	relay := build("l7gate-relay", "l7gate_benchrelay")
	if code, banner := hasRelay(relay); !code || !banner {
		t.Fatalf("the relay build lacks the relay (code %v, banner %v): the test above proves nothing", code, banner)
	}
	out, _ := exec.Command(relay, "proxy", "--help").CombinedOutput()
	if !strings.Contains(string(out), benchRelayBannerText) {
		t.Errorf("the relay build's proxy command does not print the banner:\n%s", out)
	}
}

// benchRelayBannerText is the banner's start (benchrelay.go is not in this
// test's build).
const benchRelayBannerText = "WARNING: this l7gate binary is make bench's splice relay"
