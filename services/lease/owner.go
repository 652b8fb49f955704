package lease

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cbroker/broker/projections"
)

// Owner spreads the nodes over the instances that run containers: each
// instance heartbeats its presence, holds a lease per node it owns, and aims
// at an equal share (the node count divided by the live instances, rounded
// up). It takes unowned nodes while below its share and releases its surplus
// when instances join, so a dead instance's nodes are taken over within the
// TTL and a new instance gets work. The runner and the health monitor act
// only on the nodes Owns reports.
type Owner struct {
	cfg     Config
	replica *projections.Replica
	log     *slog.Logger

	owned map[string]*lease // used by Run's goroutine only

	mu      sync.Mutex
	renewed map[string]time.Time // owned nodes → their lease's last renewal
	changed chan struct{}
}

// NewOwner returns an owner of the replica's nodes.
func NewOwner(cfg Config, replica *projections.Replica) (*Owner, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	return &Owner{
		cfg: cfg, replica: replica, log: cfg.Logger.With(slog.String("component", "owner")),
		owned: map[string]*lease{}, renewed: map[string]time.Time{}, changed: make(chan struct{}),
	}, nil
}

const (
	instancePrefix = "instance."
	nodePrefix     = "node."
)

// Owns reports whether this instance holds the node's lease now.
func (o *Owner) Owns(nodeID string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	at, ok := o.renewed[nodeID]
	return ok && time.Since(at) < o.cfg.TTL*3/4
}

// Owned returns the ids of the nodes this instance holds, sorted.
func (o *Owner) Owned() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	var ids []string
	for id, at := range o.renewed {
		if time.Since(at) < o.cfg.TTL*3/4 {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// Changed returns a channel closed at the next change of the owned set.
func (o *Owner) Changed() <-chan struct{} {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.changed
}

func (o *Owner) notify() {
	o.mu.Lock()
	close(o.changed)
	o.changed = make(chan struct{})
	o.mu.Unlock()
}

// Run keeps the leases until ctx is done, then releases them all.
func (o *Owner) Run(ctx context.Context) error {
	select {
	case <-o.replica.Ready():
	case <-ctx.Done():
		return nil
	}
	me := &lease{kv: o.cfg.KV, key: instancePrefix + o.cfg.Holder, holder: o.cfg.Holder, ttl: o.cfg.TTL}
	defer o.releaseAll(ctx, me)
	tick := time.NewTicker(o.cfg.TTL / 4)
	defer tick.Stop()
	var known []string
	for {
		if changed := o.round(ctx, me); changed {
			o.notify()
		}
		known = o.nodes()
		for wait := true; wait; {
			changed := o.replica.Changed()
			select {
			case <-tick.C:
				wait = false
			case <-changed:
				// Act at once when a node is registered or removed.
				wait = slices.Equal(known, o.nodes())
			case <-ctx.Done():
				return nil
			}
		}
	}
}

// nodes returns the ids of the fold's nodes, sorted.
func (o *Owner) nodes() []string {
	var nodes []string
	o.replica.Read(func(s *projections.State) {
		for id := range s.Nodes {
			nodes = append(nodes, id)
		}
	})
	slices.Sort(nodes)
	return nodes
}

// round heartbeats, renews the owned leases, and takes or releases nodes
// towards this instance's share. It reports whether the owned set changed.
func (o *Owner) round(ctx context.Context, me *lease) bool {
	if time.Since(me.renewed) >= o.cfg.TTL/4 {
		if _, err := o.cfg.KV.Put(ctx, me.key, []byte(o.cfg.Holder)); err != nil {
			o.log.WarnContext(ctx, "heartbeat", slog.Any("error", err))
		} else {
			me.renewed = time.Now()
		}
	}
	instances := o.instances(ctx)
	nodes := o.nodes()
	share := (len(nodes) + instances - 1) / max(instances, 1)

	owned := o.owned
	changed := false
	drop := func(id string, release bool) {
		if release {
			owned[id].release(ctx)
		}
		delete(owned, id)
		changed = true
	}
	for id, l := range owned {
		switch {
		case !slices.Contains(nodes, id):
			drop(id, true)
		case time.Since(l.renewed) >= o.cfg.TTL/4:
			if err := l.renew(ctx); err != nil && !l.valid() {
				o.log.WarnContext(ctx, "node lease lost", slog.String("node_id", id), slog.Any("error", err))
				drop(id, false)
			}
		}
	}
	// Release the surplus, newest ids last to keep.
	for _, id := range slices.Backward(slices.Sorted(maps.Keys(owned))) {
		if len(owned) <= share {
			break
		}
		o.log.InfoContext(ctx, "releasing node to another instance", slog.String("node_id", id), slog.Int("share", share))
		drop(id, true)
	}
	// Take unowned nodes, starting at an offset so that instances do not all
	// race for the same ones.
	for i := range nodes {
		if len(owned) >= share {
			break
		}
		id := nodes[(i+offset(o.cfg.Holder, len(nodes)))%len(nodes)]
		if _, ok := owned[id]; ok {
			continue
		}
		l := &lease{kv: o.cfg.KV, key: nodePrefix + id, holder: o.cfg.Holder, ttl: o.cfg.TTL}
		held, err := l.acquire(ctx)
		if err != nil && ctx.Err() == nil {
			o.log.WarnContext(ctx, "taking node", slog.String("node_id", id), slog.Any("error", err))
		}
		if held {
			o.log.InfoContext(ctx, "node owned", slog.String("node_id", id), slog.Int("share", share), slog.Int("instances", instances))
			owned[id] = l
			changed = true
		}
	}
	renewed := make(map[string]time.Time, len(owned))
	for id, l := range owned {
		renewed[id] = l.renewed
	}
	o.mu.Lock()
	o.renewed = renewed
	o.mu.Unlock()
	return changed
}

// instances counts the live instances (their heartbeats have not expired).
func (o *Owner) instances(ctx context.Context) int {
	lister, err := o.cfg.KV.ListKeysFiltered(ctx, instancePrefix+"*")
	if err != nil {
		return 1
	}
	defer func() { _ = lister.Stop() }()
	n := 0
	for range lister.Keys() {
		n++
	}
	return max(n, 1)
}

func (o *Owner) releaseAll(ctx context.Context, me *lease) {
	o.mu.Lock()
	o.renewed = map[string]time.Time{}
	o.mu.Unlock()
	owned := o.owned
	o.owned = map[string]*lease{}
	for _, l := range owned {
		l.release(ctx)
	}
	me.rev = 0
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_ = o.cfg.KV.Delete(rctx, me.key)
	o.notify()
}

// offset spreads the instances' starting points over the node list.
func offset(holder string, n int) int {
	if n == 0 {
		return 0
	}
	h := 0
	for _, r := range strings.ToLower(holder) {
		h = h*31 + int(r)
	}
	return ((h % n) + n) % n
}
