package kafka

import (
	"strings"

	"github.com/l7gate/l7gate/policy"
)

// API names are policy's (the lowercase names CiliumNetworkPolicy
// `rules.kafka[].apiKey` uses); these wrappers keep this package's
// contract: "unknown" for keys Kafka does not define, and names only (no
// numbers) in APIKeyByName.

// APIKeyName returns the lowercase name of a Kafka API key, or "unknown".
func APIKeyName(key int16) string {
	name := policy.KafkaAPIName(key)
	if strings.HasPrefix(name, "apikey-") {
		return "unknown"
	}
	return name
}

// APIKeyByName returns the API key for an API name (case-insensitive;
// "offsets" is accepted for ListOffsets).
func APIKeyByName(name string) (int16, bool) {
	return policy.KafkaAPIKeyByName(name)
}
