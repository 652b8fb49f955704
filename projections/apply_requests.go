package projections

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/cbroker/broker/events"
)

func (s *State) applyCancelRequested(t *Task) error {
	switch {
	case t.Status.Terminal():
		return rejectCode(CodeStatus, "task %s is %s; only a task that has not ended can be cancelled", t.ID, t.Status)
	case t.CancelRequested:
		return rejectCode(CodeExists, "cancel of task %s was already requested", t.ID)
	}
	t.CancelRequested = true
	s.cancelling[t.ID] = t
	return nil
}

func (s *State) applyCancelled(t *Task, p *events.TaskCancelled) error {
	switch {
	case !t.CancelRequested:
		return rejectf("task %s: no cancel was requested", t.ID)
	case p.Attempt != t.Attempt:
		return rejectf("attempt %d of task %s is not current (current %d)", p.Attempt, t.ID, t.Attempt)
	case t.Queued():
		s.dequeue(t)
	case t.AttemptEnded:
		s.decided(t)
	case s.loseAttempt(t, p.Attempt) == nil: // its node went down
		t.LostAttempts = append(t.LostAttempts, t.Attempt)
		s.endAttempt(t)
		s.decided(t)
	default:
		return rejectf("task %s is %s; it is cancelled once its attempt has ended", t.ID, t.Status)
	}
	s.setStatus(t, TaskCancelled)
	return nil
}

func applyKillRequested(t *Task, p *events.KillRequested) error {
	if t.Status != TaskStarted || !t.Active() || p.Attempt != t.Attempt {
		return rejectCode(CodeStatus, "task %s is %s (attempt %d), not running attempt %d", t.ID, t.Status, t.Attempt, p.Attempt)
	}
	t.KillRequested = p.Attempt
	t.Killed, t.KillCause = true, p.Cause
	return nil
}

func (s *State) applyRetryRequested(t *Task) error {
	if !t.Status.Terminal() {
		return rejectCode(CodeStatus, "task %s is %s; only a task that has ended can be retried", t.ID, t.Status)
	}
	s.setStatus(t, TaskRetry)
	t.TryCount = 0
	t.CancelRequested = false
	t.NotBefore = time.Time{}
	s.enqueue(t)
	return nil
}

func (s *State) applyMarkedAsError(t *Task, p *events.MarkedAsError) error {
	if t.Status != TaskFailed {
		return rejectCode(CodeStatus, "task %s is %s; it must have failed status to be marked as error", t.ID, t.Status)
	}
	s.setStatus(t, TaskError)
	if p.Reason != "" {
		t.Error = strings.TrimSpace(t.Error + "\n" + p.Reason)
	}
	return nil
}

// applyDeleted forgets an ended task; its history stays in the log.
func (s *State) applyDeleted(t *Task) error {
	if !t.Status.Terminal() {
		return rejectCode(CodeStatus, "task %s is %s; only a task that has ended can be deleted", t.ID, t.Status)
	}
	s.uncount(t.Status)
	delete(s.failed, t.ID)
	delete(s.Tasks, t.ID)
	if i, ok := slices.BinarySearchFunc(s.byAge, t.SubmitSeq, bySubmitSeq); ok {
		s.byAge = slices.Delete(s.byAge, i, i+1)
	}
	for k, v := range t.Tags {
		s.untag(k, v)
	}
	return nil
}

func bySubmitSeq(t *Task, seq uint64) int { return cmp.Compare(t.SubmitSeq, seq) }

func (s *State) tag(k, v string) {
	if s.tags[k] == nil {
		s.tags[k] = map[string]int{}
	}
	s.tags[k][v]++
}

func (s *State) untag(k, v string) {
	if s.tags[k][v]--; s.tags[k][v] <= 0 {
		delete(s.tags[k], v)
	}
	if len(s.tags[k]) == 0 {
		delete(s.tags, k)
	}
}

