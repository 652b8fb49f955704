package docker_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/internal/dockertest"
	"github.com/cbroker/broker/services/docker"
	"github.com/cbroker/broker/services/runtime"
)

func TestParseHost(t *testing.T) {
	t.Parallel()
	ok := map[string]docker.Address{
		"http://worker1.test:2376":    {Host: "tcp://worker1.test:2376"},
		"tcp://127.0.0.1:2375":        {Host: "tcp://127.0.0.1:2375"},
		"tcp://[::1]:2375":            {Host: "tcp://[::1]:2375"},
		"https://10.0.0.5:2376":       {Host: "tcp://10.0.0.5:2376", TLS: true},
		"unix:///var/run/docker.sock": {Host: "unix:///var/run/docker.sock"},
	}
	for in, want := range ok {
		got, err := docker.ParseHost(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got)
	}
	for _, in := range []string{"", "worker1:2375", "tcp://host", "unix://relative", "ftp://x:1", "http://h:1/path", "bench-noop://x", "::", "tcp://u:p@h:1", "tcp://h:1?x=1"} {
		_, err := docker.ParseHost(in)
		require.Error(t, err, in)
	}
}

type bundle struct {
	rt     *docker.Runtime
	engine dockertest.Engine
	node   runtime.Node
	broker string
}

func setup(t *testing.T) *bundle {
	t.Helper()
	engines := dockertest.Engines(t, 1)
	broker := "test-" + uuid.NewString()[:8]
	dockertest.CleanupBroker(t, engines, broker)
	rt := docker.New(docker.Config{})
	t.Cleanup(func() { _ = rt.Close() })
	return &bundle{rt: rt, engine: engines[0], node: runtime.Node{ID: "n1", Hostname: engines[0].Hostname}, broker: broker}
}

func (b *bundle) spec(cmd string) runtime.Spec {
	id := uuid.NewString()
	return runtime.Spec{
		TaskID: id, Attempt: 1, Name: "rt-test-" + id[:12] + "-a1", Image: dockertest.Image, Cmd: cmd,
		Labels: map[string]string{runtime.LabelBroker: b.broker, runtime.LabelTask: id, runtime.LabelAttempt: "1"},
	}
}

func TestRuntime(t *testing.T) {
	t.Parallel()

	t.Run("RunsWaitsAndKeepsBothStreams", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		spec := b.spec("echo to-stdout; echo to-stderr >&2; exit 3")
		c, err := b.rt.Start(t.Context(), b.node, spec)
		require.NoError(t, err)
		require.False(t, c.StartedAt().IsZero())
		exit, err := c.Wait(t.Context())
		require.NoError(t, err)
		require.Equal(t, 3, exit.Code)
		require.False(t, exit.FinishedAt.Before(exit.StartedAt))
		logs, truncated, err := b.rt.Logs(t.Context(), b.node, spec.Name, 1<<20)
		require.NoError(t, err)
		require.False(t, truncated)
		require.Contains(t, string(logs), "to-stdout\n")
		require.Contains(t, string(logs), "to-stderr\n")
		require.NoError(t, b.rt.Remove(t.Context(), b.node, spec.Name))
		require.Empty(t, dockertest.Containers(t, b.engine, b.broker))
		require.NoError(t, b.rt.Remove(t.Context(), b.node, spec.Name), "removing a missing container is not an error")
	})

	t.Run("LogsAreCapped", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		spec := b.spec("for i in $(seq 1 1000); do echo line-$i; done")
		c, err := b.rt.Start(t.Context(), b.node, spec)
		require.NoError(t, err)
		_, err = c.Wait(t.Context())
		require.NoError(t, err)
		logs, truncated, err := b.rt.Logs(t.Context(), b.node, spec.Name, 100)
		require.NoError(t, err)
		require.True(t, truncated)
		require.Len(t, logs, 100)
		require.True(t, strings.HasPrefix(string(logs), "line-1\n"))
	})

	t.Run("MissingImageNamesTheImage", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		spec := b.spec("true")
		spec.Image = "cb-test/does-not-exist-" + uuid.NewString()[:8] + ":v1"
		_, err := b.rt.Start(t.Context(), b.node, spec)
		var se *runtime.StartError
		require.ErrorAs(t, err, &se)
		require.Contains(t, se.Error(), spec.Image)
	})

	t.Run("ARepeatedStartAdoptsTheContainer", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		spec := b.spec("sleep 1; echo once")
		first, err := b.rt.Start(t.Context(), b.node, spec)
		require.NoError(t, err)
		again, err := b.rt.Start(t.Context(), b.node, spec)
		require.NoError(t, err)
		require.Equal(t, first.ID(), again.ID())
		exit, err := again.Wait(t.Context())
		require.NoError(t, err)
		require.Equal(t, 0, exit.Code)
		require.Len(t, dockertest.Containers(t, b.engine, b.broker), 1)
		// Attaching after the exit reports the exit without waiting.
		adopted, err := b.rt.Attach(t.Context(), b.node, spec)
		require.NoError(t, err)
		exit, err = adopted.Wait(t.Context())
		require.NoError(t, err)
		require.Equal(t, 0, exit.Code)
	})

	t.Run("AttachToAMissingContainer", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		_, err := b.rt.Attach(t.Context(), b.node, b.spec("true"))
		require.ErrorIs(t, err, runtime.ErrNotFound)
	})

	t.Run("NeverRemovesForeignContainers", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		name := "foreign-" + uuid.NewString()[:8]
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		created, err := b.engine.Client.ContainerCreate(ctx, &container.Config{Image: dockertest.Image, Cmd: []string{"true"}}, nil, nil, nil, name)
		require.NoError(t, err)
		t.Cleanup(func() {
			_ = b.engine.Client.ContainerRemove(context.Background(), created.ID, container.RemoveOptions{Force: true})
		})
		require.ErrorContains(t, b.rt.Remove(ctx, b.node, name), "does not carry the broker's labels")
		require.ErrorContains(t, b.rt.Kill(ctx, b.node, name), "does not carry the broker's labels")
		require.ErrorContains(t, b.rt.Stop(ctx, b.node, name, time.Second), "does not carry the broker's labels")
		_, err = b.engine.Client.ContainerInspect(ctx, created.ID)
		require.NoError(t, err, "the foreign container must still exist")
		// Nor is it adopted as an attempt's container.
		spec := b.spec("true")
		spec.Name = name
		_, err = b.rt.Start(ctx, b.node, spec)
		require.ErrorContains(t, err, "did not create")
	})

	t.Run("PingAnUnreachableNode", func(t *testing.T) {
		t.Parallel()
		rt := docker.New(docker.Config{})
		t.Cleanup(func() { _ = rt.Close() })
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		require.Error(t, rt.Ping(ctx, runtime.Node{ID: "x", Hostname: "tcp://127.0.0.1:1"}))
	})
}

