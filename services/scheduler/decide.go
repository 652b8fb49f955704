// Package scheduler holds the scheduler: the actor that decides which task
// runs where and what happens after an attempt ends. Decide is the pure
// decision function; Scheduler runs it against the process's fold and
// proposes its decisions.
package scheduler

import (
	"fmt"
	"time"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/actor"
)

// Policy holds what the scheduler resolves into its decisions.
type Policy struct {
	// RetryDelay returns the pause before the next attempt of a task whose
	// attempt number attempt failed. Nil means retry at once, as the seed.
	RetryDelay func(taskID string, attempt int) time.Duration
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
func Decide(s *projections.State, now time.Time, policy Policy) ([]actor.Proposal, time.Time) {
	ps := decideOutcomes(s, now, policy)
	reservations, wake := decideReservations(s, now)
	return append(ps, reservations...), wake
}

func decideOutcomes(s *projections.State, now time.Time, policy Policy) []actor.Proposal {
	var ps []actor.Proposal
	for _, t := range s.AwaitingDecision() {
		p := actor.Proposal{CorrelationID: t.CorrelationID, CausationID: t.LastEventID}
		cause, msg, code := events.CauseExitCode, t.Error, copyCode(t.ExitCode)
		if t.StartFailed {
			cause = events.CauseStartError
		} else if msg == "" && t.ExitCode != nil {
			msg = fmt.Sprintf("container exited with code %d", *t.ExitCode)
		}
		switch {
		case !t.StartFailed && t.ExitCode != nil && *t.ExitCode == 0:
			p.Payload = &events.TaskCompleted{TaskID: t.ID, Attempt: t.Attempt, ExitCode: 0}
		case t.TryCount < t.MaxRetries:
			var notBefore time.Time
			if policy.RetryDelay != nil {
				if d := policy.RetryDelay(t.ID, t.Attempt); d > 0 {
					notBefore = events.Time(now.Add(d))
				}
			}
			p.Payload = &events.TaskRetrying{
				TaskID: t.ID, Attempt: t.Attempt, NextAttempt: t.Attempt + 1,
				NotBefore: notBefore, Cause: cause, Error: msg, ExitCode: code,
			}
		default:
			p.Payload = &events.TaskFailed{TaskID: t.ID, Attempt: t.Attempt, Cause: cause, Error: msg, ExitCode: code}
		}
		p.Key = actor.TaskKey(t.ID, t.Attempt, p.Payload.EventType())
		ps = append(ps, p)
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

func decideReservations(s *projections.State, now time.Time) ([]actor.Proposal, time.Time) {
	var (
		ps   []actor.Proposal
		wake time.Time
	)
	nodes := s.SortedNodes()
	for _, typ := range s.QueuedTypes() {
		cands := candidates(nodes, typ)
		for _, t := range s.Queue(typ) {
			if t.NotBefore.After(now) {
				if wake.IsZero() || t.NotBefore.Before(wake) {
					wake = t.NotBefore
				}
				continue
			}
			c := leastBusy(cands)
			if c == nil {
				break
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

// leastBusy returns the candidate with a free slot and the lowest busy share;
// candidates are in name order, so the first of equals wins.
func leastBusy(cands []*candidate) *candidate {
	var best *candidate
	for _, c := range cands {
		if len(c.free) == 0 {
			continue
		}
		// c.busy/c.total < best.busy/best.total, without division.
		if best == nil || c.busy*best.total < best.busy*c.total {
			best = c
		}
	}
	return best
}
