package events

import "time"

// TaskSubmitted records an accepted submission with everything the fold
// needs, resolved by the writer: the fold never reads config or a clock.
type TaskSubmitted struct {
	TaskID        string            `json:"task_id"`
	Name          string            `json:"name"`
	Image         string            `json:"image"`
	Cmd           string            `json:"cmd"`
	ExecutionType string            `json:"execution_type"`
	StorageMounts map[string]string `json:"storage_mounts,omitempty"` // mount name → path inside the container
	Tags          map[string]string `json:"tags,omitempty"`
	PersistLogs   bool              `json:"persist_logs,omitempty"`
	// MaxRetries is the number of retries after the first attempt (the seed's
	// default is 3, so at most 4 attempts).
	MaxRetries int `json:"max_retries"`
	// RetryBackoffMinMs and RetryBackoffMaxMs bound the pause before a
	// retry: it doubles from the minimum with each retry, with jitter, up to
	// the maximum. Zero means retry at once, as the seed.
	RetryBackoffMinMs int64 `json:"retry_backoff_min_ms,omitempty"`
	RetryBackoffMaxMs int64 `json:"retry_backoff_max_ms,omitempty"`
	// MaxNodeLosses caps how often an attempt may be lost with its node;
	// those do not use up MaxRetries. Zero means no attempt is requeued
	// after a node loss.
	MaxNodeLosses int `json:"max_node_losses,omitempty"`
	// TimeoutMs bounds how long one attempt may run; zero means no limit.
	TimeoutMs      int64     `json:"timeout_ms,omitempty"`
	IdempotencyKey string    `json:"idempotency_key,omitempty"`
	CreatedAt      time.Time `json:"created_at"`
	// CallbackURL, when set, receives every terminal outcome event of the
	// task (see WebhookAttempted). Absent in events written before webhooks.
	CallbackURL string `json:"callback_url,omitempty"`
}

// EventType implements Payload.
func (*TaskSubmitted) EventType() Type { return TypeTaskSubmitted }

// AggregateID implements Payload.
func (p *TaskSubmitted) AggregateID() string { return p.TaskID }

// SlotReserved is the scheduler's proposal to run attempt Attempt of a task
// in a slot of a node. The fold accepts it only if the task is waiting for
// exactly that attempt and the slot is free.
type SlotReserved struct {
	TaskID        string `json:"task_id"`
	Attempt       int    `json:"attempt"`
	NodeID        string `json:"node_id"`
	SlotID        string `json:"slot_id"`
	ContainerName string `json:"container_name"`
}

// EventType implements Payload.
func (*SlotReserved) EventType() Type { return TypeTaskSlotReserved }

// AggregateID implements Payload.
func (p *SlotReserved) AggregateID() string { return p.TaskID }

// AttemptClaimed is a runner's proposal to create an attempt's container.
// The fold accepts one claim per attempt (or one that names the claim it
// replaces, when a node's new owner takes over a claim its old owner never
// acted on), and a runner creates the container only once the fold accepted
// its own claim. A runner whose view lags can then never create an
// attempt's container again after its claimant ran and removed it.
type AttemptClaimed struct {
	TaskID  string `json:"task_id"`
	Attempt int    `json:"attempt"`
	NodeID  string `json:"node_id"`
	// Runner names the claimant ("<instance>/runner"). Empty, the event
	// withdraws the claim named by Supersedes: its runner gave the node up
	// before it started anything.
	Runner string `json:"runner"`
	// Supersedes names the claimant this claim replaces; empty for the
	// first claim of an attempt.
	Supersedes string `json:"supersedes,omitempty"`
}

// EventType implements Payload.
func (*AttemptClaimed) EventType() Type { return TypeTaskAttemptClaimed }

// AggregateID implements Payload.
func (p *AttemptClaimed) AggregateID() string { return p.TaskID }

// ContainerStarted is the runner's report that an attempt's container runs.
type ContainerStarted struct {
	TaskID        string    `json:"task_id"`
	Attempt       int       `json:"attempt"`
	NodeID        string    `json:"node_id"`
	ContainerID   string    `json:"container_id"`
	ContainerName string    `json:"container_name"`
	StartedAt     time.Time `json:"started_at"`
}

// EventType implements Payload.
func (*ContainerStarted) EventType() Type { return TypeTaskContainerStarted }

// AggregateID implements Payload.
func (p *ContainerStarted) AggregateID() string { return p.TaskID }

// StartFailed is the runner's report that an attempt's container could not be
// created or started (image missing, Docker error, ...). NodeFault tells
// whether the node rather than the task is to blame.
type StartFailed struct {
	TaskID    string `json:"task_id"`
	Attempt   int    `json:"attempt"`
	NodeID    string `json:"node_id"`
	Error     string `json:"error"`
	NodeFault bool   `json:"node_fault,omitempty"`
}

