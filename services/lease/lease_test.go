package lease_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/natstest"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/lease"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const ttl = time.Second

// bucket returns a lease bucket with a short TTL.
func bucket(t *testing.T, srv *natstest.Server) jetstream.KeyValue {
	t.Helper()
	kv, err := srv.JS.CreateKeyValue(t.Context(), jetstream.KeyValueConfig{Bucket: "test_leases", TTL: ttl, Storage: jetstream.MemoryStorage})
	require.NoError(t, err)
	return kv
}

// runner runs fn in the background until the test ends or stop is called.
func runner(t *testing.T, fn func(ctx context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); require.NoError(t, <-done) }) }
	t.Cleanup(stop)
	return stop
}

func TestSingletonHasOneActiveHolder(t *testing.T) {
	t.Parallel()
	srv := natstest.Run(t, "")
	kv := bucket(t, srv)
	var active, maxActive atomic.Int32
	ran := map[string]*atomic.Int32{"a": {}, "b": {}, "c": {}}
	work := func(name string) func(context.Context) error {
		return func(ctx context.Context) error {
			n := active.Add(1)
			defer active.Add(-1)
			for {
				if m := maxActive.Load(); n > m {
					maxActive.CompareAndSwap(m, n)
				}
				ran[name].Add(1)
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(10 * time.Millisecond):
				}
			}
		}
	}
	stops := map[string]func(){}
	for _, name := range []string{"a", "b", "c"} {
		stops[name] = runner(t, func(ctx context.Context) error {
			return lease.Singleton(ctx, lease.Config{KV: kv, Holder: name, TTL: ttl}, "scheduler", work(name))
		})
	}
	require.Eventually(t, func() bool { return active.Load() == 1 }, 5*time.Second, 10*time.Millisecond)
	// Stop whoever is active, twice: a standby takes over at once (the
	// lease is released), and never two at a time.
	for range 2 {
		var leader string
		for name, n := range ran {
			if n.Load() > 0 && stops[name] != nil {
				before := n.Load()
				time.Sleep(50 * time.Millisecond)
				if n.Load() > before {
					leader = name
				}
			}
		}
		require.NotEmpty(t, leader)
		start := time.Now()
		stops[leader]()
		stops[leader] = nil
		ran[leader].Store(0)
		require.Eventually(t, func() bool { return active.Load() == 1 }, 5*time.Second, 5*time.Millisecond)
		t.Logf("handover after a clean stop of %s: %v", leader, time.Since(start))
	}
	require.Equal(t, int32(1), maxActive.Load(), "two holders were active at once")
}

func TestSingletonTakesOverFromADeadHolder(t *testing.T) {
	t.Parallel()
	srv := natstest.Run(t, "")
	kv := bucket(t, srv)
	// A holder that died without releasing: its entry expires after the TTL.
	_, err := kv.Create(t.Context(), "scheduler", []byte("dead"))
	require.NoError(t, err)
	start := time.Now()
	won := make(chan time.Duration, 1)
	runner(t, func(ctx context.Context) error {
		return lease.Singleton(ctx, lease.Config{KV: kv, Holder: "standby", TTL: ttl}, "scheduler", func(ctx context.Context) error {
			won <- time.Since(start)
			<-ctx.Done()
			return nil
		})
	})
	select {
	case d := <-won:
		require.GreaterOrEqual(t, d, ttl/2, "the standby waited for the dead holder's lease to expire")
		t.Logf("took over %v after the dead holder's last renewal", d)
	case <-time.After(10 * ttl):
		t.Fatal("no takeover")
	}
}

func TestSingletonStepsDownWhenItsLeaseIsTaken(t *testing.T) {
	t.Parallel()
	srv := natstest.Run(t, "")
	kv := bucket(t, srv)
	var running atomic.Bool
	runner(t, func(ctx context.Context) error {
		return lease.Singleton(ctx, lease.Config{KV: kv, Holder: "old", TTL: ttl}, "scheduler", func(ctx context.Context) error {
			running.Store(true)
			<-ctx.Done()
			running.Store(false)
			return nil
		})
	})
	require.Eventually(t, running.Load, 5*time.Second, 5*time.Millisecond)
	// Another instance overwrites the lease (as after a partition).
	_, err := kv.Put(t.Context(), "scheduler", []byte("usurper"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return !running.Load() }, 5*time.Second, 5*time.Millisecond, "the old holder stopped acting")
}

