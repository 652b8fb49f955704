package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
)

// apiTimeout bounds one JetStream API request of the replica. While a
// stream or the cluster elects a leader, requests go unanswered; a short
// timeout and a retry find the new leader soon after it is elected.
const apiTimeout = 2 * time.Second

// errConsumerGap is reported when a consumer skips a message.
var errConsumerGap = errors.New("event stream consumer skipped a message")

// follow folds the stream with one ephemeral consumer, from the event after
// the last folded one, until ctx is done (it returns nil) or the consumer is
// lost (it returns why): its heartbeats stop, as when its server died, it is
// deleted, or it skips a message. The replica then makes a new one.
//
// This is what nats.go's ordered consumer does, but that one waits up to 10s
// for each attempt to recreate its consumer, and an attempt made while the
// stream elects its new leader is never answered: the fold, and every write
// waiting for it, stalled for 10s after the election (nats.go 1.55.0).
func (r *Replica) follow(ctx context.Context, target uint64, wg *sync.WaitGroup) error {
	cfg := jetstream.ConsumerConfig{
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		FilterSubjects:    []string{events.AllSubjects},
		InactiveThreshold: time.Minute,
		MemoryStorage:     true,
		Replicas:          1,
	}
	if seq := r.Seq(); seq > 0 {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, seq+1
	}
	cctx, cancel := context.WithTimeout(ctx, apiTimeout)
	cons, err := r.js.CreateConsumer(cctx, events.StreamName, cfg)
	cancel()
	if err != nil {
		return fmt.Errorf("creating a consumer of %s: %w", events.StreamName, err)
	}
	lost := make(chan error, 1)
	fail := func(err error) {
		select {
		case lost <- err:
		default:
		}
	}
	next := uint64(1) // the consumer sequence of the next message
	cc, err := cons.Consume(func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil || md.Sequence.Consumer != next {
			fail(errConsumerGap)
			return
		}
		next++
		r.handle(m, target)
	}, jetstream.PullHeartbeat(r.heartbeat), jetstream.PullExpiry(max(5*r.heartbeat, 5*time.Second)),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			switch {
			case errors.Is(err, jetstream.ErrNoHeartbeat), errors.Is(err, jetstream.ErrConsumerDeleted),
				errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, jetstream.ErrConnectionClosed):
				fail(err)
			default:
				r.log.WarnContext(ctx, "event stream consumer", slog.Any("error", err))
			}
		}))
	if err != nil {
		r.deleteConsumer(ctx, cons, wg)
		return fmt.Errorf("consuming %s: %w", events.StreamName, err)
	}
	select {
	case <-ctx.Done():
		err = nil
	case err = <-lost:
	}
	cc.Stop()
	<-cc.Closed()
	r.deleteConsumer(ctx, cons, wg)
	return err
}

// deleteConsumer deletes a consumer in the background; the server deletes
// it anyway once it is inactive.
func (r *Replica) deleteConsumer(ctx context.Context, cons jetstream.Consumer, wg *sync.WaitGroup) {
	name := cons.CachedInfo().Name
	wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), apiTimeout)
		defer cancel()
		_ = r.js.DeleteConsumer(ctx, events.StreamName, name)
	})
}
