package projections

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/klauspost/compress/s2"
)

// SnapshotVersion is the encoding version of fold snapshots. A snapshot of
// another version is ignored (the fold starts from the log instead), so a
// change of the Task or Node records only needs this constant bumped.
// Version 3 splits the tasks into segments decoded in parallel (version 2
// was one gob value); version 4 adds the attempt's claim to tasks.
const SnapshotVersion = 4

// A snapshot is a sequence of frames, each a big-endian uint64 length and
// that many bytes: the CRC-32C of the rest and an S2 block (the gob of
// ~600 bytes a task shrinks about four times, and reading the object store
// is slower than S2).
//
// The first frame is the header, a gob stream of one snapshotHeader. The
// task records follow in segments of at most snapshotSegment tasks, in
// submission order. Each segment is a gob stream of its own, of batches of
// at most snapshotBatch records, so segments decode on every core while the
// next ones arrive; one gob value of ~100 MB would cost gob a buffer grown
// by copying and one core.
//
// gob is not hardened against hostile input (a crafted map length
// allocates at will, as its documentation warns). Snapshots are written by
// the broker's own NATS user only, and the checksum keeps damaged or
// foreign bytes away from gob.
const (
	snapshotSegment = 16384
	snapshotBatch   = 1024
	// maxSnapshotFrame bounds a frame's length read from storage, and
	// maxSnapshotRatio its expansion.
	maxSnapshotFrame = 1 << 30
	maxSnapshotRatio = 64
)

