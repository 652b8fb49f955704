package webhook_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/natstest"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/actor"
	"github.com/cbroker/broker/services/webhook"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var secret = []byte("s3cret-for-tests")

// receiver is an HTTP endpoint that records every request and answers with
// the status its answer function gives for the request's number (from 1).
type receiver struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []received
}

type received struct {
	header http.Header
	body   []byte
}

func newReceiver(t *testing.T, answer func(n int, w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.reqs = append(rc.reqs, received{header: r.Header.Clone(), body: body})
		n := len(rc.reqs)
		rc.mu.Unlock()
		answer(n, w, r)
	}))
	t.Cleanup(rc.Close)
	return rc
}

// statuses answers the nth request with statuses[n-1], and the last status
// after that.
func statuses(codes ...int) func(int, http.ResponseWriter, *http.Request) {
	return func(n int, w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(codes[min(n, len(codes))-1])
	}
}

func (rc *receiver) requests() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]received(nil), rc.reqs...)
}

type bundle struct {
	srv     *natstest.Server
	replica *projections.Replica
	writer  *actor.Writer
}

func setup(t *testing.T) *bundle {
	t.Helper()
	b := &bundle{srv: natstest.Run(t, ""), writer: nil}
	b.writer = &actor.Writer{JS: b.srv.JS, Actor: "test/webhook"}
	b.replica = b.startReplica(t)
	return b
}

// startReplica folds the stream from the start in a new replica, as a
// restarted broker does.
func (b *bundle) startReplica(t *testing.T) *projections.Replica {
	t.Helper()
	r, err := projections.NewReplica(projections.ReplicaConfig{JetStream: b.srv.JS})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, r.Run(ctx)) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	<-r.Ready()
	return r
}

// run starts a webhook service on replica; the returned function stops it.
func (b *bundle) run(t *testing.T, replica *projections.Replica, cfg webhook.Config) func() {
	t.Helper()
	cfg.Replica, cfg.Writer, cfg.JetStream, cfg.Secret = replica, b.writer, b.srv.JS, secret
	s, err := webhook.New(cfg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, s.Run(ctx)) })
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

// propose appends events and waits until the replica has folded them; each
// must be accepted. It returns their sequences.
func (b *bundle) propose(t *testing.T, ps ...events.Payload) []uint64 {
	t.Helper()
	seqs := make([]uint64, 0, len(ps))
	for _, p := range ps {
		acks, err := b.writer.Propose(t.Context(), actor.Proposal{Key: fmt.Sprintf("test:%d", time.Now().UnixNano()), Payload: p})
		require.NoError(t, err)
		out, err := b.replica.WaitSeq(t.Context(), acks[0].Seq)
		require.NoError(t, err)
		require.True(t, out.Accepted, "%s: %s", p.EventType(), out.Reason)
		seqs = append(seqs, acks[0].Seq)
	}
	return seqs
}

// complete runs task id with a callback URL through a successful attempt
// and returns the sequence of its task.completed event.
func (b *bundle) complete(t *testing.T, id, url string) uint64 {
	t.Helper()
	n := "node-" + id
	seqs := b.propose(t,
		&events.NodeRegistered{NodeID: n, Hostname: "bench-noop://" + id, Slots: map[string]int{"cpu": 1}},
		&events.NodeUp{NodeID: n},
		&events.TaskSubmitted{TaskID: id, Name: id, Image: "busybox", Cmd: "true", ExecutionType: "cpu", CallbackURL: url},
		&events.SlotReserved{TaskID: id, Attempt: 1, NodeID: n, SlotID: "cpu-1", ContainerName: id + "-a1"},
		&events.ContainerStarted{TaskID: id, Attempt: 1, NodeID: n, ContainerID: "c"},
		&events.ContainerExited{TaskID: id, Attempt: 1, NodeID: n},
		&events.TaskCompleted{TaskID: id, Attempt: 1},
	)
	return seqs[len(seqs)-1]
}

// cancel ends task id (waiting, or ended and retried) by a cancel and
// returns the sequence of its task.cancelled event.
func (b *bundle) cancel(t *testing.T, id string, attempt int) uint64 {
	t.Helper()
	seqs := b.propose(t, &events.CancelRequested{TaskID: id}, &events.TaskCancelled{TaskID: id, Attempt: attempt})
	return seqs[1]
}

// task returns a copy of the fold's task.
func task(r *projections.Replica, id string) projections.Task {
	var out projections.Task
	r.Read(func(s *projections.State) {
		t := s.Tasks[id]
		out = *t
		if t.Webhook != nil {
			w := *t.Webhook
			out.Webhook = &w
		}
	})
	return out
}

