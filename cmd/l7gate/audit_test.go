//go:build !l7gate_proxyonly

package main

import "testing"

// TestAgentPolicyAuditMode: --policy-audit-mode reaches the policy options the agent computes with.
func TestAgentPolicyAuditMode(t *testing.T) {
	o, err := agentPolicyOptions(agentFlags{AllowLocalhost: "always", PolicyAuditMode: true})
	if err != nil || !o.AuditMode {
		t.Fatalf("options %+v, %v: want AuditMode", o, err)
	}
	o, err = agentPolicyOptions(agentFlags{AllowLocalhost: "always"})
	if err != nil || o.AuditMode {
		t.Fatalf("options %+v, %v: audit mode without the flag", o, err)
	}
	cmd := (&app{}).agentCommand()
	if err := cmd.ParseFlags([]string{"--policy-audit-mode"}); err != nil {
		t.Fatal(err)
	}
	if v, err := cmd.Flags().GetBool("policy-audit-mode"); err != nil || !v {
		t.Fatalf("--policy-audit-mode parsed as %v, %v", v, err)
	}
}
