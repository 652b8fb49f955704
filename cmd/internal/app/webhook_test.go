package app_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/cmd/internal/app"
	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/dockertest"
)

// TestWebhookDeliversTheCompletedEvent runs a real container whose task
// has a callback URL and receives its signed task.completed event.
func TestWebhookDeliversTheCompletedEvent(t *testing.T) {
	t.Parallel()
	const secret = "e2e webhook secret"
	type delivery struct {
		header http.Header
		body   []byte
	}
	got := make(chan delivery, 8)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		select {
		case got <- delivery{header: r.Header.Clone(), body: body}:
		default:
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(receiver.Close)

	b, es := setup(t, 1, func(c *app.Config) { c.WebhookSecret = secret })
	b.addNode(t, es[0], map[string]int{"cpu": 1})
	var tk task
	require.Equal(t, http.StatusOK, b.do(t, http.MethodPost, "/tasks", map[string]any{"task": map[string]any{
		"name": "hooked", "image": dockertest.Image, "cmd": "echo hooked", "execution_type": "cpu",
		"callback_url": receiver.URL + "/cb?source=e2e",
	}}, &tk))

	var d delivery
	select {
	case d = <-got:
	case <-time.After(90 * time.Second):
		t.Fatal("no webhook delivery")
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(d.header.Get("X-CB-Timestamp") + "." + string(d.body)))
	require.Equal(t, "sha256="+hex.EncodeToString(mac.Sum(nil)), d.header.Get("X-CB-Signature"), "signed with the secret")
	env, err := events.Decode(d.body)
	require.NoError(t, err)
	require.Equal(t, events.TypeTaskCompleted, env.Type)
	require.Equal(t, tk.UUID, env.AggregateID)
	require.Equal(t, env.ID, d.header.Get("X-CB-Event-Id"))
	p, err := env.Payload()
	require.NoError(t, err)
	require.Equal(t, 0, p.(*events.TaskCompleted).ExitCode)
	require.Equal(t, "completed", b.waitStatus(t, tk.UUID, "completed").Status)

	require.EventuallyWithT(t, func(c *assertT) {
		h := b.history(t, tk.UUID)
		require.Equal(c, 1, accepted(h, events.TypeTaskWebhookAttempted))
		require.Equal(c, 1, accepted(h, events.TypeTaskWebhookDelivered))
	}, 10*time.Second, 50*time.Millisecond)
	var list struct {
		Tasks []struct {
			UUID        string         `json:"uuid"`
			CallbackURL string         `json:"callback_url"`
			Webhook     map[string]any `json:"webhook"`
		} `json:"tasks"`
	}
	require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/tasks", nil, &list))
	require.Len(t, list.Tasks, 1)
	require.Equal(t, receiver.URL+"/cb?source=e2e", list.Tasks[0].CallbackURL)
	require.Equal(t, "delivered", list.Tasks[0].Webhook["state"])
	require.Equal(t, "task.completed.v1", list.Tasks[0].Webhook["outcome_type"])
	require.Empty(t, got, "delivered once")
}
