// Package bench measures the broker's control plane: it runs a whole broker
// on a temporary data directory with the benchmark-only no-op runtime,
// submits tasks over the REST API and times their lifecycles.
package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cbroker/broker/cmd/internal/app"
	"github.com/cbroker/broker/events"
	"github.com/cbroker/broker/projections"
	"github.com/cbroker/broker/services/benchnoop"
	"github.com/cbroker/broker/services/runtime"
)

// Config configures a benchmark run.
type Config struct {
	// Tasks to submit. Defaults to 10000.
	Tasks int
	// Clients submitting concurrently. Defaults to 8.
	Clients int
	// Slots of the no-op node. Defaults to 64.
	Slots int
	// Logger receives the broker's warnings and errors.
	Logger *slog.Logger
}

// Result holds the figures of a run.
type Result struct {
	Tasks, Clients, Slots int
	// Elapsed runs from the first submission to the last completion.
	Elapsed time.Duration
	// Events is the number of events in the log at the end.
	Events uint64
	// SubmitToReserved is, per task, the time from its submitted event to
	// its slot_reserved event, sorted.
	SubmitToReserved []time.Duration
	// HTTPSubmit is, per task, the round trip of its POST /tasks, sorted.
	HTTPSubmit []time.Duration
}

// Print writes one figure per line as "name: value unit".
func (r Result) Print(w io.Writer) {
	secs := r.Elapsed.Seconds()
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
	fmt.Fprintf(w, "tasks: %d tasks\n", r.Tasks)
	fmt.Fprintf(w, "clients: %d clients\n", r.Clients)
	fmt.Fprintf(w, "slots: %d slots\n", r.Slots)
	fmt.Fprintf(w, "elapsed: %.3f s\n", secs)
	fmt.Fprintf(w, "lifecycles_per_second: %.0f tasks/s\n", float64(r.Tasks)/secs)
	fmt.Fprintf(w, "events_per_second: %.0f events/s\n", float64(r.Events)/secs)
	fmt.Fprintf(w, "submit_to_reserved_p50: %s\n", ms(Percentile(r.SubmitToReserved, 50)))
	fmt.Fprintf(w, "submit_to_reserved_p99: %s\n", ms(Percentile(r.SubmitToReserved, 99)))
	fmt.Fprintf(w, "http_submit_p50: %s\n", ms(Percentile(r.HTTPSubmit, 50)))
	fmt.Fprintf(w, "http_submit_p99: %s\n", ms(Percentile(r.HTTPSubmit, 99)))
}

// Percentile returns the p-th percentile of sorted durations (nearest rank).
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// benchNode is the hostname of the no-op node; only the no-op runtime
// supports its scheme, and the REST API refuses it.
const benchNode = benchnoop.Scheme + "://bench-1"

// Run starts a broker, submits the tasks and waits until all completed.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg.Tasks = cmpOr(cfg.Tasks, 10000)
	cfg.Clients = cmpOr(cfg.Clients, 8)
	cfg.Slots = cmpOr(cfg.Slots, 64)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	dir, err := os.MkdirTemp("", "broker-bench-*")
	if err != nil {
		return Result{}, err
	}
	defer os.RemoveAll(dir)
	a, err := app.New(ctx, app.Config{
		Listen: "127.0.0.1:0", DataDir: dir, NATSListen: "none", LocalNode: app.LocalNodeFalse,
		Runtimes: runtime.Set{benchnoop.Runtime{}}, HealthInterval: 50 * time.Millisecond, Logger: cfg.Logger,
	})
	if err != nil {
		return Result{}, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			cfg.Logger.ErrorContext(ctx, "benchmark broker stopped with an error", slog.Any("error", err))
		}
	}()

	if err := prepare(ctx, a, cfg.Slots); err != nil {
		return Result{}, err
	}
	res := Result{Tasks: cfg.Tasks, Clients: cfg.Clients, Slots: cfg.Slots}
	start := time.Now()
	if res.HTTPSubmit, err = submit(ctx, "http://"+a.Addr(), cfg); err != nil {
		return res, err
	}
	var failed int
	err = a.Replica.WaitFor(ctx, func(s *projections.State) bool {
		failed = s.TaskCounts[projections.TaskFailed]
		return s.TaskCounts[projections.TaskCompleted]+failed >= cfg.Tasks
	})
	res.Elapsed = time.Since(start)
	if err != nil {
		return res, err
	}
	if failed > 0 {
		return res, fmt.Errorf("%d tasks failed", failed)
	}
	res.Events = a.Replica.Seq()
	res.SubmitToReserved, err = reservedLatencies(ctx, a.JetStream())
	return res, err
}

func cmpOr(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

func prepare(ctx context.Context, a *app.App, slots int) error {
	id, err := a.RegisterNode(ctx, benchNode, map[string]int{"bench": slots})
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return a.Replica.WaitFor(wctx, func(s *projections.State) bool {
		n := s.Nodes[id]
		return n != nil && n.Status == projections.NodeAvailable
	})
}

// submit posts the tasks from cfg.Clients concurrent clients and returns the
// sorted round trips.
func submit(ctx context.Context, base string, cfg Config) ([]time.Duration, error) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Clients}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	body := []byte(`{"name":"bench","image":"none","cmd":"true","execution_type":"bench"}`)
	jobs := make(chan struct{})
	var (
		mu    sync.Mutex
		lats  = make([]time.Duration, 0, cfg.Tasks)
		first error
		wg    sync.WaitGroup
	)
	for range cfg.Clients {
		wg.Go(func() {
			for range jobs {
				t0 := time.Now()
				err := post(ctx, client, base+"/tasks", body)
				d := time.Since(t0)
				mu.Lock()
				lats = append(lats, d)
				if err != nil && first == nil {
					first = err
				}
				mu.Unlock()
			}
		})
	}
	for range cfg.Tasks {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	slices.Sort(lats)
	return lats, first
}

func post(ctx context.Context, client *http.Client, url string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /tasks: %d %s", resp.StatusCode, b)
	}
	return nil
}

// reservedLatencies reads the log and returns, per task, the time from its
// submission to its first reservation, sorted. Both times are stamped by
// the same process's clock.
func reservedLatencies(ctx context.Context, js jetstream.JetStream) ([]time.Duration, error) {
	cons, err := js.OrderedConsumer(ctx, events.StreamName, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.SubjectPrefix + ".task.*.submitted", events.SubjectPrefix + ".task.*.slot_reserved"},
	})
	if err != nil {
		return nil, err
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, err
	}
	defer it.Stop()
	submitted := map[string]time.Time{}
	var lats []time.Duration
	for {
		m, err := it.Next()
		if err != nil {
			return nil, err
		}
		env, err := events.Decode(m.Data())
		if err != nil {
			return nil, err
		}
		switch env.Type {
		case events.TypeTaskSubmitted:
			submitted[env.AggregateID] = env.Time
		case events.TypeTaskSlotReserved:
			if at, ok := submitted[env.AggregateID]; ok {
				lats = append(lats, env.Time.Sub(at))
				delete(submitted, env.AggregateID)
			}
		}
		md, err := m.Metadata()
		if err != nil {
			return nil, err
		}
		if md.NumPending == 0 {
			break
		}
	}
	if len(submitted) > 0 {
		return nil, errors.New("some tasks were never reserved")
	}
	slices.Sort(lats)
	return lats, nil
}
