package client

import (
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
)

// The delta ADS messages, encoded here instead of with go-control-plane's
// generated types: those link Envoy's config protos (core/v3 and what it
// imports), whose descriptors every proxy built at start, for the five
// fields the client uses. The field numbers are
// envoy/service/discovery/v3/discovery.proto's; wire_test.go checks both
// directions against go-control-plane's types.

// adsDeltaMethod is the delta ADS stream (AggregatedDiscoveryService).
const adsDeltaMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

// deltaRequest is the part of a DeltaDiscoveryRequest the client sends.
type deltaRequest struct {
	nodeID          string            // 1: node (config.core.v3.Node: 1 id)
	typeURL         string            // 2: type_url
	subscribe       []string          // 3: resource_names_subscribe
	initialVersions map[string]string // 5: initial_resource_versions
	responseNonce   string            // 6: response_nonce
	// 7: error_detail (google.rpc.Status: 1 code, 2 message) when errorMessage is set
	errorCode    int32
	errorMessage string
}

func (r *deltaRequest) marshal() []byte {
	var b []byte
	str := func(b []byte, num protowire.Number, s string) []byte {
		if s == "" {
			return b
		}
		b = protowire.AppendTag(b, num, protowire.BytesType)
		return protowire.AppendString(b, s)
	}
	if r.nodeID != "" {
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, str(nil, 1, r.nodeID))
	}
	b = str(b, 2, r.typeURL)
	for _, n := range r.subscribe {
		b = protowire.AppendTag(b, 3, protowire.BytesType)
		b = protowire.AppendString(b, n)
	}
	for _, k := range slices.Sorted(mapKeys(r.initialVersions)) {
		// a map entry: 1 key, 2 value (both written, as protobuf-go does)
		var e []byte
		e = protowire.AppendTag(e, 1, protowire.BytesType)
		e = protowire.AppendString(e, k)
		e = protowire.AppendTag(e, 2, protowire.BytesType)
		e = protowire.AppendString(e, r.initialVersions[k])
		b = protowire.AppendTag(b, 5, protowire.BytesType)
		b = protowire.AppendBytes(b, e)
	}
	b = str(b, 6, r.responseNonce)
	if r.errorMessage != "" || r.errorCode != 0 {
		var s []byte
		if r.errorCode != 0 {
			s = protowire.AppendTag(s, 1, protowire.VarintType)
			s = protowire.AppendVarint(s, uint64(int64(r.errorCode)))
		}
		s = str(s, 2, r.errorMessage)
		b = protowire.AppendTag(b, 7, protowire.BytesType)
		b = protowire.AppendBytes(b, s)
	}
	return b
}

func mapKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// deltaResponse is the part of a DeltaDiscoveryResponse the client reads;
// the other fields are skipped, as unknown fields are.
type deltaResponse struct {
	typeURL          string     // 4: type_url
	nonce            string     // 5: nonce
	resources        []resource // 2: resources
	removedResources []string   // 6: removed_resources
}

// resource is the part of a discovery.v3.Resource the client reads.
type resource struct {
	name    string     // 3: name
	version string     // 1: version
	any     *anypb.Any // 2: resource (nil when absent)
}

// errMalformed: the bytes are no valid DeltaDiscoveryResponse.
var errMalformed = errors.New("malformed delta discovery response")

// fields walks a message's fields; each calls f with the field's number,
// and its bytes when it is length-delimited (other wire types are skipped,
// as protobuf-go keeps a known field of another wire type as unknown).
func fields(b []byte, f func(num protowire.Number, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("%w: %w", errMalformed, protowire.ParseError(n))
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("%w: %w", errMalformed, protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return fmt.Errorf("%w: %w", errMalformed, protowire.ParseError(n))
		}
		b = b[n:]
		if err := f(num, v); err != nil {
			return err
		}
	}
	return nil
}

// utf8String is a proto3 string field's value: invalid UTF-8 is an error,
// as protobuf-go's decoder makes it.
func utf8String(v []byte) (string, error) {
	if !utf8.Valid(v) {
		return "", fmt.Errorf("%w: a string field holds invalid UTF-8", errMalformed)
	}
	return string(v), nil
}

func (r *deltaResponse) unmarshal(b []byte) error {
	*r = deltaResponse{}
	return fields(b, func(num protowire.Number, v []byte) (err error) {
		switch num {
		case 2:
			var res resource
			if err := res.unmarshal(v); err != nil {
				return err
			}
			r.resources = append(r.resources, res)
		case 4:
			r.typeURL, err = utf8String(v)
		case 5:
			r.nonce, err = utf8String(v)
		case 6:
			var s string
			if s, err = utf8String(v); err == nil {
				r.removedResources = append(r.removedResources, s)
			}
		}
		return err
	})
}

func (r *resource) unmarshal(b []byte) error {
	return fields(b, func(num protowire.Number, v []byte) (err error) {
		switch num {
		case 1:
			r.version, err = utf8String(v)
		case 2:
			if r.any == nil {
				r.any = &anypb.Any{} // a repeated message field merges: its fields are scalars, the last wins
			}
			err = fields(v, func(num protowire.Number, v []byte) (err error) {
				switch num {
				case 1:
					r.any.TypeUrl, err = utf8String(v)
				case 2:
					r.any.Value = slices.Clone(v)
				}
				return err
			})
		case 3:
			r.name, err = utf8String(v)
		}
		return err
	})
}

// wireCodec encodes deltaRequests and decodes deltaResponses for the
// stream (gRPC content-subtype "proto", as the generated client's).
type wireCodec struct{}

func (wireCodec) Name() string { return "proto" }

func (wireCodec) Marshal(v any) ([]byte, error) {
	r, ok := v.(*deltaRequest)
	if !ok {
		return nil, fmt.Errorf("xds client: cannot encode %T", v)
	}
	return r.marshal(), nil
}

func (wireCodec) Unmarshal(b []byte, v any) error {
	r, ok := v.(*deltaResponse)
	if !ok {
		return fmt.Errorf("xds client: cannot decode into %T", v)
	}
	return r.unmarshal(b)
}
