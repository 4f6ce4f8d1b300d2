package server

import "maps"

// ResourceVersions returns, for the consumer with node id id and the
// resource type typeURL, the version of each resource it should have (the
// latest rendered) and of each resource in the last set it ACKed; nil
// when there is none. A resource with equal versions in both is in force
// at the consumer. The agent uses it to confine a NACK or an ACK timeout
// to the endpoints whose resources are not in force.
func (s *Server[S]) ResourceVersions(id, typeURL string) (desired, acked map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.consumers[id]
	if c == nil {
		return nil, nil
	}
	ts := c.types[typeURL]
	if ts == nil {
		return nil, nil
	}
	if ts.desired != nil {
		desired = maps.Clone(ts.desired.versions)
	}
	if ts.good != nil {
		acked = maps.Clone(ts.good.versions)
	}
	return desired, acked
}
