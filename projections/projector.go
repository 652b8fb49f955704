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
	// revs holds the revision of every key this projector wrote last, so
	// that its next write of the key is a compare-and-set without a read.
	revs map[string]uint64
	// created lists the keys this pass created (they did not exist, or had
	// been deleted), for settle.
	created []createdKey
	// offered holds the execution types some node had slots of when the
	// views were last written; nil before the first write. A waiting
	// task's view says when no node offers its type, so a change of this
	// set changes the views of the tasks queued for the types it touches.
	offered map[string]bool
}

// createdKey is a key a projector created, at its revision.
type createdKey struct {
	kv  jetstream.KeyValue
	key string
	rev uint64
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
	p := &Projector{cfg: cfg, log: cfg.Logger.With(slog.String("component", "projector")), revs: map[string]uint64{}}
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
	var last uint64
	err := events.Retry(ctx, p.log, "reading the projector checkpoint", p.cfg.RetryDelay, func(ctx context.Context) error {
		var err error
		last, err = p.checkpoint(ctx)
		return err
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil //nolint:nilerr // stopping: the error is the cancellation
		}
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
	seq, _, err := p.readCheckpoint(ctx)
	return seq, err
}

// readCheckpoint returns the checkpoint and its revision (0: none).
func (p *Projector) readCheckpoint(ctx context.Context) (seq, rev uint64, err error) {
	e, err := p.meta.Get(ctx, events.KeyProjectorSeq)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("reading projector checkpoint: %w", err)
	}
	seq, err = strconv.ParseUint(string(e.Value()), 10, 64)
	if err != nil {
		p.log.WarnContext(ctx, "ignoring malformed projector checkpoint", slog.String("value", string(e.Value())))
		return 0, e.Revision(), nil //nolint:nilerr // a bad checkpoint means: rewrite every view
	}
	return seq, e.Revision(), nil
}

// advanceCheckpoint moves the checkpoint forward to seq, never back: a
// projector behind another leaves it where the other put it. It returns the
// checkpoint as it found or left it.
func (p *Projector) advanceCheckpoint(ctx context.Context, seq uint64) (uint64, error) {
	value := []byte(strconv.FormatUint(seq, 10))
	for range maxConflicts {
		cur, rev, err := p.readCheckpoint(ctx)
		if err != nil {
			return 0, err
		}
		if cur >= seq && rev != 0 {
			return cur, nil
		}
		if rev == 0 {
			_, err = p.meta.Create(ctx, events.KeyProjectorSeq, value)
		} else {
			_, err = p.meta.Update(ctx, events.KeyProjectorSeq, value, rev)
		}
		if err == nil {
			return seq, nil
		}
		if !conflict(err) {
			return 0, err
		}
	}
	return 0, errors.New("writing projector checkpoint: too many concurrent writers")
}

// maxConflicts bounds the compare-and-set retries of one write.
const maxConflicts = 16

// conflict reports whether a compare-and-set write lost to another writer.
func conflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) ||
		(errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant))
}

// viewSeq reads the sequence a stored view was rendered at (0 if unknown).
func viewSeq(body []byte) uint64 {
	var v struct {
		Seq uint64 `json:"view_seq"`
	}
	if json.Unmarshal(body, &v) != nil {
		return 0
	}
	return v.Seq
}

// write stores (or deletes, for a nil body) one view rendered at sequence
// seq, unless the stored one was rendered at seq or later: with several
// projectors (a standby that took over while the old one still had writes
// in flight), a view never goes back in time. Every write is a
// compare-and-set on the revision last read or written.
func (p *Projector) write(ctx context.Context, v view, seq uint64) error {
	id := v.kv.Bucket() + "/" + v.key
	if rev, ok := p.revs[id]; ok {
		err := p.set(ctx, v, id, rev)
		if err == nil || !conflict(err) {
			return err
		}
		delete(p.revs, id)
	}
	for range maxConflicts {
		e, err := v.kv.Get(ctx, v.key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			if v.body == nil {
				return nil
			}
			rev, err := v.kv.Create(ctx, v.key, v.body)
			if conflict(err) {
				continue
			}
			if err != nil {
				return err
			}
			p.revs[id] = rev
			p.created = append(p.created, createdKey{kv: v.kv, key: v.key, rev: rev})
			return nil
		case err != nil:
			return err
		}
		if viewSeq(e.Value()) >= seq {
			p.revs[id] = e.Revision()
			return nil // another projector wrote a newer view
		}
		err = p.set(ctx, v, id, e.Revision())
		if !conflict(err) {
			return err
		}
	}
	return fmt.Errorf("writing view %s: too many concurrent writers", v.key)
}

