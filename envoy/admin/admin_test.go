package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l7gate/l7gate/internal/testutil"
)

// adminServer serves the recorded dump on a Unix socket as Envoy's admin
// does, and records the query it got.
func adminServer(t *testing.T, dump []byte, gotResource *string) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "admin.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/config_dump" {
			http.NotFound(w, r)
			return
		}
		*gotResource = r.URL.Query().Get("resource")
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(dump)
	}))
	srv.Listener.Close()
	srv.Listener = lis
	srv.Start()
	t.Cleanup(srv.Close)
	return "unix:" + sock
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	testutil.Golden(t, path, got)
}

// TestConfigDump fetches a recorded /config_dump over a Unix socket,
// decodes it and checks the summary (text and JSON) against testdata.
func TestConfigDump(t *testing.T) {
	dump, err := os.ReadFile("testdata/config_dump.json")
	if err != nil {
		t.Fatal(err)
	}
	var resource string
	c, err := NewClient(adminServer(t, dump, &resource))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	body, err := c.ConfigDump(ctx, "dynamic_listeners")
	if err != nil {
		t.Fatal(err)
	}
	if resource != "dynamic_listeners" {
		t.Errorf("resource query = %q", resource)
	}
	d, err := Decode(body)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Configs) != 7 {
		t.Fatalf("%d configs, want 7", len(d.Configs))
	}
	s := Summarize(d)
	if len(s.Undecoded) != 1 || !strings.HasSuffix(s.Undecoded[0], "FutureConfigDump") {
		t.Errorf("undecoded = %v, want the one unknown type", s.Undecoded)
	}
	var text bytes.Buffer
	if err := s.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "summary.txt", text.Bytes())
	js, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, "summary.json", append(js, '\n'))

	// The decoded dump re-encodes to the same JSON values Envoy sent.
	re, err := d.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var a, b any
	if err := json.Unmarshal(re, &a); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(dump, &b); err != nil {
		t.Fatal(err)
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	if !bytes.Equal(ja, jb) {
		t.Error("decoded dump does not re-encode to the recorded one")
	}
}

func TestConfigDumpErrors(t *testing.T) {
	if _, err := NewClient("tcp://x"); err == nil {
		t.Error("NewClient accepted tcp://")
	}
	c, err := NewClient("unix:" + filepath.Join(t.TempDir(), "missing.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ConfigDump(context.Background(), ""); err == nil {
		t.Error("ConfigDump on a missing socket succeeded")
	}
	if _, err := Decode([]byte("not json")); err == nil {
		t.Error("Decode accepted garbage")
	}
}

// TestResourceEntries: with ?resource= Envoy returns the per-resource
// messages (e.g. ListenersConfigDump.DynamicListener) as the configs.
func TestResourceEntries(t *testing.T) {
	dump, err := os.ReadFile("testdata/config_dump.json")
	if err != nil {
		t.Fatal(err)
	}
	var full struct {
		Configs []map[string]json.RawMessage `json:"configs"`
	}
	if err := json.Unmarshal(dump, &full); err != nil {
		t.Fatal(err)
	}
	var entries []any
	for _, c := range full.Configs {
		for key, typ := range map[string]string{
			"dynamic_listeners":     "type.googleapis.com/envoy.admin.v3.ListenersConfigDump.DynamicListener",
			"dynamic_route_configs": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump.DynamicRouteConfig",
		} {
			var list []map[string]any
			if raw, ok := c[key]; ok {
				if err := json.Unmarshal(raw, &list); err != nil {
					t.Fatal(err)
				}
			}
			for _, e := range list {
				e["@type"] = typ
				entries = append(entries, e)
			}
		}
	}
	body, err := json.Marshal(map[string]any{"configs": entries})
	if err != nil {
		t.Fatal(err)
	}
	d, err := Decode(body)
	if err != nil {
		t.Fatal(err)
	}
	s := Summarize(d)
	whole, _ := Decode(dump)
	w := Summarize(whole)
	if len(s.Undecoded) != 0 || len(s.Listeners) != len(w.Listeners) || len(s.Routes) != len(w.Routes) || len(s.Listeners) == 0 {
		t.Errorf("per-resource summary: %d listeners, %d routes, undecoded %v; whole dump: %d, %d",
			len(s.Listeners), len(s.Routes), s.Undecoded, len(w.Listeners), len(w.Routes))
	}
}
