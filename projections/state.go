package projections

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/cbroker/broker/events"
)

// Outcome is the fold's verdict on one event.
type Outcome struct {
	Seq         uint64      `json:"seq"`
	Type        events.Type `json:"type"`
	AggregateID string      `json:"aggregate_id"`
	Accepted    bool        `json:"accepted"`
	// Reason says why an event was rejected.
	Reason string `json:"reason,omitempty"`
	// Code classifies some rejections for callers that branch on them
	// (see the Code constants); empty otherwise.
	Code Code `json:"code,omitempty"`
	// Unknown is set for an event type this version does not know; it is
	// skipped without effect.
	Unknown bool `json:"unknown,omitempty"`
	// PrevNodeID is the node a task event's task was on before the event
	// (its slot there may have gone with it); "" otherwise. The projector
	// rewrites that node's view too.
	PrevNodeID string `json:"-"`
}

// State is the fold: everything the broker knows, derived from the log.
// The zero value is not usable; call NewState.
type State struct {
	// Seq is the stream sequence of the last event folded.
	Seq uint64
	// StoredAt is the stream time of the event at Seq. The reader of the
	// stream sets it (Apply has no stream metadata); zero when unknown.
	StoredAt time.Time
	Tasks    map[string]*Task
	Nodes    map[string]*Node
	// TaskCounts is the number of tasks in each status.
	TaskCounts map[TaskStatus]int

	queues     map[string][]*Task        // per execution type, waiting|retry tasks by SubmitSeq
	awaiting   map[string]*Task          // attempt ended, decision pending
	active     map[string]*Task          // attempt holds a slot
	failed     map[string]*Task          // status failed
	cancelling map[string]*Task          // cancel requested, not ended
	hostnames  map[string]string         // hostname → node id
	byAge      []*Task                   // every task by SubmitSeq
	tags       map[string]map[string]int // tag name → value → number of tasks
}

// NewState returns an empty state.
func NewState() *State {
	return &State{
		Tasks:      map[string]*Task{},
		Nodes:      map[string]*Node{},
		TaskCounts: map[TaskStatus]int{},
		queues:     map[string][]*Task{},
		awaiting:   map[string]*Task{},
		active:     map[string]*Task{},
		failed:     map[string]*Task{},
		cancelling: map[string]*Task{},
		hostnames:  map[string]string{},
		tags:       map[string]map[string]int{},
	}
}

// Apply folds one event into the state and returns the outcome. It never
// panics and never reads anything but its arguments: a rejected event leaves
// the state as it was, apart from Seq.
func (s *State) Apply(env events.Envelope) Outcome {
	if env.Seq == 0 { // not read from a stream: the next sequence
		env.Seq = s.Seq + 1
	}
	if env.Seq > s.Seq {
		s.Seq = env.Seq
	}
	isTask := env.Type.Aggregate() == events.AggregateTask
	var prevNode string
	if t, ok := s.Tasks[env.AggregateID]; ok && isTask {
		prevNode = t.NodeID
	}
	out := s.apply1(env)
	out.PrevNodeID = prevNode
	// A task keeps the sequence and verdict of every event about it, accepted
	// or not, for its timeline.
	if t, ok := s.Tasks[env.AggregateID]; ok && isTask {
		t.History = append(t.History, Verdict{Seq: out.Seq, Type: out.Type, Accepted: out.Accepted, Reason: out.Reason})
	}
	return out
}

// Verdict is the fold's verdict on one event of a task's history.
type Verdict struct {
	Seq      uint64      `json:"seq"`
	Type     events.Type `json:"type"`
	Accepted bool        `json:"accepted"`
	Reason   string      `json:"reason,omitempty"`
}

func (s *State) apply1(env events.Envelope) Outcome {
	out := Outcome{Seq: env.Seq, Type: env.Type, AggregateID: env.AggregateID}
	p, err := env.Payload()
	switch {
	case errors.Is(err, events.ErrUnknownType):
		out.Unknown = true
		out.Reason = err.Error()
		return out
	case err != nil:
		out.Reason = err.Error()
		return out
	}
	if err := s.apply(env, p); err != nil {
		out.Reason = err.Error()
		if r := (*rejection)(nil); errors.As(err, &r) {
			out.Code = r.code
		}
		return out
	}
	out.Accepted = true
	return out
}

// Code classifies a rejection.
type Code string

// Rejection codes callers branch on.
const (
	CodeHostnameTaken Code = "hostname_taken"
	CodeExists        Code = "exists"
	// CodeNotFound: the task or node does not exist (any more).
	CodeNotFound Code = "not_found"
	// CodeStatus: the request does not fit the entity's status.
	CodeStatus Code = "status"
	// CodeBusy: the node has busy slots.
	CodeBusy Code = "busy"
)

// rejection is an error the fold returns for an invalid proposal.
type rejection struct {
	code Code
	msg  string
}

func (r *rejection) Error() string { return r.msg }

func rejectf(format string, args ...any) error { return &rejection{msg: fmt.Sprintf(format, args...)} }

