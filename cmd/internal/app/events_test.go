package app_test

import (
	"bufio"
	"context"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/dockertest"
)

// streamed is one message of GET /events: its id and event name.
type streamed struct {
	Seq  uint64
	Type string
}

// stream opens GET /events and returns the messages until one of type
// until arrives, in a channel closed when the stream is done.
func (b *broker) stream(t *testing.T, query string, until events.Type) <-chan []streamed {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.base+"/events"+query, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req) //nolint:bodyclose // the reading goroutine closes it
	if err != nil {
		cancel()
		require.NoError(t, err)
	}
	require.Equal(t, http.StatusOK, resp.StatusCode)
	out := make(chan []streamed, 1)
	go func() {
		defer cancel()
		defer resp.Body.Close()
		var got []streamed
		var cur streamed
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				cur.Seq, _ = strconv.ParseUint(line[4:], 10, 64)
			case strings.HasPrefix(line, "event: "):
				cur.Type = line[7:]
			case line == "" && cur.Seq != 0:
				got = append(got, cur)
				if cur.Type == string(until) {
					out <- got
					return
				}
				cur = streamed{}
			}
		}
		out <- got
	}()
	return out
}

// TestEventsStreamEndToEnd runs a task on a real engine and follows it on
// GET /events: by task from the start of the log (catch-up, then live), and
// by node from the moment before the submission (live only).
func TestEventsStreamEndToEnd(t *testing.T) {
	t.Parallel()
	b, es := setup(t, 1)
	nodeID := b.addNode(t, es[0], map[string]int{"cpu": 1})
	byNode := b.stream(t, "?node="+nodeID+"&type=task.completed&type=task.container_started", events.TypeTaskCompleted)

	tk := b.submit(t, "streamed", dockertest.Image, "echo hi; sleep 1", "cpu")
	byTask := b.stream(t, "?task="+tk.UUID+"&since=0", events.TypeTaskCompleted)
	got := <-byTask
	require.Equal(t, "completed", b.waitStatus(t, tk.UUID, "completed").Status)

	var timeline []struct {
		Seq  uint64 `json:"seq"`
		Type string `json:"type"`
	}
	require.Equal(t, http.StatusOK, b.do(t, http.MethodGet, "/tasks/"+tk.UUID+"/events", nil, &timeline))
	var want []streamed
	for _, e := range timeline {
		want = append(want, streamed{Seq: e.Seq, Type: e.Type})
	}
	require.Equal(t, want, got, "the task's whole history, in order, once each")
	var types []string
	for _, e := range got {
		types = append(types, e.Type)
	}
	require.Subset(t, types, []string{
		string(events.TypeTaskSubmitted), string(events.TypeTaskSlotReserved), string(events.TypeTaskContainerStarted),
		string(events.TypeTaskLogsArchived), string(events.TypeTaskContainerExited), string(events.TypeTaskCompleted),
	})

	onNode := <-byNode
	require.Len(t, onNode, 2)
	require.Equal(t, string(events.TypeTaskContainerStarted), onNode[0].Type)
	require.Equal(t, got[len(got)-1], onNode[1], "the completion names no node; it concerns the node the task ran on")
}
