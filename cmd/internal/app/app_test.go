package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cbroker/broker/cmd/internal/app"
	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/dockertest"
	"github.com/cbroker/broker/internal/natstest"
	"github.com/cbroker/broker/projections"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, natstest.IgnoreObjectStoreRace())
}

// broker is one in-process broker under test.
type broker struct {
	app  *app.App
	base string
	stop func()
}

// startBroker runs a broker on dataDir until stop is called or the test ends.
func startBroker(t *testing.T, dataDir string, opts ...func(*app.Config)) *broker {
	t.Helper()
	cfg := app.Config{
		Listen: "127.0.0.1:0", DataDir: dataDir, NATSListen: "none", LocalNode: app.LocalNodeFalse,
		HealthInterval: 200 * time.Millisecond, Instance: "test", StopGrace: 2 * time.Second,
	}
	for _, o := range opts {
		o(&cfg)
	}
	a, err := app.New(t.Context(), cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			require.NoError(t, <-done)
		}
	}
	t.Cleanup(stop)
	return &broker{app: a, base: "http://" + a.Addr(), stop: stop}
}

func (b *broker) do(t *testing.T, method, path string, body any, out any) int {
	t.Helper()
	code, _, raw := b.raw(t, method, path, body, nil)
	if out != nil {
		require.NoErrorf(t, json.Unmarshal(raw, out), "body: %s", raw)
	}
	return code
}

type task struct {
	UUID           string  `json:"uuid"`
	Status         string  `json:"status"`
	ExitCode       *int    `json:"exit_code"`
	Error          *string `json:"error"`
	TryCount       int     `json:"try_count"`
	StartedAt      *string `json:"started_at"`
	FinishedAt     *string `json:"finished_at"`
	SecondsRunning *int    `json:"seconds_running"`
	ExecutionType  string  `json:"execution_type"`
}

type node struct {
	UUID   string `json:"uuid"`
	Status string `json:"status"`
}

// addNode registers an engine as a node over REST and waits until it is
// available.
func (b *broker) addNode(t *testing.T, e dockertest.Engine, slots map[string]int) string {
	t.Helper()
	return b.addNodeWith(t, map[string]any{"hostname": e.Hostname, "slots_execution_types": slots})
}

// addNodeWith registers a node with a whole POST /nodes body and waits
// until it is available.
func (b *broker) addNodeWith(t *testing.T, body map[string]any) string {
	t.Helper()
	var n node
	require.Equal(t, http.StatusCreated, b.do(t, http.MethodPost, "/nodes", body, &n))
	require.EventuallyWithT(t, func(c *assertT) {
		var got node
		require.Equal(c, http.StatusOK, b.do(t, http.MethodGet, "/nodes/"+n.UUID, nil, &got))
		require.Equal(c, "available", got.Status)
	}, 20*time.Second, 50*time.Millisecond)
	return n.UUID
}

func (b *broker) submit(t *testing.T, name, image, cmd, typ string) task {
	t.Helper()
	var tk task
	code := b.do(t, http.MethodPost, "/tasks", map[string]any{"task": map[string]any{
		"name": name, "image": image, "cmd": cmd, "execution_type": typ,
	}}, &tk)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "waiting", tk.Status)
	return tk
}

// waitStatus polls GET /tasks/:uuid until the task has one of the statuses.
func (b *broker) waitStatus(t *testing.T, id string, statuses ...string) task {
	t.Helper()
	var tk task
	require.EventuallyWithT(t, func(c *assertT) {
		require.Equal(c, http.StatusOK, b.do(t, http.MethodGet, "/tasks/"+id, nil, &tk))
		require.Contains(c, statuses, tk.Status)
	}, 90*time.Second, 50*time.Millisecond)
	return tk
}

func (b *broker) logs(t *testing.T, id string) string {
	t.Helper()
	var out struct {
		Logs string `json:"logs"`
	}
	require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/tasks/"+id+"/logs", nil, &out))
	return out.Logs
}

// history returns a task's events in log order with the fold's verdicts.
func (b *broker) history(t *testing.T, id string) []projections.Applied {
	t.Helper()
	var out []projections.Applied
	b.app.Replica.ReadSince(0, func(_ *projections.State, applied []projections.Applied, complete bool) {
		require.True(t, complete)
		for _, a := range applied {
			if a.AggregateID == id {
				out = append(out, a)
			}
		}
	})
	return out
}

func accepted(h []projections.Applied, typ events.Type) int {
	n := 0
	for _, a := range h {
		if a.Type == typ && a.Outcome.Accepted {
			n++
		}
	}
	return n
}

func parseTime(t *testing.T, s *string) time.Time {
	t.Helper()
	require.NotNil(t, s)
	at, err := time.Parse(projections.TimeLayout, *s)
	require.NoError(t, err)
	return at
}

