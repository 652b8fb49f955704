package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
)

// RebuildResult describes a rebuild of the views.
type RebuildResult struct {
	// Seq is the sequence the rebuilt views reflect.
	Seq          uint64
	Tasks, Nodes int
	Took         time.Duration
}

// Rebuild drops the view buckets (events.BucketTasks, events.BucketNodes),
// creates them again with the same replication, and writes every view from
// the log as it is now (starting from the newest snapshot when snapshots is
// not nil), with the projector's checkpoint. now dates the running time of
// started tasks.
//
// A projector running at the same time keeps writing what changes after its
// own checkpoint, so an older view of Rebuild's may overwrite a newer one of
// its: run Rebuild while no broker projects (brokers stopped, or before they
// start), as `broker projections rebuild` documents.
func Rebuild(ctx context.Context, js jetstream.JetStream, snapshots *Snapshots, log *slog.Logger, now time.Time) (RebuildResult, error) {
	start := time.Now()
	if log == nil {
		log = slog.Default()
	}
	st, err := FoldTo(ctx, js, snapshots, Target{})
	if err != nil {
		return RebuildResult{}, err
	}
	for _, cfg := range events.KeyValueConfigs(1) {
		if cfg.Bucket != events.BucketTasks && cfg.Bucket != events.BucketNodes {
			continue
		}
		if err := recreateBucket(ctx, js, cfg); err != nil {
			return RebuildResult{}, err
		}
	}
	p, err := NewProjector(ctx, ProjectorConfig{JetStream: js, Replica: replicaOf(st), Logger: log, Now: func() time.Time { return now }})
	if err != nil {
		return RebuildResult{}, err
	}
	seq, err := p.project(ctx, 0)
	if err != nil {
		return RebuildResult{}, err
	}
	return RebuildResult{Seq: seq, Tasks: len(st.Tasks), Nodes: len(st.Nodes), Took: time.Since(start)}, nil
}

// recreateBucket deletes a bucket and creates it again, keeping its
// replication factor.
func recreateBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) error {
	stream, err := js.Stream(ctx, "KV_"+cfg.Bucket)
	switch {
	case err == nil:
		cfg.Replicas = stream.CachedInfo().Config.Replicas
		if err := js.DeleteKeyValue(ctx, cfg.Bucket); err != nil {
			return fmt.Errorf("dropping bucket %s: %w", cfg.Bucket, err)
		}
	case !errors.Is(err, jetstream.ErrStreamNotFound):
		return fmt.Errorf("reading bucket %s: %w", cfg.Bucket, err)
	}
	if _, err := js.CreateKeyValue(ctx, cfg); err != nil {
		return fmt.Errorf("creating bucket %s: %w", cfg.Bucket, err)
	}
	return nil
}

// replicaOf wraps a state that is not followed by a stream, for a projector
// to write its views: every view counts as changed.
func replicaOf(st *State) *Replica {
	r := &Replica{
		log:     slog.Default(),
		state:   st,
		base:    st.Seq,
		ring:    make([]Applied, 1),
		changed: make(chan struct{}),
		ready:   make(chan struct{}),
	}
	r.markReady()
	return r
}
