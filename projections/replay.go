package projections

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
)

// foldMsg decodes one stream message and folds it into the state. An
// undecodable event only moves the sequence; its error is returned with the
// outcome.
func foldMsg(s *State, data []byte, seq uint64, storedAt time.Time) (events.Envelope, Outcome, error) {
	env, err := events.Decode(data)
	var out Outcome
	if err != nil {
		s.Seq = max(s.Seq, seq)
		out = Outcome{Seq: seq, Reason: err.Error()}
	} else {
		env.Seq = seq
		out = s.Apply(env)
	}
	s.StoredAt = storedAt
	return env, out, err
}

// FoldTo returns the state as it stood at a point of the log: it starts from
// the newest snapshot before that point (snapshots may be nil) and folds the
// events after it, up to the target. The zero Target folds the whole log.
func FoldTo(ctx context.Context, js jetstream.JetStream, snapshots *Snapshots, target Target) (*State, error) {
	var st *State
	if snapshots != nil {
		var err error
		if st, err = snapshots.Load(ctx, target); err != nil {
			return nil, err
		}
	}
	if st == nil {
		st = NewState()
	}
	stream, err := js.Stream(ctx, events.StreamName)
	if err != nil {
		return nil, fmt.Errorf("opening stream %s: %w", events.StreamName, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading stream %s: %w", events.StreamName, err)
	}
	last := info.State.LastSeq
	if target.Seq != 0 {
		last = min(last, target.Seq)
	}
	if st.Seq >= last {
		return st, nil
	}
	cons, err := js.OrderedConsumer(ctx, events.StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.AllSubjects},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    st.Seq + 1,
	})
	if err != nil {
		return nil, fmt.Errorf("consuming stream %s: %w", events.StreamName, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(replayBatch))
	if err != nil {
		return nil, fmt.Errorf("consuming stream %s: %w", events.StreamName, err)
	}
	defer it.Stop()
	defer context.AfterFunc(ctx, it.Stop)()
	for st.Seq < last {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("reading stream %s after %d: %w", events.StreamName, st.Seq, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return nil, fmt.Errorf("event without metadata after %d: %w", st.Seq, err)
		}
		if !target.Includes(md.Sequence.Stream, md.Timestamp) {
			break
		}
		_, _, _ = foldMsg(st, m.Data(), md.Sequence.Stream, md.Timestamp)
	}
	return st, nil
}

// replayBatch is how many events a replay asks for at a time.
const replayBatch = 4096
