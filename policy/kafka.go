package policy

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// KafkaRule is one entry of rules.kafka, validated. APIKeys is the set of
// API keys the rule admits (from role or apiKey); empty admits every key.
type KafkaRule struct {
	Role       string  `json:"role,omitempty"`
	APIKey     string  `json:"apiKey,omitempty"`
	APIKeys    []int16 `json:"apiKeys,omitempty"`
	APIVersion *int16  `json:"apiVersion,omitempty"`
	ClientID   string  `json:"clientID,omitempty"`
	Topic      string  `json:"topic,omitempty"`
}

// Kafka API keys used by roles.
const (
	KafkaProduce         int16 = 0
	KafkaFetch           int16 = 1
	KafkaListOffsets     int16 = 2
	KafkaMetadata        int16 = 3
	KafkaOffsetCommit    int16 = 8
	KafkaOffsetFetch     int16 = 9
	KafkaFindCoordinator int16 = 10
	KafkaJoinGroup       int16 = 11
	KafkaHeartbeat       int16 = 12
	KafkaLeaveGroup      int16 = 13
	KafkaSyncGroup       int16 = 14
	KafkaAPIVersions     int16 = 18
)

// KafkaRoleAPIKeys returns the API keys a role admits, as Cilium defines
// the roles: produce = Produce, Metadata, ApiVersions; consume = Fetch,
// ListOffsets, Metadata, OffsetCommit, OffsetFetch, FindCoordinator,
// JoinGroup, Heartbeat, LeaveGroup, SyncGroup, ApiVersions.
func KafkaRoleAPIKeys(role string) ([]int16, bool) {
	switch strings.ToLower(role) {
	case "produce":
		return []int16{KafkaProduce, KafkaMetadata, KafkaAPIVersions}, true
	case "consume":
		return []int16{KafkaFetch, KafkaListOffsets, KafkaMetadata, KafkaOffsetCommit, KafkaOffsetFetch,
			KafkaFindCoordinator, KafkaJoinGroup, KafkaHeartbeat, KafkaLeaveGroup, KafkaSyncGroup, KafkaAPIVersions}, true
	}
	return nil, false
}

// kafkaAPINames lists Kafka API names by key (lowercase, as Cilium's
// apiKey field spells them): every key Kafka 4.x defines. Index = API key.
var kafkaAPINames = [...]string{
	"produce", "fetch", "listoffsets", "metadata", "leaderandisr", "stopreplica", "updatemetadata",
	"controlledshutdown", "offsetcommit", "offsetfetch", "findcoordinator", "joingroup", "heartbeat",
	"leavegroup", "syncgroup", "describegroups", "listgroups", "saslhandshake", "apiversions",
	"createtopics", "deletetopics", "deleterecords", "initproducerid", "offsetforleaderepoch",
	"addpartitionstotxn", "addoffsetstotxn", "endtxn", "writetxnmarkers", "txnoffsetcommit",
	"describeacls", "createacls", "deleteacls", "describeconfigs", "alterconfigs",
	"alterreplicalogdirs", "describelogdirs", "saslauthenticate", "createpartitions",
	"createdelegationtoken", "renewdelegationtoken", "expiredelegationtoken",
	"describedelegationtoken", "deletegroups", "electleaders", "incrementalalterconfigs",
	"alterpartitionreassignments", "listpartitionreassignments", "offsetdelete", "describeclientquotas",
	"alterclientquotas", "describeuserscramcredentials", "alteruserscramcredentials", "vote",
	"beginquorumepoch", "endquorumepoch", "describequorum", "alterpartition", "updatefeatures",
	"envelope", "fetchsnapshot", "describecluster", "describeproducers", "brokerregistration",
	"brokerheartbeat", "unregisterbroker", "describetransactions", "listtransactions",
	"allocateproducerids", "consumergroupheartbeat", "consumergroupdescribe",
	"controllerregistration", "gettelemetrysubscriptions", "pushtelemetry", "assignreplicastodirs",
	"listconfigresources", "describetopicpartitions", "sharegroupheartbeat", "sharegroupdescribe",
	"sharefetch", "shareacknowledge", "addraftvoter", "removeraftvoter", "updateraftvoter",
	"initializesharegroupstate", "readsharegroupstate", "writesharegroupstate",
	"deletesharegroupstate", "readsharegroupstatesummary", "streamsgroupheartbeat",
	"streamsgroupdescribe", "describesharegroupoffsets", "altersharegroupoffsets",
	"deletesharegroupoffsets", "streamsgrouptopologydescriptionupdate", "unregistercontroller",
}

