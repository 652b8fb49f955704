package projections

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/events"
)

// running returns the steps that leave task t1 running on n1 (1 cpu slot).
func running(retries int) []step {
	return []step{
		{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
		{p: &events.NodeUp{NodeID: "n1"}},
		{p: submit("t1", "cpu", retries)},
		{p: reserve("t1", 1, "n1", "cpu-1")},
		{p: started("t1", 1, "n1")},
	}
}

func with(base []step, more ...step) []step { return append(append([]step{}, base...), more...) }

func TestRequestsTable(t *testing.T) {
	t.Parallel()
	up := &events.NodeUp{NodeID: "n1"}
	cases := map[string][]step{
		"CancelWaiting": {
			{p: submit("t1", "cpu", 3)},
			{p: &events.CancelRequested{TaskID: "t1"}},
			{p: &events.CancelRequested{TaskID: "t1"}, reject: "already requested"},
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
			{p: up},
			{p: reserve("t1", 1, "n1", "cpu-1"), reject: "is being cancelled"},
			{p: &events.TaskCancelled{TaskID: "t1", Attempt: 0}},
			{p: &events.CancelRequested{TaskID: "t1"}, reject: "only a task that has not ended"},
		},
		"CancelRunningEndsAfterTheExitAndIsNeverRetried": with(running(3),
			step{p: &events.CancelRequested{TaskID: "t1"}},
			step{p: &events.TaskCancelled{TaskID: "t1", Attempt: 1}, reject: "once its attempt has ended"},
			step{p: exited("t1", 1, "n1", 143)},
			step{p: retrying("t1", 1), reject: "is being cancelled"},
			step{p: &events.TaskCancelled{TaskID: "t1", Attempt: 1}},
		),
		"CancelWithoutRequest": with(running(3),
			step{p: exited("t1", 1, "n1", 1)},
			step{p: &events.TaskCancelled{TaskID: "t1", Attempt: 1}, reject: "no cancel was requested"},
		),
		"KillOnlyWhileStarted": {
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
			{p: up},
			{p: submit("t1", "cpu", 3)},
			{p: &events.KillRequested{TaskID: "t1", Attempt: 1}, reject: "is waiting"},
			{p: reserve("t1", 1, "n1", "cpu-1")},
			{p: &events.KillRequested{TaskID: "t1", Attempt: 1}, reject: "is starting"},
			{p: started("t1", 1, "n1")},
			{p: &events.KillRequested{TaskID: "t1", Attempt: 2}, reject: "not running attempt 2"},
			{p: &events.KillRequested{TaskID: "t1", Attempt: 1}},
			{p: exited("t1", 1, "n1", 137)},
			{p: retrying("t1", 1)},
		},
		"ForcedRetryOnlyWhenEnded": with(running(0),
			step{p: &events.RetryRequested{TaskID: "t1"}, reject: "only a task that has ended"},
			step{p: exited("t1", 1, "n1", 2)},
			step{p: &events.TaskFailed{TaskID: "t1", Attempt: 1}},
			step{p: &events.RetryRequested{TaskID: "t1"}},
			step{p: reserve("t1", 2, "n1", "cpu-1")},
		),
		"MarkAsErrorOnlyWhenFailed": with(running(0),
			step{p: &events.MarkedAsError{TaskID: "t1"}, reject: "must have failed status"},
			step{p: exited("t1", 1, "n1", 2)},
			step{p: &events.TaskFailed{TaskID: "t1", Attempt: 1}},
			step{p: &events.MarkedAsError{TaskID: "t1"}},
			step{p: &events.MarkedAsError{TaskID: "t1"}, reject: "is error"},
			step{p: &events.TaskDeleted{TaskID: "t1"}},
			step{p: &events.TaskDeleted{TaskID: "t1"}, reject: "does not exist"},
		),
		"DeleteOnlyWhenEnded": {
			{p: submit("t1", "cpu", 3)},
			{p: &events.TaskDeleted{TaskID: "t1"}, reject: "only a task that has ended"},
		},
		"RemoveOnlyAnIdleNode": with(running(3),
			step{p: &events.NodeRemoved{NodeID: "n1"}, reject: "has a busy slot cpu-1"},
			step{p: exited("t1", 1, "n1", 0)},
			step{p: &events.NodeRemoved{NodeID: "n1"}},
			step{p: &events.TaskCompleted{TaskID: "t1", Attempt: 1}},
			step{p: node("n2", "tcp://a:2375", map[string]int{"cpu": 1})},
		),
		"DrainStopsNewWork": {
			{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
			{p: up},
			{p: submit("t1", "cpu", 3)},
			{p: &events.NodeAcceptanceChanged{NodeID: "n1", Accept: false}},
			{p: reserve("t1", 1, "n1", "cpu-1"), reject: "accept_new_tasks=false"},
			{p: &events.NodeAcceptanceChanged{NodeID: "n1", Accept: true}},
			{p: reserve("t1", 1, "n1", "cpu-1")},
		},
	}
	for name, steps := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			run(t, steps)
		})
	}
}

