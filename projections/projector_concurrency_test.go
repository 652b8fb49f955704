package projections

import (
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/natstest"
)

// TestProjectorsNeverWriteOlderViews runs a projector on the whole log and
// then one whose fold stopped earlier (a standby that took over while the
// old one still had writes in flight, or a lagging instance): the stale one
// writes nothing the first one wrote newer, views and checkpoint alike.
func TestProjectorsNeverWriteOlderViews(t *testing.T) {
	t.Parallel()
	srv := natstest.Run(t, "")
	mid, head := deletedAfterMid(t, srv, 2)

	newer, err := NewProjector(t.Context(), ProjectorConfig{JetStream: srv.JS, Replica: replicaOf(head), Now: func() time.Time { return t0 }})
	require.NoError(t, err)
	seq, err := newer.project(t.Context(), 0)
	require.NoError(t, err)
	require.Equal(t, head.Seq, seq)
	before := bucketContents(t, srv.JS)
	require.NotContains(t, before, "cb_tasks/t0", "the deleted task's view is gone")
	require.Contains(t, before, "cb_tasks/t4")

	// The stale projector sees the checkpoint ahead of its fold: it waits.
	stale, err := NewProjector(t.Context(), ProjectorConfig{JetStream: srv.JS, Replica: replicaOf(mid), Now: func() time.Time { return t0 }})
	require.NoError(t, err)
	seq, err = stale.project(t.Context(), 0)
	require.NoError(t, err)
	require.Zero(t, seq, "nothing written")
	require.Equal(t, before, bucketContents(t, srv.JS))

	// Even past that check (it read the checkpoint before the other wrote),
	// no single view goes back in time.
	views, err := stale.render(mid, t0, map[string]bool{"t1": true, "t2": true}, map[string]bool{"n1": true})
	require.NoError(t, err)
	for _, v := range views {
		require.NoError(t, stale.write(t.Context(), v, mid.Seq))
	}
	require.Equal(t, before, bucketContents(t, srv.JS))

	// The views are the newer projector's.
	require.Equal(t, head.Seq, viewSeq([]byte(before["cb_tasks/t1"])))
}

// TestDeletedViewsStayDeleted: a projector behind another, past its look at
// the checkpoint, writes the view of a task the other deleted. Whether it
// writes after the other's checkpoint or between the other's delete and
// checkpoint, the view ends deleted, and nothing else changes.
func TestDeletedViewsStayDeleted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// between runs after the newer projector deleted the view and
		// before it moves the checkpoint.
		between bool
	}{{"AfterTheCheckpoint", false}, {"BeforeTheCheckpoint", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := natstest.Run(t, "")
			mid, head := deletedAfterMid(t, srv, 0)
			now := func() time.Time { return t0 }
			newer, err := NewProjector(t.Context(), ProjectorConfig{JetStream: srv.JS, Replica: replicaOf(head), Now: now})
			require.NoError(t, err)
			stale, err := NewProjector(t.Context(), ProjectorConfig{JetStream: srv.JS, Replica: replicaOf(mid), Now: now})
			require.NoError(t, err)
			// Both wrote every view at mid.
			_, err = stale.project(t.Context(), 0)
			require.NoError(t, err)
			require.Contains(t, bucketContents(t, srv.JS), "cb_tasks/t0")

			// The newer one deletes t0's view.
			views, err := newer.render(head, t0, map[string]bool{"t0": true}, nil)
			require.NoError(t, err)
			for _, v := range views {
				require.NoError(t, newer.write(t.Context(), v, head.Seq))
			}
			require.NotContains(t, bucketContents(t, srv.JS), "cb_tasks/t0")
			// The stale one writes it again: the window.
			resurrect := func() {
				stale.created = stale.created[:0]
				old, err := stale.render(mid, t0, map[string]bool{"t0": true, "t1": true}, nil)
				require.NoError(t, err)
				for _, v := range old {
					require.NoError(t, stale.write(t.Context(), v, mid.Seq))
				}
				require.Contains(t, bucketContents(t, srv.JS), "cb_tasks/t0")
			}
			if tc.between {
				resurrect()
			}
			checkpoint, err := newer.advanceCheckpoint(t.Context(), head.Seq)
			require.NoError(t, err)
			require.Equal(t, head.Seq, checkpoint)
			require.NoError(t, newer.settle(t.Context(), head.Seq, checkpoint, views))
			if !tc.between {
				resurrect()
			}
			// As project does after its writes: the checkpoint stays ahead.
			checkpoint, err = stale.advanceCheckpoint(t.Context(), mid.Seq)
			require.NoError(t, err)
			require.Equal(t, head.Seq, checkpoint)
			require.NoError(t, stale.settle(t.Context(), mid.Seq, checkpoint, nil))
			after := bucketContents(t, srv.JS)
			require.NotContains(t, after, "cb_tasks/t0", "the deleted view stays deleted")
			require.Contains(t, after, "cb_tasks/t1", "other views stay")
			require.Contains(t, after, "cb_tasks/t2")
			require.Equal(t, strconv.FormatUint(head.Seq, 10), after["cb_meta/"+events.KeyProjectorSeq])
		})
	}
}

