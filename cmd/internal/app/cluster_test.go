package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/cmd/internal/app"
	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/natstest"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/benchnoop"
	"github.com/cbroker/broker/services/runtime"
)

// clusterBroker runs a broker on the cluster's URL list until the test
// ends, with the no-op runtime.
func clusterBroker(t *testing.T, c *natstest.Servers, instance string) *broker {
	t.Helper()
	return runApp(t, app.Config{
		Listen: "127.0.0.1:0", NATSURL: c.URLs(), LocalNode: app.LocalNodeFalse,
		Runtimes: runtime.Set{benchnoop.Runtime{}}, HealthInterval: 50 * time.Millisecond, Instance: instance,
	})
}

// assetStreams are the streams behind the broker's stream, buckets and
// object stores.
func assetStreams() []string {
	names := []string{events.StreamName}
	for _, kv := range events.KeyValueConfigs(1) {
		names = append(names, "KV_"+kv.Bucket)
	}
	for _, obs := range events.ObjectStoreConfigs(1) {
		names = append(names, "OBJ_"+obs.Bucket)
	}
	return names
}

func requireReplicas(t *testing.T, js jetstream.JetStream, want int) {
	t.Helper()
	for _, name := range assetStreams() {
		s, err := js.Stream(t.Context(), name)
		require.NoError(t, err, name)
		info, err := s.Info(t.Context())
		require.NoError(t, err, name)
		require.Equal(t, want, info.Config.Replicas, name)
		if want > 1 {
			require.NotNil(t, info.Cluster, name)
			require.NotEmpty(t, info.Cluster.Leader, name)
			require.Len(t, info.Cluster.Replicas, want-1, "%s: peers besides the leader", name)
		}
	}
}

func TestClusterReplication(t *testing.T) {
	t.Parallel()

	t.Run("ThreeServersGetThreeReplicas", func(t *testing.T) {
		t.Parallel()
		c := natstest.Cluster(t, 3)
		_, js := c.Connect()
		// A stream made by an earlier, single-replica deployment is updated;
		// the buckets and object stores are created.
		_, err := js.CreateStream(t.Context(), events.StreamConfig(1))
		require.NoError(t, err)
		b := clusterBroker(t, c, "r3")
		requireReplicas(t, js, 3)
		runNoopTask(t, b)
	})

	t.Run("BrokersStartTogether", func(t *testing.T) {
		t.Parallel()
		c := natstest.Cluster(t, 3)
		var wg sync.WaitGroup
		apps := make([]*app.App, 3)
		errs := make([]error, 3)
		for i := range apps {
			wg.Go(func() {
				apps[i], errs[i] = app.New(t.Context(), app.Config{
					Listen: "127.0.0.1:0", NATSURL: c.URLs(), LocalNode: app.LocalNodeFalse,
					Runtimes: runtime.Set{benchnoop.Runtime{}}, Instance: fmt.Sprintf("together-%d", i),
				})
			})
		}
		wg.Wait()
		for i := range apps {
			require.NoError(t, errs[i])
		}
		// Each runs, and its fold catches up.
		ctx, cancel := context.WithCancel(context.Background())
		var running sync.WaitGroup
		for _, a := range apps {
			running.Go(func() { require.NoError(t, a.Run(ctx)) })
		}
		t.Cleanup(func() { cancel(); running.Wait() })
		for i, a := range apps {
			select {
			case <-a.Replica.Ready():
			case <-time.After(20 * time.Second):
				t.Fatalf("broker %d: the fold did not start", i)
			}
		}
		_, js := c.Connect()
		requireReplicas(t, js, 3)
	})

	t.Run("TwoServersGetOne", func(t *testing.T) {
		t.Parallel()
		c := natstest.Cluster(t, 2)
		b := clusterBroker(t, c, "r1")
		_, js := c.Connect()
		requireReplicas(t, js, 1)
		runNoopTask(t, b)
	})
}

// clusterConf is the repository's nats.conf with its cluster example
// uncommented, as README.md makes it with
// sed '/^## >>>/,/^## <<</s/^#//' nats.conf.
func clusterConf(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "..", "nats.conf"))
	require.NoError(t, err)
	conf := string(raw)
	begin, end := strings.Index(conf, "\n## >>> cluster example"), strings.Index(conf, "\n## <<< cluster example")
	require.Positive(t, begin, "nats.conf has the cluster example")
	require.Greater(t, end, begin)
	lines := strings.SplitAfter(conf[begin+1:end+1], "\n")
	for i, l := range lines {
		lines[i] = strings.TrimPrefix(l, "#")
	}
	return conf[:begin+1] + strings.Join(lines, "") + conf[end+1:]
}

