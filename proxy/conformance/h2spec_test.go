package conformance

import (
	"os"
	"path/filepath"
	"testing"
)

// TestParseJUnitControlBytes: h2spec writes frame payloads into its JUnit
// report unescaped; a report with a NUL byte and invalid UTF-8 in a
// failure's text still parses, and the case counts as failed (it once made
// the conformance test stop before rerunning a flaky case).
func TestParseJUnitControlBytes(t *testing.T) {
	report := `<?xml version="1.0" encoding="UTF-8"?>
<testsuites>
  <testsuite name="3.8. GOAWAY" package="generic/3.8" tests="1">
    <testcase package="generic/3.8" classname="Sends a GOAWAY frame" time="0.0001">
      <failure>PING Frame (length:8, flags:0x01, stream_id:0, opaque_data:h2spec` + "\x00\x00\xff" + `)</failure>
    </testcase>
    <testcase package="generic/3.7" classname="Sends a PING frame" time="0.0001"></testcase>
  </testsuite>
</testsuites>`
	path := filepath.Join(t.TempDir(), "r.xml")
	if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := parseJUnit(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := res["generic/3.8 Sends a GOAWAY frame"]; got != "fail" {
		t.Errorf("GOAWAY case: %q, want fail (all: %v)", got, res)
	}
	if got := res["generic/3.7 Sends a PING frame"]; got != "pass" {
		t.Errorf("PING case: %q, want pass (all: %v)", got, res)
	}
}