// deletedAfterMid writes a node and three task lifecycles (t0-t2) and folds
// them (mid), then deletes t0, writes more lifecycles and folds the whole
// log (head).
func deletedAfterMid(t *testing.T, srv *natstest.Server, more int) (mid, head *State) {
	t.Helper()
	appendNode(t, srv)
	appendLifecycles(t, srv, 0, 3)
	mid, err := FoldTo(t.Context(), srv.JS, nil, Target{})
	require.NoError(t, err)
	appendOne(t, srv, "t0:del", &events.TaskDeleted{TaskID: "t0"})
	appendLifecycles(t, srv, 3, more)
	head, err = FoldTo(t.Context(), srv.JS, nil, Target{})
	require.NoError(t, err)
	return mid, head
}

// bucketContents returns every view and the checkpoint.
func bucketContents(t *testing.T, js jetstream.JetStream) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, b := range []string{events.BucketTasks, events.BucketNodes, events.BucketMeta} {
		kv, err := js.KeyValue(t.Context(), b)
		require.NoError(t, err)
		lister, err := kv.ListKeys(t.Context())
		require.NoError(t, err)
		for k := range lister.Keys() {
			e, err := kv.Get(t.Context(), k)
			require.NoError(t, err)
			out[b+"/"+k] = string(e.Value())
		}
	}
	return out
}

// projectorSteps returns a function that appends an event, projects it and
// returns the view of task t1 as written.
func projectorSteps(t *testing.T) (*natstest.Server, func(key string, pl events.Payload) TaskView) {
	t.Helper()
	b := setupReplica(t)
	p, err := NewProjector(t.Context(), ProjectorConfig{JetStream: b.srv.JS, Replica: b.replica})
	require.NoError(t, err)
	kv, err := b.srv.JS.KeyValue(t.Context(), events.BucketTasks)
	require.NoError(t, err)
	var last uint64
	return b.srv, func(key string, pl events.Payload) TaskView {
		t.Helper()
		ack := appendOne(t, b.srv, key, pl)
		out, err := b.replica.WaitSeq(t.Context(), ack.Seq)
		require.NoError(t, err)
		require.True(t, out.Accepted, "%s: %+v", key, out)
		last, err = p.project(t.Context(), last)
		require.NoError(t, err)
		require.Equal(t, ack.Seq, last)
		e, err := kv.Get(t.Context(), "t1")
		require.NoError(t, err)
		var v TaskView
		require.NoError(t, json.Unmarshal(e.Value(), &v))
		return v
	}
}

