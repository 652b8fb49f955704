package gateway

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
)

func (b *bundle) submit(t *testing.T, body string) taskJSON {
	t.Helper()
	code, out := b.do(t, http.MethodPost, "/tasks", body)
	require.Equal(t, http.StatusOK, code, string(out))
	var tk taskJSON
	require.NoError(t, json.Unmarshal(out, &tk))
	return tk
}

func task(name, typ string, tags map[string]string) string {
	b, _ := json.Marshal(map[string]any{"name": name, "image": "busybox", "cmd": "true", "execution_type": typ, "tags": tags})
	return string(b)
}

// propose appends an event as another actor would (the scheduler, a runner).
func (b *bundle) propose(t *testing.T, p events.Payload) {
	t.Helper()
	env, err := events.New(fmt.Sprintf("test:%d", time.Now().UnixNano()), p, events.Meta{})
	require.NoError(t, err)
	ack, err := events.Append(t.Context(), b.srv.JS, env)
	require.NoError(t, err)
	out, err := b.replica.WaitSeq(t.Context(), ack.Seq)
	require.NoError(t, err)
	require.True(t, out.Accepted, out.Reason)
}

func TestTaskRequestsAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tk := b.submit(t, task("job", "cpu", nil))

	code, body := b.do(t, http.MethodPut, "/tasks/"+tk.UUID+"/mark_as_error", "")
	require.Equal(t, http.StatusUnprocessableEntity, code)
	require.JSONEq(t, `{"message":"Task must have failed status to be marked as error"}`, string(body))

	code, body = b.do(t, http.MethodPost, "/tasks/"+tk.UUID+"/kill_container", "")
	require.Equal(t, http.StatusBadRequest, code)
	require.JSONEq(t, fmt.Sprintf(`{"message":"Task job %s (waiting runner_id: ) request_id=req-1 is not running"}`, tk.UUID), string(body))

	code, body = b.do(t, http.MethodPost, "/status/retry_task/"+tk.UUID, "")
	require.Equal(t, http.StatusConflict, code, "force retry only from an ended task")
	require.Contains(t, string(body), "only a task that has ended can be retried")

	code, body = b.do(t, http.MethodPost, "/tasks/"+tk.UUID+"/cancel", "")
	require.Equal(t, http.StatusOK, code, string(body))
	code, _ = b.do(t, http.MethodPost, "/tasks/"+tk.UUID+"/cancel", "")
	require.Equal(t, http.StatusOK, code, "a repeated cancel is fine")
	b.propose(t, &events.TaskCancelled{TaskID: tk.UUID})
	code, body = b.do(t, http.MethodGet, "/tasks/"+tk.UUID, "")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, string(body), `"status":"cancelled"`)
	code, body = b.do(t, http.MethodPost, "/tasks/"+tk.UUID+"/cancel", "")
	require.Equal(t, http.StatusConflict, code, "an ended task cannot be cancelled")
	require.Contains(t, string(body), "only a task that has not ended")

	code, _ = b.do(t, http.MethodPost, "/status/retry_task/"+tk.UUID, "")
	require.Equal(t, http.StatusOK, code, "a cancelled task can be retried")
	b.replica.Read(func(s *projections.State) { require.Equal(t, projections.TaskRetry, s.Tasks[tk.UUID].Status) })

	for _, path := range []string{"/tasks/nope/mark_as_error", "/tasks/nope/kill_container", "/tasks/nope/cancel", "/status/retry_task/nope"} {
		method := http.MethodPost
		if path == "/tasks/nope/mark_as_error" {
			method = http.MethodPut
		}
		code, _ := b.do(t, method, path, "")
		require.Equal(t, http.StatusNotFound, code, path)
	}
}

