// Package health holds the node health monitor: it probes every node's
// Docker API on a short interval and proposes one event per transition.
package health

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/actor"
	"github.com/cbroker/broker/services/runtime"
)

// Config configures a Monitor.
type Config struct {
	// Replica is the process's fold. Required.
	Replica *projections.Replica
	// Writer appends the monitor's events. Required.
	Writer *actor.Writer
	// Runtimes probe the nodes. Required.
	Runtimes runtime.Set
	// Interval between probes of a node. Defaults to 1s.
	Interval time.Duration
	// Timeout of one probe. Defaults to Interval.
	Timeout time.Duration
	// Grace is how long a node may fail its probes before it is declared
	// down. Defaults to 5s.
	Grace time.Duration
	// Owns reports whether this monitor is responsible for a node. Nil means
	// every node.
	Owns func(nodeID string) bool
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now defaults to time.Now.
	Now func() time.Time
}

// Monitor probes nodes: a node that answers becomes available (up); one that
// fails a probe becomes unstable at once (no new work goes there) and
// unavailable (down) once it has failed for longer than Grace.
type Monitor struct {
	cfg Config
	log *slog.Logger

	failingSince map[string]time.Time // only touched by Run's goroutine
}

// New returns a monitor.
func New(cfg Config) (*Monitor, error) {
	if cfg.Replica == nil || cfg.Writer == nil || len(cfg.Runtimes) == 0 {
		return nil, errors.New("invalid health config: Replica, Writer and Runtimes are required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = cfg.Interval
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Monitor{cfg: cfg, log: cfg.Logger.With(slog.String("component", "health")), failingSince: map[string]time.Time{}}, nil
}

type probe struct {
	node      runtime.Node
	status    projections.NodeStatus
	statusSeq uint64
	err       error
}

// Run probes until ctx is done.
func (m *Monitor) Run(ctx context.Context) error {
	select {
	case <-m.cfg.Replica.Ready():
	case <-ctx.Done():
		return nil
	}
	ticker := time.NewTicker(m.cfg.Interval)
	defer ticker.Stop()
	for {
		m.Probe(ctx)
		select {
		case <-ticker.C:
		case <-ctx.Done():
			return nil
		}
	}
}

// Probe probes every owned node once and proposes the transitions it saw.
func (m *Monitor) Probe(ctx context.Context) {
	// The round's start times its results, so that rounds are exactly one
	// interval apart and the grace ends on the round it should, not one
	// later because a ping returned a few microseconds sooner.
	now := m.cfg.Now()
	var probes []*probe
	m.cfg.Replica.Read(func(s *projections.State) {
		for _, n := range s.SortedNodes() {
			if m.cfg.Owns == nil || m.cfg.Owns(n.ID) {
				probes = append(probes, &probe{node: runtime.Node{ID: n.ID, Hostname: n.Hostname}, status: n.Status, statusSeq: n.StatusSeq})
			}
		}
	})
	var wg sync.WaitGroup
	for _, p := range probes {
		wg.Go(func() {
			rt, ok := m.cfg.Runtimes.For(p.node.Hostname)
			if !ok {
				p.err = errors.New("no runtime supports " + p.node.Hostname)
				return
			}
			pctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
			defer cancel()
			p.err = rt.Ping(pctx, p.node)
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	var proposals []actor.Proposal
	seen := map[string]bool{}
	for _, p := range probes {
		seen[p.node.ID] = true
		if pl := m.transition(p, now); pl != nil {
			proposals = append(proposals, actor.Proposal{Key: actor.NodeKey(p.node.ID, pl.EventType(), p.statusSeq), Payload: pl})
			m.log.InfoContext(ctx, "node health changed", slog.String("node_id", p.node.ID), slog.String("event_type", string(pl.EventType())), slog.Any("error", p.err))
		}
	}
	for id := range m.failingSince {
		if !seen[id] {
			delete(m.failingSince, id)
		}
	}
	if len(proposals) > 0 {
		// Errors mean ctx is done; the next probe proposes again.
		_, _ = m.cfg.Writer.Propose(ctx, proposals...)
	}
}

// transition returns the event for what a probe saw, or nil.
func (m *Monitor) transition(p *probe, now time.Time) events.Payload {
	at := events.Time(now)
	if p.err == nil {
		delete(m.failingSince, p.node.ID)
		if p.status != projections.NodeAvailable {
			return &events.NodeUp{NodeID: p.node.ID, At: at}
		}
		return nil
	}
	since, failing := m.failingSince[p.node.ID]
	if !failing {
		since = now
		m.failingSince[p.node.ID] = now
	}
	switch {
	case p.status == projections.NodeAvailable:
		return &events.NodeUnstable{NodeID: p.node.ID, Error: p.err.Error(), At: at}
	// Half an interval of slack: rounds are an interval apart, give or take
	// scheduling, and the grace must end on the round it falls on.
	case p.status == projections.NodeUnstable && now.Sub(since) >= m.cfg.Grace-m.cfg.Interval/2:
		return &events.NodeDown{NodeID: p.node.ID, Error: p.err.Error(), At: at}
	}
	return nil
}
