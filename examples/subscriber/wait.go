package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
)

// waitTask reads one task's events from the start of the log and returns
// its outcome once the task has ended: at once for a task that already
// has, otherwise when its outcome event arrives. A forced retry
// (retry_requested) after an outcome reopens the task. It needs no durable
// consumer: nothing is remembered between runs.
func waitTask(ctx context.Context, js jetstream.JetStream, taskID string, log *slog.Logger) (outcome, error) {
	cons, err := js.OrderedConsumer(ctx, events.StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.AggregateSubjects(events.AggregateTask, taskID)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return outcome{}, fmt.Errorf("reading task %s: %w", taskID, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return outcome{}, fmt.Errorf("reading task %s: %w", taskID, err)
	}
	defer it.Stop()
	var last *outcome
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return outcome{}, fmt.Errorf("waiting for task %s: %w", taskID, err)
		}
		md, err := msg.Metadata()
		if err != nil {
			return outcome{}, fmt.Errorf("reading message metadata: %w", err)
		}
		env, err := events.Decode(msg.Data())
		if err != nil {
			log.WarnContext(ctx, "skipping message", slog.Uint64("seq", md.Sequence.Stream), slog.Any("error", err))
			continue
		}
		env.Seq = md.Sequence.Stream
		o, err := outcomeOf(env)
		switch {
		case err == nil:
			last = &o
		case env.Type == events.TypeTaskRetryRequested:
			last = nil
		case !errors.Is(err, errNotOutcome) && !errors.Is(err, events.ErrUnknownType):
			log.WarnContext(ctx, "skipping event", slog.Uint64("seq", env.Seq), slog.Any("error", err))
		}
		if last != nil && md.NumPending == 0 {
			return *last, nil
		}
	}
}
