// Package kafka is l7gate's Kafka protocol layer: framing, request decoding
// for every version up to current Kafka (flexible versions and topic IDs
// included), synthesized denials, and a streaming Filter the Go proxy runs
// between a client connection and its broker.
//
// It owns the wire protocol only. Policy (which request is allowed) comes
// in as a Decider; of l7gate it imports only policy, for the one table of
// Kafka API names that policies and access logs share.
//
// # Admitted APIs
//
// A request is "admitted" when this package decodes its body and can build
// a denial for it. Every version kmsg v1.15.0 knows (Kafka 4.x) is admitted
// for:
//
//   - topic-bearing: Produce (0), Fetch (1), ListOffsets (2), Metadata (3),
//     OffsetCommit (8), OffsetFetch (9, including the v8+ groups form),
//     CreateTopics (19), DeleteTopics (20), DeleteRecords (21),
//     OffsetForLeaderEpoch (23), AddPartitionsToTxn (24, including v4+
//     batches), TxnOffsetCommit (28), CreatePartitions (37), OffsetDelete
//     (47), DescribeProducers (61), DescribeTopicPartitions (75);
//   - group, transaction and connection APIs that clients need and whose
//     subject policy can still judge (client id, group, transactional id):
//     FindCoordinator (10), JoinGroup (11), Heartbeat (12), LeaveGroup
//     (13), SyncGroup (14), DescribeGroups (15), ListGroups (16),
//     SASLHandshake (17, v1+ only: after v0 the stream carries unframed SASL
//     bytes), ApiVersions (18, any version), InitProducerID (22),
//     AddOffsetsToTxn (25), EndTxn (26), SASLAuthenticate (36),
//     DeleteGroups (42), DescribeCluster (60).
//
// Everything else (ACL, config, quota, delegation-token, KRaft-internal,
// share-group and KIP-848 consumer-group APIs, and versions newer than kmsg
// knows) is unsupported: denied by default by closing the connection after
// the responses already owed (a broker does the same for requests it cannot
// parse), or forwarded when Config.PassUnknown is set and the Decider
// allows it. ApiVersions responses are rewritten so clients are never
// offered an API or version this package would refuse, and, unless
// Config.AllowTopicIDs is set, so that topic-addressed versions (Produce
// and Fetch v13+, OffsetCommit/OffsetFetch v10+, TxnOffsetCommit v6+) are
// not offered either: clients learn topic IDs from Metadata on one
// connection and use them on another, where this proxy could not resolve
// them.
//
// # Topic IDs
//
// Topic IDs in requests are resolved through a TopicIDs table that learns
// name↔ID pairs from Metadata (v10+) and DescribeTopicPartitions responses
// seen on the connection (or on every connection sharing Config.TopicIDs).
// An ID the table cannot name is reported in Request.UnresolvedTopicIDs and
// the Filter denies the request without asking the Decider: an unknown ID
// never passes.
//
// # Denials and partial denial
//
// A denied request is answered by the proxy with that API's own response
// at the request's version and correlation id (see AppendDenial): every
// topic gets TOPIC_AUTHORIZATION_FAILED (29), per partition where the
// response is per partition; topic-less APIs get their own authorization
// error (30 group, 53 transactional id, 31 cluster, 58 SASL). The client
// sees an authorization error and the connection stays up.
//
// Partial denial: when a Decider denies some topics of a multi-topic
// request, the whole request is denied and every topic in it gets 29.
// Rewriting the request to the allowed topics and merging responses would
// let a client observe which topics exist behind the policy, doubles the
// per-request work on the hot Produce path, and splits one Kafka request
// into a partial success the client never asked for; a producer that mixes
// allowed and denied topics in one batch sees the denial and can split.
//
// Metadata is the exception, because it is how clients find brokers: a
// denied Metadata request (v4+) is forwarded with topic auto-creation
// turned off, and the broker's answer is filtered topic by topic with the
// Decider (called with a one-topic Metadata Request), as Kafka's own
// authorizer does: denied topics are left out of all-topic listings and
// answered with 29 when named, while brokers and allowed topics pass.
// Metadata v0-v3 (where the broker may auto-create topics) is denied whole.
//
// Produce with acks=0 expects no response, so denying it closes the
// connection (as a broker does on an acks=0 error).
//
// # Untrusted input
//
// Both directions are untrusted (the "broker" is whatever the client
// connected to). Frames are bounded (Config.MaxFrameSize, and the tighter
// Config.MaxControlRequestSize for requests decoded into structs), buffers
// grow with bytes received rather than sizes declared, and every message
// decoded with kmsg is first checked against its wire layout
// (schema_gen.go, converted from franz-go's protocol definitions), because
// kmsg trusts tagged-field counts and would spin for seconds on a 70-byte
// request. Produce, the hot path, has a hand-written allocation-free
// decoder that skips record batches. A synthesized denial that would be
// much larger than its request (Produce with more than 65536 partitions)
// closes the connection instead, and at most 16 MiB of denials may wait
// behind slow broker responses.
//
// TLS between client and broker cannot be inspected here: it arrives as
// malformed frames and the connection is closed.
//
// # Ordering
//
// Responses reach the client in request order: a denial the proxy makes
// itself is queued behind the broker responses still owed for earlier
// requests on the connection.
package kafka
