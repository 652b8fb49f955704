package projections

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/events"
)

// Snapshots stores fold snapshots in the object store
// events.ObjectStoreSnapshots, one object per snapshot, named by its
// sequence. A snapshot is only a shortcut: the log stays the truth, and a
// snapshot that does not match it is ignored.
type Snapshots struct {
	js    jetstream.JetStream
	store jetstream.ObjectStore
	log   *slog.Logger
}

// OpenSnapshots opens the snapshot store (events.Ensure creates it).
func OpenSnapshots(ctx context.Context, js jetstream.JetStream, log *slog.Logger) (*Snapshots, error) {
	store, err := js.ObjectStore(ctx, events.ObjectStoreSnapshots)
	if err != nil {
		return nil, fmt.Errorf("opening object store %s: %w", events.ObjectStoreSnapshots, err)
	}
	if log == nil {
		log = slog.Default()
	}
	return &Snapshots{js: js, store: store, log: log.With(slog.String("component", "snapshots"))}, nil
}

// Metadata keys of a snapshot object.
const (
	metaSeq      = "seq"
	metaStoredAt = "stored_at"
	metaVersion  = "version"
)

// Save stores an encoded snapshot of a state at info.Seq. Saving the same
// sequence twice stores the same bytes (the fold is deterministic).
func (s *Snapshots) Save(ctx context.Context, info SnapshotInfo, data []byte) error {
	meta := jetstream.ObjectMeta{
		Name:        events.SnapshotObjectName(info.Seq),
		Description: "fold snapshot",
		Metadata: map[string]string{
			metaSeq:      strconv.FormatUint(info.Seq, 10),
			metaStoredAt: info.StoredAt.UTC().Format(time.RFC3339Nano),
			metaVersion:  strconv.Itoa(info.Version),
		},
	}
	if _, err := s.store.Put(ctx, meta, bytes.NewReader(data)); err != nil {
		return fmt.Errorf("saving snapshot at %d: %w", info.Seq, err)
	}
	return nil
}

// listAttempt bounds one attempt to list the snapshots. nats.go's object
// store List waits for ever on an empty store when its first look at the
// store fails rather than finding nothing, as it can while the store's
// stream is still being placed on a cluster (nats.go 1.55.0).
const listAttempt = 2 * time.Second

// SaveState encodes a state and saves it as a snapshot at its sequence; it
// returns the snapshot's size. The caller must hold the state still.
func (s *Snapshots) SaveState(ctx context.Context, st *State) (int, error) {
	data, err := st.MarshalSnapshot()
	if err != nil {
		return 0, err
	}
	return len(data), s.Save(ctx, st.snapshotInfo(), data)
}

// List returns the stored snapshots of this fold version, oldest first.
func (s *Snapshots) List(ctx context.Context) ([]SnapshotInfo, error) {
	var (
		objs []*jetstream.ObjectInfo
		err  error
	)
	for range 3 {
		lctx, cancel := context.WithTimeout(ctx, listAttempt)
		objs, err = s.store.List(lctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			break
		}
	}
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing snapshots: %w", err)
	}
	var out []SnapshotInfo
	for _, o := range objs {
		info, err := parseSnapshotMeta(o.Metadata)
		if err != nil {
			s.log.WarnContext(ctx, "ignoring snapshot with bad metadata", slog.String("object", o.Name), slog.Any("error", err))
			continue
		}
		if info.Version == SnapshotVersion {
			out = append(out, info)
		}
	}
	slices.SortFunc(out, func(a, b SnapshotInfo) int { return cmp.Compare(a.Seq, b.Seq) })
	return out, nil
}

func parseSnapshotMeta(m map[string]string) (SnapshotInfo, error) {
	var info SnapshotInfo
	var err error
	if info.Seq, err = strconv.ParseUint(m[metaSeq], 10, 64); err != nil {
		return info, fmt.Errorf("seq: %w", err)
	}
	if info.StoredAt, err = time.Parse(time.RFC3339Nano, m[metaStoredAt]); err != nil {
		return info, fmt.Errorf("stored_at: %w", err)
	}
	if info.Version, err = strconv.Atoi(m[metaVersion]); err != nil {
		return info, fmt.Errorf("version: %w", err)
	}
	return info, nil
}

// Load returns the state of the newest snapshot that matches the log and
// that holds no event beyond the target, or nil when there is none. A
// snapshot matches the log when the stream still has its last event, stored
// at the same time (a snapshot of another stream, or of a stream that was
// recreated, does not).
func (s *Snapshots) Load(ctx context.Context, target Target) (*State, error) {
	infos, err := s.List(ctx)
	if err != nil {
		return nil, err
	}
	stream, err := s.js.Stream(ctx, events.StreamName)
	if err != nil {
		return nil, fmt.Errorf("opening stream %s: %w", events.StreamName, err)
	}
	for _, info := range slices.Backward(infos) {
		if !target.Includes(info.Seq, info.StoredAt) {
			continue
		}
		msg, err := stream.GetMsg(ctx, info.Seq)
		if err != nil || !msg.Time.Equal(info.StoredAt) {
			s.log.WarnContext(ctx, "ignoring snapshot that does not match the log", slog.Uint64("seq", info.Seq), slog.Any("error", err))
			continue
		}
		st, err := s.read(ctx, info.Seq)
		if err != nil {
			s.log.WarnContext(ctx, "ignoring unreadable snapshot", slog.Uint64("seq", info.Seq), slog.Any("error", err))
			continue
		}
		return st, nil
	}
	return nil, nil
}

// read decodes a snapshot while its chunks arrive, then reads the object to
// its end, where the object store checks the digest of the whole.
func (s *Snapshots) read(ctx context.Context, seq uint64) (*State, error) {
	obj, err := s.store.Get(ctx, events.SnapshotObjectName(seq))
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	st, err := DecodeSnapshot(bufio.NewReaderSize(obj, 1<<20))
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(io.Discard, obj); err != nil {
		return nil, fmt.Errorf("reading snapshot: %w", err)
	}
	return st, nil
}

// Prune deletes all but the newest keep snapshots.
func (s *Snapshots) Prune(ctx context.Context, keep int) error {
	infos, err := s.List(ctx)
	if err != nil {
		return err
	}
	for _, info := range infos[:max(len(infos)-keep, 0)] {
		if err := s.store.Delete(ctx, events.SnapshotObjectName(info.Seq)); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return fmt.Errorf("pruning snapshot at %d: %w", info.Seq, err)
		}
	}
	return nil
}

// Target is a point in the log: the last event folded has a sequence of at
// most Seq (when non-zero) and was stored at Time or before (when non-zero).
// The zero Target is the head of the log.
type Target struct {
	Seq  uint64
	Time time.Time
}

// Includes reports whether the event at seq, stored at storedAt, is at or
// before the target.
func (t Target) Includes(seq uint64, storedAt time.Time) bool {
	if t.Seq != 0 && seq > t.Seq {
		return false
	}
	return t.Time.IsZero() || !storedAt.After(t.Time)
}

// ParseTarget reads a point in the log: a stream sequence ("1234") or an
// RFC 3339 time ("2026-11-27T12:00:00Z").
func ParseTarget(s string) (Target, error) {
	if seq, err := strconv.ParseUint(s, 10, 64); err == nil {
		if seq == 0 {
			return Target{}, errors.New("sequence 0 is before the first event; sequences start at 1")
		}
		return Target{Seq: seq}, nil
	}
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return Target{}, fmt.Errorf("%q is neither a stream sequence nor an RFC 3339 time", s)
	}
	return Target{Time: at}, nil
}
