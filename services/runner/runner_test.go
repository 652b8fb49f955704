package runner_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/dockertest"
	"github.com/cbroker/broker/internal/natstest"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/actor"
	"github.com/cbroker/broker/services/docker"
	"github.com/cbroker/broker/services/runner"
	"github.com/cbroker/broker/services/runtime"
)

type bundle struct {
	srv     *natstest.Server
	replica *projections.Replica
	writer  *actor.Writer
	rt      *docker.Runtime
	engine  dockertest.Engine
	broker  string
	nodeID  string
}

func setup(t *testing.T) *bundle {
	t.Helper()
	engines := dockertest.Engines(t, 1)
	b := &bundle{srv: natstest.Run(t, ""), engine: engines[0], broker: "test-" + uuid.NewString()[:8], nodeID: uuid.NewString()}
	dockertest.CleanupBroker(t, engines, b.broker)
	b.rt = docker.New(docker.Config{})
	t.Cleanup(func() { _ = b.rt.Close() })
	var err error
	b.replica, err = projections.NewReplica(projections.ReplicaConfig{JetStream: b.srv.JS})
	require.NoError(t, err)
	b.writer = &actor.Writer{JS: b.srv.JS, Actor: "test"}
	run(t, b.replica.Run)
	b.propose(t, &events.NodeRegistered{NodeID: b.nodeID, Hostname: b.engine.Hostname, Slots: map[string]int{"cpu": 2}})
	b.propose(t, &events.NodeUp{NodeID: b.nodeID})
	return b
}

// run runs a component until the test ends.
func run(t *testing.T, f func(context.Context) error) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, f(ctx)) })
	stop := func() { cancel(); wg.Wait() }
	t.Cleanup(stop)
	return stop
}

func (b *bundle) propose(t *testing.T, p events.Payload) {
	t.Helper()
	acks, err := b.writer.Propose(t.Context(), actor.Proposal{Key: uuid.NewString(), Payload: p})
	require.NoError(t, err)
	out, err := b.replica.WaitSeq(t.Context(), acks[0].Seq)
	require.NoError(t, err)
	require.Truef(t, out.Accepted, "%s rejected: %s", out.Type, out.Reason)
}

// reserve submits a task and reserves its first attempt, as the scheduler
// would.
func (b *bundle) reserve(t *testing.T, cmd string) (string, string) {
	t.Helper()
	id := uuid.NewString()
	b.propose(t, &events.TaskSubmitted{TaskID: id, Name: "runner test", Image: dockertest.Image, Cmd: cmd, ExecutionType: "cpu"})
	name := projections.ContainerName("runner test", id, 1)
	b.propose(t, &events.SlotReserved{TaskID: id, Attempt: 1, NodeID: b.nodeID, SlotID: "cpu-1", ContainerName: name})
	return id, name
}

func (b *bundle) startRunner(t *testing.T, opts ...func(*runner.Config)) context.CancelFunc {
	t.Helper()
	cfg := runner.Config{
		Replica: b.replica, Writer: b.writer, JetStream: b.srv.JS,
		Runtimes: runtime.Set{b.rt}, BrokerID: b.broker, RetryDelay: 100 * time.Millisecond, StopGrace: 2 * time.Second,
	}
	for _, o := range opts {
		o(&cfg)
	}
	r, err := runner.New(cfg)
	require.NoError(t, err)
	return run(t, r.Run)
}

// reserveClaimed submits a task, reserves its first attempt and claims it
// for another runner, in one pipelined append: the runner under test sees
// the claim before it could place its own.
func (b *bundle) reserveClaimed(t *testing.T, cmd, claimant string) (string, string) {
	t.Helper()
	id := uuid.NewString()
	name := projections.ContainerName("runner test", id, 1)
	acks, err := b.writer.Propose(t.Context(),
		actor.Proposal{Key: uuid.NewString(), Payload: &events.TaskSubmitted{TaskID: id, Name: "runner test", Image: dockertest.Image, Cmd: cmd, ExecutionType: "cpu"}},
		actor.Proposal{Key: uuid.NewString(), Payload: &events.SlotReserved{TaskID: id, Attempt: 1, NodeID: b.nodeID, SlotID: "cpu-1", ContainerName: name}},
		actor.Proposal{Key: uuid.NewString(), Payload: &events.AttemptClaimed{TaskID: id, Attempt: 1, NodeID: b.nodeID, Runner: claimant}},
	)
	require.NoError(t, err)
	for _, a := range acks {
		out, err := b.replica.WaitSeq(t.Context(), a.Seq)
		require.NoError(t, err)
		require.Truef(t, out.Accepted, "%s rejected: %s", out.Type, out.Reason)
	}
	return id, name
}

