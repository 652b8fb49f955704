package projections

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cbroker/broker/events"
)

// TaskStatus is a task's status, with the seed's names.
type TaskStatus string

// Task statuses.
const (
	TaskWaiting   TaskStatus = "waiting"
	TaskStarting  TaskStatus = "starting"
	TaskStarted   TaskStatus = "started"
	TaskRetry     TaskStatus = "retry"
	TaskFailed    TaskStatus = "failed"
	TaskCompleted TaskStatus = "completed"
	TaskError     TaskStatus = "error"
	// TaskCancelled is the broker's own: a cancelled task never runs again
	// unless a retry is asked for.
	TaskCancelled TaskStatus = "cancelled"
)

// TaskStatuses lists every task status: the seed's, in its order, then the
// broker's own.
var TaskStatuses = []TaskStatus{TaskWaiting, TaskStarting, TaskStarted, TaskRetry, TaskFailed, TaskCompleted, TaskError, TaskCancelled}

// Terminal reports whether no further attempt will run.
func (s TaskStatus) Terminal() bool {
	return s == TaskFailed || s == TaskCompleted || s == TaskError || s == TaskCancelled
}

// NodeStatus is a node's health, with the seed's names.
type NodeStatus string

// Node statuses.
const (
	NodeAvailable   NodeStatus = "available"
	NodeUnstable    NodeStatus = "unstable"
	NodeUnavailable NodeStatus = "unavailable"
)

// SlotStatus is a slot's state, with the seed's names.
type SlotStatus string

// Slot statuses.
const (
	SlotAvailable SlotStatus = "available"
	SlotAttaching SlotStatus = "attaching"
	SlotRunning   SlotStatus = "running"
)

// Task is the fold's record of one task.
type Task struct {
	ID             string            `json:"id"`
	Name           string            `json:"name"`
	Image          string            `json:"image"`
	Cmd            string            `json:"cmd"`
	ExecutionType  string            `json:"execution_type"`
	StorageMounts  map[string]string `json:"storage_mounts,omitempty"`
	Tags           map[string]string `json:"tags,omitempty"`
	PersistLogs    bool              `json:"persist_logs,omitempty"`
	MaxRetries     int               `json:"max_retries"`
	IdempotencyKey string            `json:"idempotency_key,omitempty"`
	CorrelationID  string            `json:"correlation_id,omitempty"`
	CreatedAt      time.Time         `json:"created_at"`
	// SubmitSeq is the stream sequence of the submission: the queue order.
	SubmitSeq uint64 `json:"submit_seq"`

	Status TaskStatus `json:"status"`
	// TryCount is the number of retries so far (the seed's try_count).
	TryCount int `json:"try_count"`
	// Attempt is the number of the current or last attempt; 0 before the
	// first reservation.
	Attempt       int       `json:"attempt"`
	NodeID        string    `json:"node_id,omitempty"`
	SlotID        string    `json:"slot_id,omitempty"`
	ContainerName string    `json:"container_name,omitempty"`
	ContainerID   string    `json:"container_id,omitempty"`
	StartedAt     time.Time `json:"started_at,omitzero"`
	FinishedAt    time.Time `json:"finished_at,omitzero"`
	ExitCode      *int      `json:"exit_code,omitempty"`
	Error         string    `json:"error,omitempty"`
	// Claim is the runner that creates the current attempt's container
	// (task.attempt_claimed), and ClaimSeq the sequence of the last claim
	// or withdrawal accepted for the attempt.
	Claim    string `json:"claim,omitempty"`
	ClaimSeq uint64 `json:"claim_seq,omitempty"`
	// NotBefore is the earliest time a retry may be reserved.
	NotBefore time.Time `json:"not_before,omitzero"`
	// AttemptEnded is set once the current attempt has exited or failed to
	// start, until the scheduler's decision (completed, retrying, failed) is
	// accepted.
	AttemptEnded bool `json:"attempt_ended,omitempty"`
	// StartFailed is set when the current attempt ended before its container
	// ran.
	StartFailed bool `json:"start_failed,omitempty"`
	// Logs lists the archived logs, one entry per attempt that produced them.
	Logs []LogRef `json:"logs,omitempty"`
	// CancelRequested is set once a cancel was accepted; the task will not
	// be reserved or retried any more.
	CancelRequested bool `json:"cancel_requested,omitempty"`
	// KillRequested is the attempt whose container is to be killed, or 0.
	KillRequested int `json:"kill_requested,omitempty"`
	// EndedAt is when the task reached its terminal status (the time of
	// that event).
	EndedAt time.Time `json:"ended_at,omitzero"`
	// Retry policy, resolved at submission.
	RetryBackoffMin time.Duration `json:"retry_backoff_min,omitempty"`
	RetryBackoffMax time.Duration `json:"retry_backoff_max,omitempty"`
	MaxNodeLosses   int           `json:"max_node_losses,omitempty"`
	Timeout         time.Duration `json:"timeout,omitempty"`
	// NodeLosses counts attempts lost with their node.
	NodeLosses int `json:"node_losses,omitempty"`
	// KillCause is why the current or last attempt was killed ("" for a
	// client's kill, CauseTimeout for a timeout).
	KillCause string `json:"kill_cause,omitempty"`
	// Killed is set when a kill was requested for the current or last
	// attempt.
	Killed bool `json:"killed,omitempty"`
	// Vanished is set when the current or last attempt's container
	// disappeared.
	Vanished bool `json:"vanished,omitempty"`
	// StaleExits counts containers of superseded attempts that were found
	// and removed.
	StaleExits int `json:"stale_exits,omitempty"`
	// LostAttempts lists the attempts given up with their node: their
	// containers may still exist, and their exits are stale.
	LostAttempts []int `json:"lost_attempts,omitempty"`
	// History lists every event about the task, accepted or rejected, in
	// log order.
	History []Verdict `json:"history,omitempty"`
	// LastEventID is the envelope ID of the last event accepted for the task,
	// the causation of the next derived event.
	LastEventID string `json:"last_event_id,omitempty"`
	// CallbackURL receives the task's terminal outcome events; "" for none.
	CallbackURL string `json:"callback_url,omitempty"`
	// Outcome is the event that gave the task its current terminal status;
	// nil while the task has not ended.
	Outcome *OutcomeRef `json:"outcome,omitempty"`
	// Webhook is the delivery of the current (or, once the task runs again,
	// the last) outcome to CallbackURL; nil without a callback URL or before
	// the first outcome.
	Webhook *WebhookDelivery `json:"webhook,omitempty"`
}