// waitState waits until the delivery of task id's current outcome is in
// state st.
func waitState(t *testing.T, r *projections.Replica, id string, st projections.WebhookState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	require.NoError(t, r.WaitFor(ctx, func(s *projections.State) bool {
		w := s.Tasks[id].Webhook
		return w != nil && s.Tasks[id].Outcome != nil && w.Outcome.Seq == s.Tasks[id].Outcome.Seq && w.State == st
	}), "delivery of task %s never %s: %+v", id, st, task(r, id).Webhook)
}

// webhookEvents returns the webhook events of a task in log order; every
// one must have been accepted by the fold.
func webhookEvents(t *testing.T, b *bundle, id string) []events.Payload {
	t.Helper()
	for _, v := range task(b.replica, id).History {
		require.True(t, v.Accepted, "%s rejected: %s", v.Type, v.Reason)
	}
	var out []events.Payload
	for _, env := range natstest.Events(t, b.srv.JS, events.AggregateSubjects(events.AggregateTask, id)) {
		switch env.Type {
		case events.TypeTaskWebhookAttempted, events.TypeTaskWebhookDelivered, events.TypeTaskWebhookAbandoned:
			p, err := env.Payload()
			require.NoError(t, err)
			out = append(out, p)
		}
	}
	return out
}

// verify checks a delivery's signature as a receiver would, without the
// package's own Sign.
func verify(key []byte, h http.Header, body []byte) bool {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(h.Get("X-CB-Timestamp") + "." + string(body)))
	return hmac.Equal([]byte(h.Get("X-CB-Signature")), []byte("sha256="+hex.EncodeToString(mac.Sum(nil))))
}

func TestDeliversTheSignedOutcomeEvent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rc := newReceiver(t, statuses(http.StatusNoContent))
	seq := b.complete(t, "t1", rc.URL+"/hooks?token=x")
	b.run(t, b.replica, webhook.Config{})
	waitState(t, b.replica, "t1", projections.WebhookDelivered)

	reqs := rc.requests()
	require.Len(t, reqs, 1)
	stream, err := b.srv.JS.Stream(t.Context(), events.StreamName)
	require.NoError(t, err)
	stored, err := stream.GetMsg(t.Context(), seq)
	require.NoError(t, err)
	require.Equal(t, stored.Data, reqs[0].body, "the body is the outcome event exactly as stored")
	env, err := events.Decode(reqs[0].body)
	require.NoError(t, err)
	require.Equal(t, events.TypeTaskCompleted, env.Type)

	h := reqs[0].header
	require.Equal(t, "application/json", h.Get("Content-Type"))
	require.Equal(t, env.ID, h.Get("X-CB-Event-Id"))
	require.Equal(t, "task.completed.v1", h.Get("X-CB-Event-Type"))
	require.Equal(t, env.ID+"-1", h.Get("X-CB-Delivery-Id"))
	require.Equal(t, "1", h.Get("X-CB-Attempt"))
	ts, err := strconv.ParseInt(h.Get("X-CB-Timestamp"), 10, 64)
	require.NoError(t, err)
	require.Regexp(t, `^sha256=[0-9a-f]{64}$`, h.Get("X-CB-Signature"))
	require.True(t, verify(secret, h, reqs[0].body), "the signature verifies with the secret")
	require.False(t, verify([]byte("another secret"), h, reqs[0].body))
	require.Equal(t, webhook.Sign(secret, h.Get("X-CB-Timestamp"), reqs[0].body), h.Get("X-CB-Signature"))

	evs := webhookEvents(t, b, "t1")
	require.Len(t, evs, 2)
	att := evs[0].(*events.WebhookAttempted)
	require.Equal(t, seq, att.OutcomeSeq)
	require.Equal(t, env.ID, att.OutcomeID)
	require.Equal(t, 1, att.Attempt)
	require.Equal(t, env.ID+"-1", att.DeliveryID)
	require.Equal(t, rc.URL+"/hooks?token=x", att.URL)
	require.Equal(t, http.StatusNoContent, att.StatusCode)
	require.Empty(t, att.Error)
	require.True(t, att.NextAttemptAt.IsZero())
	require.Equal(t, ts, att.At.Unix(), "the timestamp header is the attempt's time")
	require.Equal(t, &events.WebhookDelivered{TaskID: "t1", OutcomeSeq: seq, Attempt: 1, StatusCode: http.StatusNoContent}, evs[1])
}

