package webhook

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/actor"
)

// maxErrorLen caps the error text recorded for an attempt.
const maxErrorLen = 1000

// round is the state of one Run: only its loop's goroutine touches the maps.
type round struct {
	*Service
	stream jetstream.Stream

	last     uint64               // the sequence pending reflects
	pending  map[string]delivery  // task id → delivery with something to do
	inflight map[string]bool      // task ids a worker is busy with
	hold     map[string]time.Time // task ids left alone until then
	done     chan report          // workers' reports
	wg       sync.WaitGroup       // the workers
}

// scan fills the pending set from every task and returns the sequence it
// reflects.
func (r *round) scan() uint64 {
	var seq uint64
	r.cfg.Replica.Read(func(s *projections.State) {
		seq = s.Seq
		clear(r.pending)
		for _, t := range s.Tasks {
			if d, ok := pendingOf(t); ok {
				r.pending[t.ID] = d
			}
		}
	})
	return seq
}

// refresh brings the pending set up to date with the events folded since
// the last call and reports whether it changed: most events are about
// tasks without a pending delivery, and leave it as it was.
func (r *round) refresh() bool {
	var (
		head    uint64
		changed bool
		rescan  bool
	)
	r.cfg.Replica.ReadSince(r.last, func(s *projections.State, applied []projections.Applied, complete bool) {
		head = s.Seq
		if !complete {
			rescan = true
			return
		}
		for _, a := range applied {
			if !a.Outcome.Accepted || a.Type.Aggregate() != events.AggregateTask {
				continue
			}
			old, had := r.pending[a.AggregateID]
			if t, ok := s.Tasks[a.AggregateID]; ok {
				if d, ok := pendingOf(t); ok {
					r.pending[t.ID] = d
					changed = changed || !had || d != old
					continue
				}
			}
			delete(r.pending, a.AggregateID)
			changed = changed || had
		}
	})
	if rescan {
		r.log.Warn("folded events no longer remembered; scanning every task")
		head, changed = r.scan(), true
	}
	r.last = head
	return changed
}

// loop starts the due deliveries whenever the fold changes, a worker ends or
// the next delivery becomes due, until ctx is done.
func (r *round) loop(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	dirty := true
	var next time.Time // when the next delivery becomes due
	for {
		changed := r.cfg.Replica.Changed()
		if r.refresh() {
			dirty = true
		}
		now := r.cfg.Now()
		if dirty || (!next.IsZero() && !now.Before(next)) {
			next = r.start(ctx, now)
			dirty = false
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
			if !next.IsZero() {
				timer.Reset(max(next.Sub(now), 0))
			}
		}
		select {
		case <-changed:
		case d := <-r.done:
			delete(r.inflight, d.taskID)
			if d.hold > 0 {
				r.hold[d.taskID] = r.cfg.Now().Add(d.hold)
			}
			dirty = true
		case <-timer.C:
			dirty = true
		case <-ctx.Done():
			return nil
		}
	}
}

// start hands every due delivery to a worker, as far as the concurrency
// allows, and returns when the next one not started becomes due (zero if
// none is waiting for a time).
func (r *round) start(ctx context.Context, now time.Time) time.Time {
	var next time.Time
	for id, until := range r.hold {
		if !now.Before(until) || r.pending[id].taskID == "" {
			delete(r.hold, id)
		}
	}
	for _, d := range sortedDue(r.pending) {
		if r.inflight[d.taskID] {
			continue
		}
		due := d.due
		if until, ok := r.hold[d.taskID]; ok && until.After(due) {
			due = until
		}
		if due.After(now) {
			if next.IsZero() || due.Before(next) {
				next = due
			}
			continue
		}
		if len(r.inflight) >= r.cfg.Concurrency {
			continue // a worker's end wakes the loop
		}
		r.inflight[d.taskID] = true
		r.wg.Go(func() {
			hold := r.work(ctx, d)
			select {
			case r.done <- report{taskID: d.taskID, hold: hold}:
			case <-ctx.Done():
			}
		})
	}
	return next
}

// work does what a delivery waits for: records the last attempt's result,
// or makes the next attempt and records it. It returns how long to leave the
// task alone when nothing was recorded.
func (r *round) work(ctx context.Context, d delivery) time.Duration {
	var ps []actor.Proposal
	if d.record {
		ps = append(ps, r.result(d, d.attempts, d.lastSucceeded, d.lastStatus, d.lastError))
	} else {
		body, err := r.outcomeBody(ctx, d.outcome)
		if err != nil {
			if ctx.Err() == nil {
				r.log.WarnContext(ctx, "reading an outcome event to deliver", slog.String("task_id", d.taskID), slog.Any("error", err))
			}
			return r.cfg.BackoffMin
		}
		p := r.attempt(ctx, d, body)
		if p == nil {
			return 0 // stopping: not an attempt
		}
		ps = append(ps, r.proposal(d, key(d, p.Attempt, p.EventType()), p))
		if p.Succeeded() || p.NextAttemptAt.IsZero() {
			ps = append(ps, r.result(d, p.Attempt, p.Succeeded(), p.StatusCode, p.Error))
		}
	}
	return r.record(ctx, d, ps)
}

