package app_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/cmd/internal/app"
	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/natstest"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/benchnoop"
	"github.com/cbroker/broker/services/runtime"
)

// runApp runs an app until the test ends.
func runApp(t *testing.T, cfg app.Config) *broker {
	t.Helper()
	a, err := app.New(t.Context(), cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() { cancel(); require.NoError(t, <-done) })
	return &broker{app: a, base: "http://" + a.Addr()}
}

// runNoopTask registers a no-op node, submits a task over REST and waits
// for its completion: the whole pipeline without Docker.
func runNoopTask(t *testing.T, b *broker) string {
	t.Helper()
	id, err := b.app.RegisterNode(t.Context(), benchnoop.Scheme+"://n1", map[string]int{"cpu": 1})
	require.NoError(t, err)
	again, err := b.app.RegisterNode(t.Context(), benchnoop.Scheme+"://n1", map[string]int{"cpu": 1})
	require.NoError(t, err)
	require.Equal(t, id, again, "registering a hostname twice gives the same node")
	tk := b.submit(t, "noop", "none", "true", "cpu")
	require.Equal(t, "completed", b.waitStatus(t, tk.UUID, "completed", "failed").Status)
	return tk.UUID
}

func TestExternalNATS(t *testing.T) {
	t.Parallel()
	srv := natstest.Run(t, "")
	b := runApp(t, app.Config{
		Listen: "127.0.0.1:0", NATSURL: srv.Server.ClientURL(), LocalNode: app.LocalNodeFalse,
		Runtimes: runtime.Set{benchnoop.Runtime{}}, HealthInterval: 50 * time.Millisecond, Instance: "ext",
	})
	id := runNoopTask(t, b)
	// The events are in the external server's stream.
	s, err := srv.JS.Stream(t.Context(), events.StreamName)
	require.NoError(t, err)
	info, err := s.Info(t.Context())
	require.NoError(t, err)
	require.GreaterOrEqual(t, info.State.Msgs, uint64(5))
	e, err := srv.JS.KeyValue(t.Context(), events.BucketTasks)
	require.NoError(t, err)
	require.EventuallyWithT(t, func(c *assertT) {
		v, err := e.Get(t.Context(), id)
		require.NoError(c, err)
		var view projections.TaskView
		require.NoError(c, json.Unmarshal(v.Value(), &view))
		require.Equal(c, projections.TaskCompleted, view.Status)
	}, 10*time.Second, 20*time.Millisecond)
}

func TestEmbeddedServerFromAConfigFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := runApp(t, app.Config{
		Listen: "127.0.0.1:0", DataDir: dir, LocalNode: app.LocalNodeFalse,
		NATSConfig: filepath.Join("..", "..", "..", "nats.conf"), NATSListen: "127.0.0.1:-1",
		NATSPassword: "broker-secret", SubscriberPassword: "subscriber-secret",
		Runtimes: runtime.Set{benchnoop.Runtime{}}, HealthInterval: 50 * time.Millisecond, Instance: "conf",
	})
	url := b.app.NATSURL()
	require.NotEmpty(t, url, "the embedded server listens for NATS clients")
	_, err := os.Stat(filepath.Join(dir, app.SubscriberPasswordFile))
	require.ErrorIs(t, err, os.ErrNotExist, "a configured subscriber password is not written down")

	// A NATS client of another program sees the outcome events.
	nc, err := nats.Connect(url, nats.UserInfo(app.SubscriberUser, "subscriber-secret"))
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	completed := make(chan events.Envelope, 1)
	cons, err := js.OrderedConsumer(t.Context(), events.StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"cb.ev.task.*.completed"},
	})
	require.NoError(t, err)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		env, err := events.Decode(m.Data())
		if err == nil {
			select {
			case completed <- env:
			default:
			}
		}
	})
	require.NoError(t, err)
	t.Cleanup(cc.Stop)

	id := runNoopTask(t, b)
	select {
	case env := <-completed:
		require.Equal(t, id, env.AggregateID)
		require.Equal(t, events.TypeTaskCompleted, env.Type)
	case <-time.After(10 * time.Second):
		t.Fatal("no completed event reached the subscriber")
	}

	// The broker user, with the configured password, has every right.
	admin, err := nats.Connect(url, nats.UserInfo(app.BrokerUser, "broker-secret"))
	require.NoError(t, err)
	t.Cleanup(admin.Close)
	ajs, err := jetstream.New(admin)
	require.NoError(t, err)
	_, err = ajs.CreateStream(t.Context(), jetstream.StreamConfig{Name: "OPS", Subjects: []string{"ops.>"}, Storage: jetstream.MemoryStorage})
	require.NoError(t, err)
}

func TestIdempotencyKeySurvivesARestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := app.Config{
		Listen: "127.0.0.1:0", DataDir: dir, NATSListen: "none", LocalNode: app.LocalNodeFalse,
		Runtimes: runtime.Set{benchnoop.Runtime{}}, Instance: "idem",
	}
	submit := func(b *broker) (int, string, string) {
		t.Helper()
		body := strings.NewReader(`{"name":"once","image":"none","cmd":"true","execution_type":"cpu"}`)
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, b.base+"/tasks", body)
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Idempotency-Key", "nightly-2026-11-27")
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var tk task
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&tk))
		return resp.StatusCode, tk.UUID, resp.Header.Get("Idempotent-Replayed")
	}
	a, err := app.New(t.Context(), cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	code, first, _ := submit(&broker{app: a, base: "http://" + a.Addr()})
	require.Equal(t, http.StatusOK, code)
	cancel()
	require.NoError(t, <-done)

	b := runApp(t, cfg)
	code, again, replayed := submit(b)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, first, again, "the same key answers with the same task after a restart")
	require.Equal(t, "true", replayed)
	b.app.Replica.Read(func(s *projections.State) { require.Len(t, s.Tasks, 1) })
}