func TestSingletonReturnsItsComponentsError(t *testing.T) {
	t.Parallel()
	srv := natstest.Run(t, "")
	kv := bucket(t, srv)
	err := lease.Singleton(t.Context(), lease.Config{KV: kv, Holder: "x", TTL: ttl}, "job", func(context.Context) error {
		return fmt.Errorf("boom")
	})
	require.ErrorContains(t, err, "boom")
	_, err = kv.Get(t.Context(), "job")
	require.ErrorIs(t, err, jetstream.ErrKeyNotFound, "the lease is released")
}

// replicaWithNodes runs a fold over a log holding n registered nodes.
func replicaWithNodes(t *testing.T, srv *natstest.Server, n int) (*projections.Replica, []string) {
	t.Helper()
	var ids []string
	for i := range n {
		id := fmt.Sprintf("node-%d", i)
		ids = append(ids, id)
		env, err := events.New(id, &events.NodeRegistered{NodeID: id, Hostname: "tcp://h" + id, Slots: map[string]int{"cpu": 1}}, events.Meta{})
		require.NoError(t, err)
		_, err = events.Append(t.Context(), srv.JS, env)
		require.NoError(t, err)
	}
	r, err := projections.NewReplica(projections.ReplicaConfig{JetStream: srv.JS})
	require.NoError(t, err)
	runner(t, r.Run)
	<-r.Ready()
	return r, ids
}

func TestOwnersSpreadTheNodesAndTakeOverADeadOnesShare(t *testing.T) {
	t.Parallel()
	srv := natstest.Run(t, "")
	kv := bucket(t, srv)
	r, nodes := replicaWithNodes(t, srv, 5)
	owners := map[string]*lease.Owner{}
	stops := map[string]func(){}
	for _, name := range []string{"a", "b", "c"} {
		o, err := lease.NewOwner(lease.Config{KV: kv, Holder: name, TTL: ttl}, r)
		require.NoError(t, err)
		owners[name] = o
		stops[name] = runner(t, o.Run)
	}
	// Every node has exactly one owner; shares are 2, 2, 1.
	check := func(c *assert.CollectT, live ...string) {
		count := map[string]int{}
		for _, name := range live {
			for _, id := range owners[name].Owned() {
				count[id]++
			}
			require.LessOrEqual(c, len(owners[name].Owned()), (len(nodes)+len(live)-1)/len(live), "owner %s exceeds its share", name)
		}
		for _, id := range nodes {
			require.Equalf(c, 1, count[id], "node %s has %d owners", id, count[id])
		}
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) { check(c, "a", "b", "c") }, 10*time.Second, 20*time.Millisecond)
	for _, id := range owners["a"].Owned() {
		require.True(t, owners["a"].Owns(id))
		require.False(t, owners["b"].Owns(id))
	}

	// An instance stops: the others take its nodes.
	stops["c"]()
	start := time.Now()
	require.EventuallyWithT(t, func(c *assert.CollectT) { check(c, "a", "b") }, 10*time.Second, 20*time.Millisecond)
	t.Logf("nodes of a stopped instance taken over in %v", time.Since(start))
	require.Empty(t, owners["c"].Owned())

	// A new instance joins: it gets a share, released by the others.
	d, err := lease.NewOwner(lease.Config{KV: kv, Holder: "d", TTL: ttl}, r)
	require.NoError(t, err)
	owners["d"] = d
	runner(t, d.Run)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		check(c, "a", "b", "d")
		require.NotEmpty(c, d.Owned())
	}, 10*time.Second, 20*time.Millisecond)
}

func TestOwnerTakesTheNodesOfACrashedInstance(t *testing.T) {
	t.Parallel()
	srv := natstest.Run(t, "")
	kv := bucket(t, srv)
	r, nodes := replicaWithNodes(t, srv, 2)
	// An instance that crashed holding both nodes: nothing was released.
	_, err := kv.Put(t.Context(), "instance.dead", []byte("dead"))
	require.NoError(t, err)
	for _, id := range nodes {
		_, err := kv.Create(t.Context(), "node."+id, []byte("dead"))
		require.NoError(t, err)
	}
	start := time.Now()
	o, err := lease.NewOwner(lease.Config{KV: kv, Holder: "alive", TTL: ttl}, r)
	require.NoError(t, err)
	runner(t, o.Run)
	require.Eventually(t, func() bool { return len(o.Owned()) == 2 }, 10*time.Second, 10*time.Millisecond)
	took := time.Since(start)
	require.GreaterOrEqual(t, took, ttl/2, "the crashed instance's leases had to expire first")
	t.Logf("nodes of a crashed instance owned after %v", took)
}