func rejectCode(code Code, format string, args ...any) error {
	return &rejection{code: code, msg: fmt.Sprintf(format, args...)}
}

func (s *State) apply(env events.Envelope, p events.Payload) error {
	switch p := p.(type) {
	case *events.TaskSubmitted:
		return s.applySubmitted(env, p)
	case *events.SlotReserved:
		return s.withTask(env, p.TaskID, func(t *Task) error { return s.applyReserved(t, p) })
	case *events.AttemptClaimed:
		return s.withTask(env, p.TaskID, func(t *Task) error { return applyClaimed(t, env.Seq, p) })
	case *events.ContainerStarted:
		return s.withTask(env, p.TaskID, func(t *Task) error { return s.applyStarted(t, p) })
	case *events.StartFailed:
		return s.withTask(env, p.TaskID, func(t *Task) error { return s.applyStartFailed(t, p) })
	case *events.ContainerExited:
		return s.withTask(env, p.TaskID, func(t *Task) error { return s.applyExited(t, p) })
	case *events.LogsArchived:
		return s.withTask(env, p.TaskID, func(t *Task) error { return applyLogsArchived(t, p) })
	case *events.TaskCompleted:
		return s.withTask(env, p.TaskID, func(t *Task) error { return s.applyCompleted(t, p) })
	case *events.TaskRetrying:
		return s.withTask(env, p.TaskID, func(t *Task) error { return s.applyRetrying(t, p) })
	case *events.TaskFailed:
		return s.withTask(env, p.TaskID, func(t *Task) error { return s.applyFailed(t, p) })
	case *events.NodeRegistered:
		return s.applyRegistered(env, p)
	case *events.NodeUp:
		return s.withNode(env, p.NodeID, func(n *Node) error { return applyUp(n, env, p) })
	case *events.NodeUnstable:
		return s.withNode(env, p.NodeID, func(n *Node) error { return applyUnstable(n, env, p) })
	case *events.NodeDown:
		return s.withNode(env, p.NodeID, func(n *Node) error { return applyDown(n, env, p) })
	case *events.CancelRequested:
		return s.withTask(env, p.TaskID, func(t *Task) error { return s.applyCancelRequested(t) })
	case *events.TaskCancelled:
		return s.withTask(env, p.TaskID, func(t *Task) error { return s.applyCancelled(t, p) })
	case *events.KillRequested:
		return s.withTask(env, p.TaskID, func(t *Task) error { return applyKillRequested(t, p) })
	case *events.RetryRequested:
		return s.withTask(env, p.TaskID, func(t *Task) error { return s.applyRetryRequested(t) })
	case *events.MarkedAsError:
		return s.withTask(env, p.TaskID, func(t *Task) error { return s.applyMarkedAsError(t, p) })
	case *events.StaleAttemptExited:
		return s.withTask(env, p.TaskID, func(t *Task) error { return applyStaleExited(t, p) })
	case *events.TaskDeleted:
		return s.withTask(env, p.TaskID, func(t *Task) error { return s.applyDeleted(t) })
	case *events.NodeUpdated:
		return s.withNode(env, p.NodeID, func(n *Node) error { return applyUpdated(n, p) })
	case *events.NodeAcceptanceChanged:
		return s.withNode(env, p.NodeID, func(n *Node) error { n.AcceptNewTasks = p.Accept; return nil })
	case *events.NodeRemoved:
		return s.withNode(env, p.NodeID, func(n *Node) error { return s.applyRemoved(n) })
	case *events.NodeKillRequested:
		return s.withNode(env, p.NodeID, func(n *Node) error { s.applyNodeKill(n); return nil })
	case *events.WebhookAttempted:
		return s.withTask(env, p.TaskID, func(t *Task) error { return applyWebhookAttempted(t, p) })
	case *events.WebhookDelivered:
		return s.withTask(env, p.TaskID, func(t *Task) error { return applyWebhookDelivered(t, env, p) })
	case *events.WebhookAbandoned:
		return s.withTask(env, p.TaskID, func(t *Task) error { return applyWebhookAbandoned(t, env, p) })
	default:
		return rejectf("event type %s is not handled by this fold", env.Type)
	}
}

func (s *State) withTask(env events.Envelope, id string, f func(*Task) error) error {
	if id != env.AggregateID {
		return rejectf("payload task %q does not match aggregate %q", id, env.AggregateID)
	}
	t, ok := s.Tasks[id]
	if !ok {
		return rejectCode(CodeNotFound, "task %s does not exist", id)
	}
	before := t.Status
	if err := f(t); err != nil {
		return err
	}
	if t.Status != before {
		t.outcomeChanged(env)
	}
	t.LastEventID = env.ID
	if t.Status.Terminal() && t.EndedAt.IsZero() {
		t.EndedAt = env.Time
	}
	return nil
}

func (s *State) withNode(env events.Envelope, id string, f func(*Node) error) error {
	if id != env.AggregateID {
		return rejectf("payload node %q does not match aggregate %q", id, env.AggregateID)
	}
	n, ok := s.Nodes[id]
	if !ok {
		return rejectCode(CodeNotFound, "node %s does not exist", id)
	}
	if err := f(n); err != nil {
		return err
	}
	n.UpdatedAt = env.Time
	return nil
}

