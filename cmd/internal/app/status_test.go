package app_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/internal/dockertest"
)

// raw sends a request with headers and returns status, headers and body.
func (b *broker) raw(t *testing.T, method, path string, body any, headers map[string]string) (int, http.Header, []byte) {
	t.Helper()
	var r io.Reader
	if body != nil {
		buf, err := json.Marshal(body)
		require.NoError(t, err)
		r = bytes.NewReader(buf)
	}
	req, err := http.NewRequestWithContext(t.Context(), method, b.base+path, r)
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, out
}

// TestStatusAndHealthEndToEnd goes through the status, list and health
// routes of a running broker on a real engine, checking codes, field sets
// and types.
func TestStatusAndHealthEndToEnd(t *testing.T) {
	t.Parallel()
	b, es := setup(t, 1)
	n := b.addNode(t, es[0], map[string]int{"cpu": 1})

	key := map[string]string{"X-Idempotency-Key": "tour-1", "X-Request-Id": "tour"}
	body := map[string]any{"name": "tour", "image": dockertest.Image, "cmd": "sleep 2", "execution_type": "cpu", "tags": map[string]any{"kind": "tour", "n": 1}}
	code, _, first := b.raw(t, http.MethodPost, "/tasks", body, key)
	require.Equal(t, http.StatusOK, code)
	code, hdr, again := b.raw(t, http.MethodPost, "/tasks", body, key)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "true", hdr.Get("Idempotent-Replayed"))
	require.JSONEq(t, string(first), string(again))
	var running task
	require.NoError(t, json.Unmarshal(first, &running))
	failing := b.submit(t, "fails", dockertest.Image, "exit 9", "cpu")
	b.waitStatus(t, running.UUID, "started")

	var pool struct {
		Nodes []struct {
			UUID   string           `json:"uuid"`
			Name   string           `json:"name"`
			Slots  []map[string]any `json:"slots"`
			Jobs   []map[string]any `json:"jobs"`
			Status string           `json:"status"`
		} `json:"nodes"`
		Tasks  map[string]int `json:"tasks"`
		Queues map[string]int `json:"queues"`
	}
	require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/status", nil, &pool))
	require.Len(t, pool.Nodes, 1)
	require.Equal(t, n, pool.Nodes[0].UUID)
	require.Equal(t, "n001d", pool.Nodes[0].Name)
	require.Len(t, pool.Nodes[0].Jobs, 1)
	require.Equal(t, running.UUID, pool.Nodes[0].Jobs[0]["uuid"])
	require.Equal(t, "n001d-s01-cpu", pool.Nodes[0].Slots[0]["name"])
	require.Equal(t, 1, pool.Queues["cpu"])

	var nodes []map[string]any
	require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/status/nodes", nil, &nodes))
	usage := nodes[0]["usage_per_execution_type"].([]any)[0].(map[string]any)
	require.Equal(t, map[string]any{"execution_type": "cpu", "usage_percent": 100.0}, usage)

	var tasks []map[string]any
	require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/status/tasks?tags[kind]=tour&tags[n]=1", nil, &tasks))
	require.Len(t, tasks, 1)
	for _, k := range []string{
		"uuid", "name", "image", "cmd", "status", "exit_code", "error", "try_count", "created_at", "started_at",
		"finished_at", "seconds_running", "tags", "runner_id", "storage_mounts", "slot", "execution_type",
	} {
		require.Contains(t, tasks[0], k, "the seed's status panel field %s", k)
	}
	require.Equal(t, map[string]any{"kind": "tour", "n": "1", "request_id": "tour"}, tasks[0]["tags"], "tag values are strings")

	var tags []string
	require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/status/tags", nil, &tags))
	require.Equal(t, []string{"kind", "n", "request_id"}, tags)
	var values []string
	require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/status/tag_values?tag_name=kind", nil, &values))
	require.Equal(t, []string{"tour"}, values)
	var statuses []string
	require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/status/task_statuses", nil, &statuses))
	require.Contains(t, statuses, "cancelled")

	var page struct {
		Tasks      []map[string]any `json:"tasks"`
		NextCursor *string          `json:"next_cursor"`
	}
	require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/tasks?limit=1", nil, &page))
	require.Len(t, page.Tasks, 1)
	require.Equal(t, failing.UUID, page.Tasks[0]["uuid"], "newest first")
	require.NotNil(t, page.NextCursor)
	require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/tasks?limit=1&cursor="+*page.NextCursor, nil, &page))
	require.Equal(t, running.UUID, page.Tasks[0]["uuid"])
	require.Nil(t, page.NextCursor)

	var health map[string]any
	require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/healthcheck", nil, &health))
	require.Equal(t, "OK", health["status"])
	var nodesHealth map[string]any
	require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/nodes/healthcheck", nil, &nodesHealth))
	require.Equal(t, map[string]any{"status": "WORKING", "failed_nodes": []any{}}, nodesHealth)

	require.Equal(t, "failed", b.waitStatus(t, failing.UUID, "failed").Status)
	var tasksHealth map[string]any
	require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/tasks/healthcheck", nil, &tasksHealth))
	require.Equal(t, map[string]any{"status": "FAILING", "failed_tasks_count": 1.0}, tasksHealth)
	require.Equal(t, http.StatusOK, b.post(t, http.MethodPut, "/tasks/"+failing.UUID+"/mark_as_error"))
	require.Equal(t, http.StatusOK, b.post(t, http.MethodDelete, "/tasks/errors"))
	require.Equal(t, http.StatusNotFound, b.post(t, http.MethodGet, "/tasks/"+failing.UUID))
	require.Equal(t, "completed", b.waitStatus(t, running.UUID, "completed").Status)

	var done task
	require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/tasks/"+running.UUID, nil, &done))
	require.NotNil(t, done.SecondsRunning)
	require.GreaterOrEqual(t, *done.SecondsRunning, 1)
	started, finished := parseTime(t, done.StartedAt), parseTime(t, done.FinishedAt)
	require.WithinDuration(t, started.Add(2*time.Second), finished, time.Second)
}