func TestMarkAsErrorAndDeleteErrors(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.propose(t, &events.NodeRegistered{NodeID: "n1", Hostname: "tcp://h:1", Slots: map[string]int{"cpu": 2}})
	b.propose(t, &events.NodeUp{NodeID: "n1"})
	failed := b.submit(t, task("fails", "cpu", nil))
	kept := b.submit(t, task("waits", "cpu", nil))
	for _, p := range []events.Payload{
		&events.SlotReserved{TaskID: failed.UUID, Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "c"},
		&events.StartFailed{TaskID: failed.UUID, Attempt: 1, NodeID: "n1", Error: "no such image"},
		&events.TaskFailed{TaskID: failed.UUID, Attempt: 1},
	} {
		b.propose(t, p)
	}
	code, body := b.do(t, http.MethodGet, "/tasks/healthcheck", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"status":"FAILING","failed_tasks_count":1}`, string(body))

	code, _ = b.do(t, http.MethodPut, "/tasks/"+failed.UUID+"/mark_as_error", "")
	require.Equal(t, http.StatusOK, code)
	code, body = b.do(t, http.MethodGet, "/tasks/healthcheck", "")
	require.Equal(t, http.StatusOK, code)
	require.JSONEq(t, `{"status":"WORKING","failed_tasks_count":0}`, string(body))

	code, _ = b.do(t, http.MethodDelete, "/tasks/errors", "")
	require.Equal(t, http.StatusOK, code)
	code, _ = b.do(t, http.MethodGet, "/tasks/"+failed.UUID, "")
	require.Equal(t, http.StatusNotFound, code, "error tasks are deleted")
	code, _ = b.do(t, http.MethodGet, "/tasks/"+kept.UUID, "")
	require.Equal(t, http.StatusOK, code, "other tasks stay")
}

func TestNodeRequestsAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var n nodeJSON
	_, body := b.do(t, http.MethodPost, "/nodes", `{"hostname":"tcp://10.0.0.1:2375","slots_execution_types":{"cpu":2}}`)
	require.NoError(t, json.Unmarshal(body, &n))

	code, body := b.do(t, http.MethodGet, "/nodes/healthcheck", "")
	require.Equal(t, http.StatusOK, code)
	var hc struct {
		Status      string           `json:"status"`
		FailedNodes []map[string]any `json:"failed_nodes"`
	}
	require.NoError(t, json.Unmarshal(body, &hc))
	require.Equal(t, "FAILING", hc.Status, "a node never probed is unavailable")
	require.Len(t, hc.FailedNodes, 1)
	require.Equal(t, []string{"created_at", "hostname", "last_error", "name", "status", "updated_at", "uuid"}, keys(t, mustJSON(t, hc.FailedNodes[0])))

	for _, method := range []string{http.MethodPatch, http.MethodPut} {
		code, body = b.do(t, method, "/nodes/"+n.UUID, `{"node":{"hostname":"ignored","slots_execution_types":{"cpu":"1","io":3}}}`)
		require.Equal(t, http.StatusOK, code, string(body))
		var got nodeJSON
		require.NoError(t, json.Unmarshal(body, &got))
		require.Equal(t, map[string]int{"cpu": 1, "io": 3}, got.SlotsExecutionTypes)
		require.Equal(t, "tcp://10.0.0.1:2375", got.Hostname, "hostname is ignored")
	}
	code, body = b.do(t, http.MethodPatch, "/nodes/"+n.UUID, `{"slots_execution_types":{"CPU":1}}`)
	require.Equal(t, http.StatusUnprocessableEntity, code)
	require.JSONEq(t, `{"slots_execution_types":["only allows lowercase letters, numbers and hyphen symbol"]}`, string(body))

	code, _ = b.do(t, http.MethodPost, "/nodes/"+n.UUID+"/reject_new_tasks", "")
	require.Equal(t, http.StatusOK, code)
	_, body = b.do(t, http.MethodGet, "/nodes/"+n.UUID, "")
	require.Contains(t, string(body), `"accept_new_tasks":false`)
	code, _ = b.do(t, http.MethodPost, "/nodes/"+n.UUID+"/accept_new_tasks", "")
	require.Equal(t, http.StatusOK, code)
	_, body = b.do(t, http.MethodGet, "/nodes/"+n.UUID, "")
	require.Contains(t, string(body), `"accept_new_tasks":true`)
	code, _ = b.do(t, http.MethodPost, "/nodes/"+n.UUID+"/kill_containers", "")
	require.Equal(t, http.StatusOK, code)

	code, _ = b.do(t, http.MethodDelete, "/nodes/"+n.UUID, "")
	require.Equal(t, http.StatusOK, code)
	code, _ = b.do(t, http.MethodGet, "/nodes/"+n.UUID, "")
	require.Equal(t, http.StatusNotFound, code)
	code, _ = b.do(t, http.MethodDelete, "/nodes/"+n.UUID, "")
	require.Equal(t, http.StatusNotFound, code)
}

func TestDeleteABusyNodeIs406(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.propose(t, &events.NodeRegistered{NodeID: "n1", Hostname: "tcp://h:1", Slots: map[string]int{"cpu": 1}})
	b.propose(t, &events.NodeUp{NodeID: "n1"})
	tk := b.submit(t, task("busy", "cpu", nil))
	b.propose(t, &events.SlotReserved{TaskID: tk.UUID, Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "c"})
	code, body := b.do(t, http.MethodDelete, "/nodes/n1", "")
	require.Equal(t, http.StatusNotAcceptable, code)
	require.Contains(t, string(body), "busy slot cpu-1")
	code, _ = b.do(t, http.MethodGet, "/nodes/n1", "")
	require.Equal(t, http.StatusOK, code, "nothing changed")
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}

func TestStatusAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.propose(t, &events.NodeRegistered{NodeID: "n1", Hostname: "tcp://h:1", Slots: map[string]int{"cpu": 1}})
	b.propose(t, &events.NodeUp{NodeID: "n1"})
	video := b.submit(t, task("v", "cpu", map[string]string{"type": "video", "code": "a"}))
	b.submit(t, task("w", "cpu", map[string]string{"type": "video", "code": "b"}))
	audio := b.submit(t, task("a", "gpu", map[string]string{"type": "audio"}))
	b.propose(t, &events.SlotReserved{TaskID: video.UUID, Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "v-a1"})

	get := func(path string, out any) {
		t.Helper()
		code, body := b.do(t, http.MethodGet, path, "")
		require.Equal(t, http.StatusOK, code, "%s: %s", path, body)
		require.NoError(t, json.Unmarshal(body, out), string(body))
	}
	var names []string
	get("/status/tags", &names)
	require.Equal(t, []string{"code", "request_id", "type"}, names)
	var values []string
	get("/status/tag_values?tag_name=type", &values)
	require.Equal(t, []string{"audio", "video"}, values)
	code, _ := b.do(t, http.MethodGet, "/status/tag_values?tag_name=nope", "")
	require.Equal(t, http.StatusNotFound, code)
	var statuses []string
	get("/status/task_statuses", &statuses)
	require.Equal(t, []string{"waiting", "starting", "started", "retry", "failed", "completed", "error", "cancelled"}, statuses)

	var list []projections.TaskView
	get("/status/tasks?tags[type]=video&tags[code]=b", &list)
	require.Len(t, list, 1)
	require.Equal(t, "w", list[0].Name)
	get("/status/tasks?status=starting", &list)
	require.Len(t, list, 1)
	require.Equal(t, video.UUID, list[0].UUID)
	require.Equal(t, "n001d-s01-cpu", list[0].Slot.Name)
	get("/status/tasks?limit=2", &list)
	require.Len(t, list, 2)
	require.Equal(t, audio.UUID, list[0].UUID, "newest first")
	get("/status/tasks?limit=0", &list)
	require.Len(t, list, 3, "0 means no limit, as the seed")
	code, _ = b.do(t, http.MethodGet, "/status/tasks?status=bogus", "")
	require.Equal(t, http.StatusBadRequest, code)

	_, body := b.do(t, http.MethodGet, "/tasks/"+audio.UUID, "")
	require.Contains(t, string(body), `no node offers execution type \"gpu\"`, "a task nobody can run says so")

	var p Pool
	get("/status", &p)
	require.Len(t, p.Nodes, 1)
	require.Len(t, p.Nodes[0].Jobs, 1)
	require.Equal(t, video.UUID, p.Nodes[0].Jobs[0].UUID)
	require.Equal(t, 2, p.Tasks[projections.TaskWaiting])
	require.Equal(t, map[string]int{"cpu": 1, "gpu": 1}, p.Queues)

	var nodes []projections.NodeView
	get("/status/nodes", &nodes)
	require.Equal(t, []projections.TypeUsage{{ExecutionType: "cpu", UsagePercent: 100}}, nodes[0].UsagePerExecutionType)

	var h health
	get("/healthcheck", &h)
	require.Equal(t, "OK", h.Status)
	require.True(t, h.NATS.Connected)
	require.Equal(t, h.Events.LastSeq, h.Events.AppliedSeq)
	require.Equal(t, 1, h.Nodes)
	require.Equal(t, 2, h.PendingTasks)
}

