package projections

import (
	"bytes"
	"encoding/gob"
	"fmt"
	"io"
	"reflect"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/stretchr/testify/require"
	"pgregory.net/rapid"

	"github.com/cbroker/broker/events"
)

// sameState compares two states field by field, indexes included. Empty and
// nil collections are the same (the snapshot encoding does not keep the
// difference, and nothing reads it), and times are compared as instants.
func sameState(t require.TestingT, want, got *State, msgAndArgs ...any) {
	diff := cmp.Diff(want, got, cmp.AllowUnexported(State{}), cmpopts.EquateEmpty())
	require.Empty(t, diff, msgAndArgs...)
}

// TestSnapshotPlusTailEqualsReplay folds random event sequences, takes a
// snapshot at a random point, restores it and folds the rest of the events:
// the state must equal the one folded from the start, outcomes included.
func TestSnapshotPlusTailEqualsReplay(t *testing.T) {
	t.Parallel()
	rapid.Check(t, func(rt *rapid.T) {
		n := rapid.IntRange(1, 300).Draw(rt, "n")
		cut := rapid.IntRange(0, n).Draw(rt, "cut")
		full := NewState()
		var restored *State
		for i := range n {
			if i == cut {
				full.StoredAt = t0.Add(time.Duration(i) * time.Second)
				data, err := full.MarshalSnapshot()
				require.NoError(rt, err)
				restored, err = RestoreSnapshot(data)
				require.NoError(rt, err)
				sameState(rt, full, restored, "restored snapshot at %d", cut)
				checkInvariants(rt, restored)
			}
			env := envelope(rt, uint64(i+1), genLikelyEvent(rt, full))
			want := full.Apply(env)
			if restored != nil {
				got := restored.Apply(env)
				require.Equal(rt, want, got, "outcome of event %d (%s) after a snapshot at %d", i+1, env.Type, cut)
			}
		}
		if restored == nil { // the cut is after the last event
			data, err := full.MarshalSnapshot()
			require.NoError(rt, err)
			restored, err = RestoreSnapshot(data)
			require.NoError(rt, err)
		}
		restored.StoredAt = full.StoredAt
		sameState(rt, full, restored, "snapshot at %d of %d events", cut, n)
	})
}

// genLikelyEvent mostly draws the proposal a task or node would get next
// from its state (so that random runs reach every status, including attempts
// awaiting a decision and cancels in flight), and sometimes any event.
func genLikelyEvent(t *rapid.T, s *State) events.Payload {
	id := rapid.SampledFrom([]string{"t1", "t2", "t3", "t4"}).Draw(t, "likely task")
	task, ok := s.Tasks[id]
	if !ok || rapid.IntRange(0, 4).Draw(t, "any") == 0 {
		return genEvent(t)
	}
	if w := task.Webhook; w != nil && w.State == WebhookPending {
		return likelyWebhookEvent(t, task)
	}
	switch {
	case task.Queued():
		for _, n := range s.SortedNodes() {
			if slot := n.FreeSlot(task.ExecutionType); slot != nil && n.Schedulable() {
				return reserve(id, task.Attempt+1, n.ID, slot.ID)
			}
		}
	case task.Status == TaskStarting && task.Active():
		if rapid.Bool().Draw(t, "start fails") {
			return &events.StartFailed{TaskID: id, Attempt: task.Attempt, NodeID: task.NodeID}
		}
		return started(id, task.Attempt, task.NodeID)
	case task.Active():
		return exited(id, task.Attempt, task.NodeID, rapid.IntRange(0, 1).Draw(t, "exit"))
	case task.AttemptEnded && task.succeeded():
		return &events.TaskCompleted{TaskID: id, Attempt: task.Attempt}
	case task.AttemptEnded && task.TryCount < task.MaxRetries:
		return retrying(id, task.Attempt)
	case task.AttemptEnded:
		return &events.TaskFailed{TaskID: id, Attempt: task.Attempt}
	}
	return genEvent(t)
}

