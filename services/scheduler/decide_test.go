package scheduler

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/actor"
)

var now = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

// fold builds a state from payloads, requiring each to be accepted.
func fold(t require.TestingT, ps ...events.Payload) *projections.State {
	s := projections.NewState()
	for _, p := range ps {
		apply(t, s, p)
	}
	return s
}

func apply(t require.TestingT, s *projections.State, p events.Payload) projections.Outcome {
	env, err := events.New("k", p, events.Meta{Time: now})
	require.NoError(t, err)
	out := s.Apply(env)
	require.Truef(t, out.Accepted, "%s rejected: %s", out.Type, out.Reason)
	return out
}

func nodeUp(id, host string, slots map[string]int) []events.Payload {
	return []events.Payload{
		&events.NodeRegistered{NodeID: id, Hostname: host, Slots: slots},
		&events.NodeUp{NodeID: id},
	}
}

func submit(id, typ string) *events.TaskSubmitted {
	return &events.TaskSubmitted{TaskID: id, Name: "job", ExecutionType: typ, MaxRetries: 3}
}

func reservations(ps []actor.Proposal) []string {
	var out []string
	for _, p := range ps {
		if r, ok := p.Payload.(*events.SlotReserved); ok {
			out = append(out, fmt.Sprintf("%s@%s/%s#%d", r.TaskID, r.NodeID, r.SlotID, r.Attempt))
		}
	}
	return out
}

func concat(groups ...[]events.Payload) []events.Payload {
	var out []events.Payload
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}

func TestDecideReservations(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		events []events.Payload
		want   []string
	}{
		"FIFOOnOneSlot": {
			events: concat(nodeUp("n1", "tcp://a:1", map[string]int{"cpu": 1}),
				[]events.Payload{submit("t1", "cpu"), submit("t2", "cpu")}),
			want: []string{"t1@n1/cpu-1#1"},
		},
		"SpreadsByLowestBusyShare": {
			events: concat(nodeUp("n1", "tcp://a:1", map[string]int{"cpu": 2}), nodeUp("n2", "tcp://b:1", map[string]int{"cpu": 2}),
				[]events.Payload{submit("t1", "cpu"), submit("t2", "cpu"), submit("t3", "cpu")}),
			want: []string{"t1@n1/cpu-1#1", "t2@n2/cpu-1#1", "t3@n1/cpu-2#1"},
		},
		"ShareIsPerExecutionType": {
			// n1 is busy with io work, but its cpu share is 0 like n2's: the
			// tie goes to the first name.
			events: concat(nodeUp("n1", "tcp://a:1", map[string]int{"cpu": 1, "io": 1}), nodeUp("n2", "tcp://b:1", map[string]int{"cpu": 1}),
				[]events.Payload{
					submit("t0", "io"),
					&events.SlotReserved{TaskID: "t0", Attempt: 1, NodeID: "n1", SlotID: "io-1", ContainerName: "c"},
					submit("t1", "cpu"),
				}),
			want: []string{"t1@n1/cpu-1#1"},
		},
		"ShareNotCount": {
			// n1 has 1 of 4 busy (25%), n2 0 of 1 (0%): n2 wins.
			events: concat(nodeUp("n1", "tcp://a:1", map[string]int{"cpu": 4}), nodeUp("n2", "tcp://b:1", map[string]int{"cpu": 1}),
				[]events.Payload{
					submit("t0", "cpu"),
					&events.SlotReserved{TaskID: "t0", Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "c"},
					submit("t1", "cpu"), submit("t2", "cpu"),
				}),
			want: []string{"t1@n2/cpu-1#1", "t2@n1/cpu-2#1"},
		},
		"SkipsUnavailableAndUnknownTypes": {
			events: concat(nodeUp("n1", "tcp://a:1", map[string]int{"cpu": 1}),
				[]events.Payload{
					&events.NodeUnstable{NodeID: "n1"}, &events.NodeRegistered{NodeID: "n2", Hostname: "tcp://b:1", Slots: map[string]int{"cpu": 1}},
					submit("t1", "cpu"), submit("t2", "gpu"),
				}),
			want: nil,
		},
		"RetryIsTheNextAttempt": {
			events: concat(nodeUp("n1", "tcp://a:1", map[string]int{"cpu": 1}),
				[]events.Payload{
					submit("t1", "cpu"),
					&events.SlotReserved{TaskID: "t1", Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "c"},
					&events.StartFailed{TaskID: "t1", Attempt: 1, NodeID: "n1", Error: "x"},
					&events.TaskRetrying{TaskID: "t1", Attempt: 1, NextAttempt: 2},
				}),
			want: []string{"t1@n1/cpu-1#2"},
		},
		"RetryWaitsForItsTimeWithoutBlockingOthers": {
			events: concat(nodeUp("n1", "tcp://a:1", map[string]int{"cpu": 1}),
				[]events.Payload{
					submit("t1", "cpu"), submit("t2", "cpu"),
					&events.SlotReserved{TaskID: "t1", Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "c"},
					&events.StartFailed{TaskID: "t1", Attempt: 1, NodeID: "n1", Error: "x"},
					&events.TaskRetrying{TaskID: "t1", Attempt: 1, NextAttempt: 2, NotBefore: now.Add(time.Minute)},
				}),
			want: []string{"t2@n1/cpu-1#1"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := fold(t, tc.events...)
			ps, _ := Decide(s, now, Policy{})
			require.Equal(t, tc.want, reservations(ps))
			for _, p := range ps {
				require.Truef(t, apply(t, s, p.Payload).Accepted, "decision rejected by the fold")
			}
		})
	}
}

