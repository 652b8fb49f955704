package projections

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/natstest"
)

type replicaBundle struct {
	srv     *natstest.Server
	replica *Replica
}

// startReplica runs a replica until the test ends.
func startReplica(t *testing.T, srv *natstest.Server) *Replica {
	t.Helper()
	r, err := NewReplica(ReplicaConfig{JetStream: srv.JS})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, r.Run(ctx)) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	select {
	case <-r.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("replica not ready")
	}
	return r
}

func setupReplica(t *testing.T) *replicaBundle {
	t.Helper()
	srv := natstest.Run(t, "")
	return &replicaBundle{srv: srv, replica: startReplica(t, srv)}
}

func appendOne(t *testing.T, srv *natstest.Server, key string, p events.Payload) events.Ack {
	t.Helper()
	env, err := events.New(key, p, events.Meta{})
	require.NoError(t, err)
	ack, err := events.Append(t.Context(), srv.JS, env)
	require.NoError(t, err)
	return ack
}

func TestReplica(t *testing.T) {
	t.Parallel()

	t.Run("WaitSeqReturnsTheFoldsVerdict", func(t *testing.T) {
		t.Parallel()
		b := setupReplica(t)
		appendOne(t, b.srv, "n1:reg", node("n1", "tcp://a:2375", map[string]int{"cpu": 1}))
		appendOne(t, b.srv, "n1:up", &events.NodeUp{NodeID: "n1"})
		appendOne(t, b.srv, "t1:sub", submit("t1", "cpu", 3))
		appendOne(t, b.srv, "t2:sub", submit("t2", "cpu", 3))
		first := appendOne(t, b.srv, "t1:1:res", reserve("t1", 1, "n1", "cpu-1"))
		second := appendOne(t, b.srv, "t2:1:res", reserve("t2", 1, "n1", "cpu-1"))

		out, err := b.replica.WaitSeq(t.Context(), first.Seq)
		require.NoError(t, err)
		require.True(t, out.Accepted)
		out, err = b.replica.WaitSeq(t.Context(), second.Seq)
		require.NoError(t, err)
		require.False(t, out.Accepted)
		require.Contains(t, out.Reason, "slot cpu-1 of node n1 is attaching")
		b.replica.Read(func(s *State) {
			require.Equal(t, TaskStarting, s.Tasks["t1"].Status)
			require.Equal(t, TaskWaiting, s.Tasks["t2"].Status)
		})
	})

	t.Run("ALostConsumerIsRecreated", func(t *testing.T) {
		t.Parallel()
		b := setupReplica(t)
		first := appendOne(t, b.srv, "t1:sub", submit("t1", "cpu", 3))
		_, err := b.replica.WaitSeq(t.Context(), first.Seq)
		require.NoError(t, err)
		// The consumer goes, as it does with a stream leader that dies.
		stream, err := b.srv.JS.Stream(t.Context(), events.StreamName)
		require.NoError(t, err)
		names := stream.ConsumerNames(t.Context())
		var deleted int
		for name := range names.Name() {
			require.NoError(t, stream.DeleteConsumer(t.Context(), name))
			deleted++
		}
		require.NoError(t, names.Err())
		require.Equal(t, 1, deleted)
		second := appendOne(t, b.srv, "t2:sub", submit("t2", "cpu", 3))
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		out, err := b.replica.WaitSeq(ctx, second.Seq)
		require.NoError(t, err)
		require.True(t, out.Accepted)
		b.replica.Read(func(s *State) { require.Len(t, s.Tasks, 2) })
	})

	t.Run("AppendWithTheSameKeyIsStoredOnce", func(t *testing.T) {
		t.Parallel()
		b := setupReplica(t)
		first := appendOne(t, b.srv, "t1:sub", submit("t1", "cpu", 3))
		again := appendOne(t, b.srv, "t1:sub", submit("t1", "cpu", 3))
		require.False(t, first.Duplicate)
		require.True(t, again.Duplicate)
		require.Equal(t, first.Seq, again.Seq)
		info, err := b.srv.JS.Stream(t.Context(), events.StreamName)
		require.NoError(t, err)
		require.Equal(t, uint64(1), info.CachedInfo().State.Msgs)
	})

	t.Run("AppendAllKeepsOrderAndDedups", func(t *testing.T) {
		t.Parallel()
		b := setupReplica(t)
		var envs []events.Envelope
		for i := range 50 {
			env, err := events.New("sub"+strconv.Itoa(i), submit("t"+strconv.Itoa(i), "cpu", 3), events.Meta{})
			require.NoError(t, err)
			envs = append(envs, env)
		}
		acks, err := events.AppendAll(t.Context(), b.srv.JS, envs)
		require.NoError(t, err)
		for i, a := range acks {
			require.Equal(t, uint64(i+1), a.Seq)
		}
		acks, err = events.AppendAll(t.Context(), b.srv.JS, envs)
		require.NoError(t, err)
		for _, a := range acks {
			require.True(t, a.Duplicate)
		}
		_, err = b.replica.WaitSeq(t.Context(), 50)
		require.NoError(t, err)
		b.replica.Read(func(s *State) { require.Len(t, s.Queue("cpu"), 50) })
	})

	t.Run("ANewReplicaCatchesUpBeforeItIsReady", func(t *testing.T) {
		t.Parallel()
		b := setupReplica(t)
		for i := range 20 {
			appendOne(t, b.srv, "sub"+strconv.Itoa(i), submit("t"+strconv.Itoa(i), "cpu", 3))
		}
		second := startReplica(t, b.srv)
		require.Equal(t, uint64(20), second.Seq())
		second.Read(func(s *State) { require.Len(t, s.Tasks, 20) })
	})

	t.Run("UndecodableMessagesAreSkipped", func(t *testing.T) {
		t.Parallel()
		b := setupReplica(t)
		_, err := b.srv.JS.Publish(t.Context(), "cb.ev.task.x.junk", []byte("not json"))
		require.NoError(t, err)
		ack := appendOne(t, b.srv, "t1:sub", submit("t1", "cpu", 3))
		out, err := b.replica.WaitSeq(t.Context(), ack.Seq)
		require.NoError(t, err)
		require.True(t, out.Accepted)
		junk, err := b.replica.WaitSeq(t.Context(), 1)
		require.NoError(t, err)
		require.False(t, junk.Accepted)
		require.Contains(t, junk.Reason, "malformed")
	})

	t.Run("ReadSinceReportsForgottenHistory", func(t *testing.T) {
		t.Parallel()
		srv := natstest.Run(t, "")
		r, err := NewReplica(ReplicaConfig{JetStream: srv.JS, Remember: 4})
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Go(func() { require.NoError(t, r.Run(ctx)) })
		t.Cleanup(func() { cancel(); wg.Wait() })
		for i := range 10 {
			appendOne(t, srv, "sub"+strconv.Itoa(i), submit("t"+strconv.Itoa(i), "cpu", 3))
		}
		_, err = r.WaitSeq(t.Context(), 10)
		require.NoError(t, err)
		r.ReadSince(2, func(_ *State, _ []Applied, complete bool) { require.False(t, complete) })
		r.ReadSince(7, func(_ *State, applied []Applied, complete bool) {
			require.True(t, complete)
			require.Len(t, applied, 3)
		})
		_, err = r.WaitSeq(t.Context(), 1)
		require.ErrorIs(t, err, ErrOutcomeForgotten)
	})
}

