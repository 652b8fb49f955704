package gateway

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/events"
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

// lossyAckJetStream gives out an idempotency bucket whose first Create is
// stored but reported as timed out, as when the bucket's stream leader dies
// before it answers.
type lossyAckJetStream struct {
	jetstream.JetStream
	lost atomic.Bool
}

func (j *lossyAckJetStream) KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	kv, err := j.JetStream.KeyValue(ctx, bucket)
	if err != nil || bucket != events.BucketIdempotency {
		return kv, err
	}
	return &lossyAckBucket{KeyValue: kv, lost: &j.lost}, nil
}

type lossyAckBucket struct {
	jetstream.KeyValue
	lost *atomic.Bool
}

func (b *lossyAckBucket) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	rev, err := b.KeyValue.Create(ctx, key, value, opts...)
	if err == nil && b.lost.CompareAndSwap(false, true) {
		return 0, context.DeadlineExceeded
	}
	return rev, err
}

func TestIdempotencyClaimWithALostAcknowledgement(t *testing.T) {
	t.Parallel()
	var lossy *lossyAckJetStream
	b := setup(t, func(c *Config) {
		lossy = &lossyAckJetStream{JetStream: c.JetStream}
		c.JetStream = lossy
	})
	resp, body := b.doWith(t, http.MethodPost, "/tasks", `{"name":"r","image":"busybox","cmd":"true","execution_type":"cpu"}`,
		map[string]string{HeaderIdempotencyKey: "lost-ack"})
	require.Equal(t, http.StatusOK, resp.StatusCode, "the request recognises its own claim, not another's: %s", body)
	require.True(t, lossy.lost.Load())
	resp, _ = b.doWith(t, http.MethodPost, "/tasks", `{"name":"r","image":"busybox","cmd":"true","execution_type":"cpu"}`,
		map[string]string{HeaderIdempotencyKey: "lost-ack"})
	require.Equal(t, "true", resp.Header.Get("Idempotent-Replayed"))
}