func TestNodeKillMarksRunningAttempts(t *testing.T) {
	t.Parallel()
	s := run(t, []step{
		{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 3})},
		{p: &events.NodeUp{NodeID: "n1"}},
		{p: submit("t1", "cpu", 3)},
		{p: submit("t2", "cpu", 3)},
		{p: submit("t3", "cpu", 3)},
		{p: reserve("t1", 1, "n1", "cpu-1")},
		{p: reserve("t2", 1, "n1", "cpu-2")},
		{p: started("t1", 1, "n1")},
		{p: &events.NodeKillRequested{NodeID: "n1"}},
	})
	require.Equal(t, 1, s.Tasks["t1"].KillRequested, "started: killed")
	require.Zero(t, s.Tasks["t2"].KillRequested, "starting: not killed, as the seed (running slots only)")
	require.Zero(t, s.Tasks["t3"].KillRequested)
}

func TestSlotScaling(t *testing.T) {
	t.Parallel()
	slots := func(s *State) []string {
		var out []string
		for _, sl := range s.Nodes["n1"].Slots {
			id := sl.ID
			if sl.Retiring {
				id += "(retiring)"
			}
			out = append(out, id)
		}
		return out
	}
	base := []step{
		{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 3})},
		{p: &events.NodeUp{NodeID: "n1"}},
		{p: submit("t1", "cpu", 3)},
		{p: reserve("t1", 1, "n1", "cpu-3")},
	}
	s := run(t, with(base, step{p: &events.NodeUpdated{NodeID: "n1", Slots: map[string]int{"cpu": 4, "io": 1}}}))
	require.Equal(t, []string{"cpu-1", "cpu-2", "cpu-3", "cpu-4", "io-1"}, slots(s), "new slots at once")

	s = run(t, with(base, step{p: &events.NodeUpdated{NodeID: "n1", Slots: map[string]int{"cpu": 1}}}))
	require.Equal(t, []string{"cpu-3"}, slots(s), "surplus free slots go at once; the busy one is the one kept")

	s = run(t, with(base, step{p: &events.NodeUpdated{NodeID: "n1", Slots: map[string]int{"cpu": 2}}}))
	require.Equal(t, []string{"cpu-1", "cpu-3"}, slots(s), "the highest free slot goes first")

	s = run(t, with(base,
		step{p: &events.NodeUpdated{NodeID: "n1", Slots: map[string]int{}}},
		step{p: reserve("t1", 1, "n1", "cpu-3"), reject: "is starting"},
	))
	require.Equal(t, []string{"cpu-3(retiring)"}, slots(s), "a busy surplus slot retires")
	require.Equal(t, []TypeUsage{{ExecutionType: "cpu", UsagePercent: 100}}, s.NewNodeView(s.Nodes["n1"]).UsagePerExecutionType)

	s = run(t, with(base,
		step{p: &events.NodeUpdated{NodeID: "n1", Slots: map[string]int{}}},
		step{p: &events.StartFailed{TaskID: "t1", Attempt: 1, NodeID: "n1", Error: "x"}},
	))
	require.Empty(t, slots(s), "a retiring slot goes when it is released")

	s = run(t, with(base,
		step{p: &events.NodeUpdated{NodeID: "n1", Slots: map[string]int{}}},
		step{p: &events.NodeUpdated{NodeID: "n1", Slots: map[string]int{"cpu": 2}}},
	))
	require.Equal(t, []string{"cpu-3", "cpu-4"}, slots(s), "growing takes the retiring slot back first")
}

