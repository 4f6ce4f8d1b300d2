package bpf

import (
	"fmt"
	"os"
	"strings"
)

// CheckNode verifies, for the network namespace of the calling thread, the
// sysctls the redirect path depends on (see the package documentation):
// tcp_early_demux off and accept_local on. It only reads; the agent owns
// the node's configuration. The policy routing rule is not checked.
func CheckNode() error {
	read := func(name string) (string, error) {
		b, err := os.ReadFile("/proc/sys/net/ipv4/" + name)
		if err != nil {
			return "", fmt.Errorf("read sysctl: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	var problems []string
	for _, want := range []struct{ name, value string }{
		{"tcp_early_demux", "0"},
		{"conf/all/accept_local", "1"},
	} {
		got, err := read(want.name)
		if err != nil {
			return err
		}
		if got != want.value {
			problems = append(problems, fmt.Sprintf("net.ipv4.%s is %s, want %s", strings.ReplaceAll(want.name, "/", "."), got, want.value))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrNodeSetup, strings.Join(problems, "; "))
	}
	return nil
}
