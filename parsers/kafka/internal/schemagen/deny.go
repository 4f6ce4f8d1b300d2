package main

import (
	"bytes"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// The denial of a request is that API's own response, built by mirroring
// the request: every response array whose elements carry an error code is
// filled from the request array of the same name (struct elements field by
// field, primitive elements into the element's first field of that type),
// identity fields (topic, topic id, partition, group, ...) are copied, and
// the error code is set at the deepest level that has one: a level gets it
// when nothing below it got one. kmsg supplies the Go types (by reflection),
// franz-go's definitions the versions where a string is not yet nullable.
// What cannot be derived is in denySpecs.

// denySpec is what the rules above cannot derive for one API.
type denySpec struct {
	// subject is the code for levels that are not topics or partitions
	// (and the main code when no topic got one); cond/condCode replace it
	// when cond holds.
	subject, cond, condCode string
	// noRootCode leaves the top-level ErrorCode alone (Metadata v13+'s is
	// for cluster-wide conditions such as REBOOTSTRAP_REQUIRED).
	noRootCode bool
	// skip names response arrays that are not mirrored.
	skip []string
	// alias lists the request arrays mirrored into a response array whose
	// name differs, in order.
	alias map[string][]string
}

const (
	topicCode   = "topicCode"
	groupCode   = "groupCode"
	clusterCode = "clusterCode"
	txnCode     = "txnCode"
)

// denySpecs covers every admitted API key (the generator fails on a gap).
var denySpecs = map[int16]denySpec{
	0:  {subject: topicCode},
	1:  {subject: topicCode},
	2:  {subject: topicCode},
	3:  {subject: topicCode, noRootCode: true},
	8:  {subject: groupCode},
	9:  {subject: groupCode},
	10: {subject: groupCode, cond: "q.CoordinatorType == 1", condCode: txnCode, alias: map[string][]string{"Coordinators": {"CoordinatorKeys"}}},
	11: {subject: groupCode},
	12: {subject: groupCode},
	13: {subject: groupCode, skip: []string{"Members"}}, // brokers answer a denied LeaveGroup at the top level only
	14: {subject: groupCode},
	15: {subject: groupCode},
	16: {subject: clusterCode},
	// No authorization error exists for the handshake; offering no
	// mechanism (UNSUPPORTED_SASL_MECHANISM) makes the client give up.
	17: {subject: "33"},
	18: {subject: clusterCode},
	19: {subject: topicCode},
	20: {subject: topicCode, alias: map[string][]string{"Topics": {"TopicNames", "Topics"}}},
	21: {subject: topicCode},
	22: {subject: clusterCode, cond: "q.TransactionalID != nil", condCode: txnCode},
	23: {subject: topicCode},
	24: {subject: txnCode},
	25: {subject: txnCode},
	26: {subject: txnCode},
	28: {subject: topicCode},
	36: {subject: "ErrCodeSASLAuthenticationFailed"},
	37: {subject: topicCode},
	42: {subject: groupCode},
	47: {subject: groupCode},
	60: {subject: clusterCode},
	61: {subject: topicCode},
	75: {subject: topicCode},
}

// identityFields are copied from a request level to the response level
// built from it when both have them.
var identityFields = []string{"Topic", "TopicID", "Partition", "Group", "TransactionalID", "MemberID"}

// minusOneFields are "unknown" in a denial (offsets, epochs, ids, node
// addresses); kmsg's constructors default only some of them to -1.
var minusOneFields = []string{
	"BaseOffset", "HighWatermark", "LowWatermark", "Offset", "LeaderEpoch", "EndOffset",
	"NodeID", "Port", "ProducerID", "ProducerEpoch", "ControllerID", "Generation",
	"NumPartitions", "ReplicationFactor",
}

var reNullableFrom = regexp.MustCompile(`^nullable-string-v(\d+)\+$`)

type denyGen struct {
	b     *bytes.Buffer
	key   int16
	spec  denySpec
	topic bool // some level is a topic level
	track bool // count topic-level codes (the subject is not topicCode)
}

func hasErrorCode(t reflect.Type) bool {
	f, ok := t.FieldByName("ErrorCode")
	if ok && f.Type.Kind() == reflect.Int16 {
		return true
	}
	for i := range t.NumField() {
		ft := t.Field(i).Type
		if ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct && hasErrorCode(ft.Elem()) {
			return true
		}
	}
	return false
}

func isTopicLevel(t reflect.Type) bool {
	_, a := t.FieldByName("Topic")
	_, b := t.FieldByName("TopicID")
	return a || b
}

func defField(fs []*field, name string) *field {
	for _, f := range fs {
		if f.name == name {
			return f
		}
	}
	return nil
}

// mirrored lists the response arrays of level pt filled from request level
// qt, each with the request arrays it is filled from.
func (g *denyGen) mirrored(qt, pt reflect.Type, root bool) (fields []reflect.StructField, sources [][]reflect.StructField) {
	if qt == nil {
		return nil, nil
	}
	for i := range pt.NumField() {
		pf := pt.Field(i)
		if pf.Type.Kind() != reflect.Slice || pf.Type.Elem().Kind() != reflect.Struct || !hasErrorCode(pf.Type.Elem()) {
			continue
		}
		if root && slices.Contains(g.spec.skip, pf.Name) {
			continue
		}
		names := []string{pf.Name}
		if a, ok := g.spec.alias[pf.Name]; ok && root {
			names = a
		}
		var srcs []reflect.StructField
		for _, name := range names {
			if qf, ok := qt.FieldByName(name); ok && qf.Type.Kind() == reflect.Slice {
				srcs = append(srcs, qf)
			}
		}
		if len(srcs) > 0 {
			fields, sources = append(fields, pf), append(sources, srcs)
		}
	}
	return fields, sources
}

// level writes the code that fills response level p (type pt) from request
// level q (type qt; nil for a primitive element). It returns how many codes
// the level sets: "" none, "1" exactly one, or the name of the counter of
// codes set at or below it. need tells whether the caller uses the count.
func (g *denyGen) level(d int, q string, qt reflect.Type, p string, pt reflect.Type, defs []*field, topicLevel, root, need bool) string {
	b := g.b
	if qt != nil {
		for _, name := range identityFields {
			pf, ok1 := pt.FieldByName(name)
			qf, ok2 := qt.FieldByName(name)
			if !ok1 || !ok2 {
				continue
			}
			switch {
			case pf.Type == qf.Type:
				fmt.Fprintf(b, "%s.%s = %s.%s\n", p, name, q, name)
			case pf.Type.Kind() == reflect.Pointer && pf.Type.Elem() == qf.Type:
				fmt.Fprintf(b, "%s.%s = strPtr(%s.%s)\n", p, name, q, name)
			default:
				panic(fmt.Sprintf("key %d: %s.%s: request %s, response %s", g.key, pt.Name(), name, qf.Type, pf.Type))
			}
		}
	}
	fields, sources := g.mirrored(qt, pt, root)
	ec, ok := pt.FieldByName("ErrorCode")
	hasCode := ok && ec.Type.Kind() == reflect.Int16 && !(root && g.spec.noRootCode)
	n := ""
	if len(fields) > 0 && (hasCode || need) {
		n = fmt.Sprintf("n%d", d)
		fmt.Fprintf(b, "%s := 0\n", n)
	}
	for fi, pf := range fields {
		et := pf.Type.Elem()
		var sub []*field
		if df := defField(defs, pf.Name); df != nil {
			sub = df.fields
		}
		for _, qf := range sources[fi] {
			child := fmt.Sprintf("p%d", d+1)
			fmt.Fprintf(b, "for i%d := range %s.%s {\n", d, q, qf.Name)
			fmt.Fprintf(b, "%s := kmsg.New%s()\n", child, et.Name())
			var cn string
			if qf.Type.Elem().Kind() == reflect.Struct {
				qc := fmt.Sprintf("q%d", d+1)
				fmt.Fprintf(b, "%s := &%s.%s[i%d]\n", qc, q, qf.Name, d)
				cn = g.level(d+1, qc, qf.Type.Elem(), child, et, sub, topicLevel || isTopicLevel(et), false, n != "")
			} else {
				// A primitive element goes into the response element's
				// first field of its type (Partition, Group, Key), else
				// of a pointer to it.
				kf, ptr := keyField(et, qf.Type.Elem())
				switch {
				case kf == "":
					panic(fmt.Sprintf("key %d: no field of %s takes %s elements", g.key, et.Name(), qf.Name))
				case ptr:
					fmt.Fprintf(b, "%s.%s = strPtr(%s.%s[i%d])\n", child, kf, q, qf.Name, d)
				default:
					fmt.Fprintf(b, "%s.%s = %s.%s[i%d]\n", child, kf, q, qf.Name, d)
				}
				cn = g.level(d+1, "", nil, child, et, sub, topicLevel || isTopicLevel(et), false, n != "")
			}
			switch {
			case n == "" || cn == "":
			case cn == "1":
				fmt.Fprintf(b, "%s++\n", n)
			default:
				fmt.Fprintf(b, "%s += %s\n", n, cn)
			}
			fmt.Fprintf(b, "%s.%s = append(%s.%s, %s)\n", p, pf.Name, p, pf.Name, child)
			b.WriteString("}\n")
		}
	}
	if hasCode {
		code := "subject"
		if topicLevel {
			code = topicCode
			g.topic = true
		}
		set := fmt.Sprintf("%s.ErrorCode = %s\n", p, code)
		if f, ok := pt.FieldByName("ErrorMessage"); ok && f.Type == reflect.TypeFor[*string]() {
			set += fmt.Sprintf("%s.ErrorMessage = msg\n", p)
		}
		if topicLevel && g.track {
			set += "nt++\n"
		}
		if n == "" {
			b.WriteString(set)
			if len(fields) == 0 {
				n = "1"
			}
		} else {
			fmt.Fprintf(b, "if %s == 0 { // nothing below carries the denial\n%s%s = 1\n}\n", n, set, n)
		}
	}
	for _, name := range minusOneFields {
		if f, ok := pt.FieldByName(name); ok && f.Type.Kind() >= reflect.Int && f.Type.Kind() <= reflect.Int64 {
			fmt.Fprintf(b, "%s.%s = -1\n", p, name)
		}
	}
	for i := range pt.NumField() {
		pf := pt.Field(i)
		if pf.Type != reflect.TypeFor[*string]() {
			continue
		}
		if df := defField(defs, pf.Name); df != nil {
			if m := reNullableFrom.FindStringSubmatch(df.typ); m != nil {
				v, _ := strconv.Atoi(m[1])
				fmt.Fprintf(b, "if %s.%s == nil && r.APIVersion < %d {\n%s.%s = strPtr(\"\") // not nullable before v%d\n}\n", p, pf.Name, v, p, pf.Name, v)
			}
		}
	}
	return n
}

// keyField returns the first field of et of type t, else of type *t.
func keyField(et, t reflect.Type) (name string, ptr bool) {
	for _, ptr := range []bool{false, true} {
		for j := range et.NumField() {
			ft := et.Field(j).Type
			if (!ptr && ft == t) || (ptr && ft.Kind() == reflect.Pointer && ft.Elem() == t) {
				return et.Field(j).Name, ptr
			}
		}
	}
	return "", false
}

// writeDenials writes fillDenial for the admitted request definition files.
func writeDenials(b *bytes.Buffer, dir string, files []string) {
	b.WriteString(`// fillDenial fills resp (the response kind of req, version set) with the
// denial of the whole request and returns the main error code: topic
// levels get topicCode, other levels the API's own authorization error (see
// denySpecs in internal/schemagen).
func fillDenial(req kmsg.Request, resp kmsg.Response, r *Request, topicCode int16) int16 {
const (
groupCode   = ErrCodeGroupAuthorizationFailed
clusterCode = ErrCodeClusterAuthorizationFailed
txnCode     = ErrCodeTransactionalIDAuthorizationFailed
)
msg := strPtr(denyMessage)
_ = msg
switch q := req.(type) {
`)
	for _, file := range append([]string{"00_produce"}, files...) {
		key, _ := strconv.Atoi(strings.SplitN(file, "_", 2)[0])
		spec, ok := denySpecs[int16(key)]
		if !ok {
			panic(fmt.Sprintf("no denial spec for key %d", key))
		}
		req := kmsg.RequestForKey(int16(key))
		qt := reflect.TypeOf(req).Elem()
		pt := reflect.TypeOf(req.ResponseKind()).Elem()
		_, defs := parse(section(dir, file, "Response"))
		g := &denyGen{b: &bytes.Buffer{}, key: int16(key), spec: spec, track: spec.subject != topicCode || spec.cond != ""}
		g.level(0, "q", qt, "p", pt, defs, false, true, false)
		fmt.Fprintf(b, "case *kmsg.%s:\n", qt.Name())
		fmt.Fprintf(b, "p := resp.(*kmsg.%s)\n", pt.Name())
		fmt.Fprintf(b, "subject := int16(%s)\n", spec.subject)
		if spec.cond != "" {
			fmt.Fprintf(b, "if %s {\nsubject = %s\n}\n", spec.cond, spec.condCode)
		}
		if g.topic && g.track {
			b.WriteString("nt := 0\n")
		}
		b.Write(g.b.Bytes())
		if g.topic && g.track {
			b.WriteString("if nt > 0 {\nreturn topicCode\n}\n")
		}
		b.WriteString("return subject\n")
	}
	b.WriteString("}\n_ = r\nreturn clusterCode\n}\n")
}