// likelyWebhookEvent draws the next event of a task's pending delivery: its
// result once the last attempt is known, else another attempt.
func likelyWebhookEvent(t *rapid.T, task *Task) events.Payload {
	w := task.Webhook
	if _, record, _ := w.Due(); record {
		if w.LastSucceeded {
			return &events.WebhookDelivered{TaskID: task.ID, OutcomeSeq: w.Outcome.Seq, Attempt: w.Attempts}
		}
		return &events.WebhookAbandoned{TaskID: task.ID, OutcomeSeq: w.Outcome.Seq, Attempts: w.Attempts}
	}
	p := &events.WebhookAttempted{
		TaskID: task.ID, OutcomeSeq: w.Outcome.Seq, Attempt: w.Attempts + 1, At: t0,
		StatusCode: rapid.SampledFrom([]int{0, 200, 503}).Draw(t, "webhook status"),
	}
	if !p.Succeeded() && rapid.Bool().Draw(t, "webhook retry") {
		p.NextAttemptAt = t0.Add(time.Second)
	}
	return p
}

// TestSnapshotRecordsHaveNoOtherPointers guards the encoding: gob drops a
// pointer to a zero value, so every pointer field of the records needs the
// care ExitCode gets in taskRecord.
func TestSnapshotRecordsHaveNoOtherPointers(t *testing.T) {
	t.Parallel()
	var check func(typ reflect.Type, path string)
	seen := map[reflect.Type]bool{}
	check = func(typ reflect.Type, path string) {
		if seen[typ] {
			return
		}
		seen[typ] = true
		switch typ.Kind() {
		case reflect.Struct:
			if typ == reflect.TypeFor[time.Time]() {
				return
			}
			for f := range typ.Fields() {
				if f.Type.Kind() == reflect.Pointer && path+"."+f.Name != "Task.ExitCode" && f.Type.Elem().Kind() != reflect.Struct {
					t.Errorf("%s.%s is a pointer to %s: gob loses it when it points at a zero value", path, f.Name, f.Type.Elem())
				}
				check(f.Type, path+"."+f.Name)
			}
		case reflect.Pointer, reflect.Slice, reflect.Map:
			check(typ.Elem(), path)
		}
	}
	check(reflect.TypeFor[Task](), "Task")
	check(reflect.TypeFor[Node](), "Node")
}

func TestRestoreSnapshotRejectsBadInput(t *testing.T) {
	t.Parallel()
	_, err := RestoreSnapshot([]byte("not a snapshot"))
	require.Error(t, err)

	s := NewState()
	s.Apply(envelope(t, 1, submit("t1", "cpu", 1)))
	data, err := s.MarshalSnapshot()
	require.NoError(t, err)
	_, err = RestoreSnapshot(data[:len(data)/2])
	require.Error(t, err, "a truncated snapshot")

	var buf, frame bytes.Buffer
	require.NoError(t, gob.NewEncoder(&frame).Encode(snapshotHeader{Version: SnapshotVersion + 1}))
	require.NoError(t, writeFrame(&buf, frame.Bytes()))
	data = buf.Bytes()
	_, err = RestoreSnapshot(data)
	require.ErrorIs(t, err, ErrSnapshotVersion)
}

func TestSnapshotKeepsTimelines(t *testing.T) {
	t.Parallel()
	s := stateOf(t,
		node("n1", "tcp://a:1", map[string]int{"cpu": 1}),
		&events.NodeUp{NodeID: "n1"},
		submit("t1", "cpu", 1),
		reserve("t1", 1, "n1", "cpu-1"),
		reserve("t1", 1, "n1", "cpu-1"), // rejected: kept in the timeline
	)
	data, err := s.MarshalSnapshot()
	require.NoError(t, err)
	r, err := RestoreSnapshot(data)
	require.NoError(t, err)
	require.Len(t, r.Tasks["t1"].History, 3)
	require.False(t, r.Tasks["t1"].History[2].Accepted)
	require.Equal(t, []*Task{r.Tasks["t1"]}, r.ActiveTasks())
	require.Equal(t, uint64(5), r.Seq)
}

