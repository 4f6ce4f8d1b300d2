package admin

import (
	"bytes"
	"encoding/json"
	"fmt"

	// Types that appear in config dumps of an l7gate-configured Envoy
	// register themselves with the protobuf registry when imported; the
	// decoder needs them to expand Any fields.
	_ "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Dump is a decoded /config_dump: each entry of "configs" as a message,
// or kept as raw JSON when it holds a type this binary does not know (an
// extension l7gate does not use).
type Dump struct {
	Configs []Config
}

// Config is one entry of a config dump.
type Config struct {
	TypeURL string
	Message proto.Message   // nil when undecoded
	Raw     json.RawMessage // the entry as Envoy sent it
	Err     error           // why it was not decoded
}

// Decode parses the JSON Envoy's /config_dump returns.
func Decode(data []byte) (*Dump, error) {
	var top struct {
		Configs []json.RawMessage `json:"configs"`
	}
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("decode config dump: %w", err)
	}
	d := &Dump{}
	opts := protojson.UnmarshalOptions{DiscardUnknown: true}
	for _, raw := range top.Configs {
		var head struct {
			Type string `json:"@type"`
		}
		_ = json.Unmarshal(raw, &head)
		c := Config{TypeURL: head.Type, Raw: raw}
		var a anypb.Any
		if err := opts.Unmarshal(raw, &a); err != nil {
			c.Err = err
		} else if m, err := a.UnmarshalNew(); err != nil {
			c.Err = err
		} else {
			c.Message = m
		}
		d.Configs = append(d.Configs, c)
	}
	return d, nil
}

// MarshalJSON renders the dump as Envoy does (snake_case field names),
// decoded entries normalised through the protos, undecoded ones verbatim.
func (d *Dump) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(`{"configs":[`)
	for i, c := range d.Configs {
		if i > 0 {
			b.WriteByte(',')
		}
		if c.Message == nil {
			b.Write(c.Raw)
			continue
		}
		a, err := anypb.New(c.Message)
		if err != nil {
			return nil, err
		}
		out, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(a)
		if err != nil {
			return nil, err
		}
		b.Write(out)
	}
	b.WriteString(`]}`)
	// Re-indent: protojson's spacing is deliberately unstable.
	var v any
	if err := json.Unmarshal(b.Bytes(), &v); err != nil {
		return nil, err
	}
	return json.Marshal(v)
}
