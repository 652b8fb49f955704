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

// Applied is one folded event as the replica remembers it: its identity and
// the fold's outcome (the payload is not kept).
type Applied struct {
	Seq           uint64
	ID            string
	Type          events.Type
	AggregateID   string
	CorrelationID string
	Outcome       Outcome
}

// ErrOutcomeForgotten is returned by WaitSeq for a sequence older than the
// replica's memory of recent outcomes.
var ErrOutcomeForgotten = errors.New("outcome no longer remembered")

// ReplicaConfig configures a Replica.
type ReplicaConfig struct {
	// JetStream is the connection to the event stream. Required.
	JetStream jetstream.JetStream
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Remember is how many recent outcomes are kept for WaitSeq and Since.
	// Defaults to 65536.
	Remember int
	// Snapshots, when set, gives the fold its starting point: the newest
	// snapshot that matches the log, instead of the first event.
	Snapshots *Snapshots
	// Heartbeat is the idle heartbeat of the stream consumer. Defaults to
	// 1s. The consumer lives on the stream's leader; when that server dies,
	// the replica recreates it after two missed heartbeats (see follow).
	Heartbeat time.Duration
}

// Replica keeps one State up to date from the event stream and shares it
// with every actor in the process: they read it under a lock, wake up when it
// changes, and wait for it to reach the sequence of their own writes.
type Replica struct {
	js        jetstream.JetStream
	log       *slog.Logger
	snapshots *Snapshots
	heartbeat time.Duration

	mu    sync.RWMutex
	state *State
	ring  []Applied
	// base is the sequence the fold started from (a snapshot's, or 0): the
	// outcomes of events up to it were never seen.
	base uint64

	cmu     sync.Mutex
	changed chan struct{}

	ready     chan struct{}
	readyOnce sync.Once
}

// NewReplica returns a replica with an empty state; Run fills it.
func NewReplica(cfg ReplicaConfig) (*Replica, error) {
	if cfg.JetStream == nil {
		return nil, errors.New("invalid replica config: JetStream is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Remember <= 0 {
		cfg.Remember = 1 << 16
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = time.Second
	}
	return &Replica{
		js:        cfg.JetStream,
		snapshots: cfg.Snapshots,
		heartbeat: cfg.Heartbeat,
		log:       cfg.Logger.With(slog.String("component", "replica")),
		state:     NewState(),
		ring:      make([]Applied, cfg.Remember),
		changed:   make(chan struct{}),
		ready:     make(chan struct{}),
	}, nil
}

// Run folds the stream from the start until ctx is done. It closes Ready once
// it has folded every event that was in the stream when it started.
func (r *Replica) Run(ctx context.Context) error {
	err := r.run(ctx)
	if err != nil && ctx.Err() != nil {
		return nil //nolint:nilerr // stopped while starting
	}
	return err
}

func (r *Replica) run(ctx context.Context) error {
	if r.snapshots != nil && r.Seq() == 0 {
		start := time.Now()
		st, err := r.snapshots.Load(ctx, Target{})
		if err != nil {
			r.log.WarnContext(ctx, "reading snapshots; folding the whole log", slog.Any("error", err))
		}
		if st != nil {
			r.mu.Lock()
			r.state, r.base = st, st.Seq
			r.mu.Unlock()
			r.log.InfoContext(ctx, "fold restored from snapshot", slog.Uint64("seq", st.Seq),
				slog.Int("tasks", len(st.Tasks)), slog.Duration("took", time.Since(start)))
		}
	}
	target, err := r.lastSeq(ctx)
	if err != nil {
		return err
	}
	if r.Seq() >= target {
		r.markReady()
	}
	r.log.InfoContext(ctx, "replica started", slog.Uint64("catch_up_to", target))
	var wg sync.WaitGroup // deletions of lost consumers
	defer wg.Wait()
	delay := time.Duration(0)
	for {
		start := time.Now()
		err := r.follow(ctx, target, &wg)
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > 10*time.Second {
			delay = 0 // it ran for a while: start the backoff afresh
		}
		delay = min(max(2*delay, 100*time.Millisecond), 2*time.Second)
		r.log.WarnContext(ctx, "event stream consumer lost; recreating it", slog.Uint64("from_seq", r.Seq()+1),
			slog.Duration("after", delay), slog.Any("error", err))
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil
		}
	}
}

