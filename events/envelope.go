package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/oklog/ulid/v2"
)

// Envelope is the JSON body of every message in the event stream.
type Envelope struct {
	// ID is a ULID unique to this event.
	ID string `json:"id"`
	// Type is the versioned wire name of the payload.
	Type Type `json:"type"`
	// AggregateID is the task or node the event belongs to.
	AggregateID string `json:"aggregate_id"`
	// Key is the deterministic idempotency key of the event; Append sends it
	// as Nats-Msg-Id, so a retried publish is stored once.
	Key string `json:"key"`
	// Time is when the writer created the event.
	Time time.Time `json:"time"`
	// CorrelationID ties together every event caused by one request.
	CorrelationID string `json:"correlation_id,omitempty"`
	// CausationID is the ID of the event that caused this one.
	CausationID string `json:"causation_id,omitempty"`
	// Actor names the writer: broker instance and role.
	Actor string `json:"actor,omitempty"`
	// Data is the payload.
	Data json.RawMessage `json:"data"`

	// Seq is the stream sequence, set when the event is read from the stream.
	// It is not part of the body.
	Seq uint64 `json:"-"`
}

// Meta holds the optional envelope fields a writer supplies.
type Meta struct {
	CorrelationID string
	CausationID   string
	Actor         string
	// Time defaults to time.Now.
	Time time.Time
}

// New builds an envelope for payload p with the idempotency key key.
func New(key string, p Payload, meta Meta) (Envelope, error) {
	if p == nil {
		return Envelope{}, errors.New("nil payload")
	}
	t, aggregateID := p.EventType(), p.AggregateID()
	if !Known(t) {
		return Envelope{}, &UnknownTypeError{Type: t}
	}
	if !validToken(aggregateID) {
		return Envelope{}, fmt.Errorf("invalid aggregate id %q: must be a non-empty subject token", aggregateID)
	}
	if key == "" {
		return Envelope{}, ErrNoKey
	}
	data, err := json.Marshal(p)
	if err != nil {
		return Envelope{}, fmt.Errorf("encoding %s payload: %w", t, err)
	}
	at := meta.Time
	if at.IsZero() {
		at = time.Now()
	}
	return Envelope{
		ID:            ulid.Make().String(),
		Type:          t,
		AggregateID:   aggregateID,
		Key:           key,
		Time:          Time(at),
		CorrelationID: meta.CorrelationID,
		CausationID:   meta.CausationID,
		Actor:         meta.Actor,
		Data:          data,
	}, nil
}

// Subject returns the subject the envelope is published on.
func (e Envelope) Subject() string {
	return Subject(e.Type, e.AggregateID)
}

// Payload decodes the envelope's data into its typed payload. It returns an
// *UnknownTypeError (matching ErrUnknownType) for types this package does not
// know; consumers skip and count those.
func (e Envelope) Payload() (Payload, error) {
	return decodePayload(e.Type, e.Data)
}

// Encode returns the wire form of the envelope.
func Encode(e Envelope) ([]byte, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	return json.Marshal(e)
}

// Decode parses the wire form of an envelope and checks its required fields.
// It does not decode the payload (see Envelope.Payload), so an envelope of an
// unknown type decodes fine.
func Decode(b []byte) (Envelope, error) {
	var e Envelope
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&e); err != nil {
		return Envelope{}, &DecodeError{Reason: err.Error()}
	}
	if dec.More() {
		return Envelope{}, &DecodeError{Reason: "trailing data after envelope"}
	}
	if err := e.validate(); err != nil {
		return Envelope{}, err
	}
	return e, nil
}

func (e Envelope) validate() error {
	var problems []string
	if e.ID == "" {
		problems = append(problems, "missing id")
	}
	if e.Type.Aggregate() == "" {
		problems = append(problems, fmt.Sprintf("malformed type %q", e.Type))
	}
	if !validToken(e.AggregateID) {
		problems = append(problems, fmt.Sprintf("invalid aggregate_id %q", e.AggregateID))
	}
	if e.Key == "" {
		problems = append(problems, "missing key")
	}
	if len(e.Data) == 0 || !json.Valid(e.Data) {
		problems = append(problems, "missing or invalid data")
	}
	if len(problems) > 0 {
		return &DecodeError{Reason: fmt.Sprint(problems)}
	}
	return nil
}
