package projections

import (
	"fmt"
	"slices"
	"time"

	"github.com/cbroker/broker/events"
)

func (s *State) applySubmitted(env events.Envelope, p *events.TaskSubmitted) error {
	switch {
	case p.TaskID != env.AggregateID:
		return rejectf("payload task %q does not match aggregate %q", p.TaskID, env.AggregateID)
	case s.Tasks[p.TaskID] != nil:
		return rejectCode(CodeExists, "task %s already exists", p.TaskID)
	case p.ExecutionType == "":
		return rejectf("task %s has no execution type", p.TaskID)
	case p.MaxRetries < 0:
		return rejectf("task %s has negative max_retries %d", p.TaskID, p.MaxRetries)
	}
	t := &Task{
		ID:              p.TaskID,
		Name:            p.Name,
		Image:           p.Image,
		Cmd:             p.Cmd,
		ExecutionType:   p.ExecutionType,
		StorageMounts:   p.StorageMounts,
		Tags:            p.Tags,
		PersistLogs:     p.PersistLogs,
		MaxRetries:      p.MaxRetries,
		RetryBackoffMin: time.Duration(p.RetryBackoffMinMs) * time.Millisecond,
		RetryBackoffMax: time.Duration(p.RetryBackoffMaxMs) * time.Millisecond,
		MaxNodeLosses:   p.MaxNodeLosses,
		Timeout:         time.Duration(p.TimeoutMs) * time.Millisecond,
		IdempotencyKey:  p.IdempotencyKey,
		CallbackURL:     p.CallbackURL,
		CorrelationID:   env.CorrelationID,
		CreatedAt:       p.CreatedAt,
		SubmitSeq:       env.Seq,
		LastEventID:     env.ID,
	}
	s.Tasks[t.ID] = t
	s.setStatus(t, TaskWaiting)
	s.enqueue(t)
	s.byAge = append(s.byAge, t) // sequences only grow
	for k, v := range t.Tags {
		s.tag(k, v)
	}
	return nil
}

func (s *State) applyReserved(t *Task, p *events.SlotReserved) error {
	if !t.Queued() {
		return rejectf("task %s is %s, not waiting for a slot", t.ID, t.Status)
	}
	if t.CancelRequested {
		return rejectf("task %s is being cancelled", t.ID)
	}
	if p.Attempt != t.Attempt+1 {
		return rejectf("attempt %d of task %s is not the next attempt (%d)", p.Attempt, t.ID, t.Attempt+1)
	}
	if p.ContainerName == "" {
		return rejectf("reservation for task %s has no container name", t.ID)
	}
	n, ok := s.Nodes[p.NodeID]
	if !ok {
		return rejectf("node %s does not exist", p.NodeID)
	}
	if !n.Schedulable() {
		return rejectf("node %s is %s and accept_new_tasks=%t", n.ID, n.Status, n.AcceptNewTasks)
	}
	slot := n.Slot(p.SlotID)
	switch {
	case slot == nil:
		return rejectf("node %s has no slot %s", n.ID, p.SlotID)
	case slot.ExecutionType != t.ExecutionType:
		return rejectf("slot %s of node %s is for %s, not %s", slot.ID, n.ID, slot.ExecutionType, t.ExecutionType)
	case slot.Status != SlotAvailable:
		return rejectf("slot %s of node %s is %s for task %s attempt %d", slot.ID, n.ID, slot.Status, slot.TaskID, slot.Attempt)
	}
	s.dequeue(t)
	s.setStatus(t, TaskStarting)
	t.Attempt = p.Attempt
	t.NodeID, t.SlotID, t.ContainerName, t.ContainerID = n.ID, slot.ID, p.ContainerName, ""
	t.Claim, t.ClaimSeq = "", 0
	t.AttemptEnded, t.StartFailed = false, false
	t.Killed, t.KillCause, t.Vanished = false, "", false
	slot.Status, slot.TaskID, slot.Attempt = SlotAttaching, t.ID, t.Attempt
	s.active[t.ID] = t
	return nil
}

// currentAttempt checks that a runner report is about the task's current,
// still running attempt on the node it was reserved on.
func currentAttempt(t *Task, attempt int, nodeID string) error {
	switch {
	case attempt != t.Attempt:
		return rejectf("attempt %d of task %s is not current (current %d)", attempt, t.ID, t.Attempt)
	case !t.Active():
		return rejectf("attempt %d of task %s is not running (task %s)", attempt, t.ID, t.Status)
	case nodeID != t.NodeID:
		return rejectf("attempt %d of task %s runs on node %s, not %s", attempt, t.ID, t.NodeID, nodeID)
	}
	return nil
}