// OutcomeRef identifies the event that ended a task.
type OutcomeRef struct {
	Seq  uint64      `json:"seq"`
	ID   string      `json:"id"`
	Type events.Type `json:"type"`
}

// WebhookState is where the delivery of an outcome stands.
type WebhookState string

// Webhook delivery states.
const (
	// WebhookPending: attempts are due (at NextAttemptAt) or the result of
	// the last one is still to be recorded.
	WebhookPending WebhookState = "pending"
	// WebhookDelivered: an attempt got a 2xx answer; nothing more is sent.
	WebhookDelivered WebhookState = "delivered"
	// WebhookAbandoned: every attempt failed; nothing more is sent.
	WebhookAbandoned WebhookState = "abandoned"
	// WebhookSuperseded: the task left the outcome (a forced retry) before
	// the delivery ended; nothing more is sent for it.
	WebhookSuperseded WebhookState = "superseded"
)

// WebhookDelivery is the state of the delivery of one outcome event to a
// task's callback URL, as recorded by webhook events.
type WebhookDelivery struct {
	// Outcome is the event delivered.
	Outcome OutcomeRef   `json:"outcome"`
	State   WebhookState `json:"state"`
	// Attempts is the number of recorded attempts.
	Attempts int `json:"attempts,omitempty"`
	// LastStatusCode and LastError are the last attempt's result.
	LastStatusCode int       `json:"last_status_code,omitempty"`
	LastError      string    `json:"last_error,omitempty"`
	LastAttemptAt  time.Time `json:"last_attempt_at,omitzero"`
	// LastSucceeded is set when the last attempt got a 2xx answer.
	LastSucceeded bool `json:"last_succeeded,omitempty"`
	// NextAttemptAt is when the next attempt is due; zero for the first
	// attempt (due at once) and after the last one.
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
	// EndedAt is when the delivery was recorded delivered or abandoned.
	EndedAt time.Time `json:"ended_at,omitzero"`
}

// Due returns what the delivery waits for: another attempt (at the returned
// time; zero means at once), or the recording of the last attempt's result
// (record is true: delivered after a success, abandoned after a failure
// with no next attempt). ok is false when nothing is to be done.
func (w *WebhookDelivery) Due() (at time.Time, record, ok bool) {
	if w == nil || w.State != WebhookPending {
		return time.Time{}, false, false
	}
	if w.Attempts > 0 && (w.LastSucceeded || w.NextAttemptAt.IsZero()) {
		return time.Time{}, true, true
	}
	return w.NextAttemptAt, false, true
}

// LogRef points at one attempt's archived logs.
type LogRef struct {
	Attempt   int    `json:"attempt"`
	Object    string `json:"object"`
	Bytes     int64  `json:"bytes"`
	Truncated bool   `json:"truncated,omitempty"`
}

// Active reports whether the task's current attempt holds a slot.
func (t *Task) Active() bool {
	return (t.Status == TaskStarting || t.Status == TaskStarted) && !t.AttemptEnded
}

