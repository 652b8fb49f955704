package natstest_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/cbroker/broker/internal/natstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestCluster(t *testing.T) {
	t.Parallel()
	c := natstest.Cluster(t, 3)
	require.Equal(t, 3, c.Len())
	require.Len(t, strings.Split(c.URLs(), ","), 3)

	_, js := c.Connect()
	_, err := js.CreateStream(t.Context(), jetstream.StreamConfig{
		Name: "T", Subjects: []string{"t.>"}, Replicas: 3, Storage: jetstream.FileStorage,
	})
	require.NoError(t, err)
	for range 10 {
		_, err := js.Publish(t.Context(), "t.x", []byte("x"))
		require.NoError(t, err)
	}

	// Kill the stream's leader: another server takes over and the stream
	// takes writes again.
	leader := c.StreamLeader("T")
	c.Kill(leader)
	killed := time.Now()
	require.Nil(t, c.Server(leader))
	require.NotEqual(t, leader, c.StreamLeader("T"))
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		_, err := js.Publish(t.Context(), "t.x", []byte("after"))
		require.NoError(ct, err)
	}, 30*time.Second, 50*time.Millisecond)
	t.Logf("stream leader killed: a new one took writes %s later", time.Since(killed).Round(time.Millisecond))
	_, ok := c.StreamState(leader, "T")
	require.False(t, ok, "a killed server reports nothing")

	// The restarted server rejoins on its old store and catches up.
	c.Restart(leader)
	s, err := js.Stream(t.Context(), "T")
	require.NoError(t, err)
	info, err := s.Info(t.Context())
	require.NoError(t, err)
	require.GreaterOrEqual(t, info.State.LastSeq, uint64(11))
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		st, ok := c.StreamState(leader, "T")
		require.True(ct, ok)
		require.Equal(ct, info.State.LastSeq, st.LastSeq)
	}, 20*time.Second, 50*time.Millisecond)
}

func TestClustersInParallel(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"A", "B"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := natstest.Cluster(t, 3)
			_, js := c.Connect()
			_, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: name, Subjects: []string{name}, Replicas: 3})
			require.NoError(t, err)
			_, err = js.Publish(t.Context(), name, nil)
			require.NoError(t, err)
		})
	}
}
