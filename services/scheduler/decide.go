// Package scheduler holds the scheduler: the actor that decides which task
// runs where and what happens after an attempt ends. Decide is the pure
// decision function; Scheduler runs it against the process's fold and
// proposes its decisions.
package scheduler

import (
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/actor"
)

// Policy holds what the scheduler resolves into its decisions.
type Policy struct {
	// Jitter returns a number in [0, 1) that spreads retry delays. Defaults
	// to math/rand; tests fix it.
	Jitter func() float64
	// FailedTimeout is how long a task may stay failed before the scheduler
	// marks it as error, as the seed's timeout_tasks_after_hours (20 h). Zero
	// disables it.
	FailedTimeout time.Duration
	// Mounts are the storage mount names every node has (the broker-wide
	// ones). A task that names another mount only goes to a node that
	// defines it.
	Mounts map[string]bool
}

// Decide returns the scheduler's proposals for the state at time now, and
// the earliest future time at which a waiting retry becomes due (zero if
// none). It does not modify the state.
//
// Two kinds of decisions are made:
//   - for every task whose attempt ended: completed (exit code 0), retrying
//     (retries left) or failed;
//   - per execution type, in queue order (submission order), a slot for each
//     task that is due, on the schedulable node with the lowest busy share of
//     that type; ties go to the node whose name sorts first. A type whose
//     slots are all busy stops there: no task overtakes the one in front.
//   - a cancelled decision for every task being cancelled that is waiting;
//   - marked_as_error for every task failed for longer than FailedTimeout.
func Decide(s *projections.State, now time.Time, policy Policy) ([]actor.Proposal, time.Time) {
	ps := decideOutcomes(s, now, policy)
	ps = append(ps, decideCancels(s)...)
	ps = append(ps, decideLostAttempts(s)...)
	kills, wakeKill := decideTimeouts(s, now)
	ps = append(ps, kills...)
	timeouts, wake := decideFailedTimeouts(s, now, policy.FailedTimeout)
	ps = append(ps, timeouts...)
	reservations, wakeRetry := decideReservations(s, now, policy.Mounts)
	return append(ps, reservations...), earliest(earliest(wake, wakeRetry), wakeKill)
}

// decideLostAttempts requeues the attempts whose node went down, at once and
// without using up a retry, or fails the task once it has lost
// MaxNodeLosses attempts that way.
func decideLostAttempts(s *projections.State) []actor.Proposal {
	var ps []actor.Proposal
	for _, t := range s.ActiveTasks() {
		if n, ok := s.Nodes[t.NodeID]; ok && n.Status != projections.NodeUnavailable {
			continue
		}
		if t.CancelRequested {
			ps = append(ps, proposal(t, &events.TaskCancelled{TaskID: t.ID, Attempt: t.Attempt}))
			continue
		}
		if t.NodeLosses >= t.MaxNodeLosses {
			ps = append(ps, proposal(t, &events.TaskFailed{
				TaskID: t.ID, Attempt: t.Attempt, Cause: events.CauseNodeLost,
				Error: "the attempt's node " + t.NodeID + " went down",
			}))
			continue
		}
		ps = append(ps, proposal(t, &events.TaskRetrying{
			TaskID: t.ID, Attempt: t.Attempt, NextAttempt: t.Attempt + 1,
			Cause: events.CauseNodeLost, Error: "the attempt's node " + t.NodeID + " went down",
		}))
	}
	return ps
}

// decideTimeouts stops the attempts that have run longer than their task's
// timeout, and returns when the next one is due.
func decideTimeouts(s *projections.State, now time.Time) ([]actor.Proposal, time.Time) {
	var (
		ps   []actor.Proposal
		wake time.Time
	)
	for _, t := range s.ActiveTasks() {
		if t.Timeout <= 0 || t.Status != projections.TaskStarted || t.Killed || t.StartedAt.IsZero() {
			continue
		}
		due := t.StartedAt.Add(t.Timeout)
		if due.After(now) {
			wake = earliest(wake, due)
			continue
		}
		ps = append(ps, proposal(t, &events.KillRequested{TaskID: t.ID, Attempt: t.Attempt, Cause: events.CauseTimeout}))
	}
	return ps, wake
}

