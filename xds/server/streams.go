package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
)

// streamKey: SotW and delta streams are numbered separately by
// go-control-plane.
type streamKey struct {
	delta bool
	id    int64
}

// stream is one open ADS stream and what it subscribed to and ACKed.
type stream struct {
	key   streamKey
	node  string // consumer id, once the first request named it
	types map[string]*subscription
}

// maxOutstanding bounds the responses remembered per stream and type
// while waiting for their ACK or NACK.
const maxOutstanding = 32

type subscription struct {
	// SotW: the version the stream last ACKed (or claimed on connect).
	ackedVersion string
	// delta: subscription and ACKed per-resource versions.
	wildcard bool
	names    map[string]bool
	acked    map[string]string
	// responses sent and not yet ACKed or NACKed, oldest first
	sent []sentResponse
}

type sentResponse struct {
	nonce     string
	version   string            // SotW version_info / delta system_version_info
	resources map[string]string // delta: resources sent, name → version
	removed   []string          // delta: removed resources
	names     []string          // for errors
}

func (sub *subscription) wants(name string) bool { return sub.wildcard || sub.names[name] }

func (sub *subscription) record(r sentResponse) {
	sub.sent = append(sub.sent, r)
	if len(sub.sent) > maxOutstanding {
		sub.sent = slices.Delete(sub.sent, 0, len(sub.sent)-maxOutstanding)
	}
}

// take returns the response a request's nonce answers and forgets it and
// every older one.
func (sub *subscription) take(nonce string) *sentResponse {
	for i := range sub.sent {
		if sub.sent[i].nonce == nonce {
			r := sub.sent[i]
			sub.sent = slices.Delete(sub.sent, 0, i+1)
			return &r
		}
	}
	return nil
}

// callbacks implements go-control-plane's server callbacks: they track
// streams, subscriptions, responses and ACK/NACKs.
type callbacks[S any] struct{ s *Server[S] }

var _ serverv3.Callbacks = callbacks[int]{}

func (cb callbacks[S]) open(key streamKey) error {
	s := cb.s
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams[key] = &stream{key: key, types: map[string]*subscription{}}
	return nil
}

func (cb callbacks[S]) closed(key streamKey) {
	s := cb.s
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[key]
	delete(s.streams, key)
	if st == nil || st.node == "" {
		return
	}
	if c := s.consumers[st.node]; c != nil {
		delete(c.streams, key)
		s.log.Info("xds consumer stream closed", "consumer", c.id, "delta", key.delta, "stream", key.id, "streams_left", len(c.streams))
		s.settle(c) // a lagging stream may have been the last one missing
		s.prune(c)
	}
}

func (cb callbacks[S]) OnStreamOpen(_ context.Context, id int64, _ string) error {
	return cb.open(streamKey{id: id})
}

func (cb callbacks[S]) OnStreamClosed(id int64, _ *core.Node) { cb.closed(streamKey{id: id}) }

func (cb callbacks[S]) OnDeltaStreamOpen(_ context.Context, id int64, _ string) error {
	return cb.open(streamKey{delta: true, id: id})
}

func (cb callbacks[S]) OnDeltaStreamClosed(id int64, _ *core.Node) {
	cb.closed(streamKey{delta: true, id: id})
}

func (cb callbacks[S]) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	s := cb.s
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[streamKey{id: id}]
	if st == nil {
		return errors.New("xds: request on unknown stream")
	}
	c, err := s.attach(st, req.GetNode())
	if err != nil {
		return err
	}
	t := req.GetTypeUrl()
	sub := st.types[t]
	if sub == nil {
		sub = &subscription{}
		st.types[t] = sub
	}
	if req.GetResponseNonce() == "" {
		// A (re)subscription; the version is what the consumer says it has.
		sub.ackedVersion = req.GetVersionInfo()
		return nil
	}
	sent := sub.take(req.GetResponseNonce())
	if sent == nil {
		return nil // answers a response we no longer track
	}
	if d := req.GetErrorDetail(); d != nil {
		if sent.names == nil {
			if ts := c.types[t]; ts != nil && ts.desired != nil && ts.desired.version == sent.version {
				sent.names = ts.desired.names
			}
		}
		s.onNACK(c, t, sent, d.GetMessage(), d.GetCode())
		return nil
	}
	sub.ackedVersion = sent.version
	s.onACK(c, t, sent.version)
	return nil
}

