package events

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestTransient(t *testing.T) {
	unavailable := &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}
	refused := &jetstream.APIError{Code: 400, ErrorCode: 10060, Description: "expected stream does not match"}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{jetstream.ErrNoStreamResponse, true},
		{fmt.Errorf("appending: %w", nats.ErrNoResponders), true},
		{fmt.Errorf("appending: %w", context.DeadlineExceeded), true},
		{jetstream.ErrAsyncPublishTimeout, true},
		{nats.ErrDisconnected, true},
		{fmt.Errorf("appending: %w", unavailable), true},
		{fmt.Errorf("appending: %w", refused), false},
		{&jetstream.APIError{Code: 409, ErrorCode: 10158, Description: "duplicate message id is in process"}, true},
		{context.Canceled, false},
		{errors.New("encoding"), false},
		{errors.Join(jetstream.ErrAsyncPublishTimeout, fmt.Errorf("x: %w", unavailable)), true},
		{errors.Join(jetstream.ErrAsyncPublishTimeout, refused), false},
	} {
		if got := Transient(tc.err); got != tc.want {
			t.Errorf("Transient(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
