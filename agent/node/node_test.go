package node

import "testing"

// TestToProxyRule: the rule's selector is bpf's to-proxy mark under its
// magic mask, as DESIGN's redirect recipe writes it.
func TestToProxyRule(t *testing.T) {
	if got := ToProxyRule(); got != "0x200/0xf00" {
		t.Errorf("ToProxyRule() = %q, want 0x200/0xf00", got)
	}
}