func TestProjector(t *testing.T) {
	t.Parallel()
	b := setupReplica(t)
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	p, err := NewProjector(t.Context(), ProjectorConfig{JetStream: b.srv.JS, Replica: b.replica, Now: func() time.Time { return now }})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, p.Run(ctx)) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	appendOne(t, b.srv, "n1:reg", node("n1", "tcp://a:2375", map[string]int{"cpu": 2}))
	appendOne(t, b.srv, "n1:up", &events.NodeUp{NodeID: "n1"})
	appendOne(t, b.srv, "t1:sub", submit("t1", "cpu", 3))
	appendOne(t, b.srv, "t1:res", reserve("t1", 1, "n1", "cpu-1"))
	last := appendOne(t, b.srv, "t1:start", &events.ContainerStarted{TaskID: "t1", Attempt: 1, NodeID: "n1", StartedAt: now.Add(-90 * time.Second)})

	kvTasks, err := b.srv.JS.KeyValue(t.Context(), events.BucketTasks)
	require.NoError(t, err)
	kvNodes, err := b.srv.JS.KeyValue(t.Context(), events.BucketNodes)
	require.NoError(t, err)
	kvMeta, err := b.srv.JS.KeyValue(t.Context(), events.BucketMeta)
	require.NoError(t, err)

	require.EventuallyWithT(t, func(c *assertT) {
		e, err := kvMeta.Get(t.Context(), events.KeyProjectorSeq)
		require.NoError(c, err)
		require.Equal(c, strconv.FormatUint(last.Seq, 10), string(e.Value()))
	}, 10*time.Second, 20*time.Millisecond)

	e, err := kvTasks.Get(t.Context(), "t1")
	require.NoError(t, err)
	var tv TaskView
	require.NoError(t, json.Unmarshal(e.Value(), &tv))
	require.Equal(t, TaskStarted, tv.Status)
	require.Equal(t, 90, *tv.SecondsRunning)
	require.Equal(t, "n001d-s01-cpu", tv.Slot.Name)
	require.Equal(t, "2026-11-27T11:58:30.000Z", *tv.StartedAt)

	e, err = kvNodes.Get(t.Context(), "n1")
	require.NoError(t, err)
	var nv NodeView
	require.NoError(t, json.Unmarshal(e.Value(), &nv))
	require.Equal(t, NodeAvailable, nv.Status)
	require.Equal(t, []TypeUsage{{ExecutionType: "cpu", UsagePercent: 50}}, nv.UsagePerExecutionType)
	require.Equal(t, SlotRunning, nv.Slots[0].Status)
	require.Equal(t, "t1", *nv.Slots[0].TaskUUID)
}

