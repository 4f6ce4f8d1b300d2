package conformance

import (
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// h2specVersion is the h2spec release the suite is built from.
const h2specVersion = "v2.2.1+incompatible"

// h2specResult maps "package/classname" of every h2spec test case to
// its outcome: pass, fail or skip.
type h2specResult map[string]string

func (r h2specResult) count(outcome string) int {
	n := 0
	for _, o := range r {
		if o == outcome {
			n++
		}
	}
	return n
}

// list returns the cases with an outcome, sorted.
func (r h2specResult) list(outcome string) []string {
	var out []string
	for k, o := range r {
		if o == outcome {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// parseJUnit reads h2spec's JUnit report.
func parseJUnit(path string) (h2specResult, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b = xmlSafe(b)
	var doc struct {
		Suites []struct {
			Cases []struct {
				Package   string    `xml:"package,attr"`
				Classname string    `xml:"classname,attr"`
				Failure   *struct{} `xml:"failure"`
				Error     *struct{} `xml:"error"`
				Skipped   *struct{} `xml:"skipped"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	res := h2specResult{}
	for _, s := range doc.Suites {
		for _, c := range s.Cases {
			key := c.Package + " " + c.Classname
			switch {
			case c.Failure != nil || c.Error != nil:
				res[key] = "fail"
			case c.Skipped != nil:
				res[key] = "skip"
			default:
				res[key] = "pass"
			}
		}
	}
	if len(res) == 0 {
		return nil, fmt.Errorf("%s: no test cases", path)
	}
	return res, nil
}

// xmlSafe replaces what XML 1.0 does not allow in a document with U+FFFD:
// h2spec copies frame payloads into its report unescaped (a failed PING
// case carries "h2spec\x00\x00"), which encoding/xml rejects.
func xmlSafe(b []byte) []byte {
	return []byte(strings.Map(func(r rune) rune {
		if r == '\t' || r == '\n' || r == '\r' || (r >= 0x20 && r <= 0xD7FF) || (r >= 0xE000 && r <= 0xFFFD) || r >= 0x10000 {
			return r
		}
		return utf8.RuneError
	}, strings.ToValidUTF8(string(b), string(utf8.RuneError))))
}

// runH2spec runs h2spec (HTTP/2 with prior knowledge) from namespace ns.
// Some cases wait for a timeout that a loaded machine can miss, so a case
// that fails is run again (twice) on its own before it counts as failed.
func runH2spec(ctx context.Context, t *testing.T, n *node, bin, ns, host string, port int, name string) h2specResult {
	t.Helper()
	report := filepath.Join(n.dir, name+".xml")
	out, err := n.run(ctx, ns, bin, "-h", host, "-p", fmt.Sprint(port), "-o", "3", "-j", report)
	res, perr := parseJUnit(report)
	if perr != nil {
		t.Fatalf("h2spec %s: %v (%v)\n%s", name, perr, err, lastLines(out, 20))
	}
	for key, o := range res {
		if o != "fail" {
			continue
		}
		pkg := strings.Fields(key)[0] // e.g. http2/8.1.2.6
		for range 2 {
			// Rerun the section (spec id) and see whether this case passes.
			rr := filepath.Join(n.dir, name+"-retry.xml")
			n.run(ctx, ns, bin, strings.TrimPrefix(strings.TrimPrefix(pkg, "generic/"), "http2/"), "-h", host, "-p", fmt.Sprint(port), "-o", "3", "-j", rr)
			if again, err := parseJUnit(rr); err == nil && again[key] == "pass" {
				res[key] = "pass"
				break
			}
		}
	}
	return res
}

// TestPrivilegedH2Spec runs h2spec against a Go h2c backend through the
// datapath and the L7 proxy (allow-all rule) and directly; the proxy must
// fail no case the backend alone passes, and must carry the requests.
func TestPrivilegedH2Spec(t *testing.T) {
	for _, dp := range dataplanes {
		t.Run(dp.name, func(t *testing.T) {
			requireRoot(t)
			if why := dp.available(); why != "" {
				t.Skipf("%s dataplane: %s", dp.name, why)
			}
			bin := tool(t, "github.com/summerwind/h2spec/cmd/h2spec", h2specVersion)
			const port = 8080
			n := startNode(t, dp, port, allowAll("http"))
			ln := listen(t, n.Backend, fmt.Sprintf("0.0.0.0:%d", port))
			var protocols http.Protocols
			protocols.SetUnencryptedHTTP2(true)
			srv := &http.Server{Protocols: &protocols, ErrorLog: log.New(io.Discard, "", 0), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				io.WriteString(w, "ok")
			})}
			go srv.Serve(ln)
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()

			direct := runH2spec(ctx, t, n, bin, n.Backend, "127.0.0.1", port, "direct")
			before := n.requests()
			proxied := runH2spec(ctx, t, n, bin, n.Client, backendIP, port, "proxy")
			carried := n.requests() - before
			t.Logf("h2spec %s: direct %d/%d passed (%d skipped), through the %s proxy %d/%d passed (%d skipped); %d requests carried",
				h2specVersion, direct.count("pass"), len(direct), direct.count("skip"), dp.name, proxied.count("pass"), len(proxied), proxied.count("skip"), carried)
			t.Logf("failed directly:\n  %s\nfailed through the proxy:\n  %s", strings.Join(direct.list("fail"), "\n  "), strings.Join(proxied.list("fail"), "\n  "))
			var added, fixed []string
			for key, o := range proxied {
				switch {
				case o == "fail" && direct[key] != "fail":
					added = append(added, key)
				case o != "fail" && direct[key] == "fail":
					fixed = append(fixed, key)
				}
			}
			sort.Strings(added)
			sort.Strings(fixed)
			if len(fixed) > 0 {
				t.Logf("cases the backend alone fails and the proxy's own frontend passes:\n  %s", strings.Join(fixed, "\n  "))
			}
			if len(added) > 0 {
				t.Errorf("the proxy fails cases the backend alone passes:\n  %s", strings.Join(added, "\n  "))
			}
			if carried < 50 {
				t.Errorf("the proxy carried %d requests: h2spec's traffic did not go through it", carried)
			}
		})
	}
}