// EventType implements Payload.
func (*StartFailed) EventType() Type { return TypeTaskStartFailed }

// AggregateID implements Payload.
func (p *StartFailed) AggregateID() string { return p.TaskID }

// ContainerExited is the runner's report that an attempt's container ended.
type ContainerExited struct {
	TaskID    string `json:"task_id"`
	Attempt   int    `json:"attempt"`
	NodeID    string `json:"node_id"`
	ExitCode  int    `json:"exit_code"`
	OOMKilled bool   `json:"oom_killed,omitempty"`
	// Vanished is set when the container was gone from its node.
	Vanished   bool      `json:"vanished,omitempty"`
	Error      string    `json:"error,omitempty"`
	StartedAt  time.Time `json:"started_at,omitzero"`
	FinishedAt time.Time `json:"finished_at,omitzero"`
}

// EventType implements Payload.
func (*ContainerExited) EventType() Type { return TypeTaskContainerExited }

// AggregateID implements Payload.
func (p *ContainerExited) AggregateID() string { return p.TaskID }

// LogsArchived records that an attempt's whole stdout and stderr were stored
// in the log object store under Object.
type LogsArchived struct {
	TaskID    string `json:"task_id"`
	Attempt   int    `json:"attempt"`
	Object    string `json:"object"`
	Bytes     int64  `json:"bytes"`
	Truncated bool   `json:"truncated,omitempty"`
}

// EventType implements Payload.
func (*LogsArchived) EventType() Type { return TypeTaskLogsArchived }

// AggregateID implements Payload.
func (p *LogsArchived) AggregateID() string { return p.TaskID }

// TaskCompleted is the scheduler's decision that a task succeeded: its
// current attempt exited with code 0. A self-contained outcome event.
type TaskCompleted struct {
	TaskID   string `json:"task_id"`
	Attempt  int    `json:"attempt"`
	ExitCode int    `json:"exit_code"`
}

// EventType implements Payload.
func (*TaskCompleted) EventType() Type { return TypeTaskCompleted }

// AggregateID implements Payload.
func (p *TaskCompleted) AggregateID() string { return p.TaskID }

// Retry and failure causes.
const (
	// CauseExitCode: the container exited with a code other than 0.
	CauseExitCode = "exit_code"
	// CauseStartError: the container could not be created or started.
	CauseStartError = "start_error"
	// CauseVanished: the container disappeared from its node.
	CauseVanished = "vanished"
	// CauseTimeout: the attempt ran longer than the task's timeout and was
	// stopped.
	CauseTimeout = "timeout"
	// CauseNodeLost: the attempt's node went down; it does not use up a
	// retry (see TaskSubmitted.MaxNodeLosses).
	CauseNodeLost = "node_lost"
	// CauseKilled: the container was killed on request (kill_container).
	CauseKilled = "killed"
)

// TaskRetrying is the scheduler's decision to run a task again after its
// current attempt failed. NotBefore is resolved by the scheduler.
type TaskRetrying struct {
	TaskID      string    `json:"task_id"`
	Attempt     int       `json:"attempt"`
	NextAttempt int       `json:"next_attempt"`
	NotBefore   time.Time `json:"not_before,omitzero"`
	Cause       string    `json:"cause"`
	Error       string    `json:"error,omitempty"`
	ExitCode    *int      `json:"exit_code,omitempty"`
}

// EventType implements Payload.
func (*TaskRetrying) EventType() Type { return TypeTaskRetrying }

// AggregateID implements Payload.
func (p *TaskRetrying) AggregateID() string { return p.TaskID }

// TaskFailed is the scheduler's decision that a task has failed for good:
// its retries are exhausted. A self-contained outcome event.
type TaskFailed struct {
	TaskID   string `json:"task_id"`
	Attempt  int    `json:"attempt"`
	Cause    string `json:"cause"`
	Error    string `json:"error,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
}

// EventType implements Payload.
func (*TaskFailed) EventType() Type { return TypeTaskFailed }

// AggregateID implements Payload.
func (p *TaskFailed) AggregateID() string { return p.TaskID }

// StaleAttemptExited records that the container of a superseded attempt
// (its node was declared down and the task moved on) was found, killed and
// removed, with how it ended. It never changes the task.
type StaleAttemptExited struct {
	TaskID   string `json:"task_id"`
	Attempt  int    `json:"attempt"`
	NodeID   string `json:"node_id"`
	ExitCode int    `json:"exit_code"`
	// Running is set when the container was still running when found.
	Running bool   `json:"running,omitempty"`
	Error   string `json:"error,omitempty"`
}

// EventType implements Payload.
func (*StaleAttemptExited) EventType() Type { return TypeTaskStaleAttemptExited }

// AggregateID implements Payload.
func (p *StaleAttemptExited) AggregateID() string { return p.TaskID }