func TestTaskListPagination(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var ids []string
	for i := range 7 {
		ids = append(ids, b.submit(t, task(fmt.Sprint("t", i), "cpu", map[string]string{"batch": "x"})).UUID)
	}
	var got []string
	cursor := ""
	for pages := 0; ; pages++ {
		require.Less(t, pages, 5)
		code, body := b.do(t, http.MethodGet, "/tasks?limit=3&tags[batch]=x"+cursor, "")
		require.Equal(t, http.StatusOK, code)
		var page tasksPage
		require.NoError(t, json.Unmarshal(body, &page))
		for _, v := range page.Tasks {
			got = append(got, v.UUID)
		}
		if page.NextCursor == nil {
			break
		}
		b.submit(t, task("late", "cpu", map[string]string{"batch": "x"})) // does not shift the next page
		cursor = "&cursor=" + *page.NextCursor
	}
	for i, j := 0, len(ids)-1; i < j; i, j = i+1, j-1 {
		ids[i], ids[j] = ids[j], ids[i]
	}
	require.Equal(t, ids, got, "every task once, newest first")
	code, _ := b.do(t, http.MethodGet, "/tasks?cursor=abc", "")
	require.Equal(t, http.StatusBadRequest, code)
}

func TestIdempotencyKey(t *testing.T) {
	t.Parallel()
	b := setup(t)
	key := map[string]string{HeaderIdempotencyKey: "order-42"}
	body := task("once", "cpu", nil)
	first, out1 := b.doWith(t, http.MethodPost, "/tasks", body, key)
	require.Equal(t, http.StatusOK, first.StatusCode)
	again, out2 := b.doWith(t, http.MethodPost, "/tasks", body, key)
	require.Equal(t, http.StatusOK, again.StatusCode)
	require.Equal(t, "true", again.Header.Get("Idempotent-Replayed"))
	require.JSONEq(t, string(out1), string(out2), "the first answer is replayed")
	b.replica.Read(func(s *projections.State) { require.Len(t, s.Tasks, 1, "one task for one key") })

	resp, _ := b.doWith(t, http.MethodPost, "/nodes", `{"hostname":"tcp://x:1","slots_execution_types":{"cpu":1}}`, key)
	require.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode, "the key belongs to another route")

	// A validation error is kept and replayed too (the seed locked the key).
	bad := map[string]string{HeaderIdempotencyKey: "bad-1"}
	resp, _ = b.doWith(t, http.MethodPost, "/tasks", `{}`, bad)
	require.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode)
	resp, _ = b.doWith(t, http.MethodPost, "/tasks", `{}`, bad)
	require.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode)
	require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))

	// Concurrent duplicates: one creates the task, the others get the same
	// answer or a 409, never a second task.
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		codes = map[int]int{}
	)
	conc := map[string]string{HeaderIdempotencyKey: "burst"}
	for range 8 {
		wg.Go(func() {
			resp, _ := b.doWith(t, http.MethodPost, "/tasks", task("burst", "cpu", nil), conc)
			mu.Lock()
			codes[resp.StatusCode]++
			mu.Unlock()
		})
	}
	wg.Wait()
	require.Subset(t, []int{http.StatusOK, http.StatusConflict}, keysOf(codes))
	require.GreaterOrEqual(t, codes[http.StatusOK], 1)
	b.replica.Read(func(s *projections.State) { require.Len(t, s.Tasks, 2, "the burst made one task") })
}