func TestDecidePlacesTasksWhereTheirMountsAre(t *testing.T) {
	t.Parallel()
	s := fold(t,
		&events.NodeRegistered{NodeID: "n1", Hostname: "tcp://a:1", Slots: map[string]int{"cpu": 1}},
		&events.NodeUp{NodeID: "n1"},
		&events.NodeRegistered{NodeID: "n2", Hostname: "tcp://b:1", Slots: map[string]int{"cpu": 1}, Mounts: map[string]string{"nfs": "/mnt/nfs"}},
		&events.NodeUp{NodeID: "n2"},
		&events.TaskSubmitted{TaskID: "t1", Name: "a", ExecutionType: "cpu", MaxRetries: 3, StorageMounts: map[string]string{"nfs": "/data"}},
		&events.TaskSubmitted{TaskID: "t2", Name: "b", ExecutionType: "cpu", MaxRetries: 3, StorageMounts: map[string]string{"shared": "/data"}},
		&events.TaskSubmitted{TaskID: "t3", Name: "c", ExecutionType: "cpu", MaxRetries: 3, StorageMounts: map[string]string{"nfs": "/data"}},
	)
	ps, _ := Decide(s, now, Policy{Mounts: map[string]bool{"shared": true}})
	// t1 needs nfs: only n2 has it, although n1 sorts first. t2 needs the
	// broker-wide mount: any node. t3 needs nfs again, n2 is full: it
	// waits, and does not stop the queue.
	require.Equal(t, []string{"t1@n2/cpu-1#1", "t2@n1/cpu-1#1"}, reservations(ps))
}

func TestDecideReportsWhenARetryIsDue(t *testing.T) {
	t.Parallel()
	s := fold(t, concat(nodeUp("n1", "tcp://a:1", map[string]int{"cpu": 1}),
		[]events.Payload{
			submit("t1", "cpu"),
			&events.SlotReserved{TaskID: "t1", Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "c"},
			&events.StartFailed{TaskID: "t1", Attempt: 1, NodeID: "n1", Error: "x"},
			&events.TaskRetrying{TaskID: "t1", Attempt: 1, NextAttempt: 2, NotBefore: now.Add(time.Minute)},
		})...)
	ps, wake := Decide(s, now, Policy{})
	require.Empty(t, ps)
	require.Equal(t, now.Add(time.Minute), wake)
	ps, _ = Decide(s, now.Add(time.Minute), Policy{})
	require.Equal(t, []string{"t1@n1/cpu-1#2"}, reservations(ps))
}