// TestWaitingViewsFollowTheOfferedTypes: a waiting task's view says when no
// node offers its execution type. Node events change that without touching
// the task, and the view must follow both ways.
func TestWaitingViewsFollowTheOfferedTypes(t *testing.T) {
	t.Parallel()
	srv, step := projectorSteps(t)
	appendOne(t, srv, "n1:reg", node("n1", "tcp://a:2375", map[string]int{"cpu": 1}))
	require.NotNil(t, step("t1:sub", submit("t1", "io", 3)).Error, "nothing offers io")
	require.Nil(t, step("n1:io", &events.NodeUpdated{NodeID: "n1", Slots: map[string]int{"cpu": 1, "io": 1}}).Error, "n1 offers io now")
	require.Nil(t, step("n1:up", &events.NodeUp{NodeID: "n1"}).Error)
	require.NotNil(t, step("n1:cpu", &events.NodeUpdated{NodeID: "n1", Slots: map[string]int{"cpu": 1}}).Error, "io gone again")
	require.Equal(t, TaskWaiting, step("n1:drain", &events.NodeAcceptanceChanged{NodeID: "n1"}).Status)
}

// TestSlotViewsFollowNodeNames: a running task's view names its slot after
// the node, and a registration renames every node.
func TestSlotViewsFollowNodeNames(t *testing.T) {
	t.Parallel()
	srv, step := projectorSteps(t)
	appendOne(t, srv, "n1:reg", node("n1", "tcp://b:2375", map[string]int{"cpu": 1}))
	appendOne(t, srv, "n1:up", &events.NodeUp{NodeID: "n1"})
	step("t1:sub", submit("t1", "cpu", 3))
	v := step("t1:res", reserve("t1", 1, "n1", "cpu-1"))
	require.NotNil(t, v.Slot)
	require.Equal(t, "n001d-s01-cpu", v.Slot.Name)
	v = step("n2:reg", node("n2", "tcp://a:2375", map[string]int{"cpu": 1}))
	require.NotNil(t, v.Slot)
	require.Equal(t, "n002d-s01-cpu", v.Slot.Name, "n1 sorts after n2 now")
}

// TestIncrementalViewsEqualFullViews folds random event sequences in random
// batches and, after each, writes only the views the projector marks
// changed: they must always equal every view rendered afresh. A view that
// depends on something its own events do not touch (a node's name in a
// task's slot, the execution types nodes offer) fails it.
func TestIncrementalViewsEqualFullViews(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(rt *rapid.T) {
		p := &Projector{}
		s := NewState()
		written := map[string]map[string]any{}
		write := func(views []view, prefix string) {
			for _, v := range views {
				if v.body == nil {
					delete(written, prefix+v.key)
					continue
				}
				written[prefix+v.key] = withoutSeq(rt, v.body)
			}
		}
		seq := uint64(0)
		for range rapid.IntRange(1, 60).Draw(rt, "batches") {
			var applied []Applied
			for range rapid.IntRange(1, 5).Draw(rt, "batch") {
				seq++
				env := envelope(rt, seq, genLikelyEvent(rt, s))
				applied = append(applied, Applied{Seq: seq, Type: env.Type, AggregateID: env.AggregateID, Outcome: s.Apply(env)})
			}
			tasks, nodes, offered := map[string]bool{}, map[string]bool{}, s.offeredTypes()
			p.dirty(s, applied, offered, tasks, nodes)
			p.offered = offered
			views, err := p.render(s, t0, tasks, nil)
			require.NoError(rt, err)
			write(views, "task/")
			views, err = p.render(s, t0, nil, nodes)
			require.NoError(rt, err)
			write(views, "node/")

			full := map[string]map[string]any{}
			for id := range s.Tasks {
				views, err := p.render(s, t0, map[string]bool{id: true}, nil)
				require.NoError(rt, err)
				full["task/"+id] = withoutSeq(rt, views[0].body)
			}
			for id := range s.Nodes {
				views, err := p.render(s, t0, nil, map[string]bool{id: true})
				require.NoError(rt, err)
				full["node/"+id] = withoutSeq(rt, views[0].body)
			}
			require.Equal(rt, full, written, "after event %d", seq)
		}
	})
}

// withoutSeq decodes a view without its view_seq.
func withoutSeq(t require.TestingT, body []byte) map[string]any {
	var m map[string]any
	require.NoError(t, json.Unmarshal(body, &m))
	delete(m, "view_seq")
	return m
}
