package projections

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/events"
)

var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// step is one event fed to the fold in a table test and the verdict expected.
type step struct {
	p      events.Payload
	reject string // substring of the rejection reason; "" means accepted
}

func envelope(t require.TestingT, seq uint64, p events.Payload) events.Envelope {
	env, err := events.New("k", p, events.Meta{Time: t0})
	require.NoError(t, err)
	env.Seq = seq
	return env
}

// run applies steps to a new state, checking every verdict.
func run(t *testing.T, steps []step) *State {
	t.Helper()
	s := NewState()
	for i, st := range steps {
		out := s.Apply(envelope(t, uint64(i+1), st.p))
		if st.reject == "" {
			require.Truef(t, out.Accepted, "step %d (%s) rejected: %s", i+1, out.Type, out.Reason)
		} else {
			require.Falsef(t, out.Accepted, "step %d (%s) accepted, want rejection %q", i+1, out.Type, st.reject)
			require.Containsf(t, out.Reason, st.reject, "step %d", i+1)
		}
		checkInvariants(t, s)
	}
	return s
}

func node(id, host string, slots map[string]int) *events.NodeRegistered {
	return &events.NodeRegistered{NodeID: id, Hostname: host, Slots: slots, RunnerProvider: "docker"}
}

func submit(id, typ string, retries int) *events.TaskSubmitted {
	return &events.TaskSubmitted{TaskID: id, Name: "job " + id, Image: "busybox", Cmd: "true", ExecutionType: typ, MaxRetries: retries}
}

func reserve(task string, attempt int, nodeID, slot string) *events.SlotReserved {
	return &events.SlotReserved{TaskID: task, Attempt: attempt, NodeID: nodeID, SlotID: slot, ContainerName: ContainerName("job", task, attempt)}
}

func claim(task string, attempt int, runner, supersedes string) *events.AttemptClaimed {
	return &events.AttemptClaimed{TaskID: task, Attempt: attempt, NodeID: "n1", Runner: runner, Supersedes: supersedes}
}

func started(task string, attempt int, nodeID string) *events.ContainerStarted {
	return &events.ContainerStarted{TaskID: task, Attempt: attempt, NodeID: nodeID, ContainerID: "c", StartedAt: t0}
}

func exited(task string, attempt int, nodeID string, code int) *events.ContainerExited {
	return &events.ContainerExited{TaskID: task, Attempt: attempt, NodeID: nodeID, ExitCode: code, StartedAt: t0, FinishedAt: t0.Add(time.Second)}
}

func retrying(task string, attempt int) *events.TaskRetrying {
	return &events.TaskRetrying{TaskID: task, Attempt: attempt, NextAttempt: attempt + 1, Cause: events.CauseExitCode}
}