func TestDecideOutcomes(t *testing.T) {
	t.Parallel()
	attempt := func(code int, retriesUsed int) []events.Payload {
		sub := submit("t1", "cpu")
		if retriesUsed == 1 { // the backoff case: 2 s doubled once is 4 s, half fixed, half jittered
			sub.RetryBackoffMinMs, sub.RetryBackoffMaxMs = 2000, 60000
		}
		ps := concat(nodeUp("n1", "tcp://a:1", map[string]int{"cpu": 1}), []events.Payload{sub})
		for a := 1; a <= retriesUsed+1; a++ {
			ps = append(ps,
				&events.SlotReserved{TaskID: "t1", Attempt: a, NodeID: "n1", SlotID: "cpu-1", ContainerName: "c"},
				&events.ContainerStarted{TaskID: "t1", Attempt: a, NodeID: "n1"},
				&events.ContainerExited{TaskID: "t1", Attempt: a, NodeID: "n1", ExitCode: code})
			if a <= retriesUsed {
				ps = append(ps, &events.TaskRetrying{TaskID: "t1", Attempt: a, NextAttempt: a + 1})
			}
		}
		return ps
	}
	cases := map[string]struct {
		events []events.Payload
		policy Policy
		want   events.Payload
	}{
		"ExitZeroCompletes": {events: attempt(0, 0), want: &events.TaskCompleted{TaskID: "t1", Attempt: 1}},
		"ExitNonZeroRetries": {
			events: attempt(3, 0),
			want:   &events.TaskRetrying{TaskID: "t1", Attempt: 1, NextAttempt: 2, Cause: events.CauseExitCode, Error: "container exited with code 3", ExitCode: new(3)},
		},
		"RetryDelayIsResolvedIntoTheEvent": {
			events: attempt(3, 1),
			policy: Policy{Jitter: func() float64 { return 0.5 }},
			want: &events.TaskRetrying{
				TaskID: "t1", Attempt: 2, NextAttempt: 3, NotBefore: now.Add(3 * time.Second),
				Cause: events.CauseExitCode, Error: "container exited with code 3", ExitCode: new(3),
			},
		},
		"RetriesExhaustedFails": {
			events: attempt(3, 3),
			want:   &events.TaskFailed{TaskID: "t1", Attempt: 4, Cause: events.CauseExitCode, Error: "container exited with code 3", ExitCode: new(3)},
		},
		"StartErrorRetries": {
			events: concat(nodeUp("n1", "tcp://a:1", map[string]int{"cpu": 1}), []events.Payload{
				submit("t1", "cpu"),
				&events.SlotReserved{TaskID: "t1", Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "c"},
				&events.StartFailed{TaskID: "t1", Attempt: 1, NodeID: "n1", Error: "image x is missing"},
			}),
			want: &events.TaskRetrying{TaskID: "t1", Attempt: 1, NextAttempt: 2, Cause: events.CauseStartError, Error: "image x is missing"},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			s := fold(t, tc.events...)
			ps, _ := Decide(s, now, tc.policy)
			require.NotEmpty(t, ps)
			require.Equal(t, tc.want, ps[0].Payload)
			require.Equal(t, actor.TaskKey("t1", s.Tasks["t1"].Attempt, tc.want.EventType()), ps[0].Key)
			apply(t, s, ps[0].Payload)
		})
	}
}

// TestDecideProperties checks, on random pools and queues, that every
// decision is accepted by the fold, no slot is booked twice, no due task is
// left waiting while a slot of its type is free on a schedulable node, and no
// task overtakes an earlier due task of its type.
func TestDecideProperties(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(rt *rapid.T) {
		s := projections.NewState()
		types := []string{"cpu", "io"}
		nNodes := rapid.IntRange(0, 4).Draw(rt, "nodes")
		for i := range nNodes {
			id := fmt.Sprintf("n%d", i)
			slots := map[string]int{}
			for _, typ := range types {
				if k := rapid.IntRange(0, 3).Draw(rt, "slots"); k > 0 {
					slots[typ] = k
				}
			}
			apply(rt, s, &events.NodeRegistered{NodeID: id, Hostname: "tcp://" + id + ":1", Slots: slots})
			if rapid.Bool().Draw(rt, "up") {
				apply(rt, s, &events.NodeUp{NodeID: id})
			}
		}
		nTasks := rapid.IntRange(0, 12).Draw(rt, "tasks")
		for i := range nTasks {
			apply(rt, s, submit(fmt.Sprintf("t%02d", i), rapid.SampledFrom(types).Draw(rt, "type")))
		}
		for round := 0; round < 3; round++ {
			ps, _ := Decide(s, now, Policy{})
			booked := map[string]bool{}
			for _, p := range ps {
				r, ok := p.Payload.(*events.SlotReserved)
				require.True(rt, ok)
				slot := r.NodeID + "/" + r.SlotID
				require.Falsef(rt, booked[slot], "slot %s booked twice in one round", slot)
				booked[slot] = true
				apply(rt, s, r)
			}
			// Nothing left to place: every queue is empty or its type is full.
			for _, typ := range s.QueuedTypes() {
				for _, n := range s.Nodes {
					if n.Schedulable() {
						require.Nilf(rt, n.FreeSlot(typ), "task of type %s waits while node %s has a free slot", typ, n.ID)
					}
				}
			}
		}
		// FIFO: within a type, every placed task was submitted before every
		// waiting one.
		for _, typ := range types {
			var lastPlaced, firstWaiting uint64
			for _, task := range s.Tasks {
				if task.ExecutionType != typ {
					continue
				}
				if task.Queued() {
					if firstWaiting == 0 || task.SubmitSeq < firstWaiting {
						firstWaiting = task.SubmitSeq
					}
				} else {
					lastPlaced = max(lastPlaced, task.SubmitSeq)
				}
			}
			if firstWaiting != 0 {
				require.Less(rt, lastPlaced, firstWaiting, "a later task of type %s overtook an earlier one", typ)
			}
		}
	})
}

