package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/natstest"
	"github.com/cbroker/broker/projections"
)

// evBundle is a gateway with an event hub over its own JetStream server.
type evBundle struct {
	srv     *natstest.Server
	replica *projections.Replica
	hub     *Hub
	gw      *Gateway
	http    *httptest.Server
	client  *http.Client
}

// setupEvents starts a replica and a hub after the events the test appends
// in before (so they are in the log, not in the hub's ring).
func setupEvents(t *testing.T, hc HubConfig, cfg Config, before func(b *evBundle)) *evBundle {
	t.Helper()
	b := &evBundle{srv: natstest.Run(t, "")}
	if before != nil {
		before(b)
	}
	var err error
	b.replica, err = projections.NewReplica(projections.ReplicaConfig{JetStream: b.srv.JS})
	require.NoError(t, err)
	hc.JetStream, hc.Replica = b.srv.JS, b.replica
	b.hub, err = NewHub(hc)
	require.NoError(t, err)
	cfg.Replica, cfg.JetStream, cfg.Logs, cfg.CheckHostname, cfg.Events = b.replica, b.srv.JS, archive{}, checkHost, b.hub
	b.gw, err = New(cfg)
	require.NoError(t, err)
	b.http = httptest.NewServer(b.gw.Handler())
	t.Cleanup(b.http.Close)
	b.client = &http.Client{Transport: &http.Transport{}}
	t.Cleanup(b.client.CloseIdleConnections)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, b.replica.Run(ctx)) })
	wg.Go(func() { require.NoError(t, b.hub.Run(ctx)) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	<-b.replica.Ready()
	require.NoError(t, b.hub.waitReady(t.Context()))
	return b
}

// add appends an event as any actor would and returns its sequence.
func (b *evBundle) add(t *testing.T, p events.Payload) uint64 {
	t.Helper()
	env, err := events.New("test:"+uuid.NewString(), p, events.Meta{Actor: "test"})
	require.NoError(t, err)
	ack, err := events.Append(t.Context(), b.srv.JS, env)
	require.NoError(t, err)
	return ack.Seq
}

// accepted appends an event and checks that the fold accepts it.
func (b *evBundle) accepted(t *testing.T, p events.Payload) uint64 {
	t.Helper()
	seq := b.add(t, p)
	out, err := b.replica.WaitSeq(t.Context(), seq)
	require.NoError(t, err)
	require.True(t, out.Accepted, out.Reason)
	return seq
}

// addNode registers an available node with one cpu slot and returns the
// sequences of its two events and the slot's id.
func (b *evBundle) addNode(t *testing.T, id string) (registered, up uint64, slot string) {
	t.Helper()
	registered = b.accepted(t, &events.NodeRegistered{
		NodeID: id, Hostname: "tcp://" + id + ":2375", Slots: map[string]int{"cpu": 1}, RunnerProvider: "docker", RegisteredAt: time.Now(),
	})
	up = b.accepted(t, &events.NodeUp{NodeID: id, At: time.Now()})
	b.replica.Read(func(s *projections.State) { slot = s.Nodes[id].Slots[0].ID })
	return registered, up, slot
}

func submitted(id string, tags map[string]string) *events.TaskSubmitted {
	return &events.TaskSubmitted{TaskID: id, Name: id, Image: "busybox", Cmd: "true", ExecutionType: "cpu", Tags: tags, MaxRetries: 3, CreatedAt: time.Now()}
}

func reserved(task string, attempt int, node, slot string) *events.SlotReserved {
	return &events.SlotReserved{TaskID: task, Attempt: attempt, NodeID: node, SlotID: slot, ContainerName: task + "-a" + strconv.Itoa(attempt)}
}

// sseEvent is one message of an event stream.
type sseEvent struct {
	ID    uint64
	Event string
	Data  struct {
		Seq         uint64          `json:"seq"`
		Type        events.Type     `json:"type"`
		AggregateID string          `json:"aggregate_id"`
		Data        json.RawMessage `json:"data"`
	}
}

// sseClient reads one GET /events response.
type sseClient struct {
	events   chan sseEvent
	comments chan string
	ended    chan struct{}
	close    func()
}

// open connects to GET /events; it returns once the answer's headers are
// in, so the client is subscribed.
func (b *evBundle) open(t *testing.T, query string, headers map[string]string) *sseClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.http.URL+"/events"+query, nil)
	require.NoError(t, err)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		cancel()
		require.NoError(t, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer cancel()
		body, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	}
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	c := &sseClient{events: make(chan sseEvent, 4096), comments: make(chan string, 64), ended: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(c.ended)
		readSSE(t, resp.Body, c)
	})
	var once sync.Once
	c.close = func() { once.Do(func() { cancel(); _ = resp.Body.Close(); wg.Wait() }) }
	t.Cleanup(c.close)
	return c
}

