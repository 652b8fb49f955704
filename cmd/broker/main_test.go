package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/internal/dockertest"
)

// The test binary doubles as the broker: with BROKER_TEST_MAIN=1 it runs
// main, so the tests below start real broker processes.
func TestMain(m *testing.M) {
	if os.Getenv("BROKER_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type process struct {
	cmd  *exec.Cmd
	base string
	out  *os.File
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := (&net.ListenConfig{}).Listen(t.Context(), "tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// serve starts `broker serve` with flags and environment, like a newcomer
// following the README, and waits until its API answers.
func serve(t *testing.T, env []string, args ...string) *process {
	t.Helper()
	listen := freePort(t)
	cmd := exec.CommandContext(context.WithoutCancel(t.Context()), os.Args[0], append([]string{"serve"}, args...)...)
	cmd.Env = append(os.Environ(), append(env, "BROKER_TEST_MAIN=1", "BROKER_LISTEN="+listen)...)
	out, err := os.CreateTemp(t.TempDir(), "broker-*.log")
	require.NoError(t, err)
	p := &process{cmd: cmd, base: "http://" + listen, out: out}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			logs, _ := os.ReadFile(out.Name())
			t.Logf("broker output:\n%s", logs)
		}
		_ = out.Close()
	})
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		resp, err := http.Get(p.base + "/nodes") //nolint:noctx // a probe
		require.NoError(c, err)
		resp.Body.Close()
	}, 60*time.Second, 100*time.Millisecond)
	return p
}

func (p *process) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, "SIGTERM shuts the broker down cleanly with status 0")
	case <-time.After(30 * time.Second):
		t.Fatal("the broker did not stop within 30s of SIGTERM")
	}
}

func (p *process) call(t require.TestingT, method, path, body string, out any) int {
	req, err := http.NewRequestWithContext(context.Background(), method, p.base+path, bytes.NewBufferString(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	if out != nil {
		require.NoError(t, json.Unmarshal(raw, out), string(raw))
	}
	return resp.StatusCode
}

// run runs a broker command to its end and returns its output.
func run(t *testing.T, args ...string) []byte {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], args...)
	cmd.Env = append(os.Environ(), "BROKER_TEST_MAIN=1")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, string(out))
	return out
}

func TestServeWithTheLocalEngine(t *testing.T) {
	t.Parallel()
	engine := dockertest.Engines(t, 1)[0]
	dir := t.TempDir()
	env := []string{"DOCKER_HOST=" + engine.Hostname, "BROKER_DATA_DIR=" + dir}
	p := serve(t, env, "--local-node", "true", "--local-node-slots", "cpu=2,network=10", "--nats-listen", "127.0.0.1:-1")

	var nodes []map[string]any
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.Equal(c, http.StatusOK, p.call(c, http.MethodGet, "/nodes", "", &nodes))
		require.Len(c, nodes, 1)
		require.Equal(c, "available", nodes[0]["status"])
	}, 30*time.Second, 100*time.Millisecond)
	require.Equal(t, engine.Hostname, nodes[0]["hostname"])
	require.Equal(t, map[string]any{"cpu": 2.0, "network": 10.0}, nodes[0]["slots_execution_types"])

	var tk map[string]any
	require.Equal(t, http.StatusOK, p.call(t, http.MethodPost, "/tasks",
		fmt.Sprintf(`{"name":"readme","image":%q,"cmd":"echo hello from the broker","execution_type":"cpu"}`, dockertest.Image), &tk))
	id := tk["uuid"].(string)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		require.Equal(c, http.StatusOK, p.call(c, http.MethodGet, "/tasks/"+id, "", &tk))
		require.Equal(c, "completed", tk["status"])
	}, 60*time.Second, 100*time.Millisecond)
	var logs map[string]string
	require.Equal(t, http.StatusOK, p.call(t, http.MethodGet, "/tasks/"+id+"/logs", "", &logs))
	require.Equal(t, "hello from the broker\n", logs["logs"])

	out := run(t, "audit", "task", id, "--api", p.base)
	for _, want := range []string{"task " + id, "submitted", "slot_reserved", "container_started", "logs_archived", "container_exited", "completed", "accepted"} {
		require.Contains(t, string(out), want)
	}
	require.Eventually(t, func() bool { return len(dockertest.TaskContainers(t, engine, id)) == 0 },
		10*time.Second, 50*time.Millisecond, "the broker removes the task's container")

	// The pool as it stood when the task was submitted, and as it is now.
	var timeline []map[string]any
	require.Equal(t, http.StatusOK, p.call(t, http.MethodGet, "/tasks/"+id+"/events", "", &timeline))
	submitted := fmt.Sprint(int(timeline[0]["seq"].(float64)))
	out = run(t, "replay", "--at", submitted, "--api", p.base)
	require.Contains(t, string(out), "pool at sequence "+submitted)
	require.Regexp(t, `n001d\s+available\s+true\s+cpu 0/2, network 0/10`, string(out))
	require.Contains(t, string(out), "tasks:  waiting 1\n")
	require.Contains(t, string(out), "queues: cpu 1\n")
	require.Regexp(t, id+`\s+readme\s+cpu\s+waiting\s+0\s+-\s+-`, string(out))
	out = run(t, "replay", "--at", time.Now().UTC().Format(time.RFC3339Nano), "--api", p.base)
	require.Contains(t, string(out), "tasks:  completed 1\n")
	require.Regexp(t, id+`\s+readme\s+cpu\s+completed\s+1\s+0\s+-`, string(out))
	p.stop(t)

	// The views again from the log, with the broker stopped.
	out = run(t, "projections", "rebuild", "--data-dir", dir)
	require.Regexp(t, `rebuilt 1 task views and 1 node views at sequence \d+`, string(out))

	// The same data directory again: the node is not registered twice and
	// the task is still there.
	p = serve(t, env, "--local-node", "true", "--nats-listen", "none")
	require.Equal(t, http.StatusOK, p.call(t, http.MethodGet, "/nodes", "", &nodes))
	require.Len(t, nodes, 1)
	require.Equal(t, http.StatusOK, p.call(t, http.MethodGet, "/tasks/"+id, "", &tk))
	require.Equal(t, "completed", tk["status"])
	p.stop(t)
}