// applyUpdated replaces a node's slot counts: new slots at once, surplus
// free slots removed at once, surplus busy slots marked retiring and removed
// when they are released.
func applyUpdated(n *Node, p *events.NodeUpdated) error {
	if err := checkSlots(n.ID, p.Slots); err != nil {
		return err
	}
	types := map[string]bool{}
	for _, sl := range n.Slots {
		types[sl.ExecutionType] = true
	}
	for typ := range p.Slots {
		types[typ] = true
	}
	for _, typ := range slices.Sorted(maps.Keys(types)) {
		n.scale(typ, p.Slots[typ])
	}
	n.SlotsWanted = p.Slots
	if p.Mounts != nil {
		n.Mounts = p.Mounts
	}
	return nil
}

func checkSlots(nodeID string, slots map[string]int) error {
	for typ, n := range slots {
		if typ == "" || n < 0 {
			return rejectf("node %s has an invalid slot count %q=%d", nodeID, typ, n)
		}
	}
	return nil
}

// scale brings the slots of one execution type to want.
func (n *Node) scale(typ string, want int) {
	var kept, retiring []*Slot
	maxIndex := 0
	for _, sl := range n.Slots {
		if sl.ExecutionType != typ {
			continue
		}
		maxIndex = max(maxIndex, slotIndex(sl))
		if sl.Retiring {
			retiring = append(retiring, sl)
		} else {
			kept = append(kept, sl)
		}
	}
	// Grow: take back retiring slots first, then add new ones.
	for len(kept) < want && len(retiring) > 0 {
		retiring[0].Retiring = false
		kept, retiring = append(kept, retiring[0]), retiring[1:]
	}
	for len(kept) < want {
		maxIndex++
		sl := &Slot{ID: fmt.Sprintf("%s-%d", typ, maxIndex), ExecutionType: typ, Status: SlotAvailable}
		n.Slots = append(n.Slots, sl)
		kept = append(kept, sl)
	}
	// Shrink: free slots go at once (highest index first), busy ones retire.
	surplus := len(kept) - want
	for i := len(kept) - 1; i >= 0 && surplus > 0; i-- {
		if kept[i].Status == SlotAvailable {
			n.removeSlot(kept[i])
			surplus--
		}
	}
	for i := len(kept) - 1; i >= 0 && surplus > 0; i-- {
		if kept[i].Status != SlotAvailable && !kept[i].Retiring {
			kept[i].Retiring = true
			surplus--
		}
	}
	n.sortSlots()
}

func slotIndex(sl *Slot) int {
	var i int
	_, _ = fmt.Sscanf(sl.ID[len(sl.ExecutionType)+1:], "%d", &i)
	return i
}

func (n *Node) removeSlot(sl *Slot) {
	n.Slots = slices.DeleteFunc(n.Slots, func(x *Slot) bool { return x == sl })
}

// sortSlots orders slots by execution type, then index.
func (n *Node) sortSlots() {
	slices.SortStableFunc(n.Slots, func(a, b *Slot) int {
		return cmp.Or(cmp.Compare(a.ExecutionType, b.ExecutionType), cmp.Compare(slotIndex(a), slotIndex(b)))
	})
}

func (s *State) applyRemoved(n *Node) error {
	for _, sl := range n.Slots {
		if sl.Status != SlotAvailable {
			return rejectCode(CodeBusy, "node %s has a busy slot %s (task %s)", n.ID, sl.ID, sl.TaskID)
		}
	}
	delete(s.Nodes, n.ID)
	delete(s.hostnames, n.Hostname)
	s.renameNodes()
	return nil
}

// applyNodeKill asks for the containers of every running task of the node
// to be killed.
func (s *State) applyNodeKill(n *Node) {
	for _, t := range s.active {
		if t.NodeID == n.ID && t.Status == TaskStarted {
			t.KillRequested = t.Attempt
		}
	}
}
