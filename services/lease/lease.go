// Package lease shares work between broker instances with leases in the KV
// bucket events.BucketLeases, whose entries expire events.LeaseTTL after
// their last write: one scheduler (or projector, or webhook sender) active
// at a time with hot standbys (Singleton), and the nodes spread over the
// instances that run containers (Owner).
//
// Leases are for efficiency, not safety: the fold decides every proposal
// (docs/architecture.md), so two instances that both believe they hold a
// lease (a paused process, a partition) cannot double-book a slot, start a
// second container for one attempt, or complete a task twice. A holder stops
// acting once its lease may have expired (three quarters of the TTL after
// its last successful renewal, measured before that renewal was sent, on the
// monotonic clock), and a clean shutdown releases its leases at once.
package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
)

// Config configures leases.
type Config struct {
	// KV is the lease bucket (events.BucketLeases). Required.
	KV jetstream.KeyValue
	// Holder names this instance in the leases it holds; unique per process.
	// Required.
	Holder string
	// TTL is the bucket's entry lifetime. Defaults to events.LeaseTTL.
	TTL time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (c *Config) check() error {
	if c.KV == nil || c.Holder == "" {
		return errors.New("invalid lease config: KV and Holder are required")
	}
	if c.TTL <= 0 {
		c.TTL = events.LeaseTTL
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.Holder = sanitize(c.Holder)
	return nil
}

// sanitize keeps the characters KV keys and values may hold.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, s)
}

// lease is one key held by this instance.
type lease struct {
	kv      jetstream.KeyValue
	key     string
	holder  string
	ttl     time.Duration
	rev     uint64
	renewed time.Time // when the last successful write was sent
}

// acquire takes the lease if nobody holds it.
func (l *lease) acquire(ctx context.Context) (bool, error) {
	sent := time.Now()
	rev, err := l.kv.Create(ctx, l.key, []byte(l.holder))
	switch {
	case err == nil:
		l.rev, l.renewed = rev, sent
		return true, nil
	case errors.Is(err, jetstream.ErrKeyExists):
		return false, nil
	default:
		return false, fmt.Errorf("acquiring lease %s: %w", l.key, err)
	}
}

// renew extends the lease; it fails if another holder took it.
func (l *lease) renew(ctx context.Context) error {
	sent := time.Now()
	rev, err := l.kv.Update(ctx, l.key, []byte(l.holder), l.rev)
	if err != nil {
		return fmt.Errorf("renewing lease %s: %w", l.key, err)
	}
	l.rev, l.renewed = rev, sent
	return nil
}

// valid reports whether the lease is surely still ours.
func (l *lease) valid() bool { return time.Since(l.renewed) < l.ttl*3/4 }

// release gives the lease up, unless another holder has it by now.
func (l *lease) release(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_ = l.kv.Delete(ctx, l.key, jetstream.LastRevision(l.rev))
}

// Singleton runs run while this instance holds the lease key, and campaigns
// for it while another instance does: run's context is cancelled when the
// lease may have been lost, and run is started again when it is won back.
// It returns when ctx is done (releasing the lease, so that a standby takes
// over at once) or when run fails.
func Singleton(ctx context.Context, cfg Config, key string, run func(context.Context) error) error {
	if err := cfg.check(); err != nil {
		return err
	}
	log := cfg.Logger.With(slog.String("component", "lease"), slog.String("lease", key))
	l := &lease{kv: cfg.KV, key: key, holder: cfg.Holder, ttl: cfg.TTL}
	for {
		held, err := campaign(ctx, l, log)
		if !held {
			return err
		}
		log.InfoContext(ctx, "lease won; active", slog.String("holder", l.holder))
		err = hold(ctx, l, run, log)
		if ctx.Err() != nil || err != nil {
			l.release(ctx)
			return err
		}
		log.WarnContext(ctx, "lease lost; standing by")
	}
}

// campaign tries to acquire the lease every eighth of the TTL until it
// does or ctx is done.
func campaign(ctx context.Context, l *lease, log *slog.Logger) (bool, error) {
	tick := time.NewTicker(l.ttl / 8)
	defer tick.Stop()
	for {
		held, err := l.acquire(ctx)
		if held {
			return true, nil
		}
		if err != nil && ctx.Err() == nil {
			log.WarnContext(ctx, "campaigning", slog.Any("error", err))
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return false, nil
		}
	}
}

// hold runs run and renews the lease every quarter of the TTL; it returns
// nil once the lease may be lost (run stopped) or ctx is done, and run's
// error if it fails.
func hold(ctx context.Context, l *lease, run func(context.Context) error, log *slog.Logger) error {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(rctx) }()
	stop := func() {
		cancel()
		if err := <-done; err != nil {
			log.DebugContext(ctx, "stopped", slog.Any("error", err))
		}
	}
	tick := time.NewTicker(l.ttl / 4)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if ctx.Err() != nil {
				return nil
			}
			if err == nil {
				err = errors.New("stopped by itself")
			}
			return fmt.Errorf("%s: %w", l.key, err)
		case <-ctx.Done():
			stop()
			return nil
		case <-tick.C:
			err := l.renew(ctx)
			if err == nil {
				continue
			}
			if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || !l.valid() {
				log.WarnContext(ctx, "lease lost", slog.Any("error", err))
				stop()
				return nil
			}
			log.WarnContext(ctx, "renewing lease; retrying", slog.Any("error", err))
		}
	}
}
