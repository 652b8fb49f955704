package projections

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"time"
)

// TimeLayout is the seed's time format: ISO-8601 in UTC with milliseconds.
const TimeLayout = "2006-01-02T15:04:05.000Z07:00"

// FormatTime renders t in TimeLayout, or nil for the zero time.
func FormatTime(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(TimeLayout)
	return &s
}

// TaskView is the JSON view of a task written to the tasks bucket: the
// fields of the seed's status panel plus the broker's own.
type TaskView struct {
	UUID           string            `json:"uuid"`
	Name           string            `json:"name"`
	Image          string            `json:"image"`
	Cmd            string            `json:"cmd"`
	Status         TaskStatus        `json:"status"`
	ExitCode       *int              `json:"exit_code"`
	Error          *string           `json:"error"`
	TryCount       int               `json:"try_count"`
	CreatedAt      *string           `json:"created_at"`
	StartedAt      *string           `json:"started_at"`
	FinishedAt     *string           `json:"finished_at"`
	SecondsRunning *int              `json:"seconds_running"`
	ExecutionType  string            `json:"execution_type"`
	Tags           map[string]string `json:"tags"`
	RunnerID       *string           `json:"runner_id"`
	StorageMounts  map[string]string `json:"storage_mounts"`
	Slot           *SlotRef          `json:"slot"`
	PersistLogs    bool              `json:"persist_logs"`
	// Broker fields beyond the seed's.
	Attempt    int     `json:"attempt"`
	MaxRetries int     `json:"max_retries"`
	NodeID     string  `json:"node_id,omitempty"`
	NotBefore  *string `json:"not_before,omitempty"`
	LogsBytes  int64   `json:"logs_bytes"`
	// NodeLosses counts attempts lost with their node (they do not use up
	// retries).
	NodeLosses int `json:"node_losses,omitempty"`
	// CancelRequested is set while a cancel is under way.
	CancelRequested bool    `json:"cancel_requested,omitempty"`
	EndedAt         *string `json:"ended_at,omitempty"`
	// SubmitSeq is the stream sequence of the submission (the order of
	// lists, and their cursor).
	SubmitSeq uint64 `json:"submit_seq"`
	// CallbackURL receives the task's outcome events.
	CallbackURL string `json:"callback_url,omitempty"`
	// Webhook is the delivery of the task's latest outcome to CallbackURL.
	Webhook *WebhookView `json:"webhook,omitempty"`
}

// WebhookView is the delivery of a task's latest outcome in a task view.
type WebhookView struct {
	OutcomeType    string       `json:"outcome_type"`
	OutcomeSeq     uint64       `json:"outcome_seq"`
	State          WebhookState `json:"state"`
	Attempts       int          `json:"attempts"`
	LastStatusCode *int         `json:"last_status_code"`
	LastError      *string      `json:"last_error"`
	NextAttemptAt  *string      `json:"next_attempt_at"`
	EndedAt        *string      `json:"ended_at"`
}

func newWebhookView(w *WebhookDelivery) *WebhookView {
	if w == nil {
		return nil
	}
	v := &WebhookView{
		OutcomeType: string(w.Outcome.Type), OutcomeSeq: w.Outcome.Seq, State: w.State, Attempts: w.Attempts,
		NextAttemptAt: FormatTime(w.NextAttemptAt), EndedAt: FormatTime(w.EndedAt),
	}
	if w.LastStatusCode != 0 {
		v.LastStatusCode = ptr(w.LastStatusCode)
	}
	if w.LastError != "" {
		v.LastError = ptr(w.LastError)
	}
	return v
}

// SlotRef names a slot in a task view.
type SlotRef struct {
	UUID string `json:"uuid"`
	Name string `json:"name"`
}

// NewTaskView builds the view of a task; now is used for the running time of
// a started task.
func (s *State) NewTaskView(t *Task, now time.Time) TaskView {
	v := TaskView{
		UUID:           t.ID,
		Name:           t.Name,
		Image:          t.Image,
		Cmd:            t.Cmd,
		Status:         t.Status,
		ExitCode:       copyPtr(t.ExitCode),
		TryCount:       t.TryCount,
		CreatedAt:      FormatTime(t.CreatedAt),
		StartedAt:      FormatTime(t.StartedAt),
		FinishedAt:     FormatTime(t.FinishedAt),
		SecondsRunning: secondsRunning(t, now),
		ExecutionType:  t.ExecutionType,
		Tags:           cloneMap(t.Tags),
		StorageMounts:  cloneMap(t.StorageMounts),
		PersistLogs:    t.PersistLogs,
		Attempt:        t.Attempt,
		MaxRetries:     t.MaxRetries,
		NodeID:         t.NodeID,
		NotBefore:      FormatTime(t.NotBefore),
	}
	v.CancelRequested = t.CancelRequested
	v.NodeLosses = t.NodeLosses
	v.EndedAt = FormatTime(t.EndedAt)
	v.SubmitSeq = t.SubmitSeq
	v.CallbackURL = t.CallbackURL
	v.Webhook = newWebhookView(t.Webhook)
	switch {
	case t.Queued() && !s.offers(t.ExecutionType):
		// The seed let such a task wait in silence.
		v.Error = ptr(fmt.Sprintf("no node offers execution type %q; the task waits until one does", t.ExecutionType))
	case t.Error != "":
		v.Error = ptr(t.Error)
	}
	if t.ContainerName != "" {
		v.RunnerID = ptr(t.ContainerName)
	}
	if slot := s.slotOf(t); slot != nil {
		n := s.Nodes[t.NodeID]
		v.Slot = &SlotRef{UUID: n.ID + "/" + slot.ID, Name: n.SlotName(slot)}
	}
	if l, ok := t.LatestLogs(); ok {
		v.LogsBytes = l.Bytes
	}
	return v
}

