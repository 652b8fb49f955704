package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/dockertest"
	"github.com/cbroker/broker/internal/natstest"
	"github.com/cbroker/broker/projections"
)

// cluster is a few broker processes sharing one NATS JetStream cluster.
type cluster struct {
	t       *testing.T
	js      jetstream.JetStream
	url     string
	brokers []*process
}

func (c *cluster) start() *process {
	p := serve(c.t, []string{"BROKER_DATA_DIR=" + c.t.TempDir(), "BROKER_LOCAL_NODE=false"},
		"--nats-url", c.url, "--health-interval", "500ms", "--snapshot-every", "0")
	c.brokers = append(c.brokers, p)
	return p
}

// holder returns the broker process holding a lease, waiting for one.
func (c *cluster) holder(key string) *process {
	c.t.Helper()
	kv, err := c.js.KeyValue(c.t.Context(), events.BucketLeases)
	require.NoError(c.t, err)
	var found *process
	require.EventuallyWithT(c.t, func(ct *assert.CollectT) {
		e, err := kv.Get(c.t.Context(), key)
		require.NoError(ct, err)
		found = nil
		for _, p := range c.brokers {
			if p.cmd.ProcessState == nil && strings.HasSuffix(string(e.Value()), "-"+strconv.Itoa(p.cmd.Process.Pid)) {
				found = p
			}
		}
		require.NotNil(ct, found, "lease %s held by %s", key, e.Value())
	}, 30*time.Second, 20*time.Millisecond)
	return found
}

// kill SIGKILLs a broker: it releases nothing.
func (c *cluster) kill(p *process) time.Time {
	c.t.Helper()
	require.NoError(c.t, p.cmd.Process.Signal(syscall.SIGKILL))
	at := time.Now()
	_ = p.cmd.Wait()
	return at
}

// alive returns a running broker other than not.
func (c *cluster) alive(not *process) *process {
	for _, p := range c.brokers {
		if p != not && p.cmd.ProcessState == nil {
			return p
		}
	}
	c.t.Fatal("no broker alive")
	return nil
}

func (c *cluster) submit(p *process, name, cmd string) string {
	c.t.Helper()
	id, _, err := trySubmit(p, name, cmd)
	require.NoError(c.t, err)
	return id
}

func (c *cluster) wait(p *process, id string, statuses ...string) map[string]any {
	c.t.Helper()
	var tk map[string]any
	require.EventuallyWithT(c.t, func(ct *assert.CollectT) {
		require.Equal(ct, http.StatusOK, p.call(ct, http.MethodGet, "/tasks/"+id, "", &tk))
		require.Contains(ct, statuses, tk["status"])
	}, 90*time.Second, 50*time.Millisecond)
	return tk
}

// exactlyOnce folds the whole log and checks that every task ended once,
// with one reservation, one start and one exit per attempt.
func (c *cluster) exactlyOnce(ids []string) {
	c.t.Helper()
	st := projections.NewState()
	count := map[string]int{}
	for i, env := range natstest.Events(c.t, c.js) {
		env.Seq = uint64(i + 1)
		if out := st.Apply(env); out.Accepted {
			count[env.AggregateID+"/"+env.Type.Name()]++
		}
	}
	for _, id := range ids {
		tk := st.Tasks[id]
		require.NotNil(c.t, tk)
		require.Equal(c.t, projections.TaskCompleted, tk.Status, "task %s", id)
		require.Equal(c.t, 1, tk.Attempt, "task %s ran one attempt", id)
		for _, name := range []string{"slot_reserved", "container_started", "container_exited", "completed"} {
			require.Equal(c.t, 1, count[id+"/"+name], "task %s: %s accepted once", id, name)
		}
	}
}

