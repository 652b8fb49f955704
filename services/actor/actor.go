// Package actor holds what every actor shares: the writer through which it
// proposes events, retrying transient failures with the same idempotency
// key, and the naming of its idempotency keys.
package actor

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
)

// Proposal is one event an actor wants appended.
type Proposal struct {
	Key           string
	Payload       events.Payload
	CorrelationID string
	CausationID   string
}

// Writer appends an actor's proposals to the event stream.
type Writer struct {
	JS jetstream.JetStream
	// Actor names the writer in every envelope: "<instance>/<role>".
	Actor string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// RetryDelay is the pause between attempts of a failed append. Defaults
	// to 500ms.
	RetryDelay time.Duration
	// KeyPrefix, when set, is put before every idempotency key. Two writers
	// with different prefixes never deduplicate each other's proposals, so
	// each reaches the fold: the split-brain test uses it to make a rogue
	// scheduler's and runner's duplicates count, as they would once the
	// duplicate window has passed.
	KeyPrefix string
	// AttemptTimeout bounds one attempt. Defaults to 2s: the appends a
	// stream's leader had taken when it died are never answered, and the
	// retry goes to the new leader.
	AttemptTimeout time.Duration
}

// Envelopes turns proposals into envelopes.
func (w *Writer) Envelopes(ps []Proposal) ([]events.Envelope, error) {
	envs := make([]events.Envelope, 0, len(ps))
	for _, p := range ps {
		env, err := events.New(w.KeyPrefix+p.Key, p.Payload, events.Meta{
			CorrelationID: p.CorrelationID, CausationID: p.CausationID, Actor: w.Actor,
		})
		if err != nil {
			return nil, err
		}
		envs = append(envs, env)
	}
	return envs, nil
}

// Propose appends proposals in order, retrying until they are stored or ctx
// is done. Retries reuse the same envelopes, so nothing is stored twice.
func (w *Writer) Propose(ctx context.Context, ps ...Proposal) ([]events.Ack, error) {
	envs, err := w.Envelopes(ps)
	if err != nil {
		return nil, err
	}
	delay := w.RetryDelay
	if delay <= 0 {
		delay = 500 * time.Millisecond
	}
	timeout := w.AttemptTimeout
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	for {
		var acks []events.Ack
		actx, cancel := context.WithTimeout(ctx, timeout)
		if len(envs) == 1 {
			var ack events.Ack
			ack, err = events.Append(actx, w.JS, envs[0])
			acks = []events.Ack{ack}
		} else {
			acks, err = events.AppendAll(actx, w.JS, envs)
		}
		cancel()
		if err == nil {
			return acks, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		w.logger().WarnContext(ctx, "appending events failed; retrying",
			slog.String("actor", w.Actor), slog.Int("events", len(envs)), slog.Any("error", err))
		if !Sleep(ctx, delay) {
			return nil, ctx.Err()
		}
	}
}

// MaxSeq returns the highest sequence among acks.
func MaxSeq(acks []events.Ack) uint64 {
	var m uint64
	for _, a := range acks {
		m = max(m, a.Seq)
	}
	return m
}

func (w *Writer) logger() *slog.Logger {
	if w.Logger == nil {
		return slog.Default()
	}
	return w.Logger
}

// TaskKey is the idempotency key of an event derived for one attempt of a
// task: "task:<id>:<attempt>:<event name>".
func TaskKey(taskID string, attempt int, t events.Type) string {
	return fmt.Sprintf("task:%s:%d:%s", taskID, attempt, t.Name())
}

// NodeKey is the idempotency key of a node health transition: the node, the
// event and the sequence of the node's status it replaces, so that two
// monitors observing the same transition store it once.
func NodeKey(nodeID string, t events.Type, afterSeq uint64) string {
	return fmt.Sprintf("node:%s:%s:after:%d", nodeID, t.Name(), afterSeq)
}

// Sleep waits for d or until ctx is done; it reports whether d elapsed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