// readSSE parses SSE messages until the body ends.
func readSSE(t *testing.T, body io.Reader, c *sseClient) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 2<<20)
	var ev sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ":"):
			select {
			case c.comments <- strings.TrimSpace(line[1:]):
			default:
			}
		case strings.HasPrefix(line, "id: "):
			id, err := strconv.ParseUint(line[4:], 10, 64)
			if err != nil {
				t.Errorf("bad id line %q", line)
				return
			}
			ev.ID = id
		case strings.HasPrefix(line, "event: "):
			ev.Event = line[7:]
		case strings.HasPrefix(line, "data: "):
			if err := json.Unmarshal([]byte(line[6:]), &ev.Data); err != nil {
				t.Errorf("bad data line %q: %v", line, err)
				return
			}
		case line == "" && ev.ID != 0:
			c.events <- ev
			ev = sseEvent{}
		}
	}
}

// next returns the next event; the stream must not end first.
func (c *sseClient) next(t *testing.T) sseEvent {
	t.Helper()
	select {
	case ev := <-c.events:
		require.Equal(t, ev.ID, ev.Data.Seq, "the id is the stream sequence")
		require.Equal(t, string(ev.Data.Type), ev.Event, "the event name is the type")
		return ev
	case <-c.ended:
		select {
		case ev := <-c.events:
			return ev
		default:
		}
		require.FailNow(t, "the event stream ended")
	case <-time.After(20 * time.Second):
		require.FailNow(t, "no event within 20s")
	}
	return sseEvent{}
}

// seqs reads n events and returns their sequences.
func (c *sseClient) seqs(t *testing.T, n int) []uint64 {
	t.Helper()
	out := make([]uint64, 0, n)
	for range n {
		out = append(out, c.next(t).ID)
	}
	return out
}

func TestEventsFilters(t *testing.T) {
	t.Parallel()
	b := setupEvents(t, HubConfig{}, Config{}, nil)
	clients := map[string]*sseClient{}
	queries := []string{
		"?task=t1", "?task=t1&task=t2", "?node=na", "?node=nb", "?type=task.submitted",
		"?type=node.up.v1&type=task.slot_reserved", "?tag=type:video", "?tag=type:audio&tag=team:x",
		"?tag=type:video&node=na", "?task=t1&type=task.completed.v1",
	}
	for _, q := range queries {
		clients[q] = b.open(t, q, nil)
	}

	s := map[string]uint64{}
	var slotA, slotB string
	s["na.registered"], s["na.up"], slotA = b.addNode(t, "na")
	s["nb.registered"], s["nb.up"], slotB = b.addNode(t, "nb")
	s["t1.submitted"] = b.accepted(t, submitted("t1", map[string]string{"type": "video"}))
	s["t2.submitted"] = b.accepted(t, submitted("t2", map[string]string{"type": "audio"}))
	s["t1.reserved"] = b.accepted(t, reserved("t1", 1, "na", slotA))
	s["t2.reserved"] = b.accepted(t, reserved("t2", 1, "nb", slotB))
	// Payloads without a node: they concern the node the task runs on.
	s["t1.archived"] = b.add(t, &events.LogsArchived{TaskID: "t1", Attempt: 1, Object: "t1/1"})
	s["t2.archived"] = b.add(t, &events.LogsArchived{TaskID: "t2", Attempt: 1, Object: "t2/1"})
	s["t3.submitted"] = b.accepted(t, submitted("t3", map[string]string{"type": "video", "team": "x"}))
	s["t1.completed"] = b.add(t, &events.TaskCompleted{TaskID: "t1", Attempt: 1})
	// Closers: every client's next match after the scenario proves that
	// nothing it must not see came before.
	s["c1"] = b.add(t, submitted("t1", map[string]string{"type": "video"})) // a duplicate, rejected
	s["c2"] = b.add(t, &events.NodeUp{NodeID: "nb", At: time.Now()})
	s["c3"] = b.add(t, &events.TaskCompleted{TaskID: "t2", Attempt: 1})
	s["c4"] = b.add(t, &events.TaskCompleted{TaskID: "t1", Attempt: 1})

	want := map[string][]string{
		"?task=t1":             {"t1.submitted", "t1.reserved", "t1.archived", "t1.completed", "c1"},
		"?task=t1&task=t2":     {"t1.submitted", "t2.submitted", "t1.reserved", "t2.reserved", "t1.archived", "t2.archived", "t1.completed", "c1"},
		"?node=na":             {"na.registered", "na.up", "t1.reserved", "t1.archived", "t1.completed", "c1"},
		"?node=nb":             {"nb.registered", "nb.up", "t2.reserved", "t2.archived", "c2"},
		"?type=task.submitted": {"t1.submitted", "t2.submitted", "t3.submitted", "c1"},
		"?type=node.up.v1&type=task.slot_reserved": {"na.up", "nb.up", "t1.reserved", "t2.reserved", "c2"},
		"?tag=type:video":                          {"t1.submitted", "t1.reserved", "t1.archived", "t3.submitted", "t1.completed", "c1"},
		"?tag=type:audio&tag=team:x":               {"t2.submitted", "t2.reserved", "t2.archived", "t3.submitted", "c3"},
		"?tag=type:video&node=na":                  {"t1.reserved", "t1.archived", "t1.completed", "c1"},
		"?task=t1&type=task.completed.v1":          {"t1.completed", "c4"},
	}
	for _, q := range queries {
		var expect []uint64
		for _, name := range want[q] {
			expect = append(expect, s[name])
		}
		require.Equal(t, expect, clients[q].seqs(t, len(expect)), "filter %s", q)
	}
}

