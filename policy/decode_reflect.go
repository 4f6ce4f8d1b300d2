package policy

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// valueDecoder is implemented by wire types that decode themselves from the
// generic JSON value (numbers as json.Number).
type valueDecoder interface {
	decodeValue(p fieldPath, v any) error
}

// lenient is implemented by wire structs whose unknown fields are ignored
// (metadata and Pod specs carry many fields l7gate does not need). Policy
// structs are strict: a misspelt field is an error, never silently dropped.
type lenient interface{ lenient() }

var (
	valueDecoderType = reflect.TypeFor[valueDecoder]()
	lenientType      = reflect.TypeFor[lenient]()
)

// structDecoder decodes generic JSON values (map[string]any, []any,
// json.Number, string, bool, nil) into typed wire structs, collecting every
// error with its field path.
type structDecoder struct {
	errs []error
}

func (d *structDecoder) fail(err error) { d.errs = append(d.errs, err) }

func describe(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return fmt.Sprintf("%T", v)
}

func (d *structDecoder) decode(p fieldPath, src any, dst reflect.Value) {
	if dst.CanAddr() && dst.Addr().Type().Implements(valueDecoderType) {
		if src == nil {
			return
		}
		if err := dst.Addr().Interface().(valueDecoder).decodeValue(p, src); err != nil {
			d.fail(err)
		}
		return
	}
	switch dst.Kind() {
	case reflect.Pointer:
		if src == nil {
			return
		}
		nv := reflect.New(dst.Type().Elem())
		d.decode(p, src, nv.Elem())
		dst.Set(nv)
	case reflect.Interface:
		if src != nil {
			dst.Set(reflect.ValueOf(src))
		}
	case reflect.Struct:
		if src == nil {
			return
		}
		m, ok := src.(map[string]any)
		if !ok {
			d.fail(p.errorf("expected an object, got %s", describe(src)))
			return
		}
		d.decodeStruct(p, m, dst)
	case reflect.Slice:
		if src == nil {
			return
		}
		arr, ok := src.([]any)
		if !ok {
			d.fail(p.errorf("expected a list, got %s", describe(src)))
			return
		}
		sl := reflect.MakeSlice(dst.Type(), len(arr), len(arr))
		for i, e := range arr {
			d.decode(p.index(i), e, sl.Index(i))
		}
		dst.Set(sl)
	case reflect.Map:
		if src == nil {
			return
		}
		m, ok := src.(map[string]any)
		if !ok {
			d.fail(p.errorf("expected an object, got %s", describe(src)))
			return
		}
		mv := reflect.MakeMapWithSize(dst.Type(), len(m))
		keys := sortedKeys(m)
		for _, k := range keys {
			ev := reflect.New(dst.Type().Elem()).Elem()
			d.decode(p.key(k), m[k], ev)
			mv.SetMapIndex(reflect.ValueOf(k).Convert(dst.Type().Key()), ev)
		}
		dst.Set(mv)
	case reflect.String:
		switch s := src.(type) {
		case string:
			dst.SetString(s)
		case nil:
		default:
			d.fail(p.errorf("expected a string, got %s", describe(src)))
		}
	case reflect.Bool:
		switch b := src.(type) {
		case bool:
			dst.SetBool(b)
		case nil:
		default:
			d.fail(p.errorf("expected true or false, got %s", describe(src)))
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := src.(json.Number)
		if !ok {
			if src != nil {
				d.fail(p.errorf("expected an integer, got %s", describe(src)))
			}
			return
		}
		i, err := strconv.ParseInt(string(n), 10, dst.Type().Bits())
		if err != nil {
			d.fail(p.errorf("expected an integer fitting %d bits, got %s", dst.Type().Bits(), n))
			return
		}
		dst.SetInt(i)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := src.(json.Number)
		if !ok {
			if src != nil {
				d.fail(p.errorf("expected an integer, got %s", describe(src)))
			}
			return
		}
		u, err := strconv.ParseUint(string(n), 10, dst.Type().Bits())
		if err != nil {
			d.fail(p.errorf("expected a non-negative integer fitting %d bits, got %s", dst.Type().Bits(), n))
			return
		}
		dst.SetUint(u)
	case reflect.Float64:
		n, ok := src.(json.Number)
		if !ok {
			d.fail(p.errorf("expected a number, got %s", describe(src)))
			return
		}
		f, err := n.Float64()
		if err != nil || math.IsNaN(f) {
			d.fail(p.errorf("invalid number %s", n))
			return
		}
		dst.SetFloat(f)
	default:
		d.fail(p.errorf("internal: cannot decode into %s", dst.Type()))
	}
}

func (d *structDecoder) decodeStruct(p fieldPath, m map[string]any, dst reflect.Value) {
	t := dst.Type()
	fields := map[string]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		fields[name] = i
	}
	isLenient := reflect.PointerTo(t).Implements(lenientType)
	for _, k := range sortedKeys(m) {
		i, ok := fields[k]
		if !ok {
			if !isLenient {
				d.fail(p.child(k).errorf("unknown field%s", unknownFieldHint(t, k, fields)))
			}
			continue
		}
		d.decode(p.child(k), m[k], dst.Field(i))
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// labelSelectorType gets its own hint: a key beside matchLabels is
// usually a label indented one level too little.
var labelSelectorType = reflect.TypeFor[LabelSelector]()

// unknownFieldHint suggests what a misspelt field may have meant: a field
// that differs only in case ("Role" → "role": keys are case-sensitive), a
// longer field it abbreviates ("auth" → "authentication"), or one a
// letter or two away.
func unknownFieldHint(t reflect.Type, k string, fields map[string]int) string {
	if t == labelSelectorType {
		return fmt.Sprintf(" (a label? labels go under matchLabels: {%s: ...})", k)
	}
	names := sortedKeys(fields)
	for _, f := range names {
		if strings.EqualFold(f, k) {
			return fmt.Sprintf(" (did you mean %s? keys are case-sensitive)", f)
		}
	}
	for _, f := range names {
		if len(k) >= 3 && strings.HasPrefix(f, k) {
			return fmt.Sprintf(" (did you mean %s?)", f)
		}
	}
	for _, f := range names {
		if editDistance(strings.ToLower(f), strings.ToLower(k)) <= 2 && len(k) > 3 {
			return fmt.Sprintf(" (did you mean %s?)", f)
		}
	}
	return ""
}

// editDistance is the Levenshtein distance of two short strings.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