// TestBrokersSurviveTheLossOfOne runs two broker processes on a three-server
// JetStream cluster (in the test process; R3 streams, buckets and object
// stores) and two Docker engines. It kills (SIGKILL) the one running the
// scheduler: the other takes the lease over and runs the tasks. Then, with both running
// again and a node each, it kills the one owning a node while containers run
// there: the other takes the node over and adopts the running containers
// (they are not started again). Last, with both running, it kills the NATS
// server leading the event stream while both take submissions: none is
// lost. Every task ends exactly once, each container started once.
func TestBrokersSurviveTheLossOfOne(t *testing.T) {
	t.Parallel()
	es := dockertest.Engines(t, 2)
	servers := natstest.Cluster(t, 3)
	_, js := servers.Connect()
	c := &cluster{t: t, js: js, url: servers.URLs()}
	c.start()
	c.start()
	info, err := js.Stream(t.Context(), events.StreamName)
	require.NoError(t, err)
	require.Equal(t, 3, info.CachedInfo().Config.Replicas)
	meta, err := js.KeyValue(t.Context(), events.BucketMeta)
	require.NoError(t, err)
	e, err := meta.Get(t.Context(), events.KeyBrokerID)
	require.NoError(t, err)
	dockertest.CleanupBroker(t, es, string(e.Value()))
	nodes := map[string]dockertest.Engine{}
	for _, eng := range es {
		var n map[string]any
		require.Equal(t, http.StatusCreated, c.brokers[0].call(t, http.MethodPost, "/nodes",
			fmt.Sprintf(`{"hostname":%q,"slots_execution_types":{"cpu":2}}`, eng.Hostname), &n))
		nodes[n["uuid"].(string)] = eng
	}

	// The scheduling broker dies.
	victim := c.holder("scheduler")
	killed := c.kill(victim)
	survivor := c.alive(victim)
	require.Same(t, survivor, c.holder("scheduler"))
	t.Logf("scheduler lease taken over %v after the kill", time.Since(killed).Round(time.Millisecond))
	var ids []string
	for i := range 4 {
		ids = append(ids, c.submit(survivor, fmt.Sprintf("after-kill-%d", i), "echo ok"))
	}
	for _, id := range ids {
		c.wait(survivor, id, "completed")
	}

	// Both again, a node each; the owner of a busy node dies.
	c.start()
	var owners map[string]*process
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		owners = map[string]*process{}
		for id := range nodes {
			owners[id] = c.holder("node." + id)
		}
		require.NotSame(ct, owners[keys(nodes)[0]], owners[keys(nodes)[1]], "each broker owns a node")
	}, 30*time.Second, 100*time.Millisecond)
	start := time.Now()
	var long []string
	for i := range 4 {
		long = append(long, c.submit(survivor, fmt.Sprintf("long-%d", i), "sleep 8; echo done"))
	}
	for _, id := range long {
		c.wait(survivor, id, "started")
	}
	var busy string
	for id, p := range owners {
		if p != survivor {
			busy = id
		}
	}
	require.NotEmpty(t, busy)
	killed = c.kill(owners[busy])
	require.Same(t, survivor, c.holder("node."+busy))
	t.Logf("node taken over %v after its owner was killed", time.Since(killed).Round(time.Millisecond))
	for _, id := range long {
		tk := c.wait(survivor, id, "completed", "failed")
		require.Equal(t, "completed", tk["status"], "task %s", id)
		require.Zero(t, tk["try_count"])
		var logs map[string]string
		require.Equal(t, http.StatusOK, survivor.call(t, http.MethodGet, "/tasks/"+id+"/logs", "", &logs))
		require.Equal(t, "done\n", logs["logs"])
	}
	// Docker started each container once: adopted, not restarted.
	requireStartedOnce(t, es, string(e.Value()), start, long)

	// Both again; the server leading the event stream dies while both
	// gateways take submissions.
	gateways := []*process{survivor, c.start()}
	leader := servers.StreamLeader(events.StreamName)
	start = time.Now()
	var (
		mu      sync.Mutex
		burst   []string
		errs    []error
		retries []string
		wg      sync.WaitGroup
	)
	for i := range 12 {
		wg.Go(func() {
			id, retried, err := trySubmit(gateways[i%2], fmt.Sprintf("burst-%d", i), "sleep 1; echo ok")
			mu.Lock()
			defer mu.Unlock()
			retries = append(retries, retried...)
			if err != nil {
				errs = append(errs, err)
				return
			}
			burst = append(burst, id)
		})
		if i == 4 {
			servers.Kill(leader)
			killed = time.Now()
			t.Logf("killed %s, the leader of %s", servers.Name(leader), events.StreamName)
		}
	}
	wg.Wait()
	t.Logf("every submission accepted %v after the kill, after %d client retries", time.Since(killed).Round(time.Millisecond), len(retries))
	for _, r := range retries {
		t.Logf("retried %s", r)
	}
	require.Empty(t, errs)
	require.Len(t, burst, 12, "every submission accepted")
	for _, id := range burst {
		require.Equal(t, "completed", c.wait(survivor, id, "completed", "failed")["status"], "task %s", id)
	}
	c.exactlyOnce(append(append(ids, long...), burst...))
	requireStartedOnce(t, es, string(e.Value()), start, burst)
}

