package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
)

// ProjectorConfig configures a Projector.
type ProjectorConfig struct {
	// JetStream is the connection holding the view buckets. Required.
	JetStream jetstream.JetStream
	// Replica is the process's fold. Required.
	Replica *Replica
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now defaults to time.Now; it dates seconds_running of started tasks.
	Now func() time.Time
	// RetryDelay is the pause after a failed write. Defaults to 1s.
	RetryDelay time.Duration
}

// Projector writes a JSON view of every task and node to the KV buckets
// events.BucketTasks and events.BucketNodes, so that any NATS client can read
// them, and records the last sequence it wrote under events.KeyProjectorSeq.
// It writes only what changed since that sequence, or everything when that
// is no longer known (the views are always rebuildable from the log).
type Projector struct {
	cfg                ProjectorConfig
	log                *slog.Logger
	tasks, nodes, meta jetstream.KeyValue
}

// NewProjector opens the buckets and returns a projector.
func NewProjector(ctx context.Context, cfg ProjectorConfig) (*Projector, error) {
	if cfg.JetStream == nil || cfg.Replica == nil {
		return nil, errors.New("invalid projector config: JetStream and Replica are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = time.Second
	}
	p := &Projector{cfg: cfg, log: cfg.Logger.With(slog.String("component", "projector"))}
	for name, kv := range map[string]*jetstream.KeyValue{events.BucketTasks: &p.tasks, events.BucketNodes: &p.nodes, events.BucketMeta: &p.meta} {
		b, err := cfg.JetStream.KeyValue(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("opening bucket %s: %w", name, err)
		}
		*kv = b
	}
	return p, nil
}

// Run keeps the views up to date until ctx is done.
func (p *Projector) Run(ctx context.Context) error {
	select {
	case <-p.cfg.Replica.Ready():
	case <-ctx.Done():
		return nil
	}
	last, err := p.checkpoint(ctx)
	if err != nil {
		return err
	}
	for {
		changed := p.cfg.Replica.Changed()
		head, err := p.project(ctx, last)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil //nolint:nilerr // stopping: the error is the cancellation
		case err != nil:
			p.log.WarnContext(ctx, "writing views", slog.Any("error", err))
			select {
			case <-time.After(p.cfg.RetryDelay):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		last = head
		select {
		case <-changed:
		case <-ctx.Done():
			return nil
		}
	}
}

func (p *Projector) checkpoint(ctx context.Context) (uint64, error) {
	e, err := p.meta.Get(ctx, events.KeyProjectorSeq)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading projector checkpoint: %w", err)
	}
	seq, err := strconv.ParseUint(string(e.Value()), 10, 64)
	if err != nil {
		p.log.WarnContext(ctx, "ignoring malformed projector checkpoint", slog.String("value", string(e.Value())))
		return 0, nil //nolint:nilerr // a bad checkpoint means: rewrite every view
	}
	return seq, nil
}

// view is one KV write; a nil body deletes the key (a deleted task, a
// removed node).
type view struct {
	kv   jetstream.KeyValue
	key  string
	body []byte
}

// project writes the views changed after sequence last and returns the
// sequence they reflect.
func (p *Projector) project(ctx context.Context, last uint64) (uint64, error) {
	var (
		head         uint64
		views        []view
		err          error
		tasks, nodes = map[string]bool{}, map[string]bool{}
		rewrite      bool
	)
	now := p.cfg.Now()
	p.cfg.Replica.ReadSince(last, func(s *State, applied []Applied, complete bool) {
		head, rewrite = s.Seq, !complete
		if head == last {
			return
		}
		if complete {
			for _, a := range applied {
				p.markDirty(s, a, tasks, nodes)
			}
		} else {
			for id := range s.Tasks {
				tasks[id] = true
			}
			for id := range s.Nodes {
				nodes[id] = true
			}
		}
		views, err = p.render(s, now, tasks, nodes)
	})
	if err != nil || head == last {
		return last, err
	}
	if rewrite {
		// Views of tasks and nodes that are gone since are stale.
		for _, b := range []struct {
			kv   jetstream.KeyValue
			keep map[string]bool
		}{{p.tasks, tasks}, {p.nodes, nodes}} {
			stale, err := staleKeys(ctx, b.kv, b.keep)
			if err != nil {
				return last, err
			}
			for _, k := range stale {
				views = append(views, view{kv: b.kv, key: k})
			}
		}
	}
	for _, v := range views {
		var err error
		if v.body == nil {
			err = v.kv.Delete(ctx, v.key)
		} else {
			_, err = v.kv.Put(ctx, v.key, v.body)
		}
		if err != nil {
			return last, fmt.Errorf("writing view %s: %w", v.key, err)
		}
	}
	if _, err := p.meta.Put(ctx, events.KeyProjectorSeq, []byte(strconv.FormatUint(head, 10))); err != nil {
		return last, fmt.Errorf("writing projector checkpoint: %w", err)
	}
	return head, nil
}

// markDirty records which views an accepted event changed. A change of a
// task's slot changes its node's view too, and the reverse.
func (p *Projector) markDirty(s *State, a Applied, tasks, nodes map[string]bool) {
	if !a.Outcome.Accepted {
		return
	}
	switch a.Type.Aggregate() {
	case events.AggregateTask:
		tasks[a.AggregateID] = true
		if t, ok := s.Tasks[a.AggregateID]; ok && t.NodeID != "" {
			nodes[t.NodeID] = true
		}
	case events.AggregateNode:
		// Registration and removal rename every node.
		if a.Type == events.TypeNodeRegistered || a.Type == events.TypeNodeRemoved {
			for id := range s.Nodes {
				nodes[id] = true
			}
		}
		nodes[a.AggregateID] = true
	}
}

func (p *Projector) render(s *State, now time.Time, tasks, nodes map[string]bool) ([]view, error) {
	views := make([]view, 0, len(tasks)+len(nodes))
	for id := range tasks {
		t, ok := s.Tasks[id]
		if !ok {
			views = append(views, view{kv: p.tasks, key: id})
			continue
		}
		b, err := json.Marshal(s.NewTaskView(t, now))
		if err != nil {
			return nil, err
		}
		views = append(views, view{kv: p.tasks, key: id, body: b})
	}
	for id := range nodes {
		n, ok := s.Nodes[id]
		if !ok {
			views = append(views, view{kv: p.nodes, key: id})
			continue
		}
		b, err := json.Marshal(s.NewNodeView(n))
		if err != nil {
			return nil, err
		}
		views = append(views, view{kv: p.nodes, key: id, body: b})
	}
	return views, nil
}

// staleKeys lists the keys of a bucket that are not in keep.
func staleKeys(ctx context.Context, kv jetstream.KeyValue, keep map[string]bool) ([]string, error) {
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", kv.Bucket(), err)
	}
	defer func() { _ = lister.Stop() }()
	var stale []string
	for k := range lister.Keys() {
		if !keep[k] {
			stale = append(stale, k)
		}
	}
	return stale, nil
}