// hangingStart is a runtime whose Start, while hang is set, waits for its
// context to end (a node whose create hangs).
type hangingStart struct {
	runtime.Runtime
	hang    atomic.Bool
	started chan struct{}
}

func (h *hangingStart) Start(ctx context.Context, node runtime.Node, spec runtime.Spec) (runtime.Container, error) {
	if h.hang.Load() {
		h.started <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return h.Runtime.Start(ctx, node, spec)
}

// electingJetStream times out the first openings of an object store, as
// while its stream elects a leader.
type electingJetStream struct {
	jetstream.JetStream
	failures atomic.Int32
}

func (j *electingJetStream) ObjectStore(ctx context.Context, bucket string) (jetstream.ObjectStore, error) {
	if j.failures.Add(-1) >= 0 {
		return nil, fmt.Errorf("opening %s: %w", bucket, context.DeadlineExceeded)
	}
	return j.JetStream.ObjectStore(ctx, bucket)
}

// claims returns the runners whose claims on a task the fold accepted, in
// order, and how many it refused.
func (b *bundle) claims(t *testing.T, id string) (accepted []string, refused int) {
	t.Helper()
	envs := natstest.Events(t, b.srv.JS)
	s := projections.NewState()
	for i, env := range envs {
		env.Seq = uint64(i + 1)
		out := s.Apply(env)
		if env.AggregateID != id || env.Type != events.TypeTaskAttemptClaimed {
			continue
		}
		if !out.Accepted {
			refused++
			continue
		}
		p, err := env.Payload()
		require.NoError(t, err)
		accepted = append(accepted, p.(*events.AttemptClaimed).Runner)
	}
	return accepted, refused
}

func (b *bundle) waitTask(t *testing.T, id string, cond func(*projections.Task) bool) *projections.Task {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var task projections.Task
	require.NoError(t, b.replica.WaitFor(ctx, func(s *projections.State) bool {
		if tk := s.Tasks[id]; tk != nil && cond(tk) {
			task = *tk
			return true
		}
		return false
	}))
	return &task
}

// history returns the accepted event types of a task, in order.
func (b *bundle) history(t *testing.T, id string) []events.Type {
	t.Helper()
	var types []events.Type
	b.replica.ReadSince(0, func(_ *projections.State, applied []projections.Applied, complete bool) {
		require.True(t, complete)
		for _, a := range applied {
			if a.AggregateID == id && a.Outcome.Accepted {
				types = append(types, a.Type)
			}
		}
	})
	return types
}

// ranAndArchived is the history of a task whose attempt ran, archived its
// logs and exited.
var ranAndArchived = []events.Type{
	events.TypeTaskSubmitted, events.TypeTaskSlotReserved, events.TypeTaskAttemptClaimed, events.TypeTaskContainerStarted,
	events.TypeTaskLogsArchived, events.TypeTaskContainerExited,
}

func ended(tk *projections.Task) bool { return tk.AttemptEnded }

func running(tk *projections.Task) bool { return tk.Status == projections.TaskStarted }

func TestRunner(t *testing.T) {
	t.Parallel()

	t.Run("RunsAReservationArchivesLogsAndRemovesTheContainer", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.startRunner(t)
		id, _ := b.reserve(t, "echo out; echo err >&2; exit 4")
		task := b.waitTask(t, id, ended)
		require.Equal(t, new(4), task.ExitCode)
		require.False(t, task.StartedAt.IsZero())
		require.Equal(t, ranAndArchived, b.history(t, id))

		logs, err := (&runner.LogReader{Replica: b.replica, JS: b.srv.JS, Runtimes: runtime.Set{b.rt}}).TaskLogs(t.Context(), id)
		require.NoError(t, err)
		// Docker keeps stdout and stderr in separate pipes: both are there,
		// in no guaranteed order.
		require.ElementsMatch(t, []string{"out", "err"}, strings.Fields(string(logs)))
		require.Eventually(t, func() bool { return len(dockertest.Containers(t, b.engine, b.broker)) == 0 }, 10*time.Second, 50*time.Millisecond)
	})

	t.Run("ArchivingLogsOutlastsALogStoreOutage", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.startRunner(t)
		id, name := b.reserve(t, "sleep 3; echo kept")
		b.waitTask(t, id, running)
		// The log store goes away (as while a cluster elects its leader)
		// before the container exits, and comes back a while after.
		require.NoError(t, b.srv.JS.DeleteObjectStore(t.Context(), events.ObjectStoreLogs))
		require.Eventually(t, func() bool {
			for _, c := range dockertest.TaskContainers(t, b.engine, id) {
				if slices.Contains(c.Names, "/"+name) && c.State == "exited" {
					return true
				}
			}
			return false
		}, 30*time.Second, 50*time.Millisecond)
		time.Sleep(time.Second) // ten retries
		var exited bool
		b.replica.Read(func(s *projections.State) { exited = s.Tasks[id].AttemptEnded })
		require.False(t, exited, "the exit waits for its logs")
		_, err := b.srv.JS.CreateObjectStore(t.Context(), events.ObjectStoreConfigs(1)[0])
		require.NoError(t, err)
		b.waitTask(t, id, ended)
		require.Equal(t, ranAndArchived, b.history(t, id))
		logs, err := (&runner.LogReader{Replica: b.replica, JS: b.srv.JS, Runtimes: runtime.Set{b.rt}}).TaskLogs(t.Context(), id)
		require.NoError(t, err)
		require.Equal(t, "kept\n", string(logs))
	})

	t.Run("LiveLogsWhileRunning", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.startRunner(t)
		id, _ := b.reserve(t, "echo early; sleep 30")
		b.waitTask(t, id, running)
		reader := &runner.LogReader{Replica: b.replica, JS: b.srv.JS, Runtimes: runtime.Set{b.rt}}
		require.EventuallyWithT(t, func(c *assertT) {
			logs, err := reader.TaskLogs(t.Context(), id)
			require.NoError(c, err)
			require.Equal(c, "early\n", string(logs))
		}, 10*time.Second, 50*time.Millisecond)
		_, err := reader.TaskLogs(t.Context(), "no-such-task")
		require.ErrorIs(t, err, runner.ErrTaskNotFound)
	})

	t.Run("AdoptsAContainerCreatedBeforeARestart", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		id, name := b.reserve(t, "sleep 1; echo adopted")
		// A previous runner created and started the container, then died
		// before reporting anything.
		_, err := b.rt.Start(t.Context(), runtime.Node{ID: b.nodeID, Hostname: b.engine.Hostname}, runtime.Spec{
			TaskID: id, Attempt: 1, Name: name, Image: dockertest.Image, Cmd: "sleep 1; echo adopted",
			Labels: map[string]string{runtime.LabelBroker: b.broker, runtime.LabelTask: id, runtime.LabelAttempt: "1"},
		})
		require.NoError(t, err)
		b.startRunner(t)
		task := b.waitTask(t, id, ended)
		require.Equal(t, new(0), task.ExitCode)
		require.Equal(t, ranAndArchived, b.history(t, id))
	})

	t.Run("AdoptsARunningContainerAfterARestart", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		stop := b.startRunner(t)
		id, _ := b.reserve(t, "sleep 2; echo survived")
		b.waitTask(t, id, running)
		stop() // the container keeps running
		require.Len(t, dockertest.Containers(t, b.engine, b.broker), 1)
		b.startRunner(t)
		task := b.waitTask(t, id, ended)
		require.Equal(t, new(0), task.ExitCode)
		logs, err := (&runner.LogReader{Replica: b.replica, JS: b.srv.JS, Runtimes: runtime.Set{b.rt}}).TaskLogs(t.Context(), id)
		require.NoError(t, err)
		require.Equal(t, "survived\n", string(logs))
	})

	t.Run("AVanishedContainerIsReported", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		stop := b.startRunner(t)
		id, name := b.reserve(t, "sleep 30")
		b.waitTask(t, id, running)
		stop()
		require.NoError(t, b.rt.Remove(t.Context(), runtime.Node{Hostname: b.engine.Hostname}, name))
		b.startRunner(t)
		task := b.waitTask(t, id, ended)
		require.Equal(t, new(-1), task.ExitCode)
		require.Contains(t, task.Error, "is missing on node")
	})

	t.Run("KillRequestKillsTheContainer", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.startRunner(t)
		id, _ := b.reserve(t, "sleep 60")
		b.waitTask(t, id, running)
		b.propose(t, &events.KillRequested{TaskID: id, Attempt: 1})
		task := b.waitTask(t, id, ended)
		require.Equal(t, new(137), task.ExitCode, "SIGKILL")
	})

	t.Run("CancelStopsTheContainerWithSIGTERMFirst", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.startRunner(t)
		id, _ := b.reserve(t, "trap 'echo got TERM; exit 143' TERM; while true; do sleep 0.1; done")
		b.waitTask(t, id, running)
		b.propose(t, &events.CancelRequested{TaskID: id})
		task := b.waitTask(t, id, ended)
		require.Equal(t, new(143), task.ExitCode, "the task handled SIGTERM")
		logs, err := (&runner.LogReader{Replica: b.replica, JS: b.srv.JS, Runtimes: runtime.Set{b.rt}}).TaskLogs(t.Context(), id)
		require.NoError(t, err)
		require.Equal(t, "got TERM\n", string(logs))
	})

	t.Run("CancelKillsAContainerThatIgnoresSIGTERMAfterTheGrace", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.startRunner(t)
		id, _ := b.reserve(t, "sleep 60")
		b.waitTask(t, id, running)
		b.propose(t, &events.CancelRequested{TaskID: id})
		task := b.waitTask(t, id, ended)
		require.Equal(t, new(137), task.ExitCode, "sh as PID 1 ignores SIGTERM; SIGKILL follows the grace")
	})

	t.Run("ReconcileRemovesLeftoversAndNeverForeignContainers", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		node := runtime.Node{ID: b.nodeID, Hostname: b.engine.Hostname}
		// A labelled container of an attempt that ended (its broker died
		// before removing it), and a container the broker did not create.
		id, name := b.reserve(t, "true")
		c, err := b.rt.Start(t.Context(), node, runtime.Spec{
			TaskID: id, Attempt: 1, Name: name, Image: dockertest.Image, Cmd: "true",
			Labels: map[string]string{runtime.LabelBroker: b.broker, runtime.LabelTask: id, runtime.LabelAttempt: "1"},
		})
		require.NoError(t, err)
		_, err = c.Wait(t.Context())
		require.NoError(t, err)
		b.propose(t, &events.ContainerStarted{TaskID: id, Attempt: 1, NodeID: b.nodeID, ContainerName: name})
		b.propose(t, &events.ContainerExited{TaskID: id, Attempt: 1, NodeID: b.nodeID})
		b.propose(t, &events.TaskCompleted{TaskID: id, Attempt: 1})
		foreign := "foreign-" + uuid.NewString()[:8]
		created, err := b.engine.Client.ContainerCreate(t.Context(), &container.Config{Image: dockertest.Image, Cmd: []string{"sleep", "30"}}, nil, nil, nil, foreign)
		require.NoError(t, err)
		t.Cleanup(func() {
			_ = b.engine.Client.ContainerRemove(context.Background(), created.ID, container.RemoveOptions{Force: true})
		})
		require.NoError(t, b.engine.Client.ContainerStart(t.Context(), created.ID, container.StartOptions{}))

		b.startRunner(t) // reconciles every node at start
		require.Eventually(t, func() bool { return len(dockertest.TaskContainers(t, b.engine, id)) == 0 }, 20*time.Second, 50*time.Millisecond,
			"the leftover is removed")
		info, err := b.engine.Client.ContainerInspect(t.Context(), created.ID)
		require.NoError(t, err, "the foreign container is never touched")
		require.True(t, info.State.Running)
	})

	t.Run("LeavesAnAttemptToTheRunnerThatClaimedIt", func(t *testing.T) {
		// Two runners believe they own the node (a split brain). The other
		// claimed the attempt first: this one must never create its
		// container, which could come after the other ran and removed it.
		t.Parallel()
		b := setup(t)
		b.startRunner(t)
		warm, _ := b.reserve(t, "true")
		b.waitTask(t, warm, ended) // the runner has owned the node since before the claim
		id, name := b.reserveClaimed(t, "true", "other/runner")
		never := func() bool {
			_, err := b.engine.Client.ContainerInspect(t.Context(), name)
			return err == nil
		}
		require.Never(t, never, 2*time.Second, 20*time.Millisecond, "a container was created for an attempt another runner claimed")
		accepted, _ := b.claims(t, id)
		require.Equal(t, []string{"other/runner"}, accepted)
		var tk projections.Task
		b.replica.Read(func(s *projections.State) { tk = *s.Tasks[id] })
		require.Equal(t, projections.TaskStarting, tk.Status)
		require.Equal(t, "other/runner", tk.Claim)
	})

	t.Run("TakesOverAClaimMadeBeforeItOwnedTheNode", func(t *testing.T) {
		// The node's previous owner claimed the attempt and died before
		// creating anything; this runner (a restart, or the node's new
		// owner) replaces the claim and runs the attempt.
		t.Parallel()
		b := setup(t)
		id, _ := b.reserveClaimed(t, "echo taken over", "gone/runner")
		b.startRunner(t)
		task := b.waitTask(t, id, ended)
		require.Equal(t, new(0), task.ExitCode)
		accepted, refused := b.claims(t, id)
		require.Equal(t, []string{"gone/runner", b.writer.Actor}, accepted)
		require.Zero(t, refused)
	})

	t.Run("TakesOverAClaimLeftUnanswered", func(t *testing.T) {
		// A claim made while this runner owned the node is another
		// runner's (a split brain); left without a start for ClaimTimeout,
		// it is taken over.
		t.Parallel()
		b := setup(t)
		const timeout = time.Second
		b.startRunner(t, func(c *runner.Config) { c.ClaimTimeout, c.ReconcileInterval = timeout, 100*time.Millisecond })
		warm, _ := b.reserve(t, "true")
		b.waitTask(t, warm, ended)
		claimed := time.Now()
		id, _ := b.reserveClaimed(t, "true", "silent/runner")
		b.waitTask(t, id, ended)
		require.GreaterOrEqual(t, time.Since(claimed), timeout)
		accepted, _ := b.claims(t, id)
		require.Equal(t, []string{"silent/runner", b.writer.Actor}, accepted)
	})

	t.Run("WithdrawsItsClaimWhenItGivesTheNodeUp", func(t *testing.T) {
		// The runner loses the node while its create hangs: it withdraws
		// its claim, so that the node's next owner (here the same runner,
		// once the node is back) claims the attempt at once and runs it.
		t.Parallel()
		b := setup(t)
		var owns atomic.Bool
		owns.Store(true)
		changed := make(chan struct{}, 1)
		rt := &hangingStart{Runtime: b.rt, started: make(chan struct{}, 1)}
		rt.hang.Store(true)
		b.startRunner(t, func(c *runner.Config) {
			c.Runtimes = runtime.Set{rt}
			c.Owns = func(string) bool { return owns.Load() }
			c.OwnerChanged = func() <-chan struct{} { return changed }
		})
		id, _ := b.reserve(t, "echo ran")
		<-rt.started
		rt.hang.Store(false)
		owns.Store(false)
		changed <- struct{}{}
		b.waitTask(t, id, func(tk *projections.Task) bool { return tk.Claim == "" && tk.ClaimSeq > 0 })
		owns.Store(true)
		changed <- struct{}{}
		task := b.waitTask(t, id, ended)
		require.Equal(t, new(0), task.ExitCode)
		accepted, refused := b.claims(t, id)
		require.Equal(t, []string{b.writer.Actor, "", b.writer.Actor}, accepted, "claimed, withdrawn, claimed again")
		require.Zero(t, refused)
	})

	t.Run("StartsWhileTheLogStoreElectsItsLeader", func(t *testing.T) {
		// Opening the log store asks its stream's leader; a runner started
		// during an election waits for it instead of failing (and taking
		// the broker down with it).
		t.Parallel()
		b := setup(t)
		js := &electingJetStream{JetStream: b.srv.JS}
		js.failures.Store(2)
		b.startRunner(t, func(c *runner.Config) { c.JetStream = js })
		id, _ := b.reserve(t, "true")
		task := b.waitTask(t, id, ended)
		require.Equal(t, new(0), task.ExitCode)
		require.Negative(t, js.failures.Load(), "the store was opened after two timeouts")
	})

	t.Run("UnknownMountFailsTheStart", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		b.startRunner(t)
		id := uuid.NewString()
		b.propose(t, &events.TaskSubmitted{
			TaskID: id, Name: "m", Image: dockertest.Image, Cmd: "true", ExecutionType: "cpu",
			StorageMounts: map[string]string{"nfs": "/data"},
		})
		b.propose(t, &events.SlotReserved{TaskID: id, Attempt: 1, NodeID: b.nodeID, SlotID: "cpu-1", ContainerName: projections.ContainerName("m", id, 1)})
		task := b.waitTask(t, id, ended)
		require.True(t, task.StartFailed)
		require.Contains(t, task.Error, `storage mount "nfs" is not configured`)
	})
}