func TestDecideCancelsAndTimeouts(t *testing.T) {
	t.Parallel()
	pool := nodeUp("n1", "tcp://a:1", map[string]int{"cpu": 1})

	t.Run("AWaitingCancelIsCancelledAndDoesNotBlockTheQueue", func(t *testing.T) {
		t.Parallel()
		s := fold(t, concat(pool, []events.Payload{submit("t1", "cpu"), submit("t2", "cpu"), &events.CancelRequested{TaskID: "t1"}})...)
		ps, _ := Decide(s, now, Policy{})
		require.Equal(t, []string{"t2@n1/cpu-1#1"}, reservations(ps))
		require.Contains(t, payloads(ps), events.Payload(&events.TaskCancelled{TaskID: "t1", Attempt: 0}))
		for _, p := range ps {
			apply(t, s, p.Payload)
		}
		require.Equal(t, projections.TaskCancelled, s.Tasks["t1"].Status)
	})

	t.Run("AStoppedAttemptIsCancelledNotRetried", func(t *testing.T) {
		t.Parallel()
		s := fold(t, concat(pool, []events.Payload{
			submit("t1", "cpu"),
			&events.SlotReserved{TaskID: "t1", Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "c"},
			&events.ContainerStarted{TaskID: "t1", Attempt: 1, NodeID: "n1"},
			&events.CancelRequested{TaskID: "t1"},
			&events.ContainerExited{TaskID: "t1", Attempt: 1, NodeID: "n1", ExitCode: 143},
		})...)
		ps, _ := Decide(s, now, Policy{})
		require.Equal(t, []events.Payload{&events.TaskCancelled{TaskID: "t1", Attempt: 1}}, payloads(ps))
	})

	t.Run("AnAttemptThatSucceededBeforeTheStopCompletes", func(t *testing.T) {
		t.Parallel()
		s := fold(t, concat(pool, []events.Payload{
			submit("t1", "cpu"),
			&events.SlotReserved{TaskID: "t1", Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "c"},
			&events.ContainerStarted{TaskID: "t1", Attempt: 1, NodeID: "n1"},
			&events.CancelRequested{TaskID: "t1"},
			&events.ContainerExited{TaskID: "t1", Attempt: 1, NodeID: "n1", ExitCode: 0},
		})...)
		ps, _ := Decide(s, now, Policy{})
		require.Equal(t, []events.Payload{&events.TaskCompleted{TaskID: "t1", Attempt: 1}}, payloads(ps))
	})

	t.Run("FailedTasksTimeOutToErrorEvenIfTheyNeverStarted", func(t *testing.T) {
		t.Parallel()
		s := projections.NewState()
		for _, p := range concat(pool, []events.Payload{
			&events.TaskSubmitted{TaskID: "t1", ExecutionType: "cpu", MaxRetries: 0},
			&events.SlotReserved{TaskID: "t1", Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "c"},
			&events.StartFailed{TaskID: "t1", Attempt: 1, NodeID: "n1", Error: "no such image"},
		}) {
			apply(t, s, p)
		}
		env, err := events.New("f", &events.TaskFailed{TaskID: "t1", Attempt: 1}, events.Meta{Time: now})
		require.NoError(t, err)
		require.True(t, s.Apply(env).Accepted)
		policy := Policy{FailedTimeout: 20 * time.Hour}
		ps, wake := Decide(s, now.Add(19*time.Hour), policy)
		require.Empty(t, ps)
		require.Equal(t, now.Add(20*time.Hour), wake)
		ps, _ = Decide(s, now.Add(20*time.Hour), policy)
		require.Len(t, ps, 1)
		mark, ok := ps[0].Payload.(*events.MarkedAsError)
		require.True(t, ok)
		require.Contains(t, mark.Reason, "failed for more than 20h0m0s")
		apply(t, s, mark)
		require.Equal(t, projections.TaskError, s.Tasks["t1"].Status)
		require.Contains(t, s.Tasks["t1"].Error, "no such image")
	})
}

