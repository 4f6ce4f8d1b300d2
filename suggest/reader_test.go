package suggest

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/l7gate/l7gate/policy"
)

const goodLine = `{"time":"2026-12-06T16:55:23.928289703Z","protocol":"http","direction":"ingress","source":"198.18.1.11:59288","destination":"198.18.1.10:80","srcIdentity":257,"dstIdentity":256,"verdict":"allowed","latencyMs":1,"method":"POST","path":"/v1/request-landing"}`

// TestHostileJSONLines: garbage, wrong types, bad addresses and directions,
// an over-long line, NULs and a missing final newline are skipped and
// counted; the records around them are still read.
func TestHostileJSONLines(t *testing.T) {
	in := strings.Join([]string{
		goodLine,
		`time=2026-12-06T16:55:17.521Z level=INFO msg="proxy starting"`,
		`{"time":"yesterday"}`,
		`{"source":"not-an-address"}`,
		`{"direction":"sideways"}`,
		`{"srcIdentity":-1}`,
		`{"topics":[1,2,3]}`,
		`{` + strings.Repeat(`"a":[`, 100000),
		"{\x00\x01\x02",
		`{"path":"` + strings.Repeat("x", MaxLineSize) + `"}`,
		``,
		`   `,
		goodLine,
	}, "\n")
	r := NewJSONLines(strings.NewReader(in))
	recs, err := ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 || recs[0].Path != "/v1/request-landing" || recs[1].Method != "POST" {
		t.Fatalf("read %d records, want the 2 good ones: %+v", len(recs), recs)
	}
	if r.Malformed != 8 || r.FirstError == nil || !strings.Contains(r.FirstError.Error(), "line 3") {
		t.Errorf("malformed = %d (want 8), first error %v", r.Malformed, r.FirstError)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

func TestHostileJSONLinesReadError(t *testing.T) {
	_, err := ReadAll(NewJSONLines(io.MultiReader(strings.NewReader(goodLine+"\n"), errReader{})))
	if err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("err = %v, want the read error", err)
	}
}

// FuzzJSONLines: any input reads without a panic, and whatever records
// come out, the suggestion loads as policy and denies none of the records
// it was made from (the round trip, on hostile records).
func FuzzJSONLines(f *testing.F) {
	for _, sc := range scenarios {
		for _, name := range []string{"flows.jsonl", "proxy.log"} {
			data, err := os.ReadFile(filepath.Join("testdata", sc, name))
			if err != nil {
				f.Fatal(err)
			}
			lines := bytes.Split(data, []byte("\n"))
			for i := 0; i < len(lines); i += 7 {
				f.Add(bytes.Join(lines[i:min(i+7, len(lines))], []byte("\n")))
			}
		}
	}
	f.Add([]byte(strings.Replace(goodLine, `"POST"`, `".*"`, 1)))
	f.Add([]byte(strings.Replace(goodLine, `"/v1/request-landing"`, `"/a\n/b"`, 1)))
	f.Add([]byte(strings.Replace(goodLine, `"http"`, `"kafka","apiKey":"produce","topics":["a b"]`, 1)))
	objs, errs := policy.Load(filepath.Join("testdata", "starwars", "objects.yaml"), filepath.Join("testdata", "kafka", "objects.yaml"),
		filepath.Join("testdata", "grpc", "objects.yaml"))
	for _, err := range errs {
		if !strings.Contains(err.Error(), "duplicate object: already defined") { // the shared default Namespace
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		recs, err := ReadAll(NewJSONLines(bytes.NewReader(data)))
		if err != nil {
			t.Fatal(err)
		}
		for _, opts := range []Options{{}, {Egress: true, IncludeDenied: true}} {
			res, err := Suggest(objs, recs, opts)
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Policies) == 0 {
				continue
			}
			dec, errs := policy.Decode("suggested.yaml", res.YAML())
			if len(errs) > 0 {
				t.Fatalf("suggestion does not load: %v\n%s", errs, res.YAML())
			}
			denials, _, err := Check(objs, dec.Policies, recs, opts)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range denials {
				t.Errorf("would deny: %s\n%s", d, res.YAML())
			}
		}
	})
}