// applyClaimed gives the attempt to the runner that creates its container:
// the first claim wins; a later one only when it names the current claimant
// (a node's new owner taking over a claim its old owner left). A claim with
// no runner withdraws the one it names (its runner gave the node up before
// starting anything). ClaimSeq moves with every accepted claim or
// withdrawal.
func applyClaimed(t *Task, seq uint64, p *events.AttemptClaimed) error {
	if err := currentAttempt(t, p.Attempt, p.NodeID); err != nil {
		return err
	}
	switch {
	case t.Status != TaskStarting:
		return rejectf("attempt %d of task %s was already started", p.Attempt, t.ID)
	case p.Runner == "" && p.Supersedes == "":
		return rejectf("claim of attempt %d of task %s names no runner", p.Attempt, t.ID)
	case t.Claim != p.Supersedes:
		if t.Claim == "" {
			return rejectf("attempt %d of task %s is not claimed by %s", p.Attempt, t.ID, p.Supersedes)
		}
		return rejectf("attempt %d of task %s is claimed by %s", p.Attempt, t.ID, t.Claim)
	}
	t.Claim, t.ClaimSeq = p.Runner, seq
	return nil
}

func (s *State) applyStarted(t *Task, p *events.ContainerStarted) error {
	if err := currentAttempt(t, p.Attempt, p.NodeID); err != nil {
		return err
	}
	if t.Status != TaskStarting {
		return rejectf("attempt %d of task %s was already started", p.Attempt, t.ID)
	}
	s.setStatus(t, TaskStarted)
	t.ContainerID = p.ContainerID
	t.StartedAt = p.StartedAt
	t.FinishedAt = time.Time{}
	if slot := s.slotOf(t); slot != nil {
		slot.Status = SlotRunning
	}
	return nil
}

func (s *State) applyStartFailed(t *Task, p *events.StartFailed) error {
	if err := currentAttempt(t, p.Attempt, p.NodeID); err != nil {
		return err
	}
	if t.Status != TaskStarting {
		return rejectf("attempt %d of task %s already started; it cannot fail to start", p.Attempt, t.ID)
	}
	t.StartFailed = true
	t.Error = p.Error
	s.endAttempt(t)
	return nil
}

func (s *State) applyExited(t *Task, p *events.ContainerExited) error {
	if err := currentAttempt(t, p.Attempt, p.NodeID); err != nil {
		return err
	}
	code := p.ExitCode
	t.ExitCode = &code
	t.Error = p.Error
	t.Vanished = p.Vanished
	if p.OOMKilled && t.Error == "" {
		t.Error = "container was killed: out of memory"
	}
	if !p.StartedAt.IsZero() {
		t.StartedAt = p.StartedAt
	}
	t.FinishedAt = p.FinishedAt
	s.endAttempt(t)
	return nil
}

// endAttempt releases the attempt's slot and leaves the task waiting for the
// scheduler's decision.
func (s *State) endAttempt(t *Task) {
	if slot := s.slotOf(t); slot != nil {
		slot.Status, slot.TaskID, slot.Attempt = SlotAvailable, "", 0
		if slot.Retiring {
			s.Nodes[t.NodeID].removeSlot(slot)
		}
	}
	t.AttemptEnded = true
	t.KillRequested = 0
	delete(s.active, t.ID)
	s.awaiting[t.ID] = t
}

// slotOf returns the slot held by the task's current attempt, or nil.
func (s *State) slotOf(t *Task) *Slot {
	n, ok := s.Nodes[t.NodeID]
	if !ok {
		return nil
	}
	slot := n.Slot(t.SlotID)
	if slot == nil || slot.TaskID != t.ID || slot.Attempt != t.Attempt {
		return nil
	}
	return slot
}

func applyLogsArchived(t *Task, p *events.LogsArchived) error {
	if p.Attempt < 1 || p.Attempt > t.Attempt {
		return rejectf("task %s has no attempt %d", t.ID, p.Attempt)
	}
	if p.Object == "" {
		return rejectf("logs of task %s attempt %d have no object", t.ID, p.Attempt)
	}
	i, found := slices.BinarySearchFunc(t.Logs, p.Attempt, func(l LogRef, a int) int { return l.Attempt - a })
	if found {
		return rejectf("logs of task %s attempt %d are already archived", t.ID, p.Attempt)
	}
	t.Logs = slices.Insert(t.Logs, i, LogRef{Attempt: p.Attempt, Object: p.Object, Bytes: p.Bytes, Truncated: p.Truncated})
	return nil
}

// decidable checks that a decision is about the task's current attempt, which
// has ended and has no decision yet.
func decidable(t *Task, attempt int) error {
	switch {
	case attempt != t.Attempt:
		return rejectf("attempt %d of task %s is not current (current %d)", attempt, t.ID, t.Attempt)
	case !t.AttemptEnded:
		return rejectf("attempt %d of task %s has not ended or was already decided (task %s)", attempt, t.ID, t.Status)
	}
	return nil
}

func (t *Task) succeeded() bool {
	return !t.StartFailed && t.ExitCode != nil && *t.ExitCode == 0
}

