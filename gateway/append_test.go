package gateway

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
)

// flakyJetStream fails the first appends it is given, as a stream electing
// a new leader does, then passes them to the real server.
type flakyJetStream struct {
	jetstream.JetStream
	failures atomic.Int32
	err      error
	calls    atomic.Int32
}

func (f *flakyJetStream) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	f.calls.Add(1)
	if f.failures.Add(-1) >= 0 {
		return nil, f.err
	}
	return f.JetStream.PublishMsg(ctx, m, opts...)
}

func TestAppendRetries(t *testing.T) {
	t.Parallel()
	const submit = `{"name":"r","image":"busybox","cmd":"true","execution_type":"cpu"}`

	t.Run("TransientFailuresAreRetried", func(t *testing.T) {
		t.Parallel()
		var flaky *flakyJetStream
		b := setup(t, func(c *Config) {
			flaky = &flakyJetStream{JetStream: c.JetStream, err: jetstream.ErrNoStreamResponse}
			flaky.failures.Store(2)
			c.JetStream = flaky
		})
		before := b.streamMsgs(t)
		code, body := b.do(t, http.MethodPost, "/tasks", submit)
		require.Equal(t, http.StatusOK, code, string(body))
		require.Equal(t, int32(3), flaky.calls.Load())
		require.Equal(t, before+1, b.streamMsgs(t), "the task is stored once")
	})

	t.Run("PermanentFailuresAreNot", func(t *testing.T) {
		t.Parallel()
		var flaky *flakyJetStream
		b := setup(t, func(c *Config) {
			flaky = &flakyJetStream{JetStream: c.JetStream, err: &jetstream.APIError{Code: 400, ErrorCode: 10060, Description: "expected stream does not match"}}
			flaky.failures.Store(1)
			c.JetStream = flaky
		})
		code, body := b.do(t, http.MethodPost, "/tasks", submit)
		require.Equal(t, http.StatusServiceUnavailable, code, string(body))
		require.Equal(t, int32(1), flaky.calls.Load())
	})
}