// A task's events without a node in their payload concern the node it was
// placed on when they were written, even after it moved.
func TestEventsNodeIsThePlacementAsOfTheEvent(t *testing.T) {
	t.Parallel()
	b := setupEvents(t, HubConfig{}, Config{}, nil)
	onA, onB := b.open(t, "?node=na", nil), b.open(t, "?node=nb", nil)
	_, _, slotA := b.addNode(t, "na")
	_, _, slotB := b.addNode(t, "nb")
	b.accepted(t, submitted("t1", nil))
	reservedA := b.accepted(t, reserved("t1", 1, "na", slotA))
	failedA := b.accepted(t, &events.StartFailed{TaskID: "t1", Attempt: 1, NodeID: "na", Error: "no image"})
	retrying := b.accepted(t, &events.TaskRetrying{TaskID: "t1", Attempt: 1, NextAttempt: 2, Cause: events.CauseStartError})
	reservedB := b.accepted(t, reserved("t1", 2, "nb", slotB))
	archivedB := b.add(t, &events.LogsArchived{TaskID: "t1", Attempt: 2, Object: "t1/2"})
	closeA := b.add(t, &events.NodeUp{NodeID: "na", At: time.Now()})

	require.Equal(t, []uint64{1, 2, reservedA, failedA, retrying, closeA}, onA.seqs(t, 6))
	require.Equal(t, []uint64{3, 4, reservedB, archivedB}, onB.seqs(t, 4))
}

