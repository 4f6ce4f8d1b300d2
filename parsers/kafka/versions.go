package kafka

import (
	"fmt"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// nameOnlyMaxVersion is the newest version of an API that still addresses
// topics by name. Clients that learn a topic ID on one connection (Metadata
// to any broker) and use it on another (Produce/Fetch to the leader) would
// otherwise send IDs the second connection cannot resolve.
func nameOnlyMaxVersion(key int16) int16 {
	switch key {
	case 0, 1: // Produce, Fetch: v13 switched to topic IDs
		return 12
	case 8, 9: // OffsetCommit, OffsetFetch: v10
		return 9
	case 28: // TxnOffsetCommit: v6
		return 5
	}
	return -1
}

// clampAPIVersions re-encodes an ApiVersions response body (version v) so
// that the advertised versions never exceed what this package decodes:
// keys it does not admit are removed unless keepUnknown, and when
// !allowTopicIDs the topic-ID versions are hidden. ok is false when the
// body cannot be decoded (for example a broker's v0 UNSUPPORTED_VERSION
// answer to a newer request); the caller then forwards it unchanged.
func clampAPIVersions(dst []byte, v int16, body []byte, keepUnknown, allowTopicIDs bool) ([]byte, bool, error) {
	resp := kmsg.NewPtrApiVersionsResponse()
	resp.SetVersion(v)
	if !responseSchema(18).validate(body, v) || resp.ReadFrom(body) != nil {
		return dst, false, fmt.Errorf("decode apiversions response v%d: %w", v, ErrMalformed)
	}
	if resp.ErrorCode != 0 {
		return dst, false, nil
	}
	keys := resp.ApiKeys[:0]
	for _, k := range resp.ApiKeys {
		orig := k
		ours := AdmittedMaxVersion(k.ApiKey)
		if ours < 0 {
			if keepUnknown {
				keys = append(keys, k)
			}
			continue
		}
		if !allowTopicIDs {
			if n := nameOnlyMaxVersion(k.ApiKey); n >= 0 && n < ours {
				ours = n
			}
		}
		if k.MaxVersion > ours {
			k.MaxVersion = ours
		}
		if k.ApiKey == 17 && k.MinVersion < 1 && k.MaxVersion >= 1 {
			k.MinVersion = 1 // SASLHandshake v0 is not admitted
		}
		if k.MinVersion > k.MaxVersion {
			if keepUnknown {
				keys = append(keys, orig)
			}
			continue
		}
		keys = append(keys, k)
	}
	resp.ApiKeys = keys
	return resp.AppendTo(dst), true, nil
}