// earliest returns the earlier of two wake times; zero means none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

func proposal(t *projections.Task, p events.Payload) actor.Proposal {
	return actor.Proposal{
		Key: actor.TaskKey(t.ID, t.Attempt, p.EventType()), Payload: p,
		CorrelationID: t.CorrelationID, CausationID: t.LastEventID,
	}
}

// decideCancels cancels the waiting tasks whose cancel was requested; a
// running one is cancelled once its stopped attempt has ended.
func decideCancels(s *projections.State) []actor.Proposal {
	var ps []actor.Proposal
	for _, t := range s.CancellingTasks() {
		if t.Queued() {
			ps = append(ps, proposal(t, &events.TaskCancelled{TaskID: t.ID, Attempt: t.Attempt}))
		}
	}
	return ps
}

// decideFailedTimeouts marks as error the tasks failed for longer than
// timeout, whether or not they ever started (the seed skipped those).
func decideFailedTimeouts(s *projections.State, now time.Time, timeout time.Duration) ([]actor.Proposal, time.Time) {
	if timeout <= 0 {
		return nil, time.Time{}
	}
	var (
		ps   []actor.Proposal
		wake time.Time
	)
	for _, t := range s.FailedTasks() {
		due := t.EndedAt.Add(timeout)
		if due.After(now) {
			wake = earliest(wake, due)
			continue
		}
		ps = append(ps, proposal(t, &events.MarkedAsError{
			TaskID: t.ID,
			Reason: fmt.Sprintf("This task was automatically marked as error: it had failed for more than %s.", timeout),
		}))
	}
	return ps, wake
}

// RetryDelay is the pause before a task's next retry: the task's minimum
// backoff doubled for every retry it has used, at most its maximum, with
// "equal jitter" (half of it fixed, half random) so that tasks failing
// together do not retry together. Zero when the task has no backoff.
func RetryDelay(t *projections.Task, jitter float64) time.Duration {
	if t.RetryBackoffMin <= 0 {
		return 0
	}
	d := t.RetryBackoffMin
	for range t.TryCount {
		if d >= t.RetryBackoffMax/2 {
			d = t.RetryBackoffMax
			break
		}
		d *= 2
	}
	d = min(d, max(t.RetryBackoffMax, t.RetryBackoffMin))
	return d/2 + time.Duration(jitter*float64(d/2))
}

// failureCause says why an ended attempt failed, for its retrying or
// failed event.
func failureCause(t *projections.Task) (cause, msg string) {
	msg = t.Error
	switch {
	case t.StartFailed:
		return events.CauseStartError, msg
	case t.Vanished:
		return events.CauseVanished, msg
	case t.Killed && t.KillCause == events.CauseTimeout:
		return events.CauseTimeout, fmt.Sprintf("the attempt ran longer than the task's timeout (%s) and was stopped", t.Timeout)
	case t.Killed:
		cause = events.CauseKilled
	default:
		cause = events.CauseExitCode
	}
	if msg == "" && t.ExitCode != nil {
		msg = fmt.Sprintf("container exited with code %d", *t.ExitCode)
	}
	return cause, msg
}

