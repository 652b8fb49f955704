package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/natstest"
	"github.com/cbroker/broker/projections"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// archive is a LogSource that returns what a test put in it.
type archive map[string][]byte

func (a archive) TaskLogs(_ context.Context, id string) ([]byte, error) { return a[id], nil }

type bundle struct {
	srv     *natstest.Server
	replica *projections.Replica
	logs    archive
	http    *httptest.Server
}

func setup(t *testing.T, opts ...func(*Config)) *bundle {
	t.Helper()
	b := &bundle{srv: natstest.Run(t, ""), logs: archive{}}
	var err error
	b.replica, err = projections.NewReplica(projections.ReplicaConfig{JetStream: b.srv.JS})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, b.replica.Run(ctx)) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	<-b.replica.Ready()
	cfg := Config{Replica: b.replica, JetStream: b.srv.JS, Logs: b.logs, CheckHostname: checkHost, Mounts: testMounts}
	for _, o := range opts {
		o(&cfg)
	}
	g, err := New(cfg)
	require.NoError(t, err)
	b.http = httptest.NewServer(g.Handler())
	t.Cleanup(b.http.Close)
	return b
}

func (b *bundle) do(t *testing.T, method, path, body string) (int, []byte) {
	t.Helper()
	resp, out := b.doWith(t, method, path, body, nil)
	return resp.StatusCode, out
}

// doWith sends a request with extra headers. Every answer is JSON, or empty
// (the seed's bare 200s).
// answered is a response's status and headers; its body is read and closed.
type answered struct {
	StatusCode int
	Header     http.Header
}

func (b *bundle) doWith(t *testing.T, method, path, body string, headers map[string]string) (answered, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, b.http.URL+path, bytes.NewBufferString(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", "req-1")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if len(out) > 0 {
		require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json"), "every answer is JSON: %s", out)
		require.True(t, json.Valid(out), "valid JSON: %s", out)
	}
	return answered{StatusCode: resp.StatusCode, Header: resp.Header}, out
}

func keys(t *testing.T, body []byte) []string {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(body, &m))
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func (b *bundle) streamMsgs(t *testing.T) uint64 {
	t.Helper()
	s, err := b.srv.JS.Stream(t.Context(), events.StreamName)
	require.NoError(t, err)
	info, err := s.Info(t.Context())
	require.NoError(t, err)
	return info.State.Msgs
}

var seedTaskKeys = []string{"created_at", "error", "execution_type", "exit_code", "finished_at", "seconds_running", "started_at", "status", "try_count", "uuid"}