func TestRetriesWithBackoffUntilDelivered(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rc := newReceiver(t, statuses(http.StatusInternalServerError, http.StatusServiceUnavailable, http.StatusOK))
	seq := b.complete(t, "t1", rc.URL)
	const minBackoff = 40 * time.Millisecond
	b.run(t, b.replica, webhook.Config{BackoffMin: minBackoff, BackoffMax: time.Second, Jitter: func() float64 { return 0.5 }})
	waitState(t, b.replica, "t1", projections.WebhookDelivered)

	evs := webhookEvents(t, b, "t1")
	require.Len(t, evs, 4, "three attempts, then delivered")
	var prev *events.WebhookAttempted
	for i, want := range []int{500, 503, 200} {
		att := evs[i].(*events.WebhookAttempted)
		require.Equal(t, i+1, att.Attempt)
		require.Equal(t, want, att.StatusCode)
		require.Equal(t, seq, att.OutcomeSeq)
		if want != 200 {
			// Equal jitter at 0.5: three quarters of the doubled pause.
			wait := minBackoff << i * 3 / 4
			require.GreaterOrEqual(t, att.NextAttemptAt.Sub(att.At), wait, "attempt %d: next attempt after the backoff", i+1)
		} else {
			require.True(t, att.NextAttemptAt.IsZero())
		}
		if prev != nil {
			require.False(t, att.At.Before(prev.NextAttemptAt), "attempt %d was made before its due time", i+1)
		}
		prev = att
	}
	require.Equal(t, &events.WebhookDelivered{TaskID: "t1", OutcomeSeq: seq, Attempt: 3, StatusCode: 200}, evs[3])

	reqs := rc.requests()
	require.Len(t, reqs, 3)
	for i, r := range reqs {
		require.Equal(t, strconv.Itoa(i+1), r.header.Get("X-CB-Attempt"))
		require.Equal(t, reqs[0].header.Get("X-CB-Event-Id"), r.header.Get("X-CB-Event-Id"), "one event id for every attempt")
		require.Equal(t, reqs[0].header.Get("X-CB-Event-Id")+"-"+strconv.Itoa(i+1), r.header.Get("X-CB-Delivery-Id"))
		require.Equal(t, reqs[0].body, r.body)
		require.True(t, verify(secret, r.header, r.body))
	}
}

func TestAbandonsAfterMaxAttempts(t *testing.T) {
	t.Parallel()
	refused := httptest.NewServer(http.NotFoundHandler())
	refusedURL := refused.URL
	refused.Close() // nothing listens there any more
	cases := map[string]struct {
		url    func(t *testing.T) string
		status int
		err    string
	}{
		"ConnectionRefused": {url: func(*testing.T) string { return refusedURL }, err: "connection refused"},
		"ServerError": {
			url:    func(t *testing.T) string { return newReceiver(t, statuses(http.StatusBadGateway)).URL },
			status: http.StatusBadGateway,
		},
		"RedirectsAreNotFollowed": {
			url: func(t *testing.T) string {
				return newReceiver(t, func(_ int, w http.ResponseWriter, r *http.Request) {
					http.Redirect(w, r, "/elsewhere", http.StatusFound)
				}).URL
			},
			status: http.StatusFound,
		},
		"Timeout": {
			url: func(t *testing.T) string {
				return newReceiver(t, func(_ int, _ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }).URL
			},
			err: "deadline exceeded",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t)
			seq := b.complete(t, "t1", tc.url(t))
			b.run(t, b.replica, webhook.Config{MaxAttempts: 3, BackoffMin: time.Millisecond, BackoffMax: 5 * time.Millisecond, Timeout: 200 * time.Millisecond})
			waitState(t, b.replica, "t1", projections.WebhookAbandoned)

			evs := webhookEvents(t, b, "t1")
			require.Len(t, evs, 4, "three attempts, then abandoned")
			for i := range 3 {
				att := evs[i].(*events.WebhookAttempted)
				require.Equal(t, i+1, att.Attempt)
				require.Equal(t, tc.status, att.StatusCode)
				if tc.err != "" {
					require.Contains(t, att.Error, tc.err)
				}
				require.Equal(t, i < 2, !att.NextAttemptAt.IsZero(), "only the last attempt has no next one")
			}
			ab := evs[3].(*events.WebhookAbandoned)
			require.Equal(t, seq, ab.OutcomeSeq)
			require.Equal(t, 3, ab.Attempts)
			require.NotEmpty(t, ab.Error)
		})
	}
}

