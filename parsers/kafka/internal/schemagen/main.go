// Command schemagen writes schema_gen.go, the wire layouts of the Kafka
// messages the kafka package checks before kmsg decodes them, converted
// from franz-go's protocol definitions (the source kmsg is generated from),
// and deny_gen.go, fillDenial: the denial of each admitted request as its
// API's own response (rules in deny.go).
//
// Run from parsers/kafka with `go generate` (it locates the franz-go module
// with `go list -m`).
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/format"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Definition files of admitted requests (Produce has its own decoder) and
// of the responses the proxy parses.
var (
	requestFiles = []string{
		"01_fetch", "02_list_offsets", "03_metadata", "08_offset_commit", "09_offset_fetch",
		"10_find_coordinator", "11_join_group", "12_heartbeat", "13_leave_group", "14_sync_group",
		"15_describe_groups", "16_list_groups", "17_sasl_handshake", "18_api_versions",
		"19_create_topics", "20_delete_topics", "21_delete_records", "22_init_producer_id",
		"23_offset_for_leader_epoch", "24_add_partitions_to_txn", "25_add_offsets_to_txn",
		"26_end_txn", "28_txn_offset_commit", "36_sasl_authenticate", "37_create_partitions",
		"42_delete_groups", "47_offset_delete", "60_describe_cluster", "61_describe_producers",
		"75_describe_topic_partitions",
	}
	responseFiles = []string{"03_metadata", "18_api_versions", "75_describe_topic_partitions"}
)

type field struct {
	name, kind string
	typ        string // the definition's type, e.g. nullable-string-v12+
	min, max   int
	tag        int
	fields     []*field
}

var (
	reVersionPlus  = regexp.MustCompile(`^v(\d+)\+`)
	reVersionRange = regexp.MustCompile(`^v(\d+)-v(\d+)`)
	reTag          = regexp.MustCompile(`^tag (\d+)`)
	reDefault      = regexp.MustCompile(`\(.*\)$`)
	rePrimArray    = regexp.MustCompile(`^(nullable(-v\d+\+)?)?\[(\w+)\]$`)
	reString       = regexp.MustCompile(`^(nullable-)?string(-v\d+\+)?$`)
	reBytes        = regexp.MustCompile(`^(nullable-)?bytes$`)
	reFlexible     = regexp.MustCompile(`flexible v(\d+)\+`)
)

// section returns the non-comment lines of the Request or Response
// definition in a file, header first.
func section(dir, file, which string) []string {
	raw, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		log.Fatal(err)
	}
	var out []string
	in := false
	for _, l := range strings.Split(string(raw), "\n") {
		switch {
		case regexp.MustCompile(`^\w+Request =>`).MatchString(l):
			in = which == "Request"
		case regexp.MustCompile(`^\w+Response =>`).MatchString(l):
			in = which == "Response"
		}
		t := strings.TrimSpace(l)
		if in && t != "" && !strings.HasPrefix(t, "//") {
			out = append(out, l)
		}
	}
	return out
}

func parse(lines []string) (flex int, fields []*field) {
	flex = 32767
	if m := reFlexible.FindStringSubmatch(lines[0]); m != nil {
		flex, _ = strconv.Atoi(m[1])
	}
	root := &field{}
	type level struct {
		depth int
		f     *field
	}
	stack := []level{{1, root}}
	for _, l := range lines[1:] {
		depth := (len(l) - len(strings.TrimLeft(l, " "))) / 2
		s, comment, _ := strings.Cut(strings.TrimSpace(l), "//")
		s, comment = strings.TrimSpace(s), strings.TrimSpace(comment)
		f := &field{min: 0, max: 32767, tag: -1}
		if m := reVersionPlus.FindStringSubmatch(comment); m != nil {
			f.min, _ = strconv.Atoi(m[1])
		}
		if m := reVersionRange.FindStringSubmatch(comment); m != nil {
			f.min, _ = strconv.Atoi(m[1])
			f.max, _ = strconv.Atoi(m[2])
		}
		if m := reTag.FindStringSubmatch(comment); m != nil {
			f.tag, _ = strconv.Atoi(m[1])
		}
		typ := "int32" // TimeoutMillis / ThrottleMillis shorthand
		if name, t, ok := strings.Cut(s, ":"); ok {
			f.name, typ = strings.TrimSpace(name), strings.TrimSpace(t)
		} else {
			f.name = reDefault.ReplaceAllString(s, "")
		}
		typ = reDefault.ReplaceAllString(typ, "")
		f.typ = typ
		switch {
		case strings.HasSuffix(typ, "[=>]"):
			f.kind = "fArray"
		case typ == "=>":
			f.kind = "fStruct"
		case typ == "nullable=>":
			f.kind = "fNullStruct"
		case rePrimArray.MatchString(typ):
			el := rePrimArray.FindStringSubmatch(typ)[3]
			f.kind = map[string]string{"int32": "fArrayInt32", "int64": "fArrayInt64", "string": "fArrayString"}[el]
		case reString.MatchString(typ):
			f.kind = "fString"
		case reBytes.MatchString(typ):
			f.kind = "fBytes"
		default:
			f.kind = map[string]string{"int8": "fInt8", "int16": "fInt16", "int32": "fInt32", "int64": "fInt64", "bool": "fBool", "uuid": "fUUID"}[typ]
		}
		if f.kind == "" {
			log.Fatalf("unknown type %q in %q", typ, l)
		}
		for stack[len(stack)-1].depth != depth {
			stack = stack[:len(stack)-1]
		}
		parent := stack[len(stack)-1].f
		parent.fields = append(parent.fields, f)
		if f.kind == "fArray" || f.kind == "fStruct" || f.kind == "fNullStruct" {
			stack = append(stack, level{depth + 1, f})
		}
	}
	return flex, root.fields
}