func TestTasksAPI(t *testing.T) {
	t.Parallel()

	t.Run("SubmitAndRead", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		code, body := b.do(t, http.MethodPost, "/tasks", `{"task":{"name":"hello","image":"busybox","cmd":"echo hi","execution_type":"cpu","tags":{"n":1}}}`)
		require.Equal(t, http.StatusOK, code, string(body))
		require.Equal(t, seedTaskKeys, keys(t, body))
		var created taskJSON
		require.NoError(t, json.Unmarshal(body, &created))
		require.Equal(t, projections.TaskWaiting, created.Status)
		require.Zero(t, created.TryCount)
		require.Regexp(t, `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`, *created.CreatedAt)

		code, body = b.do(t, http.MethodGet, "/tasks/"+created.UUID, "")
		require.Equal(t, http.StatusOK, code)
		var got taskJSON
		require.NoError(t, json.Unmarshal(body, &got))
		require.Equal(t, created, got)

		b.replica.Read(func(s *projections.State) {
			task := s.Tasks[created.UUID]
			require.Equal(t, map[string]string{"n": "1", "request_id": "req-1"}, task.Tags)
			require.Equal(t, 3, task.MaxRetries)
			require.Equal(t, "req-1", task.CorrelationID)
		})
	})

	t.Run("BadInputWritesNothing", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		code, body := b.do(t, http.MethodPost, "/tasks", `{"name": "x",`)
		require.Equal(t, http.StatusBadRequest, code)
		require.Contains(t, string(body), "malformed JSON")
		code, body = b.do(t, http.MethodPost, "/tasks", `{"name":"x","image":"i","cmd":"c"}`)
		require.Equal(t, http.StatusUnprocessableEntity, code)
		require.JSONEq(t, `{"execution_type":["can't be blank","only allows lowercase letters, numbers and hyphen symbol"]}`, string(body))
		code, _ = b.do(t, http.MethodPost, "/tasks", string(bytes.Repeat([]byte("x"), 2<<20)))
		require.Equal(t, http.StatusRequestEntityTooLarge, code)
		require.Zero(t, b.streamMsgs(t), "a refused request appends nothing")
	})

	t.Run("NotFound", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		code, body := b.do(t, http.MethodGet, "/tasks/nope", "")
		require.Equal(t, http.StatusNotFound, code)
		require.JSONEq(t, `{"error":"task nope not found"}`, string(body))
		code, _ = b.do(t, http.MethodGet, "/tasks/nope/logs", "")
		require.Equal(t, http.StatusNotFound, code)
		code, _ = b.do(t, http.MethodGet, "/no/such/route", "")
		require.Equal(t, http.StatusNotFound, code)
	})

	t.Run("LogsReplaceInvalidUTF8", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		_, body := b.do(t, http.MethodPost, "/tasks", `{"name":"l","image":"busybox","cmd":"x","execution_type":"cpu"}`)
		var created taskJSON
		require.NoError(t, json.Unmarshal(body, &created))
		b.logs[created.UUID] = []byte("Abc\xCCTeste\n")
		code, body := b.do(t, http.MethodGet, "/tasks/"+created.UUID+"/logs", "")
		require.Equal(t, http.StatusOK, code)
		require.JSONEq(t, `{"logs":"Abc?Teste\n"}`, string(body))
	})
}

var seedNodeKeys = []string{"accept_new_tasks", "hostname", "runner_capacity_reached", "runner_provider", "slots_execution_types", "status", "uuid"}

func TestNodesAPI(t *testing.T) {
	t.Parallel()
	b := setup(t)
	code, body := b.do(t, http.MethodPost, "/nodes", `{"hostname":"tcp://10.0.0.1:2375","slots_execution_types":{"cpu":2,"network":"10"}}`)
	require.Equal(t, http.StatusCreated, code, string(body))
	require.Equal(t, seedNodeKeys, keys(t, body))
	var n nodeJSON
	require.NoError(t, json.Unmarshal(body, &n))
	require.Equal(t, projections.NodeUnavailable, n.Status, "a new node is unavailable until its first probe")
	require.True(t, n.AcceptNewTasks)
	require.Equal(t, map[string]int{"cpu": 2, "network": 10}, n.SlotsExecutionTypes)
	require.Equal(t, "docker", n.RunnerProvider)

	code, body = b.do(t, http.MethodPost, "/nodes", `{"node":{"hostname":"tcp://10.0.0.1:2375","slots_execution_types":{"cpu":1}}}`)
	require.Equal(t, http.StatusUnprocessableEntity, code)
	require.JSONEq(t, `{"hostname":["is already taken"]}`, string(body))

	code, body = b.do(t, http.MethodGet, "/nodes/"+n.UUID, "")
	require.Equal(t, http.StatusOK, code)
	var got nodeJSON
	require.NoError(t, json.Unmarshal(body, &got))
	require.Equal(t, n, got)

	code, body = b.do(t, http.MethodGet, "/nodes", "")
	require.Equal(t, http.StatusOK, code)
	var list []nodeJSON
	require.NoError(t, json.Unmarshal(body, &list))
	require.Equal(t, []nodeJSON{n}, list)

	code, _ = b.do(t, http.MethodGet, "/nodes/missing", "")
	require.Equal(t, http.StatusNotFound, code)
	require.Eventually(t, func() bool { return b.replica.Seq() == 2 }, time.Second, 10*time.Millisecond,
		"the refused duplicate is recorded as a rejected proposal, nothing more")
}
