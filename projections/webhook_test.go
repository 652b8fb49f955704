package projections

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/events"
)

const hookURL = "https://example.com/hook"

// endedWithCallback returns the steps that leave task t1, which has a
// callback URL, ended by its outcome: step 7, so the outcome's sequence is 7.
func endedWithCallback(exitCode int) []step {
	sub := submit("t1", "cpu", 0)
	sub.CallbackURL = hookURL
	var outcome events.Payload = &events.TaskCompleted{TaskID: "t1", Attempt: 1}
	if exitCode != 0 {
		outcome = &events.TaskFailed{TaskID: "t1", Attempt: 1, Cause: events.CauseExitCode}
	}
	return []step{
		{p: node("n1", "tcp://a:2375", map[string]int{"cpu": 1})},
		{p: &events.NodeUp{NodeID: "n1"}},
		{p: sub},
		{p: reserve("t1", 1, "n1", "cpu-1")},
		{p: started("t1", 1, "n1")},
		{p: exited("t1", 1, "n1", exitCode)},
		{p: outcome},
	}
}

// attempt is attempt n of the delivery of the outcome at seq: a 2xx answer
// when status is 2xx, a failure otherwise, with a next attempt when next.
func attempt(seq uint64, n, status int, next bool) *events.WebhookAttempted {
	p := &events.WebhookAttempted{
		TaskID: "t1", OutcomeSeq: seq, Attempt: n, URL: hookURL, At: t0.Add(time.Duration(n) * time.Minute), StatusCode: status,
	}
	if status == 0 {
		p.Error = "connection refused"
	}
	if next {
		p.NextAttemptAt = p.At.Add(time.Second)
	}
	return p
}

func delivered(seq uint64, n int) *events.WebhookDelivered {
	return &events.WebhookDelivered{TaskID: "t1", OutcomeSeq: seq, Attempt: n, StatusCode: 200}
}

func abandoned(seq uint64, n int) *events.WebhookAbandoned {
	return &events.WebhookAbandoned{TaskID: "t1", OutcomeSeq: seq, Attempts: n}
}

func TestWebhookFoldTable(t *testing.T) {
	t.Parallel()
	cases := map[string][]step{
		"DeliveredAfterAFailure": with(endedWithCallback(0),
			step{p: attempt(7, 2, 500, true), reject: "attempt 2 of the delivery of outcome 7 of task t1 is not the next (1)"},
			step{p: delivered(7, 0), reject: "did not succeed"},
			step{p: abandoned(7, 0), reject: "has 0 attempts"},
			step{p: attempt(7, 1, 503, true)},
			step{p: attempt(7, 1, 503, true), reject: "is not the next (2)"},
			step{p: delivered(7, 1), reject: "did not succeed"},
			step{p: abandoned(7, 1), reject: "has a next attempt due"},
			step{p: attempt(7, 2, 204, true), reject: "succeeded; no next attempt is due"},
			step{p: attempt(7, 2, 204, false)},
			step{p: attempt(7, 3, 200, false), reject: "succeeded at attempt 2"},
			step{p: abandoned(7, 2), reject: "succeeded at attempt 2"},
			step{p: delivered(7, 1), reject: "is not its last recorded attempt (2)"},
			step{p: delivered(7, 2)},
			step{p: delivered(7, 2), reject: "the delivery of outcome 7 of task t1 is delivered"},
			step{p: attempt(7, 3, 200, false), reject: "is delivered"},
		),
		"AbandonedAfterTheLastAttempt": with(endedWithCallback(0),
			step{p: attempt(7, 1, 0, true)},
			step{p: attempt(7, 2, 0, false)},
			step{p: attempt(7, 3, 0, false), reject: "attempt 2 of the delivery of outcome 7 of task t1 was its last"},
			step{p: delivered(7, 2), reject: "did not succeed"},
			step{p: abandoned(7, 1), reject: "has 2 attempts, not 1"},
			step{p: abandoned(7, 2)},
			step{p: attempt(7, 3, 200, false), reject: "is abandoned"},
		),
		"OnlyTheCurrentOutcome": with(endedWithCallback(0),
			step{p: attempt(6, 1, 200, false), reject: "outcome 6 of task t1 is not its current outcome (7)"},
			step{p: &events.WebhookAttempted{TaskID: "t2", OutcomeSeq: 7, Attempt: 1, StatusCode: 200}, reject: "does not exist"},
		),
		"NothingToDeliverBeforeTheEnd": {
			{p: &events.TaskSubmitted{TaskID: "t1", ExecutionType: "cpu", CallbackURL: hookURL}},
			{p: attempt(1, 1, 200, false), reject: "task t1 has no outcome to deliver"},
		},
		"NoCallbackURL": {
			{p: submit("t1", "cpu", 0)},
			{p: &events.CancelRequested{TaskID: "t1"}},
			{p: &events.TaskCancelled{TaskID: "t1"}},
			{p: attempt(3, 1, 200, false), reject: "task t1 has no callback URL"},
		},
		"ForcedRetrySupersedesAPendingDelivery": with(endedWithCallback(1),
			step{p: attempt(7, 1, 500, true)},
			step{p: &events.RetryRequested{TaskID: "t1"}}, // 9
			step{p: attempt(7, 2, 200, false), reject: "the delivery of outcome 7 of task t1 is superseded"},
			step{p: &events.CancelRequested{TaskID: "t1"}},
			step{p: &events.TaskCancelled{TaskID: "t1", Attempt: 1}}, // 12: a new outcome, a new delivery
			step{p: attempt(7, 2, 200, false), reject: "outcome 7 of task t1 is not its current outcome (12)"},
			step{p: attempt(12, 1, 200, false)},
			step{p: delivered(12, 1)},
		),
		"MarkedAsErrorIsANewOutcome": with(endedWithCallback(1),
			step{p: attempt(7, 1, 200, false)},
			step{p: delivered(7, 1)},
			step{p: &events.MarkedAsError{TaskID: "t1"}}, // 10
			step{p: attempt(10, 1, 200, false)},
		),
	}
	for name, steps := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			run(t, steps)
		})
	}
}

