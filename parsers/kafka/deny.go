package kafka

import (
	"encoding/binary"
	"fmt"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// denyMessage is the error message put in responses that carry one. It
// names no rule: policy details stay in the access log, not with the client.
const denyMessage = "denied by network policy"

// AppendDenial appends to dst a complete response frame (size prefix,
// response header, body) that denies the whole request r at r's version
// with r's correlation id, and returns it with the main error code used.
//
// Every topic in a topic-bearing request gets TOPIC_AUTHORIZATION_FAILED
// (29), per partition where the response is per partition. Requests with no
// topic get their API's own authorization error: GROUP_AUTHORIZATION_FAILED
// (30) for group APIs (and OffsetFetch of all topics),
// TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53) for transaction APIs,
// CLUSTER_AUTHORIZATION_FAILED (31) for cluster APIs, and
// SASL_AUTHENTICATION_FAILED (58) for SASLAuthenticate.
//
// r must come from Decoder.Decode with its frame still unchanged.
// Unsupported requests cannot be answered: ErrUnsupported.
func AppendDenial(dst []byte, r *Request) ([]byte, int16, error) {
	return appendDenial(dst, r, ErrCodeTopicAuthorizationFailed)
}

// appendDenial is AppendDenial with topicCode as the code of topics and
// partitions (UNKNOWN_TOPIC_ID for IDs the proxy cannot name, so that
// clients refresh their metadata).
func appendDenial(dst []byte, r *Request, topicCode int16) ([]byte, int16, error) {
	if !r.Supported {
		return dst, 0, fmt.Errorf("deny %s v%d: %w", r.APIName(), r.APIVersion, ErrUnsupported)
	}
	if r.partitions > maxDenialPartitions {
		// Answering would cost far more memory than the request did.
		return dst, 0, fmt.Errorf("deny produce of %d partitions: %w", r.partitions, ErrUnsupported)
	}
	msg := r.msg
	if msg == nil {
		msg = kmsg.RequestForKey(r.APIKey)
		if msg == nil || r.APIVersion > msg.MaxVersion() {
			if r.APIKey != 18 {
				return dst, 0, fmt.Errorf("deny %s v%d: %w", r.APIName(), r.APIVersion, ErrUnsupported)
			}
			// ApiVersions newer than we know: answer as brokers do,
			// with a v0 response.
			resp := kmsg.NewPtrApiVersionsResponse()
			resp.ErrorCode = ErrCodeClusterAuthorizationFailed
			return appendResponseFrame(dst, r.CorrelationID, false, resp), resp.ErrorCode, nil
		}
		msg.SetVersion(r.APIVersion)
		if err := msg.(kmsg.UnsafeReadFrom).UnsafeReadFrom(r.body); err != nil {
			return dst, 0, fmt.Errorf("decode %s v%d: %w", r.APIName(), r.APIVersion, ErrMalformed)
		}
	}
	resp := msg.ResponseKind()
	resp.SetVersion(r.APIVersion)
	code := fillDenial(msg, resp, r, topicCode)
	flexHeader := resp.IsFlexible() && r.APIKey != 18 // ApiVersions responses always use header v0
	return appendResponseFrame(dst, r.CorrelationID, flexHeader, resp), code, nil
}

// maxDenialPartitions bounds the Produce requests answered with a
// synthesized denial; larger ones (only seen from hostile clients) close the
// connection instead.
const maxDenialPartitions = 1 << 16

func appendResponseFrame(dst []byte, corr int32, flexHeader bool, resp kmsg.Response) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint32(dst, uint32(corr))
	if flexHeader {
		dst = append(dst, 0) // no tagged fields
	}
	dst = resp.AppendTo(dst)
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst
}

func strPtr(s string) *string { return &s }
