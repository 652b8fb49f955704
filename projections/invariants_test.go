package projections

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/cbroker/broker/events"
)

// checkInvariants checks what must hold after every event, accepted or not.
func checkInvariants(t require.TestingT, s *State) {
	held := map[string]int{}
	for _, n := range s.Nodes {
		for _, slot := range n.Slots {
			if slot.Status == SlotAvailable {
				require.Emptyf(t, slot.TaskID, "free slot %s/%s names task %s", n.ID, slot.ID, slot.TaskID)
				continue
			}
			task := s.Tasks[slot.TaskID]
			require.NotNilf(t, task, "busy slot %s/%s names unknown task %q", n.ID, slot.ID, slot.TaskID)
			require.Truef(t, task.Active(), "slot %s/%s held by inactive task %s (%s)", n.ID, slot.ID, task.ID, task.Status)
			require.Equal(t, n.ID, task.NodeID)
			require.Equal(t, slot.ID, task.SlotID)
			require.Equal(t, task.Attempt, slot.Attempt)
			require.Equal(t, task.ExecutionType, slot.ExecutionType)
			held[task.ID]++
		}
	}
	for id, task := range s.Tasks {
		require.LessOrEqual(t, task.TryCount, task.MaxRetries)
		require.LessOrEqual(t, task.NodeLosses, task.MaxNodeLosses)
		if task.Active() {
			require.Equalf(t, 1, held[id], "active task %s holds %d slots", id, held[id])
			require.Contains(t, s.active, id)
		} else {
			require.Zerof(t, held[id], "inactive task %s holds a slot", id)
			require.NotContains(t, s.active, id)
		}
		if task.AttemptEnded {
			require.Contains(t, s.awaiting, id)
		} else {
			require.NotContains(t, s.awaiting, id)
		}
		inQueue := slices.Contains(s.queues[task.ExecutionType], task)
		require.Equalf(t, task.Queued(), inQueue, "task %s (%s) in queue: %t", id, task.Status, inQueue)
	}
	// Slots: retiring ones are busy; the others match the wanted counts.
	for _, n := range s.Nodes {
		per := map[string]int{}
		for _, slot := range n.Slots {
			if slot.Retiring {
				require.NotEqual(t, SlotAvailable, slot.Status, "a free slot is retiring")
				continue
			}
			per[slot.ExecutionType]++
		}
		for typ, want := range n.SlotsWanted {
			require.Equalf(t, want, per[typ], "node %s has %d %s slots, wants %d", n.ID, per[typ], typ, want)
		}
		for typ, got := range per {
			require.Equalf(t, n.SlotsWanted[typ], got, "node %s has %d %s slots, wants %d", n.ID, got, typ, n.SlotsWanted[typ])
		}
		require.Equal(t, n.ID, s.hostnames[n.Hostname])
	}
	require.Len(t, s.hostnames, len(s.Nodes))
	// Indexes: byAge, failed and tags follow the tasks.
	require.Len(t, s.byAge, len(s.Tasks))
	require.True(t, slices.IsSortedFunc(s.byAge, func(a, b *Task) int { return int(a.SubmitSeq) - int(b.SubmitSeq) }))
	tags := map[string]map[string]int{}
	for _, task := range s.byAge {
		require.Same(t, task, s.Tasks[task.ID])
		for k, v := range task.Tags {
			if tags[k] == nil {
				tags[k] = map[string]int{}
			}
			tags[k][v]++
		}
		if task.Status == TaskFailed {
			require.Contains(t, s.failed, task.ID)
		}
		if task.Claim != "" {
			require.Positivef(t, task.ClaimSeq, "claim of task %s without its sequence", task.ID)
			require.Positivef(t, task.Attempt, "task %s is claimed before its first reservation", task.ID)
		}
		if task.KillRequested != 0 {
			require.True(t, task.Active(), "kill requested for an attempt that is not running")
		}
		if task.Status.Terminal() {
			require.Falsef(t, task.EndedAt.IsZero(), "terminal task %s without ended_at", task.ID)
			require.NotNilf(t, task.Outcome, "terminal task %s without an outcome", task.ID)
		} else {
			require.Nilf(t, task.Outcome, "task %s has an outcome but is %s", task.ID, task.Status)
		}
		if w := task.Webhook; w != nil && w.State == WebhookPending {
			require.Truef(t, task.Status.Terminal(), "pending delivery for task %s, which is %s", task.ID, task.Status)
			require.Equalf(t, *task.Outcome, w.Outcome, "pending delivery of task %s is for another outcome", task.ID)
		}
		if task.Webhook != nil {
			require.NotEmpty(t, task.CallbackURL)
		}
	}
	require.Equal(t, tags, s.tags)
	for id := range s.failed {
		require.Equal(t, TaskFailed, s.Tasks[id].Status)
	}
	for id, task := range s.Tasks {
		_, ok := s.cancelling[id]
		require.Equalf(t, task.CancelRequested && !task.Status.Terminal(), ok, "cancelling index of %s", id)
	}
	counts := map[TaskStatus]int{}
	for _, task := range s.Tasks {
		counts[task.Status]++
	}
	for st, n := range s.TaskCounts {
		require.Equalf(t, counts[st], n, "count of %s tasks", st)
	}
	for typ, q := range s.queues {
		require.NotEmpty(t, q, "empty queue kept for %s", typ)
		require.True(t, slices.IsSortedFunc(q, func(a, b *Task) int { return int(a.SubmitSeq) - int(b.SubmitSeq) }))
	}
}