// Queue returns the tasks waiting for a slot of an execution type, in queue
// order. The slice must not be modified.
func (s *State) Queue(executionType string) []*Task { return s.queues[executionType] }

// QueuedTypes returns the execution types with waiting tasks, sorted.
func (s *State) QueuedTypes() []string {
	types := make([]string, 0, len(s.queues))
	for t, q := range s.queues {
		if len(q) > 0 {
			types = append(types, t)
		}
	}
	slices.Sort(types)
	return types
}

// AwaitingDecision returns the tasks whose attempt ended and that wait for
// the scheduler's decision, in submission order.
func (s *State) AwaitingDecision() []*Task { return sortedBySubmit(s.awaiting) }

// ActiveTasks returns the tasks whose current attempt holds a slot, in
// submission order.
func (s *State) ActiveTasks() []*Task { return sortedBySubmit(s.active) }

// SortedNodes returns the nodes in name order.
func (s *State) SortedNodes() []*Node {
	nodes := make([]*Node, 0, len(s.Nodes))
	for _, n := range s.Nodes {
		nodes = append(nodes, n)
	}
	slices.SortFunc(nodes, func(a, b *Node) int { return cmp.Compare(a.Name, b.Name) })
	return nodes
}

// NodeByHostname returns the node registered with a hostname.
func (s *State) NodeByHostname(hostname string) (*Node, bool) {
	id, ok := s.hostnames[hostname]
	if !ok {
		return nil, false
	}
	return s.Nodes[id], true
}

func sortedBySubmit(m map[string]*Task) []*Task {
	out := make([]*Task, 0, len(m))
	for _, t := range m {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b *Task) int { return cmp.Compare(a.SubmitSeq, b.SubmitSeq) })
	return out
}

// setStatus changes a task's status and keeps TaskCounts and the set of
// failed tasks in step. Leaving a terminal status clears EndedAt.
func (s *State) setStatus(t *Task, st TaskStatus) {
	if t.Status != "" {
		s.uncount(t.Status)
	}
	if !st.Terminal() {
		t.EndedAt = time.Time{}
	}
	t.Status = st
	s.TaskCounts[st]++
	if st == TaskFailed {
		s.failed[t.ID] = t
	} else {
		delete(s.failed, t.ID)
	}
	if st.Terminal() {
		delete(s.cancelling, t.ID)
	}
}

// uncount removes one task from a status's count, dropping the entry at
// zero so that TaskCounts lists only the statuses tasks have.
func (s *State) uncount(st TaskStatus) {
	if s.TaskCounts[st]--; s.TaskCounts[st] <= 0 {
		delete(s.TaskCounts, st)
	}
}

func (s *State) enqueue(t *Task) {
	q := s.queues[t.ExecutionType]
	i, found := slices.BinarySearchFunc(q, t.SubmitSeq, func(e *Task, seq uint64) int { return cmp.Compare(e.SubmitSeq, seq) })
	if found {
		return
	}
	s.queues[t.ExecutionType] = slices.Insert(q, i, t)
}

func (s *State) dequeue(t *Task) {
	q := s.queues[t.ExecutionType]
	i, found := slices.BinarySearchFunc(q, t.SubmitSeq, func(e *Task, seq uint64) int { return cmp.Compare(e.SubmitSeq, seq) })
	if !found {
		return
	}
	q = slices.Delete(q, i, i+1)
	if len(q) == 0 {
		delete(s.queues, t.ExecutionType)
		return
	}
	s.queues[t.ExecutionType] = q
}

// TasksNewestFirst calls f for every task, newest submission first, until f
// returns false.
func (s *State) TasksNewestFirst(f func(*Task) bool) {
	for i := len(s.byAge) - 1; i >= 0; i-- {
		if !f(s.byAge[i]) {
			return
		}
	}
}

// TasksOlderThan calls f for every task submitted before sequence seq,
// newest first, until f returns false. It is the cursor of paginated lists.
func (s *State) TasksOlderThan(seq uint64, f func(*Task) bool) {
	i, _ := slices.BinarySearchFunc(s.byAge, seq, bySubmitSeq)
	for i--; i >= 0; i-- {
		if !f(s.byAge[i]) {
			return
		}
	}
}

// TagNames returns the names of the tags of current tasks, sorted.
func (s *State) TagNames() []string { return slices.Sorted(maps.Keys(s.tags)) }

// TagValues returns the values a tag has on current tasks, sorted, and
// whether any task has the tag.
func (s *State) TagValues(name string) ([]string, bool) {
	values, ok := s.tags[name]
	return slices.Sorted(maps.Keys(values)), ok
}

// FailedTasks returns the tasks in status failed, in submission order.
func (s *State) FailedTasks() []*Task { return sortedBySubmit(s.failed) }

// CancellingTasks returns the tasks whose cancel was requested and that
// have not ended yet, in submission order.
func (s *State) CancellingTasks() []*Task { return sortedBySubmit(s.cancelling) }