func payloads(ps []actor.Proposal) []events.Payload {
	out := make([]events.Payload, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Payload)
	}
	return out
}

func TestRetryDelay(t *testing.T) {
	t.Parallel()
	task := &projections.Task{RetryBackoffMin: time.Second, RetryBackoffMax: 10 * time.Second}
	var got []time.Duration
	for retries := range 6 {
		task.TryCount = retries
		got = append(got, RetryDelay(task, 1))
	}
	// Full jitter at the top of its range: 1, 2, 4, 8, then the maximum.
	require.Equal(t, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}, got)
	task.TryCount = 2
	require.Equal(t, 2*time.Second, RetryDelay(task, 0), "half of the delay is fixed")
	require.Zero(t, RetryDelay(&projections.Task{}, 0.7), "no backoff: retry at once, as the seed")
}

func TestDecideFailover(t *testing.T) {
	t.Parallel()
	running := func(losses int) *projections.State {
		sub := submit("t1", "cpu")
		sub.MaxNodeLosses = losses
		return fold(t, concat(nodeUp("n1", "tcp://a:1", map[string]int{"cpu": 1}), nodeUp("n2", "tcp://b:1", map[string]int{"cpu": 1}), []events.Payload{
			sub,
			&events.SlotReserved{TaskID: "t1", Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "c"},
			&events.ContainerStarted{TaskID: "t1", Attempt: 1, NodeID: "n1"},
			&events.NodeUnstable{NodeID: "n1"},
		})...)
	}
	s := running(3)
	ps, _ := Decide(s, now, Policy{})
	require.Empty(t, ps, "an unstable node keeps its attempts")
	apply(t, s, &events.NodeDown{NodeID: "n1"})
	ps, _ = Decide(s, now, Policy{})
	require.Len(t, ps, 1)
	lost, ok := ps[0].Payload.(*events.TaskRetrying)
	require.True(t, ok)
	require.Equal(t, events.CauseNodeLost, lost.Cause)
	apply(t, s, lost)
	ps, _ = Decide(s, now, Policy{})
	require.Equal(t, []string{"t1@n2/cpu-1#2"}, reservations(ps), "the attempt runs again elsewhere, at once")
	require.Zero(t, s.Tasks["t1"].TryCount)

	s = running(0)
	apply(t, s, &events.NodeDown{NodeID: "n1"})
	ps, _ = Decide(s, now, Policy{})
	require.IsType(t, &events.TaskFailed{}, ps[0].Payload, "no node losses allowed: the task fails")
	apply(t, s, ps[0].Payload)
	require.Equal(t, projections.TaskFailed, s.Tasks["t1"].Status)
}

func TestDecideTimeouts(t *testing.T) {
	t.Parallel()
	sub := submit("t1", "cpu")
	sub.TimeoutMs = 30000
	s := fold(t, concat(nodeUp("n1", "tcp://a:1", map[string]int{"cpu": 1}), []events.Payload{
		sub,
		&events.SlotReserved{TaskID: "t1", Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "c"},
		&events.ContainerStarted{TaskID: "t1", Attempt: 1, NodeID: "n1", StartedAt: now},
	})...)
	ps, wake := Decide(s, now.Add(10*time.Second), Policy{})
	require.Empty(t, ps)
	require.Equal(t, now.Add(30*time.Second), wake)
	ps, _ = Decide(s, now.Add(30*time.Second), Policy{})
	require.Equal(t, []events.Payload{&events.KillRequested{TaskID: "t1", Attempt: 1, Cause: events.CauseTimeout}}, payloads(ps))
	apply(t, s, ps[0].Payload)
	apply(t, s, &events.ContainerExited{TaskID: "t1", Attempt: 1, NodeID: "n1", ExitCode: 143})
	ps, _ = Decide(s, now.Add(31*time.Second), Policy{Jitter: func() float64 { return 0 }})
	retry, ok := ps[0].Payload.(*events.TaskRetrying)
	require.True(t, ok)
	require.Equal(t, events.CauseTimeout, retry.Cause)
	require.Contains(t, retry.Error, "longer than the task's timeout (30s)")
}
