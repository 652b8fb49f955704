package gateway

import (
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
)

// TestStatusAt checks that /status, /status/nodes and /status/tasks with
// ?at= answer exactly what they answered live at that point of the log, by
// sequence and by time, with and without a snapshot in between.
func TestStatusAt(t *testing.T) {
	t.Parallel()
	var snaps *projections.Snapshots
	b := setup(t, func(c *Config) {
		var err error
		snaps, err = projections.OpenSnapshots(t.Context(), c.JetStream, nil)
		require.NoError(t, err)
		c.Snapshots = snaps
	})
	get := func(path string) []byte {
		t.Helper()
		code, body := b.do(t, http.MethodGet, path, "")
		require.Equal(t, http.StatusOK, code, "%s: %s", path, body)
		return body
	}
	b.propose(t, &events.NodeRegistered{NodeID: "n1", Hostname: "tcp://h:1", Slots: map[string]int{"cpu": 1}})
	b.propose(t, &events.NodeUp{NodeID: "n1"})
	first := b.submit(t, task("first", "cpu", map[string]string{"k": "v"}))
	b.submit(t, task("second", "cpu", nil))
	b.propose(t, &events.SlotReserved{TaskID: first.UUID, Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "first-a1"})

	type then struct{ pool, nodes, tasks []byte }
	var past []then
	var marks []Pool
	record := func() {
		t.Helper()
		p := then{pool: get("/status"), nodes: get("/status/nodes"), tasks: get("/status/tasks")}
		var m Pool
		require.NoError(t, json.Unmarshal(p.pool, &m))
		require.False(t, m.At.IsZero())
		past, marks = append(past, p), append(marks, m)
	}
	record()
	time.Sleep(5 * time.Millisecond) // later events are stored strictly later

	// A snapshot between the two points, then more history.
	st, err := projections.FoldTo(t.Context(), b.srv.JS, nil, projections.Target{})
	require.NoError(t, err)
	_, err = snaps.SaveState(t.Context(), st)
	require.NoError(t, err)
	b.propose(t, &events.StartFailed{TaskID: first.UUID, Attempt: 1, NodeID: "n1", Error: "no such image"})
	b.propose(t, &events.TaskFailed{TaskID: first.UUID, Attempt: 1, Error: "no such image"})
	b.submit(t, task("third", "gpu", nil))
	b.propose(t, &events.NodeDown{NodeID: "n1", Error: "gone"})
	record()
	time.Sleep(5 * time.Millisecond)
	b.propose(t, &events.NodeRemoved{NodeID: "n1"})
	b.submit(t, task("fourth", "cpu", nil))

	for i, m := range marks {
		for name, at := range map[string]string{
			"seq":  jsonUint(m.Seq),
			"time": url.QueryEscape(m.At.Format(time.RFC3339Nano)),
		} {
			require.JSONEq(t, string(past[i].pool), string(get("/status?at="+at)), "point %d by %s", i, name)
			require.JSONEq(t, string(past[i].nodes), string(get("/status/nodes?at="+at)), "point %d by %s", i, name)
			require.JSONEq(t, string(past[i].tasks), string(get("/status/tasks?at="+at)), "point %d by %s", i, name)
		}
	}
	// The live state differs from both.
	var now Pool
	require.NoError(t, json.Unmarshal(get("/status"), &now))
	require.Empty(t, now.Nodes)
	require.Equal(t, 3, now.Tasks[projections.TaskWaiting])
	require.JSONEq(t, string(get("/status")), string(get("/status?at="+jsonUint(now.Seq+10))), "a point beyond the log is the live state")

	for _, bad := range []string{"0", "yesterday", "-3", "2026-13-01T00:00:00Z"} {
		code, body := b.do(t, http.MethodGet, "/status?at="+url.QueryEscape(bad), "")
		require.Equal(t, http.StatusBadRequest, code, bad)
		require.Contains(t, string(body), `"error"`)
		require.Contains(t, string(body), "invalid at")
	}
}

func jsonUint(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}
