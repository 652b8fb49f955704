package events

import (
	"encoding/json"
	"strings"
	"time"
)

// Type is the versioned wire name of an event, "<aggregate>.<name>.v<N>".
// It is never derived from Go type names and never edited once written.
type Type string

// Aggregate kinds, the first token of every Type.
const (
	AggregateTask = "task"
	AggregateNode = "node"
)

// Task event types (DESIGN.md section 4).
const (
	TypeTaskSubmitted          Type = "task.submitted.v1"
	TypeTaskSlotReserved       Type = "task.slot_reserved.v1"
	TypeTaskContainerStarted   Type = "task.container_started.v1"
	TypeTaskStartFailed        Type = "task.start_failed.v1"
	TypeTaskContainerExited    Type = "task.container_exited.v1"
	TypeTaskLogsArchived       Type = "task.logs_archived.v1"
	TypeTaskCompleted          Type = "task.completed.v1"
	TypeTaskRetrying           Type = "task.retrying.v1"
	TypeTaskFailed             Type = "task.failed.v1"
	TypeTaskCancelRequested    Type = "task.cancel_requested.v1"
	TypeTaskCancelled          Type = "task.cancelled.v1"
	TypeTaskKillRequested      Type = "task.kill_requested.v1"
	TypeTaskRetryRequested     Type = "task.retry_requested.v1"
	TypeTaskMarkedAsError      Type = "task.marked_as_error.v1"
	TypeTaskDeleted            Type = "task.deleted.v1"
	TypeTaskStaleAttemptExited Type = "task.stale_attempt_exited.v1"
	TypeTaskAttemptClaimed     Type = "task.attempt_claimed.v1"

	TypeTaskWebhookAttempted Type = "task.webhook_attempted.v1"
	TypeTaskWebhookDelivered Type = "task.webhook_delivered.v1"
	TypeTaskWebhookAbandoned Type = "task.webhook_abandoned.v1"
)

// Node event types (DESIGN.md section 4).
const (
	TypeNodeRegistered Type = "node.registered.v1"
	TypeNodeUnstable   Type = "node.unstable.v1"
	TypeNodeDown       Type = "node.down.v1"
	TypeNodeUp         Type = "node.up.v1"

	TypeNodeUpdated           Type = "node.updated.v1"
	TypeNodeAcceptanceChanged Type = "node.acceptance_changed.v1"
	TypeNodeRemoved           Type = "node.removed.v1"
	TypeNodeKillRequested     Type = "node.kill_requested.v1"
)

// Aggregate returns the aggregate kind of the type ("task" or "node"), or ""
// when the type is not of the form "<aggregate>.<name>.v<N>".
func (t Type) Aggregate() string {
	agg, _, ok := t.split()
	if !ok {
		return ""
	}
	return agg
}

// Name returns the event name without aggregate and version
// ("task.slot_reserved.v1" → "slot_reserved"), the last token of its subject.
func (t Type) Name() string {
	_, name, ok := t.split()
	if !ok {
		return ""
	}
	return name
}

func (t Type) split() (aggregate, name string, ok bool) {
	parts := strings.Split(string(t), ".")
	if len(parts) != 3 || !validToken(parts[0]) || !validToken(parts[1]) ||
		len(parts[2]) < 2 || parts[2][0] != 'v' {
		return "", "", false
	}
	return parts[0], parts[1], true
}

// Payload is implemented by every event payload struct.
type Payload interface {
	// EventType returns the wire name of the payload's event type.
	EventType() Type
	// AggregateID returns the id of the task or node the event is about.
	AggregateID() string
}

// registry maps every type ever written to a constructor of its payload.
// Types are only ever added here, never removed or renamed.
var registry = map[Type]func() Payload{
	TypeTaskSubmitted:        func() Payload { return new(TaskSubmitted) },
	TypeTaskSlotReserved:     func() Payload { return new(SlotReserved) },
	TypeTaskContainerStarted: func() Payload { return new(ContainerStarted) },
	TypeTaskStartFailed:      func() Payload { return new(StartFailed) },
	TypeTaskContainerExited:  func() Payload { return new(ContainerExited) },
	TypeTaskLogsArchived:     func() Payload { return new(LogsArchived) },
	TypeTaskCompleted:        func() Payload { return new(TaskCompleted) },
	TypeTaskRetrying:         func() Payload { return new(TaskRetrying) },
	TypeTaskFailed:           func() Payload { return new(TaskFailed) },
	TypeNodeRegistered:       func() Payload { return new(NodeRegistered) },
	TypeNodeUnstable:         func() Payload { return new(NodeUnstable) },
	TypeNodeDown:             func() Payload { return new(NodeDown) },
	TypeNodeUp:               func() Payload { return new(NodeUp) },

	TypeTaskCancelRequested:    func() Payload { return new(CancelRequested) },
	TypeTaskCancelled:          func() Payload { return new(TaskCancelled) },
	TypeTaskKillRequested:      func() Payload { return new(KillRequested) },
	TypeTaskRetryRequested:     func() Payload { return new(RetryRequested) },
	TypeTaskMarkedAsError:      func() Payload { return new(MarkedAsError) },
	TypeTaskDeleted:            func() Payload { return new(TaskDeleted) },
	TypeTaskStaleAttemptExited: func() Payload { return new(StaleAttemptExited) },
	TypeTaskAttemptClaimed:     func() Payload { return new(AttemptClaimed) },
	TypeNodeUpdated:            func() Payload { return new(NodeUpdated) },
	TypeNodeAcceptanceChanged:  func() Payload { return new(NodeAcceptanceChanged) },
	TypeNodeRemoved:            func() Payload { return new(NodeRemoved) },
	TypeNodeKillRequested:      func() Payload { return new(NodeKillRequested) },

	TypeTaskWebhookAttempted: func() Payload { return new(WebhookAttempted) },
	TypeTaskWebhookDelivered: func() Payload { return new(WebhookDelivered) },
	TypeTaskWebhookAbandoned: func() Payload { return new(WebhookAbandoned) },
}

// Known reports whether t is a type this version of the package can decode.
func Known(t Type) bool {
	_, ok := registry[t]
	return ok
}

// Types returns every known event type.
func Types() []Type {
	out := make([]Type, 0, len(registry))
	for t := range registry {
		out = append(out, t)
	}
	return out
}

func decodePayload(t Type, data json.RawMessage) (Payload, error) {
	newPayload, ok := registry[t]
	if !ok {
		return nil, &UnknownTypeError{Type: t}
	}
	p := newPayload()
	if err := json.Unmarshal(data, p); err != nil {
		return nil, &DecodeError{Reason: "payload of " + string(t) + ": " + err.Error()}
	}
	return p, nil
}

// Time is a helper for payloads: a copy of t in UTC with monotonic reading
// stripped, so that encoding and decoding round-trip exactly.
func Time(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.UTC().Round(0)
}