// lastSeq returns the stream's last sequence, retrying while the stream has
// no leader.
func (r *Replica) lastSeq(ctx context.Context) (uint64, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		actx, cancel := context.WithTimeout(ctx, apiTimeout)
		stream, err := r.js.Stream(actx, events.StreamName)
		var info *jetstream.StreamInfo
		if err == nil {
			info, err = stream.Info(actx)
		}
		cancel()
		if err == nil {
			return info.State.LastSeq, nil
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			return 0, fmt.Errorf("reading stream %s: %w", events.StreamName, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (r *Replica) handle(m jetstream.Msg, target uint64) {
	md, err := m.Metadata()
	if err != nil {
		r.log.Warn("event without metadata", slog.Any("error", err))
		return
	}
	seq := md.Sequence.Stream
	r.mu.Lock()
	if seq <= r.state.Seq {
		r.mu.Unlock()
		return // folded already (a consumer recreated from an older sequence)
	}
	env, out, err := foldMsg(r.state, m.Data(), seq, md.Timestamp)
	r.ring[seq%uint64(len(r.ring))] = Applied{
		Seq: seq, ID: env.ID, Type: env.Type, AggregateID: env.AggregateID,
		CorrelationID: env.CorrelationID, Outcome: out,
	}
	r.mu.Unlock()
	switch {
	case err != nil:
		r.log.Warn("skipping undecodable event", slog.Uint64("seq", seq), slog.Any("error", err))
	case out.Unknown:
		r.log.Warn("skipping unknown event type", slog.Uint64("seq", seq), slog.String("event_type", string(env.Type)))
	case !out.Accepted:
		r.log.Debug("event rejected", slog.Uint64("seq", seq), slog.String("event_type", string(env.Type)),
			slog.String("aggregate_id", env.AggregateID), slog.String("reason", out.Reason))
	}
	r.broadcast()
	if seq >= target || md.NumPending == 0 {
		r.markReady()
	}
}

func (r *Replica) markReady() { r.readyOnce.Do(func() { close(r.ready) }) }

func (r *Replica) broadcast() {
	r.cmu.Lock()
	close(r.changed)
	r.changed = make(chan struct{})
	r.cmu.Unlock()
}

// Ready is closed once the replica has caught up with the stream as it was
// when Run started.
func (r *Replica) Ready() <-chan struct{} { return r.ready }

// Changed returns a channel that is closed at the next change of the state.
// Take it before reading the state, so that no change is missed.
func (r *Replica) Changed() <-chan struct{} {
	r.cmu.Lock()
	defer r.cmu.Unlock()
	return r.changed
}

// Seq returns the sequence of the last folded event.
func (r *Replica) Seq() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.state.Seq
}

// Read calls f with the state under a read lock. f must not keep references
// to the state or modify it.
func (r *Replica) Read(f func(*State)) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	f(r.state)
}

// ReadSince calls f with the state and the events folded after sequence
// after, under one read lock. complete is false when some of those events
// are no longer remembered; f must then treat everything as changed.
func (r *Replica) ReadSince(after uint64, f func(s *State, applied []Applied, complete bool)) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	head := r.state.Seq
	size := uint64(len(r.ring))
	if (head > after && head-after > size) || after < r.base {
		f(r.state, nil, false)
		return
	}
	var out []Applied
	for seq := after + 1; seq <= head; seq++ {
		if a := r.ring[seq%size]; a.Seq == seq {
			out = append(out, a)
		}
	}
	f(r.state, out, true)
}

// WaitSeq waits until the replica has folded sequence seq and returns the
// fold's outcome for it.
func (r *Replica) WaitSeq(ctx context.Context, seq uint64) (Outcome, error) {
	for {
		ch := r.Changed()
		r.mu.RLock()
		head := r.state.Seq
		a := r.ring[seq%uint64(len(r.ring))]
		r.mu.RUnlock()
		if head >= seq {
			if a.Seq != seq {
				return Outcome{Seq: seq}, ErrOutcomeForgotten
			}
			return a.Outcome, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return Outcome{}, fmt.Errorf("waiting for sequence %d (at %d): %w", seq, head, ctx.Err())
		}
	}
}

// WaitFor waits until cond holds for the state, checking after every change.
func (r *Replica) WaitFor(ctx context.Context, cond func(*State) bool) error {
	for {
		ch := r.Changed()
		var ok bool
		r.Read(func(s *State) { ok = cond(s) })
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
