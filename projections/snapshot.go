package projections

import (
	"bytes"
	"cmp"
	"encoding/gob"
	"errors"
	"fmt"
	"slices"
	"time"
)

// SnapshotVersion is the encoding version of fold snapshots. A snapshot of
// another version is ignored (the fold starts from the log instead), so a
// change of the Task or Node records only needs this constant bumped.
const SnapshotVersion = 2

// snapshot is the encoded form of a State: its records and position. The
// indexes are not stored; RestoreSnapshot rebuilds them.
type snapshot struct {
	Version  int
	Seq      uint64
	StoredAt time.Time
	// Tasks in submission order, nodes by id.
	Tasks []taskRecord
	Nodes []*Node
}

// taskRecord is a task as encoded: gob sends no zero values, not even behind
// a pointer, so an exit code of 0 needs its own flag.
type taskRecord struct {
	Task     *Task
	ExitZero bool
}

// SnapshotInfo describes a snapshot without decoding its records.
type SnapshotInfo struct {
	Version int
	// Seq is the sequence of the last event folded into the snapshot.
	Seq uint64
	// StoredAt is the stream time of that event.
	StoredAt time.Time
}

// MarshalSnapshot encodes the state for RestoreSnapshot. The caller must
// hold the state still (e.g. inside Replica.Read).
func (s *State) MarshalSnapshot() ([]byte, error) {
	nodes := make([]*Node, 0, len(s.Nodes))
	for _, n := range s.Nodes {
		nodes = append(nodes, n)
	}
	slices.SortFunc(nodes, func(a, b *Node) int { return cmp.Compare(a.ID, b.ID) })
	tasks := make([]taskRecord, len(s.byAge))
	for i, t := range s.byAge {
		tasks[i] = taskRecord{Task: t, ExitZero: t.ExitCode != nil && *t.ExitCode == 0}
	}
	data, err := encodeSnapshot(snapshot{
		Version: SnapshotVersion, Seq: s.Seq, StoredAt: s.StoredAt, Tasks: tasks, Nodes: nodes,
	})
	if err != nil {
		return nil, fmt.Errorf("encoding snapshot at %d: %w", s.Seq, err)
	}
	return data, nil
}

func encodeSnapshot(snap snapshot) ([]byte, error) {
	var buf bytes.Buffer
	if err := gob.NewEncoder(&buf).Encode(snap); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// snapshotInfo describes a snapshot of the state as it is now.
func (s *State) snapshotInfo() SnapshotInfo {
	return SnapshotInfo{Version: SnapshotVersion, Seq: s.Seq, StoredAt: s.StoredAt}
}

// ErrSnapshotVersion is returned for a snapshot written by another version
// of the fold.
var ErrSnapshotVersion = errors.New("snapshot version not supported")

// RestoreSnapshot decodes a snapshot into a new state, rebuilding every
// index, so that folding the events after it gives the same state as folding
// the whole log.
func RestoreSnapshot(data []byte) (*State, error) {
	var snap snapshot
	if err := gob.NewDecoder(bytes.NewReader(data)).Decode(&snap); err != nil {
		return nil, fmt.Errorf("decoding snapshot: %w", err)
	}
	if snap.Version != SnapshotVersion {
		return nil, fmt.Errorf("%w: %d (this fold writes %d)", ErrSnapshotVersion, snap.Version, SnapshotVersion)
	}
	s := NewState()
	s.Seq, s.StoredAt = snap.Seq, snap.StoredAt
	for _, n := range snap.Nodes {
		if n == nil || n.ID == "" || s.Nodes[n.ID] != nil {
			return nil, errors.New("decoding snapshot: a node is empty or repeated")
		}
		s.Nodes[n.ID] = n
		s.hostnames[n.Hostname] = n.ID
	}
	s.byAge = make([]*Task, 0, len(snap.Tasks))
	for _, r := range snap.Tasks {
		t := r.Task
		if t != nil && r.ExitZero {
			t.ExitCode = new(int)
		}
		if t == nil || t.ID == "" || s.Tasks[t.ID] != nil {
			return nil, errors.New("decoding snapshot: a task is empty or repeated")
		}
		if len(s.byAge) > 0 && s.byAge[len(s.byAge)-1].SubmitSeq >= t.SubmitSeq {
			return nil, errors.New("decoding snapshot: tasks are not in submission order")
		}
		s.Tasks[t.ID] = t
		s.byAge = append(s.byAge, t)
		s.index(t)
	}
	return s, nil
}

// index adds a restored task to every index the fold keeps, by the same
// rules the fold follows event by event.
func (s *State) index(t *Task) {
	s.TaskCounts[t.Status]++
	for k, v := range t.Tags {
		s.tag(k, v)
	}
	switch {
	case t.Queued():
		s.queues[t.ExecutionType] = append(s.queues[t.ExecutionType], t) // byAge order
	case t.Active():
		s.active[t.ID] = t
	}
	if t.AttemptEnded {
		s.awaiting[t.ID] = t
	}
	if t.Status == TaskFailed {
		s.failed[t.ID] = t
	}
	if t.CancelRequested && !t.Status.Terminal() {
		s.cancelling[t.ID] = t
	}
}