// Lost reports whether an attempt was given up with its node.
func (t *Task) Lost(attempt int) bool { return slices.Contains(t.LostAttempts, attempt) }

// Queued reports whether the task waits for a slot.
func (t *Task) Queued() bool {
	return t.Status == TaskWaiting || t.Status == TaskRetry
}

// LatestLogs returns the archived logs of the latest attempt that has any.
func (t *Task) LatestLogs() (LogRef, bool) {
	if len(t.Logs) == 0 {
		return LogRef{}, false
	}
	return t.Logs[len(t.Logs)-1], true
}

// Node is the fold's record of one Docker host.
type Node struct {
	ID             string `json:"id"`
	Name           string `json:"name"`
	Hostname       string `json:"hostname"`
	RunnerProvider string `json:"runner_provider"`
	// SlotsWanted is the slot count per execution type, as registered.
	SlotsWanted map[string]int `json:"slots_execution_types"`
	// Mounts maps storage mount names to host paths on this node.
	Mounts         map[string]string `json:"mounts,omitempty"`
	Slots          []*Slot           `json:"slots"`
	Status         NodeStatus        `json:"status"`
	AcceptNewTasks bool              `json:"accept_new_tasks"`
	LastError      string            `json:"last_error,omitempty"`
	LastSuccessAt  time.Time         `json:"last_success_at,omitzero"`
	RegisteredAt   time.Time         `json:"registered_at"`
	// UpdatedAt is the time of the node's last accepted event.
	UpdatedAt time.Time `json:"updated_at"`
	// StatusSeq is the stream sequence of the node's last accepted status
	// event; health events use it in their idempotency keys.
	StatusSeq uint64 `json:"status_seq"`
}

// Slot is one unit of capacity of an execution type on a node.
type Slot struct {
	// ID is unique within the node: "<execution type>-<index>".
	ID            string     `json:"id"`
	ExecutionType string     `json:"execution_type"`
	Status        SlotStatus `json:"status"`
	TaskID        string     `json:"task_id,omitempty"`
	Attempt       int        `json:"attempt,omitempty"`
	// Retiring marks a busy slot the node no longer wants: it goes when it
	// is released.
	Retiring bool `json:"retiring,omitempty"`
}

// Slot returns the slot with the given id.
func (n *Node) Slot(id string) *Slot {
	for _, s := range n.Slots {
		if s.ID == id {
			return s
		}
	}
	return nil
}

// Usage returns the busy and total slot counts of an execution type.
func (n *Node) Usage(executionType string) (busy, total int) {
	for _, s := range n.Slots {
		if s.ExecutionType != executionType {
			continue
		}
		total++
		if s.Status != SlotAvailable {
			busy++
		}
	}
	return busy, total
}

// FreeSlot returns the first available slot of an execution type, or nil.
func (n *Node) FreeSlot(executionType string) *Slot {
	for _, s := range n.Slots {
		if s.ExecutionType == executionType && s.Status == SlotAvailable {
			return s
		}
	}
	return nil
}

// HasMounts reports whether every storage mount name is available on the
// node, from its own mounts or from the broker-wide ones.
func (n *Node) HasMounts(names map[string]string, brokerWide map[string]bool) bool {
	for name := range names {
		if _, ok := n.Mounts[name]; !ok && !brokerWide[name] {
			return false
		}
	}
	return true
}

// Schedulable reports whether new work may be placed on the node.
func (n *Node) Schedulable() bool {
	return n.Status == NodeAvailable && n.AcceptNewTasks
}

// SlotName is a slot's friendly name, as the seed's: "n001d-s01-cpu".
func (n *Node) SlotName(s *Slot) string {
	return fmt.Sprintf("%s-s%02d-%s", n.Name, slices.Index(n.Slots, s)+1, s.ExecutionType)
}

// ContainerName returns the deterministic, DNS-safe container name of one
// attempt of a task: the task's name made lowercase with every run of other
// characters turned into '-', then the first 12 characters of the task id and
// the attempt number, at most 63 characters in all. A repeated create of the
// same attempt hits a name conflict instead of making a second container.
func ContainerName(taskName, taskID string, attempt int) string {
	id := strings.ReplaceAll(taskID, "-", "")
	if len(id) > 12 {
		id = id[:12]
	}
	suffix := fmt.Sprintf("-%s-a%d", strings.ToLower(sanitize(id)), attempt)
	base := sanitize(strings.ToLower(taskName))
	if limit := 63 - len(suffix); len(base) > limit {
		base = strings.TrimRight(base[:max(limit, 0)], "-")
	}
	if base == "" {
		base = "task"
	}
	return base + suffix
}

// sanitize keeps [a-z0-9], turns every other run into one '-', and trims '-'.
func sanitize(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range s {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
			dash = false
			continue
		}
		if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
	}
	return strings.TrimRight(b.String(), "-")
}
