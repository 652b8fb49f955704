package gateway

import (
	"encoding/json"
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/natstest"
	"github.com/cbroker/broker/projections"
)

func withWebhooks(c *Config) { c.Webhooks = true }

func TestCallbackURL(t *testing.T) {
	t.Parallel()
	const hook = "https://hooks.example.com:8443/cb?token=abc"

	t.Run("RefusedWithoutASecret", func(t *testing.T) {
		t.Parallel()
		b := setup(t)
		code, body := b.do(t, http.MethodPost, "/tasks", `{"name":"n","image":"i","cmd":"c","execution_type":"cpu","callback_url":"`+hook+`"}`)
		require.Equal(t, http.StatusUnprocessableEntity, code)
		require.JSONEq(t, `{"callback_url":["`+msgWebhooksDisabled+`"]}`, string(body))
		require.Zero(t, b.streamMsgs(t), "a refused request appends nothing")
		b.submit(t, `{"name":"n","image":"i","cmd":"c","execution_type":"cpu"}`) // without one: fine
	})

	t.Run("StoredInTheEventAndTheFold", func(t *testing.T) {
		t.Parallel()
		b := setup(t, withWebhooks)
		form := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}
		resp, formBody := b.doWith(t, http.MethodPost, "/tasks",
			"task[name]=f&task[image]=i&task[cmd]=c&task[execution_type]=cpu&task[callback_url]="+url.QueryEscape(hook), form)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(formBody))
		for _, body := range []string{
			`{"name":"n","image":"i","cmd":"c","execution_type":"cpu","callback_url":"` + hook + `"}`,
			`{"task":{"name":"n","image":"i","cmd":"c","execution_type":"cpu","callback_url":"` + hook + `"}}`,
			string(formBody),
		} {
			var tk taskJSON
			if body == string(formBody) {
				require.NoError(t, json.Unmarshal(formBody, &tk))
			} else {
				code, out := b.do(t, http.MethodPost, "/tasks", body)
				require.Equal(t, http.StatusOK, code, string(out))
				require.Equal(t, seedTaskKeys, keys(t, out), "the task keeps the seed's fields")
				require.NoError(t, json.Unmarshal(out, &tk))
			}
			b.replica.Read(func(s *projections.State) { require.Equal(t, hook, s.Tasks[tk.UUID].CallbackURL) })
			envs := natstest.Events(t, b.srv.JS, events.Subject(events.TypeTaskSubmitted, tk.UUID))
			require.Len(t, envs, 1)
			p, err := envs[0].Payload()
			require.NoError(t, err)
			require.Equal(t, hook, p.(*events.TaskSubmitted).CallbackURL)

			code, out := b.do(t, http.MethodGet, "/tasks/"+tk.UUID, "")
			require.Equal(t, http.StatusOK, code)
			require.Equal(t, seedTaskKeys, keys(t, out), "GET /tasks/:uuid keeps the seed's fields")
		}
		var list []map[string]any
		code, out := b.do(t, http.MethodGet, "/status/tasks?limit=0", "")
		require.Equal(t, http.StatusOK, code)
		require.NoError(t, json.Unmarshal(out, &list))
		require.Len(t, list, 3)
		for _, v := range list {
			require.Equal(t, hook, v["callback_url"], "the status views show the callback URL")
		}
	})

	t.Run("InvalidURLs", func(t *testing.T) {
		t.Parallel()
		b := setup(t, withWebhooks)
		code, body := b.do(t, http.MethodPost, "/tasks", `{"name":"n","image":"i","cmd":"c","execution_type":"cpu","callback_url":"ftp://h/x"}`)
		require.Equal(t, http.StatusUnprocessableEntity, code)
		require.JSONEq(t, `{"callback_url":["must be an absolute http or https URL"]}`, string(body))
		require.Zero(t, b.streamMsgs(t))
	})
}