func TestServeWithoutAnEngine(t *testing.T) {
	t.Parallel()
	env := []string{"DOCKER_HOST=tcp://127.0.0.1:1"}
	p := serve(t, env, "--data-dir", t.TempDir(), "--nats-listen", "none")
	var nodes []map[string]any
	require.Equal(t, http.StatusOK, p.call(t, http.MethodGet, "/nodes", "", &nodes))
	require.Empty(t, nodes, "auto registers nothing when no engine answers")
	p.stop(t)

	cmd := exec.CommandContext(t.Context(), os.Args[0], "serve", "--data-dir", t.TempDir(), "--nats-listen", "none", "--local-node", "true", "--listen", freePort(t))
	cmd.Env = append(os.Environ(), "BROKER_TEST_MAIN=1", "DOCKER_HOST=tcp://127.0.0.1:1")
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "--local-node true fails without an engine")
	require.Contains(t, string(out), "local Docker engine tcp://127.0.0.1:1")
}

func TestWebhookSecretFromTheEnvironment(t *testing.T) {
	t.Parallel()
	hooked := `{"name":"n","image":"i","cmd":"c","execution_type":"cpu","callback_url":"https://example.com/cb"}`
	env := []string{"DOCKER_HOST=tcp://127.0.0.1:1"}
	p := serve(t, env, "--data-dir", t.TempDir(), "--nats-listen", "none")
	var refused map[string][]string
	require.Equal(t, http.StatusUnprocessableEntity, p.call(t, http.MethodPost, "/tasks", hooked, &refused))
	require.Contains(t, refused["callback_url"][0], "webhooks are disabled")
	p.stop(t)

	p = serve(t, append(env, "CB_WEBHOOK_SECRET=from-the-environment"), "--data-dir", t.TempDir(), "--nats-listen", "none")
	require.Equal(t, http.StatusOK, p.call(t, http.MethodPost, "/tasks", hooked, nil))
	p.stop(t)
}

// TestBenchReplay runs the replay benchmark on a short log: its figures are
// there and the fold caught up with every event written.
func TestBenchReplay(t *testing.T) {
	t.Parallel()
	out := string(run(t, "bench", "replay", "--events", "3000", "--runs", "1", "--settle", "0"))
	for _, want := range []string{
		"replay (median of 1):", "startup without snapshot (median of 1):", "snapshot: ",
		"startup with snapshot (median of 1):", "fold from snapshot", "heap after start-up",
	} {
		require.Contains(t, out, want)
	}
	m := regexp.MustCompile(`events: (\d+) events`).FindStringSubmatch(out)
	require.NotNil(t, m, out)
	n, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	require.GreaterOrEqual(t, n, 3000)
}