// TestClusterFromTheExampleConfig runs three servers from nats.conf's
// cluster example, each with its own store directory and the per-server
// command-line flags README.md gives nats-server, and a broker logging in
// as the broker user.
func TestClusterFromTheExampleConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	vars := fmt.Sprintf("%s: %q\n%s: %q\n", app.VarBrokerPassword, "cluster-broker", app.VarSubscriberPassword, "cluster-subscriber")
	example := clusterConf(t)
	require.Contains(t, example, `store_dir: "/var/lib/nats"`)
	c := natstest.Cluster(t, 3, func(i int, o *server.Options) (*server.Options, error) {
		conf := filepath.Join(dir, fmt.Sprintf("nats-%d.conf", i+1))
		own := strings.Replace(example, "/var/lib/nats", o.StoreDir, 1)
		if err := os.WriteFile(conf, []byte(vars+own), 0o600); err != nil {
			return nil, err
		}
		routes := make([]string, len(o.Routes))
		for j, r := range o.Routes {
			routes[j] = r.String()
		}
		fo, err := server.ConfigureOptions(flag.NewFlagSet("nats-server", flag.ContinueOnError), []string{
			"-c", conf, "-n", fmt.Sprintf("nats-%d", i+1), "-a", "127.0.0.1", "-p", strconv.Itoa(o.Port), "-m", "-1",
			"--cluster", fmt.Sprintf("nats://127.0.0.1:%d", o.Cluster.Port), "--routes", strings.Join(routes, ","),
		}, nil, nil, nil)
		if err != nil {
			return nil, err
		}
		fo.NoLog, fo.NoSigs = true, true
		return fo, nil
	})
	srv := c.Server(0)
	require.Equal(t, "nats-1", srv.Name())
	require.Equal(t, "cbroker", srv.ClusterName(), "the cluster's name comes from the example")

	b := runApp(t, app.Config{
		Listen: "127.0.0.1:0", NATSURL: c.URLs(), NATSPassword: "cluster-broker", LocalNode: app.LocalNodeFalse,
		Runtimes: runtime.Set{benchnoop.Runtime{}}, HealthInterval: 50 * time.Millisecond, Instance: "example",
	})
	requireReplicas(t, b.app.JetStream(), 3)
	runNoopTask(t, b)
}

// submitter posts tasks with an idempotency key each, retrying what a
// client would retry (no answer, 5xx, 409 while the first try is in
// progress) with the same key.
type submitter struct {
	base   string
	client *http.Client
	killed atomic.Pointer[time.Time]
	// firstAfterKill is the time from the kill to the first accepted POST
	// sent after it.
	firstAfterKill atomic.Int64
	retries        atomic.Int64
	logf           func(format string, args ...any)
}

func (s *submitter) submit(ctx context.Context, key string) (string, error) {
	body, _ := json.Marshal(map[string]any{"name": key, "image": "none", "cmd": "true", "execution_type": "cpu"})
	deadline := time.Now().Add(40 * time.Second)
	for {
		sent := time.Now()
		id, status, err := s.post(ctx, key, body)
		if err == nil && status == http.StatusOK {
			if k := s.killed.Load(); k != nil && sent.After(*k) {
				s.firstAfterKill.CompareAndSwap(0, int64(time.Since(*k)))
			}
			return id, nil
		}
		if err == nil && status < 500 && status != http.StatusConflict {
			return "", fmt.Errorf("POST /tasks %s: status %d", key, status)
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("status %d", status)
			}
			return "", fmt.Errorf("POST /tasks %s: still failing: %w", key, err)
		}
		s.retries.Add(1)
		s.logf("retrying POST /tasks %s: status %d, %v", key, status, err)
		select {
		case <-time.After(200 * time.Millisecond):
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

func (s *submitter) post(ctx context.Context, key string, body []byte) (string, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.base+"/tasks", bytes.NewReader(body))
	if err != nil {
		return "", 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Idempotency-Key", key)
	resp, err := s.client.Do(req)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	var tk task
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&tk); err != nil {
			return "", 0, err
		}
	} else {
		var e struct{ Error string }
		_ = json.NewDecoder(resp.Body).Decode(&e)
		s.logf("POST /tasks %s: %d %s", key, resp.StatusCode, e.Error)
	}
	return tk.UUID, resp.StatusCode, nil
}

