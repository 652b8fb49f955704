package health_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/internal/natstest"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/actor"
	"github.com/cbroker/broker/services/benchnoop"
	"github.com/cbroker/broker/services/docker"
	"github.com/cbroker/broker/services/health"
	"github.com/cbroker/broker/services/runtime"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// switchable answers pings of bench-noop nodes, or fails them when down.
type switchable struct {
	benchnoop.Runtime
	down atomic.Bool
}

func (s *switchable) Ping(ctx context.Context, n runtime.Node) error {
	if s.down.Load() {
		return errors.New("connection refused")
	}
	return s.Runtime.Ping(ctx, n)
}

func TestMonitorTransitions(t *testing.T) {
	t.Parallel()
	srv := natstest.Run(t, "")
	replica, err := projections.NewReplica(projections.ReplicaConfig{JetStream: srv.JS})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { require.NoError(t, replica.Run(ctx)) })
	t.Cleanup(func() { cancel(); wg.Wait() })

	writer := &actor.Writer{JS: srv.JS, Actor: "test/health"}
	for _, p := range []events.Payload{
		&events.NodeRegistered{NodeID: "flaky", Hostname: "bench-noop://flaky", Slots: map[string]int{"cpu": 1}},
		&events.NodeRegistered{NodeID: "dead", Hostname: "tcp://127.0.0.1:1", Slots: map[string]int{"cpu": 1}},
	} {
		_, err := writer.Propose(t.Context(), actor.Proposal{Key: p.AggregateID(), Payload: p})
		require.NoError(t, err)
	}

	rt := &switchable{}
	dockerRT := docker.New(docker.Config{})
	t.Cleanup(func() { _ = dockerRT.Close() })
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	m, err := health.New(health.Config{
		Replica: replica, Writer: writer, Runtimes: runtime.Set{rt, dockerRT},
		Grace: 5 * time.Second, Timeout: 2 * time.Second, Now: func() time.Time { return now },
	})
	require.NoError(t, err)
	<-replica.Ready()

	status := func(id string) projections.NodeStatus {
		var st projections.NodeStatus
		replica.Read(func(s *projections.State) { st = s.Nodes[id].Status })
		return st
	}
	probe := func() {
		m.Probe(t.Context())
		seq, err := srv.JS.Stream(t.Context(), events.StreamName)
		require.NoError(t, err)
		info, err := seq.Info(t.Context())
		require.NoError(t, err)
		_, err = replica.WaitSeq(t.Context(), info.State.LastSeq)
		require.NoError(t, err)
	}

	probe()
	require.Equal(t, projections.NodeAvailable, status("flaky"), "a node that answers is available")
	require.Equal(t, projections.NodeUnavailable, status("dead"), "a node that never answered stays unavailable")

	rt.down.Store(true)
	probe()
	require.Equal(t, projections.NodeUnstable, status("flaky"), "the first failed probe makes a node unstable")
	now = now.Add(4 * time.Second)
	probe()
	require.Equal(t, projections.NodeUnstable, status("flaky"), "still within the grace period")
	now = now.Add(time.Second)
	probe()
	require.Equal(t, projections.NodeUnavailable, status("flaky"), "down after the grace period")

	rt.down.Store(false)
	probe()
	require.Equal(t, projections.NodeAvailable, status("flaky"), "up when it answers again")

	// One event per transition: up, unstable, down, up.
	var transitions []events.Type
	replica.ReadSince(0, func(_ *projections.State, applied []projections.Applied, _ bool) {
		for _, a := range applied {
			if a.AggregateID == "flaky" && a.Type != events.TypeNodeRegistered {
				require.True(t, a.Outcome.Accepted, a.Outcome.Reason)
				transitions = append(transitions, a.Type)
			}
		}
	})
	require.Equal(t, []events.Type{events.TypeNodeUp, events.TypeNodeUnstable, events.TypeNodeDown, events.TypeNodeUp}, transitions)
}