// snapshotHeader opens the encoded form of a State. The indexes are not
// stored; DecodeSnapshot rebuilds them.
type snapshotHeader struct {
	Version  int
	Seq      uint64
	StoredAt time.Time
	// Nodes by id.
	Nodes []*Node
	// Tasks is the number of task records in the segments that follow;
	// Segment the number in each segment but the last.
	Tasks   int
	Segment int
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

// MarshalSnapshot encodes the state for DecodeSnapshot. The caller must
// hold the state still (e.g. inside Replica.Read).
func (s *State) MarshalSnapshot() ([]byte, error) {
	var buf bytes.Buffer
	if err := s.WriteSnapshot(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteSnapshot encodes the state for DecodeSnapshot into w. The caller must
// hold the state still.
func (s *State) WriteSnapshot(w io.Writer) error { return s.writeSnapshot(w, snapshotSegment) }

func (s *State) writeSnapshot(w io.Writer, segment int) error {
	nodes := make([]*Node, 0, len(s.Nodes))
	for _, n := range s.Nodes {
		nodes = append(nodes, n)
	}
	slices.SortFunc(nodes, func(a, b *Node) int { return cmp.Compare(a.ID, b.ID) })
	h := snapshotHeader{
		Version: SnapshotVersion, Seq: s.Seq, StoredAt: s.StoredAt, Nodes: nodes,
		Tasks: len(s.byAge), Segment: segment,
	}
	var frame bytes.Buffer
	if err := gob.NewEncoder(&frame).Encode(h); err != nil {
		return fmt.Errorf("encoding snapshot at %d: %w", s.Seq, err)
	}
	if err := writeFrame(w, frame.Bytes()); err != nil {
		return err
	}
	batch := make([]taskRecord, 0, snapshotBatch)
	for tasks := range slices.Chunk(s.byAge, segment) {
		frame.Reset()
		enc := gob.NewEncoder(&frame)
		for chunk := range slices.Chunk(tasks, snapshotBatch) {
			batch = batch[:0]
			for _, t := range chunk {
				batch = append(batch, taskRecord{Task: t, ExitZero: t.ExitCode != nil && *t.ExitCode == 0})
			}
			if err := enc.Encode(batch); err != nil {
				return fmt.Errorf("encoding snapshot at %d: %w", s.Seq, err)
			}
		}
		if err := writeFrame(w, frame.Bytes()); err != nil {
			return err
		}
	}
	return nil
}

func writeFrame(w io.Writer, data []byte) error {
	data = s2.Encode(nil, data)
	var n [12]byte
	binary.BigEndian.PutUint64(n[:8], uint64(len(data)+4))
	binary.BigEndian.PutUint32(n[8:], crc32.Checksum(data, castagnoli))
	if _, err := w.Write(n[:]); err != nil {
		return fmt.Errorf("writing snapshot: %w", err)
	}
	if _, err := w.Write(data); err != nil {
		return fmt.Errorf("writing snapshot: %w", err)
	}
	return nil
}

// readFrame reads one frame, still compressed; io.EOF when r ends before
// it.
func readFrame(r io.Reader) ([]byte, error) {
	var n [8]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint64(n[:])
	if size > maxSnapshotFrame {
		return nil, fmt.Errorf("a frame of %d bytes", size)
	}
	// The length comes from storage: let the data, not the length, size
	// the buffer.
	data, err := io.ReadAll(io.LimitReader(r, int64(size)))
	if err != nil {
		return nil, err
	}
	if uint64(len(data)) != size {
		return nil, io.ErrUnexpectedEOF
	}
	return data, nil
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// uncompress checks a frame read by readFrame and returns its bytes.
func uncompress(frame []byte) ([]byte, error) {
	if len(frame) < 4 {
		return nil, fmt.Errorf("a frame of %d bytes", len(frame))
	}
	sum, frame := binary.BigEndian.Uint32(frame), frame[4:]
	if crc32.Checksum(frame, castagnoli) != sum {
		return nil, errors.New("a frame fails its checksum")
	}
	n, err := s2.DecodedLen(frame)
	if err != nil {
		return nil, err
	}
	// A frame of gob shrinks about four times. Refuse what would need far
	// more memory than that before allocating it: a snapshot refused is
	// only a slower start.
	if n > maxSnapshotFrame || n > maxSnapshotRatio*len(frame)+1<<16 {
		return nil, fmt.Errorf("a frame of %d bytes from %d", n, len(frame))
	}
	return s2.Decode(nil, frame)
}

// snapshotInfo describes a snapshot of the state as it is now.
func (s *State) snapshotInfo() SnapshotInfo {
	return SnapshotInfo{Version: SnapshotVersion, Seq: s.Seq, StoredAt: s.StoredAt}
}

// ErrSnapshotVersion is returned for a snapshot written by another version
// of the fold.
var ErrSnapshotVersion = errors.New("snapshot version not supported")

// RestoreSnapshot decodes an encoded snapshot; see DecodeSnapshot.
func RestoreSnapshot(data []byte) (*State, error) {
	return DecodeSnapshot(bytes.NewReader(data))
}

// DecodeSnapshot reads a snapshot into a new state, rebuilding every index,
// so that folding the events after it gives the same state as folding the
// whole log. It reads r only as far as the snapshot goes, and decodes the
// segments on as many goroutines as there are cores.
func DecodeSnapshot(r io.Reader) (*State, error) {
	frame, err := readFrame(r)
	if err == nil {
		frame, err = uncompress(frame)
	}
	if err != nil {
		return nil, fmt.Errorf("decoding snapshot header: %w", err)
	}
	var h snapshotHeader
	if err := gob.NewDecoder(bytes.NewReader(frame)).Decode(&h); err != nil {
		return nil, fmt.Errorf("decoding snapshot header: %w", err)
	}
	if h.Version != SnapshotVersion {
		return nil, fmt.Errorf("%w: %d (this fold writes %d)", ErrSnapshotVersion, h.Version, SnapshotVersion)
	}
	if h.Tasks < 0 {
		return nil, fmt.Errorf("decoding snapshot: %d tasks", h.Tasks)
	}
	segments, err := decodeSegments(r, h.Tasks, h.Segment)
	if err != nil {
		return nil, err
	}
	s := NewState()
	s.Seq, s.StoredAt = h.Seq, h.StoredAt
	for _, n := range h.Nodes {
		if n == nil || n.ID == "" || s.Nodes[n.ID] != nil {
			return nil, errors.New("decoding snapshot: a node is empty or repeated")
		}
		s.Nodes[n.ID] = n
		s.hostnames[n.Hostname] = n.ID
	}
	s.byAge = make([]*Task, 0, h.Tasks) // as many records were decoded
	for _, segment := range segments {
		for _, r := range segment {
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
	}
	return s, nil
}

// decodeSegments reads the segment frames holding tasks records in all,
// segment tasks each but the last, and decodes each on its own goroutine,
// at most GOMAXPROCS at a time, while the next one is read.
func decodeSegments(r io.Reader, tasks, segment int) ([][]taskRecord, error) {
	if tasks > 0 && segment <= 0 {
		return nil, fmt.Errorf("decoding snapshot: segments of %d tasks", segment)
	}
	type result struct {
		records []taskRecord
		err     error
	}
	var (
		results []*result
		readErr error
		wg      sync.WaitGroup
		sem     = make(chan struct{}, runtime.GOMAXPROCS(0))
	)
	for read := 0; read < tasks; {
		frame, err := readFrame(r)
		if err != nil {
			readErr = fmt.Errorf("decoding snapshot: segment %d: %w", len(results)+1, err)
			break
		}
		n := min(segment, tasks-read)
		read += n
		res, i := &result{}, len(results)+1
		results = append(results, res)
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			res.records, res.err = decodeSegment(frame, n)
			if res.err != nil {
				res.err = fmt.Errorf("decoding snapshot: segment %d: %w", i, res.err)
			}
		})
	}
	wg.Wait()
	// An earlier segment's error says more than a read cut short after it.
	out := make([][]taskRecord, len(results))
	for i, res := range results {
		if res.err != nil {
			return nil, res.err
		}
		out[i] = res.records
	}
	if readErr != nil {
		return nil, readErr
	}
	return out, nil
}

// decodeSegment decodes one segment frame of n task records.
func decodeSegment(frame []byte, n int) ([]taskRecord, error) {
	frame, err := uncompress(frame)
	if err != nil {
		return nil, err
	}
	dec := gob.NewDecoder(bytes.NewReader(frame))
	// Every record takes a byte at least: the frame bounds the allocation.
	records := make([]taskRecord, 0, min(n, len(frame)))
	for len(records) < n {
		// A fresh slice each time: gob decodes into the records a reused
		// slice points at.
		var batch []taskRecord
		if err := dec.Decode(&batch); err != nil {
			return nil, fmt.Errorf("task %d of %d: %w", len(records)+1, n, err)
		}
		if len(batch) == 0 || len(records)+len(batch) > n {
			return nil, fmt.Errorf("a batch of %d tasks after %d of %d", len(batch), len(records), n)
		}
		records = append(records, batch...)
	}
	return records, nil
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
