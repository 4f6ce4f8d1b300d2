package scale

import (
	"bufio"
	"bytes"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// requestKey is one series of apiserver_request_total.
type requestKey struct {
	Verb, Group, Resource, Subresource, Code string
}

func (k requestKey) String() string {
	r := k.Resource
	if k.Subresource != "" {
		r += "/" + k.Subresource
	}
	return fmt.Sprintf("%s %s %s", k.Verb, r, k.Code)
}

// requestTotals is apiserver_request_total summed over the labels not in
// requestKey.
type requestTotals map[requestKey]float64

// parseRequestTotals reads apiserver_request_total from a Prometheus text
// exposition.
func parseRequestTotals(text []byte) (requestTotals, error) {
	return parseSeries(text, "apiserver_request_total", func(l map[string]string) requestKey {
		return requestKey{Verb: l["verb"], Group: l["group"], Resource: l["resource"], Subresource: l["subresource"], Code: l["code"]}
	})
}

// parseWatchTotals reads what the API server sent to watchers, by
// resource: apiserver_watch_events_total (Verb "events") and the sum of
// apiserver_watch_events_sizes (Verb "bytes").
func parseWatchTotals(text []byte) (requestTotals, error) {
	events, err := parseSeries(text, "apiserver_watch_events_total", func(l map[string]string) requestKey {
		return requestKey{Verb: "events", Group: l["group"], Resource: l["resource"]}
	})
	if err != nil {
		return nil, err
	}
	sizes, err := parseSeries(text, "apiserver_watch_events_sizes_sum", func(l map[string]string) requestKey {
		return requestKey{Verb: "bytes", Group: l["group"], Resource: l["resource"]}
	})
	maps.Copy(events, sizes)
	return events, err
}

// parseSeries sums the series of one metric by key.
func parseSeries(text []byte, metric string, key func(labels map[string]string) requestKey) (requestTotals, error) {
	out := requestTotals{}
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	name := metric + "{"
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		end := strings.LastIndexByte(line, '}')
		if end < 0 {
			return nil, fmt.Errorf("parse metrics: %q", line)
		}
		labels, err := parseLabels(line[len(name):end])
		if err != nil {
			return nil, err
		}
		val, err := strconv.ParseFloat(strings.TrimSpace(strings.Fields(line[end+1:])[0]), 64)
		if err != nil {
			return nil, fmt.Errorf("parse metrics: %q: %w", line, err)
		}
		out[key(labels)] += val
	}
	return out, sc.Err()
}

// parseLabels reads `a="x",b="y"` (with Prometheus escapes).
func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for len(s) > 0 {
		eq := strings.IndexByte(s, '=')
		if eq < 0 || eq+1 >= len(s) || s[eq+1] != '"' {
			return nil, fmt.Errorf("parse labels: %q", s)
		}
		key := strings.TrimSpace(s[:eq])
		var val strings.Builder
		i := eq + 2
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					val.WriteByte('\n')
				default:
					val.WriteByte(s[i])
				}
				continue
			}
			val.WriteByte(s[i])
		}
		if i >= len(s) {
			return nil, fmt.Errorf("parse labels: unterminated value in %q", s)
		}
		out[key] = val.String()
		s = strings.TrimPrefix(s[i+1:], ",")
	}
	return out, nil
}

// sub returns t - before, without zero entries.
func (t requestTotals) sub(before requestTotals) requestTotals {
	out := requestTotals{}
	for k, v := range t {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// sum adds the series for which keep is true.
func (t requestTotals) sum(keep func(requestKey) bool) float64 {
	var n float64
	for k, v := range t {
		if keep(k) {
			n += v
		}
	}
	return n
}

// sortedKeys lists the series, largest first.
func (t requestTotals) sortedKeys() []requestKey {
	keys := slices.Collect(maps.Keys(t))
	slices.SortFunc(keys, func(a, b requestKey) int {
		if t[a] != t[b] {
			if t[a] > t[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a.String(), b.String())
	})
	return keys
}

func isWriteVerb(v string) bool {
	switch v {
	case "PATCH", "APPLY", "UPDATE", "PUT", "POST", "CREATE", "DELETE":
		return true
	}
	return false
}
