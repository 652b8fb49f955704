package projections

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/natstest"
)

// appendLifecycles appends n successful task lifecycles on node n1 (which
// must be up with at least one cpu slot) and returns the last ack.
func appendLifecycles(t *testing.T, srv *natstest.Server, from, n int) events.Ack {
	t.Helper()
	var ack events.Ack
	for i := from; i < from+n; i++ {
		id := "t" + strconv.Itoa(i)
		for j, p := range []events.Payload{
			submit(id, "cpu", 1),
			reserve(id, 1, "n1", "cpu-1"),
			started(id, 1, "n1"),
			exited(id, 1, "n1", i%2),
			decision(id, i%2),
		} {
			ack = appendOne(t, srv, id+":"+strconv.Itoa(j), p)
		}
	}
	return ack
}

func decision(id string, code int) events.Payload {
	if code == 0 {
		return &events.TaskCompleted{TaskID: id, Attempt: 1}
	}
	return &events.TaskFailed{TaskID: id, Attempt: 1}
}

func appendNode(t *testing.T, srv *natstest.Server) {
	t.Helper()
	appendOne(t, srv, "n1:reg", node("n1", "tcp://a:2375", map[string]int{"cpu": 1}))
	appendOne(t, srv, "n1:up", &events.NodeUp{NodeID: "n1"})
}

func openSnapshots(t *testing.T, srv *natstest.Server) *Snapshots {
	t.Helper()
	snaps, err := OpenSnapshots(t.Context(), srv.JS, nil)
	require.NoError(t, err)
	return snaps
}

// takeSnapshot folds the log as it is and stores a snapshot of it.
func takeSnapshot(t *testing.T, srv *natstest.Server, snaps *Snapshots) *State {
	t.Helper()
	st, err := FoldTo(t.Context(), srv.JS, nil, Target{})
	require.NoError(t, err)
	_, err = snaps.SaveState(t.Context(), st)
	require.NoError(t, err)
	return st
}

func TestReplicaStartsFromSnapshot(t *testing.T) {
	t.Parallel()
	srv := natstest.Run(t, "")
	snaps := openSnapshots(t, srv)
	appendNode(t, srv)
	appendLifecycles(t, srv, 0, 20)
	snapped := takeSnapshot(t, srv, snaps)
	// A task left running in the snapshot ends after it.
	appendOne(t, srv, "late:sub", submit("late", "cpu", 0))
	appendOne(t, srv, "late:res", reserve("late", 1, "n1", "cpu-1"))
	appendLifecycles(t, srv, 100, 3) // rejected: the slot is busy
	takeSnapshot(t, srv, snaps)
	appendOne(t, srv, "late:start", started("late", 1, "n1"))
	last := appendOne(t, srv, "late:exit", exited("late", 1, "n1", 0))

	r, err := NewReplica(ReplicaConfig{JetStream: srv.JS, Snapshots: snaps})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, r.Run(ctx)) })
	defer func() { cancel(); wg.Wait() }()
	<-r.Ready()

	full, err := FoldTo(t.Context(), srv.JS, nil, Target{})
	require.NoError(t, err)
	require.Equal(t, last.Seq, full.Seq)
	r.Read(func(s *State) { sameState(t, full, s) })
	require.Greater(t, r.base, snapped.Seq, "the replica started from the newest snapshot")
	// Outcomes before the snapshot were never seen: readers must rewrite.
	r.ReadSince(snapped.Seq, func(_ *State, _ []Applied, complete bool) { require.False(t, complete) })
	r.ReadSince(r.base, func(_ *State, applied []Applied, complete bool) {
		require.True(t, complete)
		require.Len(t, applied, 2)
	})
}

func TestSnapshotThatDoesNotMatchTheLogIsIgnored(t *testing.T) {
	t.Parallel()
	srv := natstest.Run(t, "")
	snaps := openSnapshots(t, srv)
	appendNode(t, srv)
	appendLifecycles(t, srv, 0, 2)
	good := takeSnapshot(t, srv, snaps)
	appendLifecycles(t, srv, 2, 2)

	// A snapshot of another log: same sequence range, other times.
	other := NewState()
	other.Seq, other.StoredAt = good.Seq+5, time.Now().Add(-time.Hour)
	data, err := other.MarshalSnapshot()
	require.NoError(t, err)
	require.NoError(t, snaps.Save(t.Context(), SnapshotInfo{Version: SnapshotVersion, Seq: other.Seq, StoredAt: other.StoredAt}, data))
	// A snapshot beyond the end of the log.
	require.NoError(t, snaps.Save(t.Context(), SnapshotInfo{Version: SnapshotVersion, Seq: 1 << 40, StoredAt: time.Now()}, data))

	st, err := snaps.Load(t.Context(), Target{})
	require.NoError(t, err)
	require.NotNil(t, st)
	require.Equal(t, good.Seq, st.Seq, "the newest snapshot that matches the log")
	sameState(t, good, st)
}

