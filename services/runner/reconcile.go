package runner

import (
	"context"
	"log/slog"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/actor"
	"github.com/cbroker/broker/services/runtime"
)

// reconcile compares a node's containers with the fold, at start, when the
// node comes back and periodically:
//   - the container of an attempt the fold has running is left alone (its
//     goroutine adopts it; one that vanished is reported by that goroutine);
//   - the container of an attempt given up with its node (fencing) is
//     killed if it still runs, its end recorded as stale_attempt_exited, and
//     removed;
//   - any other container with the broker's label (an attempt that ended
//     but was not removed, a deleted task) is removed.
//
// Containers without the broker's label are never touched.
func (r *Runner) reconcile(ctx context.Context, node runtime.Node) {
	rt, ok := r.cfg.Runtimes.For(node.Hostname)
	if !ok {
		return
	}
	found, err := rt.List(ctx, node, r.cfg.BrokerID)
	if err != nil {
		if ctx.Err() == nil {
			r.log.WarnContext(ctx, "reconciling node", slog.String("node_id", node.ID), slog.Any("error", err))
		}
		return
	}
	for _, f := range found {
		var current, lost bool
		r.cfg.Replica.Read(func(s *projections.State) {
			t := s.Tasks[f.TaskID]
			current = t != nil && t.Attempt == f.Attempt && t.Active() && t.NodeID == node.ID
			lost = t != nil && t.Lost(f.Attempt)
		})
		switch {
		case current:
		case lost:
			r.fence(ctx, rt, node, f)
		default:
			r.log.InfoContext(ctx, "removing a leftover container", slog.String("node_id", node.ID), slog.String("container", f.Name))
			if err := rt.Remove(ctx, node, f.Name); err != nil {
				r.log.WarnContext(ctx, "removing a leftover container", slog.String("container", f.Name), slog.Any("error", err))
			}
		}
	}
}

// fence stops the container of a superseded attempt, records how it ended
// as stale_attempt_exited (which never changes the task), and removes it.
func (r *Runner) fence(ctx context.Context, rt runtime.Runtime, node runtime.Node, f runtime.Found) {
	code := f.ExitCode
	if f.Running {
		if err := rt.Kill(ctx, node, f.Name); err != nil {
			r.log.WarnContext(ctx, "killing a stale container", slog.String("container", f.Name), slog.Any("error", err))
			return
		}
		code = 137
	}
	p := &events.StaleAttemptExited{TaskID: f.TaskID, Attempt: f.Attempt, NodeID: node.ID, ExitCode: code, Running: f.Running}
	if _, err := r.cfg.Writer.Propose(ctx, actor.Proposal{Key: actor.TaskKey(f.TaskID, f.Attempt, p.EventType()), Payload: p}); err != nil {
		return
	}
	r.log.InfoContext(ctx, "stale attempt fenced", slog.String("task_id", f.TaskID), slog.Int("attempt", f.Attempt),
		slog.String("node_id", node.ID), slog.Bool("was_running", f.Running))
	if err := rt.Remove(ctx, node, f.Name); err != nil {
		r.log.WarnContext(ctx, "removing a stale container", slog.String("container", f.Name), slog.Any("error", err))
	}
}

// lost reports whether the fold gave the attempt up with its node.
func (r *Runner) lost(key attemptKey) bool {
	lost := false
	r.cfg.Replica.Read(func(s *projections.State) {
		t := s.Tasks[key.task]
		lost = t != nil && t.Lost(key.attempt)
	})
	return lost
}