// genEvent draws an event from a small universe, so that random sequences
// contain many valid proposals, many conflicting ones and some nonsense.
func genEvent(t *rapid.T) events.Payload {
	task := rapid.SampledFrom([]string{"t1", "t2", "t3"}).Draw(t, "task")
	nodeID := rapid.SampledFrom([]string{"n1", "n2"}).Draw(t, "node")
	attempt := rapid.IntRange(1, 5).Draw(t, "attempt")
	slot := rapid.SampledFrom([]string{"cpu-1", "cpu-2", "io-1"}).Draw(t, "slot")
	switch rapid.IntRange(0, 29).Draw(t, "kind") {
	case 29:
		runners := []string{"", "r1", "r2"}
		return &events.AttemptClaimed{
			TaskID: task, Attempt: attempt, NodeID: nodeID,
			Runner: rapid.SampledFrom(runners).Draw(t, "runner"), Supersedes: rapid.SampledFrom(runners).Draw(t, "supersedes"),
		}
	case 26: // Attempt is an offset from the recorded attempts (see aimWebhook)
		return &events.WebhookAttempted{
			TaskID: task, Attempt: rapid.IntRange(0, 2).Draw(t, "webhook_attempt"),
			StatusCode:    rapid.SampledFrom([]int{0, 200, 500}).Draw(t, "status"),
			NextAttemptAt: rapid.SampledFrom([]time.Time{{}, t0}).Draw(t, "next_attempt_at"),
		}
	case 27:
		return &events.WebhookDelivered{TaskID: task, Attempt: rapid.IntRange(-1, 1).Draw(t, "webhook_attempt")}
	case 28:
		return &events.WebhookAbandoned{TaskID: task, Attempts: rapid.IntRange(-1, 1).Draw(t, "webhook_attempt")}
	case 23:
		return &events.TaskRetrying{TaskID: task, Attempt: attempt, NextAttempt: attempt + 1, Cause: events.CauseNodeLost}
	case 24:
		return &events.TaskFailed{TaskID: task, Attempt: attempt, Cause: events.CauseNodeLost}
	case 25:
		return &events.StaleAttemptExited{TaskID: task, Attempt: attempt, NodeID: nodeID, ExitCode: 137}
	case 0:
		return &events.TaskSubmitted{
			TaskID: task, ExecutionType: rapid.SampledFrom([]string{"cpu", "io"}).Draw(t, "type"), MaxRetries: rapid.IntRange(0, 3).Draw(t, "retries"),
			MaxNodeLosses: rapid.IntRange(0, 2).Draw(t, "losses"),
			Tags:          rapid.SampledFrom([]map[string]string{nil, {"a": "1"}, {"a": "2", "b": "x"}}).Draw(t, "tags"),
			CallbackURL:   rapid.SampledFrom([]string{"", "http://h/"}).Draw(t, "callback_url"),
		}
	case 13:
		return &events.CancelRequested{TaskID: task}
	case 14:
		return &events.TaskCancelled{TaskID: task, Attempt: attempt - 1}
	case 15:
		return &events.KillRequested{TaskID: task, Attempt: attempt}
	case 16:
		return &events.RetryRequested{TaskID: task}
	case 17:
		return &events.MarkedAsError{TaskID: task}
	case 18:
		return &events.TaskDeleted{TaskID: task}
	case 19:
		return &events.NodeUpdated{NodeID: nodeID, Slots: rapid.SampledFrom([]map[string]int{{"cpu": 1}, {"cpu": 3, "io": 2}, {"io": 1}, {}}).Draw(t, "slots")}
	case 20:
		return &events.NodeAcceptanceChanged{NodeID: nodeID, Accept: rapid.Bool().Draw(t, "accept")}
	case 21:
		return &events.NodeRemoved{NodeID: nodeID}
	case 22:
		return &events.NodeKillRequested{NodeID: nodeID}
	case 1:
		return &events.NodeRegistered{NodeID: nodeID, Hostname: "tcp://" + nodeID, Slots: map[string]int{"cpu": 2, "io": 1}}
	case 2:
		return &events.NodeUp{NodeID: nodeID}
	case 3:
		return &events.NodeDown{NodeID: nodeID}
	case 4:
		return &events.SlotReserved{TaskID: task, Attempt: attempt, NodeID: nodeID, SlotID: slot, ContainerName: "c"}
	case 5:
		return &events.ContainerStarted{TaskID: task, Attempt: attempt, NodeID: nodeID}
	case 6:
		return &events.StartFailed{TaskID: task, Attempt: attempt, NodeID: nodeID}
	case 7:
		return &events.ContainerExited{TaskID: task, Attempt: attempt, NodeID: nodeID, ExitCode: rapid.IntRange(0, 1).Draw(t, "code")}
	case 8:
		return &events.TaskCompleted{TaskID: task, Attempt: attempt}
	case 9:
		return &events.TaskRetrying{TaskID: task, Attempt: attempt, NextAttempt: rapid.IntRange(1, 6).Draw(t, "next")}
	case 10:
		return &events.TaskFailed{TaskID: task, Attempt: attempt}
	case 11:
		return &events.LogsArchived{TaskID: task, Attempt: attempt, Object: "o"}
	default:
		return &events.NodeUnstable{NodeID: nodeID}
	}
}

