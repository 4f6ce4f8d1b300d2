package dns

import (
	"errors"
	"testing"

	mdns "github.com/miekg/dns"
)

// FuzzParseQuery: arbitrary bytes give a query or a named error; a parsed
// query answers (Deny packs) and its response parses back.
func FuzzParseQuery(f *testing.F) {
	q := new(mdns.Msg)
	q.SetQuestion("a.example.com.", mdns.TypeA)
	b, _ := q.Pack()
	f.Add(b)
	q.SetEdns0(1232, false)
	b, _ = q.Pack()
	f.Add(b)
	f.Add(append(header(1, 0x0100, 1), 0xC0, 0x0C, 0, 1, 0, 1))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, qq, err := ParseQuery(data)
		if err != nil {
			for _, e := range []error{ErrMalformed, ErrTooLarge, ErrNotQuery, ErrQuestions, ErrName} {
				if errors.Is(err, e) {
					return
				}
			}
			t.Fatalf("unnamed error %v", err)
		}
		if qq.Name == "" {
			t.Fatal("query without a name")
		}
		d, perr := Deny(m, mdns.RcodeRefused).Pack()
		if perr != nil {
			return // miekg cannot always re-pack what it unpacked (odd EDNS options)
		}
		if _, err := ParseResponse(d, m); err != nil {
			t.Fatalf("denial does not parse as the response: %v", err)
		}
	})
}

// FuzzResolve: Resolve on any parsed response terminates and returns
// sorted, distinct addresses.
func FuzzResolve(f *testing.F) {
	r := new(mdns.Msg)
	r.SetQuestion("a.x.", mdns.TypeA)
	r.Response = true
	c, _ := mdns.NewRR("a.x. 5 IN CNAME a.x.")
	a, _ := mdns.NewRR("a.x. 5 IN A 198.18.0.1")
	r.Answer = []mdns.RR{c, a}
	b, _ := r.Pack()
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := unpack(data)
		if err != nil {
			return
		}
		ans := Resolve(m, "a.x.")
		for i := 1; i < len(ans.IPs); i++ {
			if ans.IPs[i-1].Compare(ans.IPs[i]) >= 0 {
				t.Fatalf("unsorted %v", ans.IPs)
			}
		}
	})
}
