package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/cmd/internal/app"
	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
)

// ReplayConfig configures a replay benchmark.
type ReplayConfig struct {
	// Events is the length of the log to build. Defaults to 1,000,000.
	Events int
	// Runs is how often each start-up is measured. Defaults to 3.
	Runs int
	// DataDir holds the store; a temporary directory (removed at the end)
	// when empty.
	DataDir string
	// Settle is how long to wait after writing the log before measuring
	// start-ups. A NATS server reloads the message ids of the stream's
	// duplicate window (events.DuplicateWindow) when it starts, so a start
	// right after a burst of a million appends measures that reload more
	// than anything else. Negative for no wait; 0 for the window itself.
	Settle time.Duration
	// Logger receives the broker's warnings and errors.
	Logger *slog.Logger
}

// ReplayResult holds the figures of a replay benchmark.
type ReplayResult struct {
	Events uint64
	Tasks  int
	// Append is the time taken to write the log.
	Append time.Duration
	// Fold is, per run, the time from the start of the fold to its catching
	// up with the log, without a snapshot.
	Fold []time.Duration
	// StartupLog and StartupSnapshot are, per run, the time from opening the
	// store (starting the embedded NATS server) until the fold has caught up,
	// without and with a snapshot; OpenLog and OpenSnapshot the part of it
	// spent opening the store, FoldSnapshot the rest with a snapshot.
	StartupLog, StartupSnapshot []time.Duration
	OpenLog, OpenSnapshot       []time.Duration
	FoldSnapshot                []time.Duration
	// Settled is how long the benchmark waited before the start-ups.
	Settled time.Duration
	// Heap is the largest live heap once a start-up was over: the fold's
	// state and the embedded NATS server's.
	Heap uint64
	// SnapshotBytes and SnapshotTake are the size of the snapshot at the head
	// of the log and the time to encode and store it.
	SnapshotBytes int
	SnapshotTake  time.Duration
}

// Print writes one figure per line as "name: value unit".
func (r ReplayResult) Print(w io.Writer) {
	med := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	secs := func(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }
	fmt.Fprintf(w, "events: %d events\n", r.Events)
	fmt.Fprintf(w, "tasks: %d tasks\n", r.Tasks)
	fmt.Fprintf(w, "append: %s (%.0f events/s)\n", secs(r.Append), float64(r.Events)/r.Append.Seconds())
	fmt.Fprintf(w, "replay (median of %d): %s (%.0f events/s)\n", len(r.Fold), secs(med(r.Fold)), float64(r.Events)/med(r.Fold).Seconds())
	fmt.Fprintf(w, "waited before start-ups: %s\n", secs(r.Settled))
	fmt.Fprintf(w, "startup without snapshot (median of %d): %s (store open %s, fold %s)\n", len(r.StartupLog),
		secs(med(r.StartupLog)), secs(med(r.OpenLog)), secs(med(r.Fold)))
	fmt.Fprintf(w, "snapshot: %d bytes, taken in %s\n", r.SnapshotBytes, secs(r.SnapshotTake))
	fmt.Fprintf(w, "startup with snapshot (median of %d): %s (store open %s, fold from snapshot %s)\n", len(r.StartupSnapshot),
		secs(med(r.StartupSnapshot)), secs(med(r.OpenSnapshot)), secs(med(r.FoldSnapshot)))
	fmt.Fprintf(w, "heap after start-up (fold and embedded NATS server): %.0f MB\n", float64(r.Heap)/1e6)
}