// TestClusterStreamLeaderKilled kills the server leading the event stream
// while clients submit tasks: every accepted task completes exactly once,
// none is lost, and the killed server catches up when it comes back.
func TestClusterStreamLeaderKilled(t *testing.T) {
	t.Parallel()
	const (
		tasks   = 200
		clients = 8
		killAt  = 60 // accepted submissions before the kill
	)
	c := natstest.Cluster(t, 3)
	b := clusterBroker(t, c, "kill")
	_, js := c.Connect()
	requireReplicas(t, js, 3)
	_, err := b.app.RegisterNode(t.Context(), benchnoop.Scheme+"://n1", map[string]int{"cpu": 8})
	require.NoError(t, err)

	sub := &submitter{base: b.base, client: &http.Client{Timeout: 30 * time.Second}, logf: t.Logf}
	var (
		mu       sync.Mutex
		accepted = map[string]bool{}
		errs     []error
		next     atomic.Int64
		reached  = make(chan struct{})
		once     sync.Once
		wg       sync.WaitGroup
	)
	for range clients {
		wg.Go(func() {
			for i := next.Add(1); i <= tasks; i = next.Add(1) {
				id, err := sub.submit(t.Context(), fmt.Sprintf("leader-kill-%03d", i))
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					accepted[id] = true
				}
				if len(accepted) >= killAt {
					once.Do(func() { close(reached) })
				}
				mu.Unlock()
			}
		})
	}
	select {
	case <-reached:
	case <-time.After(30 * time.Second):
		t.Fatal("the workload did not start")
	}
	leader := c.StreamLeader(events.StreamName)
	stream, err := js.Stream(t.Context(), events.StreamName)
	require.NoError(t, err)
	before, err := stream.Info(t.Context())
	require.NoError(t, err)
	start := time.Now()
	c.Kill(leader)
	// From here on the old leader is gone for good; its shutdown took a
	// moment, during which it may still have stored appends.
	killed := time.Now()
	sub.killed.Store(&killed)
	t.Logf("killed %s, the leader of %s, in %s", c.Name(leader), events.StreamName, killed.Sub(start).Round(time.Millisecond))
	wg.Wait()
	require.Empty(t, errs)
	require.Len(t, accepted, tasks)
	t.Logf("stream leader killed: first append stored %s after the kill; first submission sent after the kill accepted %s after it; %d client retries; new leader %s",
		firstStoredAfter(t, stream, before.State.LastSeq, killed), time.Duration(sub.firstAfterKill.Load()).Round(time.Millisecond),
		sub.retries.Load(), c.Name(c.StreamLeader(events.StreamName)))

	// Every accepted task completes.
	require.EventuallyWithT(t, func(ct *assertT) {
		done := 0
		b.app.Replica.Read(func(s *projections.State) {
			for id := range accepted {
				if tk, ok := s.Tasks[id]; ok && tk.Status == projections.TaskCompleted {
					done++
				}
			}
		})
		require.Equal(ct, tasks, done)
	}, 30*time.Second, 50*time.Millisecond)
	t.Logf("all %d tasks completed %s after the kill", tasks, time.Since(killed).Round(time.Millisecond))

	// The killed server comes back and catches up with the stream.
	restarted := time.Now()
	c.Restart(leader)
	t.Logf("%s restarted; the cluster is ready again after %s", c.Name(leader), time.Since(restarted).Round(time.Millisecond))
	info, err := stream.Info(t.Context())
	require.NoError(t, err)
	require.EventuallyWithT(t, func(ct *assertT) {
		st, ok := c.StreamState(leader, events.StreamName)
		require.True(ct, ok)
		require.GreaterOrEqual(ct, st.LastSeq, info.State.LastSeq)
	}, 30*time.Second, 50*time.Millisecond)
	t.Logf("%s caught up with %s (sequence %d) %s after its restart", c.Name(leader), events.StreamName, info.State.LastSeq,
		time.Since(restarted).Round(time.Millisecond))

	// Folding the log: each accepted task was submitted, reserved, started
	// and completed exactly once; nothing else was submitted.
	counts := map[string]map[events.Type]int{}
	s := projections.NewState()
	for _, env := range natstest.Events(t, js) {
		if out := s.Apply(env); out.Accepted && env.Type.Aggregate() == events.AggregateTask {
			if counts[env.AggregateID] == nil {
				counts[env.AggregateID] = map[events.Type]int{}
			}
			counts[env.AggregateID][env.Type]++
		}
	}
	require.Len(t, counts, tasks)
	for id, n := range counts {
		require.True(t, accepted[id], "task %s was never accepted by the API", id)
		for _, typ := range []events.Type{events.TypeTaskSubmitted, events.TypeTaskSlotReserved, events.TypeTaskContainerStarted, events.TypeTaskCompleted} {
			require.Equal(t, 1, n[typ], "task %s: accepted %s; history %+v; log read up to %d", id, typ, s.Tasks[id].History, s.Seq)
		}
	}
}

// firstStoredAfter returns how long after a time the stream stored its first
// message after it, looking from sequence after on (the stream's timestamps
// come from the same clock: the servers run in this process).
func firstStoredAfter(t *testing.T, stream jetstream.Stream, after uint64, at time.Time) time.Duration {
	t.Helper()
	for seq := after + 1; ; seq++ {
		m, err := stream.GetMsg(t.Context(), seq)
		require.NoError(t, err)
		if m.Time.After(at) {
			return m.Time.Sub(at).Round(time.Millisecond)
		}
	}
}
