package projections

import (
	"github.com/cbroker/broker/events"
)

// outcomeChanged follows a change of the task's status: a terminal status
// reached by env makes env the task's outcome and, with a callback URL, opens
// its delivery (superseding a pending delivery of an earlier outcome);
// leaving a terminal status (a forced retry) ends a pending delivery as
// superseded.
func (t *Task) outcomeChanged(env events.Envelope) {
	if !t.Status.Terminal() {
		t.Outcome = nil
		if t.Webhook != nil && t.Webhook.State == WebhookPending {
			t.Webhook.State = WebhookSuperseded
		}
		return
	}
	t.Outcome = &OutcomeRef{Seq: env.Seq, ID: env.ID, Type: env.Type}
	if t.CallbackURL != "" {
		t.Webhook = &WebhookDelivery{Outcome: *t.Outcome, State: WebhookPending}
	}
}

// pendingDelivery returns the task's delivery of the outcome at sequence
// outcomeSeq, which must be its current outcome and still pending.
func pendingDelivery(t *Task, outcomeSeq uint64) (*WebhookDelivery, error) {
	w := t.Webhook
	switch {
	case t.CallbackURL == "":
		return nil, rejectf("task %s has no callback URL", t.ID)
	case w == nil:
		return nil, rejectf("task %s has no outcome to deliver", t.ID)
	case w.Outcome.Seq != outcomeSeq:
		return nil, rejectf("outcome %d of task %s is not its current outcome (%d)", outcomeSeq, t.ID, w.Outcome.Seq)
	case w.State != WebhookPending:
		return nil, rejectf("the delivery of outcome %d of task %s is %s", outcomeSeq, t.ID, w.State)
	}
	return w, nil
}

func applyWebhookAttempted(t *Task, p *events.WebhookAttempted) error {
	w, err := pendingDelivery(t, p.OutcomeSeq)
	if err != nil {
		return err
	}
	switch {
	case p.Attempt != w.Attempts+1:
		return rejectf("attempt %d of the delivery of outcome %d of task %s is not the next (%d)", p.Attempt, p.OutcomeSeq, t.ID, w.Attempts+1)
	case w.Attempts > 0 && w.LastSucceeded:
		return rejectf("the delivery of outcome %d of task %s succeeded at attempt %d", p.OutcomeSeq, t.ID, w.Attempts)
	case w.Attempts > 0 && w.NextAttemptAt.IsZero():
		return rejectf("attempt %d of the delivery of outcome %d of task %s was its last", w.Attempts, p.OutcomeSeq, t.ID)
	case !p.NextAttemptAt.IsZero() && p.Succeeded():
		return rejectf("attempt %d of the delivery of outcome %d of task %s succeeded; no next attempt is due", p.Attempt, p.OutcomeSeq, t.ID)
	}
	w.Attempts = p.Attempt
	w.LastStatusCode, w.LastError, w.LastAttemptAt = p.StatusCode, p.Error, p.At
	w.LastSucceeded = p.Succeeded()
	w.NextAttemptAt = p.NextAttemptAt
	return nil
}

func applyWebhookDelivered(t *Task, env events.Envelope, p *events.WebhookDelivered) error {
	w, err := pendingDelivery(t, p.OutcomeSeq)
	if err != nil {
		return err
	}
	switch {
	case p.Attempt != w.Attempts:
		return rejectf("attempt %d of the delivery of outcome %d of task %s is not its last recorded attempt (%d)", p.Attempt, p.OutcomeSeq, t.ID, w.Attempts)
	case !w.LastSucceeded:
		return rejectf("attempt %d of the delivery of outcome %d of task %s did not succeed", p.Attempt, p.OutcomeSeq, t.ID)
	}
	w.State, w.EndedAt = WebhookDelivered, env.Time
	return nil
}

func applyWebhookAbandoned(t *Task, env events.Envelope, p *events.WebhookAbandoned) error {
	w, err := pendingDelivery(t, p.OutcomeSeq)
	if err != nil {
		return err
	}
	switch {
	case w.Attempts == 0 || p.Attempts != w.Attempts:
		return rejectf("the delivery of outcome %d of task %s has %d attempts, not %d", p.OutcomeSeq, t.ID, w.Attempts, p.Attempts)
	case w.LastSucceeded:
		return rejectf("the delivery of outcome %d of task %s succeeded at attempt %d", p.OutcomeSeq, t.ID, w.Attempts)
	case !w.NextAttemptAt.IsZero():
		return rejectf("the delivery of outcome %d of task %s has a next attempt due", p.OutcomeSeq, t.ID)
	}
	w.State, w.EndedAt = WebhookAbandoned, env.Time
	return nil
}