// attempt POSTs the outcome once and returns its event, or nil when ctx
// ended before an answer came.
func (r *round) attempt(ctx context.Context, d delivery, body []byte) *events.WebhookAttempted {
	n := d.attempts + 1
	at := r.cfg.Now()
	start := time.Now()
	actx, cancel := context.WithTimeout(ctx, r.cfg.Timeout)
	status, err := r.post(actx, d, body, n, at)
	cancel()
	if err != nil && ctx.Err() != nil {
		return nil
	}
	p := &events.WebhookAttempted{
		TaskID: d.taskID, OutcomeSeq: d.outcome.Seq, OutcomeID: d.outcome.ID, Attempt: n,
		DeliveryID: deliveryID(d.outcome.ID, n), URL: d.url, At: events.Time(at), StatusCode: status,
		DurationMs: time.Since(start).Milliseconds(),
	}
	if err != nil {
		p.Error = truncate(err.Error())
	}
	if !p.Succeeded() && n < r.cfg.MaxAttempts {
		p.NextAttemptAt = events.Time(r.cfg.Now().Add(r.backoff(n)))
	}
	level := slog.LevelDebug
	if !p.Succeeded() {
		level = slog.LevelInfo
	}
	r.log.Log(ctx, level, "webhook attempt", slog.String("task_id", d.taskID), slog.Int("attempt", n),
		slog.String("result", describe(status, p.Error)), slog.Time("next_attempt_at", p.NextAttemptAt))
	return p
}

// result is the event ending a delivery after its last attempt.
func (r *round) result(d delivery, attempt int, succeeded bool, status int, errMsg string) actor.Proposal {
	if succeeded {
		p := &events.WebhookDelivered{TaskID: d.taskID, OutcomeSeq: d.outcome.Seq, Attempt: attempt, StatusCode: status}
		return r.proposal(d, key(d, 0, p.EventType()), p)
	}
	p := &events.WebhookAbandoned{TaskID: d.taskID, OutcomeSeq: d.outcome.Seq, Attempts: attempt, Error: describe(status, errMsg)}
	r.log.Warn("webhook abandoned", slog.String("task_id", d.taskID), slog.String("url", d.url),
		slog.Int("attempts", attempt), slog.String("error", p.Error))
	return r.proposal(d, key(d, 0, p.EventType()), p)
}

func (r *round) proposal(d delivery, k string, p events.Payload) actor.Proposal {
	return actor.Proposal{Key: k, Payload: p, CorrelationID: d.correlationID, CausationID: d.causationID}
}

// record appends the delivery's events and waits until the fold has taken
// them in. An attempt that got its answer is recorded even when ctx ends.
func (r *round) record(ctx context.Context, d delivery, ps []actor.Proposal) time.Duration {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.Timeout)
	defer cancel()
	acks, err := r.cfg.Writer.Propose(wctx, ps...)
	if err != nil {
		r.log.ErrorContext(ctx, "recording a webhook attempt", slog.String("task_id", d.taskID), slog.Any("error", err))
		return r.cfg.BackoffMin
	}
	if _, err := r.cfg.Replica.WaitSeq(ctx, actor.MaxSeq(acks)); err != nil {
		return 0 // stopping, or forgotten: the next refresh shows the state
	}
	out, err := r.cfg.Replica.WaitSeq(ctx, acks[0].Seq)
	if err == nil && !out.Accepted {
		r.log.WarnContext(ctx, "webhook event rejected", slog.String("task_id", d.taskID),
			slog.String("event_type", string(out.Type)), slog.String("reason", out.Reason))
		return r.cfg.BackoffMax
	}
	return 0
}

// outcomeBody returns the outcome event exactly as it is stored in the
// stream.
func (r *round) outcomeBody(ctx context.Context, o projections.OutcomeRef) ([]byte, error) {
	m, err := r.stream.GetMsg(ctx, o.Seq)
	if err != nil {
		return nil, fmt.Errorf("reading event %d: %w", o.Seq, err)
	}
	env, err := events.Decode(m.Data)
	if err != nil {
		return nil, fmt.Errorf("reading event %d: %w", o.Seq, err)
	}
	if env.ID != o.ID {
		return nil, fmt.Errorf("event %d is %s, not the outcome %s", o.Seq, env.ID, o.ID)
	}
	return m.Data, nil
}

func truncate(s string) string {
	if len(s) <= maxErrorLen {
		return s
	}
	return s[:maxErrorLen] + "…"
}