func TestProjectorRewriteDropsStaleViews(t *testing.T) {
	t.Parallel()
	srv := natstest.Run(t, "")
	r, err := NewReplica(ReplicaConfig{JetStream: srv.JS, Remember: 4})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, r.Run(ctx)) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	kvTasks, err := srv.JS.KeyValue(t.Context(), events.BucketTasks)
	require.NoError(t, err)
	_, err = kvTasks.Put(t.Context(), "ghost", []byte(`{}`))
	require.NoError(t, err)
	for i := range 10 {
		appendOne(t, srv, "sub"+strconv.Itoa(i), submit("t"+strconv.Itoa(i), "cpu", 3))
	}
	_, err = r.WaitSeq(t.Context(), 10)
	require.NoError(t, err)

	// The checkpoint (none) is older than what the replica remembers: the
	// projector rewrites every view and drops the ones of vanished tasks.
	p, err := NewProjector(t.Context(), ProjectorConfig{JetStream: srv.JS, Replica: r})
	require.NoError(t, err)
	wg.Go(func() { require.NoError(t, p.Run(ctx)) })
	require.EventuallyWithT(t, func(c *assertT) {
		_, err := kvTasks.Get(t.Context(), "ghost")
		require.ErrorIs(c, err, jetstream.ErrKeyNotFound)
		keys, err := kvTasks.Keys(t.Context())
		require.NoError(c, err)
		require.Len(c, keys, 10)
	}, 10*time.Second, 20*time.Millisecond)
}