func TestIndexesForStatus(t *testing.T) {
	t.Parallel()
	tagged := func(id string, tags map[string]string) *events.TaskSubmitted {
		p := submit(id, "cpu", 0)
		p.Tags = tags
		return p
	}
	s := run(t, []step{
		{p: tagged("t1", map[string]string{"type": "video", "code": "a"})},
		{p: tagged("t2", map[string]string{"type": "video", "code": "b"})},
		{p: tagged("t3", map[string]string{"type": "audio"})},
	})
	require.Equal(t, []string{"code", "type"}, s.TagNames())
	values, ok := s.TagValues("type")
	require.True(t, ok)
	require.Equal(t, []string{"audio", "video"}, values)
	_, ok = s.TagValues("nope")
	require.False(t, ok)
	var ids []string
	s.TasksNewestFirst(func(t *Task) bool { ids = append(ids, t.ID); return len(ids) < 2 })
	require.Equal(t, []string{"t3", "t2"}, ids)
	ids = nil
	s.TasksOlderThan(s.Tasks["t2"].SubmitSeq, func(t *Task) bool { ids = append(ids, t.ID); return true })
	require.Equal(t, []string{"t1"}, ids)
}

func TestNodeLossAndStaleExits(t *testing.T) {
	t.Parallel()
	lost := func(attempt int) *events.TaskRetrying {
		return &events.TaskRetrying{TaskID: "t1", Attempt: attempt, NextAttempt: attempt + 1, Cause: events.CauseNodeLost}
	}
	base := []step{
		{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
		{p: &events.NodeUp{NodeID: "n1"}},
		{p: node("n2", "tcp://b:2375", map[string]int{"cpu": 1})},
		{p: &events.NodeUp{NodeID: "n2"}},
		{p: &events.TaskSubmitted{TaskID: "t1", Name: "job", ExecutionType: "cpu", MaxRetries: 0, MaxNodeLosses: 1}},
		{p: reserve("t1", 1, "n1", "cpu-1")},
		{p: started("t1", 1, "n1")},
	}
	s := run(t, with(base,
		step{p: lost(1), reject: "node n1 of task t1 is available, not unavailable"},
		step{p: &events.NodeUnstable{NodeID: "n1"}},
		step{p: lost(1), reject: "is unstable"},
		step{p: &events.NodeDown{NodeID: "n1"}},
		step{p: &events.TaskFailed{TaskID: "t1", Attempt: 1, Cause: events.CauseNodeLost}, reject: "it is requeued, not failed"},
		step{p: lost(1)},
		step{p: exited("t1", 1, "n1", 0), reject: "attempt 1 of task t1 is not running"},
		step{p: &events.StaleAttemptExited{TaskID: "t1", Attempt: 1, NodeID: "n1", ExitCode: 0}},
		step{p: &events.StaleAttemptExited{TaskID: "t1", Attempt: 1, NodeID: "n1", ExitCode: 0}, reject: "recorded already"},
		step{p: reserve("t1", 2, "n2", "cpu-1")},
		step{p: started("t1", 2, "n2")},
		step{p: &events.StaleAttemptExited{TaskID: "t1", Attempt: 2, NodeID: "n2"}, reject: "was not lost with its node"},
		step{p: &events.StaleAttemptExited{TaskID: "t1", Attempt: 9, NodeID: "n2"}, reject: "was not lost with its node"},
		step{p: &events.NodeDown{NodeID: "n2"}},
		step{p: lost(2), reject: "its cap"},
		step{p: &events.TaskFailed{TaskID: "t1", Attempt: 2, Cause: events.CauseNodeLost}},
	))
	task := s.Tasks["t1"]
	require.Equal(t, TaskFailed, task.Status)
	rejected := 0
	for _, v := range task.History {
		if !v.Accepted {
			rejected++
			require.NotEmpty(t, v.Reason)
		}
	}
	require.Equal(t, 8, rejected, "the history keeps the rejected proposals")
	require.Zero(t, task.TryCount, "node losses do not use up retries")
	require.Equal(t, 1, task.NodeLosses)
	require.Equal(t, 1, task.StaleExits)
	require.Equal(t, SlotAvailable, s.Nodes["n1"].Slots[0].Status, "the lost attempt's slot is free")
}
