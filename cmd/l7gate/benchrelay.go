//go:build l7gate_benchrelay

package main

import (
	"fmt"
	"os"
)

// benchRelayBanner is printed by every command of make bench's splice
// relay build (-tags l7gate_benchrelay, proxy/benchrelay.go), before
// anything else: its proxy copies bytes and enforces no L7 policy.
const benchRelayBanner = "WARNING: this l7gate binary is make bench's splice relay (-tags l7gate_benchrelay): its proxy ENFORCES NO L7 POLICY (no parsing, no rules, no access records; it only copies bytes). Never run it on a real node."

func init() {
	fmt.Fprintln(os.Stderr, benchRelayBanner)
}
