package projections

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// SnapshotterConfig configures a Snapshotter.
type SnapshotterConfig struct {
	// JetStream is the connection to the event stream. Required.
	JetStream jetstream.JetStream
	// Snapshots is the store. Required.
	Snapshots *Snapshots
	// Every is how many events are folded between snapshots. Defaults to
	// 100,000.
	Every uint64
	// Keep is how many snapshots are kept. Defaults to 3.
	Keep int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Snapshotter takes a fold snapshot every Every events. It folds the log
// with a fold of its own, so that encoding a large state never holds up the
// process's shared Replica (at the cost of a second copy of the state in
// memory). Every instance may run one: they write the same bytes for the
// same sequence.
type Snapshotter struct {
	cfg     SnapshotterConfig
	log     *slog.Logger
	replica *Replica

	mu    sync.Mutex
	taken SnapshotInfo
}

// NewSnapshotter returns a snapshotter; Run takes the snapshots.
func NewSnapshotter(cfg SnapshotterConfig) (*Snapshotter, error) {
	if cfg.JetStream == nil || cfg.Snapshots == nil {
		return nil, errors.New("invalid snapshotter config: JetStream and Snapshots are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Every == 0 {
		cfg.Every = 100_000
	}
	if cfg.Keep <= 0 {
		cfg.Keep = 3
	}
	log := cfg.Logger.With(slog.String("component", "snapshotter"))
	replica, err := NewReplica(ReplicaConfig{
		JetStream: cfg.JetStream, Snapshots: cfg.Snapshots, Remember: 1,
		Logger: slog.New(discardWarnings{log.Handler()}),
	})
	if err != nil {
		return nil, err
	}
	return &Snapshotter{cfg: cfg, log: log, replica: replica}, nil
}

// Run folds the log and takes snapshots until ctx is done.
func (s *Snapshotter) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.replica.Run(ctx) }()
	err := s.loop(ctx)
	cancel()
	if rerr := <-done; rerr != nil && err == nil {
		err = rerr
	}
	return err
}

func (s *Snapshotter) loop(ctx context.Context) error {
	// Catch up first: snapshots of a log being replayed are not needed.
	select {
	case <-s.replica.Ready():
	case <-ctx.Done():
		return nil
	}
	infos, err := s.cfg.Snapshots.List(ctx)
	if err != nil && ctx.Err() == nil {
		s.log.WarnContext(ctx, "listing snapshots", slog.Any("error", err))
	}
	var last uint64
	if len(infos) > 0 {
		last = infos[len(infos)-1].Seq
	}
	for {
		changed := s.replica.Changed()
		if s.replica.Seq() >= last+s.cfg.Every {
			info, err := s.Take(ctx)
			switch {
			case err != nil && ctx.Err() != nil:
				return nil //nolint:nilerr // stopping: the error is the cancellation
			case err != nil:
				s.log.WarnContext(ctx, "taking a snapshot", slog.Any("error", err))
				select {
				case <-time.After(time.Second):
				case <-ctx.Done():
					return nil
				}
				continue
			}
			last = info.Seq
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}

// Take snapshots the snapshotter's fold as it is now, stores it and prunes
// old snapshots.
func (s *Snapshotter) Take(ctx context.Context) (SnapshotInfo, error) {
	start := time.Now()
	var (
		data []byte
		info SnapshotInfo
		err  error
	)
	s.replica.Read(func(st *State) {
		info = st.snapshotInfo()
		data, err = st.MarshalSnapshot()
	})
	if err != nil {
		return info, err
	}
	encoded := time.Since(start)
	if err := s.cfg.Snapshots.Save(ctx, info, data); err != nil {
		return info, err
	}
	if err := s.cfg.Snapshots.Prune(ctx, s.cfg.Keep); err != nil {
		return info, err
	}
	s.mu.Lock()
	s.taken = info
	s.mu.Unlock()
	s.log.InfoContext(ctx, "snapshot taken", slog.Uint64("seq", info.Seq), slog.Int("bytes", len(data)),
		slog.Duration("encoding", encoded), slog.Duration("took", time.Since(start)))
	return info, nil
}

// Last returns the last snapshot this snapshotter took.
func (s *Snapshotter) Last() SnapshotInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.taken
}

// Ready is closed once the snapshotter's fold has caught up with the log.
func (s *Snapshotter) Ready() <-chan struct{} { return s.replica.Ready() }

// discardWarnings keeps the private fold from repeating the shared one's
// warnings about skipped events (the shared fold logs them already).
type discardWarnings struct{ slog.Handler }

func (d discardWarnings) Enabled(ctx context.Context, l slog.Level) bool {
	return l > slog.LevelWarn && d.Handler.Enabled(ctx, l)
}

func (d discardWarnings) WithAttrs(a []slog.Attr) slog.Handler {
	return discardWarnings{d.Handler.WithAttrs(a)}
}

func (d discardWarnings) WithGroup(n string) slog.Handler {
	return discardWarnings{d.Handler.WithGroup(n)}
}
