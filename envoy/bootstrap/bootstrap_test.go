package bootstrap

import (
	"errors"
	"path/filepath"
	"testing"

	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"

	"github.com/l7gate/l7gate/internal/testutil"
)

// TestGolden renders the bootstrap of node "node-a" with default sockets
// as YAML and JSON and compares with testdata (-update rewrites).
func TestGolden(t *testing.T) {
	for _, c := range []struct {
		file string
		cfg  Config
	}{
		{"bootstrap.yaml", Config{Node: "node-a"}},
		{"bootstrap.json", Config{Node: "node-a"}},
		{"bootstrap-delta.yaml", Config{Node: "node-b", Delta: true, XDSSocket: "/var/run/l7gate/xds.sock", AccessLogSocket: "/var/run/l7gate/als.sock", AdminSocket: "/var/run/l7gate/admin.sock"}},
	} {
		t.Run(c.file, func(t *testing.T) {
			b, err := Generate(c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.ValidateAll(); err != nil {
				t.Fatal(err)
			}
			// ValidateAll does not look inside Any.
			for _, cl := range b.GetStaticResources().GetClusters() {
				for _, a := range cl.GetTypedExtensionProtocolOptions() {
					var o upstreamhttpv3.HttpProtocolOptions
					if err := a.UnmarshalTo(&o); err != nil {
						t.Fatal(err)
					}
					if err := o.ValidateAll(); err != nil {
						t.Fatal(err)
					}
				}
			}
			got, err := Marshal(b, filepath.Ext(c.file)[1:])
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", c.file)
			testutil.Golden(t, path, got)
		})
	}
}

func TestNoNode(t *testing.T) {
	if _, err := Generate(Config{}); !errors.Is(err, ErrNoNode) {
		t.Fatalf("err = %v, want ErrNoNode", err)
	}
}
