package app_test

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/cmd/internal/app"
	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/dockertest"
	"github.com/cbroker/broker/internal/natstest"
	"github.com/cbroker/broker/projections"
)

// taskEvents reads a task's accepted events from the log, with their times
// and payloads.
func (b *broker) taskEvents(t *testing.T, id string) []events.Envelope {
	t.Helper()
	accepted := map[uint64]bool{}
	for _, a := range b.history(t, id) {
		accepted[a.Seq] = a.Outcome.Accepted
	}
	var out []events.Envelope
	for _, env := range natstest.Events(t, b.app.JetStream(), events.AggregateSubjects(events.AggregateTask, id)) {
		if accepted[env.Seq] {
			out = append(out, env)
		}
	}
	return out
}

func payload[T events.Payload](t *testing.T, env events.Envelope) T {
	t.Helper()
	p, err := env.Payload()
	require.NoError(t, err)
	v, ok := p.(T)
	require.True(t, ok)
	return v
}

func TestRetryBackoffTiming(t *testing.T) {
	t.Parallel()
	b, es := setup(t, 1, func(c *app.Config) {
		c.RetryBackoffMin, c.RetryBackoffMax = 400*time.Millisecond, 1200*time.Millisecond
	})
	b.addNode(t, es[0], map[string]int{"cpu": 2})
	var tk task
	require.Equal(t, http.StatusOK, b.do(t, http.MethodPost, "/tasks", map[string]any{
		"name": "backoff", "image": dockertest.Image, "cmd": "exit 1", "execution_type": "cpu", "max_retries": 3,
	}, &tk))
	require.Equal(t, "failed", b.waitStatus(t, tk.UUID, "failed").Status)

	var (
		retries  []events.Envelope
		reserved []events.Envelope
	)
	for _, env := range b.taskEvents(t, tk.UUID) {
		switch env.Type {
		case events.TypeTaskRetrying:
			retries = append(retries, env)
		case events.TypeTaskSlotReserved:
			reserved = append(reserved, env)
		}
	}
	require.Len(t, retries, 3)
	require.Len(t, reserved, 4)
	// The pause doubles from the minimum, capped at the maximum; half of it
	// is fixed and half jitter: [200,400], [400,800], [600,1200] ms.
	bounds := [][2]time.Duration{{200 * time.Millisecond, 400 * time.Millisecond}, {400 * time.Millisecond, 800 * time.Millisecond}, {600 * time.Millisecond, 1200 * time.Millisecond}}
	for i, env := range retries {
		r := payload[*events.TaskRetrying](t, env)
		require.Equal(t, events.CauseExitCode, r.Cause)
		pause := r.NotBefore.Sub(env.Time)
		require.GreaterOrEqual(t, pause, bounds[i][0]-time.Millisecond, "retry %d", i+1)
		require.LessOrEqual(t, pause, bounds[i][1]+time.Millisecond, "retry %d", i+1)
		require.False(t, reserved[i+1].Time.Before(r.NotBefore), "attempt %d reserved before its not-before time", i+2)
		t.Logf("retry %d: pause %s, reserved %s after not-before", i+1, pause, reserved[i+1].Time.Sub(r.NotBefore))
	}
}

func TestTaskTimeout(t *testing.T) {
	t.Parallel()
	b, es := setup(t, 1)
	b.addNode(t, es[0], map[string]int{"cpu": 1})
	var tk task
	require.Equal(t, http.StatusOK, b.do(t, http.MethodPost, "/tasks", map[string]any{
		"name": "slow", "image": dockertest.Image, "cmd": "trap 'echo stopping; exit 143' TERM; while true; do sleep 0.1; done",
		"execution_type": "cpu", "max_retries": 1, "timeout": 1,
	}, &tk))
	done := b.waitStatus(t, tk.UUID, "failed", "completed")
	require.Equal(t, "failed", done.Status)
	require.Equal(t, new(143), done.ExitCode, "stopped with SIGTERM first")
	require.Contains(t, *done.Error, "longer than the task's timeout (1s)")
	var causes []string
	for _, env := range b.taskEvents(t, tk.UUID) {
		switch env.Type {
		case events.TypeTaskRetrying:
			causes = append(causes, payload[*events.TaskRetrying](t, env).Cause)
		case events.TypeTaskFailed:
			causes = append(causes, payload[*events.TaskFailed](t, env).Cause)
		}
	}
	require.Equal(t, []string{events.CauseTimeout, events.CauseTimeout}, causes)
	require.Equal(t, "stopping\n", b.logs(t, tk.UUID))
}