func TestFoldToTarget(t *testing.T) {
	t.Parallel()
	srv := natstest.Run(t, "")
	snaps := openSnapshots(t, srv)
	appendNode(t, srv)
	mid := appendLifecycles(t, srv, 0, 5)
	takeSnapshot(t, srv, snaps)
	time.Sleep(5 * time.Millisecond) // the next events are stored strictly later
	appendLifecycles(t, srv, 5, 5)
	takeSnapshot(t, srv, snaps)
	appendLifecycles(t, srv, 10, 5)

	stream, err := srv.JS.Stream(t.Context(), events.StreamName)
	require.NoError(t, err)
	midMsg, err := stream.GetMsg(t.Context(), mid.Seq)
	require.NoError(t, err)

	for name, target := range map[string]Target{
		"BySequence": {Seq: mid.Seq},
		"ByTime":     {Time: midMsg.Time},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			for _, s := range []*Snapshots{nil, snaps} {
				st, err := FoldTo(t.Context(), srv.JS, s, target)
				require.NoError(t, err)
				require.Equal(t, mid.Seq, st.Seq)
				require.True(t, st.StoredAt.Equal(midMsg.Time))
				require.Len(t, st.Tasks, 5)
				require.NotContains(t, st.Tasks, "t5")
				require.Equal(t, TaskFailed, st.Tasks["t3"].Status)
			}
		})
	}
	t.Run("BeforeTheFirstEvent", func(t *testing.T) {
		t.Parallel()
		st, err := FoldTo(t.Context(), srv.JS, snaps, Target{Time: midMsg.Time.Add(-time.Hour)})
		require.NoError(t, err)
		require.Zero(t, st.Seq)
		require.Empty(t, st.Nodes)
	})
	t.Run("BeyondTheEnd", func(t *testing.T) {
		t.Parallel()
		st, err := FoldTo(t.Context(), srv.JS, snaps, Target{Seq: 1 << 40})
		require.NoError(t, err)
		require.Len(t, st.Tasks, 15)
	})
}

func TestParseTarget(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]Target{
		"42":                            {Seq: 42},
		"2026-11-27T12:00:00Z":          {Time: at},
		"2026-11-27T13:00:00.000+01:00": {Time: at},
	} {
		got, err := ParseTarget(in)
		require.NoError(t, err, in)
		require.Equal(t, want.Seq, got.Seq)
		require.True(t, want.Time.Equal(got.Time), in)
	}
	for _, in := range []string{"", "0", "-1", "yesterday", "2026-11-27"} {
		_, err := ParseTarget(in)
		require.Error(t, err, in)
	}
}

func TestSnapshotter(t *testing.T) {
	t.Parallel()
	srv := natstest.Run(t, "")
	snaps := openSnapshots(t, srv)
	appendNode(t, srv)
	appendLifecycles(t, srv, 0, 10) // 52 events
	s, err := NewSnapshotter(SnapshotterConfig{JetStream: srv.JS, Snapshots: snaps, Every: 20, Keep: 2})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, s.Run(ctx)) })
	defer func() { cancel(); wg.Wait() }()

	require.EventuallyWithT(t, func(c *assertT) { require.Equal(c, uint64(52), s.Last().Seq) }, 10*time.Second, 10*time.Millisecond)
	appendLifecycles(t, srv, 10, 15) // 75 more: more snapshots, each 20 events or more after the last
	head := uint64(52 + 75)
	var infos []SnapshotInfo
	require.EventuallyWithT(t, func(c *assertT) {
		require.Greater(c, s.Last().Seq+20, head)
		var err error
		infos, err = snaps.List(t.Context())
		require.NoError(c, err)
		require.Len(c, infos, 2, "older snapshots are pruned")
		require.Equal(c, s.Last().Seq, infos[1].Seq)
	}, 10*time.Second, 10*time.Millisecond)
	require.GreaterOrEqual(t, infos[1].Seq, infos[0].Seq+20)
	third := infos[1].Seq
	for _, target := range []uint64{third - 1, third} {
		st, err := snaps.Load(t.Context(), Target{Seq: target})
		require.NoError(t, err)
		want, err := FoldTo(t.Context(), srv.JS, nil, Target{Seq: st.Seq})
		require.NoError(t, err)
		sameState(t, want, st, "snapshot at %d", st.Seq)
		require.LessOrEqual(t, st.Seq, target, "the newest snapshot at or before the target")
	}
}
