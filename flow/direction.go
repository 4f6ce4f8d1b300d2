package flow

import "fmt"

// Direction of traffic relative to the endpoint whose policy applies:
// Ingress arrives at it, Egress leaves it. The numbers are the datapath's.
type Direction uint8

// Directions.
const (
	Ingress Direction = iota
	Egress
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// MarshalText renders "ingress" or "egress".
func (d Direction) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText parses "ingress" or "egress".
func (d *Direction) UnmarshalText(b []byte) error {
	switch string(b) {
	case "ingress":
		*d = Ingress
	case "egress":
		*d = Egress
	default:
		return fmt.Errorf("unknown direction %q", b)
	}
	return nil
}