func setup(t *testing.T, engines int, opts ...func(*app.Config)) (*broker, []dockertest.Engine) {
	t.Helper()
	es := dockertest.Engines(t, engines)
	b := startBroker(t, t.TempDir(), opts...)
	dockertest.CleanupBroker(t, es, b.app.BrokerID)
	return b, es
}

func TestEndToEnd(t *testing.T) {
	t.Parallel()

	t.Run("CompletesAndKeepsStdoutAndStderr", func(t *testing.T) {
		t.Parallel()
		b, es := setup(t, 1)
		b.addNode(t, es[0], map[string]int{"cpu": 1})
		tk := b.submit(t, "hello", dockertest.Image, "echo to-stdout; echo to-stderr >&2", "cpu")
		done := b.waitStatus(t, tk.UUID, "completed", "failed")
		require.Equal(t, "completed", done.Status)
		require.Equal(t, new(0), done.ExitCode)
		require.Zero(t, done.TryCount)
		require.Nil(t, done.Error)
		require.NotNil(t, done.SecondsRunning)
		logs := b.logs(t, tk.UUID)
		require.Contains(t, logs, "to-stdout\n")
		require.Contains(t, logs, "to-stderr\n")
		require.Eventually(t, func() bool { return len(dockertest.Containers(t, es[0], b.app.BrokerID)) == 0 },
			10*time.Second, 50*time.Millisecond, "the container is removed after the run")
	})

	t.Run("NonZeroExitFailsAfterFourAttempts", func(t *testing.T) {
		t.Parallel()
		b, es := setup(t, 1)
		b.addNode(t, es[0], map[string]int{"cpu": 1})
		tk := b.submit(t, "exit three", dockertest.Image, "echo attempt; exit 3", "cpu")
		done := b.waitStatus(t, tk.UUID, "completed", "failed")
		require.Equal(t, "failed", done.Status)
		require.Equal(t, new(3), done.ExitCode)
		require.Equal(t, 3, done.TryCount)
		h := b.history(t, tk.UUID)
		require.Equal(t, 4, accepted(h, events.TypeTaskSlotReserved), "4 attempts")
		require.Equal(t, 4, accepted(h, events.TypeTaskContainerExited))
		require.Equal(t, 3, accepted(h, events.TypeTaskRetrying))
		require.Equal(t, 1, accepted(h, events.TypeTaskFailed))
		require.Equal(t, "attempt\n", b.logs(t, tk.UUID))
	})

	t.Run("MissingImageFailsNamingTheImage", func(t *testing.T) {
		t.Parallel()
		b, es := setup(t, 1)
		b.addNode(t, es[0], map[string]int{"cpu": 1})
		image := "cb-test/no-such-image:v404"
		tk := b.submit(t, "no image", image, "true", "cpu")
		done := b.waitStatus(t, tk.UUID, "completed", "failed")
		require.Equal(t, "failed", done.Status)
		require.NotNil(t, done.Error)
		require.Contains(t, *done.Error, image)
		require.Equal(t, 3, done.TryCount)
		require.Equal(t, 4, accepted(b.history(t, tk.UUID), events.TypeTaskStartFailed))
	})

	t.Run("ImageReferencesWithARegistryPort", func(t *testing.T) {
		t.Parallel()
		b, es := setup(t, 1)
		b.addNode(t, es[0], map[string]int{"cpu": 1})
		// The seed split image names on ':' and broke on registry ports.
		local := "localhost:5999/cb-test/busybox:v1"
		require.NoError(t, es[0].Client.ImageTag(t.Context(), dockertest.Image, local))
		tk := b.submit(t, "with port", local, "echo ok", "cpu")
		require.Equal(t, "completed", b.waitStatus(t, tk.UUID, "completed", "failed").Status)
		missing := "localhost:5999/cb-test/absent:v2"
		tk = b.submit(t, "missing with port", missing, "true", "cpu")
		done := b.waitStatus(t, tk.UUID, "completed", "failed")
		require.Equal(t, "failed", done.Status)
		require.Contains(t, *done.Error, missing, "the whole reference, port included")
	})

	t.Run("OneSlotRunsTasksOneAfterTheOther", func(t *testing.T) {
		t.Parallel()
		b, es := setup(t, 1)
		b.addNode(t, es[0], map[string]int{"cpu": 1})
		first := b.submit(t, "first", dockertest.Image, "sleep 1", "cpu")
		second := b.submit(t, "second", dockertest.Image, "sleep 1", "cpu")
		d1 := b.waitStatus(t, first.UUID, "completed")
		d2 := b.waitStatus(t, second.UUID, "completed")
		require.False(t, parseTime(t, d2.StartedAt).Before(parseTime(t, d1.FinishedAt)),
			"second started %s before first finished %s", *d2.StartedAt, *d1.FinishedAt)
	})

	t.Run("ANodeBehindTLSWithClientCertificates", func(t *testing.T) {
		t.Parallel()
		engine := dockertest.Engines(t, 1)[0]
		hostname, certs := dockertest.TLSEngine(t, engine)
		b, _ := setup(t, 1, func(c *app.Config) { c.DockerCertPath = certs })
		b.addNode(t, dockertest.Engine{Hostname: hostname}, map[string]int{"cpu": 1})
		tk := b.submit(t, "over tls", dockertest.Image, "echo secure", "cpu")
		require.Equal(t, "completed", b.waitStatus(t, tk.UUID, "completed", "failed").Status)
		require.Equal(t, "secure\n", b.logs(t, tk.UUID))
	})

	t.Run("SpreadsOverNodesByLeastUsed", func(t *testing.T) {
		t.Parallel()
		b, es := setup(t, 2)
		n1 := b.addNode(t, es[0], map[string]int{"cpu": 2})
		n2 := b.addNode(t, es[1], map[string]int{"cpu": 2})
		var ids []string
		for i := range 4 {
			ids = append(ids, b.submit(t, fmt.Sprint("spread ", i), dockertest.Image, "sleep 2", "cpu").UUID)
		}
		for _, id := range ids {
			b.waitStatus(t, id, "started", "completed")
		}
		// The task views in the KV bucket say where each task ran.
		kv, err := b.app.JetStream().KeyValue(t.Context(), events.BucketTasks)
		require.NoError(t, err)
		perNode := map[string]int{}
		require.EventuallyWithT(t, func(c *assertT) {
			perNode = map[string]int{}
			for _, id := range ids {
				e, err := kv.Get(t.Context(), id)
				require.NoError(c, err)
				var v projections.TaskView
				require.NoError(c, json.Unmarshal(e.Value(), &v))
				require.NotEmpty(c, v.NodeID)
				perNode[v.NodeID]++
			}
		}, 10*time.Second, 50*time.Millisecond)
		require.Equal(t, map[string]int{n1: 2, n2: 2}, perNode)
		for _, id := range ids {
			require.Equal(t, "completed", b.waitStatus(t, id, "completed", "failed").Status)
		}
	})
}

