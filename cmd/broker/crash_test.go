package main

import (
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/dockertest"
	"github.com/cbroker/broker/internal/natstest"
	"github.com/cbroker/broker/projections"
)

// TestKill9 kills the broker process with SIGKILL while a dozen tasks are
// waiting, starting and running, and starts it again on the same data
// directory: every task reaches exactly one terminal state, no attempt runs
// twice, no container is left behind and no accepted task is lost.
func TestKill9(t *testing.T) {
	t.Parallel()
	engine := dockertest.Engines(t, 1)[0]
	dir := t.TempDir()
	natsAddr := freePort(t)
	env := []string{"DOCKER_HOST=" + engine.Hostname, "BROKER_DATA_DIR=" + dir, "BROKER_NATS_SUBSCRIBER_PASSWORD=auditor"}
	args := []string{"--local-node", "true", "--local-node-slots", "cpu=4", "--nats-listen", natsAddr}
	p := serve(t, env, args...)

	var ids []string
	for i := range 12 {
		var tk map[string]any
		require.Equal(t, http.StatusOK, p.call(t, http.MethodPost, "/tasks",
			fmt.Sprintf(`{"name":"crash %d","image":%q,"cmd":"sleep 2; echo %d","execution_type":"cpu"}`, i, dockertest.Image, i), &tk))
		ids = append(ids, tk["uuid"].(string))
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		started := 0
		for _, id := range ids {
			var tk map[string]any
			require.Equal(c, http.StatusOK, p.call(c, http.MethodGet, "/tasks/"+id, "", &tk))
			if tk["status"] == "started" {
				started++
			}
		}
		require.GreaterOrEqual(c, started, 2)
	}, 60*time.Second, 20*time.Millisecond)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	_ = p.cmd.Wait()

	p = serve(t, env, args...)
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, id := range ids {
			var tk map[string]any
			require.Equal(c, http.StatusOK, p.call(c, http.MethodGet, "/tasks/"+id, "", &tk))
			require.Equal(c, "completed", tk["status"], id)
		}
	}, 120*time.Second, 100*time.Millisecond)

	// Fold the log again here, as the read-only subscriber user, and count
	// what the fold accepted.
	nc, err := nats.Connect("nats://"+natsAddr, nats.UserInfo("subscriber", "auditor"))
	require.NoError(t, err)
	defer nc.Close()
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	s := projections.NewState()
	count := map[string]map[events.Type]int{}
	for _, env := range natstest.Events(t, js) {
		if out := s.Apply(env); out.Accepted {
			if count[env.AggregateID] == nil {
				count[env.AggregateID] = map[events.Type]int{}
			}
			count[env.AggregateID][env.Type]++
		}
	}
	for i, id := range ids {
		c := count[id]
		require.Equal(t, 1, c[events.TypeTaskSlotReserved], "task %d ran exactly one attempt", i)
		require.Equal(t, 1, c[events.TypeTaskContainerStarted], "task %d started once", i)
		require.Equal(t, 1, c[events.TypeTaskContainerExited], "task %d exited once", i)
		require.Equal(t, 1, c[events.TypeTaskCompleted], "task %d completed once", i)
		var logs map[string]string
		require.Equal(t, http.StatusOK, p.call(t, http.MethodGet, "/tasks/"+id+"/logs", "", &logs))
		require.Equal(t, fmt.Sprintf("%d\n", i), logs["logs"], "task %d kept its logs", i)
	}
	require.EventuallyWithT(t, func(c *assert.CollectT) {
		for _, id := range ids {
			require.Empty(c, dockertest.TaskContainers(t, engine, id), "no container is left behind")
		}
	}, 40*time.Second, 100*time.Millisecond)
	p.stop(t)
}