// aimWebhook points a webhook event at the outcome its task's delivery is
// for, and turns its drawn attempt offset into an attempt number near the
// recorded ones, so that random sequences hold valid deliveries too.
func aimWebhook(s *State, p events.Payload) events.Payload {
	t, ok := s.Tasks[p.AggregateID()]
	if !ok || t.Webhook == nil {
		return p
	}
	w := t.Webhook
	switch p := p.(type) {
	case *events.WebhookAttempted:
		p.OutcomeSeq, p.Attempt = w.Outcome.Seq, w.Attempts+p.Attempt
	case *events.WebhookDelivered:
		p.OutcomeSeq, p.Attempt = w.Outcome.Seq, w.Attempts+p.Attempt
	case *events.WebhookAbandoned:
		p.OutcomeSeq, p.Attempts = w.Outcome.Seq, w.Attempts+p.Attempts
	}
	return p
}

func TestFoldProperties(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(rt *rapid.T) {
		n := rapid.IntRange(1, 300).Draw(rt, "n")
		envs := make([]events.Envelope, 0, n)
		s := NewState()
		terminal := map[string]TaskStatus{}
		completions := map[string]int{}
		for i := range n {
			env := envelope(rt, uint64(i+1), aimWebhook(s, genEvent(rt)))
			envs = append(envs, env)
			out := s.Apply(env)
			checkInvariants(rt, s)
			if out.Accepted && env.Type == events.TypeTaskRetryRequested {
				completions[env.AggregateID] = 0 // a forced retry may complete again
			}
			if out.Accepted && env.Type == events.TypeTaskCompleted {
				completions[env.AggregateID]++
				require.Equalf(rt, 1, completions[env.AggregateID], "task %s completed twice", env.AggregateID)
			}
			// A terminal task changes only by an explicit request.
			for id, st := range terminal {
				switch env.Type {
				case events.TypeTaskRetryRequested, events.TypeTaskMarkedAsError, events.TypeTaskDeleted:
					if env.AggregateID == id && out.Accepted {
						delete(terminal, id)
						continue
					}
				}
				require.Equalf(rt, st, s.Tasks[id].Status, "terminal task %s changed by %s", id, env.Type)
			}
			for id, task := range s.Tasks {
				if task.Status.Terminal() {
					terminal[id] = task.Status
				}
			}
		}
		// Determinism: the same events folded again give the same state.
		again := NewState()
		for _, env := range envs {
			again.Apply(env)
		}
		require.True(rt, reflect.DeepEqual(s, again), "fold is not deterministic")
	})
}

