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
	code := fillDenial(msg, resp, r)
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

// fillDenial fills resp (the response kind of req, version set) with the
// denial and returns the main error code.
func fillDenial(req kmsg.Request, resp kmsg.Response, r *Request) int16 {
	const (
		topicCode   = ErrCodeTopicAuthorizationFailed
		groupCode   = ErrCodeGroupAuthorizationFailed
		clusterCode = ErrCodeClusterAuthorizationFailed
		txnCode     = ErrCodeTransactionalIDAuthorizationFailed
	)
	msg := strPtr(denyMessage)
	switch q := req.(type) {
	case *kmsg.ProduceRequest:
		p := resp.(*kmsg.ProduceResponse)
		for _, t := range q.Topics {
			rt := kmsg.NewProduceResponseTopic()
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			for _, part := range t.Partitions {
				rp := kmsg.NewProduceResponseTopicPartition()
				rp.Partition = part.Partition
				rp.ErrorCode = topicCode
				rp.BaseOffset = -1
				rp.ErrorMessage = msg
				rt.Partitions = append(rt.Partitions, rp)
			}
			p.Topics = append(p.Topics, rt)
		}
		return topicCode

	case *kmsg.FetchRequest:
		p := resp.(*kmsg.FetchResponse)
		p.SessionID = 0 // the denied request ends any fetch session
		for _, t := range q.Topics {
			rt := kmsg.NewFetchResponseTopic()
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			for _, part := range t.Partitions {
				rp := kmsg.NewFetchResponseTopicPartition()
				rp.Partition = part.Partition
				rp.ErrorCode = topicCode
				rp.HighWatermark = -1
				rt.Partitions = append(rt.Partitions, rp)
			}
			p.Topics = append(p.Topics, rt)
		}
		if len(q.Topics) == 0 && r.APIVersion >= 7 {
			p.ErrorCode = topicCode
		}
		return topicCode

	case *kmsg.ListOffsetsRequest:
		p := resp.(*kmsg.ListOffsetsResponse)
		for _, t := range q.Topics {
			rt := kmsg.NewListOffsetsResponseTopic()
			rt.Topic = t.Topic
			for _, part := range t.Partitions {
				rp := kmsg.NewListOffsetsResponseTopicPartition()
				rp.Partition = part.Partition
				rp.ErrorCode = topicCode
				rt.Partitions = append(rt.Partitions, rp)
			}
			p.Topics = append(p.Topics, rt)
		}
		return topicCode

	case *kmsg.MetadataRequest:
		p := resp.(*kmsg.MetadataResponse)
		p.ControllerID = -1
		for _, t := range q.Topics {
			rt := kmsg.NewMetadataResponseTopic()
			rt.ErrorCode = topicCode
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			if rt.Topic == nil && r.APIVersion < 12 {
				rt.Topic = strPtr("") // names are not nullable before v12
			}
			p.Topics = append(p.Topics, rt)
		}
		return topicCode

	case *kmsg.OffsetCommitRequest:
		p := resp.(*kmsg.OffsetCommitResponse)
		for _, t := range q.Topics {
			rt := kmsg.NewOffsetCommitResponseTopic()
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			for _, part := range t.Partitions {
				rp := kmsg.NewOffsetCommitResponseTopicPartition()
				rp.Partition = part.Partition
				rp.ErrorCode = topicCode
				rt.Partitions = append(rt.Partitions, rp)
			}
			p.Topics = append(p.Topics, rt)
		}
		if len(q.Topics) == 0 {
			return groupCode
		}
		return topicCode

	case *kmsg.OffsetFetchRequest:
		p := resp.(*kmsg.OffsetFetchResponse)
		code := int16(topicCode)
		if r.APIVersion < 8 {
			if q.Topics == nil && r.APIVersion >= 2 {
				p.ErrorCode = groupCode
				return groupCode
			}
			for _, t := range q.Topics {
				rt := kmsg.NewOffsetFetchResponseTopic()
				rt.Topic = t.Topic
				for _, part := range t.Partitions {
					rp := kmsg.NewOffsetFetchResponseTopicPartition()
					rp.Partition = part
					rp.Offset = -1
					rp.ErrorCode = topicCode
					rt.Partitions = append(rt.Partitions, rp)
				}
				p.Topics = append(p.Topics, rt)
			}
			return topicCode
		}
		for _, g := range q.Groups {
			rg := kmsg.NewOffsetFetchResponseGroup()
			rg.Group = g.Group
			if g.Topics == nil {
				rg.ErrorCode = groupCode
				code = groupCode
			}
			for _, t := range g.Topics {
				rt := kmsg.NewOffsetFetchResponseGroupTopic()
				rt.Topic, rt.TopicID = t.Topic, t.TopicID
				for _, part := range t.Partitions {
					rp := kmsg.NewOffsetFetchResponseGroupTopicPartition()
					rp.Partition = part
					rp.Offset = -1
					rp.LeaderEpoch = -1
					rp.ErrorCode = topicCode
					rt.Partitions = append(rt.Partitions, rp)
				}
				rg.Topics = append(rg.Topics, rt)
			}
			p.Groups = append(p.Groups, rg)
		}
		return code

	case *kmsg.CreateTopicsRequest:
		p := resp.(*kmsg.CreateTopicsResponse)
		for _, t := range q.Topics {
			rt := kmsg.NewCreateTopicsResponseTopic()
			rt.Topic = t.Topic
			rt.ErrorCode = topicCode
			rt.ErrorMessage = msg
			rt.NumPartitions = -1
			rt.ReplicationFactor = -1
			p.Topics = append(p.Topics, rt)
		}
		return topicCode

	case *kmsg.DeleteTopicsRequest:
		p := resp.(*kmsg.DeleteTopicsResponse)
		for _, name := range q.TopicNames {
			rt := kmsg.NewDeleteTopicsResponseTopic()
			rt.Topic = strPtr(name)
			rt.ErrorCode = topicCode
			rt.ErrorMessage = msg
			p.Topics = append(p.Topics, rt)
		}
		for _, t := range q.Topics {
			rt := kmsg.NewDeleteTopicsResponseTopic()
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			rt.ErrorCode = topicCode
			rt.ErrorMessage = msg
			p.Topics = append(p.Topics, rt)
		}
		return topicCode

	case *kmsg.DeleteRecordsRequest:
		p := resp.(*kmsg.DeleteRecordsResponse)
		for _, t := range q.Topics {
			rt := kmsg.NewDeleteRecordsResponseTopic()
			rt.Topic = t.Topic
			for _, part := range t.Partitions {
				rp := kmsg.NewDeleteRecordsResponseTopicPartition()
				rp.Partition = part.Partition
				rp.LowWatermark = -1
				rp.ErrorCode = topicCode
				rt.Partitions = append(rt.Partitions, rp)
			}
			p.Topics = append(p.Topics, rt)
		}
		return topicCode

	case *kmsg.OffsetForLeaderEpochRequest:
		p := resp.(*kmsg.OffsetForLeaderEpochResponse)
		for _, t := range q.Topics {
			rt := kmsg.NewOffsetForLeaderEpochResponseTopic()
			rt.Topic = t.Topic
			for _, part := range t.Partitions {
				rp := kmsg.NewOffsetForLeaderEpochResponseTopicPartition()
				rp.Partition = part.Partition
				rp.ErrorCode = topicCode
				rp.LeaderEpoch = -1
				rp.EndOffset = -1
				rt.Partitions = append(rt.Partitions, rp)
			}
			p.Topics = append(p.Topics, rt)
		}
		return topicCode

	case *kmsg.TxnOffsetCommitRequest:
		p := resp.(*kmsg.TxnOffsetCommitResponse)
		for _, t := range q.Topics {
			rt := kmsg.NewTxnOffsetCommitResponseTopic()
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			for _, part := range t.Partitions {
				rp := kmsg.NewTxnOffsetCommitResponseTopicPartition()
				rp.Partition = part.Partition
				rp.ErrorCode = topicCode
				rt.Partitions = append(rt.Partitions, rp)
			}
			p.Topics = append(p.Topics, rt)
		}
		return topicCode

	case *kmsg.AddPartitionsToTxnRequest:
		p := resp.(*kmsg.AddPartitionsToTxnResponse)
		for _, t := range q.Topics {
			rt := kmsg.NewAddPartitionsToTxnResponseTopic()
			rt.Topic = t.Topic
			for _, part := range t.Partitions {
				rp := kmsg.NewAddPartitionsToTxnResponseTopicPartition()
				rp.Partition = part
				rp.ErrorCode = topicCode
				rt.Partitions = append(rt.Partitions, rp)
			}
			p.Topics = append(p.Topics, rt)
		}
		for _, tx := range q.Transactions {
			rx := kmsg.NewAddPartitionsToTxnResponseTransaction()
			rx.TransactionalID = tx.TransactionalID
			for _, t := range tx.Topics {
				rt := kmsg.NewAddPartitionsToTxnResponseTransactionTopic()
				rt.Topic = t.Topic
				for _, part := range t.Partitions {
					rp := kmsg.NewAddPartitionsToTxnResponseTransactionTopicPartition()
					rp.Partition = part
					rp.ErrorCode = topicCode
					rt.Partitions = append(rt.Partitions, rp)
				}
				rx.Topics = append(rx.Topics, rt)
			}
			p.Transactions = append(p.Transactions, rx)
		}
		return topicCode

	case *kmsg.DescribeProducersRequest:
		p := resp.(*kmsg.DescribeProducersResponse)
		for _, t := range q.Topics {
			rt := kmsg.NewDescribeProducersResponseTopic()
			rt.Topic = t.Topic
			for _, part := range t.Partitions {
				rp := kmsg.NewDescribeProducersResponseTopicPartition()
				rp.Partition = part
				rp.ErrorCode = topicCode
				rp.ErrorMessage = msg
				rt.Partitions = append(rt.Partitions, rp)
			}
			p.Topics = append(p.Topics, rt)
		}
		return topicCode

	case *kmsg.CreatePartitionsRequest:
		p := resp.(*kmsg.CreatePartitionsResponse)
		for _, t := range q.Topics {
			rt := kmsg.NewCreatePartitionsResponseTopic()
			rt.Topic = t.Topic
			rt.ErrorCode = topicCode
			rt.ErrorMessage = msg
			p.Topics = append(p.Topics, rt)
		}
		return topicCode

	case *kmsg.OffsetDeleteRequest:
		p := resp.(*kmsg.OffsetDeleteResponse)
		for _, t := range q.Topics {
			rt := kmsg.NewOffsetDeleteResponseTopic()
			rt.Topic = t.Topic
			for _, part := range t.Partitions {
				rp := kmsg.NewOffsetDeleteResponseTopicPartition()
				rp.Partition = part.Partition
				rp.ErrorCode = topicCode
				rt.Partitions = append(rt.Partitions, rp)
			}
			p.Topics = append(p.Topics, rt)
		}
		if len(q.Topics) == 0 {
			p.ErrorCode = groupCode
			return groupCode
		}
		return topicCode

	case *kmsg.DescribeTopicPartitionsRequest:
		p := resp.(*kmsg.DescribeTopicPartitionsResponse)
		for _, t := range q.Topics {
			rt := kmsg.NewDescribeTopicPartitionsResponseTopic()
			rt.ErrorCode = topicCode
			rt.Topic = strPtr(t.Topic)
			p.Topics = append(p.Topics, rt)
		}
		return topicCode

	case *kmsg.FindCoordinatorRequest:
		p := resp.(*kmsg.FindCoordinatorResponse)
		code := int16(groupCode)
		if q.CoordinatorType == 1 {
			code = txnCode
		}
		if r.APIVersion < 4 {
			p.ErrorCode = code
			p.ErrorMessage = msg
			p.NodeID = -1
			p.Port = -1
			return code
		}
		for _, k := range q.CoordinatorKeys {
			c := kmsg.NewFindCoordinatorResponseCoordinator()
			c.Key = k
			c.NodeID = -1
			c.Port = -1
			c.ErrorCode = code
			c.ErrorMessage = msg
			p.Coordinators = append(p.Coordinators, c)
		}
		return code

	case *kmsg.JoinGroupRequest:
		p := resp.(*kmsg.JoinGroupResponse)
		p.ErrorCode = groupCode
		p.Generation = -1
		p.MemberID = q.MemberID
		if r.APIVersion < 7 {
			p.Protocol = strPtr("") // not nullable before v7
		}
		return groupCode
	case *kmsg.HeartbeatRequest:
		resp.(*kmsg.HeartbeatResponse).ErrorCode = groupCode
		return groupCode
	case *kmsg.LeaveGroupRequest:
		resp.(*kmsg.LeaveGroupResponse).ErrorCode = groupCode
		return groupCode
	case *kmsg.SyncGroupRequest:
		resp.(*kmsg.SyncGroupResponse).ErrorCode = groupCode
		return groupCode
	case *kmsg.DescribeGroupsRequest:
		p := resp.(*kmsg.DescribeGroupsResponse)
		for _, g := range q.Groups {
			rg := kmsg.NewDescribeGroupsResponseGroup()
			rg.Group = g
			rg.ErrorCode = groupCode
			rg.ErrorMessage = msg
			p.Groups = append(p.Groups, rg)
		}
		return groupCode
	case *kmsg.DeleteGroupsRequest:
		p := resp.(*kmsg.DeleteGroupsResponse)
		for _, g := range q.Groups {
			rg := kmsg.NewDeleteGroupsResponseGroup()
			rg.Group = g
			rg.ErrorCode = groupCode
			rg.ErrorMessage = msg
			p.Groups = append(p.Groups, rg)
		}
		return groupCode
	case *kmsg.ListGroupsRequest:
		resp.(*kmsg.ListGroupsResponse).ErrorCode = clusterCode
		return clusterCode
	case *kmsg.SASLHandshakeRequest:
		// No authorization error exists for the handshake; offering no
		// mechanism makes the client give up.
		resp.(*kmsg.SASLHandshakeResponse).ErrorCode = 33 // UNSUPPORTED_SASL_MECHANISM
		return 33
	case *kmsg.SASLAuthenticateRequest:
		p := resp.(*kmsg.SASLAuthenticateResponse)
		p.ErrorCode = ErrCodeSASLAuthenticationFailed
		p.ErrorMessage = msg
		return ErrCodeSASLAuthenticationFailed
	case *kmsg.ApiVersionsRequest:
		resp.(*kmsg.ApiVersionsResponse).ErrorCode = clusterCode
		return clusterCode
	case *kmsg.InitProducerIDRequest:
		p := resp.(*kmsg.InitProducerIDResponse)
		p.ProducerID = -1
		p.ProducerEpoch = -1
		p.ErrorCode = clusterCode
		if q.TransactionalID != nil {
			p.ErrorCode = txnCode
		}
		return p.ErrorCode
	case *kmsg.AddOffsetsToTxnRequest:
		resp.(*kmsg.AddOffsetsToTxnResponse).ErrorCode = txnCode
		return txnCode
	case *kmsg.EndTxnRequest:
		p := resp.(*kmsg.EndTxnResponse)
		p.ErrorCode = txnCode
		p.ProducerID = -1
		p.ProducerEpoch = -1
		return txnCode
	case *kmsg.DescribeClusterRequest:
		p := resp.(*kmsg.DescribeClusterResponse)
		p.ErrorCode = clusterCode
		p.ErrorMessage = msg
		p.ControllerID = -1
		return clusterCode
	}
	return clusterCode
}