func TestRestartLosesNothing(t *testing.T) {
	t.Parallel()
	es := dockertest.Engines(t, 1)
	dir := t.TempDir()
	b := startBroker(t, dir)
	dockertest.CleanupBroker(t, es, b.app.BrokerID)
	b.addNode(t, es[0], map[string]int{"cpu": 1})
	running := b.submit(t, "survivor", dockertest.Image, "sleep 3; echo survived", "cpu")
	queued := b.submit(t, "queued", dockertest.Image, "echo queued", "cpu")
	b.waitStatus(t, running.UUID, "started")
	brokerID := b.app.BrokerID
	b.stop()
	require.Len(t, dockertest.Containers(t, es[0], brokerID), 1, "the running container outlives the broker")

	b = startBroker(t, dir)
	require.Equal(t, brokerID, b.app.BrokerID, "the broker id belongs to the data directory")
	d1 := b.waitStatus(t, running.UUID, "completed", "failed")
	d2 := b.waitStatus(t, queued.UUID, "completed", "failed")
	require.Equal(t, "completed", d1.Status)
	require.Equal(t, "completed", d2.Status)
	require.Zero(t, d1.TryCount)
	require.Equal(t, "survived\n", b.logs(t, running.UUID))
	require.Equal(t, "queued\n", b.logs(t, queued.UUID))
	h := b.history(t, running.UUID)
	require.Equal(t, 1, accepted(h, events.TypeTaskSlotReserved), "the running task was not run again")
	require.Equal(t, 1, accepted(h, events.TypeTaskContainerStarted))
	require.Equal(t, 1, accepted(h, events.TypeTaskCompleted))
	require.Eventually(t, func() bool { return len(dockertest.Containers(t, es[0], brokerID)) == 0 }, 10*time.Second, 50*time.Millisecond)
}

func TestNATSConfigMatchesTheRepository(t *testing.T) {
	t.Parallel()
	repo, err := os.ReadFile(filepath.Join("..", "..", "..", "nats.conf"))
	require.NoError(t, err)
	require.Equal(t, string(repo), app.DefaultNATSConfig, "cmd/internal/app/nats.conf must be a copy of the repository's nats.conf")
}

func TestParseSlots(t *testing.T) {
	t.Parallel()
	got, err := app.ParseSlots("cpu=2, network=10")
	require.NoError(t, err)
	require.Equal(t, map[string]int{"cpu": 2, "network": 10}, got)
	for _, bad := range []string{"cpu", "cpu=x", "=2", "cpu=-1"} {
		_, err := app.ParseSlots(bad)
		require.Error(t, err, bad)
	}
}
