package gateway

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
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
	lost        atomic.Bool
	getFailures atomic.Int32
}

func (j *lossyAckJetStream) KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	return wrapIdempotencyBucket(ctx, j.JetStream, bucket, func(kv jetstream.KeyValue) jetstream.KeyValue {
		return &lossyAckBucket{KeyValue: kv, lost: &j.lost, getFailures: &j.getFailures}
	})
}

// wrapIdempotencyBucket opens a bucket, wrapping it when it is the
// idempotency bucket.
func wrapIdempotencyBucket(ctx context.Context, js jetstream.JetStream, bucket string, wrap func(jetstream.KeyValue) jetstream.KeyValue) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil || bucket != events.BucketIdempotency {
		return kv, err
	}
	return wrap(kv), nil
}

type lossyAckBucket struct {
	jetstream.KeyValue
	lost *atomic.Bool
	// getFailures is how many reads time out before the store answers.
	getFailures *atomic.Int32
}

func (b *lossyAckBucket) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	if b.getFailures != nil && b.getFailures.Add(-1) >= 0 {
		return nil, context.DeadlineExceeded
	}
	return b.KeyValue.Get(ctx, key)
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

// TestIdempotencyClaimReadDuringAnElection: the claim's Create was stored
// but its reply lost, and the read that would recognise it times out while
// the bucket's stream elects a leader. The request keeps reading while it
// may wait, instead of answering 503 and leaving its own claim behind.
func TestIdempotencyClaimReadDuringAnElection(t *testing.T) {
	t.Parallel()
	var lossy *lossyAckJetStream
	b := setup(t, func(c *Config) {
		lossy = &lossyAckJetStream{JetStream: c.JetStream}
		lossy.getFailures.Store(2)
		c.JetStream = lossy
	})
	resp, body := b.doWith(t, http.MethodPost, "/tasks", `{"name":"r","image":"busybox","cmd":"true","execution_type":"cpu"}`,
		map[string]string{HeaderIdempotencyKey: "election"})
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	require.True(t, lossy.lost.Load())
	require.Negative(t, lossy.getFailures.Load(), "the reads failed and were retried")
}

// outageJetStream gives out an idempotency bucket that stops answering
// while down is set, as while the bucket's stream elects a leader; the
// first Create sent meanwhile is stored even so (the old leader had it
// replicated before it died).
type outageJetStream struct {
	jetstream.JetStream
	down, stored atomic.Bool
}

func (j *outageJetStream) KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	return wrapIdempotencyBucket(ctx, j.JetStream, bucket, func(kv jetstream.KeyValue) jetstream.KeyValue {
		return &outageBucket{KeyValue: kv, j: j}
	})
}

type outageBucket struct {
	jetstream.KeyValue
	j *outageJetStream
}

func (b *outageBucket) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	if !b.j.down.Load() {
		return b.KeyValue.Create(ctx, key, value, opts...)
	}
	if b.j.stored.CompareAndSwap(false, true) {
		if _, err := b.KeyValue.Create(ctx, key, value, opts...); err != nil {
			return 0, err
		}
	}
	return 0, context.DeadlineExceeded
}

func (b *outageBucket) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	if b.j.down.Load() {
		return nil, context.DeadlineExceeded
	}
	return b.KeyValue.Get(ctx, key)
}

func (b *outageBucket) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	if b.j.down.Load() {
		return context.DeadlineExceeded
	}
	return b.KeyValue.Delete(ctx, key, opts...)
}

// TestIdempotencyKeyFreedAfterAnOutage: a request whose claim was stored
// but never acknowledged, in an outage longer than the gateway waits, is
// answered 503. Once the store is back, the request's record is withdrawn,
// so that the client's retry with the same key runs instead of meeting 409
// for a minute.
func TestIdempotencyKeyFreedAfterAnOutage(t *testing.T) {
	t.Parallel()
	var outage *outageJetStream
	b := setup(t, func(c *Config) {
		outage = &outageJetStream{JetStream: c.JetStream}
		c.JetStream = outage
		c.AppendTimeout = 500 * time.Millisecond
	})
	const submit = `{"name":"o","image":"busybox","cmd":"true","execution_type":"cpu"}`
	key := map[string]string{HeaderIdempotencyKey: "outage"}
	outage.down.Store(true)
	resp, body := b.doWith(t, http.MethodPost, "/tasks", submit, key)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, string(body))
	require.True(t, outage.stored.Load(), "the claim was stored without an answer")
	outage.down.Store(false)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		resp, body := b.doWith(t, http.MethodPost, "/tasks", submit, key)
		require.Equal(c, http.StatusOK, resp.StatusCode, string(body))
	}, 10*time.Second, 100*time.Millisecond)
}