func keysOf(m map[int]int) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestIdempotencyKeyInProgress(t *testing.T) {
	t.Parallel()
	b := setup(t)
	kv, err := b.srv.JS.KeyValue(t.Context(), events.BucketIdempotency)
	require.NoError(t, err)
	pending := func(key string, started time.Time) {
		sum := sha256.Sum256([]byte(key))
		rec, _ := json.Marshal(answer{State: "pending", Method: http.MethodPost, Path: "/tasks", StartedAt: started})
		_, err := kv.Put(t.Context(), hex.EncodeToString(sum[:]), rec)
		require.NoError(t, err)
	}
	pending("in-progress", time.Now())
	resp, body := b.doWith(t, http.MethodPost, "/tasks", task("x", "cpu", nil), map[string]string{HeaderIdempotencyKey: "in-progress"})
	require.Equal(t, http.StatusConflict, resp.StatusCode)
	require.Contains(t, string(body), "in progress")

	// A request in progress for longer than a minute died with its broker:
	// a retry takes over.
	pending("abandoned", time.Now().Add(-2*time.Minute))
	resp, _ = b.doWith(t, http.MethodPost, "/tasks", task("x", "cpu", nil), map[string]string{HeaderIdempotencyKey: "abandoned"})
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

func TestFormBodiesAsTheSeedAccepted(t *testing.T) {
	t.Parallel()
	b := setup(t)
	form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
	resp, body := b.doWith(t, http.MethodPost, "/tasks",
		"task[name]=encode&task[image]=busybox&task[cmd]=echo+hi&task[execution_type]=cpu&task[tags][type]=video&task[persist_logs]=true", form)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	var tk taskJSON
	require.NoError(t, json.Unmarshal(body, &tk))
	b.replica.Read(func(s *projections.State) {
		got := s.Tasks[tk.UUID]
		require.Equal(t, "echo hi", got.Cmd)
		require.Equal(t, "video", got.Tags["type"])
		require.True(t, got.PersistLogs)
	})

	resp, body = b.doWith(t, http.MethodPost, "/nodes", "node[hostname]=tcp://h:1&node[slots_execution_types][cpu]=1", form)
	require.Equal(t, http.StatusCreated, resp.StatusCode, string(body))
	require.Contains(t, string(body), `"slots_execution_types":{"cpu":1}`)

	resp, body = b.doWith(t, http.MethodPost, "/tasks", "task[name]=x", form)
	require.Equal(t, http.StatusUnprocessableEntity, resp.StatusCode)
	require.Contains(t, string(body), `"image":["can't be blank"]`)

	resp, _ = b.doWith(t, http.MethodPost, "/tasks", "a[=1", form)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
}

func TestNodeStorageMounts(t *testing.T) {
	t.Parallel()
	b := setup(t) // broker-wide mounts: shared, tmp
	code, body := b.do(t, http.MethodPost, "/tasks", `{"name":"n","image":"i","cmd":"c","execution_type":"cpu","storage_mounts":{"nfs":"/data"}}`)
	require.Equal(t, http.StatusUnprocessableEntity, code, "no node has nfs yet")
	require.Contains(t, string(body), `unknown mount \"nfs\"`)

	code, body = b.do(t, http.MethodPost, "/nodes", `{"hostname":"tcp://h:1","slots_execution_types":{"cpu":1},"storage_mounts":{"nfs":"/mnt/nfs","shared":"/srv/other"}}`)
	require.Equal(t, http.StatusCreated, code, string(body))
	var n nodeJSON
	require.NoError(t, json.Unmarshal(body, &n))
	code, _ = b.do(t, http.MethodPost, "/tasks", `{"name":"n","image":"i","cmd":"c","execution_type":"cpu","storage_mounts":{"nfs":"/data"}}`)
	require.Equal(t, http.StatusOK, code, "a node's own mount may be named")

	var nodes []projections.NodeView
	_, body = b.do(t, http.MethodGet, "/status/nodes", "")
	require.NoError(t, json.Unmarshal(body, &nodes))
	require.Equal(t, map[string]string{"nfs": "/mnt/nfs", "shared": "/srv/other"}, nodes[0].StorageMounts)

	code, body = b.do(t, http.MethodPatch, "/nodes/"+n.UUID, `{"slots_execution_types":{"cpu":1},"storage_mounts":{"bad name":"/x","ok":"relative"}}`)
	require.Equal(t, http.StatusUnprocessableEntity, code)
	require.Contains(t, string(body), `mount name \"bad name\"`)
	require.Contains(t, string(body), `the host path of \"ok\" must be an absolute path`)

	code, _ = b.do(t, http.MethodPatch, "/nodes/"+n.UUID, `{"slots_execution_types":{"cpu":2}}`)
	require.Equal(t, http.StatusOK, code)
	_, body = b.do(t, http.MethodGet, "/status/nodes", "")
	require.NoError(t, json.Unmarshal(body, &nodes))
	require.Len(t, nodes[0].StorageMounts, 2, "an update without storage_mounts keeps them")
}

func TestTaskTimeline(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.propose(t, &events.NodeRegistered{NodeID: "n1", Hostname: "tcp://h:1", Slots: map[string]int{"cpu": 1}})
	b.propose(t, &events.NodeUp{NodeID: "n1"})
	tk := b.submit(t, task("timeline", "cpu", nil))
	b.propose(t, &events.SlotReserved{TaskID: tk.UUID, Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "c"})
	code, _ := b.do(t, http.MethodPost, "/tasks/"+tk.UUID+"/kill_container", "") // rejected: not started
	require.Equal(t, http.StatusBadRequest, code)
	b.propose(t, &events.ContainerStarted{TaskID: tk.UUID, Attempt: 1, NodeID: "n1"})
	b.propose(t, &events.ContainerExited{TaskID: tk.UUID, Attempt: 1, NodeID: "n1", ExitCode: 2})
	b.propose(t, &events.TaskRetrying{TaskID: tk.UUID, Attempt: 1, NextAttempt: 2, Cause: events.CauseExitCode})

	code, body := b.do(t, http.MethodGet, "/tasks/"+tk.UUID+"/events", "")
	require.Equal(t, http.StatusOK, code, string(body))
	var timeline []TimelineEntry
	require.NoError(t, json.Unmarshal(body, &timeline))
	var types []events.Type
	for _, e := range timeline {
		types = append(types, e.Type)
	}
	require.Equal(t, []events.Type{
		events.TypeTaskSubmitted, events.TypeTaskSlotReserved, events.TypeTaskKillRequested,
		events.TypeTaskContainerStarted, events.TypeTaskContainerExited, events.TypeTaskRetrying,
	}, types)
	require.False(t, timeline[2].Accepted, "the rejected kill is in the history")
	require.Contains(t, timeline[2].Reason, "not running attempt")
	require.Equal(t, "req-1", timeline[0].CorrelationID)
	require.Contains(t, string(timeline[5].Data), `"cause":"exit_code"`)
	require.True(t, sort.SliceIsSorted(timeline, func(i, j int) bool { return timeline[i].Seq < timeline[j].Seq }))
	code, _ = b.do(t, http.MethodGet, "/tasks/nope/events", "")
	require.Equal(t, http.StatusNotFound, code)
}
