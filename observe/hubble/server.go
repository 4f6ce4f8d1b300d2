package hubble

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/observe"
	flowpb "github.com/l7gate/l7gate/proto/hubble/flowpb"
	observerpb "github.com/l7gate/l7gate/proto/hubble/observerpb"
	relaypb "github.com/l7gate/l7gate/proto/hubble/relaypb"
)

// HealthService is the gRPC health service name `hubble status` checks.
const HealthService = "hubble.server.Observer"

// ServerConfig configures the Observer server.
type ServerConfig struct {
	Pipeline *observe.Pipeline
	// Node is this node's name (GetNodes, response node_name).
	Node string
	// Address is where the server listens, for GetNodes.
	Address string
	// TLS: the server uses TLS (GetNodes reports it).
	TLS       bool
	Options   Options
	StartedAt time.Time
	Logger    *slog.Logger
	// now is the clock (tests).
	now func() time.Time
}

// Server implements Hubble's Observer service over a pipeline.
type Server struct {
	observerpb.UnimplementedObserverServer
	cfg ServerConfig
}

// NewServer returns the server; Register puts it on a grpc.Server.
func NewServer(cfg ServerConfig) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if cfg.StartedAt.IsZero() {
		cfg.StartedAt = cfg.now()
	}
	if cfg.Options.Emitter == "" {
		cfg.Options.Emitter = "l7gate"
	}
	return &Server{cfg: cfg}
}

// Register registers the Observer service and gRPC health (reporting
// hubble.server.Observer and the server as SERVING) on gs.
func (s *Server) Register(gs *grpc.Server) {
	observerpb.RegisterObserverServer(gs, s)
	h := health.NewServer()
	h.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	h.SetServingStatus(HealthService, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, h)
}

// Serve serves the Observer API on ln until ctx ends.
func Serve(ctx context.Context, ln net.Listener, s *Server, opts ...grpc.ServerOption) error {
	gs := grpc.NewServer(opts...)
	s.Register(gs)
	stop := context.AfterFunc(ctx, gs.Stop) // followers never end their streams
	defer stop()
	if err := gs.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("observer api: %w", err)
	}
	return nil
}

// GetFlows streams flows: the last (or, with first, the oldest) `number`
// kept flows that pass the filters and lie in [since, until], then, with
// follow, every new one. A follower too slow for the flow rate gets
// LostEvents saying how many it missed.
func (s *Server) GetFlows(req *observerpb.GetFlowsRequest, stream observerpb.Observer_GetFlowsServer) error {
	filter, err := NewFilter(req.GetWhitelist(), req.GetBlacklist())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	mask, err := newFieldMask(req.GetFieldMask())
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	var since, until time.Time
	if req.GetSince() != nil {
		if err := req.GetSince().CheckValid(); err != nil {
			return status.Errorf(codes.InvalidArgument, "since: %v", err)
		}
		since = req.GetSince().AsTime()
	}
	if req.GetUntil() != nil {
		if err := req.GetUntil().CheckValid(); err != nil {
			return status.Errorf(codes.InvalidArgument, "until: %v", err)
		}
		until = req.GetUntil().AsTime()
	}
	if !since.IsZero() && until.IsZero() && !req.GetFollow() {
		until = s.cfg.now()
	}
	if !until.IsZero() && req.GetFollow() {
		return status.Error(codes.InvalidArgument, "until and follow are mutually exclusive")
	}
	inRange := func(ev observe.Event) bool {
		t := ev.Record.Time
		return (since.IsZero() || !t.Before(since)) && (until.IsZero() || !t.After(until))
	}
	p := s.cfg.Pipeline
	var sub *observe.Subscription
	var kept []observe.Event
	if req.GetFollow() {
		sub, kept = p.Subscribe(0)
		defer p.Unsubscribe(sub)
	} else {
		kept, _ = p.Snapshot()
	}
	// The history: with follow and neither number nor since, none.
	number := req.GetNumber()
	history := !req.GetFollow() || number > 0 || !since.IsZero()
	if history {
		var out []*flowpb.Flow
		if req.GetFirst() {
			for _, ev := range kept {
				if number > 0 && uint64(len(out)) >= number {
					break
				}
				if !inRange(ev) {
					continue
				}
				if f := Convert(ev, s.cfg.Options); filter.Match(f) {
					out = append(out, f)
				}
			}
		} else {
			for _, ev := range slices.Backward(kept) {
				if number > 0 && uint64(len(out)) >= number {
					break
				}
				if !inRange(ev) {
					continue
				}
				if f := Convert(ev, s.cfg.Options); filter.Match(f) {
					out = append(out, f)
				}
			}
			slices.Reverse(out)
		}
		for _, f := range out {
			if err := s.sendFlow(stream, mask.apply(f)); err != nil {
				return err
			}
		}
	}
	if sub == nil {
		return nil
	}
	lastQueueLost := p.Stats().LostQueue
	ctx := stream.Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-sub.C():
			if n := sub.TakeLost(); n > 0 {
				if err := s.sendLost(stream, flowpb.LostEventSource_HUBBLE_RING_BUFFER, n); err != nil {
					return err
				}
			}
			if q := p.Stats().LostQueue; q > lastQueueLost {
				if err := s.sendLost(stream, flowpb.LostEventSource_OBSERVER_EVENTS_QUEUE, q-lastQueueLost); err != nil {
					return err
				}
				lastQueueLost = q
			}
			if !since.IsZero() && ev.Record.Time.Before(since) {
				continue
			}
			if f := Convert(ev, s.cfg.Options); filter.Match(f) {
				if err := s.sendFlow(stream, mask.apply(f)); err != nil {
					return err
				}
			}
		}
	}
}