func TestEventsResume(t *testing.T) {
	t.Parallel()

	t.Run("AcrossADisconnect", func(t *testing.T) {
		t.Parallel()
		b := setupEvents(t, HubConfig{}, Config{}, nil)
		first := b.open(t, "?task=t1", nil)
		s1 := b.add(t, submitted("t1", nil))
		s2 := b.add(t, &events.CancelRequested{TaskID: "t1"})
		require.Equal(t, []uint64{s1, s2}, first.seqs(t, 2))
		first.close()

		b.add(t, submitted("t2", nil))
		s3 := b.add(t, &events.TaskCancelled{TaskID: "t1"})
		s4 := b.add(t, &events.TaskDeleted{TaskID: "t1"})
		again := b.open(t, "?task=t1", map[string]string{"Last-Event-ID": strconv.FormatUint(s2, 10)})
		s5 := b.add(t, &events.RetryRequested{TaskID: "t1"})
		require.Equal(t, []uint64{s3, s4, s5}, again.seqs(t, 3), "no gap, no duplicate")
	})

	// A client resuming from before the hub's memory: the older events are
	// read from the stream by sequence, then the ring's, then live ones.
	t.Run("FromBeforeTheRing", func(t *testing.T) {
		t.Parallel()
		var before []uint64
		b := setupEvents(t, HubConfig{Remember: 3}, Config{}, func(b *evBundle) {
			for i := range 5 {
				before = append(before, b.add(t, submitted("old"+strconv.Itoa(i), nil)))
			}
		})
		var after []uint64
		for i := range 6 {
			after = append(after, b.add(t, submitted("new"+strconv.Itoa(i), nil)))
		}
		require.Eventually(t, func() bool { b.hub.mu.Lock(); defer b.hub.mu.Unlock(); return b.hub.head == after[5] },
			10*time.Second, 5*time.Millisecond)
		all := b.open(t, "?since=0", nil)
		fromTwo := b.open(t, "?since=2&task=old1&task=old3&task=new4&task=new5", nil)
		oneTask := b.open(t, "?since=0&task=new1", nil)
		// Last-Event-ID wins over since, as a browser reconnects with both.
		header := b.open(t, "?since=0", map[string]string{"Last-Event-ID": strconv.FormatUint(after[1], 10)})
		live := b.add(t, submitted("new1", nil))

		require.Equal(t, append(append(append([]uint64{}, before...), after...), live), all.seqs(t, 12))
		require.Equal(t, []uint64{before[3], after[4], after[5]}, fromTwo.seqs(t, 3))
		require.Equal(t, []uint64{after[1], live}, oneTask.seqs(t, 2))
		require.Equal(t, append(append([]uint64{}, after[2:]...), live), header.seqs(t, 5))
	})

	// Clients switch from the stream to the ring and to live events while
	// events keep coming and the ring keeps moving (by count and by size).
	t.Run("WhileAppending", func(t *testing.T) {
		t.Parallel()
		b := setupEvents(t, HubConfig{Remember: 8, RememberBytes: 2000}, Config{}, nil)
		const total = 300
		var wg sync.WaitGroup
		wg.Go(func() {
			for i := range total {
				b.add(t, submitted("t"+strconv.Itoa(i), nil))
			}
		})
		var clients []*sseClient
		var from []uint64
		for i := range 6 {
			since := uint64(i * 20)
			from = append(from, since)
			clients = append(clients, b.open(t, "?since="+strconv.FormatUint(since, 10), nil))
		}
		wg.Wait()
		for i, c := range clients {
			var want []uint64
			for seq := from[i] + 1; seq <= total; seq++ {
				want = append(want, seq)
			}
			require.Equal(t, want, c.seqs(t, len(want)), "client from %d", from[i])
		}
	})
}

func TestEventsFanOutUsesOneConsumer(t *testing.T) {
	t.Parallel()
	b := setupEvents(t, HubConfig{}, Config{}, nil)
	stream, err := b.srv.JS.Stream(t.Context(), events.StreamName)
	require.NoError(t, err)
	consumers := func() int {
		info, err := stream.Info(t.Context())
		require.NoError(t, err)
		return info.State.Consumers
	}
	// The replica's and the hub's (each creates its own as it starts).
	require.Eventually(t, func() bool { return consumers() == 2 }, 10*time.Second, 5*time.Millisecond)

	const n = 50
	clients := make([]*sseClient, n)
	for i := range clients {
		q := ""
		if i%2 == 1 {
			q = "?since=0"
		}
		clients[i] = b.open(t, q, nil)
	}
	// Resuming clients register once they have caught up.
	require.Eventually(t, func() bool { return b.hub.stats().clients == n }, 10*time.Second, 5*time.Millisecond)
	require.Equal(t, 2, consumers(), "no consumer per client")

	var want []uint64
	for i := range 20 {
		want = append(want, b.add(t, submitted("t"+strconv.Itoa(i), nil)))
	}
	for _, c := range clients {
		require.Equal(t, want, c.seqs(t, len(want)))
	}
	require.Equal(t, 2, consumers())
}

