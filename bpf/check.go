package bpf

// CheckPolicy reports whether SyncPolicy would accept p's entries, without
// touching the maps: the error it would fail with (ErrInvalidEntry) for
// this endpoint alone. Callers use it to confine a rejected entry to its
// endpoint instead of failing every endpoint's sync.
func (d *Datapath) CheckPolicy(p EndpointPolicy) error {
	_, err := compilePolicy([]EndpointPolicy{p})
	return err
}
