package scheduler

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/actor"
)

// Config configures a Scheduler.
type Config struct {
	// Replica is the process's fold. Required.
	Replica *projections.Replica
	// Writer appends the scheduler's proposals. Required.
	Writer *actor.Writer
	// Policy is resolved into the decisions.
	Policy Policy
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now defaults to time.Now.
	Now func() time.Time
}

// Scheduler proposes reservations and outcomes whenever the fold changes.
// After each round it waits until the fold has taken its proposals in, so
// the next round decides on a state that includes them; proposals the fold
// rejected (another scheduler was faster) simply do not show up in it.
type Scheduler struct {
	cfg Config
	log *slog.Logger
}

// New returns a scheduler.
func New(cfg Config) (*Scheduler, error) {
	if cfg.Replica == nil || cfg.Writer == nil {
		return nil, errors.New("invalid scheduler config: Replica and Writer are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Scheduler{cfg: cfg, log: cfg.Logger.With(slog.String("component", "scheduler"))}, nil
}

// Run schedules until ctx is done.
func (s *Scheduler) Run(ctx context.Context) error {
	select {
	case <-s.cfg.Replica.Ready():
	case <-ctx.Done():
		return nil
	}
	s.log.InfoContext(ctx, "scheduler started")
	for {
		changed := s.cfg.Replica.Changed()
		var (
			proposals []actor.Proposal
			wake      time.Time
		)
		now := s.cfg.Now()
		s.cfg.Replica.Read(func(st *projections.State) { proposals, wake = Decide(st, now, s.cfg.Policy) })
		if len(proposals) > 0 {
			// Propose and WaitSeq fail only when ctx is done.
			acks, err := s.cfg.Writer.Propose(ctx, proposals...)
			if err == nil {
				_, err = s.cfg.Replica.WaitSeq(ctx, actor.MaxSeq(acks))
			}
			if ctx.Err() != nil {
				return nil //nolint:nilerr // stopping: the error is the cancellation
			}
			if err != nil {
				s.log.WarnContext(ctx, "waiting for the fold", slog.Any("error", err))
			}
			s.log.DebugContext(ctx, "scheduling round", slog.Int("proposals", len(proposals)))
			continue
		}
		if !s.wait(ctx, changed, wake.Sub(now), !wake.IsZero()) {
			return nil
		}
	}
}

// wait blocks until the fold changes, the delay d elapses (if timed) or ctx
// is done; it reports whether to go on.
func (s *Scheduler) wait(ctx context.Context, changed <-chan struct{}, d time.Duration, timed bool) bool {
	var timer <-chan time.Time
	if timed {
		t := time.NewTimer(d)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-changed:
	case <-timer:
	case <-ctx.Done():
		return false
	}
	return true
}