// TestSnapshotAcrossSegments restores a state of several segments of
// several batches each, and refuses segments that do not hold what the
// header announced.
func TestSnapshotAcrossSegments(t *testing.T) {
	t.Parallel()
	s := NewState()
	s.Apply(envelope(t, 1, node("n1", "tcp://a:1", map[string]int{"cpu": 1})))
	n := 2*snapshotBatch + 7
	for i := range n {
		s.Apply(envelope(t, uint64(i+2), submit(fmt.Sprintf("t%05d", i), "cpu", 1)))
	}
	for _, segment := range []int{snapshotBatch / 2, snapshotBatch + 1} {
		var buf bytes.Buffer
		require.NoError(t, s.writeSnapshot(&buf, segment))
		r, err := RestoreSnapshot(buf.Bytes())
		require.NoError(t, err, "segments of %d", segment)
		sameState(t, s, r)
		require.Len(t, r.Queue("cpu"), n)
	}

	encode := func(h snapshotHeader, segments ...[]*Task) []byte {
		var buf, frame bytes.Buffer
		require.NoError(t, gob.NewEncoder(&frame).Encode(h))
		require.NoError(t, writeFrame(&buf, frame.Bytes()))
		for _, tasks := range segments {
			frame.Reset()
			var records []taskRecord
			for _, t := range tasks {
				records = append(records, taskRecord{Task: t})
			}
			require.NoError(t, gob.NewEncoder(&frame).Encode(records))
			require.NoError(t, writeFrame(&buf, frame.Bytes()))
		}
		return buf.Bytes()
	}
	h := snapshotHeader{Version: SnapshotVersion, Seq: 3, Tasks: 3, Segment: 2}
	_, err := RestoreSnapshot(encode(h, s.byAge[0:2], s.byAge[2:3]))
	require.NoError(t, err)
	_, err = RestoreSnapshot(encode(h, s.byAge[0:3]))
	require.ErrorContains(t, err, "segment 1: a batch of 3 tasks after 0 of 2")
	_, err = RestoreSnapshot(encode(h, s.byAge[0:2]))
	require.ErrorContains(t, err, "segment 2: EOF")
	_, err = RestoreSnapshot(encode(h, s.byAge[0:1], s.byAge[1:3]))
	require.ErrorContains(t, err, "segment 1: task 2 of 2")
	_, err = RestoreSnapshot(encode(h, s.byAge[1:3], s.byAge[0:1]))
	require.ErrorContains(t, err, "not in submission order")
	h.Segment = 0
	_, err = RestoreSnapshot(encode(h))
	require.ErrorContains(t, err, "segments of 0 tasks")
	// A frame claiming more than is there.
	data := encode(snapshotHeader{Version: SnapshotVersion, Seq: 3})
	data[7]++
	_, err = RestoreSnapshot(data)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	// A damaged byte.
	h.Segment = 2
	data = encode(h, s.byAge[0:2], s.byAge[2:3])
	data[len(data)-3] ^= 1
	_, err = RestoreSnapshot(data)
	require.ErrorContains(t, err, "segment 2: a frame fails its checksum")
}

// FuzzDecodeSnapshot: a snapshot is read from storage; whatever it holds,
// decoding returns a state or an error and never panics. (gob itself is not
// hardened against crafted input; the checksums keep what the fuzzer makes
// from reaching it, as they keep damaged snapshots.)
func FuzzDecodeSnapshot(f *testing.F) {
	s := stateOf(f,
		node("n1", "tcp://a:1", map[string]int{"cpu": 1}),
		&events.NodeUp{NodeID: "n1"},
		submit("t1", "cpu", 1),
		reserve("t1", 1, "n1", "cpu-1"),
		submit("t2", "io", 1),
	)
	data, err := s.MarshalSnapshot()
	require.NoError(f, err)
	f.Add(data)
	f.Add(data[:len(data)/2])
	f.Add([]byte("not a snapshot"))
	f.Fuzz(func(t *testing.T, data []byte) {
		st, err := RestoreSnapshot(data)
		if err == nil {
			require.NotNil(t, st)
		}
	})
}

// stateOf folds payloads, numbered from 1, into a new state.
func stateOf(t require.TestingT, ps ...events.Payload) *State {
	s := NewState()
	for i, p := range ps {
		s.Apply(envelope(t, uint64(i+1), p))
	}
	return s
}
