package events

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Header names set on every event message.
const (
	// HeaderType carries the event type, so a consumer can skip a message
	// without decoding its body.
	HeaderType = "Cb-Type"
)

// Ack is the stream's acknowledgement of an append.
type Ack struct {
	// Seq is the stream sequence of the event; for a duplicate, the sequence
	// of the event first stored under the same key.
	Seq uint64
	// Duplicate is true when an event with the same key was already stored
	// within the duplicate window and this append stored nothing.
	Duplicate bool
}

// Msg returns the NATS message for an envelope: its subject, its encoded body
// and its Nats-Msg-Id, which is always the envelope's deterministic Key. It is
// the one place messages for the event stream are built.
func Msg(e Envelope) (*nats.Msg, error) {
	body, err := Encode(e)
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(e.Subject())
	m.Data = body
	m.Header.Set(jetstream.MsgIDHeader, e.Key)
	m.Header.Set(HeaderType, string(e.Type))
	return m, nil
}

// Append stores one event and waits for the stream's acknowledgement.
func Append(ctx context.Context, js jetstream.JetStream, e Envelope) (Ack, error) {
	m, err := Msg(e)
	if err != nil {
		return Ack{}, err
	}
	pa, err := js.PublishMsg(ctx, m, jetstream.WithExpectStream(StreamName))
	if err != nil {
		return Ack{}, fmt.Errorf("appending %s for %s: %w", e.Type, e.AggregateID, err)
	}
	return Ack{Seq: pa.Sequence, Duplicate: pa.Duplicate}, nil
}

// AckTimeout bounds AppendAll's wait for acknowledgements when ctx has no
// deadline. An acknowledgement can be lost for good: when the stream's
// leader dies, the appends it had not answered get no answer from anyone.
const AckTimeout = 10 * time.Second

// AppendAll stores events in order with pipelined publishes and waits for
// every acknowledgement (up to AckTimeout when ctx has no deadline). On
// error some events may be stored and others not; calling AppendAll again
// with the same envelopes is safe, because each carries its idempotency key.
func AppendAll(ctx context.Context, js jetstream.JetStream, envs []Envelope) ([]Ack, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, AckTimeout)
		defer cancel()
	}
	futures := make([]jetstream.PubAckFuture, 0, len(envs))
	for _, e := range envs {
		m, err := Msg(e)
		if err != nil {
			return nil, err
		}
		f, err := js.PublishMsgAsync(m, jetstream.WithExpectStream(StreamName))
		if err != nil {
			return nil, fmt.Errorf("appending %s for %s: %w", e.Type, e.AggregateID, err)
		}
		futures = append(futures, f)
	}
	acks := make([]Ack, len(futures))
	var errs []error
	for i, f := range futures {
		select {
		case pa := <-f.Ok():
			acks[i] = Ack{Seq: pa.Sequence, Duplicate: pa.Duplicate}
		case err := <-f.Err():
			errs = append(errs, fmt.Errorf("appending %s for %s: %w", envs[i].Type, envs[i].AggregateID, err))
		case <-ctx.Done():
			return nil, fmt.Errorf("appending %d events: %w", len(envs), ctx.Err())
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return acks, nil
}

// Transient reports whether a failed append may succeed when retried with
// the same envelopes, as happens while the stream elects a new leader or the
// connection moves to another server: no responders, a timeout (the append
// may or may not be stored; its key makes the retry safe), a lost or stalled
// connection, JetStream answering 503 (10008: "JetStream system
// temporarily unavailable"), or a replicated stream still storing an earlier
// append with the same key (10158: "duplicate message id is in process"; the
// retry gets the duplicate's acknowledgement). Other errors, such as a
// refused message or a cancelled ctx, are permanent. A joined error is
// transient when each of its errors is.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	if joined, ok := err.(interface{ Unwrap() []error }); ok { //nolint:errorlint // the join itself, not a wrapped one
		for _, e := range joined.Unwrap() {
			if !Transient(e) {
				return false
			}
		}
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.Code == http.StatusServiceUnavailable || apiErr.ErrorCode == errCodeDuplicateInProcess
	}
	for _, t := range transientErrors {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// errCodeDuplicateInProcess is JetStream's 10158, which nats.go does not name.
const errCodeDuplicateInProcess jetstream.ErrorCode = 10158

var transientErrors = []error{
	jetstream.ErrNoStreamResponse, nats.ErrNoResponders, context.DeadlineExceeded, nats.ErrTimeout,
	jetstream.ErrAsyncPublishTimeout, jetstream.ErrTooManyStalledMsgs,
	nats.ErrDisconnected, nats.ErrConnectionReconnecting, nats.ErrStaleConnection,
}