func (s *Server) sendFlow(stream observerpb.Observer_GetFlowsServer, f *flowpb.Flow) error {
	return stream.Send(&observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: f},
		NodeName: s.cfg.Node, Time: f.GetTime()})
}

func (s *Server) sendLost(stream observerpb.Observer_GetFlowsServer, src flowpb.LostEventSource, n uint64) error {
	now := timestamppb.New(s.cfg.now())
	return stream.Send(&observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_LostEvents{
		LostEvents: &flowpb.LostEvent{Source: src, NumEventsLost: n, Last: now}}, NodeName: s.cfg.Node, Time: now})
}

// ServerStatus reports the ring's fill, the flows seen and the rate over
// the last minute.
func (s *Server) ServerStatus(context.Context, *observerpb.ServerStatusRequest) (*observerpb.ServerStatusResponse, error) {
	st := s.cfg.Pipeline.Stats()
	return &observerpb.ServerStatusResponse{NumFlows: uint64(st.Kept), MaxFlows: uint64(st.Capacity), SeenFlows: st.Processed,
		UptimeNs: uint64(s.cfg.now().Sub(s.cfg.StartedAt)), NumConnectedNodes: wrapperspb.UInt32(1), NumUnavailableNodes: wrapperspb.UInt32(0),
		Version: s.cfg.Options.Emitter + " " + s.cfg.Options.Version, FlowsRate: s.rate()}, nil
}

// rate is the flows per second kept over the last minute.
func (s *Server) rate() float64 {
	evs, _ := s.cfg.Pipeline.Snapshot()
	cutoff := s.cfg.now().Add(-time.Minute)
	n := 0
	for _, ev := range slices.Backward(evs) {
		if ev.Record.Time.Before(cutoff) {
			break
		}
		n++
	}
	return float64(n) / 60
}

// GetNodes reports this node (an agent is a single-node Hubble server).
func (s *Server) GetNodes(context.Context, *observerpb.GetNodesRequest) (*observerpb.GetNodesResponse, error) {
	st := s.cfg.Pipeline.Stats()
	return &observerpb.GetNodesResponse{Nodes: []*observerpb.Node{{Name: s.cfg.Node, Version: s.cfg.Options.Emitter + " " + s.cfg.Options.Version,
		Address: s.cfg.Address, State: relaypb.NodeState_NODE_CONNECTED, Tls: &observerpb.TLS{Enabled: s.cfg.TLS},
		UptimeNs: uint64(s.cfg.now().Sub(s.cfg.StartedAt)), NumFlows: uint64(st.Kept), MaxFlows: uint64(st.Capacity), SeenFlows: st.Processed}}}, nil
}

// GetNamespaces lists the namespaces of the flows kept, sorted.
func (s *Server) GetNamespaces(context.Context, *observerpb.GetNamespacesRequest) (*observerpb.GetNamespacesResponse, error) {
	evs, _ := s.cfg.Pipeline.Snapshot()
	seen := map[string]bool{}
	for _, ev := range evs {
		for _, e := range []string{nsOf(ev.Record.SrcEndpoint), nsOf(ev.Record.DstEndpoint)} {
			if e != "" {
				seen[e] = true
			}
		}
	}
	out := &observerpb.GetNamespacesResponse{}
	for _, ns := range slices.Sorted(maps.Keys(seen)) {
		out.Namespaces = append(out.Namespaces, &observerpb.Namespace{Namespace: ns})
	}
	return out, nil
}

func nsOf(e *flow.Endpoint) string {
	if e == nil {
		return ""
	}
	return e.Namespace
}