func decideOutcomes(s *projections.State, now time.Time, policy Policy) []actor.Proposal {
	var ps []actor.Proposal
	jitter := policy.Jitter
	if jitter == nil {
		jitter = rand.Float64
	}
	for _, t := range s.AwaitingDecision() {
		var payload events.Payload
		cause, msg := failureCause(t)
		code := copyCode(t.ExitCode)
		switch {
		case !t.StartFailed && t.ExitCode != nil && *t.ExitCode == 0:
			payload = &events.TaskCompleted{TaskID: t.ID, Attempt: t.Attempt, ExitCode: 0}
		case t.CancelRequested:
			payload = &events.TaskCancelled{TaskID: t.ID, Attempt: t.Attempt}
		case t.TryCount < t.MaxRetries:
			var notBefore time.Time
			if d := RetryDelay(t, jitter()); d > 0 {
				notBefore = events.Time(now.Add(d))
			}
			payload = &events.TaskRetrying{
				TaskID: t.ID, Attempt: t.Attempt, NextAttempt: t.Attempt + 1,
				NotBefore: notBefore, Cause: cause, Error: msg, ExitCode: code,
			}
		default:
			payload = &events.TaskFailed{TaskID: t.ID, Attempt: t.Attempt, Cause: cause, Error: msg, ExitCode: code}
		}
		ps = append(ps, proposal(t, payload))
	}
	return ps
}

// copyCode copies an exit code out of the state: proposals are encoded
// after the fold's lock is released.
func copyCode(p *int) *int {
	if p == nil {
		return nil
	}
	c := *p
	return &c
}

// candidate is a node's capacity for one execution type during one round.
type candidate struct {
	node  *projections.Node
	busy  int
	total int
	free  []*projections.Slot
}

func decideReservations(s *projections.State, now time.Time, mounts map[string]bool) ([]actor.Proposal, time.Time) {
	var (
		ps   []actor.Proposal
		wake time.Time
	)
	nodes := s.SortedNodes()
	for _, typ := range s.QueuedTypes() {
		cands := candidates(nodes, typ)
		for _, t := range s.Queue(typ) {
			if t.CancelRequested {
				continue // decideCancels takes it out of the queue
			}
			if t.NotBefore.After(now) {
				wake = earliest(wake, t.NotBefore)
				continue
			}
			c, free := leastBusy(cands, func(n *projections.Node) bool { return n.HasMounts(t.StorageMounts, mounts) })
			if !free {
				break // no slot of this type anywhere: nothing behind can run either
			}
			if c == nil {
				continue // free slots, but not on a node with the task's mounts
			}
			slot := c.free[0]
			c.free = c.free[1:]
			c.busy++
			attempt := t.Attempt + 1
			payload := &events.SlotReserved{
				TaskID: t.ID, Attempt: attempt, NodeID: c.node.ID, SlotID: slot.ID,
				ContainerName: projections.ContainerName(t.Name, t.ID, attempt),
			}
			ps = append(ps, actor.Proposal{
				Key:     actor.TaskKey(t.ID, attempt, payload.EventType()),
				Payload: payload, CorrelationID: t.CorrelationID, CausationID: t.LastEventID,
			})
		}
	}
	return ps, wake
}

func candidates(nodes []*projections.Node, typ string) []*candidate {
	var out []*candidate
	for _, n := range nodes {
		if !n.Schedulable() {
			continue
		}
		c := &candidate{node: n}
		for _, slot := range n.Slots {
			if slot.ExecutionType != typ {
				continue
			}
			c.total++
			if slot.Status == projections.SlotAvailable {
				c.free = append(c.free, slot)
			} else {
				c.busy++
			}
		}
		if c.total > 0 {
			out = append(out, c)
		}
	}
	return out
}

// leastBusy returns the candidate that fits, has a free slot and the lowest
// busy share (candidates are in name order, so the first of equals wins),
// and whether any candidate had a free slot at all.
func leastBusy(cands []*candidate, fits func(*projections.Node) bool) (best *candidate, free bool) {
	for _, c := range cands {
		if len(c.free) == 0 {
			continue
		}
		free = true
		if !fits(c.node) {
			continue
		}
		// c.busy/c.total < best.busy/best.total, without division.
		if best == nil || c.busy*best.total < best.busy*c.total {
			best = c
		}
	}
	return best, free
}
