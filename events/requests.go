package events

// Request events: what a client asked for. The fold accepts or rejects each
// one against the state before it, and the gateway answers with that
// verdict.

// CancelRequested asks to cancel a task: a waiting task is cancelled at
// once, a running one has its container stopped. A cancelled task is never
// retried.
type CancelRequested struct {
	TaskID string `json:"task_id"`
	Reason string `json:"reason,omitempty"`
}

// EventType implements Payload.
func (*CancelRequested) EventType() Type { return TypeTaskCancelRequested }

// AggregateID implements Payload.
func (p *CancelRequested) AggregateID() string { return p.TaskID }

// TaskCancelled is the scheduler's decision that a task whose cancel was
// requested is over: it was waiting, or its attempt has ended. A
// self-contained outcome event.
type TaskCancelled struct {
	TaskID  string `json:"task_id"`
	Attempt int    `json:"attempt"`
}

// EventType implements Payload.
func (*TaskCancelled) EventType() Type { return TypeTaskCancelled }

// AggregateID implements Payload.
func (p *TaskCancelled) AggregateID() string { return p.TaskID }

// KillRequested asks to kill the container of a running attempt (the seed's
// kill_container). The attempt then ends like any other, and the normal
// retry rules follow.
type KillRequested struct {
	TaskID  string `json:"task_id"`
	Attempt int    `json:"attempt"`
	// Cause is CauseTimeout when the scheduler stops an attempt that ran too
	// long (gracefully: SIGTERM, then SIGKILL); empty for a client's kill.
	Cause string `json:"cause,omitempty"`
}

// EventType implements Payload.
func (*KillRequested) EventType() Type { return TypeTaskKillRequested }

// AggregateID implements Payload.
func (p *KillRequested) AggregateID() string { return p.TaskID }

// RetryRequested asks to run a task that has ended again, with its retry
// count reset (the seed's force retry).
type RetryRequested struct {
	TaskID string `json:"task_id"`
}

// EventType implements Payload.
func (*RetryRequested) EventType() Type { return TypeTaskRetryRequested }

// AggregateID implements Payload.
func (p *RetryRequested) AggregateID() string { return p.TaskID }

// MarkedAsError acknowledges a failed task: failed → error. Reason is set
// when the broker did it on its own (a failed task past its timeout).
type MarkedAsError struct {
	TaskID string `json:"task_id"`
	Reason string `json:"reason,omitempty"`
}

// EventType implements Payload.
func (*MarkedAsError) EventType() Type { return TypeTaskMarkedAsError }

// AggregateID implements Payload.
func (p *MarkedAsError) AggregateID() string { return p.TaskID }

// TaskDeleted removes an ended task from the views. Its history stays in
// the log.
type TaskDeleted struct {
	TaskID string `json:"task_id"`
}

// EventType implements Payload.
func (*TaskDeleted) EventType() Type { return TypeTaskDeleted }

// AggregateID implements Payload.
func (p *TaskDeleted) AggregateID() string { return p.TaskID }

// NodeUpdated replaces a node's slot counts. New slots are usable at once;
// surplus free slots go at once, surplus busy ones when they are released.
type NodeUpdated struct {
	NodeID string         `json:"node_id"`
	Slots  map[string]int `json:"slots"`
	// Mounts, when not null, replaces the node's storage mounts ({} clears
	// them).
	Mounts map[string]string `json:"mounts"`
}

// EventType implements Payload.
func (*NodeUpdated) EventType() Type { return TypeNodeUpdated }

// AggregateID implements Payload.
func (p *NodeUpdated) AggregateID() string { return p.NodeID }

// NodeAcceptanceChanged starts (Accept false) or ends a node's drain: its
// running tasks finish, no new ones go there.
type NodeAcceptanceChanged struct {
	NodeID string `json:"node_id"`
	Accept bool   `json:"accept"`
}

// EventType implements Payload.
func (*NodeAcceptanceChanged) EventType() Type { return TypeNodeAcceptanceChanged }

// AggregateID implements Payload.
func (p *NodeAcceptanceChanged) AggregateID() string { return p.NodeID }

// NodeRemoved removes a node. The fold accepts it only while none of the
// node's slots is busy.
type NodeRemoved struct {
	NodeID string `json:"node_id"`
}

// EventType implements Payload.
func (*NodeRemoved) EventType() Type { return TypeNodeRemoved }

// AggregateID implements Payload.
func (p *NodeRemoved) AggregateID() string { return p.NodeID }

// NodeKillRequested asks to kill the containers of every task running on a
// node (the seed's kill_containers); the normal retry rules follow.
type NodeKillRequested struct {
	NodeID string `json:"node_id"`
}

// EventType implements Payload.
func (*NodeKillRequested) EventType() Type { return TypeNodeKillRequested }

// AggregateID implements Payload.
func (p *NodeKillRequested) AggregateID() string { return p.NodeID }