// set writes a view if the key is still at revision rev.
func (p *Projector) set(ctx context.Context, v view, id string, rev uint64) error {
	if v.body == nil {
		delete(p.revs, id)
		return v.kv.Delete(ctx, v.key, jetstream.LastRevision(rev))
	}
	next, err := v.kv.Update(ctx, v.key, v.body, rev)
	if err == nil {
		p.revs[id] = next
	}
	return err
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
		offered      map[string]bool
	)
	now := p.cfg.Now()
	p.cfg.Replica.ReadSince(last, func(s *State, applied []Applied, complete bool) {
		head, rewrite = s.Seq, !complete
		if head == last {
			return
		}
		offered = s.offeredTypes()
		if complete {
			p.dirty(s, applied, offered, tasks, nodes)
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
	// Another projector ahead of this one wrote newer views already: wait
	// for this fold to catch up instead of writing older ones.
	if ahead, _, err := p.readCheckpoint(ctx); err != nil {
		return last, err
	} else if ahead > head {
		return last, nil
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
	p.created = p.created[:0]
	for _, v := range views {
		if err := p.write(ctx, v, head); err != nil {
			return last, fmt.Errorf("writing view %s: %w", v.key, err)
		}
	}
	checkpoint, err := p.advanceCheckpoint(ctx, head)
	if err != nil {
		return last, fmt.Errorf("writing projector checkpoint: %w", err)
	}
	if err := p.settle(ctx, head, checkpoint, views); err != nil {
		return last, err
	}
	p.offered = offered
	return head, nil
}

// settle closes the window between a projector's look at the checkpoint
// and its writes, when two projectors run at once (a standby taking over, a
// lease lost during a pause). Compare-and-set on view_seq keeps every view
// that exists from going back in time, but a deleted key has no view_seq:
// a projector behind another could create again the view of a task the
// other deleted. Both sides check after writing, so that whichever order
// their writes and checkpoints take, the view ends deleted:
//   - a projector that finds the checkpoint ahead of its fold deletes the
//     keys it created in this pass, unless someone wrote them since (the
//     projector ahead wrote every view its fold has; a key it did not write
//     is one it deleted);
//   - a projector that deleted views deletes again any of them written
//     since from an older fold.
//
// Task ids never come back once deleted; node ids do (a hostname registered
// again), and a view from a newer fold is never deleted here. checkpoint is
// the checkpoint as read after this pass's writes.
func (p *Projector) settle(ctx context.Context, head, checkpoint uint64, views []view) error {
	if checkpoint > head {
		for _, c := range p.created {
			err := c.kv.Delete(ctx, c.key, jetstream.LastRevision(c.rev))
			if err != nil && !conflict(err) {
				return fmt.Errorf("withdrawing view %s: %w", c.key, err)
			}
			delete(p.revs, c.kv.Bucket()+"/"+c.key)
		}
	}
	for _, v := range views {
		if v.body != nil {
			continue
		}
		e, err := v.kv.Get(ctx, v.key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("checking deleted view %s: %w", v.key, err)
		}
		if viewSeq(e.Value()) < head {
			err := v.kv.Delete(ctx, v.key, jetstream.LastRevision(e.Revision()))
			if err != nil && !conflict(err) {
				return fmt.Errorf("deleting view %s again: %w", v.key, err)
			}
		}
	}
	return nil
}

// dirty records in tasks and nodes the views that the applied events
// changed, the last of them leaving state s, where offered are the
// execution types some node has slots of.
func (p *Projector) dirty(s *State, applied []Applied, offered, tasks, nodes map[string]bool) {
	for _, a := range applied {
		p.markDirty(s, a, tasks, nodes)
	}
	// A task's view names its slot after the node and the slot's place on
	// it, which node events change (a registration renames every node).
	for id := range nodes {
		if n, ok := s.Nodes[id]; ok {
			for _, sl := range n.Slots {
				if sl.Status != SlotAvailable && sl.TaskID != "" {
					tasks[sl.TaskID] = true
				}
			}
		}
	}
	// A waiting task's view says whether any node offers its type.
	for _, typ := range s.QueuedTypes() {
		if p.offered != nil && p.offered[typ] == offered[typ] {
			continue
		}
		for _, t := range s.Queue(typ) {
			tasks[t.ID] = true
		}
	}
}

// markDirty records which views an accepted event changed. A change of a
// task's slot changes its node's view too; dirty adds the reverse.
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
		// The node it left, when later events of the batch moved it on.
		if a.Outcome.PrevNodeID != "" {
			nodes[a.Outcome.PrevNodeID] = true
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
		b, err := json.Marshal(struct {
			TaskView
			ViewSeq uint64 `json:"view_seq"`
		}{s.NewTaskView(t, now), s.Seq})
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
		b, err := json.Marshal(struct {
			NodeView
			ViewSeq uint64 `json:"view_seq"`
		}{s.NewNodeView(n), s.Seq})
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
