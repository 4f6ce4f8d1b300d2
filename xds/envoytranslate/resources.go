package envoytranslate

import (
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// ByType returns the resources keyed by xDS type URL, the shape
// go-control-plane's cache.NewSnapshot takes.
func (r *Resources) ByType() map[resource.Type][]types.Resource {
	out := map[resource.Type][]types.Resource{
		resource.ListenerType: make([]types.Resource, 0, len(r.Listeners)),
		resource.RouteType:    make([]types.Resource, 0, len(r.Routes)),
		resource.ClusterType:  make([]types.Resource, 0, len(r.Clusters)),
	}
	for _, l := range r.Listeners {
		out[resource.ListenerType] = append(out[resource.ListenerType], l)
	}
	for _, rc := range r.Routes {
		out[resource.RouteType] = append(out[resource.RouteType], rc)
	}
	for _, c := range r.Clusters {
		out[resource.ClusterType] = append(out[resource.ClusterType], c)
	}
	return out
}