func TestRestartResumesFromTheLog(t *testing.T) {
	t.Parallel()
	b := setup(t)
	good := newReceiver(t, statuses(http.StatusOK))
	flaky := newReceiver(t, statuses(http.StatusServiceUnavailable, http.StatusOK))
	b.complete(t, "delivered", good.URL)
	b.complete(t, "retried", flaky.URL)

	stop := b.run(t, b.replica, webhook.Config{BackoffMin: 400 * time.Millisecond, BackoffMax: time.Second})
	waitState(t, b.replica, "delivered", projections.WebhookDelivered)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	require.NoError(t, b.replica.WaitFor(ctx, func(s *projections.State) bool { return s.Tasks["retried"].Webhook.Attempts >= 1 }))
	stop()
	first := task(b.replica, "retried").Webhook

	// A new broker process: a fold rebuilt from the log, a new service.
	replica := b.startReplica(t)
	b.run(t, replica, webhook.Config{BackoffMin: 400 * time.Millisecond, BackoffMax: time.Second})
	waitState(t, replica, "retried", projections.WebhookDelivered)
	waitState(t, b.replica, "retried", projections.WebhookDelivered)

	require.Len(t, good.requests(), 1, "a delivered outcome is never sent again")
	require.Len(t, webhookEvents(t, b, "delivered"), 2)
	reqs := flaky.requests()
	require.Len(t, reqs, 2)
	require.Equal(t, "2", reqs[1].header.Get("X-CB-Attempt"), "attempts are counted on from the log")
	evs := webhookEvents(t, b, "retried")
	require.Len(t, evs, 3)
	if first.Attempts == 1 { // the restart came between the attempts, as intended
		second := evs[1].(*events.WebhookAttempted)
		require.False(t, second.At.Before(first.NextAttemptAt), "the restarted service kept the recorded next-attempt time")
	}
}

// A broker that died between an attempt and its result: the result is
// recorded from the log, and nothing is sent again.
func TestRecordsAResultLeftUnrecorded(t *testing.T) {
	t.Parallel()
	b := setup(t)
	never := newReceiver(t, statuses(http.StatusOK))
	ok := b.complete(t, "ok", never.URL)
	failed := b.complete(t, "failed", never.URL)
	b.propose(t,
		&events.WebhookAttempted{TaskID: "ok", OutcomeSeq: ok, Attempt: 1, URL: never.URL, StatusCode: 200},
		&events.WebhookAttempted{TaskID: "failed", OutcomeSeq: failed, Attempt: 1, URL: never.URL, Error: "connection reset"},
	)
	b.run(t, b.replica, webhook.Config{})
	waitState(t, b.replica, "ok", projections.WebhookDelivered)
	waitState(t, b.replica, "failed", projections.WebhookAbandoned)
	require.Empty(t, never.requests())
	require.Equal(t, &events.WebhookDelivered{TaskID: "ok", OutcomeSeq: ok, Attempt: 1, StatusCode: 200}, webhookEvents(t, b, "ok")[1])
	require.Equal(t, &events.WebhookAbandoned{TaskID: "failed", OutcomeSeq: failed, Attempts: 1, Error: "connection reset"},
		webhookEvents(t, b, "failed")[1])
}

func TestEveryOutcomeIsDelivered(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rc := newReceiver(t, statuses(http.StatusOK))
	b.run(t, b.replica, webhook.Config{})
	b.complete(t, "t1", rc.URL)
	waitState(t, b.replica, "t1", projections.WebhookDelivered)

	// A forced retry that ends again: the new outcome is delivered too.
	b.propose(t, &events.RetryRequested{TaskID: "t1"})
	cancelled := b.cancel(t, "t1", 1)
	waitState(t, b.replica, "t1", projections.WebhookDelivered)
	require.Equal(t, cancelled, task(b.replica, "t1").Webhook.Outcome.Seq)

	reqs := rc.requests()
	require.Len(t, reqs, 2)
	require.Equal(t, "task.completed.v1", reqs[0].header.Get("X-CB-Event-Type"))
	require.Equal(t, "task.cancelled.v1", reqs[1].header.Get("X-CB-Event-Type"))
	require.NotEqual(t, reqs[0].header.Get("X-CB-Event-Id"), reqs[1].header.Get("X-CB-Event-Id"))
	env, err := events.Decode(reqs[1].body)
	require.NoError(t, err)
	require.Equal(t, events.TypeTaskCancelled, env.Type)
}

func TestConfig(t *testing.T) {
	t.Parallel()
	b := setup(t)
	_, err := webhook.New(webhook.Config{Replica: b.replica, Writer: b.writer, JetStream: b.srv.JS})
	require.ErrorContains(t, err, "a secret is required")
	_, err = webhook.New(webhook.Config{Secret: secret})
	require.ErrorContains(t, err, "the replica, the writer and JetStream are required")
}
