package projections

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

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
	appendNode(t, srv)
	appendLifecycles(t, srv, 0, 3)
	mid, err := FoldTo(t.Context(), srv.JS, nil, Target{})
	require.NoError(t, err)
	appendOne(t, srv, "t0:del", &events.TaskDeleted{TaskID: "t0"})
	appendLifecycles(t, srv, 3, 2)
	head, err := FoldTo(t.Context(), srv.JS, nil, Target{})
	require.NoError(t, err)

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