func TestStartTimesOutOnAHangingNode(t *testing.T) {
	t.Parallel()
	engine := dockertest.Engines(t, 1)[0]
	hostname := dockertest.HangingEngine(t, engine, func(r *http.Request) bool {
		return strings.HasSuffix(r.URL.Path, "/containers/create")
	})
	rt := docker.New(docker.Config{StartTimeout: time.Second})
	t.Cleanup(func() { _ = rt.Close() })
	node := runtime.Node{ID: "slow", Hostname: hostname}
	require.NoError(t, rt.Ping(t.Context(), node), "the node answers its pings")
	id := uuid.NewString()
	start := time.Now()
	_, err := rt.Start(t.Context(), node, runtime.Spec{TaskID: id, Attempt: 1, Name: "hang-" + id[:12] + "-a1", Image: dockertest.Image, Cmd: "true"})
	var se *runtime.StartError
	require.ErrorAs(t, err, &se)
	require.True(t, se.NodeFault, "a hanging node is the node's fault")
	require.Less(t, time.Since(start), 10*time.Second, "the attempt fails instead of starting for ever")
}

func TestTLSNode(t *testing.T) {
	t.Parallel()
	engine := dockertest.Engines(t, 1)[0]
	hostname, certDir := dockertest.TLSEngine(t, engine)
	broker := "test-" + uuid.NewString()[:8]
	dockertest.CleanupBroker(t, []dockertest.Engine{engine}, broker)
	node := runtime.Node{ID: "tls", Hostname: hostname}

	withCerts := docker.New(docker.Config{CertPath: certDir})
	t.Cleanup(func() { _ = withCerts.Close() })
	require.NoError(t, withCerts.Ping(t.Context(), node))
	id := uuid.NewString()
	spec := runtime.Spec{
		TaskID: id, Attempt: 1, Name: "tls-" + id[:12] + "-a1", Image: dockertest.Image, Cmd: "echo over tls",
		Labels: map[string]string{runtime.LabelBroker: broker, runtime.LabelTask: id, runtime.LabelAttempt: "1"},
	}
	c, err := withCerts.Start(t.Context(), node, spec)
	require.NoError(t, err)
	exit, err := c.Wait(t.Context())
	require.NoError(t, err)
	require.Zero(t, exit.Code)
	logs, _, err := withCerts.Logs(t.Context(), node, spec.Name, 1<<10)
	require.NoError(t, err)
	require.Equal(t, "over tls\n", string(logs))
	require.NoError(t, withCerts.Remove(t.Context(), node, spec.Name))

	without := docker.New(docker.Config{})
	t.Cleanup(func() { _ = without.Close() })
	require.ErrorContains(t, without.Ping(t.Context(), node), "no client certificate")

	// A client certificate the node's CA did not sign is refused.
	_, otherCerts := dockertest.TLSEngine(t, engine)
	wrong := docker.New(docker.Config{CertPath: otherCerts})
	t.Cleanup(func() { _ = wrong.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	require.Error(t, wrong.Ping(ctx, node))
}