// TestFailover kills a node's engine in the middle of a task: the attempt is
// requeued without using up a retry and finishes on the other node. When
// the engine comes back, the stale attempt's container is fenced: killed if
// it still runs, its exit recorded as stale, removed. Without
// --live-restore the restarted engine has killed the container itself;
// with it, the container ran on through the outage, as on a partitioned
// node, and the broker kills it.
func TestFailover(t *testing.T) {
	t.Parallel()
	for name, liveRestore := range map[string]bool{"EngineRestartKillsItsContainers": false, "LiveRestoreKeepsThemRunning": true} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			testFailover(t, liveRestore)
		})
	}
}

func testFailover(t *testing.T, liveRestore bool) {
	shared := dockertest.Engines(t, 1)[0]
	var options []string
	if liveRestore {
		options = append(options, "--live-restore")
	}
	private := dockertest.StartPrivate(t, shared, options...)
	// Default health settings: probes every 1 s, down after 5 s.
	b := startBroker(t, t.TempDir(), func(c *app.Config) { c.HealthInterval = 0 })
	dockertest.CleanupBroker(t, []dockertest.Engine{shared, private.Engine}, b.app.BrokerID)
	doomed := b.addNode(t, private.Engine, map[string]int{"cpu": 1})
	survivor := b.addNode(t, shared, map[string]int{"cpu": 1})
	require.Equal(t, http.StatusOK, b.post(t, http.MethodPost, "/nodes/"+survivor+"/reject_new_tasks"))

	// Long enough that with --live-restore the stale container still runs
	// when its engine is back (failover ~6 s, engine restart ~3 s).
	tk := b.submit(t, "survives", dockertest.Image, "sleep 20; echo finished", "cpu")
	b.waitStatus(t, tk.UUID, "started")
	require.Equal(t, doomed, b.nodeOf(t, tk.UUID))
	require.Equal(t, http.StatusOK, b.post(t, http.MethodPost, "/nodes/"+survivor+"/accept_new_tasks"))

	killed := time.Now()
	private.Kill()
	require.Eventually(t, func() bool {
		var ok bool
		b.app.Replica.Read(func(s *projections.State) {
			task := s.Tasks[tk.UUID]
			ok = task.Attempt == 2 && task.Status == projections.TaskStarted
		})
		return ok
	}, 30*time.Second, 20*time.Millisecond)
	failover := time.Since(killed)
	t.Logf("failover (live restore %t): the engine was killed %s before the task's new container ran on the other node", liveRestore, failover)
	for _, env := range b.taskEvents(t, tk.UUID) {
		t.Logf("  %s after the kill: %s", env.Time.Sub(killed).Round(time.Millisecond), env.Type)
	}
	b.app.Replica.ReadSince(0, func(_ *projections.State, applied []projections.Applied, _ bool) {
		for _, a := range applied {
			if a.AggregateID == doomed && a.Outcome.Accepted {
				t.Logf("  node event %s", a.Type)
			}
		}
	})
	require.Less(t, failover, 10*time.Second, "failover within 10 s with default settings")
	require.Equal(t, survivor, b.nodeOf(t, tk.UUID))

	private.Start()
	done := b.waitStatus(t, tk.UUID, "completed", "failed")
	require.Equal(t, "completed", done.Status)
	require.Equal(t, new(0), done.ExitCode, "the exit code is the new attempt's")
	require.Zero(t, done.TryCount, "a node loss does not use up a retry")
	require.Equal(t, "finished\n", b.logs(t, tk.UUID))
	require.Eventually(t, func() bool {
		return accepted(b.history(t, tk.UUID), events.TypeTaskStaleAttemptExited) == 1
	}, 30*time.Second, 50*time.Millisecond, "the stale attempt's end is recorded once")
	for _, env := range b.taskEvents(t, tk.UUID) {
		if env.Type == events.TypeTaskStaleAttemptExited {
			stale := payload[*events.StaleAttemptExited](t, env)
			require.Equal(t, 1, stale.Attempt)
			require.Equal(t, liveRestore, stale.Running, "was the stale container still running when found")
		}
	}
	require.Eventually(t, func() bool { return len(dockertest.TaskContainers(t, private.Engine, tk.UUID)) == 0 },
		30*time.Second, 50*time.Millisecond, "the stale container is removed")
	h := b.history(t, tk.UUID)
	require.Equal(t, 1, accepted(h, events.TypeTaskCompleted))
	require.Equal(t, 1, accepted(h, events.TypeTaskContainerExited), "only the current attempt's exit counts")
}