// Replay builds a log of cfg.Events events (task lifecycles on one node),
// then measures how fast the fold replays it and how long a broker takes to
// start on it, without and with a snapshot.
func Replay(ctx context.Context, cfg ReplayConfig) (ReplayResult, error) {
	if cfg.Events <= 0 {
		cfg.Events = 1_000_000
	}
	if cfg.Runs <= 0 {
		cfg.Runs = 3
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DataDir == "" {
		dir, err := os.MkdirTemp("", "broker-bench-replay-*")
		if err != nil {
			return ReplayResult{}, err
		}
		defer os.RemoveAll(dir)
		cfg.DataDir = dir
	}
	open := func() (*app.App, error) {
		return app.OpenStore(ctx, app.Config{DataDir: cfg.DataDir, NATSListen: "none", Logger: cfg.Logger})
	}
	var res ReplayResult
	store, err := open()
	if err != nil {
		return res, err
	}
	start := time.Now()
	res.Tasks, err = writeLog(ctx, store.JetStream(), cfg.Events)
	res.Append = time.Since(start)
	store.Close()
	if err != nil {
		return res, err
	}
	if cfg.Settle == 0 {
		cfg.Settle = events.DuplicateWindow
	}
	if cfg.Settle > 0 {
		cfg.Logger.InfoContext(ctx, "waiting for the duplicate window to pass", slog.Duration("wait", cfg.Settle))
		select {
		case <-time.After(cfg.Settle):
		case <-ctx.Done():
			return res, ctx.Err()
		}
		res.Settled = cfg.Settle
	}
	for range cfg.Runs {
		run, err := startUp(ctx, open, false, cfg.Logger)
		if err != nil {
			return res, err
		}
		res.StartupLog, res.Fold, res.Events = append(res.StartupLog, run.startup), append(res.Fold, run.fold), run.seq
		res.OpenLog = append(res.OpenLog, run.startup-run.fold)
		res.Heap = max(res.Heap, run.heap)
	}
	if res.SnapshotBytes, res.SnapshotTake, err = snapshot(ctx, open); err != nil {
		return res, err
	}
	for range cfg.Runs {
		run, err := startUp(ctx, open, true, cfg.Logger)
		if err != nil {
			return res, err
		}
		res.StartupSnapshot = append(res.StartupSnapshot, run.startup)
		res.OpenSnapshot, res.FoldSnapshot = append(res.OpenSnapshot, run.startup-run.fold), append(res.FoldSnapshot, run.fold)
		res.Heap = max(res.Heap, run.heap)
	}
	return res, nil
}

// writeLog appends task lifecycles (submitted, slot_reserved,
// attempt_claimed, container_started, logs_archived, container_exited,
// completed) on a node of
// 64 slots, 64 tasks at a time, until the log holds n events.
func writeLog(ctx context.Context, js jetstream.JetStream, n int) (int, error) {
	const slots = 64
	var (
		written int
		tasks   int
		futures []jetstream.PubAckFuture
	)
	publish := func(key string, p events.Payload) error {
		env, err := events.New(key, p, events.Meta{Actor: "bench"})
		if err != nil {
			return err
		}
		msg, err := events.Msg(env)
		if err != nil {
			return err
		}
		f, err := js.PublishMsgAsync(msg)
		if err != nil {
			return err
		}
		futures = append(futures, f)
		written++
		if len(futures) >= 4096 {
			return drain(ctx, &futures)
		}
		return nil
	}
	nodeID := uuid.NewString()
	if err := publish("bench:node", &events.NodeRegistered{NodeID: nodeID, Hostname: "bench-noop://replay", Slots: map[string]int{"cpu": slots}}); err != nil {
		return 0, err
	}
	if err := publish("bench:up", &events.NodeUp{NodeID: nodeID}); err != nil {
		return 0, err
	}
	now := time.Now().UTC()
	for written < n {
		ids := make([]string, slots)
		for i := range ids {
			ids[i] = uuid.NewString()
		}
		steps := []func(i int, id string) events.Payload{
			func(_ int, id string) events.Payload {
				return &events.TaskSubmitted{TaskID: id, Name: "bench", Image: "bench", Cmd: "true", ExecutionType: "cpu", MaxRetries: 3, CreatedAt: now}
			},
			func(i int, id string) events.Payload {
				return &events.SlotReserved{TaskID: id, Attempt: 1, NodeID: nodeID, SlotID: "cpu-" + strconv.Itoa(i+1), ContainerName: projections.ContainerName("bench", id, 1)}
			},
			func(_ int, id string) events.Payload {
				return &events.AttemptClaimed{TaskID: id, Attempt: 1, NodeID: nodeID, Runner: "bench/runner"}
			},
			func(_ int, id string) events.Payload {
				return &events.ContainerStarted{TaskID: id, Attempt: 1, NodeID: nodeID, ContainerID: "bench-" + id, StartedAt: now}
			},
			func(_ int, id string) events.Payload {
				return &events.LogsArchived{TaskID: id, Attempt: 1, Object: events.LogObjectName(id, 1), Bytes: 42}
			},
			func(_ int, id string) events.Payload {
				return &events.ContainerExited{TaskID: id, Attempt: 1, NodeID: nodeID, StartedAt: now, FinishedAt: now}
			},
			func(_ int, id string) events.Payload { return &events.TaskCompleted{TaskID: id, Attempt: 1} },
		}
		for s, step := range steps {
			for i, id := range ids {
				if err := publish(id+":"+strconv.Itoa(s), step(i, id)); err != nil {
					return tasks, err
				}
			}
		}
		tasks += slots
	}
	return tasks, drain(ctx, &futures)
}

func drain(ctx context.Context, futures *[]jetstream.PubAckFuture) error {
	for _, f := range *futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("appending: %w", err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	*futures = (*futures)[:0]
	return nil
}

// startUp opens the store and folds the log (from the newest snapshot when
// withSnapshot), and returns the time to open and fold, the time to fold
// alone, and the sequence reached.
// startRun is one measured start-up.
type startRun struct {
	startup, fold time.Duration
	seq           uint64
	// heap is the live heap once the fold caught up: the fold's state and
	// the embedded NATS server's.
	heap uint64
}

func startUp(ctx context.Context, open func() (*app.App, error), withSnapshot bool, log *slog.Logger) (startRun, error) {
	start := time.Now()
	store, err := open()
	if err != nil {
		return startRun{}, err
	}
	defer store.Close()
	cfg := projections.ReplicaConfig{JetStream: store.JetStream(), Logger: log}
	if withSnapshot {
		cfg.Snapshots = store.Snapshots()
	}
	r, err := projections.NewReplica(cfg)
	if err != nil {
		return startRun{}, err
	}
	foldStart := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	select {
	case <-r.Ready():
	case err := <-done:
		cancel()
		return startRun{}, errors.Join(errors.New("the fold stopped before catching up"), err)
	}
	end := time.Now()
	runtime.GC()
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	cancel()
	if err := <-done; err != nil {
		return startRun{}, err
	}
	return startRun{startup: end.Sub(start), fold: end.Sub(foldStart), seq: r.Seq(), heap: mem.HeapAlloc}, nil
}

// snapshot folds the whole log and stores a snapshot of it.
func snapshot(ctx context.Context, open func() (*app.App, error)) (int, time.Duration, error) {
	store, err := open()
	if err != nil {
		return 0, 0, err
	}
	defer store.Close()
	st, err := projections.FoldTo(ctx, store.JetStream(), nil, projections.Target{})
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	size, err := store.Snapshots().SaveState(ctx, st)
	return size, time.Since(start), err
}