func (cb callbacks[S]) OnStreamResponse(_ context.Context, id int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	s := cb.s
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[streamKey{id: id}]
	if st == nil {
		return
	}
	sub := st.types[resp.GetTypeUrl()]
	if sub == nil {
		return
	}
	sub.record(sentResponse{nonce: resp.GetNonce(), version: resp.GetVersionInfo()})
}

func (cb callbacks[S]) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	s := cb.s
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[streamKey{delta: true, id: id}]
	if st == nil {
		return errors.New("xds: request on unknown stream")
	}
	c, err := s.attach(st, req.GetNode())
	if err != nil {
		return err
	}
	t := req.GetTypeUrl()
	sub := st.types[t]
	if sub == nil {
		// Same rules as go-control-plane: a first request naming nothing
		// is a (legacy) wildcard subscription.
		sub = &subscription{names: map[string]bool{}, acked: maps.Clone(req.GetInitialResourceVersions())}
		if sub.acked == nil {
			sub.acked = map[string]string{}
		}
		sub.wildcard = len(req.GetResourceNamesSubscribe()) == 0
		st.types[t] = sub
	}
	for _, n := range req.GetResourceNamesSubscribe() {
		if n == "*" {
			sub.wildcard = true
		} else {
			sub.names[n] = true
		}
	}
	for _, n := range req.GetResourceNamesUnsubscribe() {
		if n == "*" {
			sub.wildcard = false
		} else {
			delete(sub.names, n)
			delete(sub.acked, n)
		}
	}
	if req.GetResponseNonce() == "" {
		s.settle(c)
		return nil
	}
	sent := sub.take(req.GetResponseNonce())
	if sent == nil {
		return nil
	}
	if d := req.GetErrorDetail(); d != nil {
		s.onNACK(c, t, sent, d.GetMessage(), d.GetCode())
		return nil
	}
	for n, v := range sent.resources {
		sub.acked[n] = v
	}
	for _, n := range sent.removed {
		delete(sub.acked, n)
	}
	s.onACK(c, t, sent.version)
	return nil
}

func (cb callbacks[S]) OnStreamDeltaResponse(id int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
	s := cb.s
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[streamKey{delta: true, id: id}]
	if st == nil {
		return
	}
	sub := st.types[resp.GetTypeUrl()]
	if sub == nil {
		return
	}
	r := sentResponse{nonce: resp.GetNonce(), version: resp.GetSystemVersionInfo(), resources: map[string]string{}, removed: resp.GetRemovedResources()}
	for _, res := range resp.GetResources() {
		r.resources[res.GetName()] = res.GetVersion()
		r.names = append(r.names, res.GetName())
	}
	r.names = append(r.names, resp.GetRemovedResources()...)
	slices.Sort(r.names)
	sub.record(r)
}

func (cb callbacks[S]) OnFetchRequest(context.Context, *discovery.DiscoveryRequest) error {
	return errors.New("xds: REST fetch is not served")
}

func (cb callbacks[S]) OnFetchResponse(*discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {}

// slogAdapter feeds go-control-plane's logger into slog (debug and info
// are chatty per watch; both go to debug).
type slogAdapter struct{ l *slog.Logger }

func (a slogAdapter) Debugf(format string, args ...any) { a.l.Debug(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Infof(format string, args ...any)  { a.l.Debug(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Warnf(format string, args ...any)  { a.l.Warn(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Errorf(format string, args ...any) { a.l.Error(fmt.Sprintf(format, args...)) }