func writeFields(b *bytes.Buffer, fs []*field) {
	for _, f := range fs {
		fmt.Fprintf(b, "{kind: %s, min: %d, max: %d, tag: %d", f.kind, f.min, f.max, f.tag)
		if len(f.fields) > 0 {
			b.WriteString(", fields: []sfield{\n")
			writeFields(b, f.fields)
			b.WriteString("}")
		}
		fmt.Fprintf(b, "}, // %s\n", f.name)
	}
}

func writeFunc(b *bytes.Buffer, dir, name, doc string, files []string, which string) {
	fmt.Fprintf(b, "%s\nfunc %s(key int16) *schema {\nswitch key {\n", doc, name)
	for _, file := range files {
		key, _ := strconv.Atoi(strings.SplitN(file, "_", 2)[0])
		flex, _ := parse(section(dir, file, "Request")) // responses share the request's flexible versions
		_, fields := parse(section(dir, file, which))
		fmt.Fprintf(b, "case %d:\nreturn &schema{flexFrom: %d, fields: []sfield{\n", key, flex)
		writeFields(b, fields)
		b.WriteString("}}\n")
	}
	b.WriteString("}\nreturn nil\n}\n\n")
}

func main() {
	// `go mod download` fetches the module when the cache lacks it (a fresh
	// machine) and prints where it is; `go list -m` would print nothing.
	out, err := exec.Command("go", "mod", "download", "-json", "github.com/twmb/franz-go").Output()
	if err != nil {
		log.Fatalf("locate franz-go: %v", err)
	}
	var mod struct{ Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		log.Fatalf("locate franz-go: no module directory in %s", out)
	}
	dir := filepath.Join(mod.Dir, "generate", "definitions")
	var b bytes.Buffer
	b.WriteString("// Code generated by internal/schemagen from franz-go's generate/definitions; DO NOT EDIT.\n\npackage kafka\n\n")
	writeFunc(&b, dir, "requestSchema", "// requestSchema returns the wire layout of an admitted request key\n// (Produce excepted: it has its own decoder), or nil.", requestFiles, "Request")
	writeFunc(&b, dir, "responseSchema", "// responseSchema returns the wire layout of a response the proxy parses,\n// or nil.", responseFiles, "Response")
	src, err := format.Source(b.Bytes())
	if err != nil {
		log.Fatalf("format: %v", err)
	}
	if err := os.WriteFile("schema_gen.go", src, 0o644); err != nil {
		log.Fatal(err)
	}

	b.Reset()
	b.WriteString("// Code generated by internal/schemagen from kmsg's types and franz-go's generate/definitions; DO NOT EDIT.\n\npackage kafka\n\nimport \"github.com/twmb/franz-go/pkg/kmsg\"\n\n")
	writeDenials(&b, dir, requestFiles)
	src, err = format.Source(b.Bytes())
	if err != nil {
		log.Fatalf("format deny_gen.go: %v", err)
	}
	if err := os.WriteFile("deny_gen.go", src, 0o644); err != nil {
		log.Fatal(err)
	}
}