func TestFoldTable(t *testing.T) {
	t.Parallel()
	up := &events.NodeUp{NodeID: "n1", At: t0}
	cases := map[string][]step{
		"HappyPath": {
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
			{p: up},
			{p: submit("t1", "cpu", 3)},
			{p: reserve("t1", 1, "n1", "cpu-1")},
			{p: started("t1", 1, "n1")},
			{p: &events.LogsArchived{TaskID: "t1", Attempt: 1, Object: "t1/1", Bytes: 3}},
			{p: exited("t1", 1, "n1", 0)},
			{p: &events.TaskCompleted{TaskID: "t1", Attempt: 1}},
		},
		"SecondReservationOfATakenSlot": {
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
			{p: up},
			{p: submit("t1", "cpu", 3)},
			{p: submit("t2", "cpu", 3)},
			{p: reserve("t1", 1, "n1", "cpu-1")},
			{p: reserve("t2", 1, "n1", "cpu-1"), reject: "slot cpu-1 of node n1 is attaching for task t1"},
		},
		"SameAttemptReservedTwice": {
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 2})},
			{p: up},
			{p: submit("t1", "cpu", 3)},
			{p: reserve("t1", 1, "n1", "cpu-1")},
			{p: reserve("t1", 1, "n1", "cpu-2"), reject: "is starting, not waiting"},
		},
		"ExitForAnAttemptThatIsNotCurrent": {
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
			{p: up},
			{p: submit("t1", "cpu", 3)},
			{p: reserve("t1", 1, "n1", "cpu-1")},
			{p: started("t1", 1, "n1")},
			{p: exited("t1", 1, "n1", 1)},
			{p: retrying("t1", 1)},
			{p: reserve("t1", 2, "n1", "cpu-1")},
			{p: exited("t1", 1, "n1", 0), reject: "attempt 1 of task t1 is not current (current 2)"},
			{p: &events.TaskCompleted{TaskID: "t1", Attempt: 1}, reject: "not current"},
		},
		"ExitFromTheWrongNode": {
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
			{p: up},
			{p: submit("t1", "cpu", 3)},
			{p: reserve("t1", 1, "n1", "cpu-1")},
			{p: exited("t1", 1, "n2", 0), reject: "runs on node n1, not n2"},
		},
		"DecisionsAreMadeOnce": {
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
			{p: up},
			{p: submit("t1", "cpu", 3)},
			{p: reserve("t1", 1, "n1", "cpu-1")},
			{p: started("t1", 1, "n1")},
			{p: exited("t1", 1, "n1", 0)},
			{p: &events.TaskCompleted{TaskID: "t1", Attempt: 1}},
			{p: &events.TaskCompleted{TaskID: "t1", Attempt: 1}, reject: "has not ended or was already decided"},
			{p: &events.TaskFailed{TaskID: "t1", Attempt: 1}, reject: "already decided"},
		},
		"CompletedOnlyAfterSuccess": {
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
			{p: up},
			{p: submit("t1", "cpu", 3)},
			{p: reserve("t1", 1, "n1", "cpu-1")},
			{p: &events.TaskCompleted{TaskID: "t1", Attempt: 1}, reject: "has not ended"},
			{p: started("t1", 1, "n1")},
			{p: exited("t1", 1, "n1", 2)},
			{p: &events.TaskCompleted{TaskID: "t1", Attempt: 1}, reject: "did not succeed"},
			{p: retrying("t1", 1)},
		},
		"RetriesAreCounted": {
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
			{p: up},
			{p: submit("t1", "cpu", 1)},
			{p: reserve("t1", 1, "n1", "cpu-1")},
			{p: &events.StartFailed{TaskID: "t1", Attempt: 1, NodeID: "n1", Error: "no such image"}},
			{p: retrying("t1", 1)},
			{p: reserve("t1", 2, "n1", "cpu-1")},
			{p: started("t1", 2, "n1")},
			{p: &events.StartFailed{TaskID: "t1", Attempt: 2, NodeID: "n1"}, reject: "already started"},
			{p: exited("t1", 2, "n1", 3)},
			{p: retrying("t1", 2), reject: "has used its 1 retries"},
			{p: &events.TaskFailed{TaskID: "t1", Attempt: 2, Cause: events.CauseExitCode}},
			{p: reserve("t1", 3, "n1", "cpu-1"), reject: "is failed"},
		},
		"ReservationNeedsAnAvailableNodeAndMatchingSlot": {
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1, "io": 1})},
			{p: submit("t1", "cpu", 3)},
			{p: reserve("t1", 1, "n1", "cpu-1"), reject: "node n1 is unavailable"},
			{p: up},
			{p: reserve("t1", 1, "n1", "io-1"), reject: "is for io, not cpu"},
			{p: reserve("t1", 1, "n1", "cpu-9"), reject: "has no slot cpu-9"},
			{p: reserve("t1", 2, "n1", "cpu-1"), reject: "is not the next attempt"},
			{p: reserve("t1", 1, "nx", "cpu-1"), reject: "node nx does not exist"},
			{p: &events.NodeUnstable{NodeID: "n1", Error: "timeout"}},
			{p: reserve("t1", 1, "n1", "cpu-1"), reject: "node n1 is unstable"},
		},
		"SubmissionsAndRegistrationsAreUnique": {
			{p: submit("t1", "cpu", 3)},
			{p: submit("t1", "cpu", 3), reject: "already exists"},
			{p: submit("t2", "", 3), reject: "no execution type"},
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
			{p: node("n2", "tcp://a:2375", map[string]int{"cpu": 1}), reject: "hostname tcp://a:2375 is already taken by node n1"},
			{p: node("n1", "tcp://b:2375", map[string]int{"cpu": 1}), reject: "node n1 already exists"},
		},
		"HealthTransitionsAreEventsOnlyWhenTheyChangeSomething": {
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
			{p: &events.NodeDown{NodeID: "n1"}, reject: "already unavailable"},
			{p: up},
			{p: up, reject: "already available"},
			{p: &events.NodeUnstable{NodeID: "n1"}},
			{p: &events.NodeUnstable{NodeID: "n1"}, reject: "not available"},
			{p: &events.NodeDown{NodeID: "n1"}},
			{p: up},
		},
		"OneClaimPerAttempt": {
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
			{p: up},
			{p: submit("t1", "cpu", 3)},
			{p: claim("t1", 1, "r1", ""), reject: "is not current (current 0)"},
			{p: reserve("t1", 1, "n1", "cpu-1")},
			{p: claim("t1", 1, "", ""), reject: "names no runner"},
			{p: claim("t1", 1, "r1", "r2"), reject: "is not claimed by r2"},
			{p: claim("t1", 1, "r1", "")},
			{p: claim("t1", 1, "r2", ""), reject: "is claimed by r1"},
			{p: claim("t1", 1, "r2", "r3"), reject: "is claimed by r1"},
			{p: claim("t1", 1, "r2", "r1")}, // the node's new owner takes over
			{p: claim("t1", 1, "r1", "r1"), reject: "is claimed by r2"},
			{p: started("t1", 1, "n1")},
			{p: claim("t1", 1, "r3", "r2"), reject: "already started"},
			{p: exited("t1", 1, "n1", 1)},
			{p: claim("t1", 1, "r3", "r2"), reject: "not running"},
			{p: retrying("t1", 1)},
			{p: reserve("t1", 2, "n1", "cpu-1")},
			{p: claim("t1", 1, "r1", ""), reject: "attempt 1 of task t1 is not current (current 2)"},
			{p: claim("t1", 2, "r1", "r2"), reject: "is not claimed by r2"}, // each attempt starts unclaimed
			{p: claim("t1", 2, "r1", "")},
			{p: claim("t1", 2, "", "r2"), reject: "is claimed by r1"},
			{p: claim("t1", 2, "", "r1")}, // r1 gave the node up before starting
			{p: claim("t1", 2, "", "r1"), reject: "is not claimed by r1"},
			{p: claim("t1", 2, "r2", "")},
		},
		"UnknownTask": {
			{p: started("nope", 1, "n1"), reject: "task nope does not exist"},
		},
	}
	for name, steps := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			run(t, steps)
		})
	}
}