// TestClaimsFormOneChain races claims of one attempt from three runners,
// some naming a claimant they replace, some withdrawing one (no runner),
// against the attempt's start: the accepted claims form one chain (each
// names the claimant before it, or nobody when there is none), and none is
// accepted once the container was reported started or failed to start.
func TestClaimsFormOneChain(t *testing.T) {
	t.Parallel()
	runners := []string{"r1", "r2", "r3"}
	rapid.Check(t, func(rt *rapid.T) {
		s := NewState()
		seq := uint64(0)
		apply := func(p events.Payload) Outcome {
			seq++
			return s.Apply(envelope(rt, seq, p))
		}
		for _, p := range []events.Payload{
			node("n1", "tcp://a:2375", map[string]int{"cpu": 1}), &events.NodeUp{NodeID: "n1"},
			submit("t1", "cpu", 0), reserve("t1", 1, "n1", "cpu-1"),
		} {
			require.True(rt, apply(p).Accepted)
		}
		holder, began := "", false
		for range rapid.IntRange(1, 20).Draw(rt, "n") {
			switch rapid.IntRange(0, 9).Draw(rt, "kind") {
			case 0:
				began = apply(started("t1", 1, "n1")).Accepted || began
			case 1:
				began = apply(&events.StartFailed{TaskID: "t1", Attempt: 1, NodeID: "n1"}).Accepted || began
			default:
				c := claim("t1", 1, rapid.SampledFrom(append([]string{""}, runners...)).Draw(rt, "runner"),
					rapid.SampledFrom(append([]string{""}, runners...)).Draw(rt, "supersedes"))
				out := apply(c)
				valid := c.Runner != "" || c.Supersedes != ""
				require.Equalf(rt, valid && !began && c.Supersedes == holder, out.Accepted,
					"claim by %s superseding %q, held by %q, started %t: %s", c.Runner, c.Supersedes, holder, began, out.Reason)
				if out.Accepted {
					holder = c.Runner
				}
			}
			require.Equal(rt, holder, s.Tasks["t1"].Claim)
			checkInvariants(rt, s)
		}
	})
}

func ExampleState_Apply() {
	s := NewState()
	for i, p := range []events.Payload{
		&events.NodeRegistered{NodeID: "n1", Hostname: "unix:///var/run/docker.sock", Slots: map[string]int{"cpu": 1}},
		&events.NodeUp{NodeID: "n1"},
		&events.TaskSubmitted{TaskID: "t1", ExecutionType: "cpu", MaxRetries: 3},
		&events.TaskSubmitted{TaskID: "t2", ExecutionType: "cpu", MaxRetries: 3},
		&events.SlotReserved{TaskID: "t1", Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "t1-a1"},
		&events.SlotReserved{TaskID: "t2", Attempt: 1, NodeID: "n1", SlotID: "cpu-1", ContainerName: "t2-a1"},
	} {
		env, _ := events.New(fmt.Sprint(i), p, events.Meta{})
		out := s.Apply(env)
		fmt.Println(strings.TrimSpace(fmt.Sprintf("%s %t %s", out.Type, out.Accepted, out.Reason)))
	}
	// Output:
	// node.registered.v1 true
	// node.up.v1 true
	// task.submitted.v1 true
	// task.submitted.v1 true
	// task.slot_reserved.v1 true
	// task.slot_reserved.v1 false slot cpu-1 of node n1 is attaching for task t1 attempt 1
}
