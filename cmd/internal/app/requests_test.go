package app_test

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/cmd/internal/app"
	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/dockertest"
	"github.com/cbroker/broker/projections"
)

// post sends a request without a body and returns its status.
func (b *broker) post(t *testing.T, method, path string) int {
	t.Helper()
	return b.do(t, method, path, nil, nil)
}

func (b *broker) attempt(t *testing.T, id string) int {
	t.Helper()
	var n int
	b.app.Replica.Read(func(s *projections.State) { n = s.Tasks[id].Attempt })
	return n
}

// Requests that change running work, through REST, on a real engine.
func TestRequestsEndToEnd(t *testing.T) {
	t.Parallel()

	t.Run("KillRetriesAndCancelEndsForGood", func(t *testing.T) {
		t.Parallel()
		b, es := setup(t, 1)
		b.addNode(t, es[0], map[string]int{"cpu": 1})
		tk := b.submit(t, "killable", dockertest.Image, "sleep 60", "cpu")
		b.waitStatus(t, tk.UUID, "started")
		require.Equal(t, http.StatusOK, b.post(t, http.MethodPost, "/tasks/"+tk.UUID+"/kill_container"))
		// The kill ends attempt 1 (SIGKILL, 137) and the seed's retry rules
		// run it again.
		require.Eventually(t, func() bool { return b.attempt(t, tk.UUID) == 2 }, 30*time.Second, 50*time.Millisecond)
		retried := b.waitStatus(t, tk.UUID, "started")
		require.Equal(t, 1, retried.TryCount)
		require.Equal(t, new(137), retried.ExitCode, "the exit of the killed attempt")

		var cancelled task
		require.Equal(t, http.StatusOK, b.do(t, http.MethodPost, "/tasks/"+tk.UUID+"/cancel", nil, &cancelled))
		done := b.waitStatus(t, tk.UUID, "cancelled", "completed", "failed")
		require.Equal(t, "cancelled", done.Status)
		h := b.history(t, tk.UUID)
		require.Equal(t, 2, accepted(h, events.TypeTaskSlotReserved), "never retried after the cancel")
		require.Equal(t, 1, accepted(h, events.TypeTaskCancelled))
		require.Equal(t, http.StatusBadRequest, b.post(t, http.MethodPost, "/tasks/"+tk.UUID+"/kill_container"), "not running: the seed's 400")
		require.Eventually(t, func() bool { return len(dockertest.TaskContainers(t, es[0], tk.UUID)) == 0 }, 10*time.Second, 50*time.Millisecond)
	})

	t.Run("AWaitingTaskIsCancelledAtOnceAndNeverRuns", func(t *testing.T) {
		t.Parallel()
		b, es := setup(t, 1)
		b.addNode(t, es[0], map[string]int{"cpu": 1})
		blocker := b.submit(t, "blocker", dockertest.Image, "sleep 2", "cpu")
		waiting := b.submit(t, "waiting", dockertest.Image, "echo ran", "cpu")
		b.waitStatus(t, blocker.UUID, "started")
		require.Equal(t, http.StatusOK, b.post(t, http.MethodPost, "/tasks/"+waiting.UUID+"/cancel"))
		require.Equal(t, "cancelled", b.waitStatus(t, waiting.UUID, "cancelled").Status)
		require.Equal(t, "completed", b.waitStatus(t, blocker.UUID, "completed").Status)
		require.Zero(t, accepted(b.history(t, waiting.UUID), events.TypeTaskSlotReserved))
	})

	t.Run("FailedTaskMarkedAsErrorThenRetriedByForce", func(t *testing.T) {
		t.Parallel()
		b, es := setup(t, 1)
		b.addNode(t, es[0], map[string]int{"cpu": 1})
		tk := b.submit(t, "flaky", dockertest.Image, "exit 5", "cpu")
		require.Equal(t, "failed", b.waitStatus(t, tk.UUID, "failed").Status)
		require.Equal(t, http.StatusOK, b.post(t, http.MethodPut, "/tasks/"+tk.UUID+"/mark_as_error"))
		require.Equal(t, "error", b.waitStatus(t, tk.UUID, "error").Status)
		require.Equal(t, http.StatusOK, b.post(t, http.MethodPost, "/status/retry_task/"+tk.UUID))
		again := b.waitStatus(t, tk.UUID, "failed")
		require.Equal(t, 3, again.TryCount)
		require.Equal(t, 8, accepted(b.history(t, tk.UUID), events.TypeTaskSlotReserved), "4 more attempts after the forced retry")
	})

	t.Run("FailedTasksTimeOutToError", func(t *testing.T) {
		t.Parallel()
		b, es := setup(t, 1, func(c *app.Config) { c.FailedTimeout = time.Second })
		b.addNode(t, es[0], map[string]int{"cpu": 1})
		tk := b.submit(t, "never starts", "cb-test/missing:v1", "true", "cpu")
		done := b.waitStatus(t, tk.UUID, "error")
		require.Contains(t, *done.Error, "automatically marked as error")
		require.Contains(t, *done.Error, "cb-test/missing:v1", "the start error is kept")
	})

	t.Run("KillContainersOfANode", func(t *testing.T) {
		t.Parallel()
		b, es := setup(t, 1)
		n := b.addNode(t, es[0], map[string]int{"cpu": 2})
		one := b.submit(t, "one", dockertest.Image, "sleep 60", "cpu")
		two := b.submit(t, "two", dockertest.Image, "sleep 60", "cpu")
		b.waitStatus(t, one.UUID, "started")
		b.waitStatus(t, two.UUID, "started")
		require.Equal(t, http.StatusOK, b.post(t, http.MethodPost, "/nodes/"+n+"/kill_containers"))
		for _, id := range []string{one.UUID, two.UUID} {
			require.Eventually(t, func() bool { return b.attempt(t, id) == 2 }, 30*time.Second, 50*time.Millisecond)
		}
		for _, id := range []string{one.UUID, two.UUID} {
			require.Equal(t, http.StatusOK, b.post(t, http.MethodPost, "/tasks/"+id+"/cancel"))
			b.waitStatus(t, id, "cancelled")
		}
	})

	t.Run("DrainThenDelete", func(t *testing.T) {
		t.Parallel()
		b, es := setup(t, 2)
		nodes := []string{b.addNode(t, es[0], map[string]int{"cpu": 1}), b.addNode(t, es[1], map[string]int{"cpu": 1})}
		running := b.submit(t, "first", dockertest.Image, "sleep 2", "cpu")
		b.waitStatus(t, running.UUID, "started")
		n1 := b.nodeOf(t, running.UUID) // the node whose name sorts first
		n2 := nodes[0]
		if n2 == n1 {
			n2 = nodes[1]
		}
		require.Equal(t, http.StatusOK, b.post(t, http.MethodPost, "/nodes/"+n1+"/reject_new_tasks"))
		require.Equal(t, http.StatusNotAcceptable, b.post(t, http.MethodDelete, "/nodes/"+n1), "busy")

		next := b.submit(t, "elsewhere", dockertest.Image, "sleep 1", "cpu")
		b.waitStatus(t, next.UUID, "started", "completed")
		require.Equal(t, n2, b.nodeOf(t, next.UUID), "a draining node gets no new work")
		require.Equal(t, "completed", b.waitStatus(t, running.UUID, "completed").Status, "its running task finishes")
		var drained map[string]any
		require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/nodes/"+n1, nil, &drained))
		require.Equal(t, false, drained["accept_new_tasks"])
		require.Equal(t, http.StatusOK, b.post(t, http.MethodPost, "/nodes/"+n1+"/accept_new_tasks"))
		require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/nodes/"+n1, nil, &drained))
		require.Equal(t, true, drained["accept_new_tasks"])
		require.Equal(t, http.StatusOK, b.post(t, http.MethodPost, "/nodes/"+n1+"/reject_new_tasks"))
		require.Equal(t, http.StatusOK, b.post(t, http.MethodDelete, "/nodes/"+n1))
		require.Equal(t, http.StatusNotFound, b.post(t, http.MethodGet, "/nodes/"+n1))
	})

	t.Run("SlotsScaleWhileTasksRun", func(t *testing.T) {
		t.Parallel()
		b, es := setup(t, 1)
		n := b.addNode(t, es[0], map[string]int{"cpu": 1})
		first := b.submit(t, "first", dockertest.Image, "sleep 3", "cpu")
		second := b.submit(t, "second", dockertest.Image, "sleep 3", "cpu")
		b.waitStatus(t, first.UUID, "started")
		require.Equal(t, http.StatusOK, b.do(t, http.MethodPatch, "/nodes/"+n, map[string]any{"slots_execution_types": map[string]int{"cpu": 2}}, nil))
		b.waitStatus(t, second.UUID, "started") // the new slot is used at once
		require.Equal(t, http.StatusOK, b.do(t, http.MethodPut, "/nodes/"+n, map[string]any{"slots_execution_types": map[string]int{"cpu": 0}}, nil))
		var nodes []projections.NodeView
		require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/status/nodes", nil, &nodes))
		require.Len(t, nodes[0].Slots, 2, "busy slots stay until released")
		require.True(t, nodes[0].Slots[0].Retiring)
		b.waitStatus(t, first.UUID, "completed")
		b.waitStatus(t, second.UUID, "completed")
		require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/status/nodes", nil, &nodes))
		require.Empty(t, nodes[0].Slots, "released surplus slots are gone")
	})

	t.Run("StorageMounts", func(t *testing.T) {
		t.Parallel()
		host := t.TempDir()
		b, es := setup(t, 1, func(c *app.Config) { c.Mounts = map[string]string{"shared": host} })
		b.addNode(t, es[0], map[string]int{"cpu": 1})
		var tk task
		code := b.do(t, http.MethodPost, "/tasks", map[string]any{
			"name": "writer", "image": dockertest.Image, "cmd": "echo written > /data/out.txt", "execution_type": "cpu",
			"storage_mounts": map[string]string{"shared": "/data"},
		}, &tk)
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, "completed", b.waitStatus(t, tk.UUID, "completed", "failed").Status)
		out, err := os.ReadFile(filepath.Join(host, "out.txt"))
		require.NoError(t, err)
		require.Equal(t, "written\n", string(out))

		// A node's own path for the mount wins over the broker-wide one.
		own := t.TempDir()
		b2, es2 := setup(t, 1, func(c *app.Config) { c.Mounts = map[string]string{"shared": host} })
		b2.addNodeWith(t, map[string]any{
			"hostname": es2[0].Hostname, "slots_execution_types": map[string]int{"cpu": 1},
			"storage_mounts": map[string]string{"shared": own},
		})
		require.Equal(t, http.StatusOK, b2.do(t, http.MethodPost, "/tasks", map[string]any{
			"name": "writer2", "image": dockertest.Image, "cmd": "echo node path > /data/own.txt", "execution_type": "cpu",
			"storage_mounts": map[string]string{"shared": "/data"},
		}, &tk))
		require.Equal(t, "completed", b2.waitStatus(t, tk.UUID, "completed", "failed").Status)
		out, err = os.ReadFile(filepath.Join(own, "own.txt"))
		require.NoError(t, err)
		require.Equal(t, "node path\n", string(out))
		require.NoFileExists(t, filepath.Join(host, "own.txt"))

		var errs map[string][]string
		code = b.do(t, http.MethodPost, "/tasks", map[string]any{
			"name": "escape", "image": dockertest.Image, "cmd": "true", "execution_type": "cpu",
			"storage_mounts": map[string]string{"/etc": "/data"},
		}, &errs)
		require.Equal(t, http.StatusUnprocessableEntity, code, "a task names configured mounts, never host paths")
		require.Contains(t, errs["storage_mounts"][0], "Storage mounts are invalid")
	})
}

// nodeOf returns the node the task's current attempt runs or ran on.
func (b *broker) nodeOf(t *testing.T, id string) string {
	t.Helper()
	var n string
	b.app.Replica.Read(func(s *projections.State) { n = s.Tasks[id].NodeID })
	return n
}