func TestFoldStateAfterLifecycles(t *testing.T) {
	t.Parallel()

	t.Run("Completed", func(t *testing.T) {
		t.Parallel()
		s := run(t, []step{
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
			{p: &events.NodeUp{NodeID: "n1"}},
			{p: submit("t1", "cpu", 3)},
			{p: reserve("t1", 1, "n1", "cpu-1")},
			{p: started("t1", 1, "n1")},
			{p: &events.LogsArchived{TaskID: "t1", Attempt: 1, Object: "t1/1", Bytes: 3}},
			{p: exited("t1", 1, "n1", 0)},
			{p: &events.TaskCompleted{TaskID: "t1", Attempt: 1}},
		})
		task := s.Tasks["t1"]
		require.Equal(t, TaskCompleted, task.Status)
		require.Equal(t, new(0), task.ExitCode)
		require.Equal(t, 0, task.TryCount)
		require.Equal(t, t0.Add(time.Second), task.FinishedAt)
		require.Len(t, task.History, 6)
		for _, v := range task.History {
			require.True(t, v.Accepted, v.Type)
		}
		logs, ok := task.LatestLogs()
		require.True(t, ok)
		require.Equal(t, "t1/1", logs.Object)
		require.Equal(t, SlotAvailable, s.Nodes["n1"].Slots[0].Status)
		require.Empty(t, s.ActiveTasks())
		require.Empty(t, s.AwaitingDecision())
	})

	t.Run("FailedAfterFourAttempts", func(t *testing.T) {
		t.Parallel()
		steps := []step{
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
			{p: &events.NodeUp{NodeID: "n1"}},
			{p: submit("t1", "cpu", 3)},
		}
		for a := 1; a <= 4; a++ {
			steps = append(steps, step{p: reserve("t1", a, "n1", "cpu-1")}, step{p: started("t1", a, "n1")}, step{p: exited("t1", a, "n1", 3)})
			if a < 4 {
				steps = append(steps, step{p: retrying("t1", a)})
			}
		}
		steps = append(steps, step{p: retrying("t1", 4), reject: "used its 3 retries"}, step{p: &events.TaskFailed{TaskID: "t1", Attempt: 4}})
		s := run(t, steps)
		task := s.Tasks["t1"]
		require.Equal(t, TaskFailed, task.Status)
		require.Equal(t, 3, task.TryCount)
		require.Equal(t, 4, task.Attempt)
		require.Equal(t, new(3), task.ExitCode)
	})

	t.Run("QueueIsFIFOAndRetriesKeepTheirPlace", func(t *testing.T) {
		t.Parallel()
		s := run(t, []step{
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
			{p: &events.NodeUp{NodeID: "n1"}},
			{p: submit("t1", "cpu", 3)},
			{p: submit("t2", "cpu", 3)},
			{p: submit("t3", "io", 3)},
			{p: reserve("t1", 1, "n1", "cpu-1")},
			{p: &events.StartFailed{TaskID: "t1", Attempt: 1, NodeID: "n1"}},
			{p: retrying("t1", 1)},
		})
		var ids []string
		for _, task := range s.Queue("cpu") {
			ids = append(ids, task.ID)
		}
		require.Equal(t, []string{"t1", "t2"}, ids)
		require.Equal(t, []string{"cpu", "io"}, s.QueuedTypes())
	})
}