// trySubmit submits a task from any goroutine, as a careful client does:
// with an X-Idempotency-Key, retrying a 5xx or a 409 (the key's first
// request still in progress) with the same key for up to a minute. A
// stream that has no leader for longer than the gateway waits for an
// append (10 s; RAFT elects within 4-9 s, more on a loaded machine) is
// answered 503. It returns the task's id and why it retried.
func trySubmit(p *process, name, cmd string) (string, []string, error) {
	body := fmt.Sprintf(`{"name":%q,"image":%q,"cmd":%q,"execution_type":"cpu"}`, name, dockertest.Image, cmd)
	key := name + "-" + uuid.NewString()
	deadline := time.Now().Add(time.Minute)
	var retried []string
	for {
		sent := time.Now()
		code, id, msg, err := postTask(p, key, body)
		switch {
		case err == nil && code == http.StatusOK && id != "":
			return id, retried, nil
		case err == nil && code < 500 && code != http.StatusConflict:
			return "", retried, fmt.Errorf("%s: %d %s", name, code, msg)
		case time.Now().After(deadline):
			return "", retried, errors.Join(fmt.Errorf("%s: still failing after %d retries: %d %s", name, len(retried), code, msg), err)
		}
		retried = append(retried, fmt.Sprintf("%s after %v: %d %s %v", name, time.Since(sent).Round(time.Millisecond), code, msg, err))
		time.Sleep(500 * time.Millisecond)
	}
}

func postTask(p *process, key, body string) (code int, id, msg string, err error) {
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, p.base+"/tasks", strings.NewReader(body))
	if err != nil {
		return 0, "", "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Idempotency-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	var tk struct {
		UUID  string `json:"uuid"`
		Error string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&tk); err != nil {
		return resp.StatusCode, "", "", err
	}
	return resp.StatusCode, tk.UUID, tk.Error, nil
}

// requireStartedOnce checks from Docker's events that each task of a broker
// had one container, started once, since a time.
func requireStartedOnce(t *testing.T, es []dockertest.Engine, brokerID string, since time.Time, tasks []string) {
	t.Helper()
	started := map[string]int{}
	for _, eng := range es {
		out, err := exec.CommandContext(t.Context(), "docker", "-H", eng.Hostname, "events",
			"--since", since.Format(time.RFC3339Nano), "--until", time.Now().Format(time.RFC3339Nano),
			"--filter", "event=start", "--filter", "label=io.cbroker.broker="+brokerID,
			"--format", "{{.Actor.Attributes.name}}").Output()
		require.NoError(t, err)
		for name := range strings.FieldsSeq(string(out)) {
			started[name]++
		}
	}
	require.Len(t, started, len(tasks))
	for name, n := range started {
		require.Equal(t, 1, n, "container %s started %d times", name, n)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	if len(out) > 1 && out[0] > out[1] {
		out[0], out[1] = out[1], out[0]
	}
	return out
}
