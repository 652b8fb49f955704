package projections

import (
	"strconv"
	"testing"

	"github.com/cbroker/broker/events"
)

// BenchmarkFoldLifecycle measures the fold alone: the six events of one
// successful task lifecycle per iteration, on a pool of 64 slots.
func BenchmarkFoldLifecycle(b *testing.B) {
	s := NewState()
	var seq uint64
	apply := func(p events.Payload) {
		seq++
		env, err := events.New(strconv.FormatUint(seq, 10), p, events.Meta{Time: t0})
		if err != nil {
			b.Fatal(err)
		}
		env.Seq = seq
		if out := s.Apply(env); !out.Accepted {
			b.Fatal(out.Reason)
		}
	}
	apply(&events.NodeRegistered{NodeID: "n1", Hostname: "tcp://a:1", Slots: map[string]int{"cpu": 64}})
	apply(&events.NodeUp{NodeID: "n1"})
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		id := "t" + strconv.Itoa(i)
		apply(&events.TaskSubmitted{TaskID: id, ExecutionType: "cpu", MaxRetries: 3})
		apply(&events.SlotReserved{TaskID: id, Attempt: 1, NodeID: "n1", SlotID: "cpu-" + strconv.Itoa(i%64+1), ContainerName: "c"})
		apply(&events.AttemptClaimed{TaskID: id, Attempt: 1, NodeID: "n1", Runner: "r1"})
		apply(&events.ContainerStarted{TaskID: id, Attempt: 1, NodeID: "n1"})
		apply(&events.ContainerExited{TaskID: id, Attempt: 1, NodeID: "n1"})
		apply(&events.TaskCompleted{TaskID: id, Attempt: 1})
	}
	b.ReportMetric(float64(b.N*6)/b.Elapsed().Seconds(), "events/s")
}
