package events

import "time"

// NodeRegistered adds a Docker host to the pool. Hostname is its Docker API
// address; Slots is the number of slots per execution type.
type NodeRegistered struct {
	NodeID         string         `json:"node_id"`
	Hostname       string         `json:"hostname"`
	Slots          map[string]int `json:"slots"`
	RunnerProvider string         `json:"runner_provider"`
	// Mounts maps storage mount names to host paths on this node; they
	// override the broker-wide ones and may add names.
	Mounts       map[string]string `json:"mounts,omitempty"`
	RegisteredAt time.Time         `json:"registered_at"`
}

// EventType implements Payload.
func (*NodeRegistered) EventType() Type { return TypeNodeRegistered }

// AggregateID implements Payload.
func (p *NodeRegistered) AggregateID() string { return p.NodeID }

// NodeUp reports that a node's Docker API answers again; it becomes available.
type NodeUp struct {
	NodeID string    `json:"node_id"`
	At     time.Time `json:"at"`
}

// EventType implements Payload.
func (*NodeUp) EventType() Type { return TypeNodeUp }

// AggregateID implements Payload.
func (p *NodeUp) AggregateID() string { return p.NodeID }

// NodeUnstable reports a first failed probe: no new work goes to the node.
type NodeUnstable struct {
	NodeID string    `json:"node_id"`
	Error  string    `json:"error"`
	At     time.Time `json:"at"`
}

// EventType implements Payload.
func (*NodeUnstable) EventType() Type { return TypeNodeUnstable }

// AggregateID implements Payload.
func (p *NodeUnstable) AggregateID() string { return p.NodeID }

// NodeDown reports that a node failed its probes for longer than the grace
// period; it is unavailable.
type NodeDown struct {
	NodeID string    `json:"node_id"`
	Error  string    `json:"error"`
	At     time.Time `json:"at"`
}

// EventType implements Payload.
func (*NodeDown) EventType() Type { return TypeNodeDown }

// AggregateID implements Payload.
func (p *NodeDown) AggregateID() string { return p.NodeID }