func TestEventsSlowClientIsDisconnected(t *testing.T) {
	t.Parallel()

	// Through HTTP: a client that reads nothing is disconnected (its buffer
	// overflows, or a write to it stalls), while the others get everything.
	t.Run("OthersKeepReceiving", func(t *testing.T) {
		t.Parallel()
		b := setupEvents(t, HubConfig{ClientBuffer: 64}, Config{}, nil)
		fast := b.open(t, "", nil)
		conn, err := (&net.Dialer{}).DialContext(t.Context(), "tcp", b.http.Listener.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.Close() })
		_, err = io.WriteString(conn, "GET /events HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
		require.NoError(t, err)
		require.Eventually(t, func() bool { return b.hub.stats().clients == 2 }, 10*time.Second, 5*time.Millisecond)

		big := strings.Repeat("x", 64<<10)
		var want []uint64
		for b.hub.stats().clients == 2 {
			require.Less(t, len(want), 2000, "the slow client was never disconnected")
			p := submitted("t"+strconv.Itoa(len(want)), nil)
			p.Cmd = big
			want = append(want, b.add(t, p))
		}
		for i := range 5 {
			want = append(want, b.add(t, submitted("after"+strconv.Itoa(i), nil)))
		}
		require.Equal(t, want, fast.seqs(t, len(want)), "the others keep receiving everything")
		require.Equal(t, 1, b.hub.stats().clients, "the fast client is still there")

		// The slow client's stream ends before the events after its drop.
		require.NoError(t, conn.SetReadDeadline(time.Now().Add(30*time.Second)))
		got, err := io.ReadAll(conn)
		require.NoError(t, err, "the server closed the connection")
		require.NotContains(t, string(got), "id: "+strconv.FormatUint(want[len(want)-1], 10)+"\n")
	})

	// The hub's own policy: a subscription whose buffer is full when an
	// event for it arrives is ended, and the next one still gets events.
	t.Run("BufferOverflowEndsTheSubscription", func(t *testing.T) {
		t.Parallel()
		b := setupEvents(t, HubConfig{ClientBuffer: 2}, Config{}, nil)
		slow, err := b.hub.subscribe(t.Context(), &eventFilter{})
		require.NoError(t, err)
		other, err := b.hub.subscribe(t.Context(), &eventFilter{})
		require.NoError(t, err)
		var want []uint64
		for i := range 3 {
			want = append(want, b.add(t, submitted("t"+strconv.Itoa(i), nil)))
			require.Equal(t, want[i], (<-other.ch).seq)
		}
		<-slow.done
		require.ErrorIs(t, slow.err, ErrSlowClient)
		require.Len(t, slow.ch, 2, "it had the first two")
		require.Equal(t, hubStats{clients: 1, dropped: 1}, b.hub.stats())
	})
}

func TestEventsBadParameters(t *testing.T) {
	t.Parallel()
	b := setupEvents(t, HubConfig{}, Config{}, nil)
	for _, tc := range []struct {
		query, header, want string
	}{
		{query: "?foo=1", want: `unknown parameter "foo"`},
		{query: "?task=", want: "parameter task is empty"},
		{query: "?task=a.b", want: `task "a.b" is not a valid id`},
		{query: "?node=*", want: `node "*" is not a valid id`},
		{query: "?type=task.nope", want: `unknown event type "task.nope"`},
		{query: "?type=task.completed.v9", want: `unknown event type "task.completed.v9"`},
		{query: "?tag=novalue", want: `tag "novalue": want name:value`},
		{query: "?tag=:v", want: `tag ":v": want name:value`},
		{query: "?since=-1", want: `since "-1" is not a stream sequence`},
		{query: "?since=1&since=2", want: "since is given 2 times"},
		{header: "abc", want: `Last-Event-ID "abc" is not a stream sequence`},
	} {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, b.http.URL+"/events"+tc.query, nil)
		require.NoError(t, err)
		if tc.header != "" {
			req.Header.Set("Last-Event-ID", tc.header)
		}
		resp, err := b.client.Do(req)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.NoError(t, resp.Body.Close())
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, "%s %s: %s", tc.query, tc.header, body)
		require.True(t, strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json"))
		var e errorBody
		require.NoError(t, json.Unmarshal(body, &e))
		require.Contains(t, e.Error, tc.want)
	}
	require.Zero(t, b.hub.stats().clients)

	t.Run("WithoutAHub", func(t *testing.T) {
		t.Parallel()
		plain := setup(t)
		code, body := plain.do(t, http.MethodGet, "/events", "")
		require.Equal(t, http.StatusServiceUnavailable, code)
		require.JSONEq(t, `{"error":"the event stream is not enabled"}`, string(body))
	})
}

func TestEventsHeartbeat(t *testing.T) {
	t.Parallel()
	b := setupEvents(t, HubConfig{}, Config{EventsHeartbeat: 10 * time.Millisecond}, nil)
	c := b.open(t, "", nil)
	select {
	case comment := <-c.comments:
		require.Equal(t, "heartbeat", comment)
	case <-time.After(20 * time.Second):
		require.FailNow(t, "no heartbeat")
	}
}

// Shutting the server down ends open streams, so Serve returns at once
// rather than after its grace period with an error.
func TestEventsEndWithTheServer(t *testing.T) {
	t.Parallel()
	b := setupEvents(t, HubConfig{}, Config{}, nil)
	ln, err := (&net.ListenConfig{}).Listen(t.Context(), "tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- b.gw.Serve(ctx, ln) }()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+ln.Addr().String()+"/events", nil)
	require.NoError(t, err)
	resp, err := b.client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	seq := b.add(t, submitted("t1", nil))
	r := bufio.NewReader(resp.Body)
	line, err := r.ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "id: "+strconv.FormatUint(seq, 10)+"\n", line)

	cancel()
	require.NoError(t, <-served)
	_, err = io.ReadAll(r)
	require.NoError(t, err, "the stream ended cleanly")
}
