package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/cmd/internal/app"
	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/benchnoop"
	"github.com/cbroker/broker/services/runtime"
)

// readBucket returns every key and value of a KV bucket.
func readBucket(t *testing.T, js jetstream.JetStream, bucket string) map[string]string {
	t.Helper()
	kv, err := js.KeyValue(t.Context(), bucket)
	require.NoError(t, err)
	lister, err := kv.ListKeys(t.Context())
	require.NoError(t, err)
	out := map[string]string{}
	for k := range lister.Keys() {
		e, err := kv.Get(t.Context(), k)
		require.NoError(t, err)
		out[k] = string(e.Value())
	}
	return out
}

// withoutViewSeq splits a stored view into its fields and the sequence it
// was rendered at (which differs between a live view, written when its
// entity last changed, and a rebuilt one).
func withoutViewSeq(t *testing.T, raw string) (map[string]any, uint64) {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(raw), &m))
	seq, ok := m["view_seq"].(float64)
	require.True(t, ok, "view without view_seq: %s", raw)
	delete(m, "view_seq")
	return m, uint64(seq)
}

// quiesce waits until the log stops growing and the projector has written
// it all.
func quiesce(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	stream, err := js.Stream(t.Context(), events.StreamName)
	require.NoError(t, err)
	meta, err := js.KeyValue(t.Context(), events.BucketMeta)
	require.NoError(t, err)
	var last uint64
	stable := 0
	require.Eventually(t, func() bool {
		info, err := stream.Info(t.Context())
		require.NoError(t, err)
		e, err := meta.Get(t.Context(), events.KeyProjectorSeq)
		if err != nil {
			return false
		}
		written, err := strconv.ParseUint(string(e.Value()), 10, 64)
		require.NoError(t, err)
		if info.State.LastSeq == last && written == last {
			stable++
		} else {
			stable = 0
		}
		last = info.State.LastSeq
		return stable >= 10
	}, 60*time.Second, 100*time.Millisecond)
	return last
}

// TestRebuildEqualsLive runs a random workload through the REST API (no-op
// containers exiting with random codes, retries, cancels, errors, deletes,
// node changes), then rebuilds the views from the log with the broker
// stopped: every view must be what the live projector wrote, and nothing
// else may be left in the buckets.
func TestRebuildEqualsLive(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	t.Logf("workload seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	dir := t.TempDir()
	b := startBroker(t, dir, func(c *app.Config) {
		c.Runtimes = runtime.Set{benchnoop.Runtime{}}
		c.SnapshotEvery = 150 // a snapshot or two along the way
	})
	var nodes []string
	for i := range 3 {
		id, err := b.app.RegisterNode(t.Context(), fmt.Sprintf("%s://n%d", benchnoop.Scheme, i), map[string]int{"cpu": 1 + i, "io": 1})
		require.NoError(t, err)
		nodes = append(nodes, id)
	}
	var tasks []string
	pick := func(ids []string) string { return ids[rng.IntN(len(ids))] }
	for range 200 {
		switch op := rng.IntN(20); {
		case op < 9 || len(tasks) == 0:
			var tk task
			code := b.do(t, http.MethodPost, "/tasks", map[string]any{
				"name": "t", "image": "none", "cmd": fmt.Sprintf("exit %d", []int{0, 0, 0, 1, 2}[rng.IntN(5)]),
				"execution_type": []string{"cpu", "io", "gpu"}[rng.IntN(3)], "max_retries": rng.IntN(3),
				"tags": map[string]string{"batch": strconv.Itoa(rng.IntN(3))},
			}, &tk)
			require.Equal(t, http.StatusOK, code)
			tasks = append(tasks, tk.UUID)
		case op == 9:
			b.do(t, http.MethodPost, "/tasks/"+pick(tasks)+"/cancel", nil, nil)
		case op == 10:
			b.do(t, http.MethodPut, "/tasks/"+pick(tasks)+"/mark_as_error", nil, nil)
		case op == 11:
			b.do(t, http.MethodPost, "/status/retry_task/"+pick(tasks), nil, nil)
		case op == 12:
			b.do(t, http.MethodDelete, "/tasks/errors", nil, nil)
		case op == 13:
			b.do(t, http.MethodPatch, "/nodes/"+pick(nodes), map[string]any{"slots_execution_types": map[string]int{"cpu": rng.IntN(3), "io": rng.IntN(2)}}, nil)
		case op == 14:
			b.do(t, http.MethodPost, "/nodes/"+pick(nodes)+"/"+[]string{"accept_new_tasks", "reject_new_tasks"}[rng.IntN(2)], nil, nil)
		case op == 15:
			b.do(t, http.MethodPost, "/nodes/"+pick(nodes)+"/kill_containers", nil, nil)
		default:
			b.do(t, http.MethodGet, "/tasks/"+pick(tasks), nil, nil)
		}
	}
	last := quiesce(t, b.app.JetStream())
	live := map[string]map[string]string{}
	for _, bucket := range []string{events.BucketTasks, events.BucketNodes} {
		live[bucket] = readBucket(t, b.app.JetStream(), bucket)
	}
	require.NotEmpty(t, live[events.BucketTasks])
	require.Len(t, live[events.BucketNodes], 3)
	b.stop()

	store, err := app.OpenStore(t.Context(), app.Config{DataDir: dir, NATSListen: "none"})
	require.NoError(t, err)
	defer store.Close()
	js := store.JetStream()
	// Something the log does not explain, to be dropped.
	kv, err := js.KeyValue(t.Context(), events.BucketTasks)
	require.NoError(t, err)
	_, err = kv.Put(t.Context(), "stray", []byte(`{}`))
	require.NoError(t, err)

	res, err := projections.Rebuild(context.Background(), js, store.Snapshots(), nil, time.Now())
	require.NoError(t, err)
	t.Logf("rebuilt %d tasks and %d nodes at sequence %d in %v", res.Tasks, res.Nodes, res.Seq, res.Took)
	require.Equal(t, last, res.Seq)
	for _, bucket := range []string{events.BucketTasks, events.BucketNodes} {
		rebuilt := readBucket(t, js, bucket)
		require.Len(t, rebuilt, len(live[bucket]), bucket)
		for k, v := range live[bucket] {
			require.Contains(t, rebuilt, k)
			want, wantSeq := withoutViewSeq(t, v)
			got, gotSeq := withoutViewSeq(t, rebuilt[k])
			require.Equal(t, want, got, "%s/%s", bucket, k)
			require.LessOrEqual(t, wantSeq, gotSeq, "%s/%s", bucket, k)
			require.Equal(t, last, gotSeq, "a rebuilt view reflects the whole log")
		}
	}
	meta, err := js.KeyValue(t.Context(), events.BucketMeta)
	require.NoError(t, err)
	e, err := meta.Get(t.Context(), events.KeyProjectorSeq)
	require.NoError(t, err)
	require.Equal(t, strconv.FormatUint(last, 10), string(e.Value()))
}