func TestUnknownTypeIsSkipped(t *testing.T) {
	t.Parallel()
	s := NewState()
	env := events.Envelope{ID: "x", Type: "task.teleported.v1", AggregateID: "t1", Key: "k", Data: []byte(`{}`), Seq: 7}
	out := s.Apply(env)
	require.False(t, out.Accepted)
	require.True(t, out.Unknown)
	require.Equal(t, uint64(7), s.Seq)
	require.Empty(t, s.Tasks)
}

func TestMalformedPayloadIsRejected(t *testing.T) {
	t.Parallel()
	s := NewState()
	env := events.Envelope{ID: "x", Type: events.TypeTaskSubmitted, AggregateID: "t1", Key: "k", Data: []byte(`{"max_retries":"x"}`), Seq: 1}
	out := s.Apply(env)
	require.False(t, out.Accepted)
	require.False(t, out.Unknown)
	require.Contains(t, out.Reason, "malformed")
	require.Empty(t, s.Tasks)
}

func TestNodeNamesFollowTheSeed(t *testing.T) {
	t.Parallel()
	s := run(t, []step{
		{p: node("z", "tcp://b:2375", map[string]int{"cpu": 2, "io": 1})},
		{p: node("y", "tcp://a:2375", map[string]int{"cpu": 1})},
	})
	require.Equal(t, "n001d", s.Nodes["y"].Name)
	require.Equal(t, "n002d", s.Nodes["z"].Name)
	n := s.Nodes["z"]
	require.Equal(t, []string{"cpu-1", "cpu-2", "io-1"}, []string{n.Slots[0].ID, n.Slots[1].ID, n.Slots[2].ID})
	require.Equal(t, "n002d-s03-io", n.SlotName(n.Slots[2]))
}

func TestContainerName(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		name, id string
		attempt  int
		want     string
	}{
		"Simple":     {"Encode Video", "0f8e2a9c-1b2d-4e5f-8a9b-0c1d2e3f4a5b", 1, "encode-video-0f8e2a9c1b2d-a1"},
		"Underscore": {"my_task__x", "abc", 2, "my-task-x-abc-a2"},
		"Empty":      {"***", "abc", 1, "task-abc-a1"},
		"Unicode":    {"Vídeo ção", "abc", 1, "v-deo-o-abc-a1"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.want, ContainerName(tc.name, tc.id, tc.attempt))
		})
	}
	long := ContainerName(string(make([]byte, 0))+"a very long task name that goes on and on and on and on and on forever", "0f8e2a9c-1b2d-4e5f-8a9b-0c1d2e3f4a5b", 10)
	require.LessOrEqual(t, len(long), 63)
	require.Regexp(t, `^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`, long)
}