// KafkaAPIName returns the lowercase name of an API key, or "apikey-N".
func KafkaAPIName(key int16) string {
	if key >= 0 && int(key) < len(kafkaAPINames) {
		return kafkaAPINames[key]
	}
	return "apikey-" + strconv.Itoa(int(key))
}

// KafkaAPIKeyByName resolves an API name (case-insensitive), with the
// aliases older and newer Kafka and Cilium use: "offsets" (ListOffsets),
// "groupcoordinator" (FindCoordinator), "alterpartitionassignments" (key
// 45) and "listclientmetricsresources" (key 74, renamed ListConfigResources).
func KafkaAPIKeyByName(name string) (int16, bool) {
	l := strings.ToLower(strings.TrimSpace(name))
	switch l {
	case "offsets":
		return KafkaListOffsets, true
	case "groupcoordinator":
		return KafkaFindCoordinator, true
	case "alterpartitionassignments":
		return 45, true
	case "listclientmetricsresources":
		return 74, true
	}
	if i := slices.Index(kafkaAPINames[:], l); i >= 0 {
		return int16(i), true
	}
	return 0, false
}

// ParseKafkaAPIKey accepts a name (see KafkaAPIKeyByName) or a number.
func ParseKafkaAPIKey(s string) (int16, error) {
	if n, err := strconv.ParseInt(s, 10, 16); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("invalid Kafka API key %d", n)
		}
		return int16(n), nil
	}
	if k, ok := KafkaAPIKeyByName(s); ok {
		return k, nil
	}
	return 0, fmt.Errorf("unknown Kafka API key %q", s)
}

// validKafkaTopic applies Kafka's topic name rules.
func validKafkaTopic(t string) error {
	if len(t) > 249 {
		return fmt.Errorf("topic %q longer than 249 characters", t)
	}
	if t == "." || t == ".." {
		return fmt.Errorf("topic %q is not allowed", t)
	}
	for _, c := range t {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("topic %q: character %q not allowed (want [a-zA-Z0-9._-])", t, c)
		}
	}
	return nil
}

func compileKafkaRule(w wireKafkaRule, p fieldPath) (KafkaRule, error) {
	r := KafkaRule{Role: strings.ToLower(w.Role), APIKey: string(w.APIKey), ClientID: w.ClientID, Topic: w.Topic}
	if w.Role != "" && w.APIKey != "" {
		return r, p.errorf("role and apiKey are mutually exclusive")
	}
	if w.Role != "" {
		keys, ok := KafkaRoleAPIKeys(w.Role)
		if !ok {
			return r, p.child("role").errorf("unknown role %q (want produce or consume)", w.Role)
		}
		r.APIKeys = keys
	}
	if w.APIKey != "" {
		k, err := ParseKafkaAPIKey(string(w.APIKey))
		if err != nil {
			return r, p.child("apiKey").errorf("%w", err)
		}
		r.APIKeys = []int16{k}
	}
	if w.APIVersion != "" {
		v, err := strconv.ParseInt(string(w.APIVersion), 10, 16)
		if err != nil || v < 0 {
			return r, p.child("apiVersion").errorf("invalid API version %q: want a non-negative integer", w.APIVersion)
		}
		v16 := int16(v)
		r.APIVersion = &v16
	}
	if w.Topic != "" {
		if err := validKafkaTopic(w.Topic); err != nil {
			return r, p.child("topic").errorf("%w", err)
		}
	}
	return r, nil
}

// KafkaRequest is what the Kafka matcher needs of a request.
type KafkaRequest struct {
	APIKey     int16
	APIVersion int16
	ClientID   string
	// Topics named by the request; empty for APIs that carry none.
	Topics []string
}

// matchesHeader checks everything but the topic.
func (r *KafkaRule) matchesHeader(key, version int16, clientID string) bool {
	if len(r.APIKeys) > 0 && !slices.Contains(r.APIKeys, key) {
		return false
	}
	if r.APIVersion != nil && *r.APIVersion != version {
		return false
	}
	if r.ClientID != "" && r.ClientID != clientID {
		return false
	}
	return true
}

// MatchesTopic reports whether the rule admits the request for one topic
// ("" for requests without topics, which match on the remaining fields).
func (r *KafkaRule) MatchesTopic(key, version int16, clientID, topic string) bool {
	if !r.matchesHeader(key, version, clientID) {
		return false
	}
	return topic == "" || r.Topic == "" || r.Topic == topic
}