func TestWebhookDeliveryState(t *testing.T) {
	t.Parallel()

	t.Run("EveryOutcomeOpensADelivery", func(t *testing.T) {
		t.Parallel()
		s := run(t, endedWithCallback(0))
		task := s.Tasks["t1"]
		require.Equal(t, hookURL, task.CallbackURL)
		require.NotNil(t, task.Outcome)
		require.Equal(t, OutcomeRef{Seq: 7, ID: task.Outcome.ID, Type: events.TypeTaskCompleted}, *task.Outcome)
		require.Equal(t, &WebhookDelivery{Outcome: *task.Outcome, State: WebhookPending}, task.Webhook)
		at, record, ok := task.Webhook.Due()
		require.True(t, ok)
		require.False(t, record)
		require.True(t, at.IsZero(), "the first attempt is due at once")
	})

	t.Run("AttemptsAreRecorded", func(t *testing.T) {
		t.Parallel()
		s := run(t, with(endedWithCallback(0), step{p: attempt(7, 1, 502, true)}))
		w := s.Tasks["t1"].Webhook
		require.Equal(t, 1, w.Attempts)
		require.Equal(t, 502, w.LastStatusCode)
		require.False(t, w.LastSucceeded)
		require.Equal(t, t0.Add(time.Minute), w.LastAttemptAt)
		at, record, ok := w.Due()
		require.True(t, ok)
		require.False(t, record)
		require.Equal(t, t0.Add(time.Minute+time.Second), at, "the next attempt is due when the event says")

		s = run(t, with(endedWithCallback(0), step{p: attempt(7, 1, 201, false)}))
		_, record, ok = s.Tasks["t1"].Webhook.Due()
		require.True(t, ok)
		require.True(t, record, "a success awaits being recorded delivered")

		s = run(t, with(endedWithCallback(0), step{p: attempt(7, 1, 0, false)}))
		_, record, ok = s.Tasks["t1"].Webhook.Due()
		require.True(t, ok)
		require.True(t, record, "a last failure awaits being recorded abandoned")
	})

	t.Run("EndedDeliveriesAreNotDue", func(t *testing.T) {
		t.Parallel()
		s := run(t, with(endedWithCallback(0), step{p: attempt(7, 1, 200, false)}, step{p: delivered(7, 1)}))
		w := s.Tasks["t1"].Webhook
		require.Equal(t, WebhookDelivered, w.State)
		require.Equal(t, t0, w.EndedAt)
		_, _, ok := w.Due()
		require.False(t, ok)
	})

	t.Run("ARetryLeavesTheOutcome", func(t *testing.T) {
		t.Parallel()
		s := run(t, with(endedWithCallback(1), step{p: &events.RetryRequested{TaskID: "t1"}}))
		task := s.Tasks["t1"]
		require.Nil(t, task.Outcome)
		require.Equal(t, WebhookSuperseded, task.Webhook.State)
		_, _, ok := task.Webhook.Due()
		require.False(t, ok)
	})

	t.Run("WithoutCallbackNoDelivery", func(t *testing.T) {
		t.Parallel()
		s := run(t, []step{{p: submit("t1", "cpu", 0)}, {p: &events.CancelRequested{TaskID: "t1"}}, {p: &events.TaskCancelled{TaskID: "t1"}}})
		task := s.Tasks["t1"]
		require.Equal(t, OutcomeRef{Seq: 3, ID: task.Outcome.ID, Type: events.TypeTaskCancelled}, *task.Outcome)
		require.Nil(t, task.Webhook)
	})

	t.Run("TheViewShowsTheDelivery", func(t *testing.T) {
		t.Parallel()
		s := run(t, with(endedWithCallback(0), step{p: attempt(7, 1, 503, true)}))
		v := s.NewTaskView(s.Tasks["t1"], t0)
		require.Equal(t, hookURL, v.CallbackURL)
		require.Equal(t, &WebhookView{
			OutcomeType: "task.completed.v1", OutcomeSeq: 7, State: WebhookPending, Attempts: 1,
			LastStatusCode: new(503), NextAttemptAt: FormatTime(t0.Add(time.Minute + time.Second)),
		}, v.Webhook)
	})
}
