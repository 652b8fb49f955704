package app_test

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/cmd/internal/app"
	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/dockertest"
	"github.com/cbroker/broker/internal/natstest"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/actor"
	"github.com/cbroker/broker/services/docker"
	"github.com/cbroker/broker/services/runner"
	"github.com/cbroker/broker/services/runtime"
	"github.com/cbroker/broker/services/scheduler"
)

// TestSplitBrainIsHarmless runs a broker and, beside it on the same log, a
// rogue scheduler and a rogue runner that hold no lease and own every node,
// as after a partition or a paused leader. Their keys are namespaced so that
// JetStream's duplicate window does not hide their proposals: every one
// reaches the fold. No slot may be double-booked, no attempt may get a
// second container, and no task may end twice.
func TestSplitBrainIsHarmless(t *testing.T) {
	t.Parallel()
	es := dockertest.Engines(t, 2)
	srv := natstest.Run(t, "")
	b := runApp(t, app.Config{
		Listen: "127.0.0.1:0", NATSURL: srv.Server.ClientURL(), LocalNode: app.LocalNodeFalse,
		HealthInterval: 200 * time.Millisecond, Instance: "main", RetryBackoffMin: -1, SnapshotEvery: -1,
	})
	dockertest.CleanupBroker(t, es, b.app.BrokerID)
	for _, e := range es {
		b.addNode(t, e, map[string]int{"cpu": 2})
	}

	// The rogue pair: its own fold, writers and Docker client.
	rogue, err := projections.NewReplica(projections.ReplicaConfig{JetStream: srv.JS})
	require.NoError(t, err)
	writer := func(role string) *actor.Writer {
		return &actor.Writer{JS: srv.JS, Actor: "rogue/" + role, KeyPrefix: "rogue:"}
	}
	sched, err := scheduler.New(scheduler.Config{Replica: rogue, Writer: writer("scheduler")})
	require.NoError(t, err)
	rt := docker.New(docker.Config{})
	t.Cleanup(func() { _ = rt.Close() })
	run, err := runner.New(runner.Config{
		Replica: rogue, Writer: writer("runner"), JetStream: srv.JS, Runtimes: runtime.Set{rt}, BrokerID: b.app.BrokerID,
	})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, c := range []func(context.Context) error{rogue.Run, sched.Run, run.Run} {
		wg.Go(func() { require.NoError(t, c(ctx)) })
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	<-rogue.Ready()

	start := time.Now()
	var ids []string
	for i := range 16 {
		var tk task
		code := b.do(t, http.MethodPost, "/tasks", map[string]any{
			"name": fmt.Sprintf("split-%d", i), "image": dockertest.Image, "execution_type": "cpu", "max_retries": 1,
			"cmd": fmt.Sprintf("sleep 0.2; exit %d", i%2),
		}, &tk)
		require.Equal(t, http.StatusOK, code)
		ids = append(ids, tk.UUID)
	}
	for i, id := range ids {
		want := map[int]string{0: "completed", 1: "failed"}[i%2]
		if got := b.waitStatus(t, id, "completed", "failed", "error"); got.Status != want {
			_, _, raw := b.raw(t, http.MethodGet, "/tasks/"+id+"/events", nil, nil)
			t.Fatalf("task %d is %s, want %s; its timeline: %s", i, got.Status, want, raw)
		}
	}

	// Fold the log again, envelope by envelope, and count verdicts.
	envs := natstest.Events(t, srv.JS)
	st := projections.NewState()
	type attempt struct {
		task string
		n    int
	}
	reserved, claimed, started, exited := map[attempt]int{}, map[attempt]int{}, map[attempt]int{}, map[attempt]int{}
	ended := map[string]int{}
	rogueStored, rejected := 0, 0
	for i, env := range envs {
		env.Seq = uint64(i + 1)
		out := st.Apply(env)
		if strings.HasPrefix(env.Actor, "rogue/") {
			rogueStored++
		}
		if !out.Accepted {
			rejected++
			continue
		}
		p, err := env.Payload()
		require.NoError(t, err)
		switch p := p.(type) {
		case *events.SlotReserved:
			reserved[attempt{p.TaskID, p.Attempt}]++
		case *events.AttemptClaimed:
			claimed[attempt{p.TaskID, p.Attempt}]++
		case *events.ContainerStarted:
			started[attempt{p.TaskID, p.Attempt}]++
		case *events.ContainerExited:
			exited[attempt{p.TaskID, p.Attempt}]++
		case *events.TaskCompleted, *events.TaskFailed:
			ended[env.AggregateID]++
		}
	}
	require.Positive(t, rogueStored, "the rogue pair proposed")
	require.Positive(t, rejected, "the fold rejected conflicting proposals")
	for i, id := range ids {
		require.Equal(t, 1, ended[id], "task %d ended once", i)
		for n := 1; n <= 1+i%2; n++ {
			a := attempt{id, n}
			require.Equal(t, 1, reserved[a], "task %d attempt %d reserved once", i, n)
			// A claim may be taken over (the broker's node lease can lapse
			// under load and be taken again): at least one, and the
			// containers below say whether anything ran twice.
			require.Positive(t, claimed[a], "task %d attempt %d claimed", i, n)
			if claimed[a] > 1 {
				t.Logf("task %d attempt %d: %d accepted claims (taken over or withdrawn)", i, n, claimed[a])
			}
			require.Equal(t, 1, started[a], "task %d attempt %d started once", i, n)
			require.Equal(t, 1, exited[a], "task %d attempt %d exited once", i, n)
		}
	}
	// Docker created and started one container per attempt, once: only the
	// claimant creates, and the other runner only follows what it started.
	created, begun := map[string]int{}, map[string]int{}
	for _, e := range es {
		out, err := exec.CommandContext(t.Context(), "docker", "-H", e.Hostname, "events",
			"--since", start.Add(-time.Second).Format(time.RFC3339Nano), "--until", time.Now().Format(time.RFC3339Nano),
			"--filter", "event=create", "--filter", "event=start", "--filter", "label=io.cbroker.broker="+b.app.BrokerID,
			"--format", "{{.Action}} {{.Actor.Attributes.name}}").Output()
		require.NoError(t, err)
		for line := range strings.Lines(string(out)) {
			action, name, _ := strings.Cut(strings.TrimSpace(line), " ")
			map[string]map[string]int{"create": created, "start": begun}[action][name]++
		}
	}
	require.Len(t, created, 16+8, "one container per attempt")
	require.Equal(t, created, begun, "each container started once")
	for name, n := range created {
		require.Equal(t, 1, n, "container %s created %d times", name, n)
	}
	t.Logf("%d events, %d from the rogue pair, %d rejected by the fold", len(envs), rogueStored, rejected)
}