func (s *State) applyCompleted(t *Task, p *events.TaskCompleted) error {
	if err := decidable(t, p.Attempt); err != nil {
		return err
	}
	if !t.succeeded() {
		return rejectf("attempt %d of task %s did not succeed", p.Attempt, t.ID)
	}
	s.setStatus(t, TaskCompleted)
	t.Error = ""
	s.decided(t)
	return nil
}

func (s *State) applyRetrying(t *Task, p *events.TaskRetrying) error {
	if p.Cause == events.CauseNodeLost {
		return s.applyNodeLost(t, p.Attempt, p.NextAttempt, p.NotBefore)
	}
	if err := decidable(t, p.Attempt); err != nil {
		return err
	}
	switch {
	case t.succeeded():
		return rejectf("attempt %d of task %s succeeded; it is not retried", p.Attempt, t.ID)
	case t.TryCount >= t.MaxRetries:
		return rejectf("task %s has used its %d retries", t.ID, t.MaxRetries)
	case t.CancelRequested:
		return rejectf("task %s is being cancelled; it is not retried", t.ID)
	case p.NextAttempt != t.Attempt+1:
		return rejectf("next attempt of task %s is %d, not %d", t.ID, t.Attempt+1, p.NextAttempt)
	}
	s.setStatus(t, TaskRetry)
	t.TryCount++
	t.NotBefore = p.NotBefore
	if p.Error != "" {
		t.Error = p.Error
	}
	s.decided(t)
	s.enqueue(t)
	return nil
}

func (s *State) applyFailed(t *Task, p *events.TaskFailed) error {
	if p.Cause == events.CauseNodeLost {
		if err := s.loseAttempt(t, p.Attempt); err != nil {
			return err
		}
		if t.NodeLosses < t.MaxNodeLosses {
			return rejectf("task %s has lost %d of %d attempts to dead nodes; it is requeued, not failed", t.ID, t.NodeLosses, t.MaxNodeLosses)
		}
		t.LostAttempts = append(t.LostAttempts, t.Attempt)
		s.endAttempt(t)
		s.decided(t)
		s.setStatus(t, TaskFailed)
		t.Error = fmt.Sprintf("attempt %d was lost with node %s, and %d attempts were lost before", t.Attempt, t.NodeID, t.NodeLosses)
		return nil
	}
	if err := decidable(t, p.Attempt); err != nil {
		return err
	}
	if t.succeeded() {
		return rejectf("attempt %d of task %s succeeded; it cannot fail", p.Attempt, t.ID)
	}
	s.setStatus(t, TaskFailed)
	if p.Error != "" {
		t.Error = p.Error
	}
	s.decided(t)
	return nil
}

func (s *State) decided(t *Task) {
	t.AttemptEnded = false
	delete(s.awaiting, t.ID)
}

// loseAttempt checks that an attempt may be given up because its node went
// down: it is the current, running attempt and its node is unavailable (or
// gone).
func (s *State) loseAttempt(t *Task, attempt int) error {
	switch {
	case attempt != t.Attempt:
		return rejectf("attempt %d of task %s is not current (current %d)", attempt, t.ID, t.Attempt)
	case !t.Active():
		return rejectf("attempt %d of task %s is not running (task %s)", attempt, t.ID, t.Status)
	}
	if n, ok := s.Nodes[t.NodeID]; ok && n.Status != NodeUnavailable {
		return rejectf("node %s of task %s is %s, not unavailable", t.NodeID, t.ID, n.Status)
	}
	return nil
}

// applyNodeLost requeues an attempt lost with its node. It does not use up
// a retry; NodeLosses is capped by MaxNodeLosses.
func (s *State) applyNodeLost(t *Task, attempt, next int, notBefore time.Time) error {
	if err := s.loseAttempt(t, attempt); err != nil {
		return err
	}
	switch {
	case t.NodeLosses >= t.MaxNodeLosses:
		return rejectf("task %s has lost %d attempts to dead nodes, its cap", t.ID, t.NodeLosses)
	case next != t.Attempt+1:
		return rejectf("next attempt of task %s is %d, not %d", t.ID, t.Attempt+1, next)
	case t.CancelRequested:
		return rejectf("task %s is being cancelled; it is not requeued", t.ID)
	}
	t.LostAttempts = append(t.LostAttempts, t.Attempt)
	s.endAttempt(t)
	s.decided(t)
	t.NodeLosses++
	t.Error = fmt.Sprintf("attempt %d was lost with node %s", t.Attempt, t.NodeID)
	s.setStatus(t, TaskRetry)
	t.NotBefore = notBefore
	s.enqueue(t)
	return nil
}

// applyStaleExited records how a superseded attempt's container ended. It
// changes nothing else.
func applyStaleExited(t *Task, p *events.StaleAttemptExited) error {
	if !t.Lost(p.Attempt) {
		return rejectf("attempt %d of task %s was not lost with its node, or its stale exit is recorded already", p.Attempt, t.ID)
	}
	t.LostAttempts = slices.DeleteFunc(t.LostAttempts, func(a int) bool { return a == p.Attempt })
	t.StaleExits++
	return nil
}
