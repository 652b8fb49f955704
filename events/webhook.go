package events

import "time"

// Webhook events: the delivery of a task's terminal outcome event
// (completed, failed, cancelled, marked_as_error) to the task's CallbackURL.
// Each delivery is identified by the stream sequence of the outcome event it
// delivers; a forced retry that ends again makes a new outcome and so a new
// delivery.

// WebhookAttempted records one HTTP POST of an outcome event to the task's
// callback URL and its result. The fold accepts attempts in order (1, 2, ...)
// and only for the task's current outcome while its delivery is pending.
type WebhookAttempted struct {
	TaskID string `json:"task_id"`
	// OutcomeSeq is the stream sequence of the outcome event delivered.
	OutcomeSeq uint64 `json:"outcome_seq"`
	// OutcomeID is that event's id, sent as X-CB-Event-Id.
	OutcomeID string `json:"outcome_id"`
	// Attempt counts the delivery's attempts from 1.
	Attempt int `json:"attempt"`
	// DeliveryID identifies this attempt, sent as X-CB-Delivery-Id.
	DeliveryID string `json:"delivery_id"`
	URL        string `json:"url"`
	// At is when the request was sent.
	At time.Time `json:"at"`
	// StatusCode is the receiver's HTTP status; 0 when there was no answer.
	StatusCode int `json:"status_code,omitempty"`
	// Error says why there was no answer (connection refused, timeout).
	Error      string `json:"error,omitempty"`
	DurationMs int64  `json:"duration_ms"`
	// NextAttemptAt is when the next attempt is due, resolved with backoff
	// and jitter by the writer. Zero after a success, and after the last
	// attempt the writer will make.
	NextAttemptAt time.Time `json:"next_attempt_at,omitzero"`
}

// EventType implements Payload.
func (*WebhookAttempted) EventType() Type { return TypeTaskWebhookAttempted }

// AggregateID implements Payload.
func (p *WebhookAttempted) AggregateID() string { return p.TaskID }

// Succeeded reports whether the receiver answered with a 2xx status.
func (p *WebhookAttempted) Succeeded() bool {
	return p.Error == "" && p.StatusCode >= 200 && p.StatusCode < 300
}

// WebhookDelivered records that an outcome was delivered: attempt Attempt
// got a 2xx answer. Nothing is sent for that outcome again.
type WebhookDelivered struct {
	TaskID     string `json:"task_id"`
	OutcomeSeq uint64 `json:"outcome_seq"`
	Attempt    int    `json:"attempt"`
	StatusCode int    `json:"status_code"`
}

// EventType implements Payload.
func (*WebhookDelivered) EventType() Type { return TypeTaskWebhookDelivered }

// AggregateID implements Payload.
func (p *WebhookDelivered) AggregateID() string { return p.TaskID }

// WebhookAbandoned records that the delivery of an outcome was given up
// after Attempts failed attempts.
type WebhookAbandoned struct {
	TaskID     string `json:"task_id"`
	OutcomeSeq uint64 `json:"outcome_seq"`
	Attempts   int    `json:"attempts"`
	// Error is the last attempt's result.
	Error string `json:"error,omitempty"`
}

// EventType implements Payload.
func (*WebhookAbandoned) EventType() Type { return TypeTaskWebhookAbandoned }

// AggregateID implements Payload.
func (p *WebhookAbandoned) AggregateID() string { return p.TaskID }