// offeredTypes returns the execution types some node has slots of.
func (s *State) offeredTypes() map[string]bool {
	types := map[string]bool{}
	for _, n := range s.Nodes {
		for typ, k := range n.SlotsWanted {
			if k > 0 {
				types[typ] = true
			}
		}
	}
	return types
}

// offers reports whether any node has slots of an execution type.
func (s *State) offers(executionType string) bool {
	for _, n := range s.Nodes {
		if n.SlotsWanted[executionType] > 0 {
			return true
		}
	}
	return false
}

// secondsRunning follows the seed: finished − started for completed and
// failed tasks, now − started for started ones, null otherwise.
func secondsRunning(t *Task, now time.Time) *int {
	var d time.Duration
	switch {
	case t.StartedAt.IsZero():
		return nil
	case t.Status == TaskStarted && !t.AttemptEnded:
		d = now.Sub(t.StartedAt)
	case (t.Status == TaskCompleted || t.Status == TaskFailed || t.AttemptEnded) && !t.FinishedAt.IsZero():
		d = t.FinishedAt.Sub(t.StartedAt)
	default:
		return nil
	}
	secs := max(int(d/time.Second), 0)
	return &secs
}

// Views are marshalled after the state's lock is released: they share no
// memory with the state.

func ptr[T any](v T) *T { return &v }

func copyPtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	return ptr(*p)
}

func cloneMap[M ~map[K]V, K comparable, V any](m M) M {
	if m == nil {
		return M{}
	}
	return maps.Clone(m)
}

// NodeView is the JSON view of a node written to the nodes bucket: the
// fields of the seed's status panel.
type NodeView struct {
	UUID                  string         `json:"uuid"`
	Name                  string         `json:"name"`
	Hostname              string         `json:"hostname"`
	Status                NodeStatus     `json:"status"`
	LastError             *string        `json:"last_error"`
	LastSuccessAt         *string        `json:"last_success_at"`
	UsagePerExecutionType []TypeUsage    `json:"usage_per_execution_type"`
	SlotsExecutionTypes   map[string]int `json:"slots_execution_types"`
	AcceptNewTasks        bool           `json:"accept_new_tasks"`
	RunnerProvider        string         `json:"runner_provider"`
	RunnerCapacityReached bool           `json:"runner_capacity_reached"`
	Slots                 []SlotView     `json:"slots"`
	CreatedAt             *string        `json:"created_at"`
	UpdatedAt             *string        `json:"updated_at"`
	// StorageMounts are the node's own mounts (name → host path).
	StorageMounts map[string]string `json:"storage_mounts"`
}

// TypeUsage is the busy share of one execution type's slots on a node.
type TypeUsage struct {
	ExecutionType string  `json:"execution_type"`
	UsagePercent  float64 `json:"usage_percent"`
}

// SlotView is one slot in a node view.
type SlotView struct {
	UUID          string     `json:"uuid"`
	Name          string     `json:"name"`
	RunnerID      *string    `json:"runner_id"`
	Status        SlotStatus `json:"status"`
	ExecutionType string     `json:"execution_type"`
	TaskUUID      *string    `json:"task_uuid"`
	// Retiring marks a busy slot the node no longer wants.
	Retiring bool `json:"retiring,omitempty"`
}

// NewNodeView builds the view of a node.
func (s *State) NewNodeView(n *Node) NodeView {
	v := NodeView{
		UUID:                  n.ID,
		Name:                  n.Name,
		Hostname:              n.Hostname,
		Status:                n.Status,
		LastSuccessAt:         FormatTime(n.LastSuccessAt),
		SlotsExecutionTypes:   cloneMap(n.SlotsWanted),
		AcceptNewTasks:        n.AcceptNewTasks,
		RunnerProvider:        n.RunnerProvider,
		Slots:                 []SlotView{},
		UsagePerExecutionType: []TypeUsage{},
		CreatedAt:             FormatTime(n.RegisteredAt),
		StorageMounts:         cloneMap(n.Mounts),
		UpdatedAt:             FormatTime(n.UpdatedAt),
	}
	if n.LastError != "" {
		v.LastError = ptr(n.LastError)
	}
	var types []string
	for _, slot := range n.Slots {
		sv := SlotView{UUID: n.ID + "/" + slot.ID, Name: n.SlotName(slot), Status: slot.Status, ExecutionType: slot.ExecutionType, Retiring: slot.Retiring}
		if t, ok := s.Tasks[slot.TaskID]; ok && slot.TaskID != "" {
			sv.RunnerID = ptr(t.ContainerName)
			sv.TaskUUID = ptr(t.ID)
		}
		v.Slots = append(v.Slots, sv)
		if !slices.Contains(types, slot.ExecutionType) {
			types = append(types, slot.ExecutionType)
		}
	}
	slices.Sort(types)
	for _, typ := range types {
		busy, total := n.Usage(typ)
		v.UsagePerExecutionType = append(v.UsagePerExecutionType, TypeUsage{ExecutionType: typ, UsagePercent: percent(busy, total)})
	}
	return v
}

// percent is busy/total×100 rounded to two decimals, as the seed's.
func percent(busy, total int) float64 {
	if total == 0 {
		return 0
	}
	return math.Round(float64(busy)*10000/float64(total)) / 100
}
