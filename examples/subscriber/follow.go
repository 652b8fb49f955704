package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
)

// outcomeSubjects are the subjects of the events that end a task.
func outcomeSubjects() []string {
	return []string{
		events.Subject(events.TypeTaskCompleted, "*"), // cb.ev.task.*.completed
		events.Subject(events.TypeTaskFailed, "*"),
		events.Subject(events.TypeTaskCancelled, "*"),
	}
}

// hooks let the tests stop the program at the worst moments. main passes
// none.
type hooks struct {
	// afterWrite runs when an outcome is on disk, before its ack.
	afterWrite func(seq uint64)
	// noReset skips rewinding the consumer to the output file at start, so
	// that the duplicate check alone has to keep handling exactly-once.
	noReset bool
}

// follower handles the outcome events of a durable consumer, each exactly
// once, in stream order.
type follower struct {
	js      jetstream.JetStream
	durable string
	ackWait time.Duration
	out     *journal
	log     *slog.Logger
	hooks   hooks
}

// consumerConfig is the durable consumer: every outcome from the start of
// the log, one at a time. MaxAckPending 1 keeps stream order even across
// redeliveries: the server hands out the next event only once this one is
// acknowledged, so a later event can never be handled before an earlier
// one, and "skip what is not newer than the last line" never skips an event
// that was not handled.
func (f *follower) consumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:        f.durable,
		Description:    "example subscriber: task outcomes",
		FilterSubjects: outcomeSubjects(),
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        f.ackWait,
		MaxAckPending:  1,
	}
}

// run consumes until ctx ends, then handles what it already received and
// returns nil. It returns an error when an outcome cannot be written: the
// event stays unacknowledged and comes back after a restart.
func (f *follower) run(ctx context.Context) error {
	cons, err := f.bind(ctx)
	if err != nil {
		return err
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("consuming: %w", err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Drain) // handle what is buffered, then stop
	defer stop()
	f.log.InfoContext(ctx, "following task outcomes", slog.String("durable", f.durable),
		slog.Uint64("last_handled_seq", f.out.last))
	for {
		msg, err := it.Next()
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("consuming: %w", err)
		}
		if err := f.handle(ctx, msg); err != nil {
			return err
		}
	}
}

// bind creates the durable consumer or binds to it, and moves its position
// to just after the output file's last line. The file, not the consumer, is
// the truth: an event written but not acknowledged before a crash is
// already handled, and one still pending from a killed process would
// otherwise hold up the consumer until its ack wait ran out.
func (f *follower) bind(ctx context.Context) (jetstream.Consumer, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cons, err := f.js.CreateOrUpdateConsumer(cctx, events.StreamName, f.consumerConfig())
	if err != nil {
		return nil, fmt.Errorf("creating consumer %s on %s: %w", f.durable, events.StreamName, err)
	}
	if f.hooks.noReset {
		return cons, nil
	}
	if _, err := f.js.ResetConsumerToSequence(cctx, events.StreamName, f.durable, f.out.last+1); err != nil {
		// Older servers (before 2.14) cannot; redeliveries then come after
		// the ack wait and are skipped by sequence.
		f.log.WarnContext(ctx, "could not move the consumer to the output file's position",
			slog.Uint64("seq", f.out.last+1), slog.Any("error", err))
	}
	return cons, nil
}

// handle records one event unless it was recorded before, then
// acknowledges it.
func (f *follower) handle(ctx context.Context, msg jetstream.Msg) error {
	md, err := msg.Metadata()
	if err != nil {
		return fmt.Errorf("reading message metadata: %w", err)
	}
	seq := md.Sequence.Stream
	log := f.log.With(slog.Uint64("seq", seq))
	if seq <= f.out.last {
		log.DebugContext(ctx, "already handled; acknowledging again")
		f.ack(ctx, log, msg)
		return nil
	}
	env, err := events.Decode(msg.Data())
	if err == nil {
		env.Seq = seq
		var o outcome
		if o, err = outcomeOf(env); err == nil {
			if err := f.out.append(o); err != nil {
				return err
			}
			if f.hooks.afterWrite != nil {
				f.hooks.afterWrite(seq)
			}
			log.InfoContext(ctx, "task outcome recorded", slog.String("task_id", o.TaskID), slog.String("status", o.Status))
		}
	}
	if err != nil {
		// A newer broker's event type, or a message that is not an event:
		// nothing to record, and retrying will not help.
		log.WarnContext(ctx, "skipping event", slog.Any("error", err))
	}
	f.ack(ctx, log, msg)
	return nil
}

// ack acknowledges and waits for the server to confirm. A lost ack is no
// harm: the event comes back and is skipped by its sequence.
func (f *follower) ack(ctx context.Context, log *slog.Logger, msg jetstream.Msg) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := msg.DoubleAck(actx); err != nil {
		log.WarnContext(ctx, "ack not confirmed; the event will come again and be skipped", slog.Any("error", err))
	}
}
